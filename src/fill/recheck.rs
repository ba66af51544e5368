//! The second look at a filled study. Two writes of the server can undo a fill just after
//! it lands: its negative flag (a database error while the daemon filled), and its own
//! plain `SET` of the study key from a read that began before the ingest commit. Each filled
//! study is looked at again `cache.recheck_ms` later, then 5 and 30 times that: a flag is
//! deleted while the study key exists, and a study key that no longer holds what the daemon
//! wrote (its digest differs, no newer fill came since) is filled again from the database.
//!
//! Looks are kept per study, so a study filled again restarts its series of looks instead
//! of queueing another; the number of studies kept is bounded.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Pipeline;
use redis::Script;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::fill::refresh::{self, Request};
use crate::ids::{TenantId, Uid};
use crate::ingest::event::EventKind;
use crate::keys;
use crate::lua;
use crate::observe::metrics::{self, RecheckOutcome};

/// The looks after a fill, as multiples of `cache.recheck_ms` (2 s, 10 s, 60 s by default).
const LOOKS: [u32; 3] = [1, 5, 30];
/// Studies waiting for a look; a fill beyond this gets none (the flag's own 300 s and the
/// key's TTL are then the bound) rather than memory growing.
const MAX_STUDIES: usize = 100_000;
/// Studies looked at in one pipeline.
const LOOKS_PER_ROUND: usize = 500;

/// Deletes the negative flag when the study key exists, and tells whether the study key
/// still holds what the daemon wrote.
/// KEYS: study, digest, negative flag. Returns {flag deleted (0/1), 0 same / 1 changed /
/// 2 no study key}.
static LOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local value = redis.call('GET', KEYS[1])
if not value then
    return {0, 2}
end
local cleared = redis.call('DEL', KEYS[3])
local digest = redis.call('GET', KEYS[2])
if digest == redis.sha1hex(value) then
    return {cleared, 0}
end
return {cleared, 1}
",
    )
});

type StudyKey = (TenantId, Uid);

/// The studies waiting for a look, by due time, with the index of their next look.
#[derive(Default)]
struct Waiting {
    due: BTreeSet<(Instant, StudyKey)>,
    next: HashMap<StudyKey, (Instant, usize)>,
}

impl Waiting {
    /// Schedules look `look` of `study` at `at`, replacing the one it had.
    fn put(&mut self, study: StudyKey, at: Instant, look: usize) -> bool {
        if let Some((old, _)) = self.next.get(&study) {
            self.due.remove(&(*old, study.clone()));
        } else if self.next.len() >= MAX_STUDIES {
            return false;
        }
        self.due.insert((at, study.clone()));
        self.next.insert(study, (at, look));
        true
    }

    /// Takes up to `max` studies due by `now`, with the index of their look.
    fn take_due(&mut self, now: Instant, max: usize) -> Vec<(StudyKey, usize)> {
        let mut taken = Vec::new();
        while taken.len() < max {
            match self.due.first() {
                Some((at, _)) if *at <= now => {}
                _ => break,
            }
            let (_, study) = self.due.pop_first().expect("looked at first");
            let (_, look) = self.next.remove(&study).expect("indexed together");
            taken.push((study, look));
        }
        taken
    }

    fn first_due(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }
}

/// Where fills are reported for their second looks.
#[derive(Clone)]
pub struct Rechecks {
    waiting: Arc<Mutex<Waiting>>,
    changed: Arc<Notify>,
    base: Duration,
}

impl Rechecks {
    /// Starts the task that looks at filled studies until `cancel` fires.
    pub fn spawn(
        settings: Arc<Settings>,
        redis: deadpool_redis::Pool,
        db: PgPool,
        cancel: CancellationToken,
    ) -> Self {
        let rechecks = Self {
            waiting: Arc::default(),
            changed: Arc::default(),
            base: settings.cache.recheck(),
        };
        tokio::spawn(rechecks.clone().run(settings, redis, db, cancel));
        rechecks
    }

    /// Schedules the looks at `studies`, just filled.
    pub fn schedule(&self, studies: Vec<StudyKey>) {
        self.schedule_look(studies, 0);
    }

