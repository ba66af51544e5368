//! End to end: per-instance events in, byte-compatible study keys out.

use std::collections::BTreeMap;

use dcw_testkit::synthetic::{self, Dataset, DatasetSpec};
use dicom_cache_warmer::add_fill_study;
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;

use crate::chaos_support::Replica;
use crate::helpers::{ServerDicomStateMeta, TestEnv, wait_for};

fn dataset(env: &TestEnv, studies: usize) -> Dataset {
    Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 3,
        studies,
        max_series: 6,
        min_instances: 10,
        max_instances: 40,
        seed: 11,
    })
}

fn ids(tenant: &str, study: &str) -> (TenantId, Uid) {
    (
        TenantId::parse(tenant).expect("tenant"),
        Uid::parse(study).expect("uid"),
    )
}

/// The rows of each study, as the server's type, in the order the key holds them.
fn expected_by_study(dataset: &Dataset) -> BTreeMap<(String, String), Vec<ServerDicomStateMeta>> {
    let mut expected: BTreeMap<(String, String), Vec<ServerDicomStateMeta>> = BTreeMap::new();
    for row in &dataset.rows {
        expected
            .entry((row.tenant_id.clone(), row.study_uid.clone()))
            .or_default()
            .push(row.into());
    }
    expected
}

#[tokio::test]
async fn interleaved_instance_events_warm_every_study_exactly_as_the_server_reads_it() {
    let env = TestEnv::new().await;
    let dataset = dataset(&env, 8);
    dataset.insert(&env.db).await.expect("insert rows");
    let expected = expected_by_study(&dataset);
    let mut con = env.redis.clone();
    for (tenant, study) in expected.keys() {
        let (t, s) = ids(tenant, study);
        let _: () = redis::cmd("SET")
            .arg(keys::study_negative_flag(&t, &s))
            .arg("1")
            .arg("EX")
            .arg(300)
            .query_async(&mut con)
            .await
            .expect("set negative flag");
    }
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");

    let daemon = env.start_daemon();
    env.wait_until_drained().await;

    let ttl = env.settings.cache.study_ttl_secs as i64;
    for ((tenant, study), rows) in &expected {
        let (t, s) = ids(tenant, study);
        let stored = env
            .get(&keys::study_metadata(&t, &s))
            .await
            .expect("study key is set");
        let parsed: Vec<ServerDicomStateMeta> =
            serde_json::from_str(&stored).expect("the server's type reads it");
        assert_eq!(&parsed, rows, "rows of {study}");
        assert_eq!(
            stored,
            serde_json::to_string(&parsed).expect("encode"),
            "bytes of {study}"
        );
        let key_ttl: i64 = redis::cmd("TTL")
            .arg(keys::study_metadata(&t, &s))
            .query_async(&mut con)
            .await
            .expect("TTL");
        assert!(
            key_ttl > ttl * 94 / 100 && key_ttl <= ttl,
            "TTL {key_ttl} of {study}"
        );
        assert_eq!(
            env.get(&keys::study_negative_flag(&t, &s)).await,
            None,
            "negative flag of {study}"
        );
    }
    assert!(env.dead_letters().await.is_empty());

    // Delivering the same events again changes nothing and leaves nothing pending.
    let before: Vec<Option<String>> = futures_values(&env, &expected).await;
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish again");
    env.wait_until_drained().await;
    assert_eq!(futures_values(&env, &expected).await, before);
    daemon.stop().await;
}

async fn futures_values(
    env: &TestEnv,
    expected: &BTreeMap<(String, String), Vec<ServerDicomStateMeta>>,
) -> Vec<Option<String>> {
    let mut values = Vec::new();
    for (tenant, study) in expected.keys() {
        let (t, s) = ids(tenant, study);
        values.push(env.get(&keys::study_metadata(&t, &s)).await);
    }
    values
}

#[tokio::test]
async fn a_study_not_yet_in_the_database_stays_pending_and_writes_nothing() {
    let env = TestEnv::new().await;
    let dataset = dataset(&env, 2);
    let (present, absent) = dataset.rows.split_at(
        dataset
            .rows
            .iter()
            .filter(|r| r.study_uid == dataset.rows[0].study_uid)
            .count(),
    );
    synthetic::insert_rows(&env.db, present)
        .await
        .expect("insert the first study only");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");
    let absent_events = dataset
        .events
        .iter()
        .filter(|e| e.study_uid == absent[0].study_uid)
        .count();

    let daemon = env.start_daemon();
    wait_for("every entry to be read", || async {
        env.backlog().await.lag == Some(0)
    })
    .await;
    wait_for("the present study to be acknowledged", || async {
        env.backlog().await.pending == absent_events
    })
    .await;
    daemon.stop().await;

    let (t, s) = ids(&absent[0].tenant_id, &absent[0].study_uid);
    assert_eq!(
        env.get(&keys::study_metadata(&t, &s)).await,
        None,
        "no empty list is written"
    );
    let (t, s) = ids(&present[0].tenant_id, &present[0].study_uid);
    assert!(env.get(&keys::study_metadata(&t, &s)).await.is_some());
    assert!(
        env.dead_letters().await.is_empty(),
        "a missing study is not bad input"
    );
}

