//! Typed settings: built-in defaults, `config/default.toml`, `--config FILE`, then
//! `DCW__SECTION__KEY` environment variables; `validate()` names every bad key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// The file read, when present, after the built-in defaults and before `--config`.
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

/// Everything the daemon and its subcommands can be configured with.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Redis connection.
    pub redis: RedisSettings,
    /// PostgreSQL connection.
    pub database: DatabaseSettings,
    /// The ingest stream and its consumer group.
    pub stream: StreamSettings,
    /// The study metadata keys.
    pub cache: CacheSettings,
    /// Series metadata documents.
    pub series: SeriesSettings,
    /// The identity provider's key set.
    pub jwks: JwksSettings,
    /// Graceful stop.
    pub shutdown: ShutdownSettings,
    /// The health and metrics endpoint.
    pub http: HttpSettings,
    /// Log output.
    pub log: LogSettings,
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL; a password inside it is accepted.
    pub url: ServiceUrl,
    /// Password, overriding one in the URL.
    pub password: Option<Secret>,
    /// A file holding the password (a systemd credential or a mounted secret); wins over
    /// `password`.
    pub password_file: Option<PathBuf>,
    /// With a `rediss://` URL: the PEM certificate authority to trust instead of the
    /// platform's roots.
    pub ca_file: Option<PathBuf>,
    /// Connections in the command pool.
    pub pool_size: usize,
    /// Time limit for one command or pipeline, in milliseconds.
    pub command_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: ServiceUrl("redis://127.0.0.1:6379".into()),
            password: None,
            password_file: None,
            ca_file: None,
            pool_size: 8,
            command_timeout_ms: 5_000,
        }
    }
}

impl RedisSettings {
    /// Time limit for one command or pipeline.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://` URL; a password inside it is accepted.
    pub url: ServiceUrl,
    /// Password, overriding one in the URL.
    pub password: Option<Secret>,
    /// A file holding the password; wins over `password`.
    pub password_file: Option<PathBuf>,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Time limit for connecting or taking a pooled connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Server-side `statement_timeout`, in milliseconds.
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: ServiceUrl("postgres://postgres@127.0.0.1:5432/dicom".into()),
            password: None,
            password_file: None,
            max_connections: 4,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 10_000,
        }
    }
}

impl DatabaseSettings {
    /// Time limit for connecting or taking a pooled connection.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// `[stream]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// The ingest stream.
    pub key: String,
    /// The consumer group shared by all replicas.
    pub group: String,
    /// This process's consumer name; unique per process.
    pub consumer: String,
    /// Where bad entries go, with their reason.
    pub dead_letter_key: String,
    /// Entries pending longer than this are reclaimed from their consumer.
    pub claim_idle_ms: u64,
    /// Deliveries after which an entry that keeps failing is dead-lettered.
    pub max_deliveries: u64,
    /// Entries read at most per read.
    pub batch_size: usize,
    /// Entries gathered over several reads, while the stream has more, and coalesced by
    /// study before the cache is written: each study is filled once per window.
    pub coalesce_entries: usize,
    /// How long one read waits for new entries, in milliseconds.
    pub block_ms: u64,
    /// Other consumers idle longer than this and owning no entry are deleted, in milliseconds.
    pub stale_consumer_ms: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            key: "dicom:ingest".into(),
            group: "dicom-cache-warmer".into(),
            consumer: default_consumer_name(),
            dead_letter_key: "dicom:ingest:dead".into(),
            claim_idle_ms: 60_000,
            max_deliveries: 5,
            batch_size: 1_000,
            coalesce_entries: 1_000_000,
            block_ms: 1_000,
            stale_consumer_ms: 600_000,
        }
    }
}

impl StreamSettings {
    /// How long one read waits for new entries.
    pub fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }

    /// Entries pending longer than this are reclaimed.
    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }

    /// How often idle entries are looked for: twice per `claim_idle_ms`.
    pub fn claim_interval(&self) -> Duration {
        self.claim_idle() / 2
    }
}

