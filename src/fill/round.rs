//! A window of stream entries, coalesced by study, through the steps: read the database
//! once per round of studies, write the cache in one round trip, acknowledge in one XACK.

use std::ops::AddAssign;
use std::path::Path;
use std::time::Duration;

use redis::RedisError;
use sqlx::PgPool;

use crate::config::Settings;
use crate::fill::recheck::Rechecks;
use crate::fill::refresh::{self, Plan, Request};
use crate::ids::{TenantId, Uid};
use crate::ingest::entry::{Delivered, EntryId, StreamEntry};
use crate::ingest::event::{self, EventError};
use crate::ingest::stream;
use crate::ingest::window::{Study, Window};
use crate::keys;
use crate::observe::health::Service;
use crate::observe::metrics::{self, Counter, RoundTrip};
use crate::series::files;
use crate::series::schedule::{Schedule, SeriesRef};

/// The dead-letter reason of a study whose key Redis refused to write.
const REDIS_REFUSED: &str = "redis_refused";
/// The dead-letter reason of an entry whose study never appeared in the database.
const STUDY_NOT_FOUND: &str = "study_not_found";
/// The dead-letter reason of an entry whose series never appeared among its study's rows.
const SERIES_NOT_FOUND: &str = "series_not_found";

/// Every reason an entry is dead-lettered for: bad input, or what became of its study.
pub fn dead_letter_reasons() -> impl Iterator<Item = &'static str> {
    EventError::KINDS
        .into_iter()
        .chain([REDIS_REFUSED, STUDY_NOT_FOUND, SERIES_NOT_FOUND])
}

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

impl BatchReport {
    /// Adds what the batch did to the metrics.
    pub fn record(&self, elapsed: Duration) {
        metrics::add(Counter::EntriesAcked, self.acked);
        metrics::add(Counter::StudiesFilled, self.studies_filled);
        metrics::add(Counter::StudiesStale, self.studies_stale);
        metrics::add(Counter::StudiesRemoved, self.studies_removed);
        metrics::add(Counter::StudiesWaiting, self.studies_waiting);
        metrics::batch_done(self.entries, elapsed);
    }
}

impl AddAssign for BatchReport {
    fn add_assign(&mut self, other: Self) {
        self.entries += other.entries;
        self.acked += other.acked;
        self.dead_lettered += other.dead_lettered;
        self.studies_filled += other.studies_filled;
        self.studies_stale += other.studies_stale;
        self.studies_removed += other.studies_removed;
        self.studies_waiting += other.studies_waiting;
        self.queried_database |= other.queried_database;
    }
}

