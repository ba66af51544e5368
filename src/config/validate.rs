//! `validate()`: every value that deserialized but cannot work, one `key: why` line each,
//! all reported at once, section by section in the order of the settings file.

use crate::config::{
    CacheSettings, ConfigError, DatabaseSettings, HttpSettings, JwksSettings, LogSettings,
    OutboxSettings, RedisSettings, SeriesSettings, Settings, ShutdownSettings, StreamSettings,
};

impl Settings {
    /// Checks every value that deserialized but cannot work, reporting all of them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        check_redis(&self.redis, &mut problems);
        check_database(&self.database, &mut problems);
        check_stream(&self.stream, &mut problems);
        check_claim_timing(self, &mut problems);
        check_cache(&self.cache, &mut problems);
        check_series(&self.series, &mut problems);
        check_outbox(&self.outbox, &mut problems);
        check_jwks(&self.jwks, &mut problems);
        check_shutdown(&self.shutdown, &mut problems);
        check_http(&self.http, &mut problems);
        check_log(&self.log, &mut problems);
        ConfigError::unless_empty(problems.0)
    }
}

/// The problems found so far, one `key: why` line each.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// Records `why` against `key` unless `ok`.
    fn check(&mut self, ok: bool, key: &str, why: &str) {
        if !ok {
            self.0.push(format!("{key}: {why}"));
        }
    }
}

fn check_redis(redis: &RedisSettings, problems: &mut Problems) {
    problems.check(
        matches!(redis.url.scheme().as_deref(), Some("redis" | "rediss")),
        "redis.url",
        "must be a redis:// or rediss:// URL",
    );
    problems.check(redis.pool_size > 0, "redis.pool_size", "must be at least 1");
    problems.check(
        redis.command_timeout_ms >= 10,
        "redis.command_timeout_ms",
        "must be at least 10",
    );
}

fn check_database(database: &DatabaseSettings, problems: &mut Problems) {
    problems.check(
        matches!(
            database.url.scheme().as_deref(),
            Some("postgres" | "postgresql")
        ),
        "database.url",
        "must be a postgres:// URL",
    );
    problems.check(
        database.max_connections > 0,
        "database.max_connections",
        "must be at least 1",
    );
    problems.check(
        database.connect_timeout_ms >= 10,
        "database.connect_timeout_ms",
        "must be at least 10",
    );
    problems.check(
        database.statement_timeout_ms >= 10,
        "database.statement_timeout_ms",
        "must be at least 10",
    );
    problems.check(
        database.idle_timeout_ms >= 100,
        "database.idle_timeout_ms",
        "must be at least 100",
    );
}

/// The stream's names and sizes; its timing against the other sections is
/// [`check_claim_timing`].
fn check_stream(stream: &StreamSettings, problems: &mut Problems) {
    for (key, value) in [
        ("stream.key", &stream.key),
        ("stream.group", &stream.group),
        ("stream.consumer", &stream.consumer),
        ("stream.dead_letter_key", &stream.dead_letter_key),
    ] {
        problems.check(
            is_plain_name(value),
            key,
            "must be 1 to 200 printable characters without spaces",
        );
    }
    problems.check(
        stream.dead_letter_key != stream.key,
        "stream.dead_letter_key",
        "must differ from stream.key",
    );
    problems.check(
        (1..=10_000).contains(&stream.batch_size),
        "stream.batch_size",
        "must be between 1 and 10000",
    );
    problems.check(
        (stream.batch_size..=10_000_000).contains(&stream.coalesce_entries),
        "stream.coalesce_entries",
        "must be between stream.batch_size and 10000000",
    );
    problems.check(
        (1..=60_000).contains(&stream.block_ms),
        "stream.block_ms",
        "must be between 1 and 60000",
    );
    problems.check(
        stream.max_deliveries >= 1,
        "stream.max_deliveries",
        "must be at least 1",
    );
    if let Some(ceiling) = stream.max_events_per_sec {
        // A read then waits at most a second for its turn.
        problems.check(
            usize::try_from(ceiling).is_ok_and(|ceiling| ceiling >= stream.batch_size),
            "stream.max_events_per_sec",
            "must be at least stream.batch_size (or unset)",
        );
    }
}

