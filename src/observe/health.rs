//! What the daemon knows of itself and its services: liveness (the main loop moves),
//! readiness (services reachable, group present, not stopping); service changes are
//! logged once per change of state.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::observe::metrics;

/// A service the daemon depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Redis: the stream and the cache.
    Redis,
    /// PostgreSQL: the study rows.
    Database,
}

impl Service {
    /// Both services.
    pub const ALL: [Self; 2] = [Self::Redis, Self::Database];

    /// The service's name in logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Database => "postgres",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Reachability of each service as last observed, and the main loop's progress.
#[derive(Debug)]
pub struct Health {
    redis: AtomicU8,
    database: AtomicU8,
    group_ready: AtomicBool,
    stopping: AtomicBool,
    started: Instant,
    last_progress_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            redis: AtomicU8::new(UNKNOWN),
            database: AtomicU8::new(UNKNOWN),
            group_ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Records that the main loop went round once more.
    pub fn beat(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.store(now, Ordering::Relaxed);
    }

    /// True when the main loop went round within `max_silence`.
    pub fn is_live(&self, max_silence: Duration) -> bool {
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) <= max_silence
    }

    /// Records that the consumer group exists (or no longer does).
    pub fn set_group_ready(&self, ready: bool) {
        self.group_ready.store(ready, Ordering::Relaxed);
    }

    /// Records that the daemon is stopping: it is no longer ready.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Both services answered their last call, the group exists, and the daemon is not
    /// stopping.
    pub fn is_ready(&self) -> bool {
        self.all_up()
            && self.group_ready.load(Ordering::Relaxed)
            && !self.stopping.load(Ordering::Relaxed)
    }

    fn state(&self, service: Service) -> &AtomicU8 {
        match service {
            Service::Redis => &self.redis,
            Service::Database => &self.database,
        }
    }

    /// Records a successful call; logs when the service was down or not yet seen.
    pub fn up(&self, service: Service) {
        match self.state(service).swap(UP, Ordering::Relaxed) {
            UNKNOWN => tracing::info!(%service, "connected"),
            DOWN => tracing::info!(%service, "reachable again"),
            _ => {}
        }
    }

    /// Records a failed call; logs when the service was up or not yet seen.
    pub fn down(&self, service: Service, error: &dyn fmt::Display) {
        metrics::connection_error(service.label());
        if self.state(service).swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(%service, %error, "unreachable; retrying with backoff, entries stay pending");
        } else {
            tracing::debug!(%service, %error, "still unreachable");
        }
    }

    fn all_up(&self) -> bool {
        [&self.redis, &self.database]
            .iter()
            .all(|s| s.load(Ordering::Relaxed) == UP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_both_services_the_group_and_not_stopping() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.up(Service::Redis);
        health.up(Service::Database);
        assert!(!health.is_ready(), "group not yet ensured");
        health.set_group_ready(true);
        assert!(health.is_ready());
        health.down(Service::Database, &"refused");
        assert!(!health.is_ready());
        health.up(Service::Database);
        health.set_stopping();
        assert!(!health.is_ready());
    }

    #[test]
    fn liveness_follows_the_last_beat() {
        let health = Health::default();
        health.beat();
        assert!(health.is_live(Duration::from_secs(1)));
        assert!(
            !Health {
                started: Instant::now() - Duration::from_secs(5),
                ..Health::default()
            }
            .is_live(Duration::from_secs(1))
        );
    }
}
