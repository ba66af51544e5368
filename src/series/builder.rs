//! Series documents: takes due series off the schedule, builds each under its lock from the
//! instance files (parsed in parallel on blocking threads), and publishes the document
//! atomically, only while the lock is still held. A build has a deadline; storage faults
//! and abandoned builds are retried with backoff, corrupt files recorded as failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db;
use crate::ids::Uid;
use crate::keys;
use crate::observe::{metrics, telemetry};
use crate::series::convert::document::{DocumentOptions, series_document};
use crate::series::convert::instance::read_instance;
use crate::series::files::{self, document_path};
use crate::series::lock::{LOCK_LEASE, SeriesLock};
use crate::series::rows::{self, JsonStatus, SeriesRow};
use crate::series::schedule::{Schedule, SeriesRef};

/// How often the schedule is looked at for due series.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// A claimed series is leased this long, renewed with the lock while its build runs.
const SCHEDULE_LEASE: Duration = Duration::from_secs(60);
/// When another worker (or the server) holds a series' lock, the series is skipped until
/// that lock's lease would end, but at least this long (and at most [`LOCK_LEASE`]).
const BUSY_RETRY: Duration = Duration::from_secs(2);
/// The shortest wait before a build that failed for a passing reason is tried again.
const RETRY_MIN: Duration = Duration::from_secs(5);
/// The longest wait before a build that failed for a passing reason is tried again.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Temporary documents older than this are left over (a crash, an abandoned write).
const STALE_TEMPORARY: Duration = Duration::from_secs(3_600);

