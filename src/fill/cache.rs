//! Writes to the server's cache keys, each one atomic and never older than what is there.

use std::sync::LazyLock;

use rand::Rng;
use redis::Pipeline;
use redis::Script;

use crate::ids::{TenantId, Uid};
use crate::keys;
use crate::lua;

/// Sets the study key, its version and the digest of what it holds, unless a newer version
/// is already there, and deletes the negative flag in the same step (the study exists
/// either way). KEYS: study, version, negative flag, digest. ARGV: rows JSON, version, TTL
/// in seconds. Returns 1 when written, 0 when a newer snapshot was already cached.
static FILL_STUDY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = tonumber(redis.call('GET', KEYS[2]))
redis.call('DEL', KEYS[3])
if current and current > tonumber(ARGV[2]) then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('SET', KEYS[4], redis.sha1hex(ARGV[1]), 'EX', ARGV[3])
return 1
",
    )
});

/// Deletes the study key and its digest and leaves its version as a tombstone, unless a
/// newer version is cached (the study was stored again after the snapshot that found it
/// gone). KEYS: study, version, digest. ARGV: version, TTL in seconds. Returns 1 when
/// removed, 0 when stale.
static REMOVE_STUDY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = tonumber(redis.call('GET', KEYS[2]))
if current and current > tonumber(ARGV[1]) then
    return 0
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
",
    )
});

/// Adds to `pipe` the atomic fill of one study key; its reply is 1 (written) or 0 (stale).
pub fn add_fill_study(
    pipe: &mut Pipeline,
    tenant: &TenantId,
    study: &Uid,
    rows_json: &str,
    version: i64,
    ttl_secs: u64,
) {
    lua::call(pipe, &FILL_STUDY)
        .arg(4)
        .arg(keys::study_metadata(tenant, study))
        .arg(keys::study_version(tenant, study))
        .arg(keys::study_negative_flag(tenant, study))
        .arg(keys::study_digest(tenant, study))
        .arg(rows_json)
        .arg(version)
        .arg(ttl_secs);
}

/// Adds to `pipe` the atomic removal of a deleted study's key; its reply is 1 (removed) or
/// 0 (a newer snapshot was cached). The version stays behind for `ttl_secs` so that an
/// older fill landing later cannot bring the study back.
pub fn add_remove_study(
    pipe: &mut Pipeline,
    tenant: &TenantId,
    study: &Uid,
    version: i64,
    ttl_secs: u64,
) {
    lua::call(pipe, &REMOVE_STUDY)
        .arg(3)
        .arg(keys::study_metadata(tenant, study))
        .arg(keys::study_version(tenant, study))
        .arg(keys::study_digest(tenant, study))
        .arg(version)
        .arg(ttl_secs);
}

/// The TTL shortened by up to 5 %, so keys filled together do not all expire together.
pub fn jittered_ttl(ttl_secs: u64) -> u64 {
    ttl_secs - rand::rng().random_range(0..=ttl_secs / 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_shortens() {
        for _ in 0..1_000 {
            let ttl = jittered_ttl(7_200);
            assert!((6_840..=7_200).contains(&ttl), "{ttl}");
        }
        assert_eq!(jittered_ttl(1), 1);
    }
}
