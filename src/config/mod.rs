//! Typed settings: the sections of the settings file, their defaults and the durations
//! read from them. `load` layers the sources (defaults, `config/default.toml`, `--config
//! FILE`, `DCW__SECTION__KEY` environment variables), `validate` names every bad key, and
//! `secret` keeps credentials out of logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod load;
mod secret;
mod validate;

use secret::Secret;
pub use secret::ServiceUrl;

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
    /// The transactional outbox relayed to the ingest stream.
    pub outbox: OutboxSettings,
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
            url: ServiceUrl::from("redis://127.0.0.1:6379"),
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
    /// How the statement timeout reaches the server.
    pub statement_timeout_via: StatementTimeoutVia,
    /// Pooled connections idle this long are closed, in milliseconds.
    pub idle_timeout_ms: u64,
}

/// How the server-side statement timeout reaches PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum StatementTimeoutVia {
    /// The `options` startup parameter of every connection, at no cost per query; PgBouncer
    /// refuses it.
    #[default]
    Startup,
    /// `SET LOCAL` at the start of a transaction around each query, which a
    /// transaction-pooling PgBouncer keeps on one server connection.
    Transaction,
}

impl TryFrom<String> for StatementTimeoutVia {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "startup" => Ok(Self::Startup),
            "transaction" => Ok(Self::Transaction),
            _ => Err(format!(
                "unknown value `{value}`, expected `startup` or `transaction` (behind PgBouncer)"
            )),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: ServiceUrl::from("postgres://postgres@127.0.0.1:5432/dicom"),
            password: None,
            password_file: None,
            max_connections: 4,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 10_000,
            statement_timeout_via: StatementTimeoutVia::Startup,
            idle_timeout_ms: 60_000,
        }
    }
}

impl DatabaseSettings {
    /// Time limit for connecting or taking a pooled connection.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// How long a pooled connection may stay idle. sqlx sends no TCP keepalive, and a NAT or
    /// firewall forgets an idle connection without a word (AWS' after 350 s, Azure's after
    /// 240 s): closed before that, it is never found dead when a query needs it.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The client-side deadline of one query: a connection, the statement timeout, and a
    /// second for the answer to travel.
    pub fn query_deadline(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms + self.statement_timeout_ms + 1_000)
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
    /// Readiness fails when entries wait and none was acknowledged or dead-lettered for
    /// this long, in seconds.
    pub stall_after_secs: u64,
    /// A ceiling on entries read per second, for sites that want Redis headroom while a
    /// backlog drains; none by default.
    pub max_events_per_sec: Option<u32>,
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
            batch_size: 100,
            coalesce_entries: 1_000_000,
            block_ms: 1_000,
            stale_consumer_ms: 600_000,
            stall_after_secs: 600,
            max_events_per_sec: None,
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

    /// How long entries may wait with none done before readiness fails: the setting, and
    /// never less than an entry may legitimately wait for its study (`claim_idle_ms` x
    /// `max_deliveries`, after which it is dead-lettered).
    pub fn stall_after(&self) -> Duration {
        Duration::from_secs(self.stall_after_secs).max(
            self.claim_idle()
                .saturating_mul(u32::try_from(self.max_deliveries).unwrap_or(u32::MAX)),
        )
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
    /// Delay of the first second look at a filled study (negative flag, overwritten key),
    /// in milliseconds; later looks come 5 and 30 times as late.
    #[serde(alias = "negative_recheck_ms")]
    pub recheck_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            study_ttl_secs: 7_200,
            recheck_ms: 2_000,
        }
    }
}

impl CacheSettings {
    /// Delay of the first second look at a filled study.
    pub fn recheck(&self) -> Duration {
        Duration::from_millis(self.recheck_ms)
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
    /// when unset, pixel data is left out and other binary values are inline up to
    /// `inline_binary_max_bytes`.
    pub bulkdata_base_url: Option<String>,
    /// Without a bulk data base URL, the largest binary value written inline
    /// (`InlineBinary`), in bytes; larger ones are left out, logged and counted.
    pub inline_binary_max_bytes: usize,
    /// Series documents built at the same time.
    pub max_concurrent_builds: usize,
    /// A build still running this long is abandoned (a read stuck on storage): its lock is
    /// released and the series retried later, in milliseconds.
    pub build_timeout_ms: u64,
    /// How often a running build renews its lock (a 30 s lease) and its place in the
    /// schedule, in milliseconds.
    pub lock_renew_ms: u64,
}

impl SeriesSettings {
    /// The two roots, when series documents are on.
    pub fn roots(&self) -> Option<(&Path, &Path)> {
        Some((self.dicom_root.as_deref()?, self.json_root.as_deref()?))
    }

    /// How long a build may run before it is abandoned.
    pub fn build_timeout(&self) -> Duration {
        Duration::from_millis(self.build_timeout_ms)
    }

    /// How often a running build renews its lock and its place in the schedule.
    pub fn lock_renew(&self) -> Duration {
        Duration::from_millis(self.lock_renew_ms)
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
            record_status: true,
            bulkdata_base_url: None,
            inline_binary_max_bytes: 65_536,
            max_concurrent_builds: 2,
            build_timeout_ms: 120_000,
            lock_renew_ms: 10_000,
        }
    }
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// Relay the server-side outbox (`dicom-cache-warmer outbox install`) to `stream.key`.
    pub enabled: bool,
    /// The outbox is looked at this often even without a notification (ones missed while
    /// disconnected), in milliseconds.
    pub poll_ms: u64,
    /// Outbox rows taken, published and deleted per transaction.
    pub batch_size: usize,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            poll_ms: 1_000,
            batch_size: 1_000,
        }
    }
}

impl OutboxSettings {
    /// How often the outbox is looked at without a notification.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
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

/// Why the settings could not be used: one line per bad key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl ConfigError {
    /// `Ok` when `problems` is empty, otherwise an error listing them all.
    fn unless_empty(problems: Vec<String>) -> Result<(), Self> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Self(problems))
        }
    }
}

impl Settings {
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

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load;

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
        assert!(!s.outbox.enabled);
        assert_eq!(s.outbox.poll_ms, 1_000);
        assert_eq!(s.outbox.batch_size, 1_000);
        assert_eq!(s.series.build_timeout_ms, 120_000);
        assert_eq!(s.jwks.refresh_secs, 300);
        assert_eq!(s.jwks.ttl_secs, 6_000);
        assert_eq!(s.shutdown.grace_secs, 25);
        assert!(
            s.stream
                .consumer
                .ends_with(&format!("-{}", std::process::id()))
        );
    }
}
