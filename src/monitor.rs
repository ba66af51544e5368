//! A periodic look at the services and the group: reachability for readiness, lag and
//! pending counts for the metrics, and systemd's READY and WATCHDOG notifications.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db;
use crate::ingest::stream;
use crate::observe::health::{Health, Service};
use crate::observe::metrics;

/// How often the services are probed and the group's counts read.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Probes until `cancel` fires; tells systemd READY=1 the first time the daemon is ready,
/// then STOPPING=1 when it stops.
pub async fn run(
    settings: Arc<Settings>,
    health: Arc<Health>,
    redis: deadpool_redis::Pool,
    db: PgPool,
    cancel: CancellationToken,
) {
    let mut told_ready = false;
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = cancel.cancelled() => break,
        }
        probe_redis(&settings, &health, &redis).await;
        let probe = db::run(&settings.database, &db, async |con| {
            sqlx::query("SELECT 1").persistent(false).execute(con).await
        });
        match probe.await {
            Ok(_) => health.up(Service::Database),
            Err(error) => health.down(Service::Database, &error),
        }
        if !told_ready && health.readiness(settings.stream.stall_after()).is_ok() {
            told_ready = true;
            notify(&[NotifyState::Ready, NotifyState::Status("warming caches")]);
        }
    }
    health.set_stopping();
    notify(&[NotifyState::Stopping]);
}

async fn probe_redis(settings: &Settings, health: &Health, redis: &deadpool_redis::Pool) {
    let probed = async {
        let mut con = redis.get().await.map_err(|e| e.to_string())?;
        let backlog = stream::backlog(&mut *con, &settings.stream)
            .await
            .map_err(|e| e.to_string())?;
        let dead_letters: u64 = redis::cmd("XLEN")
            .arg(&settings.stream.dead_letter_key)
            .query_async(&mut *con)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((backlog, dead_letters))
    };
    match probed.await {
        Ok((backlog, dead_letters)) => {
            health.up(Service::Redis);
            health.set_group_ready(backlog.is_some());
            health.set_waiting(
                backlog.is_some_and(|b| b.pending > 0 || b.lag.is_some_and(|l| l > 0)),
            );
            metrics::progress_stalled(health.is_stalled(settings.stream.stall_after()));
            metrics::stream_gauges(
                backlog.map(|b| b.pending),
                backlog.and_then(|b| b.lag),
                dead_letters,
            );
        }
        Err(error) => health.down(Service::Redis, &error),
    }
}

/// Sends WATCHDOG=1 at half systemd's watchdog period while the main loop makes progress,
/// so a wedged loop gets the process restarted; does nothing without a watchdog.
pub async fn watchdog(health: Arc<Health>, cancel: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut interval = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = cancel.cancelled() => return,
        }
        if health.is_live(period) {
            notify(&[NotifyState::Watchdog]);
        } else {
            tracing::error!(
                ?period,
                "main loop made no progress: withholding the watchdog ping"
            );
        }
    }
}

/// Notifies systemd when it started this process with NOTIFY_SOCKET; a no-op otherwise.
fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "systemd notification failed");
    }
}
