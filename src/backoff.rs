//! Capped exponential backoff with jitter, for retrying infrastructure faults.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// The first delay after a failure.
const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// Delays that double after each failure up to a cap, each picked at random from its
/// upper half so that replicas do not retry in step.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = INITIAL_DELAY
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_DELAY);
        self.failures = self.failures.saturating_add(1);
        rand::rng().random_range(ceiling / 2..=ceiling)
    }

    /// Waits for the next delay, or until `cancel` fires.
    pub async fn wait(&mut self, cancel: &CancellationToken) {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => {}
        }
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_capped() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= INITIAL_DELAY / 2 && first <= INITIAL_DELAY);
        for _ in 0..40 {
            assert!(backoff.next_delay() <= MAX_DELAY);
        }
        assert!(backoff.next_delay() >= MAX_DELAY / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL_DELAY);
    }
}
