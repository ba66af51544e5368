//! The stream reader: a dedicated connection for blocking reads, with the next reads sent
//! ahead while an earlier one's entries are parsed into the window.

use std::collections::VecDeque;
use std::panic;

use redis::RedisResult;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, StreamSettings};
use crate::ingest::entry::StreamEntry;
use crate::ingest::pace::Pace;
use crate::ingest::stream::{self, ReadMode};
use crate::ingest::window::{MAX_STUDY_BYTES, Window};
use crate::observe::health::Health;
use crate::observe::metrics::{self, Counter, RoundTrip};
use crate::redis_conn;

/// Reads sent ahead of the one whose entries are being parsed.
const READS_AHEAD: usize = 2;

/// Whether `window`, with `coming` more entries, still has room for another read: fewer
/// entries than `stream.coalesce_entries`, fewer than a batch of bad entries (held whole
/// until dead-lettered), and studies and series of less than [`MAX_STUDY_BYTES`].
fn has_room(settings: &Settings, window: &Window, coming: usize) -> bool {
    let batch = settings.stream.batch_size;
    window.len() + coming + batch <= settings.stream.coalesce_entries
        && window.bad().len() < batch
        && window.study_bytes() < MAX_STUDY_BYTES
}

/// The stream reader's dedicated connection, opened (and the group ensured) on demand.
pub struct Reader {
    con: Option<MultiplexedConnection>,
    /// Whether the last read brought oversize entries: the next one is then bounded.
    saw_oversize: bool,
    /// The ceiling on entries read per second, when set.
    pace: Option<Pace>,
}

impl Reader {
    /// A reader paced by `stream.max_events_per_sec`, connecting on its first read.
    pub fn new(settings: &StreamSettings) -> Self {
        Self {
            con: None,
            saw_oversize: false,
            pace: Pace::new(settings.max_events_per_sec),
        }
    }

    /// Reads into `window` until a read comes back short (the stream is drained for now),
    /// the window holds `stream.coalesce_entries` (or a batch of bad entries, or studies and
    /// series of [`MAX_STUDY_BYTES`]), or the daemon is stopping; only the first read waits.
    /// Up to [`READS_AHEAD`] further reads run in Redis while an earlier one's entries are
    /// parsed here; what they bring is added too, so that no entry read is left behind.
    pub async fn gather(
        &mut self,
        settings: &Settings,
        health: &Health,
        cancel: &CancellationToken,
        window: &mut Window,
    ) -> RedisResult<()> {
        self.wait_turn(cancel).await;
        let mut read = self.read(settings, health).await?;
        let mut ahead = VecDeque::new();
        let mut failed = None;
        let mut exhausted = false;
        loop {
            let batch = settings.stream.batch_size;
            exhausted |= read.len() < batch;
            // A failed read brings nothing, so no read is sent after it.
            while !exhausted
                && ahead.len() < READS_AHEAD
                && has_room(settings, window, read.len() + ahead.len() * batch)
                && !cancel.is_cancelled()
            {
                self.wait_turn(cancel).await;
                ahead.push_back(self.prefetch(settings));
                // Lets the read go out before the parsing below keeps this thread busy.
                tokio::task::yield_now().await;
            }
            for entry in read {
                window.add(entry);
            }
            let Some(next) = ahead.pop_front() else {
                return failed.map_or(Ok(()), Err);
            };
            let fetched = next
                .await
                .unwrap_or_else(|error| panic::resume_unwind(error.into_panic()));
            read = match self.record(fetched, health) {
                Ok(entries) => entries,
                Err(error) => {
                    failed.get_or_insert(error);
                    Vec::new()
                }
            };
            health.beat();
        }
    }

    /// Waits until `stream.max_events_per_sec` lets the next read start.
    async fn wait_turn(&self, cancel: &CancellationToken) {
        if let Some(pace) = &self.pace {
            pace.wait(cancel).await;
        }
    }

    /// A read that waits up to `stream.block_ms` for new entries.
    async fn read(
        &mut self,
        settings: &Settings,
        health: &Health,
    ) -> RedisResult<Vec<StreamEntry>> {
        let con = match &mut self.con {
            Some(con) => con,
            None => {
                let mut con =
                    redis_conn::blocking_connection(&settings.redis, settings.stream.block())
                        .await?;
                stream::ensure_group(&mut con, &settings.stream).await?;
                health.set_group_ready(true);
                self.con.insert(con)
            }
        };
        let read = stream::read_new(con, &settings.stream, ReadMode::Wait).await;
        self.record(read, health)
    }

    /// Starts a read that does not wait, on the connection of the read before.
    fn prefetch(&self, settings: &Settings) -> JoinHandle<RedisResult<Vec<StreamEntry>>> {
        let mut con = self.con.clone().expect("connected by the read before");
        let stream = settings.stream.clone();
        let mode = if self.saw_oversize {
            ReadMode::Bounded
        } else {
            ReadMode::Plain
        };
        tokio::spawn(async move { stream::read_new(&mut con, &stream, mode).await })
    }

    fn record(
        &mut self,
        read: RedisResult<Vec<StreamEntry>>,
        health: &Health,
    ) -> RedisResult<Vec<StreamEntry>> {
        metrics::round_trip(RoundTrip::Read);
        match &read {
            Ok(entries) => {
                metrics::add(Counter::EntriesRead, entries.len());
                if let Some(pace) = &mut self.pace {
                    pace.count(entries.len());
                }
                self.saw_oversize = entries.iter().any(|entry| entry.oversize.is_some());
            }
            Err(error) => {
                // Start afresh: a new connection, and the group created again if it was lost.
                self.con = None;
                if stream::is_missing_group(error) {
                    health.set_group_ready(false);
                    tracing::warn!("consumer group missing: creating it again");
                }
            }
        }
        read
    }
}
