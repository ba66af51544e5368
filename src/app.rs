//! The daemon: builds the connections, then reclaims idle entries and reads new ones,
//! window after window, until cancelled.

use std::panic;
use std::sync::Arc;

use anyhow::Context;
use redis::RedisResult;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::health::{Health, Service};
use crate::metrics::{self, RoundTrip};
use crate::pipeline::{self, BatchError, BatchReport, Services};
use crate::recheck::Rechecks;
use crate::series_builder::{self, Builder};
use crate::stream::{self, StreamEntry};
use crate::window::Window;
use crate::{db, http, jwks, monitor, redis_conn};

/// The cursor that starts (and, returned, ends) a scan of the pending list.
const CURSOR_START: &str = "0-0";

/// Runs the daemon until `cancel` fires, then finishes the batch in hand and returns.
///
/// Unreachable services never end it: it backs off and retries, leaving entries pending.
pub async fn run(settings: Arc<Settings>, cancel: CancellationToken) -> anyhow::Result<()> {
    let redis = redis_conn::command_pool(&settings.redis).context("redis.url")?;
    let services = Services {
        rechecks: Rechecks::spawn(
            redis.clone(),
            settings.cache.negative_recheck(),
            cancel.clone(),
        ),
        schedule: settings
            .series
            .roots()
            .map(|_| series_builder::schedule_of(&settings)),
        redis,
        db: db::lazy_pool(&settings.database).context("database.url")?,
    };
    // Built before any task starts: an unreadable jwks.ca_file fails the start.
    let jwks = jwks::Refresher::new(&settings.jwks, services.redis.clone())?;
    metrics::handle();
    let health = Arc::new(Health::default());
    health.beat();
    let endpoint = http::bind(
        &settings.http.listen,
        health.clone(),
        settings.liveness_max_silence(),
        cancel.clone(),
    )
    .await
    .with_context(|| format!("http.listen: cannot listen on {}", settings.http.listen))?;
    let endpoint = tokio::spawn(endpoint);
    let monitoring = tokio::spawn(monitor::run(
        settings.clone(),
        health.clone(),
        services.redis.clone(),
        services.db.clone(),
        cancel.clone(),
    ));
    tokio::spawn(monitor::watchdog(health.clone(), cancel.clone()));
    let builder = Builder::new(
        settings.clone(),
        services.db.clone(),
        services.redis.clone(),
    )
    .map(|builder| tokio::spawn(builder.run(cancel.clone())));
    let jwks = jwks.map(|refresher| tokio::spawn(refresher.run(cancel.clone())));
    let mut reader = Reader::default();
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
            if let Err(error) = reclaim(&services, &settings, &health, &cancel).await {
                health.down(error.service(), &error);
            }
        }
        let mut window = Window::default();
        let read = reader
            .gather(&settings, &health, &cancel, &mut window)
            .await;
        match &read {
            Ok(()) => {
                health.up(Service::Redis);
                backoff.reset();
            }
            Err(error) => health.down(Service::Redis, error),
        }
        // Entries read before a failed read are this consumer's: processed all the same.
        if !window.is_empty() {
            process_until_done(&services, &settings, &health, &mut window, &cancel).await;
        }
        if read.is_err() {
            backoff.wait(&cancel).await;
        }
    }
    // Both end on `cancel`; a panic in either is a bug worth exiting non-zero for.
    monitoring.await?;
    if let Some(builder) = builder {
        // Builds in hand finish and release their locks.
        builder.await?;
    }
    if let Some(jwks) = jwks {
        jwks.await?;
    }
    endpoint.await?;
    services.db.close().await;
    tracing::info!("stopped");
    Ok(())
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
            metrics::entries_reclaimed(claimed.entries.len());
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
        metrics::consumers_deleted(deleted);
    }
    Ok(())
}

/// Processes a window, retrying infrastructure faults with backoff until it is done or
/// the daemon is stopping (its entries then stay pending for a later claim).
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
    while !window.is_empty() {
        health.beat();
        match pipeline::process_step(services, settings, window).await {
            Ok(step) => {
                health.up(Service::Redis);
                if step.queried_database {
                    health.up(Service::Database);
                }
                report += step;
                backoff.reset();
            }
            Err(error) => {
                health.down(error.service(), &error);
                if cancel.is_cancelled() {
                    tracing::warn!(
                        entries = window.len() - report.entries,
                        "stopping: entries left pending for another consumer"
                    );
                    break;
                }
                backoff.wait(cancel).await;
            }
        }
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
}

/// The stream reader's dedicated connection, opened (and the group ensured) on demand.
#[derive(Default)]
struct Reader {
    con: Option<MultiplexedConnection>,
}

impl Reader {
    /// Reads into `window` until a read comes back short (the stream is drained for now),
    /// the window holds `stream.coalesce_entries` (or a batch of bad entries), or the
    /// daemon is stopping; only the first read waits. Each further read runs in Redis while
    /// the previous one's entries are parsed here.
    async fn gather(
        &mut self,
        settings: &Settings,
        health: &Health,
        cancel: &CancellationToken,
        window: &mut Window,
    ) -> RedisResult<()> {
        let mut read = self.read(settings, health).await;
        loop {
            let entries = read?;
            // Bad entries are kept whole until dead-lettered: a batch's worth ends the window.
            let more = entries.len() == settings.stream.batch_size
                && window.len() + entries.len() < settings.stream.coalesce_entries
                && window.bad().len() < settings.stream.batch_size
                && !cancel.is_cancelled();
            let next = more.then(|| self.prefetch(settings));
            if next.is_some() {
                // Lets the read go out before the parsing below keeps this thread busy.
                tokio::task::yield_now().await;
            }
            for entry in entries {
                window.add(entry);
            }
            let Some(next) = next else {
                return Ok(());
            };
            let fetched = next
                .await
                .unwrap_or_else(|error| panic::resume_unwind(error.into_panic()));
            read = self.record(fetched, health);
            health.beat();
        }
    }

    /// A read that waits up to `stream.block_ms` for new entries.
    async fn read(
        &mut self,
        settings: &Settings,
        health: &Health,
    ) -> RedisResult<Vec<StreamEntry>> {
        let con = match &mut self.con {
            Some(con) => con,
            None => {
                let mut con =
                    redis_conn::blocking_connection(&settings.redis, settings.stream.block())
                        .await?;
                stream::ensure_group(&mut con, &settings.stream).await?;
                health.set_group_ready(true);
                self.con.insert(con)
            }
        };
        let read = stream::read_new(con, &settings.stream, true).await;
        self.record(read, health)
    }

    /// Starts a read that does not wait, on the connection of the read before.
    fn prefetch(&self, settings: &Settings) -> JoinHandle<RedisResult<Vec<StreamEntry>>> {
        let mut con = self.con.clone().expect("connected by the read before");
        let stream = settings.stream.clone();
        tokio::spawn(async move { stream::read_new(&mut con, &stream, false).await })
    }

    fn record(
        &mut self,
        read: RedisResult<Vec<StreamEntry>>,
        health: &Health,
    ) -> RedisResult<Vec<StreamEntry>> {
        metrics::round_trip(RoundTrip::Read);
        match &read {
            Ok(entries) => metrics::entries_read(entries.len()),
            Err(error) => {
                // Start afresh: a new connection, and the group created again if it was lost.
                self.con = None;
                if stream::is_missing_group(error) {
                    health.set_group_ready(false);
                    tracing::warn!("consumer group missing: creating it again");
                }
            }
        }
        read
    }
}
