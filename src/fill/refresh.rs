//! One database snapshot of some studies turned into their cache writes: the fill code
//! that the daemon and `warm` share.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisResult, Value};
use sqlx::PgPool;

use crate::config::Settings;
use crate::db;
use crate::fill::{cache, query, study};
use crate::ids::{TenantId, Uid};
use crate::ingest::event::EventKind;
use crate::lua;
use crate::observe::metrics::{self, RoundTrip};
use crate::series::schedule::{Schedule, SeriesRef};

/// One study to plan: its ids, what its last event asks for, and the series its events
/// named (each must be among the rows before those events are done).
pub type Request<'a> = (&'a TenantId, &'a Uid, EventKind, &'a BTreeSet<Uid>);

/// What the snapshot says to do with one study's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The study has rows: write them. `missing` are the named series that are not among
    /// them yet (published before their commit): their events are not done.
    Fill {
        /// Named series without a row.
        missing: Vec<Uid>,
    },
    /// A deleted study without rows: remove its key.
    Remove,
    /// A stored study without rows (not committed yet, or never): nothing to write.
    Missing,
}

/// What the scripts of a refresh did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Study keys written.
    pub filled: usize,
    /// Study keys removed.
    pub removed: usize,
    /// Writes refused because a newer snapshot was already cached.
    pub stale: usize,
}

/// Reads every study in one query and adds its write to `pipe`; returns one plan per
/// study, in order. A deleted study with rows was stored again, so the rows win. With
/// `all_series`, every series of each filled study is also scheduled for its document.
pub async fn plan(
    db: &PgPool,
    settings: &Settings,
    pipe: &mut Pipeline,
    studies: &[Request<'_>],
    all_series: Option<&Schedule>,
) -> Result<Vec<Plan>, sqlx::Error> {
    if studies.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(&TenantId, &Uid)> = studies.iter().map(|(t, s, _, _)| (*t, *s)).collect();
    let started = Instant::now();
    let snapshot = db::run(&settings.database, db, async |con| {
        query::fetch_studies(con, &keys).await
    })
    .await?;
    metrics::db_query(started.elapsed());
    let rows_by_study: HashMap<(&str, &str), &[study::DicomStateMeta]> =
        study::by_study(&snapshot.rows)
            .map(|rows| {
                (
                    (rows[0].tenant_id.as_str(), rows[0].study_uid.as_str()),
                    rows,
                )
            })
            .collect();
    Ok(studies
        .iter()
        .map(|(tenant, study_uid, kind, named)| {
            let ttl = cache::jittered_ttl(settings.cache.study_ttl_secs);
            match (rows_by_study.get(&(tenant.as_str(), study_uid.as_str())), kind) {
                (Some(rows), _) => {
                    tracing::debug!(%tenant, study_uid = %study_uid, series = rows.len(), "filling study");
                    cache::add_fill_study(pipe, tenant, study_uid, &study::encode(rows), snapshot.version, ttl);
                    if let Some(schedule) = all_series {
                        for series in rows.iter().filter_map(|row| Uid::parse(&row.series_uid).ok()) {
                            let series = SeriesRef { tenant: (*tenant).clone(), study: (*study_uid).clone(), series };
                            schedule.add_pending(pipe, &series);
                        }
                    }
                    let missing = named
                        .iter()
                        .filter(|series| !rows.iter().any(|row| row.series_uid == series.as_str()))
                        .cloned()
                        .collect();
                    Plan::Fill { missing }
                }
                (None, EventKind::Deleted) => {
                    cache::add_remove_study(pipe, tenant, study_uid, snapshot.version, ttl);
                    Plan::Remove
                }
                (None, EventKind::Stored) => Plan::Missing,
            }
        })
        .collect())
}

/// Sends `pipe` in one round trip and counts, from the scripts' replies, what the
/// `plans` it was built with did.
pub async fn send<C: ConnectionLike>(
    con: &mut C,
    pipe: &Pipeline,
    plans: &[Plan],
) -> RedisResult<Written> {
    let mut written = Written::default();
    if pipe.is_empty() {
        return Ok(written);
    }
    let replies: Vec<Value> = lua::query(con, pipe).await?;
    metrics::round_trip(RoundTrip::Write);
    // Only the scripts reply (everything else in the pipe is ignored), in plan order.
    let scripts = plans.iter().filter(|plan| **plan != Plan::Missing);
    for (plan, reply) in scripts.zip(replies) {
        match (plan, reply) {
            (Plan::Fill { .. }, Value::Int(1)) => written.filled += 1,
            (Plan::Remove, Value::Int(1)) => written.removed += 1,
            _ => written.stale += 1,
        }
    }
    Ok(written)
}
