//! The identity provider's key set (JWKS): fetched over verified HTTPS on a jittered
//! schedule, checked (public keys only), and written unchanged to the key the server reads;
//! while the provider is down the last good value stays, its TTL extended before it expires.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use reqwest::{Certificate, Client, StatusCode, Url, redirect};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::JwksSettings;
use crate::keys;
use crate::observe::metrics::{self, Counter};

/// The largest key set accepted; real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 3;
/// The first retry after a failed refresh; retries double up to the refresh period.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// JWK members holding private or secret key material (RFC 7518 section 6): `d`, `p`, `q`,
/// `dp`, `dq`, `qi`, `oth` of RSA, `d` of EC and OKP, `k` of a symmetric key.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Key ids named in one log line at most, each cut to this many characters.
const KIDS_LOGGED: usize = 20;
const KID_CHARS: usize = 64;

/// KEYS: key set, fetched-at. ARGV: document, TTL in seconds. The fetch time is Redis's own
/// clock, so replicas with skewed clocks agree on the key set's age.
const WRITE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], redis.call('TIME')[1], 'EX', ARGV[2])
return 1
";

/// KEYS: key set, fetched-at. ARGV: TTL in seconds, extend when fewer seconds remain.
/// Never writes the key set itself. Returns {TTL after (-2 missing, -1 no expiry),
/// 1 when extended, age in seconds (-1 unknown)}.
const KEEP: &str = r"
local ttl = redis.call('TTL', KEYS[1])
local extended = 0
if ttl >= 0 and ttl < tonumber(ARGV[2]) then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[1])
    ttl = tonumber(ARGV[1])
    extended = 1
end
local age = -1
local fetched = tonumber(redis.call('GET', KEYS[2]) or '')
if fetched then
    age = tonumber(redis.call('TIME')[1]) - fetched
end
return {ttl, extended, age}
";

/// What a valid key set holds, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    /// Keys in the set.
    pub keys: usize,
    /// Their `kid` members, where present (cut to a bounded length).
    pub kids: Vec<String>,
}

/// Why a fetched document is not a key set the server may be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeySet {
    /// Not parsable JSON, or a member given twice in one object.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// No `keys` member, not an array, or an empty one.
    #[error("no non-empty `keys` array")]
    NoKeys,
    /// A member of `keys` that is not an object.
    #[error("key {index}: not a JSON object")]
    KeyNotObject {
        /// Position in `keys`.
        index: usize,
    },
    /// A required member missing, empty or not a string.
    #[error("key {index}: no `{member}`")]
    MissingMember {
        /// Position in `keys`.
        index: usize,
        /// The member's name.
        member: &'static str,
    },
    /// Private or secret key material: the document is refused whole.
    #[error("key {index}: private key member `{member}`")]
    PrivateMember {
        /// Position in `keys`.
        index: usize,
        /// The member's name.
        member: &'static str,
    },
}

/// Checks that `document` is a JSON object with a non-empty `keys` array of public keys:
/// each with `kty`, RSA with `n` and `e`, EC with `crv`, `x` and `y`, OKP with `crv` and
/// `x`, and none with a private member.
pub fn check_key_set(document: &[u8]) -> Result<KeySummary, InvalidKeySet> {
    // Duplicate members are refused: the bytes are stored as they are, so a private member
    // hidden in an earlier duplicate would otherwise pass unseen.
    let Strict(value) =
        serde_json::from_slice(document).map_err(|e| InvalidKeySet::NotJson(e.to_string()))?;
    let Value::Object(set) = value else {
        return Err(InvalidKeySet::NotObject);
    };
    let keys = match set.get("keys") {
        Some(Value::Array(keys)) if !keys.is_empty() => keys,
        _ => return Err(InvalidKeySet::NoKeys),
    };
    let mut kids = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let Value::Object(key) = key else {
            return Err(InvalidKeySet::KeyNotObject { index });
        };
        if let Some(member) = PRIVATE_MEMBERS.into_iter().find(|m| key.contains_key(*m)) {
            return Err(InvalidKeySet::PrivateMember { index, member });
        }
        let required: &[&'static str] = match non_empty_str(key, "kty") {
            None => &["kty"],
            Some("RSA") => &["n", "e"],
            Some("EC") => &["crv", "x", "y"],
            Some("OKP") => &["crv", "x"],
            Some(_) => &[],
        };
        if let Some(member) = required.iter().find(|m| non_empty_str(key, m).is_none()) {
            return Err(InvalidKeySet::MissingMember { index, member });
        }
        if let Some(kid) = key.get("kid").and_then(Value::as_str) {
            kids.push(kid.chars().take(KID_CHARS).collect());
        }
    }
    Ok(KeySummary {
        keys: keys.len(),
        kids,
    })
}

