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
    if let Some(period) = sd_notify::watchdog_enabled() {
        check_watchdog_period(period, settings.liveness_max_silence());
    }
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

/// Warns when systemd's watchdog period is shorter than the longest the main loop may
/// legitimately stay silent (the liveness window of `/healthz`): the pings would stop, and
/// systemd kill the daemon, during a batch that is slow but within that window.
fn check_watchdog_period(period: Duration, liveness_window: Duration) -> bool {
    let too_short = period < liveness_window;
    if too_short {
        tracing::warn!(
            "systemd's watchdog period (WatchdogSec={}s) is shorter than the liveness window \
             of /healthz ({}s, from stream.block_ms, database.statement_timeout_ms and \
             redis.command_timeout_ms): a slow batch within that window gets the daemon \
             killed by the watchdog; raise WatchdogSec= to at least {}s",
            period.as_secs_f64(),
            liveness_window.as_secs_f64(),
            liveness_window.as_secs_f64().ceil(),
        );
    }
    too_short
}

/// Sends WATCHDOG=1 at half systemd's watchdog period while the main loop makes progress,
/// so a wedged loop gets the process restarted; does nothing without a watchdog.
///
/// The pings start once the daemon is ready (when READY=1 goes out). systemd arms the
/// watchdog at READY=1, or at the first ping if that comes earlier: a ping while the daemon
/// still waits for Redis or PostgreSQL would arm it during the start, and a main loop held
/// up by a slow service would then be killed for it, although the start has its own limit
/// (TimeoutStartSec=).
pub async fn watchdog(health: Arc<Health>, cancel: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut interval = tokio::time::interval(period / 2);
    let mut started = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = cancel.cancelled() => return,
        }
        started = started || health.readiness(Duration::MAX).is_ok();
        if !started {
            continue;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watchdog_period_shorter_than_the_liveness_window_is_flagged() {
        let window = Duration::from_secs(62);
        assert!(check_watchdog_period(Duration::from_secs(30), window));
        assert!(!check_watchdog_period(Duration::from_secs(62), window));
        assert!(!check_watchdog_period(Duration::from_secs(70), window));
    }
}
