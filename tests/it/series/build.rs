//! Building: one document per burst of events, where and as the server reads it; a
//! missing file recorded as failed; documents removed with their study.

use super::*;

#[tokio::test]
async fn a_burst_of_instance_events_builds_one_conformant_document_where_the_server_reads_it() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 12).await;
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the series document", || async {
        series.document().exists()
    })
    .await;
    env.wait_until_drained().await;
    wait_for("the status row", || async {
        series.builds(&env).await == 1
    })
    .await;
    daemon.stop().await;

    let document = read_document(&series.document());
    assert_eq!(document.len(), 12);
    let numbers: Vec<i64> = document
        .iter()
        .map(|i| i["00200013"]["Value"][0].as_i64().expect("IS as a number"))
        .collect();
    assert_eq!(
        numbers,
        (1..=12).collect::<Vec<i64>>(),
        "sorted by Instance Number"
    );
    let first = &document[0];
    assert_eq!(first["00100010"]["Value"][0]["Ideographic"], "山田^太郎");
    assert_eq!(first["00280010"]["Value"][0], 64, "US as a number");
    assert!(first.get("00020010").is_none(), "no file meta group");
    assert!(
        first.get("7FE00010").is_none(),
        "pixel data left out without a bulk data URL"
    );
    let parsed: Vec<DicomJson<InMemDicomObject>> =
        serde_json::from_slice(&std::fs::read(series.document()).expect("read"))
            .expect("dicom-json reads it back");
    assert_eq!(parsed.len(), 12);

    let copy = env
        .get(&keys::series_metadata(&series.tenant, &series.series))
        .await
        .expect("Redis copy");
    assert_eq!(
        copy.as_bytes(),
        std::fs::read(series.document()).expect("read")
    );
    let (status, flag_time_matches): (i32, bool) = sqlx::query_as(
        "SELECT j.json_status, j.flag_time = s.updated_time FROM dicom_json_meta j
         JOIN dicom_state_meta s USING (tenant_id, study_uid, series_uid) WHERE j.series_uid = $1",
    )
    .bind(series.series.as_str())
    .fetch_one(&env.db)
    .await
    .expect("status row");
    assert_eq!((status, flag_time_matches), (1, true));
    assert_eq!(
        webworker_selects(&env).await,
        Vec::<String>::new(),
        "the server's webworker leaves a built series alone"
    );
    assert_eq!(
        env.get(&keys::series_lock(&series.tenant, &series.series))
            .await,
        None,
        "lock released"
    );
}

#[tokio::test]
async fn a_tenant_with_spaces_colons_and_accents_is_warmed_under_the_servers_key_and_path() {
    let mut env = TestEnv::new().await;
    let prefix = format!("{} Hôpital: Zürich 病院 ", env.tenant_prefix);
    let series = SeriesFixture::with_tenant_prefix(&mut env, 3, prefix.clone()).await;
    let tenant = format!("{prefix}0");
    assert_eq!(series.tenant.as_str(), tenant);
    series.publish(&env, &series.sops).await;
    // Spelled out, not through the daemon's own key and path functions.
    let key = format!("wado:{tenant}:study:{}:metadata", series.study);
    let path = series
        .json_root
        .join(&tenant)
        .join("metadata")
        .join(&series.date)
        .join(series.study.as_str())
        .join(format!("{}.json", series.series));
    let daemon = env.start_daemon();
    wait_for("the series document", || async { path.exists() }).await;
    env.wait_until_drained().await;
    daemon.stop().await;

    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&env.get(&key).await.expect("the study key")).expect("JSON");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["tenant_id"], tenant.as_str());
    assert_eq!(read_document(&path).len(), 3);
}

