//! SIGTERM to the real binary: it stops reading, acknowledges the batch in hand, exits 0.

use std::process::Stdio;
use std::time::Duration;

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::{TestEnv, wait_for, wait_for_log_line};

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

    let grace_secs = 5;
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"))
        .envs(env.daemon_env())
        // Small batches, read one at a time, so that the stream is still being drained
        // when the signal comes.
        .env("DCW__STREAM__BATCH_SIZE", "10")
        .env("DCW__STREAM__COALESCE_ENTRIES", "10")
        .env("DCW__SHUTDOWN__GRACE_SECS", grace_secs.to_string())
        .env("DCW__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the daemon");
    wait_for("the daemon to acknowledge some entries", || async {
        env.backlog()
            .await
            .lag
            .is_some_and(|lag| lag < published - 100)
    })
    .await;

    let pid = daemon.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(grace_secs + 2), daemon.wait())
        .await
        .expect("exits within the grace period")
        .expect("wait");
    assert_eq!(status.code(), Some(0));

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
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies: 1,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    // Hold a lock that makes the daemon's query wait: its batch cannot finish.
    let mut blocker = env.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE dicom_state_meta IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"))
        .envs(env.daemon_env())
        .env("DCW__SHUTDOWN__GRACE_SECS", "60")
        .env("DCW__LOG__LEVEL", "info")
        .env("DCW__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the daemon");
    let mut log = BufReader::new(daemon.stderr.take().expect("stderr")).lines();
    wait_for("the daemon to read the batch", || async {
        env.backlog().await.pending > 0
    })
    .await;
    let pid = daemon.id().expect("running").to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    // The second signal only after the first was seen, so the two are not merged.
    wait_for_log_line(&mut log, "stopping: finishing the work in hand").await;
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(5), daemon.wait())
        .await
        .expect("exits at once, long before the 60 s grace")
        .expect("wait");
    assert_eq!(status.code(), Some(dicom_cache_warmer::FORCED_EXIT_CODE));
    blocker.rollback().await.expect("rollback");
    assert!(
        env.backlog().await.pending > 0,
        "the unfinished batch stays pending"
    );
}