/// Host name and process id: unique per process, readable in `XINFO CONSUMERS`.
fn default_consumer_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}-{}", std::process::id())
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Lifetime of a study metadata key, in seconds (the server uses 7200).
    pub study_ttl_secs: u64,
    /// Delay of the second look at a filled study's negative flag, in milliseconds.
    pub negative_recheck_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            study_ttl_secs: 7_200,
            negative_recheck_ms: 2_000,
        }
    }
}

impl CacheSettings {
    /// Delay of the second look at a filled study's negative flag.
    pub fn negative_recheck(&self) -> Duration {
        Duration::from_millis(self.negative_recheck_ms)
    }
}

/// `[series]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeriesSettings {
    /// Root of the server's DICOM files; series documents are off when unset.
    pub dicom_root: Option<PathBuf>,
    /// Root of the server's JSON documents; series documents are off when unset.
    pub json_root: Option<PathBuf>,
    /// A series is built once it has had no event for this long, in milliseconds.
    pub quiet_ms: u64,
    /// ... and at the latest this long after its first pending event, in milliseconds.
    pub max_delay_ms: u64,
    /// Also store each document in Redis.
    pub redis_copy: bool,
    /// Upsert the server's `dicom_json_meta` row for each built series.
    pub record_status: bool,
    /// Base of the BulkDataURIs in series documents (pixel data, large binary values);
    /// they are left out when unset.
    pub bulkdata_base_url: Option<String>,
    /// Series documents built at the same time.
    pub max_concurrent_builds: usize,
}

impl SeriesSettings {
    /// The two roots, when series documents are on.
    pub fn roots(&self) -> Option<(&Path, &Path)> {
        Some((self.dicom_root.as_deref()?, self.json_root.as_deref()?))
    }
}

impl Default for SeriesSettings {
    fn default() -> Self {
        Self {
            dicom_root: None,
            json_root: None,
            quiet_ms: 3_000,
            max_delay_ms: 30_000,
            redis_copy: false,
            record_status: false,
            bulkdata_base_url: None,
            max_concurrent_builds: 2,
        }
    }
}

/// `[jwks]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwksSettings {
    /// The identity provider's key set URL (`https://`); refresh is off when unset.
    pub url: Option<ServiceUrl>,
    /// Seconds between refreshes.
    pub refresh_secs: u64,
    /// Lifetime of the cached key set, in seconds.
    pub ttl_secs: u64,
    /// A PEM file of extra trusted root certificates, beside the platform's.
    pub ca_file: Option<PathBuf>,
    /// Time limit for one fetch (connecting, redirects and the whole body), in milliseconds.
    pub timeout_ms: u64,
    /// Accept a plain `http://` URL (and redirects to one); off by default.
    pub allow_http: bool,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            url: None,
            refresh_secs: 300,
            ttl_secs: 6_000,
            ca_file: None,
            timeout_ms: 5_000,
            allow_http: false,
        }
    }
}

impl JwksSettings {
    /// Time between refreshes.
    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_secs)
    }

    /// Time limit for one fetch.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Seconds allowed to finish the work in hand after SIGTERM.
    pub grace_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { grace_secs: 25 }
    }
}

impl ShutdownSettings {
    /// Time allowed to finish the work in hand after SIGTERM.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of `/healthz`, `/readyz` and `/metrics`, such as `0.0.0.0:9464`.
    pub listen: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `tracing` filter, such as `info` or `dicom_cache_warmer=debug`; `RUST_LOG` wins.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for people.
    Pretty,
    /// One JSON object per line for log collectors.
    Json,
}

/// A secret value: printed as `[redacted]` by `Debug`, `Display` and `Serialize`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// A service URL that may carry credentials: shown with its password redacted.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ServiceUrl(String);

impl ServiceUrl {
    /// The full URL, credentials included, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `[redacted]`; unparsable URLs are hidden whole.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_none() {
                    return url.to_string();
                }
                // A placeholder the URL keeps as it is (brackets would be percent-encoded).
                const PLACEHOLDER: &str = "dcwredactedpassword";
                // Cannot fail: a URL with a password has a host.
                let _ = url.set_password(Some(PLACEHOLDER));
                url.to_string().replacen(PLACEHOLDER, "[redacted]", 1)
            }
            Err(_) => "[unparsable URL, redacted]".into(),
        }
    }

    fn scheme(&self) -> Option<String> {
        url::Url::parse(&self.0).ok().map(|u| u.scheme().to_owned())
    }
}

