//! The relay task: outbox rows to the ingest stream, one transaction per step, woken by
//! the triggers' notifications and by a timer for the ones missed while disconnected.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnection, PgListener};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Settings, StatementTimeoutVia};
use crate::db;
use crate::observe::health::Service;
use crate::observe::metrics::{self, Counter, RoundTrip};
use crate::observe::telemetry::one_line;
use crate::outbox::table::{self, CHANNEL};

/// How often the rows waiting are counted for the gauges, at most.
const MEASURE_INTERVAL: Duration = Duration::from_secs(5);
/// The relay's own connections: the listener's, the steps', and one for a listener given up
/// in a black hole, whose connection sqlx keeps until the kernel gives up on it.
const POOL_CONNECTIONS: u32 = 3;
/// How often the listener's connection must answer a query (see [`Relay::check`]); without a
/// listener, the relay passes and listens again this often.
const LISTENER_CHECK: Duration = Duration::from_secs(5);

/// Why a step failed; its rows stay in the outbox and are taken again.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    RedisPool(#[from] deadpool_redis::PoolError),
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("postgres: no answer within {0:?}")]
    Timeout(Duration),
}

impl StepError {
    fn service(&self) -> Service {
        match self {
            Self::Redis(_) | Self::RedisPool(_) => Service::Redis,
            Self::Database(_) | Self::Timeout(_) => Service::Database,
        }
    }
}

/// Relays `dcw_ingest_outbox` to `stream.key` until cancelled.
pub struct Relay {
    settings: Arc<Settings>,
    db: PgPool,
    redis: deadpool_redis::Pool,
    step_timeout: Duration,
    backoff: Backoff,
    failing: bool,
}

impl Relay {
    /// The relay for `[outbox]`, with a pool of its own; `None` when `outbox.enabled` is off.
    pub fn new(
        settings: Arc<Settings>,
        redis: deadpool_redis::Pool,
    ) -> Result<Option<Self>, sqlx::Error> {
        if !settings.outbox.enabled {
            return Ok(None);
        }
        let db = db::lazy_pool_of(&settings.database, POOL_CONNECTIONS)?;
        // Connecting, three statements and the publishing round trip, each bounded by its
        // own timeout; this one catches a peer that went silent.
        let step_timeout = settings.database.connect_timeout()
            + 3 * Duration::from_millis(settings.database.statement_timeout_ms)
            + settings.redis.command_timeout();
        Ok(Some(Self {
            settings,
            db,
            redis,
            step_timeout,
            backoff: Backoff::default(),
            failing: false,
        }))
    }

    /// Fails when the database says the outbox is missing or the role may not relay it.
    pub async fn check_grant(&self) -> anyhow::Result<()> {
        let mut con = self.db.acquire().await?;
        table::check_relay_grant(&mut con).await
    }

    /// Relays until `cancel` fires: a pass at start, then one per notification,
    /// `outbox.poll_ms` and [`LISTENER_CHECK`]; a step in hand finishes first.
    pub async fn run(mut self, cancel: CancellationToken) {
        // Behind a transaction pooler (PgBouncer), a LISTEN stays on whichever server
        // connection ran it, whose next client (a fill) then gets the notifications.
        let listens = self.settings.database.statement_timeout_via == StatementTimeoutVia::Startup;
        tracing::info!(
            stream = %self.settings.stream.key,
            batch_size = self.settings.outbox.batch_size,
            poll_ms = self.settings.outbox.poll_ms,
            notifications = listens,
            "relaying the outbox dcw_ingest_outbox to the ingest stream"
        );
        let mut listener = None;
        let mut poll = tokio::time::interval(self.settings.outbox.poll());
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut check = tokio::time::interval_at(Instant::now() + LISTENER_CHECK, LISTENER_CHECK);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next_measure = Instant::now();
        while !cancel.is_cancelled() {
            if listens && listener.is_none() {
                listener = self.listen().await;
            }
            self.relay_waiting(&cancel).await;
            if Instant::now() >= next_measure {
                next_measure = Instant::now() + MEASURE_INTERVAL;
                self.measure().await;
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = poll.tick() => {}
                _ = check.tick() => if let Err(error) = self.check(&mut listener).await {
                    // Polling covers the gap; the next pass listens again.
                    tracing::debug!(error = %error, "outbox listener deaf");
                    listener = None;
                },
                woken = notified(&mut listener) => if let Err(error) = woken {
                    tracing::debug!(error = %error, "outbox notifications lost");
                    listener = None;
                },
            }
        }
        // The listener holds one of the pool's connections.
        drop(listener);
        db::close(&self.db).await;
    }

