//! The daemon's metrics, named in one place, and the Prometheus recorder.
//!
//! A leaf: callers pass plain values and label strings (their outcome types name their
//! own labels), so this module imports nothing from the crate.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 0.5 ms to 60 s (the default reclaim time).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Batch size buckets, in entries.
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 5_000.0];

/// Every histogram, registered (empty) from the start.
const HISTOGRAMS: [&str; 4] = [
    "dcw_batch_entries",
    "dcw_batch_duration_seconds",
    "dcw_db_query_duration_seconds",
    "dcw_series_build_duration_seconds",
];

/// A counter without labels.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// Stream entries read.
    EntriesRead,
    /// Stream entries acknowledged.
    EntriesAcked,
    /// Entries claimed from idle consumers.
    EntriesReclaimed,
    /// Idle consumers without pending entries deleted.
    ConsumersDeleted,
    /// Study keys written.
    StudiesFilled,
    /// Study fills refused because a newer snapshot was cached.
    StudiesStale,
    /// Study keys removed after a deleted event.
    StudiesRemoved,
    /// Studies not in the database yet (entries left pending).
    StudiesWaiting,
    /// Instances in published series documents.
    SeriesInstances,
    /// Binary values left out of series documents: over the inline limit, without a bulk
    /// data base URL.
    SeriesBinariesLeftOut,
    /// Sequences left out of series documents: nested too deep.
    SeriesSequencesTooDeep,
    /// PostgreSQL queries.
    DbQueries,
    /// Key sets fetched, checked and written.
    JwksRefreshes,
    /// Cached key sets given a full TTL again while the provider was down.
    JwksTtlExtensions,
    /// Outbox rows published to the stream and deleted.
    OutboxRowsRelayed,
}

impl Counter {
    const ALL: [Self; 15] = [
        Self::EntriesRead,
        Self::EntriesAcked,
        Self::EntriesReclaimed,
        Self::ConsumersDeleted,
        Self::StudiesFilled,
        Self::StudiesStale,
        Self::StudiesRemoved,
        Self::StudiesWaiting,
        Self::SeriesInstances,
        Self::SeriesBinariesLeftOut,
        Self::SeriesSequencesTooDeep,
        Self::DbQueries,
        Self::JwksRefreshes,
        Self::JwksTtlExtensions,
        Self::OutboxRowsRelayed,
    ];

    /// The metric's name and help text.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::EntriesRead => ("dcw_entries_read_total", "Stream entries read"),
            Self::EntriesAcked => ("dcw_entries_acked_total", "Stream entries acknowledged"),
            Self::EntriesReclaimed => (
                "dcw_entries_reclaimed_total",
                "Entries claimed from idle consumers",
            ),
            Self::ConsumersDeleted => (
                "dcw_consumers_deleted_total",
                "Idle consumers without pending entries deleted",
            ),
            Self::StudiesFilled => ("dcw_studies_filled_total", "Study keys written"),
            Self::StudiesStale => (
                "dcw_studies_stale_total",
                "Study fills refused because a newer snapshot was cached",
            ),
            Self::StudiesRemoved => (
                "dcw_studies_removed_total",
                "Study keys removed after a deleted event",
            ),
            Self::StudiesWaiting => (
                "dcw_studies_waiting_total",
                "Studies not in the database yet (entries left pending)",
            ),
            Self::SeriesInstances => (
                "dcw_series_instances_total",
                "Instances in published series documents",
            ),
            Self::SeriesBinariesLeftOut => (
                "dcw_series_binaries_left_out_total",
                "Binary values left out of series documents: over series.inline_binary_max_bytes without series.bulkdata_base_url",
            ),
            Self::SeriesSequencesTooDeep => (
                "dcw_series_sequences_too_deep_total",
                "Sequences left out of series documents: nested more than 64 levels deep",
            ),
            Self::DbQueries => ("dcw_db_queries_total", "PostgreSQL queries"),
            Self::JwksRefreshes => (
                "dcw_jwks_refreshes_total",
                "Identity provider key sets fetched, checked and written",
            ),
            Self::JwksTtlExtensions => (
                "dcw_jwks_ttl_extensions_total",
                "Cached key sets about to expire while the provider was down, given a full TTL again",
            ),
            Self::OutboxRowsRelayed => (
                "dcw_outbox_rows_relayed_total",
                "Outbox rows published to the ingest stream and deleted from dcw_ingest_outbox",
            ),
        }
    }
}

