//! The second look at negative flags: a server that read the database just before a study
//! was committed may set the flag right after the daemon cleared it; a delayed check removes
//! it again while the study key is present, so the flag hides an existing study for at most
//! `cache.negative_recheck_ms` (plus one Redis round trip) instead of its 300 s.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ids::{TenantId, Uid};
use crate::keys;
use crate::observe::metrics::{self, RecheckOutcome};

/// Batches of filled studies waiting for their second look; beyond this, rechecks are
/// skipped (the flag's own TTL is then the bound) rather than memory growing.
const QUEUE_CAPACITY: usize = 1_024;

/// Deletes the negative flag (KEYS[2]) when the study key (KEYS[1]) exists.
const CLEAR_FLAG_IF_CACHED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('DEL', KEYS[2])
end
return 0
";

/// Where fills are reported for their second look.
#[derive(Clone)]
pub struct Rechecks {
    queue: mpsc::Sender<(Instant, Vec<(TenantId, Uid)>)>,
    delay: Duration,
}

impl Rechecks {
    /// Starts the task that looks again, `delay` after each fill, until `cancel` fires.
    pub fn spawn(redis: deadpool_redis::Pool, delay: Duration, cancel: CancellationToken) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(redis, pending, cancel));
        Self { queue, delay }
    }

    /// Schedules the second look at `studies`, just filled.
    pub fn schedule(&self, studies: Vec<(TenantId, Uid)>) {
        if studies.is_empty() {
            return;
        }
        if self
            .queue
            .try_send((Instant::now() + self.delay, studies))
            .is_err()
        {
            tracing::debug!("negative-flag recheck queue full: skipped");
            metrics::negative_recheck(RecheckOutcome::Skipped);
        }
    }
}

async fn run(
    redis: deadpool_redis::Pool,
    mut pending: mpsc::Receiver<(Instant, Vec<(TenantId, Uid)>)>,
    cancel: CancellationToken,
) {
    loop {
        let (due, studies) = tokio::select! {
            next = pending.recv() => match next {
                Some(next) => next,
                None => return,
            },
            () = cancel.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = cancel.cancelled() => return,
        }
        let mut pipe = redis::pipe();
        for (tenant, study) in &studies {
            pipe.cmd("EVAL")
                .arg(CLEAR_FLAG_IF_CACHED)
                .arg(2)
                .arg(keys::study_metadata(tenant, study))
                .arg(keys::study_negative_flag(tenant, study));
        }
        let cleared: Result<Vec<i64>, String> = match redis.get().await {
            Ok(mut con) => pipe.query_async(&mut *con).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match cleared {
            Ok(cleared) => {
                for ((tenant, study), _) in studies.iter().zip(&cleared).filter(|(_, n)| **n > 0) {
                    tracing::info!(%tenant, study_uid = %study, "negative flag set after the fill: removed");
                    metrics::negative_recheck(RecheckOutcome::Cleared);
                }
            }
            // The flag then lives out its own TTL; the next fill clears it anyway.
            Err(error) => tracing::debug!(%error, "negative-flag recheck failed"),
        }
    }
}
