//! SIGTERM to the real binary: it stops reading, acknowledges the batch in hand, exits 0; a
//! batch that cannot finish within the grace period is left pending and the exit says so; a
//! retry's backoff does not hold up the stop.

use std::process::Stdio;

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::chaos_support::{Replica, send_signal};
use crate::helpers::{
    DEADLINE, TestEnv, daemon_command, exit_within, terminate, wait_for, wait_for_log_line,
};

/// One study's rows in the test's database and its events on the test's stream.
async fn one_study(env: &TestEnv, seed: u64) -> Dataset {
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies: 1,
        seed,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    dataset
}

#[tokio::test]
async fn sigterm_mid_stream_exits_zero_in_time_with_nothing_handled_left_pending() {
    let env = TestEnv::new().await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 2,
        studies: 40,
        max_series: 4,
        min_instances: 50,
        max_instances: 100,
        seed: 3,
    });
    dataset.insert(&env.db).await.expect("insert rows");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");
    let published = dataset.events.len();

    let mut daemon = daemon_command(&env)
        // Small batches, read one at a time, so that the stream is still being drained
        // when the signal comes.
        .env("DCW__STREAM__BATCH_SIZE", "10")
        .env("DCW__STREAM__COALESCE_ENTRIES", "10")
        .env("DCW__SHUTDOWN__GRACE_SECS", "5")
        .env("DCW__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the daemon");
    wait_for("the daemon to acknowledge some entries", || async {
        env.backlog()
            .await
            .lag
            .is_some_and(|lag| lag < published - 100)
    })
    .await;

    // Exit 0: the batch in hand finished within the grace period (an overrun exits 1).
    assert_eq!(terminate(&mut daemon).await.code(), Some(0));
    let backlog = env.backlog().await;
    assert_eq!(backlog.pending, 0, "every entry it read was acknowledged");
    assert!(
        backlog.lag.is_some_and(|lag| lag > 0),
        "it stopped mid-stream: {backlog:?}"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once_even_with_a_batch_in_hand() {
    let env = TestEnv::new().await;
    let dataset = one_study(&env, 1).await;
    // Hold a lock that makes the daemon's query wait: its batch cannot finish.
    let blocker = env.lock_state_table().await;
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");

    let mut daemon = daemon_command(&env)
        .env("DCW__SHUTDOWN__GRACE_SECS", "60")
        .env("DCW__LOG__LEVEL", "info")
        .env("DCW__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let mut log = BufReader::new(daemon.stderr.take().expect("stderr")).lines();
    wait_for("the daemon to read the batch", || async {
        env.backlog().await.pending > 0
    })
    .await;
    let pid = daemon.id().expect("running");
    send_signal("-TERM", pid).await;
    // The second signal only after the first was seen, so the two are not merged.
    wait_for_log_line(&mut log, "stopping: finishing the work in hand").await;
    send_signal("-TERM", pid).await;
    // 130 is the forced exit's alone: a stop that waited for the batch (60 s of grace) would
    // end later than this test waits, and with another status.
    let status = exit_within(&mut daemon, DEADLINE, "the exit at the second signal").await;
    assert_eq!(status.code(), Some(dicom_cache_warmer::FORCED_EXIT_CODE));
    blocker.rollback().await.expect("rollback");
    assert!(
        env.backlog().await.pending > 0,
        "the unfinished batch stays pending"
    );
}

#[tokio::test]
async fn a_batch_that_overruns_the_grace_period_stays_pending_and_the_exit_says_so() {
    let env = TestEnv::new().await;
    let dataset = one_study(&env, 2).await;
    let blocker = env.lock_state_table().await;
    dataset
        .publish(&mut env.redis.clone(), &env.settings.stream.key)
        .await
        .expect("publish");
    let mut daemon = daemon_command(&env)
        .env("DCW__SHUTDOWN__GRACE_SECS", "1")
        // The blocked query would wait a minute, longer than this test waits for the exit:
        // only the grace period can end the stop.
        .env("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "60000")
        .env("DCW__STREAM__CLAIM_IDLE_MS", "120000")
        .env("DCW__STREAM__STALE_CONSUMER_MS", "240000")
        .env("DCW__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let mut stderr = daemon.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.map(|_| text)
    });
    env.wait_for_a_query_waiting_on_a_lock().await;

    let status = terminate(&mut daemon).await;
    let log = log.await.expect("log task").expect("read the log");
    assert_eq!(
        status.code(),
        Some(1),
        "an overrun is not a clean stop: {log}"
    );
    assert!(
        log.contains("work in hand not finished within shutdown.grace_secs"),
        "{log}"
    );
    blocker.rollback().await.expect("rollback");
    assert_eq!(
        env.backlog().await.pending,
        dataset.events.len(),
        "the batch in hand stays pending, for another consumer to claim"
    );
}

/// A stand-in for PostgreSQL that answers each connection's start-up with a fatal error
/// numbered by connection: every failed attempt of the daemon then differs from the last,
/// so the daemon logs each one (it logs a failure once until its cause changes).
struct RefusingPostgres {
    port: u16,
    task: JoinHandle<()>,
}

impl RefusingPostgres {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            for attempt in 1_u64.. {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(refuse(client, attempt));
                while connections.try_join_next().is_some() {}
            }
        });
        Self { port, task }
    }

    /// A database URL pointing at it.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/refused", self.port)
    }
}

