//! The HTTP endpoint of the real binary: liveness, readiness and metrics.

use std::process::Stdio;

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::helpers::{TestEnv, daemon_command, terminate, wait_for};

/// A free loopback port (taken, then released for the daemon to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// GETs `path` and returns the status code and the body; `None` while nothing listens.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// The daemon binary on the test's settings, its endpoint on `port`, with `vars` on top.
fn spawn_with_endpoint(env: &TestEnv, port: u16, vars: &[(&str, &str)]) -> Child {
    daemon_command(env)
        .env("DCW__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the daemon")
}

/// The value of an unlabelled counter or gauge in Prometheus text; panics when absent.
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not exported:\n{body}"))
}

/// Waits until the daemon on `port` exports `name` with `value`, and returns the metrics.
async fn wait_for_metric(port: u16, name: &str, value: f64) -> String {
    let exported = || async {
        let body = get(port, "/metrics").await?.1;
        let current = body.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        });
        (current == Some(value)).then_some(body)
    };
    wait_for(&format!("{name} to reach {value}"), || async {
        exported().await.is_some()
    })
    .await;
    exported().await.expect("a counter never goes back")
}

#[tokio::test]
async fn the_binary_reports_liveness_readiness_and_metrics_that_move_with_events() {
    let env = TestEnv::new().await;
    let port = free_port();
    let mut daemon = spawn_with_endpoint(&env, port, &[("DCW__LOG__LEVEL", "warn")]);

    wait_for("readiness", || async {
        get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    let (status, body) = get(port, "/healthz").await.expect("healthz answers");
    assert_eq!((status, body.as_str()), (200, "live\n"));
    let (status, body) = get(port, "/metrics").await.expect("metrics answer");
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "dcw_entries_acked_total"), 0.0);

    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies: 3,
        ..DatasetSpec::default()
    });
    env.load(&dataset).await;
    env.wait_until_drained().await;

    // Counted once the batch is done, just after its XACK.
    let body = wait_for_metric(port, "dcw_entries_acked_total", dataset.events.len() as f64).await;
    // A study whose events span two reads is filled twice.
    assert!(metric(&body, "dcw_studies_filled_total") >= 3.0);
    assert!(metric(&body, "dcw_db_queries_total") >= 1.0);
    assert!(
        body.contains("dcw_batch_duration_seconds_bucket"),
        "latency histogram"
    );
    assert!(body.contains("dcw_redis_round_trips_total{op=\"ack\"}"));
    assert_eq!(get(port, "/nope").await.map(|(s, _)| s), Some(404));

    assert_eq!(terminate(&mut daemon).await.code(), Some(0));
}

#[tokio::test]
async fn a_backlog_read_over_many_reads_fills_each_study_once() {
    let env = TestEnv::new().await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies: 3,
        min_instances: 40,
        max_instances: 60,
        ..DatasetSpec::default()
    });
    env.load(&dataset).await;
    let port = free_port();
    let mut daemon = spawn_with_endpoint(
        &env,
        port,
        &[
            ("DCW__STREAM__BATCH_SIZE", "10"),
            ("DCW__LOG__LEVEL", "warn"),
        ],
    );
    env.wait_until_drained().await;

    let body = wait_for_metric(port, "dcw_entries_acked_total", dataset.events.len() as f64).await;
    let reads = metric(&body, "dcw_redis_round_trips_total{op=\"read\"}");
    assert!(
        reads >= (dataset.events.len() / 10) as f64,
        "{} entries in reads of 10 took {reads} reads",
        dataset.events.len()
    );
    assert_eq!(
        metric(&body, "dcw_studies_filled_total"),
        3.0,
        "the reads are coalesced into one window: each study filled once"
    );
    daemon.kill().await.expect("kill");
}

#[tokio::test]
async fn readiness_falls_while_redis_is_down_and_liveness_does_not() {
    let env = TestEnv::new().await;
    let mut redis = crate::chaos_support::PrivateRedis::start().await;
    let port = free_port();
    let redis_url = redis.url();
    let mut daemon = spawn_with_endpoint(
        &env,
        port,
        &[
            ("DCW__REDIS__URL", &redis_url),
            ("DCW__LOG__LEVEL", "error"),
        ],
    );
    let status = |path: &'static str| async move { get(port, path).await.map(|(s, _)| s) };

    wait_for("readiness", || async {
        status("/readyz").await == Some(200)
    })
    .await;
    redis.stop().await;
    wait_for("readiness to fall", || async {
        status("/readyz").await == Some(503)
    })
    .await;
    assert_eq!(
        status("/healthz").await,
        Some(200),
        "liveness does not depend on Redis"
    );
    redis.restart().await;
    wait_for("readiness to return", || async {
        status("/readyz").await == Some(200)
    })
    .await;

    assert_eq!(terminate(&mut daemon).await.code(), Some(0));
}

/// Every metric family the daemon exports before its first event (the stream gauges
/// follow the first probe that finds the group).
const FAMILIES_AT_START: [&str; 30] = [
    "dcw_build_info",
    "dcw_entries_read_total",
    "dcw_entries_acked_total",
    "dcw_entries_reclaimed_total",
    "dcw_entries_dead_lettered_total",
    "dcw_consumers_deleted_total",
    "dcw_studies_filled_total",
    "dcw_studies_stale_total",
    "dcw_studies_removed_total",
    "dcw_studies_waiting_total",
    "dcw_rechecks_total",
    "dcw_db_queries_total",
    "dcw_redis_round_trips_total",
    "dcw_connection_errors_total",
    "dcw_series_builds_total",
    "dcw_series_instances_total",
    "dcw_jwks_refreshes_total",
    "dcw_jwks_ttl_extensions_total",
    "dcw_outbox_rows_relayed_total",
    "dcw_batch_entries",
    "dcw_batch_duration_seconds",
    "dcw_db_query_duration_seconds",
    "dcw_series_build_duration_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

#[tokio::test]
async fn a_clean_start_exports_every_metric_at_zero_and_logs_no_warning() {
    let env = TestEnv::new().await;
    let port = free_port();
    let mut daemon = daemon_command(&env)
        .env("DCW__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DCW__LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let stderr = daemon.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::BufReader::new(stderr)
            .read_to_string(&mut text)
            .await
            .map(|_| text)
    });
    wait_for("readiness", || async {
        get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    let (_, body) = get(port, "/metrics").await.expect("metrics answer");
    let families: Vec<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    for family in FAMILIES_AT_START {
        assert!(families.contains(&family), "{family} missing from:\n{body}");
    }
    for (family, label, value) in [
        (
            "dcw_entries_dead_lettered_total",
            "reason",
            "study_not_found",
        ),
        ("dcw_entries_dead_lettered_total", "reason", "invalid_id"),
        ("dcw_series_builds_total", "result", "interrupted"),
        ("dcw_connection_errors_total", "service", "postgres"),
        ("dcw_redis_round_trips_total", "op", "pool_check"),
        ("dcw_rechecks_total", "outcome", "refilled"),
    ] {
        let line = format!("{family}{{{label}=\"{value}\"}} 0");
        assert!(
            body.lines().any(|l| l == line),
            "{line} missing from:\n{body}"
        );
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with("dcw_build_info{") && l.ends_with(" 1")),
        "dcw_build_info = 1"
    );

    assert_eq!(terminate(&mut daemon).await.code(), Some(0));
    let log = log.await.expect("log task").expect("read the log");
    assert!(log.contains("INFO"), "an info-level log:\n{log}");
    for level in ["WARN", "ERROR"] {
        assert!(!log.contains(level), "a clean start logged {level}:\n{log}");
    }
}
