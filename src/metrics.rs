//! The daemon's metrics, named in one place, and the Prometheus recorder.

use std::time::Duration;

use std::sync::OnceLock;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::health::Service;
use crate::pipeline::BatchReport;
use crate::series_builder::BuildOutcome;
use crate::stream::Backlog;

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch size buckets, in entries.
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 5_000.0];

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
}

/// What a negative-flag recheck did.
#[derive(Debug, Clone, Copy)]
pub enum RecheckOutcome {
    /// A flag set after the fill was found and removed.
    Cleared,
    /// The queue was full: no second look for that batch.
    Skipped,
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

fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("dcw_batch_entries".into()), &SIZE_BUCKETS)?
        .install_recorder()?;
    describe_counter!("dcw_entries_read_total", Unit::Count, "Stream entries read");
    describe_counter!(
        "dcw_entries_acked_total",
        Unit::Count,
        "Stream entries acknowledged"
    );
    describe_counter!(
        "dcw_entries_dead_lettered_total",
        Unit::Count,
        "Entries moved to the dead-letter stream, by reason"
    );
    describe_counter!(
        "dcw_studies_filled_total",
        Unit::Count,
        "Study keys written"
    );
    describe_counter!(
        "dcw_studies_stale_total",
        Unit::Count,
        "Study fills refused because a newer snapshot was cached"
    );
    describe_counter!(
        "dcw_studies_removed_total",
        Unit::Count,
        "Study keys removed after a deleted event"
    );
    describe_counter!(
        "dcw_studies_waiting_total",
        Unit::Count,
        "Studies not in the database yet (entries left pending)"
    );
    describe_counter!(
        "dcw_entries_reclaimed_total",
        Unit::Count,
        "Entries claimed from idle consumers"
    );
    describe_counter!(
        "dcw_consumers_deleted_total",
        Unit::Count,
        "Idle consumers without pending entries deleted"
    );
    describe_counter!(
        "dcw_negative_rechecks_total",
        Unit::Count,
        "Negative-flag second looks, by outcome"
    );
    describe_counter!("dcw_db_queries_total", Unit::Count, "PostgreSQL queries");
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
        "dcw_dead_letter_length",
        Unit::Count,
        "Entries in the dead-letter stream"
    );
    describe_counter!(
        "dcw_series_builds_total",
        Unit::Count,
        "Scheduled series handled, by result: built, failed, lock_busy (contention), lock_lost, gone, interrupted"
    );
    describe_counter!(
        "dcw_series_instances_total",
        Unit::Count,
        "Instances in published series documents"
    );
    describe_histogram!(
        "dcw_series_build_duration_seconds",
        Unit::Seconds,
        "Time to build and publish one series document"
    );
    describe_counter!(
        "dcw_jwks_refreshes_total",
        Unit::Count,
        "Identity provider key sets fetched, checked and written"
    );
    describe_counter!(
        "dcw_jwks_refresh_failures_total",
        Unit::Count,
        "Key set refreshes that failed (the cached key set kept), by reason: timeout, network, status, too_large, invalid, private_key, redis"
    );
    describe_counter!(
        "dcw_jwks_ttl_extensions_total",
        Unit::Count,
        "Cached key sets about to expire while the provider was down, given a full TTL again"
    );
    describe_gauge!(
        "dcw_jwks_age_seconds",
        Unit::Seconds,
        "Time since the cached key set was fetched, as of the last refresh attempt"
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
    Ok(handle)
}

/// Counts one Redis round trip.
pub fn round_trip(kind: RoundTrip) {
    let op = match kind {
        RoundTrip::Read => "read",
        RoundTrip::PoolCheck => "pool_check",
        RoundTrip::Write => "write",
        RoundTrip::Ack => "ack",
    };
    counter!("dcw_redis_round_trips_total", "op" => op).increment(1);
}

/// Records one PostgreSQL query and its duration.
pub fn db_query(elapsed: Duration) {
    counter!("dcw_db_queries_total").increment(1);
    histogram!("dcw_db_query_duration_seconds").record(elapsed);
}

