//! The transactional outbox against the real PostgreSQL and Redis: installed by the real
//! binary on the server's tables, filled by rows written the way the server's wado-consumer
//! writes them (nothing published by the test), relayed by the daemon to the stream.

use std::collections::{BTreeMap, BTreeSet};

use dcw_testkit::server_writes::{copy_series, upsert_instances, upsert_series};
use dcw_testkit::synthetic::{Dataset, DatasetSpec, InstanceEvent};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::{DicomStateMeta, keys};
use redis::aio::MultiplexedConnection;
use sqlx::postgres::PgListener;

use crate::chaos_support::{PrivateRedis, Replica, free_port, stream_length};
use crate::endpoint::get;
use crate::helpers::{DEADLINE, ServerDicomStateMeta, TestEnv, TestRole, wait_for};
use crate::security::run_binary;

/// Settings under which a relay blocked by the test's lock neither gives up nor has its
/// entries reclaimed while the test holds it (the longest batch stays under the claim time).
fn patient_env() -> Vec<(&'static str, String)> {
    vec![
        ("DCW__OUTBOX__ENABLED", "true".into()),
        ("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "60000".into()),
        ("DCW__REDIS__COMMAND_TIMEOUT_MS", "5000".into()),
        ("DCW__STREAM__CLAIM_IDLE_MS", "120000".into()),
        ("DCW__STREAM__STALE_CONSUMER_MS", "600000".into()),
    ]
}

pub(crate) fn dataset(env: &TestEnv, studies: usize, seed: u64) -> Dataset {
    Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 2,
        studies,
        max_series: 4,
        min_instances: 5,
        max_instances: 30,
        seed,
    })
}

/// `outbox install` (or `uninstall`) by the real binary on the test's database, as `url`'s
/// role (the database owner's when `None`).
async fn outbox_command(env: &TestEnv, command: &str, url: Option<String>) -> std::process::Output {
    let vars: Vec<(&str, String)> = url
        .map(|url| ("DCW__DATABASE__URL", url))
        .into_iter()
        .collect();
    run_binary(env, &vars, &["outbox", command]).await
}

pub(crate) async fn install(env: &TestEnv) {
    let output = outbox_command(env, "install", None).await;
    assert!(
        output.status.success(),
        "outbox install: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) async fn outbox_rows(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM dcw_ingest_outbox")
        .fetch_one(&env.db)
        .await
        .expect("count the outbox")
}

fn study_key(tenant: &str, study: &str) -> String {
    keys::study_metadata(
        &TenantId::parse(tenant).expect("tenant"),
        &Uid::parse(study).expect("uid"),
    )
}

/// Each study's rows as the server's type, in the order the key holds them.
pub(crate) fn by_study(
    rows: &[DicomStateMeta],
) -> BTreeMap<(String, String), Vec<ServerDicomStateMeta>> {
    let mut studies: BTreeMap<(String, String), Vec<ServerDicomStateMeta>> = BTreeMap::new();
    for row in rows {
        studies
            .entry((row.tenant_id.clone(), row.study_uid.clone()))
            .or_default()
            .push(row.into());
    }
    studies
}

/// Writes the series rows of `studies` studies (from `seed`) as the server does, and returns
/// each study's rows (see [`by_study`]).
pub(crate) async fn write_studies(
    env: &TestEnv,
    studies: usize,
    seed: u64,
) -> BTreeMap<(String, String), Vec<ServerDicomStateMeta>> {
    let dataset = dataset(env, studies, seed);
    upsert_series(&env.db, &dataset.rows).await.expect("upsert");
    by_study(&dataset.rows)
}

/// True when every study key holds exactly its rows, as the server's type reads and writes them.
pub(crate) async fn all_warm(
    env: &TestEnv,
    expected: &BTreeMap<(String, String), Vec<ServerDicomStateMeta>>,
) -> bool {
    all_warm_on(&env.redis, expected).await
}

