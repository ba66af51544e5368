//! One batch of stream entries through the steps: parse, coalesce by study, read the
//! database once, write the cache in one round trip, acknowledge in one XACK.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use redis::RedisError;
use sqlx::PgPool;

use crate::config::Settings;
use crate::event::{self, EventKind};
use crate::health::Service;
use crate::ids::{TenantId, Uid};
use crate::metrics::{self, RoundTrip};
use crate::recheck::Rechecks;
use crate::refresh::{self, Plan};
use crate::schedule::{Schedule, SeriesRef};
use crate::stream::{self, StreamEntry};
use crate::{keys, series_builder};

/// The connections and helpers a batch needs.
#[derive(Clone)]
pub struct Services {
    /// Redis commands.
    pub redis: deadpool_redis::Pool,
    /// PostgreSQL.
    pub db: PgPool,
    /// The second look at negative flags after each fill.
    pub rechecks: Rechecks,
    /// The series build schedule, when series documents are on.
    pub schedule: Option<Schedule>,
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries in the batch.
    pub entries: usize,
    /// Entries acknowledged.
    pub acked: usize,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: usize,
    /// Study keys written.
    pub studies_filled: usize,
    /// Studies whose cached snapshot was already newer than ours.
    pub studies_stale: usize,
    /// Studies removed after a `deleted` event.
    pub studies_removed: usize,
    /// Studies not (yet) in the database; their entries stay pending.
    pub studies_waiting: usize,
    /// Whether PostgreSQL was queried.
    pub queried_database: bool,
}

/// An infrastructure fault: the batch is left pending and retried.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Redis failed or timed out.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// No pooled Redis connection could be had in time.
    #[error("redis pool: {0}")]
    RedisPool(#[from] deadpool_redis::PoolError),
    /// PostgreSQL failed or timed out.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
}

impl BatchError {
    /// The service at fault.
    pub fn service(&self) -> Service {
        match self {
            Self::Redis(_) | Self::RedisPool(_) => Service::Redis,
            Self::Database(_) => Service::Database,
        }
    }
}

/// The entries of one study in this batch, and what the last of them asks for.
struct StudyWork<'a> {
    last_kind: EventKind,
    entries: Vec<&'a StreamEntry>,
    series: BTreeSet<Uid>,
}

/// Redis error codes that mean "not now" rather than "never": the batch is retried.
const TRANSIENT_CODES: [&str; 10] = [
    "LOADING",
    "READONLY",
    "OOM",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
    "NOGROUP",
];

/// True when Redis answered but refused a command for a reason of the data (a key of the
/// wrong type, a failing script): retrying the same writes would fail forever.
fn is_refused_write(error: &BatchError) -> bool {
    let BatchError::Redis(error) = error else {
        return false;
    };
    // A pipeline's error carries the refusals of its commands.
    error.clone().into_server_errors().is_some_and(|refusals| {
        !refusals.is_empty()
            && refusals
                .iter()
                .all(|(_, refusal)| !TRANSIENT_CODES.contains(&refusal.code()))
    })
}

/// Processes one batch; entries are acknowledged only once every write they caused has
/// succeeded, and an infrastructure error leaves all of them pending.
///
/// When Redis refuses a write, the batch is split by study to find the study at fault;
/// that study's entries go to the dead-letter stream with Redis' reason.
pub async fn process_batch(
    services: &Services,
    settings: &Settings,
    entries: &[StreamEntry],
) -> Result<BatchReport, BatchError> {
    match process_once(services, settings, entries).await {
        Err(error) if is_refused_write(&error) => {
            Box::pin(isolate(services, settings, entries, error)).await
        }
        done => done,
    }
}

async fn isolate(
    services: &Services,
    settings: &Settings,
    entries: &[StreamEntry],
    error: BatchError,
) -> Result<BatchReport, BatchError> {
    let mut by_study: BTreeMap<Option<(TenantId, Uid)>, Vec<StreamEntry>> = BTreeMap::new();
    for entry in entries {
        let study = event::parse(&entry.fields)
            .ok()
            .map(|e| (e.tenant, e.study));
        by_study.entry(study).or_default().push(entry.clone());
    }
    if by_study.len() == 1 {
        let reason = format!("redis refused the study's writes: {error}");
        tracing::error!(entries = entries.len(), %reason, "dead-lettering the entries of one study");
        let mut pipe = redis::pipe();
        for entry in entries {
            stream::add_dead_letter(&mut pipe, &settings.stream, entry, &reason);
            metrics::dead_lettered("redis_refused");
        }
        let mut con = services.redis.get().await?;
        // A dead-letter stream that refuses entries is a configuration fault: retried.
        pipe.query_async::<()>(&mut *con).await?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let acked = stream::ack(&mut *con, &settings.stream, &ids).await?;
        return Ok(BatchReport {
            entries: entries.len(),
            acked,
            dead_lettered: entries.len(),
            ..BatchReport::default()
        });
    }
    let mut report = BatchReport {
        entries: entries.len(),
        ..BatchReport::default()
    };
    for study_entries in by_study.values() {
        let part = process_batch(services, settings, study_entries).await?;
        report.acked += part.acked;
        report.dead_lettered += part.dead_lettered;
        report.studies_filled += part.studies_filled;
        report.studies_stale += part.studies_stale;
        report.studies_removed += part.studies_removed;
        report.studies_waiting += part.studies_waiting;
        report.queried_database |= part.queried_database;
    }
    Ok(report)
}