/// Counts one entry dead-lettered for `reason` (a short, bounded name).
pub fn dead_lettered(reason: &'static str) {
    counter!("dcw_entries_dead_lettered_total", "reason" => reason).increment(1);
}

/// Counts a negative-flag recheck outcome.
pub fn negative_recheck(outcome: RecheckOutcome) {
    let outcome = match outcome {
        RecheckOutcome::Cleared => "cleared",
        RecheckOutcome::Skipped => "skipped",
    };
    counter!("dcw_negative_rechecks_total", "outcome" => outcome).increment(1);
}

/// Counts entries claimed from idle consumers.
pub fn entries_reclaimed(count: usize) {
    counter!("dcw_entries_reclaimed_total").increment(count as u64);
}

/// Counts idle consumers deleted.
pub fn consumers_deleted(count: usize) {
    counter!("dcw_consumers_deleted_total").increment(count as u64);
}

/// Sets the group's lag, pending count and dead-letter length, as last read.
pub fn stream_gauges(backlog: Option<Backlog>, dead_letters: u64) {
    if let Some(backlog) = backlog {
        gauge!("dcw_stream_pending").set(backlog.pending as f64);
        if let Some(lag) = backlog.lag {
            gauge!("dcw_stream_lag").set(lag as f64);
        }
    }
    gauge!("dcw_dead_letter_length").set(dead_letters as f64);
}

/// Records what became of one scheduled series.
pub fn series_build(outcome: &BuildOutcome, elapsed: Duration) {
    let result = match outcome {
        BuildOutcome::Built { instances, .. } => {
            counter!("dcw_series_instances_total").increment(*instances as u64);
            histogram!("dcw_series_build_duration_seconds").record(elapsed);
            "built"
        }
        BuildOutcome::Busy => "lock_busy",
        BuildOutcome::Gone => "gone",
        BuildOutcome::Failed(_) => "failed",
        BuildOutcome::LockLost => "lock_lost",
    };
    counter!("dcw_series_builds_total", "result" => result).increment(1);
}

/// Counts a series build interrupted by a Redis or PostgreSQL fault (retried later).
pub fn series_build_interrupted() {
    counter!("dcw_series_builds_total", "result" => "interrupted").increment(1);
}

/// Counts a failed call to `service`.
pub fn connection_error(service: Service) {
    counter!("dcw_connection_errors_total", "service" => service.to_string()).increment(1);
}

/// Counts entries read from the stream.
pub fn entries_read(count: usize) {
    counter!("dcw_entries_read_total").increment(count as u64);
}

/// Records what a batch did.
pub fn batch_done(report: &BatchReport, elapsed: Duration) {
    counter!("dcw_entries_acked_total").increment(report.acked as u64);
    counter!("dcw_studies_filled_total").increment(report.studies_filled as u64);
    counter!("dcw_studies_stale_total").increment(report.studies_stale as u64);
    counter!("dcw_studies_removed_total").increment(report.studies_removed as u64);
    counter!("dcw_studies_waiting_total").increment(report.studies_waiting as u64);
    histogram!("dcw_batch_entries").record(report.entries as f64);
    histogram!("dcw_batch_duration_seconds").record(elapsed);
}

/// Counts a key set written after a successful fetch.
pub fn jwks_refreshed() {
    counter!("dcw_jwks_refreshes_total").increment(1);
}

/// Counts a failed key set refresh for `reason` (a short, bounded name).
pub fn jwks_refresh_failed(reason: &'static str) {
    counter!("dcw_jwks_refresh_failures_total", "reason" => reason).increment(1);
}

/// Counts a cached key set whose TTL was extended while the provider was down.
pub fn jwks_ttl_extended() {
    counter!("dcw_jwks_ttl_extensions_total").increment(1);
}

/// Sets the age of the cached key set.
pub fn jwks_age(age: Duration) {
    gauge!("dcw_jwks_age_seconds").set(age.as_secs_f64());
}