#[tokio::test]
async fn a_deleted_event_removes_the_study_key_and_no_older_fill_brings_it_back() {
    let env = TestEnv::new().await;
    let dataset = dataset(&env, 1);
    dataset.insert(&env.db).await.expect("insert rows");
    let mut con = env.redis.clone();
    dataset
        .publish(&mut con, &env.settings.stream.key)
        .await
        .expect("publish");
    let daemon = env.start_daemon();
    env.wait_until_drained().await;
    let (t, s) = ids(&dataset.rows[0].tenant_id, &dataset.rows[0].study_uid);
    let filled_version: i64 = env
        .get(&keys::study_version(&t, &s))
        .await
        .expect("version")
        .parse()
        .expect("number");

    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(t.as_str())
        .bind(s.as_str())
        .execute(&env.db)
        .await
        .expect("delete rows");
    let _: String = redis::cmd("XADD")
        .arg(&env.settings.stream.key)
        .arg("*")
        .arg("tenant_id")
        .arg(t.as_str())
        .arg("study_uid")
        .arg(s.as_str())
        .arg("event")
        .arg("deleted")
        .query_async(&mut con)
        .await
        .expect("XADD");
    env.wait_until_drained().await;
    daemon.stop().await;
    assert_eq!(env.get(&keys::study_metadata(&t, &s)).await, None);

    // A replica that read the rows before the deletion writes late: it is refused.
    let mut pipe = redis::pipe();
    add_fill_study(&mut pipe, &t, &s, "[\"stale\"]", filled_version, 60);
    let written: Vec<i64> = pipe.query_async(&mut con).await.expect("late fill");
    assert_eq!(written, [0]);
    assert_eq!(env.get(&keys::study_metadata(&t, &s)).await, None);
}

#[tokio::test]
async fn a_deletion_wins_over_a_late_stored_event_in_the_same_window() {
    let env = TestEnv::new().await;
    let dataset = dataset(&env, 1);
    env.load(&dataset).await;
    env.drain().await;
    let row = &dataset.rows[0];
    let (t, s) = ids(&row.tenant_id, &row.study_uid);
    assert!(env.get(&keys::study_metadata(&t, &s)).await.is_some());

    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(t.as_str())
        .bind(s.as_str())
        .execute(&env.db)
        .await
        .expect("delete rows");
    // The deletion, then a late `stored` event of one of its instances, read together.
    let mut con = env.redis.clone();
    for event in ["deleted", "stored"] {
        let _: String = redis::cmd("XADD")
            .arg(&env.settings.stream.key)
            .arg("*")
            .arg("tenant_id")
            .arg(t.as_str())
            .arg("study_uid")
            .arg(s.as_str())
            .arg("series_uid")
            .arg(&row.series_uid)
            .arg("event")
            .arg(event)
            .query_async(&mut con)
            .await
            .expect("XADD");
    }
    env.drain().await;
    assert_eq!(
        env.get(&keys::study_metadata(&t, &s)).await,
        None,
        "removed"
    );
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test]
async fn an_older_snapshot_never_overwrites_a_newer_one() {
    let env = TestEnv::new().await;
    let (t, s) = ids(&format!("{}0", env.tenant_prefix), "1.2.3");
    let mut con = env.redis.clone();
    let fill = |json: &'static str, version: i64| {
        let mut pipe = redis::pipe();
        add_fill_study(&mut pipe, &t, &s, json, version, 60);
        pipe
    };
    let written: Vec<i64> = fill("[\"newer\"]", 20)
        .query_async(&mut con)
        .await
        .expect("fill");
    assert_eq!(written, [1]);
    let _: () = redis::cmd("SET")
        .arg(keys::study_negative_flag(&t, &s))
        .arg("1")
        .query_async(&mut con)
        .await
        .expect("SET");
    let written: Vec<i64> = fill("[\"older\"]", 10)
        .query_async(&mut con)
        .await
        .expect("fill");
    assert_eq!(written, [0], "the older snapshot is refused");
    assert_eq!(
        env.get(&keys::study_metadata(&t, &s)).await.as_deref(),
        Some("[\"newer\"]")
    );
    assert_eq!(
        env.get(&keys::study_negative_flag(&t, &s)).await,
        None,
        "the flag goes either way"
    );
    let written: Vec<i64> = fill("[\"same\"]", 20)
        .query_async(&mut con)
        .await
        .expect("fill");
    assert_eq!(written, [1], "the same snapshot may be written again");
}

/// Reads go on while the stream has more, two of them sent ahead of the one being parsed, but
/// a window never gathers more than `stream.coalesce_entries`: the reads in flight count.
/// (Before, the read sent last could bring the window up to a batch less one over it.)
#[tokio::test]
async fn a_window_gathers_at_most_coalesce_entries_with_reads_in_flight() {
    let env = TestEnv::new().await;
    let dataset = dataset(&env, 4);
    env.load(&dataset).await;
    let replica = Replica::start(
        &env,
        &[
            ("DCW__STREAM__BATCH_SIZE", "10".to_owned()),
            ("DCW__STREAM__COALESCE_ENTRIES", "25".to_owned()),
        ],
    )
    .await;
    env.wait_until_drained().await;
    let figures = replica.stop().await;
    assert_eq!(
        figures.entries_done,
        dataset.events.len(),
        "every entry done once"
    );
    assert!(
        figures.largest_batch <= 25,
        "a window of {} entries, over stream.coalesce_entries (25)",
        figures.largest_batch
    );
    assert!(
        figures.largest_batch > 10,
        "windows of one read only: nothing was read ahead ({} entries at most)",
        figures.largest_batch
    );
}