/// [`all_warm`] on any Redis.
async fn all_warm_on(
    con: &MultiplexedConnection,
    expected: &BTreeMap<(String, String), Vec<ServerDicomStateMeta>>,
) -> bool {
    for ((tenant, study), rows) in expected {
        let stored: Option<String> = redis::cmd("GET")
            .arg(study_key(tenant, study))
            .query_async(&mut con.clone())
            .await
            .expect("GET");
        let Some(stored) = stored else {
            return false;
        };
        let parsed: Vec<ServerDicomStateMeta> =
            serde_json::from_str(&stored).expect("the server's type reads the key");
        if &parsed != rows {
            return false;
        }
        assert_eq!(
            stored,
            serde_json::to_string(&parsed).expect("encode"),
            "bytes of {study}"
        );
    }
    true
}

/// The (tenant, study, series) of every entry in the test's stream, in stream order.
async fn published(env: &TestEnv) -> Vec<(String, String, Option<String>, String)> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&env.settings.stream.key)
        .arg("-")
        .arg("+")
        .query_async(&mut env.redis.clone())
        .await
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let field = |name: &str| -> Option<String> {
                entry
                    .map
                    .get(name)
                    .map(|v| redis::from_redis_value(v.clone()).expect("text"))
            };
            (
                field("tenant_id").expect("tenant_id"),
                field("study_uid").expect("study_uid"),
                field("series_uid"),
                field("event").expect("event"),
            )
        })
        .collect()
}

/// Waits until `count` of the daemon's connections wait for a lock in a DELETE of the
/// outbox: each has published its batch and cannot commit.
async fn wait_for_blocked_deletes(env: &TestEnv, count: i64) {
    wait_for("relays blocked between XADD and COMMIT", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND application_name = 'dicom-cache-warmer' AND wait_event_type = 'Lock'
               AND query LIKE 'DELETE FROM dcw_ingest_outbox%'",
        )
        .fetch_one(&env.db)
        .await
        .expect("pg_stat_activity")
            == count
    })
    .await;
}

#[tokio::test]
async fn rows_written_as_the_server_writes_them_are_relayed_and_warmed_byte_compatibly() {
    let env = TestEnv::new().await;
    install(&env).await;
    // No polling within the test: only the triggers' notifications can wake the relay.
    let mut vars = patient_env();
    vars.push(("DCW__OUTBOX__POLL_MS", "600000".into()));
    let replica = Replica::start(&env, &vars).await;

    // wado-consumer's way: one upsert of the series rows, then one of the instance rows.
    let upserted = dataset(&env, 6, 1);
    upsert_series(&env.db, &upserted.rows)
        .await
        .expect("upsert series");
    upsert_instances(&env.db, &upserted.events)
        .await
        .expect("upsert instances");
    // Its next batch of the same series: ON CONFLICT … DO UPDATE.
    let mut again = upserted.rows.clone();
    for row in &mut again {
        row.updated_time += chrono::Duration::seconds(1);
    }
    upsert_series(&env.db, &again).await.expect("upsert again");
    // A bulk load (other studies: another seed).
    let copied = dataset(&env, 5, 2);
    assert_eq!(
        copy_series(&env.db, &copied.rows).await.expect("COPY"),
        copied.rows.len() as u64
    );

    let mut expected = by_study(&again);
    expected.extend(by_study(&copied.rows));
    wait_for("every study warmed from the outbox", || async {
        all_warm(&env, &expected).await
    })
    .await;
    wait_for("the outbox relayed", || async {
        outbox_rows(&env).await == 0
    })
    .await;
    env.wait_until_drained().await;
    assert!(env.dead_letters().await.is_empty());
    let figures = replica.stop().await;
    assert!(figures.warnings.is_empty(), "{:?}", figures.warnings);
}

