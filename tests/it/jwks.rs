//! The identity provider's key set against a local HTTPS provider whose certificates the
//! test makes: trust only through `jwks.ca_file` and the right host name, byte-for-byte
//! writes with the TTL, failures that keep the last good value, the TTL extended while the
//! provider stays down, and the daemon refreshing the server's key on schedule.
//!
//! The refresher tests write a key of their own (`Refresher::with_key`) on the shared
//! Redis, so they run in parallel and never touch a real server's key set; the daemon test
//! runs the daemon unchanged against a private `redis-server`, where the production key
//! name is exercised without fighting anyone over it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_cache_warmer::{
    Cached, FetchError, JWKS_KEY, JwksSettings, MAX_DOCUMENT_BYTES, MAX_REDIRECTS, Outcome,
    Refresher, ServiceUrl, command_pool,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::chaos_support::PrivateRedis;
use crate::helpers::{TestEnv, wait_for};

/// A key set as a provider might format it: the bytes must arrive exactly as sent.
pub(crate) const KEY_SET: &str = "{ \"keys\": [\n  {\"kid\": \"rsa-2024\", \"kty\": \"RSA\", \"use\": \"sig\", \
     \"alg\": \"RS256\", \"n\": \"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAt\", \
     \"e\": \"AQAB\"},\n  {\"kid\": \"ec-caf\\u00e9\", \"kty\": \"EC\", \"crv\": \"P-256\", \
     \"x\": \"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\", \
     \"y\": \"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}\n] }\n";
/// The same provider after a key rotation.
const ROTATED_KEY_SET: &str =
    r#"{"keys":[{"kty":"RSA","kid":"rsa-2025","n":"xjlCRBqkOB","e":"AQAB"}]}"#;

/// What the provider answers on `/jwks`.
#[derive(Clone)]
pub(crate) enum Reply {
    /// 200 with a Content-Length.
    Document(Vec<u8>),
    /// 200 without a Content-Length: the body ends when the connection closes.
    Unsized(Vec<u8>),
    /// An empty answer with this status.
    Status(u16),
    /// The document, but only after this long.
    Slow(Duration),
}

/// A local HTTPS identity provider; `/moved` redirects to `/jwks`, `/loop` to itself.
pub(crate) struct TestIdp {
    port: u16,
    ca_file: tempfile::NamedTempFile,
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl TestIdp {
    /// Starts it with a certificate for `names`, signed by a CA made for this test.
    pub(crate) async fn start(names: &[&str]) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dicom-cache-warmer test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let leaf_key = KeyPair::generate().expect("server key");
        let mut leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca)
            .expect("server certificate");

