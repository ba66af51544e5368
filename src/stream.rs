//! The consumer group: ensure it, read new entries, acknowledge, dead-letter.

use redis::aio::ConnectionLike;
use redis::{Pipeline, RedisError, RedisResult, Value};

use crate::config::StreamSettings;
use crate::event::Field;

/// One stream entry as read: its id and its raw fields, bytes kept as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, such as `1700000000000-0`.
    pub id: String,
    /// Field names and values in stream order; empty for an entry deleted from the stream.
    pub fields: Vec<Field>,
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

/// Reads up to `batch_size` entries never delivered to this group, waiting up to `block_ms`.
pub async fn read_new<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
) -> RedisResult<Vec<StreamEntry>> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg("COUNT")
        .arg(settings.batch_size)
        .arg("BLOCK")
        .arg(settings.block_ms)
        .arg("STREAMS")
        .arg(&settings.key)
        .arg(">")
        .query_async(con)
        .await?;
    parse_read_reply(reply)
}

/// Acknowledges the entries in one XACK and returns how many were still pending.
pub async fn ack<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
    ids: &[&str],
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

/// Reads the group's pending count and lag; `None` when the group does not exist.
pub async fn backlog<C: ConnectionLike>(
    con: &mut C,
    settings: &StreamSettings,
) -> RedisResult<Option<Backlog>> {
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&settings.key)
        .query_async(con)
        .await?;
    Ok(groups
        .groups
        .into_iter()
        .find(|g| g.name == settings.group)
        .map(|g| Backlog {
            pending: g.pending,
            lag: g.lag,
        }))
}

/// Adds to `pipe` the copy of a bad entry to the dead-letter stream, with its reason.
pub fn add_dead_letter(
    pipe: &mut Pipeline,
    settings: &StreamSettings,
    entry: &StreamEntry,
    reason: &str,
    deliveries: u64,
) {
    let cmd = pipe.cmd("XADD").arg(&settings.dead_letter_key).arg("*");
    for (name, value) in &entry.fields {
        cmd.arg(name).arg(value);
    }
    cmd.arg("dead_reason")
        .arg(reason)
        .arg("dead_source_id")
        .arg(&entry.id)
        .arg("dead_deliveries")
        .arg(deliveries)
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
                id: text(id)?,
                fields: parse_fields(fields)?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
                    id: "1-0".into(),
                    fields: vec![(b"tenant_id".to_vec(), vec![0xff, 0x00])],
                },
                StreamEntry {
                    id: "2-0".into(),
                    fields: vec![],
                },
            ]
        );
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
