//! The reference strategy for `drain`: plain per-event workers that drain the same events
//! on a stream and group of their own, one SELECT, one MULTI and one XACK per entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::ensure;
use dcw_testkit::synthetic::Dataset;
use dicom_cache_warmer::{
    DicomStateMeta, ReadMode, StreamSettings, ack, backlog, command_pool, encode_study,
    ensure_group, keys, lazy_pool, parse_event, read_new,
};
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

use crate::daemon::Counters;
use crate::drain::DrainRun;
use crate::sampling::CpuMark;
use crate::scratch::Scratch;
use crate::verify::{expected_study_keys, wrong_study_keys};

/// Entries one XREADGROUP of the reference worker asks for.
const REFERENCE_READ_COUNT: usize = 100;

/// One study's rows, as a per-event worker reads them.
const REFERENCE_SELECT: &str = "SELECT tenant_id, patient_id, study_uid, series_uid, \
     study_uid_hash, series_uid_hash, study_date_origin, patient_name, patient_sex, \
     patient_birth_date, patient_birth_time, patient_age, patient_size, patient_weight, \
     study_date, study_time, accession_number, study_id, study_description, modality, \
     series_number, series_date, series_time, series_description, body_part_examined, \
     protocol_name, series_related_instances, created_time, updated_time \
     FROM dicom_state_meta \
     WHERE tenant_id = $1 AND study_uid = $2 \
       AND created_time IS NOT NULL AND updated_time IS NOT NULL \
     ORDER BY series_uid";

#[derive(Default)]
struct ReferenceCounts {
    queries: AtomicU64,
    round_trips: AtomicU64,
    fills: AtomicU64,
}

/// Drains the same events with `workers` plain per-event workers on their own stream and
/// group, after removing the daemon's study keys: per entry one SELECT, one MULTI of SET
/// and DEL, one XACK (entries read 100 at a time).
pub(crate) async fn drain(
    scratch: &Scratch,
    dataset: &Dataset,
    con: &mut MultiplexedConnection,
    pool: &PgPool,
    workers: usize,
) -> anyhow::Result<DrainRun> {
    let expected = expected_study_keys(dataset)?;
    for chunk in expected.chunks(1_000) {
        let mut pipe = redis::pipe();
        for (key, version, _) in chunk {
            pipe.cmd("DEL").arg(key).arg(version).ignore();
        }
        pipe.query_async::<()>(con).await?;
    }
    let stream = StreamSettings {
        key: format!("{}reference", scratch.key_prefix),
        group: "dcw-bench-reference".into(),
        batch_size: REFERENCE_READ_COUNT,
        // An empty read after 1 ms means every entry has been delivered.
        block_ms: 1,
        ..scratch.settings.stream.clone()
    };
    dataset.publish(con, &stream.key).await?;
    ensure_group(con, &stream).await?;

    let mark = CpuMark::now(con, pool).await;
    let mut settings = scratch.settings.clone();
    settings.database.max_connections = u32::try_from(workers)?;
    settings.redis.pool_size = workers;
    let db = lazy_pool(&settings.database)?;
    let redis = command_pool(&settings.redis)?;
    let counts = Arc::new(ReferenceCounts::default());
    let ttl = settings.cache.study_ttl_secs;
    // Connections are opened before the clock starts, as a running worker has them.
    sqlx::query("SELECT 1").execute(&db).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..workers {
        let stream = StreamSettings {
            consumer: format!("reference-{n}"),
            ..stream.clone()
        };
        let (db, redis, counts) = (db.clone(), redis.clone(), counts.clone());
        tasks.spawn(async move { reference_worker(&stream, &db, &redis, ttl, &counts).await });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let cpu = mark.used(con, pool, None).await;
    db.close().await;
    let backlog = backlog(con, &stream).await?;
    ensure!(
        backlog.is_some_and(|b| b.is_drained()),
        "the reference workers left entries: {backlog:?}"
    );
    Ok(DrainRun {
        elapsed,
        wrong_studies: wrong_study_keys(con, dataset).await?,
        counters: Counters {
            db_queries: counts.queries.load(Ordering::Relaxed) as f64,
            redis_round_trips: counts.round_trips.load(Ordering::Relaxed) as f64,
            study_fills: counts.fills.load(Ordering::Relaxed) as f64,
            outbox_rows: 0.0,
        },
        cpu,
    })
}

async fn reference_worker(
    stream: &StreamSettings,
    db: &PgPool,
    redis: &deadpool_redis::Pool,
    ttl_secs: u64,
    counts: &ReferenceCounts,
) -> anyhow::Result<()> {
    let mut con = redis.get().await?;
    loop {
        let entries = read_new(&mut *con, stream, ReadMode::Wait).await?;
        counts.round_trips.fetch_add(1, Ordering::Relaxed);
        if entries.is_empty() {
            return Ok(());
        }
        for entry in &entries {
            if let Ok(event) = parse_event(&entry.fields) {
                let rows: Vec<DicomStateMeta> = sqlx::query_as(REFERENCE_SELECT)
                    .bind(event.tenant.as_str())
                    .bind(event.study.as_str())
                    .fetch_all(db)
                    .await?;
                counts.queries.fetch_add(1, Ordering::Relaxed);
                if !rows.is_empty() {
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(keys::study_metadata(&event.tenant, &event.study))
                        .arg(encode_study(&rows))
                        .arg("EX")
                        .arg(ttl_secs)
                        .ignore()
                        .cmd("DEL")
                        .arg(keys::study_negative_flag(&event.tenant, &event.study))
                        .ignore()
                        .query_async::<()>(&mut *con)
                        .await?;
                    counts.round_trips.fetch_add(1, Ordering::Relaxed);
                    counts.fills.fetch_add(1, Ordering::Relaxed);
                }
            }
            ack(&mut *con, stream, &[entry.id]).await?;
            counts.round_trips.fetch_add(1, Ordering::Relaxed);
        }
    }
}
