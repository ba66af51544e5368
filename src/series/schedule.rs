//! The series build schedule, kept in Redis so that it survives any replica: a sorted set
//! of due times (ms, Redis clock) and the time of each series' first pending event. A
//! claimed series is leased by moving its due time into the future; an event during the
//! build moves it again, so the series is built once more afterwards.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisResult};

use crate::ids::{TenantId, Uid};
use crate::keys;
use crate::lua;

/// The schedule keys live this long after their last write (an idle schedule is empty).
const SCHEDULE_TTL_MS: u64 = 7 * 24 * 3_600 * 1_000;

/// Marks a series pending: due after `quiet_ms` of silence, at the latest `max_delay_ms`
/// after its first pending event. KEYS: due, first. ARGV: member, quiet, max delay, TTL.
static SCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local first = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if not first then
    first = now
    redis.call('HSET', KEYS[2], ARGV[1], now)
end
local due = math.min(now + tonumber(ARGV[2]), first + tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], due, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return due
",
    )
});

/// Leases up to ARGV[1] due series for ARGV[2] ms. KEYS: due. Returns {lease, members}.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local lease = now + tonumber(ARGV[2])
for _, member in ipairs(members) do
    redis.call('ZADD', KEYS[1], lease, member)
end
return {lease, members}
",
    )
});

/// Moves a leased series to now + ARGV[3] ms if it still holds our lease ARGV[2] (no event
/// came since); returns the new score, or false. KEYS: due. ARGV: member, lease, delay.
static MOVE_LEASED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) ~= tonumber(ARGV[2]) then
    return false
end
local t = redis.call('TIME')
local score = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], score, ARGV[1])
return score
",
    )
});

/// Moves a leased series that could not be built (a fault, a build past its deadline) to
/// as long from now as it has been waiting since its first pending event, within
/// [ARGV[3], ARGV[4]] ms and scaled by ARGV[5] per mille (jitter), if it still holds our
/// lease ARGV[2]: each retry waits about twice as long as the one before. Returns the new
/// score, or false. KEYS: due, first. ARGV: member, lease, min, max, jitter.
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) ~= tonumber(ARGV[2]) then
    return false
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local first = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or now
local delay = math.min(math.max(now - first, tonumber(ARGV[3])), tonumber(ARGV[4]))
local score = now + math.floor(delay * tonumber(ARGV[5]) / 1000)
redis.call('ZADD', KEYS[1], score, ARGV[1])
return score
",
    )
});

/// Removes a built series unless an event rescheduled it during the build; then its
/// first-event time restarts now. KEYS: due, first. ARGV: member, lease. Returns 1 or 0.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) == tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('HDEL', KEYS[2], ARGV[1])
    return 1
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], ARGV[1], t[1] * 1000 + math.floor(t[2] / 1000))
return 0
",
    )
});

/// One series, as named in the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesRef {
    /// Tenant.
    pub tenant: TenantId,
    /// Study Instance UID.
    pub study: Uid,
    /// Series Instance UID.
    pub series: Uid,
}

impl SeriesRef {
    /// The schedule member: `tenant/study/series` (no id can hold a `/`).
    pub fn member(&self) -> String {
        format!("{}/{}/{}", self.tenant, self.study, self.series)
    }

    /// Parses a schedule member, validating every id again.
    pub fn parse_member(member: &str) -> Option<Self> {
        let mut parts = member.split('/');
        let series = SeriesRef {
            tenant: TenantId::parse(parts.next()?).ok()?,
            study: Uid::parse(parts.next()?).ok()?,
            series: Uid::parse(parts.next()?).ok()?,
        };
        parts.next().is_none().then_some(series)
    }
}

/// Where a group's schedule lives, and its timing.
#[derive(Debug, Clone)]
pub struct Schedule {
    due: String,
    first: String,
    quiet_ms: u64,
    max_delay_ms: u64,
}

/// Series leased by one claim.
#[derive(Debug, Default)]
pub struct Leased {
    /// The lease (the due time they now hold), needed to renew, defer or complete them.
    pub lease: i64,
    /// The series; members that do not parse are dropped from the schedule.
    pub series: Vec<SeriesRef>,
}