/// Why a build produced no document; the series is recorded as failed and not retried
/// until a new event arrives.
#[derive(Debug, thiserror::Error)]
pub enum BuildFailure {
    /// The series' raw study date cannot be a path segment.
    #[error("study_date_origin {0:?} is not 8 digits")]
    BadStudyDate(String),
    /// A SOP Instance UID from the database is not a valid UID.
    #[error("sop_uid {0:?} is not a valid UID")]
    BadSopUid(String),
    /// Neither the database nor the series folder lists any instance.
    #[error("no instances in the database or in {0}")]
    NoInstances(PathBuf),
    /// An instance file is missing or cannot be parsed.
    #[error("{0}")]
    File(#[from] crate::series::convert::instance::InstanceFileError),
    /// The series folder cannot be listed.
    #[error("list {path}: {source}")]
    ListFolder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl BuildFailure {
    /// Whether the storage failed for a reason that may pass (the series is retried) rather
    /// than the file being missing or corrupt (recorded as failed): decided by the first
    /// I/O error among the causes; without one, the data is at fault.
    pub fn is_transient(&self) -> bool {
        std::iter::successors(Some(self as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .is_some_and(is_transient_io)
    }
}

/// Whether an I/O error met while reading instance files may pass. The file's own state is
/// not retried: missing (a listed file not written, or deleted: as before), not a regular
/// file (a folder in its place), or bytes that end early or do not parse. Anything else is
/// the storage's or the host's (EIO, ESTALE, EACCES and EPERM, EMFILE and ENFILE, ENOMEM,
/// timeouts, and errors without a kind of their own), and is retried with backoff.
fn is_transient_io(error: &std::io::Error) -> bool {
    use std::io::ErrorKind as Kind;
    !matches!(
        error.kind(),
        Kind::NotFound
            | Kind::IsADirectory
            | Kind::NotADirectory
            | Kind::UnexpectedEof
            | Kind::InvalidData
            | Kind::InvalidInput
            | Kind::InvalidFilename
    )
}

/// An infrastructure fault during a build: the series stays scheduled and is retried.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled Redis connection in time.
    #[error("redis pool: {0}")]
    RedisPool(#[from] deadpool_redis::PoolError),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    /// Writing the document failed (a full disk, permissions).
    #[error("write {path}: {source}")]
    Write {
        /// The document being written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A parsing thread panicked or was cancelled.
    #[error("parse task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An instance file or the series folder could not be read for a reason that may pass
    /// (EIO, ESTALE, EACCES, EMFILE, …): not recorded as failed.
    #[error("storage: {0}")]
    Storage(#[source] BuildFailure),
}

/// What became of one scheduled series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutcome {
    /// The document was published.
    Built {
        /// Instances in it.
        instances: usize,
        /// Its size in bytes.
        bytes: usize,
    },
    /// Another holder had the lock: tried again later.
    Busy,
    /// The series is not in the database (any more).
    Gone,
    /// No document could be built (reported, recorded as failed).
    Failed(String),
    /// The lock was lost during the build: nothing published, built again later.
    LockLost,
    /// The build ran past `series.build_timeout_ms` and was abandoned (lock released):
    /// retried later with backoff, not recorded as failed.
    TimedOut,
    /// The daemon stopped before the build finished: abandoned (lock released) and left
    /// due, for this or another replica.
    Stopped,
}

/// The metric label of a build interrupted by a Redis, PostgreSQL or storage fault, or by
/// the daemon stopping (retried later).
const INTERRUPTED: &str = "interrupted";

impl BuildOutcome {
    /// Every result of `dcw_series_builds_total`: the outcomes' labels and [`INTERRUPTED`].
    pub const LABELS: [&'static str; 7] = [
        "built",
        "lock_busy",
        "gone",
        "failed",
        "lock_lost",
        "timed_out",
        INTERRUPTED,
    ];

    /// The outcome's label in `dcw_series_builds_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Built { .. } => "built",
            Self::Busy => "lock_busy",
            Self::Gone => "gone",
            Self::Failed(_) => "failed",
            Self::LockLost => "lock_lost",
            Self::TimedOut => "timed_out",
            Self::Stopped => INTERRUPTED,
        }
    }
}

/// Builds series documents for one consumer group's schedule.
#[derive(Clone)]
pub struct Builder {
    settings: Arc<Settings>,
    db: PgPool,
    redis: deadpool_redis::Pool,
    schedule: Schedule,
    dicom_root: PathBuf,
    json_root: PathBuf,
    options: DocumentOptions,
    parse_slots: Arc<Semaphore>,
}

impl Builder {
    /// A builder, or `None` when series documents are off (no roots configured).
    pub fn new(settings: Arc<Settings>, db: PgPool, redis: deadpool_redis::Pool) -> Option<Self> {
        let (dicom_root, json_root) = settings.series.roots()?;
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        Some(Self {
            schedule: schedule_of(&settings),
            dicom_root: dicom_root.to_owned(),
            json_root: json_root.to_owned(),
            options: DocumentOptions {
                bulkdata_base_url: settings.series.bulkdata_base_url.clone(),
                inline_binary_max_bytes: settings.series.inline_binary_max_bytes,
            },
            parse_slots: Arc::new(Semaphore::new(threads)),
            settings,
            db,
            redis,
        })
    }

    /// Builds due series, at most `series.max_concurrent_builds` at once, until `cancel`
    /// fires; builds in hand then get half of `shutdown.grace_secs` to finish, and are
    /// abandoned after that (their locks released, their series left due).
    pub async fn run(self, cancel: CancellationToken) {
        self.sweep_temporaries(&cancel);
        let max = self.settings.series.max_concurrent_builds;
        let abandon = CancellationToken::new();
        let mut builds: JoinSet<()> = JoinSet::new();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        while !cancel.is_cancelled() {
            let free = max - builds.len();
            if free > 0 {
                match self.claim(free).await {
                    Ok(claimed) => {
                        for (series, lease) in claimed {
                            let (builder, abandon) = (self.clone(), abandon.clone());
                            builds.spawn(async move {
                                builder.build_logged(series, lease, &abandon).await;
                            });
                        }
                    }
                    Err(error) => tracing::debug!(%error, "series schedule unreachable"),
                }
            }
            tokio::select! {
                _ = poll.tick() => {}
                Some(_) = builds.join_next(), if !builds.is_empty() => {}
                () = cancel.cancelled() => {}
            }
        }
        // A build stuck in a read would otherwise hold the stop until its deadline (minutes):
        // the other half of the grace period is for releasing locks and the rest of the stop.
        let half_grace = tokio::time::sleep(self.settings.shutdown.grace() / 2);
        tokio::pin!(half_grace);
        loop {
            tokio::select! {
                joined = builds.join_next() => if joined.is_none() { break },
                () = &mut half_grace, if !abandon.is_cancelled() => abandon.cancel(),
            }
        }
    }

    /// Removes, in the background, the temporary documents a crash or an abandoned write
    /// left behind, older than [`STALE_TEMPORARY`].
    fn sweep_temporaries(&self, cancel: &CancellationToken) {
        let (json_root, cancel) = (self.json_root.clone(), cancel.clone());
        // Not awaited: a walk of a slow tree never holds up the builds or the stop.
        drop(tokio::task::spawn_blocking(move || {
            let removed =
                files::sweep_temporaries(&json_root, STALE_TEMPORARY, || !cancel.is_cancelled());
            if removed > 0 {
                tracing::info!(removed, "stale temporary series documents removed");
            }
        }));
    }

    async fn claim(&self, max: usize) -> Result<Vec<(SeriesRef, i64)>, BuildError> {
        let mut con = self.redis.get().await?;
        let leased = self
            .schedule
            .claim(&mut *con, max, millis(SCHEDULE_LEASE))
            .await?;
        Ok(leased
            .series
            .into_iter()
            .map(|s| (s, leased.lease))
            .collect())
    }

    async fn build_logged(&self, series: SeriesRef, lease: i64, abandon: &CancellationToken) {
        let started = Instant::now();
        match self.build(&series, lease, abandon).await {
            Ok(outcome) => {
                match outcome {
                    BuildOutcome::Built { instances, .. } => {
                        metrics::series_built(instances, started.elapsed());
                    }
                    BuildOutcome::TimedOut => {
                        tracing::warn!(tenant = %series.tenant, series_uid = %series.series,
                            timeout_ms = self.settings.series.build_timeout_ms,
                            "series build timed out (a read stuck on storage?): abandoned, its lock released, retried later");
                    }
                    BuildOutcome::Stopped => {
                        tracing::info!(tenant = %series.tenant, series_uid = %series.series,
                            "series build abandoned at shutdown: its lock released, it stays scheduled");
                    }
                    _ => {}
                }
                metrics::series_build(outcome.label());
            }
            Err(error) => {
                tracing::warn!(tenant = %series.tenant, series_uid = %series.series,
                    error = %telemetry::one_line(&error),
                    "series build interrupted: it stays scheduled and is retried later");
                metrics::series_build(INTERRUPTED);
            }
        }
    }

    /// Builds one leased series under its lock and takes it off the schedule when done; a
    /// series that could not be built for a passing reason is moved to a later retry.
    pub async fn build(
        &self,
        series: &SeriesRef,
        lease: i64,
        abandon: &CancellationToken,
    ) -> Result<BuildOutcome, BuildError> {
        let mut con = self.redis.get().await?;
        let Some(lock) = SeriesLock::acquire(&mut *con, &series.tenant, &series.series).await?
        else {
            // Another build (or the server's webworker) has it: skip the series until that
            // lease would end instead of asking again every couple of seconds.
            let held_for = SeriesLock::held_for(&mut *con, &series.tenant, &series.series).await?;
            let retry = held_for.map_or(BUSY_RETRY, |left| left.clamp(BUSY_RETRY, LOCK_LEASE));
            self.schedule
                .move_leased(&mut *con, series, lease, millis(retry))
                .await?;
            return Ok(BuildOutcome::Busy);
        };
        drop(con);
        // The lease in hand: renewed while the build runs, and the one completed or moved.
        let mut lease = lease;
        let outcome = self.build_locked(series, &mut lease, &lock, abandon).await;
        let mut con = self.redis.get().await?;
        let still_held = lock.release(&mut *con).await?;
        match outcome {
            Err(error) => {
                if let Err(retry_error) = self.retry_later(&mut *con, series, lease).await {
                    // Its lease runs out instead, and it is retried then.
                    tracing::debug!(error = %retry_error, "series retry not rescheduled");
                }
                Err(error)
            }
            Ok(BuildOutcome::TimedOut) => {
                self.retry_later(&mut *con, series, lease).await?;
                Ok(BuildOutcome::TimedOut)
            }
            Ok(BuildOutcome::Stopped) => {
                self.schedule
                    .move_leased(&mut *con, series, lease, 0)
                    .await?;
                Ok(BuildOutcome::Stopped)
            }
            Ok(outcome) if outcome == BuildOutcome::LockLost || !still_held => {
                tracing::warn!(tenant = %series.tenant, series_uid = %series.series, "series lock lost during the build");
                Ok(BuildOutcome::LockLost)
            }
            Ok(outcome) => {
                self.schedule.complete(&mut *con, series, lease).await?;
                Ok(outcome)
            }
        }
    }

    /// Moves a series that could not be built to a later retry, backing off.
    async fn retry_later<C: redis::aio::ConnectionLike>(
        &self,
        con: &mut C,
        series: &SeriesRef,
        lease: i64,
    ) -> redis::RedisResult<Option<i64>> {
        let jitter_permille = rand::rng().random_range(500..=1_000);
        self.schedule
            .retry_later(
                con,
                series,
                lease,
                (millis(RETRY_MIN), millis(RETRY_MAX)),
                jitter_permille,
            )
            .await
    }

    /// The build under its lock, abandoned past `series.build_timeout_ms` or when the
    /// daemon stops. Abandoning drops the build where it stands: a read stuck on storage
    /// keeps its blocking thread (and its parse slot) until it returns, but no longer the
    /// lock, the schedule lease or the stop.
    async fn build_locked(
        &self,
        series: &SeriesRef,
        lease: &mut i64,
        lock: &SeriesLock,
        abandon: &CancellationToken,
    ) -> Result<BuildOutcome, BuildError> {
        tokio::select! {
            outcome = self.build_renewing(series, lease, lock) => outcome,
            () = tokio::time::sleep(self.settings.series.build_timeout()) => Ok(BuildOutcome::TimedOut),
            () = abandon.cancelled() => Ok(BuildOutcome::Stopped),
        }
    }

    /// The build proper, renewing the lock and the schedule lease (`lease`, updated) while
    /// it runs.
    async fn build_renewing(
        &self,
        series: &SeriesRef,
        lease: &mut i64,
        lock: &SeriesLock,
    ) -> Result<BuildOutcome, BuildError> {
        let Some(row) = db::run(&self.settings.database, &self.db, async |con| {
            rows::series_row(con, &series.tenant, &series.study, &series.series).await
        })
        .await?
        else {
            return Ok(BuildOutcome::Gone);
        };
        let document = self.document(series, &row);
        tokio::pin!(document);
        let every = self.settings.series.lock_renew();
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let document = loop {
            tokio::select! {
                document = &mut document => break document?,
                _ = renew.tick() => {
                    let mut con = self.redis.get().await?;
                    if !lock.renew(&mut *con).await? {
                        return Ok(BuildOutcome::LockLost);
                    }
                    if let Some(renewed) = self.schedule.move_leased(&mut *con, series, *lease, millis(SCHEDULE_LEASE)).await? {
                        *lease = renewed;
                    }
                }
            }
        };
        match document {
            Ok((bytes, instances)) => self.publish(series, &row, lock, &bytes, instances).await,
            Err(failure) if failure.is_transient() => Err(BuildError::Storage(failure)),
            Err(failure) => {
                let failure = telemetry::one_line(&failure);
                tracing::warn!(tenant = %series.tenant, series_uid = %series.series, %failure, "series document not built");
                self.record(series, &row, JsonStatus::Failed).await?;
                Ok(BuildOutcome::Failed(failure))
            }
        }
    }

    /// Reads the instance files (in parallel, bounded) and joins them into the document.
    async fn document(
        &self,
        series: &SeriesRef,
        row: &SeriesRow,
    ) -> Result<Result<(Vec<u8>, usize), BuildFailure>, BuildError> {
        let date = &row.study_date_origin;
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Err(BuildFailure::BadStudyDate(date.clone())));
        }
        let folder = self
            .dicom_root
            .join(series.tenant.as_str())
            .join(date)
            .join(series.study.as_str())
            .join(series.series.as_str());
        let files = match self.instance_files(series, &folder).await? {
            Ok(files) => files,
            Err(failure) => return Ok(Err(failure)),
        };
        let mut parsing = JoinSet::new();
        for path in files {
            let slots = self.parse_slots.clone();
            let (study, series_uid, options) = (
                series.study.clone(),
                series.series.clone(),
                self.options.clone(),
            );
            parsing.spawn(async move {
                let slot = slots.acquire_owned().await;
                tokio::task::spawn_blocking(move || {
                    // The slot goes with the thread: a read stuck on storage keeps it after
                    // its build was abandoned, so stuck reads never outnumber the slots.
                    let _slot = slot;
                    read_instance(&path, study.as_str(), series_uid.as_str(), &options)
                })
                .await
            });
        }
        let mut instances = Vec::new();
        while let Some(parsed) = parsing.join_next().await {
            match parsed?? {
                Ok(instance) => instances.push(instance),
                Err(failure) => return Ok(Err(failure.into())),
            }
        }
        let count = instances.len();
        Ok(Ok((series_document(instances), count)))
    }

    /// The files of the instances the database lists, or every `.dcm` file of the folder
    /// when the database lists none.
    async fn instance_files(
        &self,
        series: &SeriesRef,
        folder: &Path,
    ) -> Result<Result<Vec<PathBuf>, BuildFailure>, BuildError> {
        let sops = db::run(&self.settings.database, &self.db, async |con| {
            rows::series_instances(con, &series.tenant, &series.study, &series.series).await
        })
        .await?;
        if !sops.is_empty() {
            let mut files = Vec::with_capacity(sops.len());
            for sop in sops {
                match Uid::parse(&sop) {
                    Ok(uid) => files.push(folder.join(format!("{uid}.dcm"))),
                    Err(_) => return Ok(Err(BuildFailure::BadSopUid(sop))),
                }
            }
            return Ok(Ok(files));
        }
        let listed = {
            let folder = folder.to_owned();
            tokio::task::spawn_blocking(move || files::list_dcm_files(&folder)).await?
        };
        Ok(match listed {
            Ok(files) if files.is_empty() => Err(BuildFailure::NoInstances(folder.to_owned())),
            Ok(files) => Ok(files),
            Err(source) => Err(BuildFailure::ListFolder {
                path: folder.to_owned(),
                source,
            }),
        })
    }

    /// Writes the document atomically where the server looks for it, while the lock is
    /// still held and the series still in the database; then the optional Redis copy and
    /// status row. The temporary file is removed on every path that does not rename it.
    async fn publish(
        &self,
        series: &SeriesRef,
        row: &SeriesRow,
        lock: &SeriesLock,
        bytes: &[u8],
        instances: usize,
    ) -> Result<BuildOutcome, BuildError> {
        let path = document_path(
            &self.json_root,
            &series.tenant,
            &row.study_date_origin,
            &series.study,
            &series.series,
        );
        let temporary = {
            let (target, bytes) = (path.clone(), bytes.to_vec());
            tokio::task::spawn_blocking(move || files::write_temporary(&target, &bytes))
                .await?
                .map_err(|source| BuildError::Write {
                    path: path.clone(),
                    source,
                })?
        };
        let placed = self.place(series, lock, &temporary, &path).await;
        if !matches!(placed, Ok(None)) {
            // Already gone when the rename happened and only the folder sync failed.
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(temporary)).await;
        }
        if let Some(unpublished) = placed? {
            return Ok(unpublished);
        }
        if self.settings.series.redis_copy {
            let key = keys::series_metadata(&series.tenant, &series.series);
            let mut con = self.redis.get().await?;
            lock.set_if_held(&mut *con, &key, bytes, self.settings.cache.study_ttl_secs)
                .await?;
        }
        self.record(series, row, JsonStatus::Built).await?;
        tracing::info!(tenant = %series.tenant, series_uid = %series.series, instances, bytes = bytes.len(), "series document published");
        Ok(BuildOutcome::Built {
            instances,
            bytes: bytes.len(),
        })
    }

