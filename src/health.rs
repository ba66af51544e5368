//! What the daemon knows of its services: logged once per change of state.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// A service the daemon depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Redis: the stream and the cache.
    Redis,
    /// PostgreSQL: the study rows.
    Database,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis => "redis",
            Self::Database => "postgres",
        })
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Reachability of each service, as last observed.
#[derive(Debug, Default)]
pub struct Health {
    redis: AtomicU8,
    database: AtomicU8,
}

impl Health {
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
        crate::metrics::connection_error(service);
        if self.state(service).swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(%service, %error, "unreachable; retrying with backoff, entries stay pending");
        } else {
            tracing::debug!(%service, %error, "still unreachable");
        }
    }

    /// True when every service answered its last call.
    pub fn all_up(&self) -> bool {
        [&self.redis, &self.database]
            .iter()
            .all(|s| s.load(Ordering::Relaxed) == UP)
    }
}
