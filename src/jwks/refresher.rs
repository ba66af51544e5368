//! The refresh loop: the fetched key set written unchanged to the key the server reads,
//! on a jittered schedule; while the provider is down the last good value stays, its TTL
//! extended before it expires.

use std::future::Future;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use rand::Rng;
use redis::Script;
use tokio_util::sync::CancellationToken;

use crate::config::JwksSettings;
use crate::jwks::check::{InvalidKeySet, KeySummary};
use crate::jwks::fetch::{FetchError, Fetcher};
use crate::keys;
use crate::observe::health::Health;
use crate::observe::metrics::{self, Counter};

/// The first retry after a failed refresh; retries double up to the refresh period.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// Key ids named in one log line at most.
const KIDS_LOGGED: usize = 20;

/// KEYS: key set, fetched-at. ARGV: document, TTL in seconds. The fetch time is Redis's own
/// clock, so replicas with skewed clocks agree on the key set's age.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], redis.call('TIME')[1], 'EX', ARGV[2])
return 1
",
    )
});

/// KEYS: key set, fetched-at. ARGV: TTL in seconds, extend when fewer seconds remain.
/// Never writes the key set itself. Returns {TTL after (-2 missing, -1 no expiry),
/// 1 when extended, age in seconds (-1 unknown)}.
static KEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ttl = redis.call('TTL', KEYS[1])
local extended = 0
if ttl >= 0 and ttl < tonumber(ARGV[2]) then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[1])
    ttl = tonumber(ARGV[1])
    extended = 1
end
local age = -1
local fetched = tonumber(redis.call('GET', KEYS[2]) or '')
if fetched then
    age = tonumber(redis.call('TIME')[1]) - fetched
end
return {ttl, extended, age}
",
    )
});

/// Redis could not be reached to write or keep the key set.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or timed out.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled Redis connection could be had in time.
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
}

/// The cached key set after a failed refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// No key set under the key: the server fails every token check.
    Missing,
    /// A key set without expiry (written by someone else): left alone.
    Persistent,
    /// A key set expiring in `remaining_secs`; `extended` when this refresh extended it.
    Expiring {
        /// Seconds it has left (after any extension).
        remaining_secs: u64,
        /// Whether it was about to expire and got a full TTL again.
        extended: bool,
    },
}

/// What one refresh did.
#[derive(Debug)]
pub enum Outcome {
    /// The fetched document was written under the key, with the full TTL.
    Written(KeySummary),
    /// The fetch failed; the cached key set (if any) was kept, never overwritten.
    Kept {
        /// Why the fetch failed.
        error: FetchError,
        /// The cached key set.
        cached: Cached,
        /// Seconds since the cached key set was fetched, when known.
        age_secs: Option<u64>,
    },
}

/// Keeps the key set under [`keys::JWKS`] fresh until cancelled.
#[derive(Debug)]
pub struct Refresher {
    fetcher: Fetcher,
    redis: deadpool_redis::Pool,
    key: String,
    fetched_key: String,
    period: Duration,
    ttl_secs: u64,
    extend_below_secs: u64,
}

impl Refresher {
    /// The refresher for `[jwks]`, writing [`keys::JWKS`]; `None` when `jwks.url` is unset. Fails
    /// (naming the key) when `jwks.ca_file` cannot be read or TLS cannot be set up.
    pub fn new(
        settings: &JwksSettings,
        redis: deadpool_redis::Pool,
    ) -> anyhow::Result<Option<Self>> {
        if settings.url.is_none() {
            return Ok(None);
        }
        // While the provider is down, extend the key set before it could expire ahead of
        // the next-but-one attempt.
        let extend_below = 2 * settings.refresh() + settings.timeout();
        Ok(Some(
            Self {
                fetcher: Fetcher::new(settings)?,
                redis,
                key: String::new(),
                fetched_key: String::new(),
                period: settings.refresh(),
                ttl_secs: settings.ttl_secs,
                extend_below_secs: extend_below.as_secs() + 1,
            }
            .with_key(keys::JWKS),
        ))
    }