/// When pending entries are reclaimed and stale consumers deleted, against the longest
/// batch.
fn check_claim_timing(settings: &Settings, problems: &mut Problems) {
    let stream = &settings.stream;
    // Reclaiming sooner than a batch can take would hand live work to a second consumer.
    let longest_batch_ms = settings.longest_batch().as_millis();
    problems.check(
        u128::from(stream.claim_idle_ms) > longest_batch_ms,
        "stream.claim_idle_ms",
        &format!(
            "must exceed the longest batch ({longest_batch_ms} ms: stream.block_ms + \
             database.statement_timeout_ms + 3 x redis.command_timeout_ms)"
        ),
    );
    problems.check(
        stream.stale_consumer_ms > stream.claim_idle_ms,
        "stream.stale_consumer_ms",
        "must exceed stream.claim_idle_ms",
    );
}

fn check_cache(cache: &CacheSettings, problems: &mut Problems) {
    problems.check(
        (1..=300_000).contains(&cache.recheck_ms),
        "cache.recheck_ms",
        "must be between 1 and 300000 (the server's flag lives 300 s)",
    );
    problems.check(
        cache.study_ttl_secs >= 1,
        "cache.study_ttl_secs",
        "must be at least 1",
    );
}

fn check_series(series: &SeriesSettings, problems: &mut Problems) {
    problems.check(
        series.dicom_root.is_some() == series.json_root.is_some(),
        "series.json_root",
        "series.dicom_root and series.json_root must be set together",
    );
    problems.check(
        series.quiet_ms >= 1,
        "series.quiet_ms",
        "must be at least 1",
    );
    problems.check(
        series.max_delay_ms >= series.quiet_ms,
        "series.max_delay_ms",
        "must be at least series.quiet_ms",
    );
    // Each parse thread holds a value this large and its base64, once per instance.
    problems.check(
        series.inline_binary_max_bytes <= 1_048_576,
        "series.inline_binary_max_bytes",
        "must be at most 1048576",
    );
    problems.check(
        (100..=3_600_000).contains(&series.build_timeout_ms),
        "series.build_timeout_ms",
        "must be between 100 and 3600000",
    );
    // Renewed at least twice per lease, so one slow round trip does not lose the lock.
    problems.check(
        (10..=15_000).contains(&series.lock_renew_ms),
        "series.lock_renew_ms",
        "must be between 10 and 15000 (half the 30 s lock lease)",
    );
}

fn check_outbox(outbox: &OutboxSettings, problems: &mut Problems) {
    problems.check(
        (10..=600_000).contains(&outbox.poll_ms),
        "outbox.poll_ms",
        "must be between 10 and 600000",
    );
    // One XADD pipeline and one bind array per step.
    problems.check(
        (1..=10_000).contains(&outbox.batch_size),
        "outbox.batch_size",
        "must be between 1 and 10000",
    );
}

fn check_jwks(jwks: &JwksSettings, problems: &mut Problems) {
    problems.check(
        jwks.refresh_secs >= 1,
        "jwks.refresh_secs",
        "must be at least 1",
    );
    // A key set that outlives a few failed refreshes rides out a short provider outage.
    problems.check(
        jwks.ttl_secs >= jwks.refresh_secs.saturating_mul(3),
        "jwks.ttl_secs",
        "must be at least 3 x jwks.refresh_secs",
    );
    problems.check(
        (100..=60_000).contains(&jwks.timeout_ms)
            && jwks.timeout_ms < jwks.refresh_secs.saturating_mul(1_000),
        "jwks.timeout_ms",
        "must be between 100 and 60000 and shorter than jwks.refresh_secs",
    );
    if let Some(url) = &jwks.url {
        // http and https URLs always have a host (the url crate refuses them without).
        match url.scheme().as_deref() {
            Some("https") => {}
            Some("http") => problems.check(
                jwks.allow_http,
                "jwks.url",
                "plain http:// is refused unless jwks.allow_http = true",
            ),
            _ => problems.check(false, "jwks.url", "must be an https:// URL"),
        }
    }
}