#[tokio::test]
async fn a_batch_of_a_thousand_instance_rows_adds_one_outbox_row_per_series() {
    let env = TestEnv::new().await;
    install(&env).await;
    let dataset = dataset(&env, 1, 3);
    let series = dataset.rows.len() as i64;
    let mut listener = PgListener::connect(env.settings.database.url.expose())
        .await
        .expect("listen");
    listener.listen("dcw_ingest_outbox").await.expect("LISTEN");

    upsert_series(&env.db, &dataset.rows)
        .await
        .expect("upsert series");
    assert_eq!(outbox_rows(&env).await, series, "one row per series row");
    // 1,000 instances spread over the series, in one statement.
    let events: Vec<InstanceEvent> = (0..1_000)
        .map(|i| {
            let row = &dataset.rows[i % dataset.rows.len()];
            InstanceEvent {
                tenant_id: row.tenant_id.clone(),
                study_uid: row.study_uid.clone(),
                series_uid: row.series_uid.clone(),
                sop_uid: format!("{}.{i}", row.series_uid),
            }
        })
        .collect();
    upsert_instances(&env.db, &events)
        .await
        .expect("upsert instances");
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT tenant_id, study_uid, series_uid, event FROM dcw_ingest_outbox
         ORDER BY id OFFSET $1",
    )
    .bind(series)
    .fetch_all(&env.db)
    .await
    .expect("the instance statement's rows");
    let expected: BTreeSet<_> = dataset
        .rows
        .iter()
        .map(|r| {
            (
                r.tenant_id.clone(),
                r.study_uid.clone(),
                Some(r.series_uid.clone()),
                "stored".to_owned(),
            )
        })
        .collect();
    assert_eq!(rows.len() as i64, series, "{rows:?}");
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), expected);

    // The same instances again (ON CONFLICT … DO UPDATE): one row per series again.
    upsert_instances(&env.db, &events)
        .await
        .expect("upsert again");
    assert_eq!(outbox_rows(&env).await, 3 * series);
    let notified = tokio::time::timeout(DEADLINE, listener.recv())
        .await
        .expect("a notification in time")
        .expect("notification");
    assert_eq!(notified.channel(), "dcw_ingest_outbox");
}

#[tokio::test]
async fn an_update_of_a_series_row_shows_in_the_cached_study() {
    let mut env = TestEnv::new().await;
    install(&env).await;
    env.settings.outbox.enabled = true;
    let dataset = dataset(&env, 2, 4);
    upsert_series(&env.db, &dataset.rows).await.expect("upsert");
    env.drain().await;
    let row = &dataset.rows[0];
    let key = study_key(&row.tenant_id, &row.study_uid);
    let before = env.get(&key).await.expect("warmed");

    sqlx::query(
        "UPDATE dicom_state_meta SET series_description = 'Corrected by the server',
             updated_time = updated_time + interval '1 second'
         WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = $3",
    )
    .bind(&row.tenant_id)
    .bind(&row.study_uid)
    .bind(&row.series_uid)
    .execute(&env.db)
    .await
    .expect("update");
    env.drain().await;
    let after = env.get(&key).await.expect("still warm");
    assert_ne!(before, after);
    let parsed: Vec<ServerDicomStateMeta> = serde_json::from_str(&after).expect("server type");
    let series = parsed
        .iter()
        .find(|r| r.series_uid == row.series_uid)
        .expect("the series");
    assert_eq!(
        series.series_description.as_deref(),
        Some("Corrected by the server")
    );
    assert_eq!(outbox_rows(&env).await, 0);
}

#[tokio::test]
async fn deleting_a_studys_rows_removes_its_study_key() {
    let mut env = TestEnv::new().await;
    install(&env).await;
    env.settings.outbox.enabled = true;
    let dataset = dataset(&env, 3, 5);
    upsert_series(&env.db, &dataset.rows).await.expect("upsert");
    upsert_instances(&env.db, &dataset.events)
        .await
        .expect("instances");
    env.drain().await;
    let gone = &dataset.rows[0];
    let kept = dataset
        .rows
        .iter()
        .find(|r| r.study_uid != gone.study_uid)
        .expect("another study");
    assert!(
        env.get(&study_key(&gone.tenant_id, &gone.study_uid))
            .await
            .is_some()
    );

    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(&gone.tenant_id)
        .bind(&gone.study_uid)
        .execute(&env.db)
        .await
        .expect("delete");
    env.drain().await;
    assert_eq!(
        env.get(&study_key(&gone.tenant_id, &gone.study_uid)).await,
        None
    );
    assert!(
        env.get(&study_key(&kept.tenant_id, &kept.study_uid))
            .await
            .is_some()
    );
    let deleted = published(&env)
        .await
        .into_iter()
        .filter(|(_, study, _, event)| *study == gone.study_uid && event == "deleted")
        .count();
    assert_eq!(
        deleted,
        dataset
            .rows
            .iter()
            .filter(|r| r.study_uid == gone.study_uid)
            .count(),
        "one deleted event per series"
    );
}

