//! Recovery: idle entries are reclaimed, poison entries dead-lettered after exactly
//! `max_deliveries`, gone consumers deleted, late negative flags removed again.

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use dicom_cache_warmer::{ReadMode, encode_study, ensure_group, read_new};

use crate::helpers::{Daemon, TestEnv, wait_for};

fn small_dataset(env: &TestEnv, studies: usize) -> Dataset {
    Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies,
        ..DatasetSpec::default()
    })
}

#[tokio::test]
async fn entries_left_by_a_crashed_consumer_are_reclaimed_and_the_consumer_deleted() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    let dataset = small_dataset(&env, 3);
    dataset.insert(&env.db).await.expect("insert rows");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");
    // A consumer that read everything and died before acknowledging anything.
    let mut ghost = env.settings.stream.clone();
    ghost.consumer = format!("{}-ghost", ghost.consumer);
    ghost.batch_size = 10_000;
    ensure_group(&mut con, &ghost).await.expect("group");
    let taken = read_new(&mut con, &ghost, ReadMode::Wait)
        .await
        .expect("ghost reads");
    assert_eq!(taken.len(), dataset.events.len());

    let daemon = env.start_daemon();
    env.wait_until_drained().await;
    for row in &dataset.rows {
        let key = keys::study_metadata(
            &TenantId::parse(&row.tenant_id).expect("tenant"),
            &Uid::parse(&row.study_uid).expect("uid"),
        );
        assert!(
            env.get(&key).await.is_some(),
            "{key} is filled from reclaimed entries"
        );
    }
    wait_for("the ghost consumer to be deleted", || async {
        !env.consumers().await.contains(&ghost.consumer)
    })
    .await;
    assert!(
        env.consumers()
            .await
            .contains(&env.settings.stream.consumer),
        "the live consumer stays"
    );
    daemon.stop().await;
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_study_that_never_appears_is_dead_lettered_after_exactly_max_deliveries() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    env.settings.stream.max_deliveries = 3;
    let tenant = format!("{}0", env.tenant_prefix);
    let mut con = env.redis.clone();
    let id: String = redis::cmd("XADD")
        .arg(&env.settings.stream.key)
        .arg("*")
        .arg("tenant_id")
        .arg(&tenant)
        .arg("study_uid")
        .arg("1.2.3.999")
        .query_async(&mut con)
        .await
        .expect("XADD");

    let daemon = env.start_daemon();
    wait_for("the entry to be dead-lettered", || async {
        !env.dead_letters().await.is_empty()
    })
    .await;
    env.wait_until_drained().await;
    daemon.stop().await;

    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let get = |name: &str| {
        dead[0]
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(get("dead_source_id"), Some(id));
    assert_eq!(get("dead_deliveries").as_deref(), Some("3"));
    assert!(
        get("dead_reason").is_some_and(|r| r.contains("not in the database after 3 deliveries"))
    );
}

/// One study, published and filled by a running daemon whose second looks come
/// `recheck_ms`, then 5 and 30 times that, after each fill.
async fn filled_study(env: &mut TestEnv, recheck_ms: u64) -> (TenantId, Uid, Daemon) {
    env.settings.cache.recheck_ms = recheck_ms;
    let dataset = small_dataset(env, 1);
    env.load(&dataset).await;
    let (tenant, study) = (
        TenantId::parse(&dataset.rows[0].tenant_id).expect("tenant"),
        Uid::parse(&dataset.rows[0].study_uid).expect("uid"),
    );
    let daemon = env.start_daemon();
    // Drained: no later batch of the study fills it again during the test.
    env.wait_until_drained().await;
    assert!(
        env.get(&keys::study_metadata(&tenant, &study))
            .await
            .is_some(),
        "the study key"
    );
    (tenant, study, daemon)
}

/// The server's negative flag, as it sets it after a failed read.
async fn set_negative_flag(env: &TestEnv, tenant: &TenantId, study: &Uid) {
    let _: () = redis::cmd("SET")
        .arg(keys::study_negative_flag(tenant, study))
        .arg("1")
        .arg("EX")
        .arg(300)
        .query_async(&mut env.redis.clone())
        .await
        .expect("SET");
}