#[tokio::test]
async fn events_that_keep_coming_are_built_by_max_delay_and_not_once_per_event() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 300).await;
    // A chunk every 100 ms, ten times faster than the quiet period: only max_delay_ms (2 s)
    // can bring a build while they keep coming.
    let quiet = Duration::from_millis(1_000);
    env.settings.series.quiet_ms = 1_000;
    let max_delay = Duration::from_millis(env.settings.series.max_delay_ms);
    let daemon = env.start_daemon();
    let started = tokio::time::Instant::now();
    let mut chunks = series.sops.chunks(10).cycle();
    let mut sent = 0;
    let mut last = started;
    let mut pauses = 0;
    // Until the first document, and one chunk more (so that a build follows it).
    loop {
        assert!(
            started.elapsed() < crate::helpers::DEADLINE,
            "no document while events kept coming"
        );
        let built = series.document().exists();
        series
            .publish(&env, chunks.next().expect("an endless cycle"))
            .await;
        sent += 1;
        // A stall of this test as long as the quiet period lets a build in early: allowed for.
        pauses += usize::from(last.elapsed() >= quiet);
        last = tokio::time::Instant::now();
        if built {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publishing = started.elapsed();
    env.wait_until_drained().await;
    // Every build reads all 300 files (the database lists them from the start): wait for the
    // schedule to empty, i.e. for the build after the last event too.
    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    assert_eq!(read_document(&series.document()).len(), 300);
    let builds = series.builds(&env).await;
    // One build by max delay while events kept coming and one after the last; at most one
    // per max delay while they came (and one per pause of this test), plus the last: never
    // one per event.
    let at_most = (publishing.as_millis() / max_delay.as_millis()) as i64 + 2 + pauses as i64;
    assert!(
        (2..=at_most).contains(&builds),
        "{builds} builds for {sent} chunks of 10 events over {publishing:?} (at most {at_most})"
    );
}

#[tokio::test]
async fn a_series_scheduled_by_a_daemon_killed_before_the_build_is_built_by_another() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    series.publish(&env, &series.sops).await;
    // The first daemon (the real binary) acknowledges the events, so the series is durably
    // scheduled, and is killed long before the series is due.
    let roots = |root: &Option<PathBuf>| root.as_ref().expect("root").display().to_string();
    let mut first = daemon_command(&env)
        .env(
            "DCW__SERIES__DICOM_ROOT",
            roots(&env.settings.series.dicom_root),
        )
        .env(
            "DCW__SERIES__JSON_ROOT",
            roots(&env.settings.series.json_root),
        )
        .env("DCW__SERIES__QUIET_MS", "60000")
        .env("DCW__SERIES__MAX_DELAY_MS", "60000")
        .env("DCW__LOG__LEVEL", "warn")
        .spawn()
        .expect("start the daemon");
    env.wait_until_drained().await;
    first.kill().await.expect("kill -9");
    assert!(!series.document().exists());

    // Another daemon, sharing the schedule, builds it once it is due (made due now rather
    // than waiting the minute out).
    let member = format!("{}/{}/{}", series.tenant, series.study, series.series);
    let made_due: i64 = redis::cmd("ZADD")
        .arg(keys::series_schedule(&env.settings.stream.group))
        .arg("XX")
        .arg("CH")
        .arg(0)
        .arg(&member)
        .query_async(&mut env.redis.clone())
        .await
        .expect("make it due");
    assert_eq!(made_due, 1, "the dead daemon's schedule entry survived");
    let second = env.start_daemon();
    wait_for("the document from the second daemon", || async {
        series.document().exists()
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn a_missing_instance_file_is_recorded_as_failed_and_nothing_is_published() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    let dicom_root = env.settings.series.dicom_root.clone().expect("root");
    let victim = dicom_root
        .join(series.tenant.as_str())
        .join(&series.date)
        .join(series.study.as_str())
        .join(series.series.as_str())
        .join(format!("{}.dcm", series.sops[1]));
    std::fs::remove_file(victim).expect("remove one file");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the failed status", || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT json_status FROM dicom_json_meta WHERE series_uid = $1",
        )
        .bind(series.series.as_str())
        .fetch_optional(&env.db)
        .await
        .expect("status")
            == Some(2)
    })
    .await;
    daemon.stop().await;
    assert!(!series.document().exists(), "no half-built document");
    assert_eq!(
        webworker_selects(&env).await,
        vec![series.series.to_string()],
        "a series the daemon could not build is left to the server's webworker"
    );
    assert_eq!(
        env.get(&keys::series_lock(&series.tenant, &series.series))
            .await,
        None,
        "lock released"
    );
}