#[tokio::test]
async fn a_relay_killed_between_xadd_and_commit_loses_nothing() {
    let env = TestEnv::new().await;
    install(&env).await;
    let dataset = dataset(&env, 6, 6);
    upsert_series(&env.db, &dataset.rows).await.expect("upsert");
    let rows = dataset.rows.len();
    assert_eq!(outbox_rows(&env).await, rows as i64);

    // SHARE lets the relay lock its rows (ROW SHARE) and blocks its DELETE (ROW EXCLUSIVE):
    // it publishes, then waits before it can commit. The study table is locked as well,
    // so that the doomed daemon warms nothing itself.
    let mut blocker = env.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE dcw_ingest_outbox IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock the outbox");
    sqlx::query("LOCK TABLE dicom_state_meta IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock the study rows");
    let doomed = Replica::start(&env, &patient_env()).await;
    wait_for_blocked_deletes(&env, 1).await;
    let con = env.redis.clone();
    assert_eq!(stream_length(&con, &env.settings.stream.key).await, rows);
    doomed.kill_hard().await;
    // Its server process lives on, waiting for the lock, until it reads from the dead
    // client; end it first, so that releasing the lock cannot let its DELETE through.
    let terminated: Vec<bool> = sqlx::query_scalar(&format!(
        "SELECT pg_terminate_backend(pid, {}) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND query LIKE 'DELETE FROM dcw_ingest_outbox%'",
        DEADLINE.as_millis()
    ))
    .fetch_all(&mut *blocker)
    .await
    .expect("terminate the killed relay's session");
    assert_eq!(terminated, [true], "one session, ended");
    blocker.rollback().await.expect("release the locks");
    assert_eq!(outbox_rows(&env).await, rows as i64, "nothing was deleted");
    let expected = by_study(&dataset.rows);
    assert!(
        !all_warm(&env, &expected).await,
        "the doomed daemon warmed nothing"
    );

    // Another consumer: the first one's entries stay pending (claimed only after 120 s),
    // so the studies are warmed from the rows published again.
    let mut vars = patient_env();
    vars.push((
        "DCW__STREAM__CONSUMER",
        format!("{}-2", env.settings.stream.consumer),
    ));
    let survivor = Replica::start(&env, &vars).await;
    wait_for("every study warmed", || async {
        all_warm(&env, &expected).await
    })
    .await;
    wait_for("the outbox relayed", || async {
        outbox_rows(&env).await == 0
    })
    .await;
    assert_eq!(
        stream_length(&con, &env.settings.stream.key).await,
        2 * rows,
        "published once before the crash and once after"
    );
    survivor.stop().await;
}

#[tokio::test]
async fn rows_written_while_redis_is_down_wait_in_the_outbox_and_are_relayed_once_it_is_back() {
    let env = TestEnv::new().await;
    install(&env).await;
    let mut redis = PrivateRedis::start().await;
    let port = free_port();
    let mut vars = patient_env();
    vars.push(("DCW__REDIS__URL", redis.url()));
    vars.push(("DCW__REDIS__COMMAND_TIMEOUT_MS", "500".into()));
    vars.push(("DCW__HTTP__LISTEN", format!("127.0.0.1:{port}")));
    let replica = Replica::start(&env, &vars).await;
    let before = dataset(&env, 2, 10);
    upsert_series(&env.db, &before.rows).await.expect("upsert");
    let con = redis.connection().await;
    wait_for("the first studies warmed", || async {
        all_warm_on(&con, &by_study(&before.rows)).await
    })
    .await;
    wait_for("the outbox relayed", || async {
        outbox_rows(&env).await == 0
    })
    .await;

    redis.stop().await;
    let during = dataset(&env, 3, 11);
    upsert_series(&env.db, &during.rows).await.expect("upsert");
    wait_for("the relay to fail", || {
        let warned = replica
            .figures()
            .warnings
            .iter()
            .any(|w| w.contains("outbox relay failed"));
        async move { warned }
    })
    .await;
    assert_eq!(
        outbox_rows(&env).await,
        during.rows.len() as i64,
        "the rows wait in the outbox"
    );
    // The gauges show them (counted every 5 s at most).
    wait_for("the outbox gauges to show the rows waiting", || async {
        metric(port, "dcw_outbox_length").await == Some(during.rows.len() as f64)
            && metric(port, "dcw_outbox_lag_seconds").await > Some(0.0)
    })
    .await;

    redis.restart().await;
    let con = redis.connection().await;
    wait_for("the studies written during the outage warmed", || async {
        all_warm_on(&con, &by_study(&during.rows)).await
    })
    .await;
    wait_for("the outbox relayed", || async {
        outbox_rows(&env).await == 0
    })
    .await;
    replica.stop().await;
}

