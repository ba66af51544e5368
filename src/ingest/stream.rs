//! The consumer group: ensure it, read new entries, acknowledge, dead-letter.

use std::fmt;
use std::str::FromStr;

use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisError, RedisResult, RedisWrite, ToRedisArgs, ToSingleRedisArg, Value};

use crate::config::StreamSettings;
use crate::ingest::event::Field;

/// A stream entry id (`<milliseconds>-<sequence>`) as its two numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    millis: u64,
    sequence: u64,
}

impl FromStr for EntryId {
    type Err = ();

    fn from_str(id: &str) -> Result<Self, ()> {
        let (millis, sequence) = id.split_once('-').ok_or(())?;
        Ok(Self {
            millis: millis.parse().map_err(|_| ())?,
            sequence: sequence.parse().map_err(|_| ())?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.sequence)
    }
}

impl ToRedisArgs for EntryId {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

impl ToSingleRedisArg for EntryId {}

/// An entry of a study, by id: its fields are read back in the rare case it must be
/// dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The entry id.
    pub id: EntryId,
    /// How many times the group has delivered it, this delivery included.
    pub deliveries: u64,
}

/// One stream entry as read: its id and its raw fields, bytes kept as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, such as `1700000000000-0`.
    pub id: EntryId,
    /// Field names and values in stream order; empty for an entry deleted from the stream.
    pub fields: Vec<Field>,
    /// How many times the group has delivered it, this delivery included.
    pub deliveries: u64,
}

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

/// Reads up to `batch_size` entries never delivered to this group; with `wait`, waits up
/// to `block_ms` for the first, else returns at once.
pub async fn read_new<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    wait: bool,
) -> RedisResult<Vec<StreamEntry>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg("COUNT")
        .arg(settings.batch_size);
    if wait {
        cmd.arg("BLOCK").arg(settings.block_ms);
    }
    let reply: Value = cmd
        .arg("STREAMS")
        .arg(&settings.key)
        .arg(">")
        .query_async(con)
        .await?;
    parse_read_reply(reply)
}

/// Entries taken over from consumers (any, this one included) that left them pending
/// longer than `claim_idle_ms`.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The entries, with their delivery counts.
    pub entries: Vec<StreamEntry>,
    /// Where the next call continues; `0-0` when the whole pending list was scanned.
    pub next_cursor: String,
    /// Pending entries that were no longer in the stream (trimmed or deleted); Redis has
    /// dropped them from the pending list.
    pub deleted: usize,
}

/// Claims up to `batch_size` idle entries with XAUTOCLAIM, from `cursor` on, and reads
/// their delivery counts.
pub async fn claim_idle<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    cursor: &str,
) -> RedisResult<Claimed> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(&settings.key)
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg(settings.claim_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(settings.batch_size)
        .query_async(con)
        .await?;
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
    const DELETE_IDLE_CONSUMERS: &str = r"
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
";
    redis::cmd("EVAL")
        .arg(DELETE_IDLE_CONSUMERS)
        .arg(1)
        .arg(&settings.key)
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg(idle_ms)
        .query_async(con)
        .await
}

/// Acknowledges the entries in one XACK and returns how many were still pending.
pub async fn ack<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    ids: &[EntryId],
) -> RedisResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    redis::cmd("XACK")
        .arg(&settings.key)
        .arg(&settings.group)
        .arg(ids)
        .query_async(con)
        .await
}

/// Ids per XCLAIM when entries in hand are kept fresh: bounds each command's time in Redis.
const CLAIM_CHUNK: usize = 1_000;

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
    for chunk in ids.chunks(CLAIM_CHUNK) {
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

/// Reads entries back by id, in one round trip, to dead-letter them whole; an entry no
/// longer in the stream comes back without fields.
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
    entries
        .iter()
        .zip(replies)
        .map(|(&Delivered { id, deliveries }, reply)| {
            let fields = parse_entries(reply)?
                .pop()
                .map(|entry| entry.fields)
                .unwrap_or_default();
            Ok(StreamEntry {
                id,
                fields,
                deliveries,
            })
        })
        .collect()
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

fn protocol_error(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected stream reply",
        what.to_owned(),
    ))
}

/// Parses an XREADGROUP reply (RESP2 arrays or RESP3 maps) for one stream.
fn parse_read_reply(reply: Value) -> RedisResult<Vec<StreamEntry>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                _ => Err(protocol_error("stream is not a [name, entries] pair")),
            })
            .collect::<RedisResult<Vec<_>>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err(protocol_error("reply is not an array")),
    };
    let mut entries = Vec::new();
    for stream in streams {
        entries.extend(parse_entries(stream)?);
    }
    Ok(entries)
}

