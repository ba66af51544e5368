//! Stream reads whose replies are bounded whatever the stream holds: the stream command
//! runs inside a Lua script that cuts every oversize entry down before it is sent to us
//! (its first [`MAX_FIELDS`] fields, each name and value to its first [`KEEP_BYTES`]) and
//! adds its original size. A valid entry comes back whole, so a reply of `n` entries holds
//! at most `n` x 128 KiB, and an entry that is refused for its size is never held whole.
//!
//! Scripts are sent by hash (EVALSHA) and loaded when Redis answers NOSCRIPT.

use std::sync::LazyLock;

use redis::{ErrorKind, RedisError, Script, ServerErrorKind};

use crate::ingest::event::{MAX_ENTRY_BYTES, MAX_FIELDS, MAX_VALUE_BYTES};

/// Bytes kept of each name and value of an oversize entry (for its dead letter).
pub const KEEP_BYTES: usize = 1024;

/// The Lua function every bounded read ends with. An entry is oversize by the rules of
/// [`crate::ingest::event`]; it is then replaced by `[id, kept fields, [bytes, fields,
/// index of the first value over the value limit or 0]]`.
const BOUND: &str = r"
local function bound(entries)
    for _, entry in ipairs(entries) do
        local fields = type(entry) == 'table' and entry[2]
        if fields then
            local total, large = 0, 0
            for i = 1, #fields do
                local size = #fields[i]
                total = total + size
                if large == 0 and i % 2 == 0 and size > MAX_VALUE then
                    large = i / 2
                end
            end
            if large > 0 or total > MAX_ENTRY or #fields > 2 * MAX_FIELDS then
                local kept = {}
                for i = 1, math.min(#fields, 2 * MAX_FIELDS) do
                    kept[i] = string.sub(fields[i], 1, KEEP)
                end
                entry[2] = kept
                entry[3] = {total, #fields / 2, large}
            end
        end
    end
    return entries
end
";

/// Up to ARGV[3] new entries for consumer ARGV[2] of group ARGV[1] (XREADGROUP, no
/// waiting), bounded. KEYS: the stream.
const READ_NEW: &str = r"
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
    'STREAMS', KEYS[1], '>')
if not reply then
    return {}
end
return bound(reply[1][2])
";

/// XAUTOCLAIM with its entries bounded. KEYS: the stream. ARGV: group, consumer, minimum
/// idle time, cursor, count.
const CLAIM: &str = r"
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
    'COUNT', ARGV[5])
reply[2] = bound(reply[2])
return reply
";

/// The entries with the ids in ARGV, bounded, in ARGV's order; an id no longer in the
/// stream gives nil. KEYS: the stream.
const BY_ID: &str = r"
local found = {}
for i = 1, #ARGV do
    found[i] = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1] or false
end
return bound(found)
";

/// A script made of the bound function, its limits, and `body`.
fn bounded(body: &str) -> Script {
    let limits = format!(
        "local MAX_FIELDS, MAX_ENTRY, MAX_VALUE, KEEP = {MAX_FIELDS}, {MAX_ENTRY_BYTES}, \
         {MAX_VALUE_BYTES}, {KEEP_BYTES}\n"
    );
    Script::new(&format!("{limits}{BOUND}{body}"))
}

/// New entries, bounded; see [`READ_NEW`].
pub static READ_NEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| bounded(READ_NEW));
/// Idle entries claimed, bounded; see [`CLAIM`].
pub static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| bounded(CLAIM));
/// Entries by id, bounded; see [`BY_ID`].
pub static BY_ID_SCRIPT: LazyLock<Script> = LazyLock::new(|| bounded(BY_ID));

/// Redis 7.0 reports a command refused by the ACL inside a script as a plain `ERR` that
/// names no command: this names `command`, the one stream command a bounded read runs, the
/// way Redis' own NOPERM does outside scripts.
pub fn name_denied(error: RedisError, command: &str) -> RedisError {
    if !error.to_string().contains("can't run this command") {
        return error;
    }
    RedisError::from((
        ErrorKind::Server(ServerErrorKind::NoPerm),
        "NOPERM",
        format!(
            "this user has no permissions to run the '{command}' command (in a script): {error}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acl_denial_in_a_script_names_the_command() {
        let denied = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "The user executing the script can't run this command or subcommand script: 9b69…"
                .to_owned(),
        ));
        let named = name_denied(denied, "xautoclaim").to_string();
        assert!(
            named.contains("NOPERM") && named.contains("'xautoclaim'"),
            "{named}"
        );
        let other = RedisError::from((ErrorKind::Io, "broken pipe", String::new()));
        let kept = name_denied(other, "xrange").to_string();
        assert!(
            kept.starts_with("broken pipe") && !kept.contains("NOPERM"),
            "{kept}"
        );
    }
}