#[tokio::test]
async fn install_and_uninstall_are_idempotent_and_refused_without_ownership() {
    let env = TestEnv::new().await;
    let triggers = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'dcw_ingest_outbox_%'",
        )
        .fetch_one(&env.db)
        .await
        .expect("pg_trigger")
    };
    let table = || async {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass('dcw_ingest_outbox') IS NOT NULL")
            .fetch_one(&env.db)
            .await
            .expect("to_regclass")
    };
    install(&env).await;
    upsert_series(&env.db, &dataset(&env, 1, 7).rows)
        .await
        .expect("upsert");
    let waiting = outbox_rows(&env).await;
    assert!(waiting > 0);
    install(&env).await;
    assert_eq!((triggers().await, table().await), (5, true));
    assert_eq!(
        outbox_rows(&env).await,
        waiting,
        "a second install keeps the rows"
    );

    for waiting in [waiting, 0] {
        let output = outbox_command(&env, "uninstall", None).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout)
                .contains(&format!("({waiting} rows were waiting to be relayed)")),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!((triggers().await, table().await), (0, false));
    }
    install(&env).await;

    let role = TestRole::create(
        &env,
        &["GRANT SELECT ON dicom_state_meta, dicom_image_meta, dicom_json_meta TO {role}"],
    )
    .await;
    for (command, verb) in [("install", "create"), ("uninstall", "drop")] {
        let refused = outbox_command(&env, command, Some(role.url())).await;
        let logged = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{logged}");
        assert!(
            logged.contains(&format!(
                "outbox {command}: role {} may not {verb} triggers on dicom_state_meta: it must \
                 own the table (or be a superuser); run it as the table's owner",
                role.name
            )),
            "{logged}"
        );
    }
    assert_eq!(
        (triggers().await, table().await),
        (5, true),
        "nothing changed"
    );

    // Owning the tables but not the trigger functions: PostgreSQL refuses (42501) mid-way,
    // and the transaction leaves everything as it was.
    for statement in [
        "ALTER TABLE dicom_state_meta OWNER TO {role}",
        "ALTER TABLE dicom_image_meta OWNER TO {role}",
        "ALTER TABLE dcw_ingest_outbox OWNER TO {role}",
        "GRANT CREATE ON SCHEMA public TO {role}",
    ] {
        sqlx::query(&statement.replace("{role}", &role.name))
            .execute(&env.db)
            .await
            .expect(statement);
    }
    let refused = outbox_command(&env, "install", Some(role.url())).await;
    let logged = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{logged}");
    assert!(
        logged.contains(&format!(
            "outbox install: role {} lacks a privilege (must be owner of function \
             dcw_ingest_outbox_stored)",
            role.name
        )) && logged.contains("nothing was changed"),
        "{logged}"
    );
    assert_eq!((triggers().await, table().await), (5, true));
}