fn non_empty_str<'a>(object: &'a Map<String, Value>, member: &str) -> Option<&'a str> {
    object
        .get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A JSON value read with every object's member names checked for duplicates.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.contains_key(&name) {
                let shown: String = name.chars().take(KID_CHARS).collect();
                return Err(de::Error::custom(format_args!(
                    "member {shown:?} given twice"
                )));
            }
            object.insert(name, value);
        }
        Ok(Value::Object(object))
    }
}

/// Why a fetch produced no usable key set.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The whole fetch took longer than `jwks.timeout_ms`.
    #[error("timed out")]
    Timeout,
    /// Connecting, TLS (an untrusted certificate, a wrong host name), redirects or reading
    /// failed; the text is the error chain without the URL.
    #[error("{0}")]
    Network(String),
    /// An answer other than 200 OK.
    #[error("HTTP status {0}")]
    Status(u16),
    /// A body over [`MAX_DOCUMENT_BYTES`].
    #[error("document over {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// A body that is not a public key set.
    #[error("{0}")]
    Invalid(#[from] InvalidKeySet),
}

impl FetchError {
    /// A short, bounded name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Network(_) => "network",
            Self::Status(_) => "status",
            Self::TooLarge => "too_large",
            Self::Invalid(InvalidKeySet::PrivateMember { .. }) => "private_key",
            Self::Invalid(_) => "invalid",
        }
    }

    fn from_reqwest(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            return Self::Timeout;
        }
        // The URL may carry a query string worth keeping out of logs; the host is logged
        // beside the error anyway.
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Network(text)
    }
}

/// The HTTP client for the key set URL: verified TLS, bounded in time, size and redirects.
#[derive(Debug)]
pub struct Fetcher {
    client: Client,
    url: Url,
    host: String,
}

impl Fetcher {
    /// Builds the client: TLS verified against the platform's roots plus `jwks.ca_file`,
    /// `https://` only (redirects included) unless `jwks.allow_http`. Errors name the key.
    pub fn new(settings: &JwksSettings) -> anyhow::Result<Self> {
        let url = settings.url.as_ref().context("jwks.url: not set")?;
        let url = Url::parse(url.expose()).context("jwks.url: not a URL")?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => anyhow::bail!("jwks.url: no host"),
        };
        let mut builder = Client::builder()
            .https_only(!settings.allow_http)
            .redirect(redirect::Policy::limited(MAX_REDIRECTS))
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            .user_agent(concat!("dicom-cache-warmer/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = &settings.ca_file {
            let pem = std::fs::read(file)
                .with_context(|| format!("jwks.ca_file: cannot read {}", file.display()))?;
            let roots = Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("jwks.ca_file: {} is not PEM", file.display()))?;
            anyhow::ensure!(
                !roots.is_empty(),
                "jwks.ca_file: no certificate in {}",
                file.display()
            );
            builder = builder.tls_certs_merge(roots);
        }
        let client = builder
            .build()
            .context("jwks: cannot set up the HTTPS client (no trusted roots?)")?;
        Ok(Self { client, url, host })
    }

    /// The URL's host (and port, when given), for logs.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Fetches the document and checks it; the bytes are returned as received.
    pub async fn fetch(&self) -> Result<(Vec<u8>, KeySummary), FetchError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(FetchError::from_reqwest)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        // Read chunk by chunk so that an endless or oversized body is cut off at the cap.
        let mut document = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
            if document.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            document.extend_from_slice(&chunk);
        }
        let summary = check_key_set(&document)?;
        Ok((document, summary))
    }
}