    /// Renames the temporary file over the document after the last checks; `None` once
    /// renamed, or why it was not.
    async fn place(
        &self,
        series: &SeriesRef,
        lock: &SeriesLock,
        temporary: &Path,
        path: &Path,
    ) -> Result<Option<BuildOutcome>, BuildError> {
        // A study deleted while its files were read: publishing now would bring back a
        // document that its deleted event removed.
        let row = db::run(&self.settings.database, &self.db, async |con| {
            rows::series_row(con, &series.tenant, &series.study, &series.series).await
        })
        .await?;
        if row.is_none() {
            tracing::info!(tenant = %series.tenant, series_uid = %series.series, "series deleted during its build: nothing published");
            return Ok(Some(BuildOutcome::Gone));
        }
        let mut con = self.redis.get().await?;
        // The last check before the rename: a build whose lock expired, or was taken over or
        // deleted by the server, publishes nothing.
        if !lock.renew(&mut *con).await? {
            return Ok(Some(BuildOutcome::LockLost));
        }
        let (from, to) = (temporary.to_owned(), path.to_owned());
        tokio::task::spawn_blocking(move || files::commit(&from, &to))
            .await?
            .map_err(|source| BuildError::Write {
                path: path.to_owned(),
                source,
            })?;
        Ok(None)
    }

