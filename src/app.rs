//! The daemon: builds the connections, reads and processes batches until cancelled.

use std::sync::Arc;

use anyhow::Context;
use redis::RedisResult;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::health::{Health, Service};
use crate::metrics::{self, RoundTrip};
use crate::pipeline::{self, Services};
use crate::stream::{self, StreamEntry};
use crate::{db, redis_conn};

/// Runs the daemon until `cancel` fires, then finishes the batch in hand and returns.
///
/// Unreachable services never end it: it backs off and retries, leaving entries pending.
pub async fn run(settings: Arc<Settings>, cancel: CancellationToken) -> anyhow::Result<()> {
    let services = Services {
        redis: redis_conn::command_pool(&settings.redis).context("redis.url")?,
        db: db::lazy_pool(&settings.database).context("database.url")?,
    };
    let health = Health::default();
    let mut reader = Reader::default();
    let mut backoff = Backoff::default();
    tracing::info!(
        stream = %settings.stream.key,
        group = %settings.stream.group,
        consumer = %settings.stream.consumer,
        "warming caches from the ingest stream"
    );
    while !cancel.is_cancelled() {
        let entries = match reader.read(&settings).await {
            Ok(entries) => entries,
            Err(error) => {
                health.down(Service::Redis, &error);
                backoff.wait(&cancel).await;
                continue;
            }
        };
        health.up(Service::Redis);
        backoff.reset();
        if !entries.is_empty() {
            process_until_done(&services, &settings, &health, &entries, &cancel).await;
        }
    }
    services.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Processes a batch, retrying infrastructure faults with backoff until it succeeds or
/// the daemon is stopping (its entries then stay pending for a later claim).
async fn process_until_done(
    services: &Services,
    settings: &Settings,
    health: &Health,
    entries: &[StreamEntry],
    cancel: &CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        match pipeline::process_batch(services, settings, entries).await {
            Ok(report) => {
                health.up(Service::Redis);
                if report.queried_database {
                    health.up(Service::Database);
                }
                return;
            }
            Err(error) => {
                health.down(error.service(), &error);
                if cancel.is_cancelled() {
                    tracing::warn!(
                        entries = entries.len(),
                        "stopping: batch left pending for another consumer"
                    );
                    return;
                }
                backoff.wait(cancel).await;
            }
        }
    }
}

/// The stream reader's dedicated connection, opened (and the group ensured) on demand.
#[derive(Default)]
struct Reader {
    con: Option<MultiplexedConnection>,
}

impl Reader {
    async fn read(&mut self, settings: &Settings) -> RedisResult<Vec<StreamEntry>> {
        let con = match &mut self.con {
            Some(con) => con,
            None => {
                let mut con =
                    redis_conn::blocking_connection(&settings.redis, settings.stream.block())
                        .await?;
                stream::ensure_group(&mut con, &settings.stream).await?;
                self.con.insert(con)
            }
        };
        let read = stream::read_new(con, &settings.stream).await;
        metrics::round_trip(RoundTrip::Read);
        if let Err(error) = &read {
            // Start afresh: a new connection, and the group created again if it was lost.
            self.con = None;
            if stream::is_missing_group(error) {
                tracing::warn!("consumer group missing: creating it again");
            }
        }
        if let Ok(entries) = &read {
            metrics::entries_read(entries.len());
        }
        read
    }
}
