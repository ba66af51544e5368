//! The main loop: reclaims idle entries and reads new ones, window after window, and
//! processes each window until it is done, until cancelled or, in drain mode, until the
//! stream has nothing new.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::fill::round::{self, BatchError, BatchReport, Services};
use crate::ingest::reader::Reader;
use crate::ingest::stream;
use crate::ingest::window::Window;
use crate::observe::health::{Health, Service, Step};
use crate::observe::metrics::{self, Counter};

/// The cursor that starts (and, returned, ends) a scan of the pending list.
const CURSOR_START: &str = "0-0";

/// When the main loop returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// When the daemon is cancelled.
    Cancelled,
    /// Also once a read finds nothing new and the window in hand is done (for tests and
    /// one-off catch-ups); entries still waiting for their study stay pending.
    Drained,
}

/// Reads, reclaims and processes entries until `cancel` fires (or the stream is drained,
/// with [`Until::Drained`]), then finishes the window in hand and returns.
///
/// Unreachable services never end it: it backs off and retries, leaving entries pending.
pub async fn run(
    services: &Services,
    settings: &Settings,
    health: &Health,
    cancel: &CancellationToken,
    until: Until,
) {
    let mut reader = Reader::new(&settings.stream);
    let mut backoff = Backoff::default();
    // Entries left by a crashed or stopped consumer are looked for at once, then regularly.
    let mut next_claim = Instant::now();
    tracing::info!(
        stream = %settings.stream.key,
        group = %settings.stream.group,
        consumer = %settings.stream.consumer,
        "warming caches from the ingest stream"
    );
    while !cancel.is_cancelled() {
        health.beat();
        if Instant::now() >= next_claim {
            next_claim = Instant::now() + settings.stream.claim_interval();
            if let Err(error) = reclaim(services, settings, health, cancel).await {
                health.work_failed(Step::Reclaim, error.service(), &error);
            } else {
                health.work_ok(Step::Reclaim);
            }
        }
        let mut window = Window::default();
        let read = reader.gather(settings, health, cancel, &mut window).await;
        match &read {
            Ok(()) => {
                health.up(Service::Redis);
                health.work_ok(Step::Read);
                backoff.reset();
            }
            Err(error) => health.work_failed(Step::Read, Service::Redis, error),
        }
        if read.is_ok() && window.is_empty() && until == Until::Drained {
            tracing::info!("stream drained: stopping");
            return;
        }
        // Entries read before a failed read are this consumer's: processed all the same.
        if !window.is_empty() {
            process_until_done(services, settings, health, &mut window, cancel).await;
        }
        if read.is_err() {
            backoff.wait(cancel).await;
        }
    }
}

/// Once `fresh_until` has passed, resets the idle time of the window's entries (no delivery
/// counted) and sets the next time, a third of `claim_idle_ms` on.
async fn keep_fresh(
    services: &Services,
    settings: &Settings,
    window: &Window,
    fresh_until: &mut Instant,
) {
    if Instant::now() < *fresh_until {
        return;
    }
    *fresh_until = Instant::now() + settings.stream.claim_idle() / 3;
    let kept = async {
        let mut con = services.redis.get().await?;
        stream::keep_in_hand(&mut *con, &settings.stream, window.ids()).await?;
        Ok::<(), BatchError>(())
    };
    if let Err(error) = kept.await {
        tracing::debug!(%error, "could not keep the entries in hand fresh");
    }
}

/// Claims and processes the group's idle entries, page by page, then deletes consumers
/// that are gone and own nothing.
async fn reclaim(
    services: &Services,
    settings: &Settings,
    health: &Health,
    cancel: &CancellationToken,
) -> Result<(), BatchError> {
    let mut cursor = CURSOR_START.to_owned();
    loop {
        health.beat();
        let claimed = {
            let mut con = services.redis.get().await?;
            match stream::claim_idle(&mut *con, &settings.stream, &cursor).await {
                // The group is created by the first read: nothing to claim yet.
                Err(error) if stream::is_missing_group(&error) => return Ok(()),
                claimed => claimed?,
            }
        };
        if claimed.deleted > 0 {
            tracing::warn!(
                entries = claimed.deleted,
                "pending entries no longer in the stream (trimmed): dropped by Redis"
            );
        }
        if !claimed.entries.is_empty() {
            tracing::info!(entries = claimed.entries.len(), "reclaimed idle entries");
            metrics::add(Counter::EntriesReclaimed, claimed.entries.len());
            let mut window = Window::default();
            for entry in claimed.entries {
                window.add(entry);
            }
            process_until_done(services, settings, health, &mut window, cancel).await;
        }
        if claimed.next_cursor == CURSOR_START || cancel.is_cancelled() {
            break;
        }
        cursor = claimed.next_cursor;
    }
    let mut con = services.redis.get().await?;
    let deleted = stream::delete_idle_consumers(
        &mut *con,
        &settings.stream,
        settings.stream.stale_consumer_ms,
    )
    .await?;
    if deleted > 0 {
        tracing::info!(
            consumers = deleted,
            "deleted idle consumers that owned no entries"
        );
        metrics::add(Counter::ConsumersDeleted, deleted);
    }
    Ok(())
}

/// Processes a window, retrying infrastructure faults with backoff until it is done or
/// the daemon is stopping (its entries then stay pending for a later claim). Entries in
/// hand are claimed again every `claim_idle_ms / 3`, between steps and while a retry backs
/// off, so that a long window is not taken over by another consumer.
async fn process_until_done(
    services: &Services,
    settings: &Settings,
    health: &Health,
    window: &mut Window,
    cancel: &CancellationToken,
) {
    let started = Instant::now();
    let mut report = BatchReport::default();
    let mut backoff = Backoff::default();
    let mut fresh_until = started + settings.stream.claim_idle() / 3;
    let mut stopping_since = None;
    while !window.is_empty() {
        health.beat();
        if cancel.is_cancelled() {
            // Half the grace to finish the window; what is left stays pending, for another
            // consumer to claim.
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= settings.shutdown.grace() / 2 {
                break;
            }
        }
        keep_fresh(services, settings, window, &mut fresh_until).await;
        match round::process_step(services, settings, window).await {
            Ok(step) => {
                health.up(Service::Redis);
                if step.queried_database {
                    health.up(Service::Database);
                }
                health.work_ok(Step::Process);
                if step.acked + step.dead_lettered > 0 {
                    health.done_some();
                }
                report += step;
                backoff.reset();
            }
            Err(error) => {
                health.work_failed(Step::Process, error.service(), &error);
                if cancel.is_cancelled() {
                    break;
                }
                // A long backoff must not leave the entries idle for another to claim.
                let retry_at = Instant::now() + backoff.next_delay();
                while Instant::now() < retry_at && !cancel.is_cancelled() {
                    tokio::select! {
                        () = tokio::time::sleep_until(retry_at.min(fresh_until)) => {}
                        () = cancel.cancelled() => {}
                    }
                    keep_fresh(services, settings, window, &mut fresh_until).await;
                }
            }
        }
    }
    if !window.is_empty() {
        tracing::warn!(
            entries = window.len() - report.entries,
            "stopping: entries left pending for another consumer"
        );
    }
    report.record(started.elapsed());
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
}
