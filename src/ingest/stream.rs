//! The consumer group: ensure it, read new entries, acknowledge, dead-letter.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisError, RedisResult, Value};

use crate::config::StreamSettings;
use crate::ingest::bounded::{self, BY_ID_SCRIPT, CLAIM_SCRIPT, KEEP_BYTES, READ_NEW_SCRIPT};
use crate::ingest::entry::{
    Claimed, Delivered, EntryId, StreamEntry, parse_autoclaim_reply, parse_entries,
    parse_pending_counts, parse_read_reply,
};
use crate::ingest::event;
use crate::lua;

/// Creates the consumer group (and the stream) unless it exists.
///
/// A new group starts at the beginning of the stream, so events published before the
/// first daemon started are not lost.
pub async fn ensure_group<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&settings.key)
        .arg(&settings.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// True when the error says the stream or the group is gone (so it must be re-created).
pub fn is_missing_group(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// How [`read_new`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Up to `batch_size` entries as they are, waiting up to `block_ms` for the first.
    Wait,
    /// Up to `batch_size` entries as they are: the fast path.
    Plain,
    /// Up to `batch_size` entries, each cut down inside Redis when oversize: for when
    /// oversize entries were just seen (a script costs Redis about twice the time an entry).
    Bounded,
}

/// Reads entries never delivered to this group. An oversize entry that a plain read
/// brought is dropped at once and read again cut down (see the bounded reads), so
/// that no window holds it whole.
pub async fn read_new<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    mode: ReadMode,
) -> RedisResult<Vec<StreamEntry>> {
    let (count, block) = match mode {
        ReadMode::Wait => (settings.batch_size, Some(settings.block_ms)),
        ReadMode::Plain => (settings.batch_size, None),
        ReadMode::Bounded => {
            let reply: Value = READ_NEW_SCRIPT
                .key(&settings.key)
                .arg(&settings.group)
                .arg(&settings.consumer)
                .arg(settings.batch_size)
                .invoke_async(con)
                .await
                .map_err(|error| bounded::name_denied(error, "xreadgroup"))?;
            return parse_entries(reply);
        }
    };
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block_ms) = block {
        cmd.arg("BLOCK").arg(block_ms);
    }
    let reply: Value = cmd
        .arg("STREAMS")
        .arg(&settings.key)
        .arg(">")
        .query_async(con)
        .await?;
    let entries = parse_read_reply(reply)?;
    cut_oversize(con, settings, entries).await
}

/// Replaces the oversize entries of `entries` by their cut-down copies, read by id.
async fn cut_oversize<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    mut entries: Vec<StreamEntry>,
) -> RedisResult<Vec<StreamEntry>> {
    let mut oversize = Vec::new();
    for (index, entry) in entries.iter_mut().enumerate() {
        if event::is_oversize(&entry.fields) {
            // Freed before anything else is read.
            entry.fields = Vec::new();
            oversize.push(index);
        }
    }
    if oversize.is_empty() {
        return Ok(entries);
    }
    let delivered: Vec<Delivered> = oversize
        .iter()
        .map(|&index| Delivered {
            id: entries[index].id,
            deliveries: entries[index].deliveries,
        })
        .collect();
    let cut = read_cut_down(con, settings, &delivered).await?;
    for (index, entry) in oversize.into_iter().zip(cut) {
        entries[index] = entry;
    }
    Ok(entries)
}

