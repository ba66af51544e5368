//! The series lock: `json_generating` = `"1"` taken only if absent, owned by a random token
//! kept beside it while it lives no longer than our lease, renewed while the build runs,
//! released only by its owner.

use std::sync::LazyLock;
use std::time::Duration;

use rand::Rng;
use redis::RedisResult;
use redis::aio::ConnectionLike;
use redis::{Script, ScriptInvocation};

use crate::ids::{TenantId, Uid};
use crate::keys;

/// The lease: far below the server's own 600 s, so a crashed builder blocks little.
pub const LOCK_LEASE: Duration = Duration::from_secs(30);

// Ownership is the token in the owner key *and* a lock that lives no longer than our lease.
// The server's webworker sets `json_generating` with a plain `SET "1" EX 600` (no NX) and
// deletes it blindly, so the owner key alone can outlive our lock: a lock key with more than
// a lease left (the server's 600 s), no expiry, or none at all is not ours any more, and is
// left alone.

/// KEYS: lock, owner. ARGV: token, lease ms. Returns 1 when taken.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
",
    )
});

/// KEYS: lock, owner. ARGV: token, lease ms. Returns 1 when still owned and extended.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ttl = redis.call('PTTL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] and ttl > 0 and ttl <= tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    return 1
end
return 0
",
    )
});

/// KEYS: lock, owner. ARGV: token, lease ms. Deletes our owner token, and the lock only
/// while it is still ours; returns 1 when the lock was ours and is now released.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and ttl <= tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
",
    )
});

/// KEYS: lock, owner, target. ARGV: token, lease ms, value, TTL in seconds. Sets the target
/// only while the lock is held by the token; returns 1 when set.
static SET_IF_OWNED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ttl = redis.call('PTTL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] and ttl > 0 and ttl <= tonumber(ARGV[2]) then
    redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
    return 1
end
return 0
",
    )
});

/// A held series lock. Release it with [`SeriesLock::release`]; dropping it only lets the
/// lease run out.
#[derive(Debug)]
pub struct SeriesLock {
    lock: String,
    owner: String,
    token: String,
}

impl SeriesLock {
    /// Takes the series lock if nobody holds it; `None` when held (by a worker or by the
    /// server itself).
    pub async fn acquire<C: ConnectionLike>(
        con: &mut C,
        tenant: &TenantId,
        series: &Uid,
    ) -> RedisResult<Option<Self>> {
        let token = format!("{:032x}", rand::rng().random::<u128>());
        let lock = Self {
            lock: keys::series_lock(tenant, series),
            owner: keys::series_lock_owner(tenant, series),
            token,
        };
        let taken: i64 = lock
            .script(&ACQUIRE)
            .arg(LOCK_LEASE.as_millis() as u64)
            .invoke_async(con)
            .await?;
        Ok((taken == 1).then_some(lock))
    }

    /// Extends the lease; false when the lock is no longer ours (it expired, was deleted or
    /// set again by the server, and may be someone else's): the build must then publish
    /// nothing.
    pub async fn renew<C: ConnectionLike>(&self, con: &mut C) -> RedisResult<bool> {
        let renewed: i64 = self
            .script(&RENEW)
            .arg(LOCK_LEASE.as_millis() as u64)
            .invoke_async(con)
            .await?;
        Ok(renewed == 1)
    }

    /// Sets `key` to `value` for `ttl_secs` only while the lock is still ours.
    pub async fn set_if_held<C: ConnectionLike>(
        &self,
        con: &mut C,
        key: &str,
        value: &[u8],
        ttl_secs: u64,
    ) -> RedisResult<bool> {
        let set: i64 = SET_IF_OWNED
            .key(&self.lock)
            .key(&self.owner)
            .key(key)
            .arg(&self.token)
            .arg(LOCK_LEASE.as_millis() as u64)
            .arg(value)
            .arg(ttl_secs)
            .invoke_async(con)
            .await?;
        Ok(set == 1)
    }

    /// Releases the lock if it is still ours; false when it had been lost (a lock key taken
    /// over by the server, deleted or evicted is left as it is).
    pub async fn release<C: ConnectionLike>(self, con: &mut C) -> RedisResult<bool> {
        let released: i64 = self
            .script(&RELEASE)
            .arg(LOCK_LEASE.as_millis() as u64)
            .invoke_async(con)
            .await?;
        Ok(released == 1)
    }

    /// How long the current holder's lock on the series has left: `None` when it is free
    /// now, [`Duration::MAX`] when it never expires.
    pub async fn held_for<C: ConnectionLike>(
        con: &mut C,
        tenant: &TenantId,
        series: &Uid,
    ) -> RedisResult<Option<Duration>> {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(keys::series_lock(tenant, series))
            .query_async(con)
            .await?;
        Ok(match ttl {
            -1 => Some(Duration::MAX),
            ms if ms >= 0 => Some(Duration::from_millis(ms as u64)),
            _ => None,
        })
    }

    /// A call of `script` with the lock's keys and token.
    fn script(&self, script: &'static Script) -> ScriptInvocation<'static> {
        let mut invocation = script.key(&self.lock);
        invocation.key(&self.owner).arg(&self.token);
        invocation
    }
}