/// Redis could not be reached to write or keep the key set.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or timed out.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled Redis connection could be had in time.
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
}

/// The cached key set after a failed refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// No key set under the key: the server fails every token check.
    Missing,
    /// A key set without expiry (written by someone else): left alone.
    Persistent,
    /// A key set expiring in `remaining_secs`; `extended` when this refresh extended it.
    Expiring {
        /// Seconds it has left (after any extension).
        remaining_secs: u64,
        /// Whether it was about to expire and got a full TTL again.
        extended: bool,
    },
}

/// What one refresh did.
#[derive(Debug)]
pub enum Outcome {
    /// The fetched document was written under the key, with the full TTL.
    Written(KeySummary),
    /// The fetch failed; the cached key set (if any) was kept, never overwritten.
    Kept {
        /// Why the fetch failed.
        error: FetchError,
        /// The cached key set.
        cached: Cached,
        /// Seconds since the cached key set was fetched, when known.
        age_secs: Option<u64>,
    },
}

/// Keeps the key set under [`keys::JWKS`] fresh until cancelled.
#[derive(Debug)]
pub struct Refresher {
    fetcher: Fetcher,
    redis: deadpool_redis::Pool,
    key: String,
    fetched_key: String,
    period: Duration,
    ttl_secs: u64,
    extend_below_secs: u64,
}

impl Refresher {
    /// The refresher for `[jwks]`, writing [`keys::JWKS`]; `None` when `jwks.url` is unset. Fails
    /// (naming the key) when `jwks.ca_file` cannot be read or TLS cannot be set up.
    pub fn new(
        settings: &JwksSettings,
        redis: deadpool_redis::Pool,
    ) -> anyhow::Result<Option<Self>> {
        if settings.url.is_none() {
            return Ok(None);
        }
        // While the provider is down, extend the key set before it could expire ahead of
        // the next-but-one attempt.
        let extend_below = 2 * settings.refresh() + settings.timeout();
        Ok(Some(
            Self {
                fetcher: Fetcher::new(settings)?,
                redis,
                key: String::new(),
                fetched_key: String::new(),
                period: settings.refresh(),
                ttl_secs: settings.ttl_secs,
                extend_below_secs: extend_below.as_secs() + 1,
            }
            .with_key(keys::JWKS),
        ))
    }

