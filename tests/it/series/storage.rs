//! Storage that fails: a read that never returns, SIGTERM during it, and EIO.

use super::*;

#[tokio::test]
async fn a_read_that_never_returns_times_out_and_the_series_is_retried_later() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    env.settings.series.build_timeout_ms = 1_000;
    // A FIFO nobody writes: its read blocks for good, as on a stuck NFS mount.
    let _fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    let timed_out_before = builds_counted("timed_out");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&lock_key).await.is_some()
    })
    .await;
    // Abandoned: the lock released, the series moved a few seconds on (its backoff), not to
    // the end of a claim's lease (60 s) and not off the schedule.
    wait_for("the build to be abandoned and retried later", || async {
        env.get(&lock_key).await.is_none()
            && series
                .scheduled_in(&env)
                .await
                .is_some_and(|ahead| (1_000..30_000).contains(&ahead))
    })
    .await;
    assert!(builds_counted("timed_out") > timed_out_before, "counted");
    assert_eq!(series.builds(&env).await, 0, "not recorded as failed");
    assert!(!series.document().exists());
    daemon.stop().await;
}

#[tokio::test]
async fn sigterm_during_a_build_stuck_in_a_read_exits_within_the_grace_period() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let _fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops).await;
    let grace_secs = 2;
    let root = |root: &Option<PathBuf>| root.as_ref().expect("root").display().to_string();
    let mut daemon = daemon_command(&env)
        .env(
            "DCW__SERIES__DICOM_ROOT",
            root(&env.settings.series.dicom_root),
        )
        .env(
            "DCW__SERIES__JSON_ROOT",
            root(&env.settings.series.json_root),
        )
        .env("DCW__SERIES__QUIET_MS", "300")
        .env("DCW__SHUTDOWN__GRACE_SECS", grace_secs.to_string())
        .env("DCW__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the daemon");
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&lock_key).await.is_some()
    })
    .await;

    // Exit 0 is a stop within the grace period (an overrun exits 1); a stop that waited for
    // the blocked reader would never come.
    assert_eq!(terminate(&mut daemon).await.code(), Some(0));
    assert_eq!(env.get(&lock_key).await, None, "lock released");
    assert!(
        series.schedule_score(&env).await.is_some(),
        "the series stays scheduled"
    );
    assert_eq!(series.builds(&env).await, 0, "not recorded as failed");
}

#[tokio::test]
async fn an_instance_file_failing_with_eio_is_retried_and_not_recorded_as_failed() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    // Reading this process' own memory at offset 0 fails with EIO, for root too: the
    // daemon runs in this process.
    let victim = series.instance_file(&env, 1);
    let bytes = std::fs::read(&victim).expect("fixture bytes");
    std::fs::remove_file(&victim).expect("remove");
    std::os::unix::fs::symlink("/proc/self/mem", &victim).expect("symlink");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to be put off", || async {
        env.get(&lock_key).await.is_none()
            && series
                .scheduled_in(&env)
                .await
                .is_some_and(|ahead| (1_000..30_000).contains(&ahead))
    })
    .await;
    assert_eq!(series.builds(&env).await, 0, "not recorded as failed");
    assert!(!series.document().exists());

    // The storage recovers: the retry builds it.
    std::fs::remove_file(&victim).expect("remove the symlink");
    std::fs::write(&victim, bytes).expect("restore the file");
    wait_for("the retry", || async { series.builds(&env).await == 1 }).await;
    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    let status: i32 =
        sqlx::query_scalar("SELECT json_status FROM dicom_json_meta WHERE series_uid = $1")
            .bind(series.series.as_str())
            .fetch_one(&env.db)
            .await
            .expect("status");
    assert_eq!(status, 1, "built");
    assert_eq!(read_document(&series.document()).len(), 3);
}