/// Claims up to `batch_size` idle entries with XAUTOCLAIM, from `cursor` on (bounded, as
/// [`read_new`]), and reads their delivery counts.
pub async fn claim_idle<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    cursor: &str,
) -> RedisResult<Claimed> {
    let reply: Value = CLAIM_SCRIPT
        .key(&settings.key)
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg(settings.claim_idle_ms)
        .arg(cursor)
        .arg(settings.batch_size)
        .invoke_async(con)
        .await
        .map_err(|error| bounded::name_denied(error, "xautoclaim"))?;
    let mut claimed = parse_autoclaim_reply(reply)?;
    if claimed.entries.is_empty() {
        return Ok(claimed);
    }
    // One XPENDING per id: a range would also return this consumer's other pending
    // entries between the first and the last, and cut off some of the claimed ones.
    let mut pipe = redis::pipe();
    for entry in &claimed.entries {
        pipe.cmd("XPENDING")
            .arg(&settings.key)
            .arg(&settings.group)
            .arg(entry.id)
            .arg(entry.id)
            .arg(1)
            .arg(&settings.consumer);
    }
    let replies: Vec<Value> = pipe.query_async(con).await?;
    for (entry, reply) in claimed.entries.iter_mut().zip(replies) {
        // An entry acknowledged meanwhile is missing here: count it as claimed once more.
        entry.deliveries = parse_pending_counts(reply)?
            .get(&entry.id)
            .copied()
            .unwrap_or(entry.deliveries + 1);
    }
    Ok(claimed)
}

/// Deletes, atomically, every other consumer of the group that owns no pending entry and
/// has been idle longer than `idle_ms`; returns how many were deleted.
///
/// Deleting a consumer drops its pending entries, so the check and the deletion run in
/// one script: no entry can be delivered to it in between.
pub async fn delete_idle_consumers<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    idle_ms: u64,
) -> RedisResult<usize> {
    static DELETE_IDLE_CONSUMERS: LazyLock<Script> = LazyLock::new(|| {
        Script::new(
            r"
local deleted = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local info = {}
    for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
    if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
        and tonumber(info['idle']) > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
        deleted = deleted + 1
    end
end
return deleted
",
        )
    });
    DELETE_IDLE_CONSUMERS
        .key(&settings.key)
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg(idle_ms)
        .invoke_async(con)
        .await
}

/// Ids per XACK (and per XCLAIM when entries in hand are kept fresh): each such command
/// takes well under 0.5 ms inside Redis, so other clients' commands (the server's reads)
/// run between them instead of waiting behind one long command.
const IDS_PER_COMMAND: usize = 200;

/// Ids acknowledged per round trip: what Redis reads of one client at a time (16 KiB) would
/// otherwise hold about 1,000 ids, 0.6 ms of work that the server's commands wait behind.
const IDS_PER_ROUND_TRIP: usize = 2 * IDS_PER_COMMAND;

/// Acknowledges the entries, 200 ids per XACK and 400 per round trip (so that the server's
/// commands are not kept waiting), and returns how many were still pending.
pub async fn ack<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    ids: &[EntryId],
) -> RedisResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut acked = 0;
    for group in ids.chunks(IDS_PER_ROUND_TRIP) {
        let mut pipe = redis::pipe();
        for chunk in group.chunks(IDS_PER_COMMAND) {
            pipe.cmd("XACK")
                .arg(&settings.key)
                .arg(&settings.group)
                .arg(chunk);
        }
        let counts: Vec<usize> = pipe.query_async(con).await?;
        acked += counts.into_iter().sum::<usize>();
    }
    Ok(acked)
}

/// Claims `ids` again for this consumer without counting a delivery (`XCLAIM … JUSTID`),
/// which resets their idle time: entries still in hand are not reclaimed by another
/// consumer while a long window is processed.
pub async fn keep_in_hand<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    ids: impl Iterator<Item = EntryId>,
) -> RedisResult<()> {
    let ids: Vec<EntryId> = ids.collect();
    let mut pipe = redis::pipe();
    for chunk in ids.chunks(IDS_PER_COMMAND) {
        pipe.cmd("XCLAIM")
            .arg(&settings.key)
            .arg(&settings.group)
            .arg(&settings.consumer)
            .arg(0)
            .arg(chunk)
            .arg("JUSTID")
            .ignore();
    }
    pipe.query_async(con).await
}

/// The group's work still to do, from `XINFO GROUPS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: usize,
    /// Entries never delivered; `None` when Redis cannot tell (after deletions).
    pub lag: Option<usize>,
}

impl Backlog {
    /// True when every entry has been delivered and acknowledged.
    pub fn is_drained(&self) -> bool {
        self.pending == 0 && self.lag == Some(0)
    }
}