    async fn record(
        &self,
        series: &SeriesRef,
        row: &SeriesRow,
        status: JsonStatus,
    ) -> Result<(), BuildError> {
        if self.settings.series.record_status {
            db::run(&self.settings.database, &self.db, async |con| {
                rows::record_json_status(
                    con,
                    &series.tenant,
                    &series.study,
                    &series.series,
                    row,
                    status,
                )
                .await
            })
            .await?;
        }
        Ok(())
    }
}

/// A duration in whole milliseconds, as the schedule scripts take it.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The schedule of the configured consumer group.
pub fn schedule_of(settings: &Settings) -> Schedule {
    Schedule::new(
        &settings.stream.group,
        settings.series.quiet_ms,
        settings.series.max_delay_ms,
    )
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::series::convert::instance::InstanceFileError;

    /// Errno values as Linux numbers them.
    const ENOENT: i32 = 2;
    const EIO: i32 = 5;
    const EPERM: i32 = 1;
    const EACCES: i32 = 13;
    const ENOTDIR: i32 = 20;
    const EISDIR: i32 = 21;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ESTALE: i32 = 116;

    fn unreadable(source: io::Error) -> BuildFailure {
        BuildFailure::File(InstanceFileError::Unreadable {
            path: PathBuf::from("/dicom/t/20250807/1.2/1.2.3/1.2.3.4.dcm"),
            source,
        })
    }

    fn listing(source: io::Error) -> BuildFailure {
        BuildFailure::ListFolder {
            path: PathBuf::from("/dicom/t/20250807/1.2/1.2.3"),
            source,
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn storage_faults_are_retried_and_the_files_own_state_is_not() {
        for errno in [EIO, ESTALE, EACCES, EPERM, EMFILE, ENFILE] {
            let error = io::Error::from_raw_os_error(errno);
            // As the converter hands on a read error: its kind and text, no errno.
            let rebuilt = io::Error::new(error.kind(), error.to_string());
            assert!(unreadable(error).is_transient(), "errno {errno}");
            assert!(unreadable(rebuilt).is_transient(), "errno {errno} rebuilt");
            let error = io::Error::from_raw_os_error(errno);
            assert!(listing(error).is_transient(), "listing, errno {errno}");
        }
        for errno in [ENOENT, EISDIR, ENOTDIR] {
            let error = io::Error::from_raw_os_error(errno);
            let rebuilt = io::Error::new(error.kind(), error.to_string());
            assert!(!unreadable(error).is_transient(), "errno {errno}");
            assert!(!unreadable(rebuilt).is_transient(), "errno {errno} rebuilt");
            let error = io::Error::from_raw_os_error(errno);
            assert!(!listing(error).is_transient(), "listing, errno {errno}");
        }
    }

    #[test]
    fn missing_truncated_and_invalid_files_are_failures() {
        let missing = BuildFailure::File(InstanceFileError::Missing {
            path: PathBuf::from("/dicom/x.dcm"),
        });
        assert!(!missing.is_transient());
        let short = io::Error::new(io::ErrorKind::UnexpectedEof, "short");
        assert!(!unreadable(short).is_transient());
        for failure in [
            BuildFailure::BadStudyDate("2025".into()),
            BuildFailure::BadSopUid("x".into()),
            BuildFailure::NoInstances(PathBuf::from("/dicom")),
        ] {
            assert!(!failure.is_transient(), "{failure}");
        }
    }

    #[test]
    fn every_outcome_label_is_registered() {
        for outcome in [
            BuildOutcome::Built {
                instances: 1,
                bytes: 2,
            },
            BuildOutcome::Busy,
            BuildOutcome::Gone,
            BuildOutcome::Failed(String::new()),
            BuildOutcome::LockLost,
            BuildOutcome::TimedOut,
            BuildOutcome::Stopped,
        ] {
            assert!(
                BuildOutcome::LABELS.contains(&outcome.label()),
                "{outcome:?}"
            );
        }
        assert!(BuildOutcome::LABELS.contains(&"timed_out"));
    }
}