async fn process_once(
    services: &Services,
    settings: &Settings,
    entries: &[StreamEntry],
) -> Result<BatchReport, BatchError> {
    let started = Instant::now();
    let mut report = BatchReport {
        entries: entries.len(),
        ..BatchReport::default()
    };
    let mut pipe = redis::pipe();
    let mut ack_ids: Vec<&str> = Vec::with_capacity(entries.len());

    // Coalesce by study; in stream order, so the last event of a study decides.
    let mut studies: BTreeMap<(TenantId, Uid), StudyWork> = BTreeMap::new();
    for entry in entries {
        match event::parse(&entry.fields) {
            Ok(event) => {
                let work = studies
                    .entry((event.tenant, event.study))
                    .or_insert_with(|| StudyWork {
                        last_kind: event.kind,
                        entries: Vec::new(),
                        series: BTreeSet::new(),
                    });
                work.last_kind = event.kind;
                work.entries.push(entry);
                if let (EventKind::Stored, Some(series)) = (event.kind, event.series) {
                    work.series.insert(series);
                }
            }
            Err(reason) => {
                tracing::warn!(entry_id = %entry.id, %reason, "bad entry: dead-lettered");
                stream::add_dead_letter(&mut pipe, &settings.stream, entry, &reason.to_string());
                metrics::dead_lettered(reason.kind());
                ack_ids.push(&entry.id);
                report.dead_lettered += 1;
            }
        }
    }

    // Every study is read, deleted ones included: the database decides.
    let requests: Vec<(&TenantId, &Uid, EventKind)> = studies
        .iter()
        .map(|((tenant, study), work)| (tenant, study, work.last_kind))
        .collect();
    report.queried_database = !requests.is_empty();
    let plans = refresh::plan(&services.db, settings, &mut pipe, &requests, None).await?;

    let mut written_ids: Vec<&str> = Vec::new();
    let mut filled_studies = Vec::new();
    let mut removed_studies = Vec::new();
    for (((tenant, study_uid), work), plan) in studies.iter().zip(&plans) {
        match plan {
            Plan::Fill => {
                written_ids.extend(work.entries.iter().map(|e| e.id.as_str()));
                filled_studies.push((tenant.clone(), study_uid.clone()));
                // Durably scheduled in the same round trip, before the entries are acked.
                if let Some(schedule) = &services.schedule {
                    for series in &work.series {
                        schedule.add_pending(
                            &mut pipe,
                            &SeriesRef {
                                tenant: tenant.clone(),
                                study: study_uid.clone(),
                                series: series.clone(),
                            },
                        );
                    }
                }
            }
            Plan::Remove => {
                written_ids.extend(work.entries.iter().map(|e| e.id.as_str()));
                removed_studies.push((tenant, study_uid));
            }
            Plan::Missing => {
                report.studies_waiting += 1;
                // Its entries stay pending and are claimed again after claim_idle_ms;
                // those delivered max_deliveries times have had their chances.
                for entry in &work.entries {
                    if entry.deliveries >= settings.stream.max_deliveries {
                        let reason = format!(
                            "study not in the database after {} deliveries",
                            entry.deliveries
                        );
                        tracing::warn!(entry_id = %entry.id, %tenant, study_uid = %study_uid, %reason, "dead-lettered");
                        stream::add_dead_letter(&mut pipe, &settings.stream, entry, &reason);
                        metrics::dead_lettered("study_not_found");
                        ack_ids.push(&entry.id);
                        report.dead_lettered += 1;
                    }
                }
                tracing::debug!(%tenant, study_uid = %study_uid, entries = work.entries.len(),
                    "study not in the database yet: entries stay pending");
            }
        }
    }

    if let Some(json_root) = settings.series.json_root.as_deref() {
        for (tenant, study_uid) in removed_studies {
            remove_series_documents(&mut pipe, json_root, tenant, study_uid).await;
        }
    }

    let mut con = services.redis.get().await?;
    metrics::round_trip(RoundTrip::PoolCheck);
    let written = refresh::send(&mut *con, &pipe, &plans).await?;
    report.studies_filled = written.filled;
    report.studies_removed = written.removed;
    report.studies_stale = written.stale;
    ack_ids.extend(written_ids);
    services.rechecks.schedule(filled_studies);
    report.acked = stream::ack(&mut *con, &settings.stream, &ack_ids).await?;
    metrics::round_trip(RoundTrip::Ack);
    if report.acked != ack_ids.len() {
        // Another consumer claimed some of them, or they were acked already: harmless
        // under at-least-once, but worth seeing if it keeps happening.
        tracing::warn!(
            expected = ack_ids.len(),
            acked = report.acked,
            "XACK acknowledged fewer entries than sent"
        );
    }
    metrics::batch_done(&report, started.elapsed());
    tracing::info!(
        entries = report.entries,
        studies_filled = report.studies_filled,
        studies_stale = report.studies_stale,
        studies_removed = report.studies_removed,
        studies_waiting = report.studies_waiting,
        dead_lettered = report.dead_lettered,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch done"
    );
    Ok(report)
}

/// Removes a deleted study's series documents from disk and adds the removal of their
/// Redis copies to `pipe`. A file that cannot be removed is logged, not retried: the server
/// no longer lists the study, so the file is unreachable.
async fn remove_series_documents(
    pipe: &mut redis::Pipeline,
    json_root: &Path,
    tenant: &TenantId,
    study: &Uid,
) {
    let (root, owned_tenant, owned_study) = (json_root.to_owned(), tenant.clone(), study.clone());
    let removed = tokio::task::spawn_blocking(move || {
        series_builder::remove_study_documents(&root, &owned_tenant, &owned_study)
    })
    .await;
    match removed {
        Ok(Ok(series)) => {
            for series in series {
                pipe.cmd("DEL")
                    .arg(keys::series_metadata(tenant, &series))
                    .ignore();
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(%tenant, study_uid = %study, %error, "could not remove the study's series documents")
        }
        Err(error) => {
            tracing::warn!(%tenant, study_uid = %study, %error, "series document removal task failed")
        }
    }
}