#[tokio::test]
async fn negative_flags_set_after_the_fill_are_removed_by_the_repeated_second_looks() {
    let mut env = TestEnv::new().await;
    // Looks 1 s, 5 s and 30 s after the fill: two of them come after the flags below even
    // when this test stalls for up to 5 s.
    let (tenant, study, daemon) = filled_study(&mut env, 1_000).await;
    let flag = keys::study_negative_flag(&tenant, &study);
    // The server read the database before the commit, failed, and sets its flag now: the
    // first look removes it. Set again after that look, the next one removes it too.
    for look in ["first", "second"] {
        set_negative_flag(&env, &tenant, &study).await;
        wait_for(&format!("the {look} look to remove the flag"), || async {
            env.get(&flag).await.is_none()
        })
        .await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_flag_is_left_alone_while_the_study_key_is_gone() {
    let mut env = TestEnv::new().await;
    let (tenant, study, daemon) = filled_study(&mut env, 200).await;
    let _: () = redis::cmd("DEL")
        .arg(keys::study_metadata(&tenant, &study))
        .query_async(&mut env.redis.clone())
        .await
        .expect("DEL");
    set_negative_flag(&env, &tenant, &study).await;
    // Another study filled now and looked at after ours (looks are due in fill order).
    let later = Dataset::generate(&DatasetSpec {
        tenant_prefix: format!("{}other", env.tenant_prefix),
        studies: 1,
        ..DatasetSpec::default()
    });
    let other = &later.rows[0];
    let (other_tenant, other_study) = (
        TenantId::parse(&other.tenant_id).expect("tenant"),
        Uid::parse(&other.study_uid).expect("uid"),
    );
    env.load(&later).await;
    wait_for("the other study's key", || async {
        env.get(&keys::study_metadata(&other_tenant, &other_study))
            .await
            .is_some()
    })
    .await;
    set_negative_flag(&env, &other_tenant, &other_study).await;
    wait_for("the other study's look", || async {
        env.get(&keys::study_negative_flag(&other_tenant, &other_study))
            .await
            .is_none()
    })
    .await;
    daemon.stop().await;
    assert_eq!(
        env.get(&keys::study_negative_flag(&tenant, &study))
            .await
            .as_deref(),
        Some("1"),
        "no study key: the flag may be right, and is not the daemon's to remove"
    );
    assert_eq!(
        env.get(&keys::study_metadata(&tenant, &study)).await,
        None,
        "nor refilled"
    );
}

#[tokio::test]
async fn a_study_key_the_server_overwrites_with_older_rows_is_filled_again() {
    let mut env = TestEnv::new().await;
    let (tenant, study, daemon) = filled_study(&mut env, 300).await;
    let key = keys::study_metadata(&tenant, &study);
    let filled = env.get(&key).await.expect("filled");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&filled).expect("JSON");
    // The server's read began before the last series was committed; its plain SET lands
    // after the fill.
    let older = serde_json::to_string(&rows[..rows.len() - 1]).expect("JSON");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&older)
        .arg("EX")
        .arg(7_200)
        .query_async(&mut env.redis.clone())
        .await
        .expect("SET");
    wait_for("the study key filled again", || async {
        env.get(&key).await.as_deref() == Some(filled.as_str())
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_key_redis_refuses_dead_letters_only_its_studys_entries() {
    let env = TestEnv::new().await;
    let dataset = small_dataset(&env, 3);
    dataset.insert(&env.db).await.expect("insert rows");
    let study = |row: &dicom_cache_warmer::DicomStateMeta| {
        (
            TenantId::parse(&row.tenant_id).expect("tenant"),
            Uid::parse(&row.study_uid).expect("uid"),
        )
    };
    let (bad_tenant, bad_study) = study(&dataset.rows[0]);
    let mut con = env.redis.clone();
    // Someone else's hash where the study's version string goes: every fill of it fails.
    let _: () = redis::cmd("HSET")
        .arg(keys::study_version(&bad_tenant, &bad_study))
        .arg("f")
        .arg("v")
        .query_async(&mut con)
        .await
        .expect("HSET");
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");

    env.drain().await;

    let bad_events = dataset
        .events
        .iter()
        .filter(|e| e.study_uid == bad_study.as_str())
        .count();
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), bad_events, "only the refused study's entries");
    for fields in &dead {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert!(field("dead_reason").is_some_and(|r| r.contains("WRONGTYPE")));
        // The entry itself is copied, read back from the stream by its id.
        assert_eq!(field("study_uid").as_deref(), Some(bad_study.as_str()));
    }
    for row in dataset
        .rows
        .iter()
        .filter(|r| r.study_uid != bad_study.as_str())
    {
        let (t, s) = study(row);
        assert!(
            env.get(&keys::study_metadata(&t, &s)).await.is_some(),
            "{s} is filled"
        );
    }
    let _: () = redis::cmd("DEL")
        .arg(keys::study_version(&bad_tenant, &bad_study))
        .query_async(&mut con)
        .await
        .expect("DEL");
}

/// One study of two series: the dataset and the rows of its first series only.
fn study_of_two_series(env: &TestEnv) -> (Dataset, Vec<dicom_cache_warmer::DicomStateMeta>) {
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 1,
        studies: 1,
        max_series: 2,
        min_instances: 3,
        max_instances: 3,
        seed: 21,
    });
    assert_eq!(dataset.rows.len(), 2, "the seed gives two series");
    let first = dataset.rows[..1].to_vec();
    (dataset, first)
}