    /// The same refresher writing another key (tests use their own).
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = key.to_owned();
        // The daemon's bookkeeping sits under `dcw:`, beside nothing the server reads.
        self.fetched_key = format!("dcw:{key}:fetched_at");
        self
    }

    /// Fetches once and writes the key set, or keeps (and, when about to expire, extends)
    /// the cached one; logs and counts what happened. Errs only when Redis does.
    pub async fn refresh_once(&self) -> Result<Outcome, StoreError> {
        let host = self.fetcher.host();
        let fetched = self.fetcher.fetch().await;
        let mut con = self.redis.get().await?;
        match fetched {
            Ok((document, summary)) => {
                let _: i64 = redis::cmd("EVAL")
                    .arg(WRITE)
                    .arg(2)
                    .arg(&self.key)
                    .arg(&self.fetched_key)
                    .arg(document.as_slice())
                    .arg(self.ttl_secs)
                    .query_async(&mut *con)
                    .await?;
                metrics::add(Counter::JwksRefreshes, 1);
                metrics::jwks_age(Duration::ZERO);
                let shown = &summary.kids[..summary.kids.len().min(KIDS_LOGGED)];
                tracing::info!(
                    host,
                    keys = summary.keys,
                    kids = ?shown,
                    bytes = document.len(),
                    ttl_secs = self.ttl_secs,
                    "identity provider key set refreshed"
                );
                Ok(Outcome::Written(summary))
            }
            Err(error) => {
                let (ttl, extended, age): (i64, i64, i64) = redis::cmd("EVAL")
                    .arg(KEEP)
                    .arg(2)
                    .arg(&self.key)
                    .arg(&self.fetched_key)
                    .arg(self.ttl_secs)
                    .arg(self.extend_below_secs)
                    .query_async(&mut *con)
                    .await?;
                let cached = match ttl {
                    -2 => Cached::Missing,
                    ttl if ttl < 0 => Cached::Persistent,
                    ttl => Cached::Expiring {
                        remaining_secs: ttl.unsigned_abs(),
                        extended: extended == 1,
                    },
                };
                let age_secs = u64::try_from(age).ok();
                self.report_failure(&error, cached, age_secs);
                Ok(Outcome::Kept {
                    error,
                    cached,
                    age_secs,
                })
            }
        }
    }

    fn report_failure(&self, error: &FetchError, cached: Cached, age_secs: Option<u64>) {
        let host = self.fetcher.host();
        let reason = error.reason();
        metrics::jwks_refresh_failed(reason);
        if let Some(age) = age_secs {
            metrics::jwks_age(Duration::from_secs(age));
        }
        if let FetchError::Invalid(InvalidKeySet::PrivateMember { .. }) = error {
            tracing::error!(
                host,
                %error,
                "the identity provider's key set carries private key material: refused, not stored"
            );
        }
        match cached {
            Cached::Missing => tracing::error!(
                host,
                reason,
                %error,
                "key set refresh failed and no key set is cached: the server refuses every token"
            ),
            Cached::Expiring {
                remaining_secs,
                extended: true,
            } => {
                metrics::add(Counter::JwksTtlExtensions, 1);
                tracing::warn!(
                    host,
                    reason,
                    %error,
                    age_secs,
                    ttl_secs = remaining_secs,
                    "key set refresh failed and the cached key set was about to expire: TTL extended"
                );
            }
            Cached::Expiring { remaining_secs, .. } => tracing::warn!(
                host,
                reason,
                %error,
                age_secs,
                ttl_secs = remaining_secs,
                "key set refresh failed: keeping the cached key set"
            ),
            Cached::Persistent => tracing::warn!(
                host,
                reason,
                %error,
                age_secs,
                "key set refresh failed: keeping the cached key set (it has no expiry)"
            ),
        }
    }

    /// Refreshes at once, then every `jwks.refresh_secs` (shortened by up to a tenth at
    /// random), sooner after a failure, until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(
            host = self.fetcher.host(),
            refresh_secs = self.period.as_secs(),
            ttl_secs = self.ttl_secs,
            "keeping the identity provider's key set warm"
        );
        run_on_schedule(self.period, &cancel, || self.refresh_succeeds()).await;
    }

    async fn refresh_succeeds(&self) -> bool {
        match self.refresh_once().await {
            Ok(outcome) => matches!(outcome, Outcome::Written(_)),
            Err(error) => {
                metrics::jwks_refresh_failed("redis");
                tracing::warn!(
                    host = self.fetcher.host(),
                    %error,
                    "key set refresh failed: Redis unreachable"
                );
                false
            }
        }
    }
}

/// The wait before the next refresh: one period after a success, shortened by up to a
/// tenth at random so that replicas drift apart; after `failures` failures in a row, 5 s
/// doubling up to the period, picked from the upper half.
pub fn next_delay(period: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return rand::rng().random_range(period.mul_f64(0.9)..=period);
    }
    let ceiling = RETRY_FIRST
        .saturating_mul(1 << (failures - 1).min(16))
        .min(period);
    rand::rng().random_range(ceiling / 2..=ceiling)
}