#[tokio::test]
async fn the_daemon_relays_with_the_readmes_grants_and_refuses_to_start_without_them() {
    let env = TestEnv::new().await;
    install(&env).await;
    let role = TestRole::create(
        &env,
        &[
            "GRANT SELECT ON dicom_state_meta, dicom_image_meta, dicom_json_meta TO {role}",
            "GRANT INSERT, UPDATE ON dicom_json_meta TO {role}",
        ],
    )
    .await;
    let vars = vec![
        ("DCW__DATABASE__URL", role.url()),
        ("DCW__OUTBOX__ENABLED", "true".to_owned()),
    ];
    let refused = run_binary(&env, &vars, &["run"]).await;
    let logged = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{logged}");
    assert!(
        logged.contains(&format!(
            "outbox.enabled: role {0} may not relay dcw_ingest_outbox: GRANT SELECT, DELETE, \
             UPDATE (id) ON dcw_ingest_outbox TO {0}",
            role.name
        )),
        "{logged}"
    );
    let checked = run_binary(&env, &vars, &["check-config"]).await;
    assert!(!checked.status.success());
    assert!(String::from_utf8_lossy(&checked.stdout).contains("outbox.enabled: FAILED"));

    sqlx::query(&format!(
        "GRANT SELECT, DELETE, UPDATE (id) ON dcw_ingest_outbox TO {}",
        role.name
    ))
    .execute(&env.db)
    .await
    .expect("grant");
    let dataset = dataset(&env, 2, 8);
    upsert_series(&env.db, &dataset.rows).await.expect("upsert");
    let mut as_role = vars.clone();
    as_role.extend(
        patient_env()
            .into_iter()
            .filter(|(k, _)| *k != "DCW__OUTBOX__ENABLED"),
    );
    let replica = Replica::start(&env, &as_role).await;
    let expected = by_study(&dataset.rows);
    wait_for("every study warmed", || async {
        all_warm(&env, &expected).await
    })
    .await;
    wait_for("the outbox relayed", || async {
        outbox_rows(&env).await == 0
    })
    .await;
    let figures = replica.stop().await;
    assert!(figures.warnings.is_empty(), "{:?}", figures.warnings);
}

/// The value of an unlabelled metric on a daemon's endpoint, when exported.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics").await?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The value of `dcw_outbox_rows_relayed_total` on a daemon's endpoint.
async fn rows_relayed(port: u16) -> f64 {
    metric(port, "dcw_outbox_rows_relayed_total")
        .await
        .expect("dcw_outbox_rows_relayed_total exported")
}

#[tokio::test]
async fn two_relays_in_parallel_publish_each_row_once() {
    let env = TestEnv::new().await;
    install(&env).await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 3,
        studies: 120,
        max_series: 4,
        min_instances: 1,
        max_instances: 1,
        seed: 9,
    });
    upsert_series(&env.db, &dataset.rows).await.expect("upsert");
    let rows = dataset.rows.len();
    assert!(rows > 200, "{rows} rows: more than four batches");

    // Relay A publishes its first batch and waits at its DELETE; relay B then starts,
    // skips A's locked rows, publishes the next batch and waits too. Then both go on.
    let mut blocker = env.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE dcw_ingest_outbox IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock the outbox");
    let (port_a, port_b) = (free_port(), free_port());
    let relay = |name: &str, port: u16| {
        let mut vars = patient_env();
        vars.push(("DCW__OUTBOX__BATCH_SIZE", "50".into()));
        vars.push(("DCW__HTTP__LISTEN", format!("127.0.0.1:{port}")));
        vars.push((
            "DCW__STREAM__CONSUMER",
            format!("{}-{name}", env.settings.stream.consumer),
        ));
        vars
    };
    let a = Replica::start(&env, &relay("a", port_a)).await;
    wait_for_blocked_deletes(&env, 1).await;
    let b = Replica::start(&env, &relay("b", port_b)).await;
    wait_for_blocked_deletes(&env, 2).await;
    let con = env.redis.clone();
    assert_eq!(stream_length(&con, &env.settings.stream.key).await, 100);
    blocker.rollback().await.expect("release the lock");

    wait_for("the outbox relayed", || async {
        outbox_rows(&env).await == 0
    })
    .await;
    env.wait_until_drained().await;
    let events = published(&env).await;
    let distinct: BTreeSet<_> = events.iter().cloned().collect();
    assert_eq!(events.len(), rows, "each row published once");
    assert_eq!(distinct.len(), rows);
    let expected: BTreeSet<_> = dataset
        .rows
        .iter()
        .map(|r| {
            (
                r.tenant_id.clone(),
                r.study_uid.clone(),
                Some(r.series_uid.clone()),
                "stored".to_owned(),
            )
        })
        .collect();
    assert_eq!(distinct, expected);
    // Counted just after each commit.
    wait_for("both relays to count their rows", || async {
        rows_relayed(port_a).await + rows_relayed(port_b).await == rows as f64
    })
    .await;
    let (relayed_a, relayed_b) = (rows_relayed(port_a).await, rows_relayed(port_b).await);
    assert!(
        relayed_a >= 50.0 && relayed_b >= 50.0,
        "{relayed_a} {relayed_b}"
    );
    assert!(all_warm(&env, &by_study(&dataset.rows)).await);
    a.stop().await;
    b.stop().await;
}