#[tokio::test]
async fn events_of_a_series_not_committed_yet_stay_pending_until_it_appears() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    let (dataset, first) = study_of_two_series(&env);
    dcw_testkit::synthetic::insert_rows(&env.db, &first)
        .await
        .expect("first series");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");
    let row = &dataset.rows[0];
    let key = keys::study_metadata(
        &TenantId::parse(&row.tenant_id).expect("tenant"),
        &Uid::parse(&row.study_uid).expect("uid"),
    );
    let series_in_key = || async {
        let cached = env.get(&key).await.unwrap_or_else(|| "[]".into());
        let rows: Vec<serde_json::Value> = serde_json::from_str(&cached).expect("JSON");
        rows.len()
    };

    let daemon = env.start_daemon();
    // Filled with what exists, and nothing acknowledged: a named series is missing.
    wait_for("the study filled with its first series", || async {
        series_in_key().await == 1
    })
    .await;
    let backlog = env.backlog().await;
    assert_eq!(
        (backlog.pending, backlog.lag),
        (dataset.events.len(), Some(0)),
        "every entry of the study stays pending"
    );
    dcw_testkit::synthetic::insert_rows(&env.db, &dataset.rows[1..])
        .await
        .expect("second series");
    env.wait_until_drained().await;
    daemon.stop().await;
    assert_eq!(series_in_key().await, 2, "reclaimed and filled again");
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test]
async fn only_the_events_of_a_series_that_never_appears_are_dead_lettered() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    env.settings.stream.max_deliveries = 2;
    let (dataset, first) = study_of_two_series(&env);
    dcw_testkit::synthetic::insert_rows(&env.db, &first)
        .await
        .expect("first series");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");

    let daemon = env.start_daemon();
    env.wait_until_drained().await;
    daemon.stop().await;

    let missing = &dataset.rows[1].series_uid;
    let expected = dataset
        .events
        .iter()
        .filter(|e| &e.series_uid == missing)
        .count();
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), expected, "only the missing series' events");
    for fields in &dead {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get("series_uid").as_deref(), Some(missing.as_str()));
        assert_eq!(
            get("dead_reason"),
            Some(format!(
                "series {missing} not in the database after 2 deliveries"
            ))
        );
    }
}

#[tokio::test]
async fn delivery_counts_are_exact_when_the_consumer_owns_other_entries_in_the_range() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    env.settings.stream.max_deliveries = 5;
    let stream = env.settings.stream.clone();
    let mut con = env.redis.clone();
    ensure_group(&mut con, &stream).await.expect("group");
    let tenant = format!("{}0", env.tenant_prefix);
    // Three entries whose study never appears: the outer two already delivered 4 times and
    // idle, the middle one just delivered to the same consumer (not idle).
    let mut ids = Vec::new();
    for study in ["1.2.3.901", "1.2.3.902", "1.2.3.903"] {
        let id: String = redis::cmd("XADD")
            .arg(&stream.key)
            .arg("*")
            .arg("tenant_id")
            .arg(&tenant)
            .arg("study_uid")
            .arg(study)
            .query_async(&mut con)
            .await
            .expect("XADD");
        ids.push(id);
    }
    let mut reader = stream.clone();
    reader.batch_size = 10;
    assert_eq!(
        read_new(&mut con, &reader, ReadMode::Plain)
            .await
            .expect("read")
            .len(),
        3
    );
    for (id, idle_ms, retries) in [
        (&ids[0], 100_000, 4),
        (&ids[2], 100_000, 4),
        (&ids[1], 0, 1),
    ] {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream.key)
            .arg(&stream.group)
            .arg(&stream.consumer)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("RETRYCOUNT")
            .arg(retries)
            .arg("JUSTID")
            .query_async(&mut con)
            .await
            .expect("XCLAIM");
    }

    let daemon = env.start_daemon();
    // Claimed once more, the outer two reach max_deliveries: dead-lettered at once, with
    // their exact count (the middle one, in the range, must not hide either of them).
    wait_for("the outer entries dead-lettered", || async {
        env.dead_letters().await.len() >= 2
    })
    .await;
    daemon.stop().await;
    let dead = env.dead_letters().await;
    for id in [&ids[0], &ids[2]] {
        let letter = dead
            .iter()
            .find(|fields| {
                fields
                    .iter()
                    .any(|(k, v)| k == "dead_source_id" && v == id.as_bytes())
            })
            .unwrap_or_else(|| panic!("{id} dead-lettered: {dead:?}"));
        let deliveries = letter
            .iter()
            .find(|(k, _)| k == "dead_deliveries")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        assert_eq!(deliveries.as_deref(), Some("5"), "{id}");
    }
}