    /// Relays every row waiting now, retrying faults with backoff until it is done or
    /// `cancel` fires: for a drain, before the stream is read.
    pub async fn relay_all(&mut self, cancel: &CancellationToken) {
        while !cancel.is_cancelled() && !self.relay_waiting(cancel).await {}
    }

    /// Steps while each takes a full batch; true when a step found the rest. After a fault
    /// it backs off once and returns false: the rows stay and the next pass takes them.
    async fn relay_waiting(&mut self, cancel: &CancellationToken) -> bool {
        while !cancel.is_cancelled() {
            match self.step().await {
                Ok(taken) => {
                    self.backoff.reset();
                    if self.failing {
                        self.failing = false;
                        tracing::info!("outbox relay working again");
                    }
                    if taken < self.settings.outbox.batch_size {
                        return true;
                    }
                }
                Err(error) => {
                    self.failed(error.service(), &error);
                    self.backoff.wait(cancel).await;
                    return false;
                }
            }
        }
        false
    }

    /// One transaction: take the oldest rows no one else holds, publish them in one
    /// pipeline, and delete them only once Redis has them. Returns the rows taken.
    async fn step(&self) -> Result<usize, StepError> {
        let mut con = db::InFlight::acquire(&self.db).await?;
        let stepped =
            tokio::time::timeout(self.step_timeout, self.publish_batch(con.connection())).await;
        if stepped.is_ok() {
            con.finished();
        }
        stepped.map_err(|_| StepError::Timeout(self.step_timeout))?
    }

    async fn publish_batch(&self, con: &mut PgConnection) -> Result<usize, StepError> {
        // Stranded, the step is given up at its deadline: the server then frees its rows.
        let mut tx = db::begin(&self.settings.database, con, self.step_timeout).await?;
        let rows = table::take_batch(&mut tx, self.settings.outbox.batch_size).await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let events = table::coalesce(&rows);
        let mut pipe = redis::pipe();
        for row in &events {
            pipe.add_command(row.xadd(&self.settings.stream.key))
                .ignore();
        }
        {
            // Not MULTI: after a partial failure, what went out is published again with the
            // rest, as after a crash.
            let mut con = self.redis.get().await?;
            pipe.query_async::<()>(&mut *con).await?;
        }
        metrics::round_trip(RoundTrip::Publish);
        // A crash or a failure from here on leaves the rows to be published again.
        table::delete(&mut tx, &rows).await?;
        tx.commit().await?;
        metrics::add(Counter::OutboxRowsRelayed, rows.len());
        tracing::debug!(
            rows = rows.len(),
            events = events.len(),
            "relayed outbox rows"
        );
        Ok(rows.len())
    }

    /// Listens on the triggers' channel; `None` (polling only) while that fails.
    async fn listen(&mut self) -> Option<PgListener> {
        let listening = async {
            let mut listener = PgListener::connect_with(&self.db).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.step_timeout, listening).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(error)) => {
                self.failed(Service::Database, &StepError::Database(error));
                None
            }
            Err(_) => {
                self.failed(Service::Database, &StepError::Timeout(self.step_timeout));
                None
            }
        }
    }

    /// Whether the listener's connection still answers a query within the query deadline:
    /// without TCP keepalive (sqlx has none), a connection whose packets are dropped never
    /// fails, and its notifications just stop.
    async fn check(&self, listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
        let Some(listener) = listener else {
            return Ok(());
        };
        let deadline = self.settings.database.query_deadline();
        let answered = sqlx::query("SELECT 1")
            .persistent(false)
            .execute(&mut *listener);
        tokio::time::timeout(deadline, answered)
            .await
            .map_err(|_| db::no_answer(deadline))?
            .map(drop)
    }

    /// Sets the gauges from a count of the rows waiting; a failure leaves them as they were.
    async fn measure(&self) {
        let measured = db::run(&self.settings.database, &self.db, async |con| {
            table::measure(con).await
        });
        match measured.await {
            Ok((rows, oldest)) => metrics::outbox_gauges(rows, oldest),
            Err(error) => tracing::debug!(error = %one_line(&error), "outbox not measured"),
        }
    }

    /// Counts a failed call and logs it once per outage.
    fn failed(&mut self, service: Service, error: &StepError) {
        metrics::connection_error(service.label());
        if self.failing {
            tracing::debug!(%service, error = %one_line(error), "outbox relay still failing");
        } else {
            self.failing = true;
            tracing::warn!(%service, error = %one_line(error), "outbox relay failed; retrying with backoff, the rows stay in the outbox");
        }
    }
}

/// Waits for a notification and takes the ones queued behind it; waits forever without
/// a listener. `Ok` also when the connection was lost and made again: the pass that
/// follows finds what was missed.
async fn notified(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    listener.try_recv().await?;
    while listener.next_buffered().is_some() {}
    Ok(())
}