impl Drop for RefusingPostgres {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Declines TLS (and GSS) requests, reads the start-up message, answers with an
/// authorization error (`28000`, not one a client retries).
async fn refuse(mut client: TcpStream, attempt: u64) {
    const SSL_REQUEST: [u8; 4] = 80_877_103_u32.to_be_bytes();
    const GSSENC_REQUEST: [u8; 4] = 80_877_104_u32.to_be_bytes();
    loop {
        let Ok(length) = client.read_u32().await else {
            return;
        };
        let mut body = vec![0; usize::try_from(length).unwrap_or(0).saturating_sub(4)];
        if client.read_exact(&mut body).await.is_err() {
            return;
        }
        if body.starts_with(&SSL_REQUEST) || body.starts_with(&GSSENC_REQUEST) {
            if client.write_all(b"N").await.is_err() {
                return;
            }
            continue;
        }
        break;
    }
    let fields = format!("SFATAL\0VFATAL\0C28000\0Mrefused by the test, attempt {attempt}\0\0");
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(fields.as_bytes());
    let _ = client.write_all(&message).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_retry_backoff_ends_the_wait_and_exits_within_the_grace_period() {
    const GRACE_SECS: u64 = 3;
    // After this many failures in a row the next backoff is at least 5 s (100 ms doubled
    // seven times is over the 10 s cap, and a delay is drawn from the upper half): more
    // than the grace period.
    const FAILURES: usize = 8;
    let env = TestEnv::new().await;
    let postgres = RefusingPostgres::start().await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies: 1,
        ..DatasetSpec::default()
    });
    dataset
        .publish(&mut env.redis.clone(), &env.settings.stream.key)
        .await
        .expect("publish");
    let replica = Replica::start(
        &env,
        &[
            ("DCW__DATABASE__URL", postgres.url()),
            ("DCW__SHUTDOWN__GRACE_SECS", GRACE_SECS.to_string()),
        ],
    )
    .await;
    let process_failures = |replica: &Replica| {
        replica
            .figures()
            .warnings
            .iter()
            .filter(|line| line.contains("failed; retrying") && line.contains("\"Process\""))
            .count()
    };
    // The signal right after a failure is logged, as its backoff begins.
    wait_for("the batch to fail again and again", || {
        let failures = process_failures(&replica);
        async move { failures >= FAILURES }
    })
    .await;
    // Exit 0: the stop did not wait out the backoff (that would overrun the grace period
    // and exit 1, "work in hand not finished").
    let figures = replica.stop().await;
    assert!(
        figures
            .warnings
            .iter()
            .any(|line| line.contains("stopping: entries left pending")),
        "{:#?}",
        figures.warnings
    );
    assert_eq!(
        env.backlog().await.pending,
        dataset.events.len(),
        "the entries stay pending"
    );
}

#[tokio::test]
async fn sigterm_stops_the_daemon_whose_log_reader_is_gone() {
    let env = TestEnv::new().await;
    let mut daemon = daemon_command(&env)
        .env("DCW__LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let mut log = BufReader::new(daemon.stderr.take().expect("stderr")).lines();
    wait_for_log_line(&mut log, "warming caches from the ingest stream").await;
    // As when the collector reading the daemon's stderr dies: every log line now fails.
    drop(log);
    // Events make the daemon log while nobody reads.
    let dataset = one_study(&env, 1).await;
    dataset
        .publish(&mut env.redis.clone(), &env.settings.stream.key)
        .await
        .expect("publish");
    wait_for("the events to be acknowledged", || async {
        env.backlog().await.is_drained()
    })
    .await;
    let status = terminate(&mut daemon).await;
    assert_eq!(status.code(), Some(0), "{status}");
}