impl From<&str> for ServiceUrl {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for ServiceUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// Why the settings could not be used: one line per bad key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Settings {
    /// Loads the layers (defaults, `config/default.toml` when present, `file`, then the
    /// environment) and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(Path::new(DEFAULT_CONFIG_FILE), file, std::env::vars())
    }

    /// As [`Settings::load`], with the default file and the environment given explicitly.
    pub fn load_from(
        default_file: &Path,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with("DCW__"))
            .collect();
        let mut builder =
            config::Config::builder().add_source(config::File::from(default_file).required(false));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let layered = builder
            .add_source(
                config::Environment::with_prefix("DCW")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        let mut settings: Settings = layered
            .try_deserialize()
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        settings.read_password_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Replaces each password by the content of its `password_file`, when one is given.
    fn read_password_files(&mut self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (key, file, password) in [
            (
                "redis.password_file",
                &self.redis.password_file,
                &mut self.redis.password,
            ),
            (
                "database.password_file",
                &self.database.password_file,
                &mut self.database.password,
            ),
        ] {
            let Some(file) = file else { continue };
            match std::fs::read_to_string(file) {
                // One trailing newline is what `echo` and most secret tools add.
                Ok(text) => {
                    *password = Some(Secret(
                        text.strip_suffix('\n')
                            .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t))
                            .to_owned(),
                    ))
                }
                Err(error) => {
                    problems.push(format!("{key}: cannot read {}: {error}", file.display()))
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Checks every value that deserialized but cannot work, reporting all of them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, why: &str| {
            if !ok {
                problems.push(format!("{key}: {why}"));
            }
        };
        check(
            matches!(self.redis.url.scheme().as_deref(), Some("redis" | "rediss")),
            "redis.url",
            "must be a redis:// or rediss:// URL",
        );
        check(
            self.redis.pool_size > 0,
            "redis.pool_size",
            "must be at least 1",
        );
        check(
            self.redis.command_timeout_ms >= 10,
            "redis.command_timeout_ms",
            "must be at least 10",
        );
        check(
            matches!(
                self.database.url.scheme().as_deref(),
                Some("postgres" | "postgresql")
            ),
            "database.url",
            "must be a postgres:// URL",
        );
        check(
            self.database.max_connections > 0,
            "database.max_connections",
            "must be at least 1",
        );
        check(
            self.database.connect_timeout_ms >= 10,
            "database.connect_timeout_ms",
            "must be at least 10",
        );
        check(
            self.database.statement_timeout_ms >= 10,
            "database.statement_timeout_ms",
            "must be at least 10",
        );
        for (key, value) in [
            ("stream.key", &self.stream.key),
            ("stream.group", &self.stream.group),
            ("stream.consumer", &self.stream.consumer),
            ("stream.dead_letter_key", &self.stream.dead_letter_key),
        ] {
            check(
                is_plain_name(value),
                key,
                "must be 1 to 200 printable characters without spaces",
            );
        }
        check(
            self.stream.dead_letter_key != self.stream.key,
            "stream.dead_letter_key",
            "must differ from stream.key",
        );
        check(
            (1..=10_000).contains(&self.stream.batch_size),
            "stream.batch_size",
            "must be between 1 and 10000",
        );
        check(
            (self.stream.batch_size..=10_000_000).contains(&self.stream.coalesce_entries),
            "stream.coalesce_entries",
            "must be between stream.batch_size and 10000000",
        );
        check(
            (1..=60_000).contains(&self.stream.block_ms),
            "stream.block_ms",
            "must be between 1 and 60000",
        );
        check(
            self.stream.max_deliveries >= 1,
            "stream.max_deliveries",
            "must be at least 1",
        );
        // Reclaiming sooner than a batch can take would hand live work to a second consumer.
        let longest_batch_ms = self.longest_batch().as_millis();
        check(
            u128::from(self.stream.claim_idle_ms) > longest_batch_ms,
            "stream.claim_idle_ms",
            &format!(
                "must exceed the longest batch ({longest_batch_ms} ms: stream.block_ms + \
                 database.statement_timeout_ms + 3 x redis.command_timeout_ms)"
            ),
        );
        check(
            self.stream.stale_consumer_ms > self.stream.claim_idle_ms,
            "stream.stale_consumer_ms",
            "must exceed stream.claim_idle_ms",
        );
        check(
            (1..=300_000).contains(&self.cache.negative_recheck_ms),
            "cache.negative_recheck_ms",
            "must be between 1 and 300000 (the server's flag lives 300 s)",
        );
        check(
            self.cache.study_ttl_secs >= 1,
            "cache.study_ttl_secs",
            "must be at least 1",
        );
        check(
            self.series.dicom_root.is_some() == self.series.json_root.is_some(),
            "series.json_root",
            "series.dicom_root and series.json_root must be set together",
        );
        check(
            self.series.quiet_ms >= 1,
            "series.quiet_ms",
            "must be at least 1",
        );
        check(
            self.series.max_delay_ms >= self.series.quiet_ms,
            "series.max_delay_ms",
            "must be at least series.quiet_ms",
        );
        check(
            self.jwks.refresh_secs >= 1,
            "jwks.refresh_secs",
            "must be at least 1",
        );
        // A key set that outlives a few failed refreshes rides out a short provider outage.
        check(
            self.jwks.ttl_secs >= self.jwks.refresh_secs.saturating_mul(3),
            "jwks.ttl_secs",
            "must be at least 3 x jwks.refresh_secs",
        );
        check(
            (100..=60_000).contains(&self.jwks.timeout_ms)
                && self.jwks.timeout_ms < self.jwks.refresh_secs.saturating_mul(1_000),
            "jwks.timeout_ms",
            "must be between 100 and 60000 and shorter than jwks.refresh_secs",
        );
        if let Some(url) = &self.jwks.url {
            // http and https URLs always have a host (the url crate refuses them without).
            match url.scheme().as_deref() {
                Some("https") => {}
                Some("http") => check(
                    self.jwks.allow_http,
                    "jwks.url",
                    "plain http:// is refused unless jwks.allow_http = true",
                ),
                _ => check(false, "jwks.url", "must be an https:// URL"),
            }
        }
        check(
            (1..=3_600).contains(&self.shutdown.grace_secs),
            "shutdown.grace_secs",
            "must be between 1 and 3600",
        );
        check(
            self.http.listen.parse::<std::net::SocketAddr>().is_ok(),
            "http.listen",
            "must be an address and port such as 0.0.0.0:9464",
        );
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            "must be a tracing filter such as `info` or `dicom_cache_warmer=debug`",
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The longest a batch may legitimately take: a read, a query and three round trips,
    /// each bounded by its timeout.
    pub fn longest_batch(&self) -> Duration {
        Duration::from_millis(
            self.stream.block_ms
                + self.database.statement_timeout_ms
                + 3 * self.redis.command_timeout_ms,
        )
    }

    /// The main loop is considered wedged when silent this long: two of the longest
    /// batches plus the longest backoff between retries.
    pub fn liveness_max_silence(&self) -> Duration {
        2 * self.longest_batch() + crate::backoff::MAX_DELAY
    }

    /// The effective settings as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}"))
    }
}

/// A Redis key or consumer name we are willing to use as given by the operator.
fn is_plain_name(value: &str) -> bool {
    (1..=200).contains(&value.len()) && value.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    fn load(
        default: &str,
        file: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<Settings, ConfigError> {
        let default = toml_file(default);
        let file = file.map(toml_file);
        Settings::load_from(default.path(), file.as_ref().map(|f| f.path()), env(vars))
    }

    #[test]
    fn built_in_defaults_match_the_spec() {
        let s = load("", None, &[]).expect("defaults are valid");
        assert_eq!(s.redis.url.expose(), "redis://127.0.0.1:6379");
        assert_eq!(
            s.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/dicom"
        );
        assert_eq!(s.stream.key, "dicom:ingest");
        assert_eq!(s.stream.group, "dicom-cache-warmer");
        assert_eq!(s.stream.dead_letter_key, "dicom:ingest:dead");
        assert_eq!(s.stream.claim_idle_ms, 60_000);
        assert_eq!(s.stream.max_deliveries, 5);
        assert_eq!(s.cache.study_ttl_secs, 7_200);
        assert_eq!(s.series.quiet_ms, 3_000);
        assert_eq!(s.series.max_delay_ms, 30_000);
        assert_eq!(s.jwks.refresh_secs, 300);
        assert_eq!(s.jwks.ttl_secs, 6_000);
        assert_eq!(s.shutdown.grace_secs, 25);
        assert!(
            s.stream
                .consumer
                .ends_with(&format!("-{}", std::process::id()))
        );
    }

    #[test]
    fn later_layers_win() {
        let s = load(
            "[stream]\nkey = \"from-default\"\ngroup = \"g-default\"\nbatch_size = 10\n",
            Some("[stream]\nkey = \"from-file\"\nbatch_size = 20\n"),
            &[("DCW__STREAM__BATCH_SIZE", "30")],
        )
        .expect("valid");
        assert_eq!(s.stream.group, "g-default");
        assert_eq!(s.stream.key, "from-file");
        assert_eq!(s.stream.batch_size, 30);
    }

    #[test]
    fn environment_overrides_nested_keys_with_underscores() {
        let s = load(
            "",
            None,
            &[
                ("DCW__STREAM__DEAD_LETTER_KEY", "dl"),
                ("DCW__CACHE__STUDY_TTL_SECS", "60"),
                ("DCW__REDIS__PASSWORD", "0123"),
                ("DCW__SERIES__REDIS_COPY", "true"),
            ],
        )
        .expect("valid");
        assert_eq!(s.stream.dead_letter_key, "dl");
        assert_eq!(s.cache.study_ttl_secs, 60);
        // Strings that look like numbers stay strings: no leading zero is lost.
        assert_eq!(s.redis.password.as_ref().map(Secret::expose), Some("0123"));
        assert!(s.series.redis_copy);
    }

    #[test]
    fn every_bad_key_is_named_at_once() {
        let err = load(
            "",
            None,
            &[
                ("DCW__REDIS__URL", "http://x"),
                ("DCW__STREAM__BATCH_SIZE", "0"),
                ("DCW__STREAM__CLAIM_IDLE_MS", "10"),
                ("DCW__SERIES__DICOM_ROOT", "/tmp"),
                ("DCW__SHUTDOWN__GRACE_SECS", "0"),
                ("DCW__JWKS__TTL_SECS", "10"),
            ],
        )
        .expect_err("invalid");
        let keys: Vec<&str> = err
            .0
            .iter()
            .map(|l| l.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            [
                "redis.url",
                "stream.batch_size",
                "stream.claim_idle_ms",
                "series.json_root",
                "jwks.ttl_secs",
                "shutdown.grace_secs"
            ]
        );
    }

    #[test]
    fn a_window_smaller_than_a_read_is_refused() {
        let err = load(
            "",
            None,
            &[
                ("DCW__STREAM__BATCH_SIZE", "500"),
                ("DCW__STREAM__COALESCE_ENTRIES", "499"),
            ],
        )
        .expect_err("invalid");
        assert_eq!(
            err.0,
            ["stream.coalesce_entries: must be between stream.batch_size and 10000000"]
        );
    }

    #[test]
    fn jwks_settings_are_checked_by_key() {
        let s = load("", None, &[]).expect("defaults are valid");
        assert!(s.jwks.url.is_none());
        assert_eq!(s.jwks.timeout_ms, 5_000);
        assert!(!s.jwks.allow_http);
        assert!(s.jwks.ca_file.is_none());
        let s = load(
            "[jwks]\nurl = \"https://idp.example.org/certs\"\nca_file = \"/etc/idp-ca.pem\"\n",
            None,
            &[],
        )
        .expect("an https URL is valid");
        assert_eq!(
            s.jwks.ca_file.as_deref(),
            Some(Path::new("/etc/idp-ca.pem"))
        );
        let refused = |vars: &[(&str, &str)]| {
            let err = load("", None, vars).expect_err("invalid");
            err.0.iter().map(|l| l.to_string()).collect::<Vec<_>>()
        };
        let http = refused(&[("DCW__JWKS__URL", "http://idp.internal/certs")]);
        assert_eq!(
            http,
            ["jwks.url: plain http:// is refused unless jwks.allow_http = true"]
        );
        load(
            "",
            None,
            &[
                ("DCW__JWKS__URL", "http://idp.internal/certs"),
                ("DCW__JWKS__ALLOW_HTTP", "true"),
            ],
        )
        .expect("http with allow_http is valid");
        for url in [
            "ftp://idp/certs",
            "idp.example.org/certs",
            "file:///etc/jwks.json",
        ] {
            assert_eq!(
                refused(&[("DCW__JWKS__URL", url)]),
                ["jwks.url: must be an https:// URL"],
                "{url}"
            );
        }
        let ttl = refused(&[
            ("DCW__JWKS__REFRESH_SECS", "600"),
            ("DCW__JWKS__TTL_SECS", "1500"),
        ]);
        assert_eq!(
            ttl,
            ["jwks.ttl_secs: must be at least 3 x jwks.refresh_secs"]
        );
        for timeout in ["0", "99", "60001"] {
            let err = refused(&[("DCW__JWKS__TIMEOUT_MS", timeout)]);
            assert!(err[0].starts_with("jwks.timeout_ms: "), "{err:?}");
        }
        let slow = refused(&[
            ("DCW__JWKS__REFRESH_SECS", "2"),
            ("DCW__JWKS__TTL_SECS", "6"),
            ("DCW__JWKS__TIMEOUT_MS", "2000"),
        ]);
        assert!(slow[0].starts_with("jwks.timeout_ms: "), "{slow:?}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let err = load("", None, &[("DCW__STREAM__CLAIM_IDLE_MS", "soon")]).expect_err("invalid");
        assert!(err.to_string().contains("stream.claim_idle_ms"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load("", None, &[("DCW__STREAM__BATCHSIZE", "3")]).expect_err("invalid");
        assert!(err.to_string().contains("batchsize"), "{err}");
    }

    #[test]
    fn passwords_are_read_from_files_without_the_trailing_newline() {
        let redis = toml_file("from-file\n");
        let database = toml_file("db-secret\r\n");
        let s = load(
            "",
            None,
            &[
                ("DCW__REDIS__PASSWORD", "from-env"),
                (
                    "DCW__REDIS__PASSWORD_FILE",
                    &redis.path().display().to_string(),
                ),
                (
                    "DCW__DATABASE__PASSWORD_FILE",
                    &database.path().display().to_string(),
                ),
            ],
        )
        .expect("valid");
        assert_eq!(
            s.redis.password.as_ref().map(Secret::expose),
            Some("from-file")
        );
        assert_eq!(
            s.database.password.as_ref().map(Secret::expose),
            Some("db-secret")
        );
        let err = load(
            "",
            None,
            &[("DCW__DATABASE__PASSWORD_FILE", "/nonexistent/pw")],
        )
        .expect_err("missing file");
        assert!(
            err.0[0].starts_with("database.password_file: cannot read /nonexistent/pw"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = load(
            "",
            None,
            &[
                ("DCW__REDIS__URL", "redis://user:hunter2@127.0.0.1:6379"),
                ("DCW__REDIS__PASSWORD", "sw0rdfish"),
                ("DCW__DATABASE__URL", "postgres://app:letmein@db/dicom"),
            ],
        )
        .expect("valid");
        for shown in [format!("{s:?}"), s.to_redacted_toml()] {
            for secret in ["hunter2", "sw0rdfish", "letmein"] {
                assert!(!shown.contains(secret), "{secret} leaked in {shown}");
            }
            assert!(shown.contains("[redacted]"));
        }
        assert_eq!(s.database.url.expose(), "postgres://app:letmein@db/dicom");
    }
}
