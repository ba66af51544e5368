//! Stream entries: their ids, their raw fields and delivery counts, parsed from Redis'
//! replies (RESP2 or RESP3, bytes kept as they are). An entry cut down by the bounded reads
//! ([`super::bounded`]) carries its original size.

use std::fmt;
use std::str::FromStr;

use redis::{RedisError, RedisResult, RedisWrite, ToRedisArgs, ToSingleRedisArg, Value};

use crate::ingest::event::{Field, Oversize};

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
    /// Set when the entry was too large to be read whole: `fields` then holds its first
    /// fields, each name and value cut to its first [`KEEP_BYTES`](crate::ingest::bounded::KEEP_BYTES).
    pub oversize: Option<Oversize>,
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

fn protocol_error(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected stream reply",
        what.to_owned(),
    ))
}

/// Parses an XREADGROUP reply (RESP2 arrays or RESP3 maps) for one stream.
pub(super) fn parse_read_reply(reply: Value) -> RedisResult<Vec<StreamEntry>> {
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
pub(super) fn parse_autoclaim_reply(reply: Value) -> RedisResult<Claimed> {
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
pub(super) fn parse_pending_counts(
    reply: Value,
) -> RedisResult<std::collections::HashMap<EntryId, u64>> {
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

/// Parses a list of `[id, [field, value, ...]]` entries (with a third item,
/// `[bytes, fields, index of the first large value]`, when the entry was cut down); nil
/// fields mean a deleted entry; nil entries (ids no longer in the stream) are skipped.
pub(super) fn parse_entries(value: Value) -> RedisResult<Vec<StreamEntry>> {
    let items = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(protocol_error("entries are not an array")),
    };
    items
        .into_iter()
        .filter(|item| *item != Value::Nil)
        .map(|item| {
            let Value::Array(mut parts) = item else {
                return Err(protocol_error("entry is not an array"));
            };
            if !(2..=3).contains(&parts.len()) {
                return Err(protocol_error("entry is not an [id, fields] pair"));
            }
            let oversize = (parts.len() == 3)
                .then(|| parse_oversize(parts.pop().unwrap_or(Value::Nil)))
                .transpose()?;
            let fields = parts.pop().unwrap_or(Value::Nil);
            let id = parts.pop().unwrap_or(Value::Nil);
            Ok(StreamEntry {
                id: entry_id(id)?,
                fields: parse_fields(fields)?,
                deliveries: 1,
                oversize,
            })
        })
        .collect()
}

/// `[bytes, fields, first large value]` as the bounded reads report a cut-down entry.
fn parse_oversize(value: Value) -> RedisResult<Oversize> {
    let number = |value: Option<&Value>| match value {
        Some(Value::Int(n)) => usize::try_from(*n).map_err(|_| protocol_error("negative size")),
        _ => Err(protocol_error("entry size is not [bytes, fields, index]")),
    };
    let Value::Array(sizes) = value else {
        return Err(protocol_error("entry size is not an array"));
    };
    let large_value = number(sizes.get(2))?;
    Ok(Oversize {
        bytes: number(sizes.first())?,
        fields: number(sizes.get(1))?,
        large_value: large_value.checked_sub(1),
    })
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

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
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
                    oversize: None,
                },
                StreamEntry {
                    id: "2-0".parse().expect("entry id"),
                    fields: vec![],
                    deliveries: 1,
                    oversize: None,
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

    #[test]
    fn a_cut_down_entry_carries_its_original_size() {
        let reply = Value::Array(vec![
            Value::Nil,
            Value::Array(vec![
                bulk(b"7-0"),
                Value::Array(vec![
                    bulk(b"tenant_id"),
                    bulk(b"t"),
                    bulk(b"blob"),
                    bulk(b"xx"),
                ]),
                Value::Array(vec![Value::Int(200_000), Value::Int(2), Value::Int(2)]),
            ]),
        ]);
        let entries = parse_entries(reply).expect("parses");
        assert_eq!(
            entries.len(),
            1,
            "a nil entry (an id no longer there) is skipped"
        );
        assert_eq!(
            entries[0].oversize,
            Some(Oversize {
                bytes: 200_000,
                fields: 2,
                large_value: Some(1)
            })
        );
    }
}