/// Reads the group's pending count and lag; `None` when the group (or the stream) does
/// not exist yet.
pub async fn backlog<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
) -> RedisResult<Option<Backlog>> {
    let groups: redis::streams::StreamInfoGroupsReply = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&settings.key)
        .query_async(con)
        .await
    {
        // Before the first read creates it: no group yet, not an outage.
        Err(error) if error.detail() == Some("no such key") => return Ok(None),
        groups => groups?,
    };
    Ok(groups
        .groups
        .into_iter()
        .find(|g| g.name == settings.group)
        .map(|g| Backlog {
            pending: g.pending,
            lag: g.lag,
        }))
}

/// Entries read back by id per script call.
const IDS_PER_READ: usize = 100;

/// Reads entries back by id, whole, in one round trip, to dead-letter them; an entry no
/// longer in the stream comes back without fields. For entries that were read before
/// and passed the size checks (stream entries never change), so none is oversize.
pub async fn read_by_id<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    entries: &[Delivered],
) -> RedisResult<Vec<StreamEntry>> {
    let mut pipe = redis::pipe();
    for entry in entries {
        pipe.cmd("XRANGE")
            .arg(&settings.key)
            .arg(entry.id)
            .arg(entry.id);
    }
    let replies: Vec<Value> = pipe.query_async(con).await?;
    match_by_id(entries, replies)
}

/// Reads entries back by id cut down (see [`crate::ingest::bounded`]), in one round trip.
async fn read_cut_down<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    entries: &[Delivered],
) -> RedisResult<Vec<StreamEntry>> {
    let mut pipe = redis::pipe();
    for chunk in entries.chunks(IDS_PER_READ) {
        let ids = chunk.iter().map(|entry| entry.id);
        lua::call(&mut pipe, &BY_ID_SCRIPT)
            .arg(1)
            .arg(&settings.key)
            .arg(ids.collect::<Vec<_>>());
    }
    let replies: Vec<Value> = lua::query(con, &pipe)
        .await
        .map_err(|error| bounded::name_denied(error, "xrange"))?;
    match_by_id(entries, replies)
}

/// The entries of `replies` in the order of `entries`, with their delivery counts; an
/// entry not found comes back without fields.
fn match_by_id(entries: &[Delivered], replies: Vec<Value>) -> RedisResult<Vec<StreamEntry>> {
    let mut found = std::collections::HashMap::new();
    for reply in replies {
        found.extend(
            parse_entries(reply)?
                .into_iter()
                .map(|entry| (entry.id, entry)),
        );
    }
    Ok(entries
        .iter()
        .map(|&Delivered { id, deliveries }| {
            let mut entry = found.remove(&id).unwrap_or(StreamEntry {
                id,
                fields: Vec::new(),
                deliveries,
                oversize: None,
            });
            entry.deliveries = deliveries;
            entry
        })
        .collect())
}

/// Adds to `pipe` the copy of a bad entry to the dead-letter stream, with its reason.
pub fn add_dead_letter(
    pipe: &mut Pipeline,
    settings: &StreamSettings,
    entry: &StreamEntry,
    reason: &str,
) {
    let cmd = pipe.cmd("XADD").arg(&settings.dead_letter_key).arg("*");
    for (name, value) in &entry.fields {
        cmd.arg(name).arg(value);
    }
    if let Some(oversize) = entry.oversize {
        // What the cut-down copy above lacks: the entry's size when it was added.
        cmd.arg("dead_original_bytes")
            .arg(oversize.bytes)
            .arg("dead_original_fields")
            .arg(oversize.fields)
            .arg("dead_cut_to_bytes")
            .arg(KEEP_BYTES);
    }
    cmd.arg("dead_reason")
        .arg(reason)
        .arg("dead_source_id")
        .arg(entry.id)
        .arg("dead_deliveries")
        .arg(entry.deliveries)
        .arg("dead_consumer")
        .arg(&settings.consumer)
        .ignore();
}