/// Calls `refresh` at once, then again after each [`next_delay`], until `cancel` fires;
/// `refresh` tells whether it succeeded.
async fn run_on_schedule<F, Fut>(period: Duration, cancel: &CancellationToken, mut refresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut failures = 0u32;
    loop {
        let succeeded = tokio::select! {
            succeeded = refresh() => succeeded,
            () = cancel.cancelled() => return,
        };
        failures = if succeeded {
            0
        } else {
            failures.saturating_add(1)
        };
        tokio::select! {
            () = tokio::time::sleep(next_delay(period, failures)) => {}
            () = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    const RSA: &str = r#"{"kty":"RSA","kid":"rsa-1","use":"sig","n":"0vx7agoebGcQSuu","e":"AQAB"}"#;
    const EC: &str =
        r#"{"kty":"EC","kid":"ec-1","crv":"P-256","x":"f83OJ3D2xF1","y":"x_FEzRu9m36"}"#;

    fn set(keys: &[&str]) -> String {
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    #[test]
    fn public_key_sets_pass_and_name_their_key_ids() {
        let okp = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7"}"#;
        let other = r#"{"kty":"future-kind","kid":"f"}"#;
        let summary = check_key_set(set(&[RSA, EC, okp, other]).as_bytes()).expect("valid");
        assert_eq!(summary.keys, 4);
        assert_eq!(summary.kids, ["rsa-1", "ec-1", "f"]);
        // Members besides `keys` are the provider's business.
        let extra = format!(r#"{{"keys":[{RSA}],"issuer":"x"}}"#);
        assert!(check_key_set(extra.as_bytes()).is_ok());
    }

    #[test]
    fn documents_that_are_not_public_key_sets_are_refused_with_their_reason() {
        use InvalidKeySet::*;
        let rsa_without_n = r#"{"kty":"RSA","e":"AQAB"}"#;
        let ec_without_y = r#"{"kty":"EC","crv":"P-256","x":"a"}"#;
        let empty_kty = r#"{"kty":"","n":"a","e":"b"}"#;
        let private_rsa = r#"{"kty":"RSA","n":"a","e":"b","d":"secret"}"#;
        let private_ec = r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"secret"}"#;
        let secret = r#"{"kty":"oct","k":"c2VjcmV0"}"#;
        let rsa_prime = r#"{"kty":"RSA","n":"a","e":"b","qi":"c"}"#;
        let hidden_twice = r#"{"kty":"RSA","n":"a","e":"b","d":"secret","d":"x"}"#;
        let cases: Vec<(String, InvalidKeySet)> = vec![
            ("[]".into(), NotObject),
            ("\"keys\"".into(), NotObject),
            ("{}".into(), NoKeys),
            (r#"{"keys":[]}"#.into(), NoKeys),
            (r#"{"keys":{}}"#.into(), NoKeys),
            (set(&["1"]), KeyNotObject { index: 0 }),
            (
                set(&[RSA, "{}"]),
                MissingMember {
                    index: 1,
                    member: "kty",
                },
            ),
            (
                set(&[empty_kty]),
                MissingMember {
                    index: 0,
                    member: "kty",
                },
            ),
            (
                set(&[rsa_without_n]),
                MissingMember {
                    index: 0,
                    member: "n",
                },
            ),
            (
                set(&[ec_without_y]),
                MissingMember {
                    index: 0,
                    member: "y",
                },
            ),
            (
                set(&[RSA, private_rsa]),
                PrivateMember {
                    index: 1,
                    member: "d",
                },
            ),
            (
                set(&[private_ec]),
                PrivateMember {
                    index: 0,
                    member: "d",
                },
            ),
            (
                set(&[secret]),
                PrivateMember {
                    index: 0,
                    member: "k",
                },
            ),
            (
                set(&[rsa_prime]),
                PrivateMember {
                    index: 0,
                    member: "qi",
                },
            ),
        ];
        for (document, expected) in cases {
            assert_eq!(
                check_key_set(document.as_bytes()),
                Err(expected),
                "{document}"
            );
        }
        for document in [
            String::new(),
            "{".into(),
            format!("{} trailing", set(&[RSA])),
            set(&[hidden_twice]),
            format!(r#"{{"keys":[{{"kty":"RSA","d":"x"}}],"keys":[{RSA}]}}"#),
        ] {
            assert!(
                matches!(check_key_set(document.as_bytes()), Err(NotJson(_))),
                "{document}"
            );
        }
        assert!(matches!(
            check_key_set(b"{\"keys\":[\xff]}"),
            Err(NotJson(_))
        ));
    }

    #[test]
    fn private_material_has_its_own_failure_reason() {
        let private = FetchError::Invalid(InvalidKeySet::PrivateMember {
            index: 0,
            member: "d",
        });
        assert_eq!(private.reason(), "private_key");
        assert_eq!(
            FetchError::Invalid(InvalidKeySet::NoKeys).reason(),
            "invalid"
        );
        assert_eq!(FetchError::Status(500).reason(), "status");
        assert_eq!(FetchError::TooLarge.reason(), "too_large");
        assert_eq!(FetchError::Timeout.reason(), "timeout");
    }

    #[test]
    fn a_ca_file_without_certificates_fails_the_start_naming_the_key() {
        let not_pem = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(not_pem.path(), "not a certificate\n").expect("write");
        for file in [not_pem.path(), std::path::Path::new("/nonexistent/ca.pem")] {
            let settings = JwksSettings {
                url: Some("https://idp.example.org/certs".into()),
                ca_file: Some(file.to_owned()),
                ..JwksSettings::default()
            };
            let error = Fetcher::new(&settings).expect_err("refused").to_string();
            assert!(error.starts_with("jwks.ca_file: "), "{error}");
        }
    }

    #[test]
    fn delays_are_a_period_shortened_by_jitter_or_shorter_retries_after_failures() {
        let period = Duration::from_secs(300);
        for _ in 0..200 {
            let delay = next_delay(period, 0);
            assert!(delay >= period.mul_f64(0.9) && delay <= period, "{delay:?}");
            let first_retry = next_delay(period, 1);
            assert!(first_retry >= RETRY_FIRST / 2 && first_retry <= RETRY_FIRST);
            let third_retry = next_delay(period, 3);
            assert!(third_retry >= RETRY_FIRST * 2 && third_retry <= RETRY_FIRST * 4);
            assert!(next_delay(period, 40) <= period);
            assert!(next_delay(Duration::from_secs(1), 1) <= Duration::from_secs(1));
        }
    }

    /// Runs the schedule with `results` as the refresh outcomes, in paused time, and returns
    /// the instants of the calls (relative to the start) once they are used up.
    async fn schedule_calls(period: Duration, results: Vec<bool>) -> Vec<Duration> {
        let start = Instant::now();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let task = {
            let (calls, cancel) = (calls.clone(), cancel.clone());
            tokio::spawn(async move {
                let mut results = results.into_iter();
                run_on_schedule(period, &cancel, || {
                    calls.lock().expect("lock").push(start.elapsed());
                    let result = results.next();
                    if result.is_none() {
                        cancel.cancel();
                    }
                    async move { result.unwrap_or(false) }
                })
                .await;
            })
        };
        tokio::time::timeout(Duration::from_secs(100_000), task)
            .await
            .expect("the schedule stops on cancel")
            .expect("schedule task");
        let mut calls = calls.lock().expect("lock").clone();
        calls.pop();
        calls
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_start_at_once_then_follow_the_period() {
        let period = Duration::from_secs(300);
        let calls = schedule_calls(period, vec![true; 5]).await;
        assert_eq!(calls.len(), 5);
        assert_eq!(calls[0], Duration::ZERO);
        for pair in calls.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= period.mul_f64(0.9) && gap <= period, "{gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refreshes_are_retried_sooner_then_the_period_resumes() {
        let period = Duration::from_secs(60);
        let calls =
            schedule_calls(period, vec![false, false, false, false, false, true, true]).await;
        let gaps: Vec<Duration> = calls.windows(2).map(|p| p[1] - p[0]).collect();
        assert_eq!(gaps.len(), 6);
        // Retries after 5, 10, 20, 40 s (each picked from its upper half), then capped by
        // the period; after the success, one period again.
        for (gap, ceiling) in gaps.iter().zip([5, 10, 20, 40, 60]) {
            let ceiling = Duration::from_secs(ceiling);
            assert!(*gap >= ceiling / 2 && *gap <= ceiling, "{gaps:?}");
        }
        assert!(
            gaps[5] >= period.mul_f64(0.9) && gaps[5] <= period,
            "{gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_a_refresh_in_flight() {
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let started = Instant::now();
        run_on_schedule(Duration::from_secs(300), &cancel, || async {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            true
        })
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