#[tokio::test]
async fn a_burst_within_the_quiet_period_is_built_exactly_once() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 300).await;
    env.settings.series.quiet_ms = 1_000;
    env.settings.series.max_delay_ms = 30_000;
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the document", || async { series.builds(&env).await == 1 }).await;
    env.wait_until_drained().await;
    // Nothing else is due: the schedule is empty once the build completed.
    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    assert_eq!(series.builds(&env).await, 1, "one build for 300 events");
    assert_eq!(read_document(&series.document()).len(), 300);
}

#[tokio::test]
async fn a_deleted_study_loses_its_series_documents_and_their_copies() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the document", || async { series.document().exists() }).await;
    let copy = keys::series_metadata(&series.tenant, &series.series);
    // The copy is written just after the file is renamed into place.
    wait_for("its Redis copy", || async {
        env.get(&copy).await.is_some()
    })
    .await;

    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(series.tenant.as_str())
        .bind(series.study.as_str())
        .execute(&env.db)
        .await
        .expect("delete rows");
    let _: String = redis::cmd("XADD")
        .arg(&env.settings.stream.key)
        .arg("*")
        .arg("tenant_id")
        .arg(series.tenant.as_str())
        .arg("study_uid")
        .arg(series.study.as_str())
        .arg("event")
        .arg("deleted")
        .query_async(&mut env.redis.clone())
        .await
        .expect("XADD");
    env.wait_until_drained().await;
    daemon.stop().await;
    assert!(!series.document().exists(), "the document is removed");
    assert_eq!(env.get(&copy).await, None, "the Redis copy is removed");
    assert_eq!(
        env.get(&keys::study_metadata(&series.tenant, &series.study))
            .await,
        None
    );
}

#[tokio::test]
async fn a_deleted_event_stays_pending_until_every_document_of_the_study_is_removed() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    env.reclaim_quickly();
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the document", || async { series.document().exists() }).await;
    let copy = keys::series_metadata(&series.tenant, &series.series);
    wait_for("its Redis copy", || async {
        env.get(&copy).await.is_some()
    })
    .await;
    // A document path that cannot be removed (a folder stands where a file would).
    let blocker = series
        .document()
        .with_file_name(format!("{}.9.json", series.series));
    std::fs::create_dir_all(blocker.join("inside")).expect("blocker");

    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(series.tenant.as_str())
        .bind(series.study.as_str())
        .execute(&env.db)
        .await
        .expect("delete rows");
    let _: String = redis::cmd("XADD")
        .arg(&env.settings.stream.key)
        .arg("*")
        .arg("tenant_id")
        .arg(series.tenant.as_str())
        .arg("study_uid")
        .arg(series.study.as_str())
        .arg("event")
        .arg("deleted")
        .query_async(&mut env.redis.clone())
        .await
        .expect("XADD");
    let study_key = keys::study_metadata(&series.tenant, &series.study);
    wait_for("the study key removed", || async {
        env.get(&study_key).await.is_none()
    })
    .await;
    // Claimed back and tried again (reclaim_quickly: after 1 s) while the blocker stays.
    wait_for("the deleted event delivered again", || async {
        pending_deliveries(&env).await.is_some_and(|n| n >= 2)
    })
    .await;
    assert_eq!(
        series.document().exists(),
        env.get(&copy).await.is_some(),
        "a removed document's Redis copy goes with it, even when another one failed"
    );
    std::fs::remove_dir_all(&blocker).expect("remove the blocker");
    env.wait_until_drained().await;
    daemon.stop().await;
    assert!(!series.document().exists(), "the document is removed");
    assert_eq!(env.get(&copy).await, None, "the Redis copy is removed");
    assert!(env.dead_letters().await.is_empty());
}

/// The delivery count of the group's one pending entry, if there is one.
async fn pending_deliveries(env: &TestEnv) -> Option<u64> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&env.settings.stream.key)
        .arg(&env.settings.stream.group)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut env.redis.clone())
        .await
        .expect("XPENDING");
    match pending.as_slice() {
        [(_, _, _, deliveries)] => Some(*deliveries),
        _ => None,
    }
}
