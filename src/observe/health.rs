//! What the daemon knows of itself and its services: liveness (the main loop goes round)
//! and readiness (services reachable, group present, the work in hand not failing, entries
//! acknowledged while some wait, not stopping), each refusal with its reason. Changes are
//! logged once per change of state.

use std::fmt;
use std::sync::Mutex;
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

/// A step of the consumer's work, each with its own fault: one step succeeding does not
/// hide another that keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading new entries.
    Read,
    /// Claiming idle entries and deleting gone consumers.
    Reclaim,
    /// Processing a window: fills, dead letters, acknowledgements.
    Process,
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Reachability of each service as last observed, and the main loop's progress.
#[derive(Debug)]
pub struct Health {
    redis: AtomicU8,
    database: AtomicU8,
    /// Why each service (in [`Service::ALL`] order) was last found unreachable.
    causes: Mutex<[Option<String>; 2]>,
    group_ready: AtomicBool,
    stopping: AtomicBool,
    started: Instant,
    /// When the main loop last went round (liveness), in ms since `started`.
    last_beat_ms: AtomicU64,
    /// When an entry was last acknowledged or dead-lettered, in ms since `started`.
    last_done_ms: AtomicU64,
    /// Entries wait (lag or pending), as last read.
    waiting: AtomicBool,
    /// Why each step failed last, until it succeeds.
    work_faults: Mutex<[Option<(Service, String)>; 3]>,
    /// Whether the identity provider's key set is cached; `None` with JWKS off.
    key_set: Mutex<Option<bool>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            redis: AtomicU8::new(UNKNOWN),
            database: AtomicU8::new(UNKNOWN),
            causes: Mutex::default(),
            group_ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            work_faults: Mutex::default(),
            key_set: Mutex::new(None),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn since(&self, mark: &AtomicU64) -> Duration {
        let last = Duration::from_millis(mark.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Records that the main loop went round once more.
    pub fn beat(&self) {
        self.last_beat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// True when the main loop went round within `max_silence`.
    pub fn is_live(&self, max_silence: Duration) -> bool {
        self.since(&self.last_beat_ms) <= max_silence
    }

    /// Records that entries were acknowledged or dead-lettered.
    pub fn done_some(&self) {
        self.last_done_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Records whether entries wait for the group (lag or pending), as just read.
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    /// True when entries wait and none was acknowledged or dead-lettered for `after`.
    pub fn is_stalled(&self, after: Duration) -> bool {
        self.waiting.load(Ordering::Relaxed) && self.since(&self.last_done_ms) > after
    }

    /// Records whether the identity provider's key set is cached (JWKS on).
    pub fn set_key_set_cached(&self, cached: bool) {
        *self.key_set.lock().expect("health lock") = Some(cached);
    }

    /// Records a failed step of the work (it is retried with backoff); logs when the step
    /// was not failing, or fails for another reason now.
    pub fn work_failed(&self, step: Step, service: Service, error: &dyn fmt::Display) {
        metrics::connection_error(service.label());
        let fault = Some((service, error.to_string()));
        let mut faults = self.work_faults.lock().expect("health lock");
        if faults[step as usize] != fault {
            tracing::warn!(?step, %service, %error, "failed; retrying with backoff, entries stay pending");
            faults[step as usize] = fault;
        }
    }

    /// Records a step of the work that succeeded.
    pub fn work_ok(&self, step: Step) {
        if let Some((service, _)) =
            self.work_faults.lock().expect("health lock")[step as usize].take()
        {
            tracing::info!(?step, %service, "works again");
        }
    }

    /// Records that the consumer group exists (or no longer does).
    pub fn set_group_ready(&self, ready: bool) {
        self.group_ready.store(ready, Ordering::Relaxed);
    }

    /// Records that the daemon is stopping: it is no longer ready.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// No step of the work is failing, both services answered their last call, the group
    /// exists, entries are being done while some wait (within `stall_after`), and the
    /// daemon is not stopping; otherwise why not.
    pub fn readiness(&self, stall_after: Duration) -> Result<(), String> {
        // The most precise reason first: what the work itself met.
        if let Some(fault) = self
            .work_faults
            .lock()
            .expect("health lock")
            .iter()
            .flatten()
            .next()
        {
            return Err(format!("the work in hand fails: {}: {}", fault.0, fault.1));
        }
        for service in Service::ALL {
            match self.state(service).load(Ordering::Relaxed) {
                UP => {}
                DOWN => {
                    // The cause, so that a connection refused for good (a CA that does not
                    // sign the server's certificate, TLS the server requires) says so.
                    let causes = self.causes.lock().expect("health lock");
                    return Err(match &causes[service as usize] {
                        Some(cause) => format!("{service} unreachable: {cause}"),
                        None => format!("{service} unreachable"),
                    });
                }
                _ => return Err(format!("{service} not reached yet")),
            }
        }
        if !self.group_ready.load(Ordering::Relaxed) {
            return Err("consumer group not created yet".into());
        }
        if *self.key_set.lock().expect("health lock") == Some(false) {
            return Err(
                "no identity provider key set cached: the server refuses every token".into(),
            );
        }
        if self.is_stalled(stall_after) {
            return Err(format!(
                "no progress: entries wait and none was acknowledged for {} s",
                self.since(&self.last_done_ms).as_secs()
            ));
        }
        if self.stopping.load(Ordering::Relaxed) {
            return Err("stopping".into());
        }
        Ok(())
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
        self.causes.lock().expect("health lock")[service as usize] = Some(error.to_string());
        if self.state(service).swap(DOWN, Ordering::Relaxed) != DOWN {
            tracing::warn!(%service, %error, "unreachable; retrying with backoff, entries stay pending");
        } else {
            tracing::debug!(%service, %error, "still unreachable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(600);

    #[test]
    fn ready_needs_both_services_the_group_working_steps_and_not_stopping() {
        let health = Health::default();
        assert_eq!(health.readiness(STALL), Err("redis not reached yet".into()));
        health.up(Service::Redis);
        health.up(Service::Database);
        assert_eq!(
            health.readiness(STALL),
            Err("consumer group not created yet".into())
        );
        health.set_group_ready(true);
        assert_eq!(health.readiness(STALL), Ok(()));
        health.down(Service::Database, &"refused");
        assert_eq!(
            health.readiness(STALL),
            Err("postgres unreachable: refused".into())
        );
        health.up(Service::Database);
        // A probe that succeeds does not hide work that keeps failing.
        health.work_failed(
            Step::Process,
            Service::Redis,
            &"NOPERM no permissions to run the 'xrange' command",
        );
        health.up(Service::Redis);
        health.work_ok(Step::Read);
        assert_eq!(
            health.readiness(STALL),
            Err(
                "the work in hand fails: redis: NOPERM no permissions to run the 'xrange' command"
                    .into()
            )
        );
        health.work_ok(Step::Process);
        assert_eq!(health.readiness(STALL), Ok(()));
        health.set_key_set_cached(false);
        assert!(
            health
                .readiness(STALL)
                .is_err_and(|r| r.contains("key set"))
        );
        health.set_key_set_cached(true);
        health.set_stopping();
        assert_eq!(health.readiness(STALL), Err("stopping".into()));
    }

    #[test]
    fn stalled_only_while_entries_wait_and_none_is_done() {
        let health = Health {
            started: Instant::now() - Duration::from_secs(5),
            ..Health::default()
        };
        let after = Duration::from_secs(1);
        assert!(!health.is_stalled(after), "nothing waits");
        health.set_waiting(true);
        assert!(health.is_stalled(after));
        health.done_some();
        assert!(!health.is_stalled(after));
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