fn check_shutdown(shutdown: &ShutdownSettings, problems: &mut Problems) {
    problems.check(
        (1..=3_600).contains(&shutdown.grace_secs),
        "shutdown.grace_secs",
        "must be between 1 and 3600",
    );
}

fn check_http(http: &HttpSettings, problems: &mut Problems) {
    problems.check(
        http.listen.parse::<std::net::SocketAddr>().is_ok(),
        "http.listen",
        "must be an address and port such as 0.0.0.0:9464",
    );
}

fn check_log(log: &LogSettings, problems: &mut Problems) {
    problems.check(
        tracing_subscriber::EnvFilter::try_new(&log.level).is_ok(),
        "log.level",
        "must be a tracing filter such as `info` or `dicom_cache_warmer=debug`",
    );
}

/// A Redis key or consumer name we are willing to use as given by the operator.
fn is_plain_name(value: &str) -> bool {
    (1..=200).contains(&value.len()) && value.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::load::tests::load;

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
    fn a_read_ceiling_below_one_read_a_second_is_refused() {
        let err = load(
            "",
            None,
            &[
                ("DCW__STREAM__BATCH_SIZE", "100"),
                ("DCW__STREAM__MAX_EVENTS_PER_SEC", "99"),
            ],
        )
        .expect_err("invalid");
        assert_eq!(
            err.0,
            ["stream.max_events_per_sec: must be at least stream.batch_size (or unset)"]
        );
        let paced = load("", None, &[("DCW__STREAM__MAX_EVENTS_PER_SEC", "5000")]).expect("valid");
        assert_eq!(paced.stream.max_events_per_sec, Some(5_000));
        let unset = load("", None, &[("DCW__STREAM__MAX_EVENTS_PER_SEC", "")]).expect("valid");
        assert_eq!(unset.stream.max_events_per_sec, None);
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
    fn outbox_settings_are_checked_by_key() {
        let s = load(
            "",
            None,
            &[
                ("DCW__OUTBOX__ENABLED", "true"),
                ("DCW__OUTBOX__POLL_MS", "250"),
                ("DCW__OUTBOX__BATCH_SIZE", "500"),
            ],
        )
        .expect("valid");
        assert!(s.outbox.enabled);
        assert_eq!(s.outbox.poll().as_millis(), 250);
        assert_eq!(s.outbox.batch_size, 500);
        let err =
            load("[outbox]\npoll_ms = 0\nbatch_size = 10001\n", None, &[]).expect_err("invalid");
        assert_eq!(
            err.0,
            [
                "outbox.poll_ms: must be between 10 and 600000",
                "outbox.batch_size: must be between 1 and 10000"
            ]
        );
    }

    #[test]
    fn series_build_timing_is_checked_by_key() {
        let s = load("", None, &[]).expect("defaults are valid");
        assert_eq!(s.series.build_timeout_ms, 120_000);
        assert_eq!(s.series.lock_renew_ms, 10_000);
        assert_eq!(s.series.inline_binary_max_bytes, 65_536);
        for (var, value, key) in [
            (
                "DCW__SERIES__BUILD_TIMEOUT_MS",
                "99",
                "series.build_timeout_ms",
            ),
            (
                "DCW__SERIES__BUILD_TIMEOUT_MS",
                "3600001",
                "series.build_timeout_ms",
            ),
            ("DCW__SERIES__LOCK_RENEW_MS", "9", "series.lock_renew_ms"),
            (
                "DCW__SERIES__INLINE_BINARY_MAX_BYTES",
                "1048577",
                "series.inline_binary_max_bytes",
            ),
            (
                "DCW__SERIES__LOCK_RENEW_MS",
                "15001",
                "series.lock_renew_ms",
            ),
        ] {
            let err = load("", None, &[(var, value)]).expect_err("invalid");
            let keys: Vec<&str> = err
                .0
                .iter()
                .map(|l| l.split(':').next().unwrap_or(""))
                .collect();
            assert_eq!(keys, [key], "{var}={value}");
        }
        load("", None, &[("DCW__SERIES__BUILD_TIMEOUT_MS", "100")]).expect("the shortest timeout");
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
}