impl Schedule {
    /// The schedule of consumer group `group`.
    pub fn new(group: &str, quiet_ms: u64, max_delay_ms: u64) -> Self {
        Self {
            due: keys::series_schedule(group),
            first: keys::series_first_event(group),
            quiet_ms,
            max_delay_ms,
        }
    }

    /// Adds to `pipe` the marking of `series` as pending (durable once the pipe succeeds).
    pub fn add_pending(&self, pipe: &mut Pipeline, series: &SeriesRef) {
        lua::call(pipe, &SCHEDULE)
            .arg(2)
            .arg(&self.due)
            .arg(&self.first)
            .arg(series.member())
            .arg(self.quiet_ms)
            .arg(self.max_delay_ms)
            .arg(SCHEDULE_TTL_MS)
            .ignore();
    }

    /// Leases up to `max` due series for `lease_ms`.
    pub async fn claim<C: ConnectionLike>(
        &self,
        con: &mut C,
        max: usize,
        lease_ms: u64,
    ) -> RedisResult<Leased> {
        let (lease, members): (i64, Vec<String>) = CLAIM
            .key(&self.due)
            .arg(max)
            .arg(lease_ms)
            .invoke_async(con)
            .await?;
        let mut series = Vec::with_capacity(members.len());
        for member in members {
            match SeriesRef::parse_member(&member) {
                Some(parsed) => series.push(parsed),
                None => {
                    tracing::warn!(%member, "malformed schedule member: dropped");
                    redis::cmd("ZREM")
                        .arg(&self.due)
                        .arg(&member)
                        .query_async::<()>(con)
                        .await?;
                }
            }
        }
        Ok(Leased { lease, series })
    }

    /// Moves a series still holding `lease` to `delay_ms` from now: a renewed lease while
    /// building, or a retry later when another worker holds its lock. Returns the new lease,
    /// or `None` when an event rescheduled it meanwhile.
    pub async fn move_leased<C: ConnectionLike>(
        &self,
        con: &mut C,
        series: &SeriesRef,
        lease: i64,
        delay_ms: u64,
    ) -> RedisResult<Option<i64>> {
        MOVE_LEASED
            .key(&self.due)
            .arg(series.member())
            .arg(lease)
            .arg(delay_ms)
            .invoke_async(con)
            .await
    }

    /// Moves a series still holding `lease` to a later retry, backing off: as long from now
    /// as it has waited since its first pending event, between `min_ms` and `max_ms`, then
    /// scaled by `jitter_permille`. Returns the new score, or `None` when an event
    /// rescheduled it meanwhile (it is due anyway).
    pub async fn retry_later<C: ConnectionLike>(
        &self,
        con: &mut C,
        series: &SeriesRef,
        lease: i64,
        (min_ms, max_ms): (u64, u64),
        jitter_permille: u64,
    ) -> RedisResult<Option<i64>> {
        RETRY
            .key(&self.due)
            .key(&self.first)
            .arg(series.member())
            .arg(lease)
            .arg(min_ms)
            .arg(max_ms)
            .arg(jitter_permille)
            .invoke_async(con)
            .await
    }

    /// Takes a built series off the schedule unless an event rescheduled it during the
    /// build; returns whether it was taken off.
    pub async fn complete<C: ConnectionLike>(
        &self,
        con: &mut C,
        series: &SeriesRef,
        lease: i64,
    ) -> RedisResult<bool> {
        COMPLETE
            .key(&self.due)
            .key(&self.first)
            .arg(series.member())
            .arg(lease)
            .invoke_async(con)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_bad_ones_are_refused() {
        let series = SeriesRef {
            tenant: TenantId::parse("t-1").expect("tenant"),
            study: Uid::parse("1.2").expect("uid"),
            series: Uid::parse("1.2.3").expect("uid"),
        };
        assert_eq!(series.member(), "t-1/1.2/1.2.3");
        assert_eq!(
            SeriesRef::parse_member("t-1/1.2/1.2.3"),
            Some(series.clone())
        );
        let spaced = SeriesRef {
            tenant: TenantId::parse("Hôpital: B").expect("tenant"),
            ..series.clone()
        };
        assert_eq!(SeriesRef::parse_member(&spaced.member()), Some(spaced));
        for bad in ["t/1.2", "t/1.2/1.2.3/4", "../1/2", "t/1/2a", ""] {
            assert_eq!(SeriesRef::parse_member(bad), None, "{bad}");
        }
    }
}