#[tokio::test]
async fn an_idle_consumer_that_still_owns_entries_is_not_deleted() {
    let mut env = TestEnv::new().await;
    let dataset = small_dataset(&env, 2);
    env.load(&dataset).await;
    let mut con = env.redis.clone();
    // A consumer that read everything and died, and one that never read anything.
    let mut owner = env.settings.stream.clone();
    owner.consumer = format!("{}-owner", owner.consumer);
    owner.batch_size = 10_000;
    ensure_group(&mut con, &owner).await.expect("group");
    let taken = read_new(&mut con, &owner, ReadMode::Wait)
        .await
        .expect("the owner reads");
    assert_eq!(taken.len(), dataset.events.len());
    let empty = format!("{}-empty", env.settings.stream.consumer);
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&env.settings.stream.key)
        .arg(&env.settings.stream.group)
        .arg(&empty)
        .query_async(&mut con)
        .await
        .expect("XGROUP CREATECONSUMER");
    // Settings no start would accept (validation wants stale_consumer_ms above
    // claim_idle_ms): nothing is claimed for ten minutes, but consumers idle for 300 ms are
    // deleted, so the deletion runs while the owner still holds its entries.
    env.settings.stream.claim_idle_ms = 600_000;
    env.settings.stream.stale_consumer_ms = 300;
    wait_for("both consumers to be idle for longer than that", || async {
        let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&env.settings.stream.key)
            .arg(&env.settings.stream.group)
            .query_async(&mut env.redis.clone())
            .await
            .expect("XINFO CONSUMERS");
        reply.consumers.iter().filter(|c| c.idle > 300).count() == 2
    })
    .await;

    let daemon = env.start_daemon();
    wait_for(
        "the idle consumer that owns nothing to be deleted",
        || async { !env.consumers().await.contains(&empty) },
    )
    .await;
    daemon.stop().await;
    assert!(
        env.consumers().await.contains(&owner.consumer),
        "an idle consumer that owns entries stays: deleting it would drop them"
    );
    assert_eq!(
        env.backlog().await.pending,
        dataset.events.len(),
        "its entries stay pending, to be claimed"
    );
}

#[tokio::test]
async fn a_deleted_event_for_a_study_that_still_has_rows_fills_it_with_them() {
    let env = TestEnv::new().await;
    let (dataset, first) = study_of_two_series(&env);
    env.load(&dataset).await;
    env.drain().await;
    let row = &dataset.rows[0];
    let (tenant, study) = (
        TenantId::parse(&row.tenant_id).expect("tenant"),
        Uid::parse(&row.study_uid).expect("uid"),
    );
    let key = keys::study_metadata(&tenant, &study);
    assert_eq!(
        env.get(&key).await,
        Some(encode_study(&dataset.rows)),
        "both series"
    );

    // The server deletes one series and announces it as a deletion in the study.
    sqlx::query("DELETE FROM dicom_state_meta WHERE series_uid = $1")
        .bind(&dataset.rows[1].series_uid)
        .execute(&env.db)
        .await
        .expect("delete the second series");
    let _: String = redis::cmd("XADD")
        .arg(&env.settings.stream.key)
        .arg("*")
        .arg("tenant_id")
        .arg(tenant.as_str())
        .arg("study_uid")
        .arg(study.as_str())
        .arg("event")
        .arg("deleted")
        .query_async(&mut env.redis.clone())
        .await
        .expect("XADD");
    env.drain().await;
    assert_eq!(
        env.get(&key).await,
        Some(encode_study(&first)),
        "filled again with the series left, not removed"
    );
}