    fn schedule_look(&self, studies: impl IntoIterator<Item = StudyKey>, look: usize) {
        let Some(factor) = LOOKS.get(look) else {
            return;
        };
        let at = Instant::now() + self.base * *factor;
        let mut waiting = self.waiting.lock().expect("recheck lock");
        let mut skipped = 0;
        for study in studies {
            if !waiting.put(study, at, look) {
                skipped += 1;
            }
        }
        drop(waiting);
        if skipped > 0 {
            tracing::debug!(studies = skipped, "recheck list full: no second look");
            metrics::rechecked(RecheckOutcome::Skipped, skipped);
        }
        self.changed.notify_one();
    }

    async fn run(
        self,
        settings: Arc<Settings>,
        redis: deadpool_redis::Pool,
        db: PgPool,
        cancel: CancellationToken,
    ) {
        loop {
            let first_due = self.waiting.lock().expect("recheck lock").first_due();
            let wake = async {
                match first_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wake => {}
                () = self.changed.notified() => continue,
                () = cancel.cancelled() => return,
            }
            let studies = self
                .waiting
                .lock()
                .expect("recheck lock")
                .take_due(Instant::now(), LOOKS_PER_ROUND);
            match look(&settings, &redis, &db, &studies).await {
                Ok(refilled) => {
                    for (study, look) in studies {
                        // A refilled study starts its looks again; the others go on.
                        let next = if refilled.contains(&study) {
                            0
                        } else {
                            look + 1
                        };
                        self.schedule_look([study], next);
                    }
                }
                // The flag and the key then live out their TTLs; the next fill looks again.
                Err(error) => tracing::debug!(%error, "second look failed"),
            }
        }
    }
}

/// Looks at `studies` in one round trip and fills again, in one query and one round trip,
/// those whose key no longer holds what the daemon wrote; returns them.
async fn look(
    settings: &Settings,
    redis: &deadpool_redis::Pool,
    db: &PgPool,
    studies: &[(StudyKey, usize)],
) -> anyhow::Result<Vec<StudyKey>> {
    let mut pipe = redis::pipe();
    for ((tenant, study), _) in studies {
        lua::call(&mut pipe, &LOOK)
            .arg(3)
            .arg(keys::study_metadata(tenant, study))
            .arg(keys::study_digest(tenant, study))
            .arg(keys::study_negative_flag(tenant, study));
    }
    let mut con = redis.get().await?;
    let replies: Vec<(i64, i64)> = lua::query(&mut *con, &pipe).await?;
    let mut changed = Vec::new();
    for (((tenant, study), _), (cleared, state)) in studies.iter().zip(replies) {
        if cleared > 0 {
            tracing::info!(%tenant, study_uid = %study, "negative flag set after the fill: removed");
            metrics::rechecked(RecheckOutcome::FlagCleared, 1);
        }
        if state == 1 {
            changed.push((tenant.clone(), study.clone()));
        }
    }
    if changed.is_empty() {
        return Ok(changed);
    }
    refill(settings, db, &mut *con, &changed).await?;
    Ok(changed)
}

/// Fills `studies` again from a new snapshot: a newer fill that landed meanwhile wins.
async fn refill<C: redis::aio::ConnectionLike>(
    settings: &Settings,
    db: &PgPool,
    con: &mut C,
    studies: &[StudyKey],
) -> anyhow::Result<()> {
    let none = BTreeSet::new();
    let requests: Vec<Request> = studies
        .iter()
        .map(|(tenant, study)| (tenant, study, EventKind::Stored, &none))
        .collect();
    let mut pipe = Pipeline::new();
    let plans = refresh::plan(db, settings, &mut pipe, &requests, None).await?;
    let written = refresh::send(con, &pipe, &plans).await?;
    for (tenant, study) in studies {
        tracing::debug!(%tenant, study_uid = %study, "study key overwritten after the fill");
    }
    // Per study only the count is known: a fill refused because a newer one is cached is
    // not a fill.
    tracing::info!(
        studies = studies.len(),
        filled_again = written.filled,
        newer_cached = written.stale,
        "study keys overwritten after their fill: filled again from a new snapshot"
    );
    metrics::rechecked(RecheckOutcome::Refilled, written.filled);
    Ok(())
}