        let ca_file = tempfile::NamedTempFile::new().expect("CA file");
        std::fs::write(ca_file.path(), ca.pem()).expect("write CA file");
        let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), CertificateDer::clone(ca.der())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .expect("server TLS config");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let reply = Arc::new(Mutex::new(Reply::Document(KEY_SET.into())));
        let hits = Arc::new(AtomicUsize::new(0));
        let server = {
            let (reply, hits) = (reply.clone(), hits.clone());
            tokio::spawn(async move {
                // Dropped with the server task: slow answers in hand end with it.
                let mut connections = JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    while connections.try_join_next().is_some() {}
                    connections.spawn(serve(acceptor.clone(), tcp, reply.clone(), hits.clone()));
                }
            })
        };
        Self {
            port,
            ca_file,
            reply,
            hits,
            server,
        }
    }

    pub(crate) fn reply_with(&self, reply: Reply) {
        *self.reply.lock().expect("reply") = reply;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Settings for `path` on this provider, trusting its CA or not.
    pub(crate) fn settings(&self, path: &str, trust_ca: bool) -> JwksSettings {
        JwksSettings {
            url: Some(ServiceUrl::from(
                format!("https://127.0.0.1:{}{path}", self.port).as_str(),
            )),
            ca_file: trust_ca.then(|| self.ca_file.path().to_owned()),
            timeout_ms: 500,
            ..JwksSettings::default()
        }
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Answers one request on one connection, then closes it.
async fn serve(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tls.read(&mut buffer).await?;
        if read == 0 || head.len() > 65_536 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/");
    let reply = match path {
        "/moved" => Reply::Status(302),
        "/loop" => Reply::Status(307),
        _ => reply.lock().expect("reply").clone(),
    };
    let response = match reply {
        Reply::Document(body) => ok_with_length(body),
        Reply::Unsized(body) => {
            let mut response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                 Connection: close\r\n\r\n"
                .to_vec();
            response.extend_from_slice(&body);
            response
        }
        Reply::Status(302) => {
            b"HTTP/1.1 302 Found\r\nLocation: /jwks\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
        Reply::Status(307) => {
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec()
        }
        Reply::Status(status) => {
            format!("HTTP/1.1 {status} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes()
        }
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            ok_with_length(KEY_SET.into())
        }
    };
    tls.write_all(&response).await?;
    tls.shutdown().await
}

fn ok_with_length(body: Vec<u8>) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// A refresher for `settings` writing this test's own key, which `TestEnv` removes.
fn refresher(env: &TestEnv, settings: &JwksSettings) -> Refresher {
    let pool = command_pool(&env.settings.redis).expect("pool");
    Refresher::new(settings, pool)
        .expect("refresher")
        .expect("jwks.url is set")
        .with_key(&test_key(env))
}

fn test_key(env: &TestEnv) -> String {
    format!("jwks:{}", env.tenant_prefix)
}

/// The value of `key`, as bytes.
pub(crate) async fn get_bytes(con: &MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    let mut con = con.clone();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("GET")
}

/// The TTL of `key` in seconds (negative without one, as Redis answers).
pub(crate) async fn ttl(con: &MultiplexedConnection, key: &str) -> i64 {
    let mut con = con.clone();
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("TTL")
}

/// The key's time to live in ms (-2 when it does not exist).
async fn pttl(con: &MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut con.clone())
        .await
        .expect("PTTL")
}

/// Redis' clock, in ms since the epoch.
async fn redis_now_ms(con: &MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut con.clone())
        .await
        .expect("TIME");
    secs * 1_000 + micros / 1_000
}

/// Sets the TTL of `key`, which must exist.
pub(crate) async fn expire(con: &MultiplexedConnection, key: &str, secs: u64) {
    let mut con = con.clone();
    let set: i64 = redis::cmd("EXPIRE")
        .arg(key)
        .arg(secs)
        .query_async(&mut con)
        .await
        .expect("EXPIRE");
    assert_eq!(set, 1, "{key} exists");
}

/// One refresh, whose Redis calls must succeed.
pub(crate) async fn refresh(refresher: &Refresher) -> Outcome {
    refresher.refresh_once().await.expect("Redis answers")
}

fn network_error(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Kept {
            error: FetchError::Network(text),
            ..
        } => text,
        other => panic!("expected a network failure, got {other:?}"),
    }
}