/// Parses an XAUTOCLAIM reply: `[cursor, entries, deleted ids]` (the last since Redis 7).
fn parse_autoclaim_reply(reply: Value) -> RedisResult<Claimed> {
    let Value::Array(mut parts) = reply else {
        return Err(protocol_error("XAUTOCLAIM reply is not an array"));
    };
    if !(2..=3).contains(&parts.len()) {
        return Err(protocol_error("XAUTOCLAIM reply has neither 2 nor 3 parts"));
    }
    let deleted = match parts.get(2) {
        Some(Value::Array(ids)) => ids.len(),
        _ => 0,
    };
    parts.truncate(2);
    let entries = parts.pop().unwrap_or(Value::Nil);
    let cursor = parts.pop().unwrap_or(Value::Nil);
    Ok(Claimed {
        entries: parse_entries(entries)?,
        next_cursor: text(cursor)?,
        deleted,
    })
}

/// Parses an extended XPENDING reply into delivery counts by entry id.
fn parse_pending_counts(reply: Value) -> RedisResult<std::collections::HashMap<EntryId, u64>> {
    let Value::Array(items) = reply else {
        return Err(protocol_error("XPENDING reply is not an array"));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Array(mut fields) if fields.len() == 4 => {
                let deliveries = match fields.pop() {
                    Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
                    _ => return Err(protocol_error("delivery count is not an integer")),
                };
                fields.truncate(1);
                Ok((entry_id(fields.pop().unwrap_or(Value::Nil))?, deliveries))
            }
            _ => Err(protocol_error(
                "XPENDING item is not [id, consumer, idle, count]",
            )),
        })
        .collect()
}

/// Parses a list of `[id, [field, value, ...]]` entries; nil fields mean a deleted entry.
fn parse_entries(value: Value) -> RedisResult<Vec<StreamEntry>> {
    let Value::Array(items) = value else {
        return Err(protocol_error("entries are not an array"));
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(mut pair) = item else {
                return Err(protocol_error("entry is not an array"));
            };
            if pair.len() != 2 {
                return Err(protocol_error("entry is not an [id, fields] pair"));
            }
            let fields = pair.pop().unwrap_or(Value::Nil);
            let id = pair.pop().unwrap_or(Value::Nil);
            Ok(StreamEntry {
                id: entry_id(id)?,
                fields: parse_fields(fields)?,
                deliveries: 1,
            })
        })
        .collect()
}

fn parse_fields(value: Value) -> RedisResult<Vec<Field>> {
    let flat = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(flat) => flat,
        _ => return Err(protocol_error("fields are not an array")),
    };
    if flat.len() % 2 != 0 {
        return Err(protocol_error("odd number of field items"));
    }
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        fields.push((bytes(name)?, bytes(value)?));
    }
    Ok(fields)
}

fn bytes(value: Value) -> RedisResult<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        _ => Err(protocol_error("field is not a string")),
    }
}

fn text(value: Value) -> RedisResult<String> {
    String::from_utf8(bytes(value)?).map_err(|_| protocol_error("entry id is not UTF-8"))
}

fn entry_id(value: Value) -> RedisResult<EntryId> {
    text(value)?
        .parse()
        .map_err(|()| protocol_error("entry id is not <milliseconds>-<sequence>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn entry_ids_round_trip_and_order_numerically() {
        let early: EntryId = "999-5".parse().expect("entry id");
        let late: EntryId = "1000-0".parse().expect("entry id");
        assert!(early < late);
        assert_eq!(late.to_string(), "1000-0");
        assert_eq!(redis::cmd("XACK").arg(late).get_packed_command(), {
            redis::cmd("XACK").arg("1000-0").get_packed_command()
        });
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_a_resp2_read_reply_keeping_raw_bytes() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"dicom:ingest"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"tenant_id"), bulk(&[0xff, 0x00])]),
                ]),
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply).expect("parses");
        assert_eq!(
            entries,
            [
                StreamEntry {
                    id: "1-0".parse().expect("entry id"),
                    fields: vec![(b"tenant_id".to_vec(), vec![0xff, 0x00])],
                    deliveries: 1,
                },
                StreamEntry {
                    id: "2-0".parse().expect("entry id"),
                    fields: vec![],
                    deliveries: 1,
                },
            ]
        );
    }

    #[test]
    fn parses_an_autoclaim_reply_with_deleted_ids() {
        let reply = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-0"),
                Value::Array(vec![bulk(b"tenant_id"), bulk(b"t")]),
            ])]),
            Value::Array(vec![bulk(b"3-0"), bulk(b"4-0")]),
        ]);
        let claimed = parse_autoclaim_reply(reply).expect("parses");
        assert_eq!(claimed.next_cursor, "0-0");
        assert_eq!(claimed.deleted, 2);
        assert_eq!(claimed.entries.len(), 1);
        assert_eq!(claimed.entries[0].id.to_string(), "5-0");
    }

    #[test]
    fn parses_pending_delivery_counts() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"5-0"),
            bulk(b"consumer"),
            Value::Int(1200),
            Value::Int(3),
        ])]);
        let counts = parse_pending_counts(reply).expect("parses");
        assert_eq!(counts.get(&"5-0".parse().expect("entry id")), Some(&3));
    }

    #[test]
    fn a_timed_out_read_is_empty() {
        assert_eq!(parse_read_reply(Value::Nil).expect("parses"), []);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk(b"s"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk(b"s"),
                Value::Array(vec![Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"odd")]),
                ])]),
            ])]),
        ] {
            assert!(parse_read_reply(reply).is_err());
        }
    }
}