    /// The same refresher writing another key (tests use their own).
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = key.to_owned();
        // The daemon's bookkeeping sits under `dcw:`, beside nothing the server reads.
        self.fetched_key = format!("dcw:{key}:fetched_at");
        self
    }

    /// Fetches once and writes the key set, or keeps (and, when about to expire, extends)
    /// the cached one; logs and counts what happened. Errs only when Redis does.
    pub async fn refresh_once(&self) -> Result<Outcome, StoreError> {
        let host = self.fetcher.host();
        let fetched = self.fetcher.fetch().await;
        let mut con = self.redis.get().await?;
        match fetched {
            Ok((document, summary)) => {
                let _: i64 = WRITE
                    .key(&self.key)
                    .key(&self.fetched_key)
                    .arg(document.as_slice())
                    .arg(self.ttl_secs)
                    .invoke_async(&mut *con)
                    .await?;
                metrics::add(Counter::JwksRefreshes, 1);
                metrics::jwks_age(Duration::ZERO);
                metrics::jwks_cached(true);
                let shown = &summary.kids[..summary.kids.len().min(KIDS_LOGGED)];
                tracing::info!(
                    host,
                    keys = summary.keys,
                    kids = ?shown,
                    bytes = document.len(),
                    ttl_secs = self.ttl_secs,
                    "identity provider key set refreshed"
                );
                Ok(Outcome::Written(summary))
            }
            Err(error) => {
                let (ttl, extended, age): (i64, i64, i64) = KEEP
                    .key(&self.key)
                    .key(&self.fetched_key)
                    .arg(self.ttl_secs)
                    .arg(self.extend_below_secs)
                    .invoke_async(&mut *con)
                    .await?;
                let cached = match ttl {
                    -2 => Cached::Missing,
                    ttl if ttl < 0 => Cached::Persistent,
                    ttl => Cached::Expiring {
                        remaining_secs: ttl.unsigned_abs(),
                        extended: extended == 1,
                    },
                };
                let age_secs = u64::try_from(age).ok();
                metrics::jwks_cached(cached != Cached::Missing);
                self.report_failure(&error, cached, age_secs);
                Ok(Outcome::Kept {
                    error,
                    cached,
                    age_secs,
                })
            }
        }
    }

    fn report_failure(&self, error: &FetchError, cached: Cached, age_secs: Option<u64>) {
        let host = self.fetcher.host();
        let reason = error.reason();
        metrics::jwks_refresh_failed(reason);
        if let Some(age) = age_secs {
            metrics::jwks_age(Duration::from_secs(age));
        }
        if let FetchError::Invalid(InvalidKeySet::PrivateMember { .. }) = error {
            tracing::error!(
                host,
                %error,
                "the identity provider's key set carries private key material: refused, not stored"
            );
        }
        match cached {
            Cached::Missing => tracing::error!(
                host,
                reason,
                %error,
                "key set refresh failed and no key set is cached: the server refuses every token"
            ),
            Cached::Expiring {
                remaining_secs,
                extended: true,
            } => {
                metrics::add(Counter::JwksTtlExtensions, 1);
                tracing::warn!(
                    host,
                    reason,
                    %error,
                    age_secs,
                    ttl_secs = remaining_secs,
                    "key set refresh failed and the cached key set was about to expire: TTL extended"
                );
            }
            Cached::Expiring { remaining_secs, .. } => tracing::warn!(
                host,
                reason,
                %error,
                age_secs,
                ttl_secs = remaining_secs,
                "key set refresh failed: keeping the cached key set"
            ),
            Cached::Persistent => tracing::warn!(
                host,
                reason,
                %error,
                age_secs,
                "key set refresh failed: keeping the cached key set (it has no expiry)"
            ),
        }
    }

    /// Refreshes at once, then every `jwks.refresh_secs` (shortened by up to a tenth at
    /// random), sooner after a failure, until `cancel` fires.
    /// Readiness (in `health`) fails while no key set is cached, since the server then
    /// refuses every token.
    pub async fn run(self, health: Arc<Health>, cancel: CancellationToken) {
        tracing::info!(
            host = self.fetcher.host(),
            refresh_secs = self.period.as_secs(),
            ttl_secs = self.ttl_secs,
            "keeping the identity provider's key set warm"
        );
        health.set_key_set_cached(false);
        metrics::jwks_cached(false);
        run_on_schedule(self.period, &cancel, || self.refresh_succeeds(&health)).await;
    }

    async fn refresh_succeeds(&self, health: &Health) -> bool {
        match self.refresh_once().await {
            Ok(outcome) => {
                health.set_key_set_cached(!matches!(
                    outcome,
                    Outcome::Kept {
                        cached: Cached::Missing,
                        ..
                    }
                ));
                matches!(outcome, Outcome::Written(_))
            }
            Err(error) => {
                metrics::jwks_refresh_failed("redis");
                tracing::warn!(
                    host = self.fetcher.host(),
                    %error,
                    "key set refresh failed: Redis unreachable"
                );
                false
            }
        }
    }
}