/// A Redis round trip the daemon makes.
#[derive(Debug, Clone, Copy)]
pub enum RoundTrip {
    /// XREADGROUP.
    Read,
    /// The health check deadpool makes when it hands out a pooled connection.
    PoolCheck,
    /// One pipeline of cache writes and dead letters.
    Write,
    /// XACK.
    Ack,
    /// One pipeline of XADDs relaying outbox rows.
    Publish,
}

impl RoundTrip {
    const ALL: [Self; 5] = [
        Self::Read,
        Self::PoolCheck,
        Self::Write,
        Self::Ack,
        Self::Publish,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::PoolCheck => "pool_check",
            Self::Write => "write",
            Self::Ack => "ack",
            Self::Publish => "publish",
        }
    }
}

/// What a second look at a filled study did.
#[derive(Debug, Clone, Copy)]
pub enum RecheckOutcome {
    /// A negative flag set after the fill was found and removed.
    FlagCleared,
    /// The study key no longer held what the daemon wrote: filled again.
    Refilled,
    /// Too many studies waiting: no second look.
    Skipped,
}

impl RecheckOutcome {
    const ALL: [Self; 3] = [Self::FlagCleared, Self::Refilled, Self::Skipped];

    fn label(self) -> &'static str {
        match self {
            Self::FlagCleared => "flag_cleared",
            Self::Refilled => "refilled",
            Self::Skipped => "skipped",
        }
    }
}

/// The process-wide recorder, installed on first use; `None` when another recorder was
/// installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match install() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// The current Prometheus text, with the process metrics read just now; `None` without a
/// recorder.
pub fn render() -> Option<String> {
    let handle = handle()?;
    process_collector().collect();
    Some(handle.render())
}

/// Exports a labelled counter at 0 for each of `values`, so that it exists before its
/// first event (idempotent).
pub fn register(
    name: &'static str,
    label: &'static str,
    values: impl IntoIterator<Item = &'static str>,
) {
    for value in values {
        counter!(name, label => value).increment(0);
    }
}

/// The standard process metrics (`process_resident_memory_bytes`, …), read on each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("dcw_batch_entries".into()), &SIZE_BUCKETS)?
        .install_recorder()?;
    describe_gauge!(
        "dcw_build_info",
        Unit::Count,
        "Always 1; the labels say which build runs"
    );
    gauge!("dcw_build_info", "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("DCW_GIT_COMMIT"))
        .set(1.0);
    process_collector().describe();
    register(
        "dcw_redis_round_trips_total",
        "op",
        RoundTrip::ALL.map(RoundTrip::label),
    );
    register(
        "dcw_rechecks_total",
        "outcome",
        RecheckOutcome::ALL.map(RecheckOutcome::label),
    );
    for counter in Counter::ALL {
        let (name, help) = counter.describe();
        describe_counter!(name, Unit::Count, help);
        // Exported at 0 from the start, so rates and alerts see it before its first event.
        counter!(name).absolute(0);
    }
    describe_counter!(
        "dcw_entries_dead_lettered_total",
        Unit::Count,
        "Entries moved to the dead-letter stream, by reason"
    );
    describe_counter!(
        "dcw_rechecks_total",
        Unit::Count,
        "Second looks at filled studies that found something to do, by outcome"
    );
    describe_counter!(
        "dcw_redis_round_trips_total",
        Unit::Count,
        "Redis round trips, by operation"
    );
    describe_counter!(
        "dcw_connection_errors_total",
        Unit::Count,
        "Failed calls, by service"
    );
    describe_gauge!(
        "dcw_stream_lag",
        Unit::Count,
        "Entries in the stream not yet delivered to the group"
    );
    describe_gauge!(
        "dcw_stream_pending",
        Unit::Count,
        "Entries delivered and not yet acknowledged"
    );
    describe_gauge!(
        "dcw_progress_stalled",
        Unit::Count,
        "1 while entries wait and none was acknowledged or dead-lettered for stream.stall_after_secs"
    );
    gauge!("dcw_progress_stalled").set(0.0);
    describe_gauge!(
        "dcw_dead_letter_length",
        Unit::Count,
        "Entries in the dead-letter stream"
    );
    describe_gauge!(
        "dcw_outbox_length",
        Unit::Count,
        "Rows waiting in dcw_ingest_outbox, as last counted"
    );
    describe_gauge!(
        "dcw_outbox_lag_seconds",
        Unit::Seconds,
        "Age of the oldest row waiting in dcw_ingest_outbox, as last measured (0 when empty)"
    );
    describe_counter!(
        "dcw_series_builds_total",
        Unit::Count,
        "Scheduled series handled, by result: built, failed, lock_busy (contention), lock_lost, gone, timed_out, interrupted"
    );
    describe_histogram!(
        "dcw_series_build_duration_seconds",
        Unit::Seconds,
        "Time to build and publish one series document"
    );
    describe_counter!(
        "dcw_jwks_refresh_failures_total",
        Unit::Count,
        "Key set refreshes that failed (the cached key set kept), by reason: timeout, network, status, too_large, invalid, private_key, redis"
    );
    describe_gauge!(
        "dcw_jwks_age_seconds",
        Unit::Seconds,
        "Time since the cached key set was fetched, as of the last refresh attempt"
    );
    describe_gauge!(
        "dcw_jwks_cached",
        Unit::Count,
        "1 while the identity provider's key set is cached (the server refuses every token without it); only with JWKS on"
    );
    describe_histogram!(
        "dcw_batch_entries",
        Unit::Count,
        "Entries per batch: entries gathered over one or more reads and coalesced by study"
    );
    describe_histogram!(
        "dcw_batch_duration_seconds",
        Unit::Seconds,
        "Time to process one batch, from its first study query to its last XACK"
    );
    describe_histogram!(
        "dcw_db_query_duration_seconds",
        Unit::Seconds,
        "Time of one PostgreSQL query"
    );
    for name in HISTOGRAMS {
        let _registered = histogram!(name);
    }
    Ok(handle)
}