/// An infrastructure fault: the batch is left pending and retried. Its text leaves the
/// service to [`BatchError::service`].
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Redis failed or timed out.
    #[error("{0}")]
    Redis(#[from] RedisError),
    /// No pooled Redis connection could be had in time.
    #[error("no pooled connection: {0}")]
    RedisPool(#[from] deadpool_redis::PoolError),
    /// PostgreSQL failed or timed out.
    #[error("{0}")]
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

/// True when Redis answered but refused a write for a reason of the data itself: a key of
/// the wrong type (`WRONGTYPE`, kept by Redis inside scripts too), which retrying would
/// meet forever. Anything else — `NOPERM` and the `ERR` that Redis 7.0 gives a script for an
/// ACL denial, `NOSCRIPT`, `READONLY`, `OOM`, `MISCONF`, `LOADING`, `BUSY`, `CLUSTERDOWN` … —
/// is a fault of the infrastructure or its configuration that an operator fixes: retried.
fn is_refused_write(error: &BatchError) -> bool {
    let BatchError::Redis(error) = error else {
        return false;
    };
    // A pipeline's error carries the refusals of its commands.
    error.clone().into_server_errors().is_some_and(|refusals| {
        !refusals.is_empty()
            && refusals
                .iter()
                .all(|(_, refusal)| refusal.code() == "WRONGTYPE")
    })
}

/// Studies filled per round: one query, one write round trip and one XACK.
const STUDIES_PER_ROUND: usize = 100;
/// Entries acknowledged per round, which bounds a round's memory when studies are large.
const ENTRIES_PER_ROUND: usize = 20_000;

/// Processes the window's next step: its bad entries, dead-lettered, or else its next round
/// of studies. Entries are acknowledged only once every write they caused has succeeded;
/// an infrastructure error leaves the step's entries pending, and processed studies leave
/// the window, so a retry resumes where it stopped. Call until the window is empty.
///
/// When Redis refuses a write, the round is split by study to find the study at fault;
/// that study's entries go to the dead-letter stream with Redis' reason.
pub async fn process_step(
    services: &Services,
    settings: &Settings,
    window: &mut Window,
) -> Result<BatchReport, BatchError> {
    if !window.bad().is_empty() {
        let bad: Vec<DeadLetter> = window
            .bad()
            .iter()
            .map(|bad| {
                tracing::warn!(entry_id = %bad.entry.id, reason = %bad.reason, "bad entry: dead-lettered");
                DeadLetter {
                    entry: &bad.entry,
                    reason: bad.reason.to_string(),
                    kind: bad.reason.kind(),
                }
            })
            .collect();
        let report = dead_letter(services, settings, &bad).await?;
        window.bad_done();
        return Ok(report);
    }
    let round = window.front(STUDIES_PER_ROUND, ENTRIES_PER_ROUND);
    let studies = round.len();
    let report = process_round(services, settings, &round).await?;
    drop(round);
    window.done(studies);
    Ok(report)
}

async fn process_round(
    services: &Services,
    settings: &Settings,
    studies: &[Study<'_>],
) -> Result<BatchReport, BatchError> {
    match fill_round(services, settings, studies).await {
        Err(error) if is_refused_write(&error) => {
            Box::pin(isolate(services, settings, studies, error)).await
        }
        done => done,
    }
}

async fn isolate(
    services: &Services,
    settings: &Settings,
    studies: &[Study<'_>],
    error: BatchError,
) -> Result<BatchReport, BatchError> {
    let [study] = studies else {
        let mut report = BatchReport::default();
        for study in studies {
            report += process_round(services, settings, std::slice::from_ref(study)).await?;
        }
        return Ok(report);
    };
    let reason = format!("redis refused the study's writes: {error}");
    let (tenant, study_uid) = study.key;
    tracing::error!(entries = study.entries.len(), %tenant, study_uid = %study_uid, %reason,
        "dead-lettering the entries of one study");
    let mut con = services.redis.get().await?;
    let entries = stream::read_by_id(&mut *con, &settings.stream, &study.entries).await?;
    drop(con);
    let dead: Vec<DeadLetter> = entries
        .iter()
        .map(|entry| DeadLetter {
            entry,
            reason: reason.clone(),
            kind: REDIS_REFUSED,
        })
        .collect();
    dead_letter(services, settings, &dead).await
}

/// An entry on its way to the dead-letter stream.
struct DeadLetter<'a> {
    entry: &'a StreamEntry,
    reason: String,
    /// The metric label.
    kind: &'static str,
}

/// Adds the entries to the dead-letter stream in one round trip, then acknowledges them.
async fn dead_letter(
    services: &Services,
    settings: &Settings,
    dead: &[DeadLetter<'_>],
) -> Result<BatchReport, BatchError> {
    let mut pipe = redis::pipe();
    for letter in dead {
        stream::add_dead_letter(&mut pipe, &settings.stream, letter.entry, &letter.reason);
        metrics::dead_lettered(letter.kind);
    }
    let mut con = services.redis.get().await?;
    // A dead-letter stream that refuses entries is a configuration fault: retried.
    pipe.query_async::<()>(&mut *con).await?;
    metrics::round_trip(RoundTrip::Write);
    let ids: Vec<EntryId> = dead.iter().map(|letter| letter.entry.id).collect();
    let acked = stream::ack(&mut *con, &settings.stream, &ids).await?;
    metrics::round_trip(RoundTrip::Ack);
    Ok(BatchReport {
        entries: dead.len(),
        acked,
        dead_lettered: dead.len(),
        ..BatchReport::default()
    })
}

/// One round: reads the studies in one query, writes them in one round trip, then
/// acknowledges their entries in one XACK.
async fn fill_round(
    services: &Services,
    settings: &Settings,
    studies: &[Study<'_>],
) -> Result<BatchReport, BatchError> {
    let mut report = BatchReport {
        entries: studies.iter().map(|study| study.entries.len()).sum(),
        queried_database: true,
        ..BatchReport::default()
    };
    let mut pipe = redis::pipe();

    // Every study is read, deleted ones included: the database decides.
    let requests: Vec<Request> = studies
        .iter()
        .map(|study| (&study.key.0, &study.key.1, study.kind, study.series))
        .collect();
    let plans = refresh::plan(&services.db, settings, &mut pipe, &requests, None).await?;

    let mut ack_ids: Vec<EntryId> = Vec::with_capacity(report.entries);
    // Entries still waiting after max_deliveries, with what they wait for.
    let mut exhausted: Vec<(Delivered, &[Uid])> = Vec::new();
    let mut filled_studies = Vec::new();
    let mut removed_studies = Vec::new();
    for (work, plan) in studies.iter().zip(&plans) {
        let (tenant, study_uid) = work.key;
        // What the study's entries still wait for: nothing, the study, or named series.
        let waiting: Option<&[Uid]> = match plan {
            Plan::Fill { missing } => {
                filled_studies.push((tenant.clone(), study_uid.clone()));
                // Durably scheduled in the same round trip, before the entries are acked.
                if let Some(schedule) = &services.schedule {
                    for series in work.series.iter().filter(|s| !missing.contains(s)) {
                        let series = SeriesRef {
                            tenant: tenant.clone(),
                            study: study_uid.clone(),
                            series: series.clone(),
                        };
                        schedule.add_pending(&mut pipe, &series);
                    }
                }
                (!missing.is_empty()).then_some(missing.as_slice())
            }
            Plan::Remove => {
                // Acknowledged once its documents are gone too.
                removed_studies.push(work);
                continue;
            }
            Plan::Missing => Some(&[]),
        };
        let Some(missing) = waiting else {
            ack_ids.extend(work.entries.iter().map(|entry| entry.id));
            continue;
        };
        report.studies_waiting += 1;
        // Its entries stay pending and are claimed again after claim_idle_ms; those
        // delivered max_deliveries times have had their chances.
        exhausted.extend(
            work.entries
                .iter()
                .filter(|entry| entry.deliveries >= settings.stream.max_deliveries)
                .map(|entry| (*entry, missing)),
        );
        tracing::debug!(%tenant, study_uid = %study_uid, entries = work.entries.len(),
            missing_series = missing.len(), "not in the database yet: entries stay pending");
    }

    for work in removed_studies {
        if let Some(json_root) = settings.series.json_root.as_deref() {
            let (tenant, study_uid) = work.key;
            if !remove_series_documents(&mut pipe, json_root, tenant, study_uid).await {
                continue;
            }
        }
        ack_ids.extend(work.entries.iter().map(|entry| entry.id));
    }

    let mut con = services.redis.get().await?;
    metrics::round_trip(RoundTrip::PoolCheck);
    if !exhausted.is_empty() {
        let ids: Vec<Delivered> = exhausted.iter().map(|(entry, _)| *entry).collect();
        let entries = stream::read_by_id(&mut *con, &settings.stream, &ids).await?;
        for (entry, (_, missing)) in entries.iter().zip(&exhausted) {
            let Some((reason, kind)) = still_waiting(entry, missing) else {
                // It named a series that is there now: done, like its study.
                ack_ids.push(entry.id);
                continue;
            };
            let reason = format!("{reason} after {} deliveries", entry.deliveries);
            tracing::warn!(entry_id = %entry.id, %reason, "dead-lettered");
            stream::add_dead_letter(&mut pipe, &settings.stream, entry, &reason);
            metrics::dead_lettered(kind);
            ack_ids.push(entry.id);
            report.dead_lettered += 1;
        }
    }
    let written = refresh::send(&mut *con, &pipe, &plans).await?;
    report.studies_filled = written.filled;
    report.studies_removed = written.removed;
    report.studies_stale = written.stale;
    services.rechecks.schedule(filled_studies);
    // In stream order: Redis takes them out of its pending list several times faster.
    ack_ids.sort_unstable();
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
    Ok(report)
}

/// Why an entry delivered `max_deliveries` times is still not done, with its dead-letter
/// reason's label; `None` when it is done after all. `missing` are the named series its
/// study still lacks (none when the study itself has no rows).
fn still_waiting(entry: &StreamEntry, missing: &[Uid]) -> Option<(String, &'static str)> {
    if missing.is_empty() {
        return Some(("study not in the database".into(), STUDY_NOT_FOUND));
    }
    let series = event::parse(&entry.fields).ok()?.series?;
    missing.contains(&series).then(|| {
        (
            format!("series {series} not in the database"),
            SERIES_NOT_FOUND,
        )
    })
}

/// Removes a deleted study's series documents from disk and adds the removal of their
/// Redis copies to `pipe` (those of the documents removed so far, even when a later one
/// fails). Returns false when a document could not be removed: the study's entries then
/// stay pending and the removal is tried again when they are claimed back.
async fn remove_series_documents(
    pipe: &mut redis::Pipeline,
    json_root: &Path,
    tenant: &TenantId,
    study: &Uid,
) -> bool {
    let (root, owned_tenant, owned_study) = (json_root.to_owned(), tenant.clone(), study.clone());
    let (removed, error) = tokio::task::spawn_blocking(move || {
        let mut removed = Vec::new();
        let result =
            files::remove_study_documents(&root, &owned_tenant, &owned_study, &mut removed);
        (removed, result.err())
    })
    .await
    .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()));
    for series in removed {
        pipe.cmd("DEL")
            .arg(keys::series_metadata(tenant, &series))
            .ignore();
    }
    if let Some(error) = error {
        tracing::warn!(%tenant, study_uid = %study, %error,
            "could not remove the study's series documents: its entries stay pending");
        return false;
    }
    true
}