/// The wait before the next refresh: one period after a success, shortened by up to a
/// tenth at random so that replicas drift apart; after `failures` failures in a row, 5 s
/// doubling up to the period, picked from the upper half.
fn next_delay(period: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return rand::rng().random_range(period.mul_f64(0.9)..=period);
    }
    let ceiling = RETRY_FIRST
        .saturating_mul(1 << (failures - 1).min(16))
        .min(period);
    rand::rng().random_range(ceiling / 2..=ceiling)
}

/// Calls `refresh` at once, then again after each [`next_delay`], until `cancel` fires;
/// `refresh` tells whether it succeeded.
async fn run_on_schedule<F, Fut>(period: Duration, cancel: &CancellationToken, mut refresh: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut failures = 0u32;
    loop {
        let succeeded = tokio::select! {
            succeeded = refresh() => succeeded,
            () = cancel.cancelled() => return,
        };
        failures = if succeeded {
            0
        } else {
            failures.saturating_add(1)
        };
        tokio::select! {
            () = tokio::time::sleep(next_delay(period, failures)) => {}
            () = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    #[test]
    fn delays_are_a_period_shortened_by_jitter_or_shorter_retries_after_failures() {
        let period = Duration::from_secs(300);
        for _ in 0..200 {
            let delay = next_delay(period, 0);
            assert!(delay >= period.mul_f64(0.9) && delay <= period, "{delay:?}");
            let first_retry = next_delay(period, 1);
            assert!(first_retry >= RETRY_FIRST / 2 && first_retry <= RETRY_FIRST);
            let third_retry = next_delay(period, 3);
            assert!(third_retry >= RETRY_FIRST * 2 && third_retry <= RETRY_FIRST * 4);
            assert!(next_delay(period, 40) <= period);
            assert!(next_delay(Duration::from_secs(1), 1) <= Duration::from_secs(1));
        }
    }

    /// Runs the schedule with `results` as the refresh outcomes, in paused time, and returns
    /// the instants of the calls (relative to the start) once they are used up.
    async fn schedule_calls(period: Duration, results: Vec<bool>) -> Vec<Duration> {
        let start = Instant::now();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let task = {
            let (calls, cancel) = (calls.clone(), cancel.clone());
            tokio::spawn(async move {
                let mut results = results.into_iter();
                run_on_schedule(period, &cancel, || {
                    calls.lock().expect("lock").push(start.elapsed());
                    let result = results.next();
                    if result.is_none() {
                        cancel.cancel();
                    }
                    async move { result.unwrap_or(false) }
                })
                .await;
            })
        };
        tokio::time::timeout(Duration::from_secs(100_000), task)
            .await
            .expect("the schedule stops on cancel")
            .expect("schedule task");
        let mut calls = calls.lock().expect("lock").clone();
        calls.pop();
        calls
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_start_at_once_then_follow_the_period() {
        let period = Duration::from_secs(300);
        let calls = schedule_calls(period, vec![true; 5]).await;
        assert_eq!(calls.len(), 5);
        assert_eq!(calls[0], Duration::ZERO);
        for pair in calls.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= period.mul_f64(0.9) && gap <= period, "{gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refreshes_are_retried_sooner_then_the_period_resumes() {
        let period = Duration::from_secs(60);
        let calls =
            schedule_calls(period, vec![false, false, false, false, false, true, true]).await;
        let gaps: Vec<Duration> = calls.windows(2).map(|p| p[1] - p[0]).collect();
        assert_eq!(gaps.len(), 6);
        // Retries after 5, 10, 20, 40 s (each picked from its upper half), then capped by
        // the period; after the success, one period again.
        for (gap, ceiling) in gaps.iter().zip([5, 10, 20, 40, 60]) {
            let ceiling = Duration::from_secs(ceiling);
            assert!(*gap >= ceiling / 2 && *gap <= ceiling, "{gaps:?}");
        }
        assert!(
            gaps[5] >= period.mul_f64(0.9) && gaps[5] <= period,
            "{gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_a_refresh_in_flight() {
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let started = Instant::now();
        run_on_schedule(Duration::from_secs(300), &cancel, || async {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            true
        })
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