#[tokio::test]
async fn the_provider_is_trusted_only_through_ca_file() {
    let env = TestEnv::new().await;
    let idp = TestIdp::start(&["127.0.0.1", "localhost"]).await;
    let key = test_key(&env);

    let untrusting = refresher(&env, &idp.settings("/jwks", false));
    let outcome = refresh(&untrusting).await;
    let error = network_error(&outcome);
    assert!(error.contains("certificate"), "{error}");
    assert!(
        matches!(
            outcome,
            Outcome::Kept {
                cached: Cached::Missing,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(get_bytes(&env.redis, &key).await, None);

    let trusting = refresher(&env, &idp.settings("/jwks", true));
    let outcome = refresh(&trusting).await;
    assert!(matches!(outcome, Outcome::Written(_)), "{outcome:?}");
    assert_eq!(
        get_bytes(&env.redis, &key).await.as_deref(),
        Some(KEY_SET.as_bytes())
    );
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused_even_with_ca_file() {
    let env = TestEnv::new().await;
    let idp = TestIdp::start(&["idp.example.org"]).await;

    let outcome = refresh(&refresher(&env, &idp.settings("/jwks", true))).await;
    let error = network_error(&outcome);
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(get_bytes(&env.redis, &test_key(&env)).await, None);
}

#[tokio::test]
async fn a_valid_key_set_lands_byte_for_byte_under_the_key_with_its_ttl() {
    let env = TestEnv::new().await;
    let idp = TestIdp::start(&["127.0.0.1"]).await;
    let key = test_key(&env);
    let settings = idp.settings("/jwks", true);
    let refresher = refresher(&env, &settings);

    let Outcome::Written(summary) = refresh(&refresher).await else {
        panic!("the key set is written");
    };
    assert_eq!(summary.keys, 2);
    assert_eq!(summary.kids, ["rsa-2024", "ec-café"]);
    assert_eq!(
        get_bytes(&env.redis, &key).await.as_deref(),
        Some(KEY_SET.as_bytes())
    );
    let ttl_secs = settings.ttl_secs as i64;
    let left = ttl(&env.redis, &key).await;
    assert!((ttl_secs - 5..=ttl_secs).contains(&left), "TTL {left}");

    // A rotation replaces it, with a full TTL again.
    idp.reply_with(Reply::Document(ROTATED_KEY_SET.into()));
    expire(&env.redis, &key, 1_000).await;
    assert!(matches!(refresh(&refresher).await, Outcome::Written(_)));
    assert_eq!(
        get_bytes(&env.redis, &key).await.as_deref(),
        Some(ROTATED_KEY_SET.as_bytes())
    );
    assert!(ttl(&env.redis, &key).await > ttl_secs - 5);
}

#[tokio::test]
async fn redirects_are_followed_up_to_a_limit() {
    let env = TestEnv::new().await;
    let idp = TestIdp::start(&["127.0.0.1"]).await;
    let key = test_key(&env);

    let moved = refresh(&refresher(&env, &idp.settings("/moved", true))).await;
    assert!(matches!(moved, Outcome::Written(_)), "{moved:?}");
    assert_eq!(
        get_bytes(&env.redis, &key).await.as_deref(),
        Some(KEY_SET.as_bytes())
    );

    let before = idp.hits();
    let looping = refresh(&refresher(&env, &idp.settings("/loop", true))).await;
    let error = network_error(&looping);
    assert!(error.contains("redirect"), "{error}");
    assert_eq!(idp.hits() - before, 1 + MAX_REDIRECTS);
    assert_eq!(
        get_bytes(&env.redis, &key).await.as_deref(),
        Some(KEY_SET.as_bytes())
    );
}

#[tokio::test]
async fn every_kind_of_failure_leaves_the_previous_value_in_place() {
    let env = TestEnv::new().await;
    let idp = TestIdp::start(&["127.0.0.1"]).await;
    let key = test_key(&env);
    let settings = idp.settings("/jwks", true);
    let refresher = refresher(&env, &settings);
    assert!(matches!(refresh(&refresher).await, Outcome::Written(_)));

    let oversized = {
        let mut body = br#"{"keys":[{"kty":"RSA","n":""#.to_vec();
        body.resize(MAX_DOCUMENT_BYTES + 1_024, b'A');
        body.extend_from_slice(br#"","e":"AQAB"}]}"#);
        body
    };
    let cases: Vec<(&str, Reply, &str)> = vec![
        ("not JSON", Reply::Document(b"{\"keys\": [".to_vec()), "invalid"),
        ("an HTML page", Reply::Document(b"<html></html>".to_vec()), "invalid"),
        ("an empty key list", Reply::Document(br#"{"keys":[]}"#.to_vec()), "invalid"),
        (
            "an RSA key without its modulus",
            Reply::Document(br#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#.to_vec()),
            "invalid",
        ),
        (
            "a private RSA key",
            Reply::Document(
                br#"{"keys":[{"kty":"RSA","kid":"k1","n":"0vx7","e":"AQAB","d":"X4cT","p":"83i","q":"3dfO"}]}"#
                    .to_vec(),
            ),
            "private_key",
        ),
        (
            "a private EC key",
            Reply::Document(
                br#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83O","y":"x_FE","d":"jpsQ"}]}"#
                    .to_vec(),
            ),
            "private_key",
        ),
        (
            "a symmetric secret",
            Reply::Document(br#"{"keys":[{"kty":"oct","k":"GawgguFyGrWKav7AX4VKUg"}]}"#.to_vec()),
            "private_key",
        ),
        ("status 500", Reply::Status(500), "status"),
        ("status 404", Reply::Status(404), "status"),
        ("an oversized body with its length", Reply::Document(oversized.clone()), "too_large"),
        ("an oversized body without a length", Reply::Unsized(oversized), "too_large"),
        ("a provider slower than the timeout", Reply::Slow(Duration::from_secs(10)), "timeout"),
    ];
    for (case, reply, reason) in cases {
        idp.reply_with(reply);
        let outcome = refresh(&refresher).await;
        let Outcome::Kept { error, cached, .. } = &outcome else {
            panic!("{case}: expected the cached key set kept, got {outcome:?}");
        };
        assert_eq!(error.reason(), reason, "{case}: {error}");
        assert!(
            matches!(
                cached,
                Cached::Expiring {
                    extended: false,
                    ..
                }
            ),
            "{case}: {cached:?}"
        );
        assert_eq!(
            get_bytes(&env.redis, &key).await.as_deref(),
            Some(KEY_SET.as_bytes()),
            "{case}: the previous value stays"
        );
        // Far from expiring: the TTL is left as it was.
        let left = ttl(&env.redis, &key).await;
        assert!(
            left <= settings.ttl_secs as i64 && left > settings.ttl_secs as i64 - 60,
            "{case}: TTL {left}"
        );
    }
}

#[tokio::test]
async fn the_ttl_is_extended_while_the_provider_stays_down() {
    let env = TestEnv::new().await;
    let idp = TestIdp::start(&["127.0.0.1"]).await;
    let key = test_key(&env);
    let settings = idp.settings("/jwks", true);
    let refresher = refresher(&env, &settings);
    let full = settings.ttl_secs;

    // Down from the start: nothing is cached, and nothing worse is written.
    idp.reply_with(Reply::Status(503));
    let outcome = refresh(&refresher).await;
    assert!(
        matches!(
            outcome,
            Outcome::Kept {
                cached: Cached::Missing,
                age_secs: None,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(get_bytes(&env.redis, &key).await, None);

    idp.reply_with(Reply::Document(KEY_SET.into()));
    assert!(matches!(refresh(&refresher).await, Outcome::Written(_)));
    idp.reply_with(Reply::Status(503));
    // The provider stays down: each time the key set nears its end (simulated by
    // shortening its TTL below two refresh periods), a failed refresh gives it a full TTL.
    for round in 0..3 {
        expire(&env.redis, &key, 100).await;
        let outcome = refresh(&refresher).await;
        let Outcome::Kept {
            cached, age_secs, ..
        } = &outcome
        else {
            panic!("round {round}: {outcome:?}");
        };
        assert_eq!(
            *cached,
            Cached::Expiring {
                remaining_secs: full,
                extended: true
            },
            "round {round}"
        );
        assert!(
            age_secs.is_some_and(|age| age < 60),
            "round {round}: {age_secs:?}"
        );
        assert!(
            ttl(&env.redis, &key).await > full as i64 - 5,
            "round {round}"
        );
        assert_eq!(
            get_bytes(&env.redis, &key).await.as_deref(),
            Some(KEY_SET.as_bytes())
        );
        // Right after, the key set is far from expiring: left alone.
        let again = refresh(&refresher).await;
        assert!(
            matches!(
                again,
                Outcome::Kept {
                    cached: Cached::Expiring {
                        extended: false,
                        ..
                    },
                    ..
                }
            ),
            "round {round}: {again:?}"
        );
    }
}

#[tokio::test]
async fn the_daemon_keeps_the_servers_key_warm_on_schedule_and_stops_on_cancel() {
    let env = TestEnv::new().await;
    let idp = TestIdp::start(&["127.0.0.1"]).await;
    let redis = PrivateRedis::start().await;
    let con = redis.connection().await;
    let mut settings = env.settings.clone();
    settings.redis.url = ServiceUrl::from(redis.url().as_str());
    settings.jwks = JwksSettings {
        refresh_secs: 1,
        ttl_secs: 3,
        ..idp.settings("/jwks", true)
    };
    settings.validate().expect("valid settings");
    let daemon = env.start_daemon_with(settings);

    wait_for("the key set under the server's key", || async {
        get_bytes(&con, JWKS_KEY).await.as_deref() == Some(KEY_SET.as_bytes())
    })
    .await;
    // Written with jwks.ttl_secs (no TTL reads -1, a longer one more than 3).
    wait_for("the key set's TTL of at most 3 s", || async {
        (1..=3).contains(&ttl(&con, JWKS_KEY).await)
    })
    .await;
    let first = idp.hits();
    wait_for("two more refreshes, one period apart", || async {
        idp.hits() >= first + 2
    })
    .await;
    idp.reply_with(Reply::Document(ROTATED_KEY_SET.into()));
    wait_for("the rotated key set", || async {
        get_bytes(&con, JWKS_KEY).await.as_deref() == Some(ROTATED_KEY_SET.as_bytes())
    })
    .await;

    // Down for longer than the TTL the key set had then (by Redis' clock, which expires
    // it): the key set stays, extended on each failed refresh.
    idp.reply_with(Reply::Status(500));
    let down = idp.hits();
    let expiring_at = redis_now_ms(&con).await + pttl(&con, JWKS_KEY).await;
    wait_for(
        "three failed refreshes, past the key set's old expiry",
        || async { idp.hits() >= down + 3 && redis_now_ms(&con).await > expiring_at },
    )
    .await;
    assert_eq!(
        get_bytes(&con, JWKS_KEY).await.as_deref(),
        Some(ROTATED_KEY_SET.as_bytes())
    );

    daemon.stop().await;
    let stopped = idp.hits();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(idp.hits(), stopped, "no refresh after the daemon stopped");
}

#[tokio::test]
async fn readiness_fails_while_no_key_set_is_cached_and_says_why() {
    let env = TestEnv::new().await;
    // The production key name, on a Redis of the test's own.
    let redis = PrivateRedis::start().await;
    let idp = TestIdp::start(&["127.0.0.1"]).await;
    idp.reply_with(Reply::Status(503));
    let settings = idp.settings("/jwks", true);
    let port = crate::endpoint::free_port();
    let vars = [
        ("DCW__REDIS__URL", redis.url()),
        (
            "DCW__JWKS__URL",
            settings.url.as_ref().expect("url").expose().to_owned(),
        ),
        (
            "DCW__JWKS__CA_FILE",
            idp.ca_file.path().display().to_string(),
        ),
        ("DCW__JWKS__REFRESH_SECS", "1".to_owned()),
        ("DCW__JWKS__TIMEOUT_MS", "500".to_owned()),
        ("DCW__HTTP__LISTEN", format!("127.0.0.1:{port}")),
    ];
    let replica = crate::chaos_support::Replica::start(&env, &vars).await;
    let get = |path: &'static str| crate::endpoint::get(port, path);
    wait_for("readiness to name the missing key set", || async {
        get("/readyz")
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains("key set"))
    })
    .await;
    let (_, metrics) = get("/metrics").await.expect("metrics");
    assert!(metrics.contains("dcw_jwks_cached 0"), "{metrics}");

    idp.reply_with(Reply::Document(KEY_SET.into()));
    wait_for("readiness once the key set is cached", || async {
        get("/readyz")
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    let (_, metrics) = get("/metrics").await.expect("metrics");
    assert!(metrics.contains("dcw_jwks_cached 1"), "{metrics}");
    // Every metric the dashboard and the alert rules use is exported (the stream gauges
    // follow the first probe that finds the group).
    wait_for("the stream gauges", || async {
        get("/metrics")
            .await
            .is_some_and(|(_, m)| m.contains("dcw_stream_lag "))
    })
    .await;
    let (_, metrics) = get("/metrics").await.expect("metrics");
    let exported = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(exported.path(), &metrics).expect("write the metrics");
    let checked = crate::helpers::output_of(
        tokio::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/check-dashboard.py"
            ))
            .arg(exported.path()),
    )
    .await;
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(
        get_bytes(&redis.connection().await, JWKS_KEY)
            .await
            .as_deref(),
        Some(KEY_SET.as_bytes())
    );
    replica.stop().await;
}
