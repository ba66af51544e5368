//! An optional ceiling on how fast entries are read (`stream.max_events_per_sec`): each
//! read moves the time the next one may start by its entries' share of a second. Time
//! spent idle is not saved up, so a backlog is never read faster than the ceiling.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When the next read may start.
#[derive(Debug)]
pub struct Pace {
    per_entry: Duration,
    next_read: Instant,
}

impl Pace {
    /// A pace of `per_sec` entries a second at most; `None` reads as fast as it can.
    pub fn new(per_sec: Option<u32>) -> Option<Self> {
        let per_sec = per_sec.filter(|&rate| rate > 0)?;
        Some(Self {
            per_entry: Duration::from_secs(1) / per_sec,
            next_read: Instant::now(),
        })
    }

    /// Counts a read of `entries`: the next read waits their share of a second more.
    pub fn count(&mut self, entries: usize) {
        let share = self
            .per_entry
            .saturating_mul(u32::try_from(entries).unwrap_or(u32::MAX));
        self.next_read = self.next_read.max(Instant::now()) + share;
    }

    /// Waits until the next read may start, or the daemon stops.
    pub async fn wait(&self, cancel: &CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep_until(self.next_read) => {}
            () = cancel.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reads_wait_for_their_share_of_a_second() {
        let cancel = CancellationToken::new();
        let mut pace = Pace::new(Some(1_000)).expect("a ceiling");
        let started = Instant::now();
        pace.wait(&cancel).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the first read goes at once"
        );
        pace.count(100);
        pace.wait(&cancel).await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        pace.count(250);
        pace.wait(&cancel).await;
        assert_eq!(started.elapsed(), Duration::from_millis(350));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_is_not_saved_up() {
        let cancel = CancellationToken::new();
        let mut pace = Pace::new(Some(100)).expect("a ceiling");
        tokio::time::advance(Duration::from_secs(60)).await;
        let idle_until = Instant::now();
        pace.count(100);
        pace.wait(&cancel).await;
        assert_eq!(idle_until.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait() {
        let cancel = CancellationToken::new();
        let mut pace = Pace::new(Some(1)).expect("a ceiling");
        pace.count(3_600);
        cancel.cancel();
        let started = Instant::now();
        pace.wait(&cancel).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn no_ceiling_without_a_rate() {
        assert!(Pace::new(None).is_none());
        assert!(Pace::new(Some(0)).is_none());
    }
}