/// Adds `count` to a counter without labels.
pub fn add(counter: Counter, count: usize) {
    counter!(counter.describe().0).increment(count as u64);
}

/// Counts one Redis round trip.
pub fn round_trip(kind: RoundTrip) {
    counter!("dcw_redis_round_trips_total", "op" => kind.label()).increment(1);
}

/// Records one PostgreSQL query and its duration.
pub fn db_query(elapsed: Duration) {
    add(Counter::DbQueries, 1);
    histogram!("dcw_db_query_duration_seconds").record(elapsed);
}

/// Counts one entry dead-lettered for `reason` (a short, bounded name).
pub fn dead_lettered(reason: &'static str) {
    counter!("dcw_entries_dead_lettered_total", "reason" => reason).increment(1);
}

/// Counts `count` second looks that came to `outcome`.
pub fn rechecked(outcome: RecheckOutcome, count: usize) {
    counter!("dcw_rechecks_total", "outcome" => outcome.label()).increment(count as u64);
}

/// Sets the group's pending count and lag (when the group exists) and the dead-letter
/// length, as last read.
pub fn stream_gauges(pending: Option<usize>, lag: Option<usize>, dead_letters: u64) {
    if let Some(pending) = pending {
        gauge!("dcw_stream_pending").set(pending as f64);
    }
    if let Some(lag) = lag {
        gauge!("dcw_stream_lag").set(lag as f64);
    }
    gauge!("dcw_dead_letter_length").set(dead_letters as f64);
}

/// Sets the rows waiting in the outbox and the age of the oldest, as last measured.
pub fn outbox_gauges(rows: u64, oldest: Duration) {
    gauge!("dcw_outbox_length").set(rows as f64);
    gauge!("dcw_outbox_lag_seconds").set(oldest.as_secs_f64());
}

/// Counts what became of one scheduled series (`result` is the outcome's label).
pub fn series_build(result: &'static str) {
    counter!("dcw_series_builds_total", "result" => result).increment(1);
}

/// Records a published series document: its instances and the time it took.
pub fn series_built(instances: usize, elapsed: Duration) {
    add(Counter::SeriesInstances, instances);
    histogram!("dcw_series_build_duration_seconds").record(elapsed);
}

/// Counts a failed call to `service` (its label).
pub fn connection_error(service: &'static str) {
    counter!("dcw_connection_errors_total", "service" => service).increment(1);
}

/// Records a batch's size and duration.
pub fn batch_done(entries: usize, elapsed: Duration) {
    histogram!("dcw_batch_entries").record(entries as f64);
    histogram!("dcw_batch_duration_seconds").record(elapsed);
}

/// Sets whether entries wait and none was done for `stream.stall_after_secs`.
pub fn progress_stalled(stalled: bool) {
    gauge!("dcw_progress_stalled").set(if stalled { 1.0 } else { 0.0 });
}

/// Counts a failed key set refresh for `reason` (a short, bounded name).
pub fn jwks_refresh_failed(reason: &'static str) {
    counter!("dcw_jwks_refresh_failures_total", "reason" => reason).increment(1);
}

/// Sets whether a key set is cached (only exported with JWKS on).
pub fn jwks_cached(cached: bool) {
    gauge!("dcw_jwks_cached").set(if cached { 1.0 } else { 0.0 });
}

/// Sets the age of the cached key set.
pub fn jwks_age(age: Duration) {
    gauge!("dcw_jwks_age_seconds").set(age.as_secs_f64());
}
