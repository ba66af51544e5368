//! What the daemon's commands cost inside Redis during a measurement: every command over a
//! low threshold from `SLOWLOG` (the threshold set and the log reset at the start, both
//! restored at the end), and time and calls per command from `INFO commandstats`.
//!
//! Redis runs one command at a time, so a command's time inside Redis is how long every
//! other client (the DICOMweb server's study-key GETs included) may wait behind it.

use std::collections::BTreeMap;

use redis::Value;
use redis::aio::MultiplexedConnection;
use serde_json::json;

/// Commands slower than this (µs) are logged during the measurement.
const THRESHOLD_US: u64 = 100;
/// Entries the slow log keeps: enough for every logged command of a long drain.
const MAX_ENTRIES: u64 = 1_000_000;
/// The client name of the bench's own connections, whose commands are not the daemon's.
pub(crate) const BENCH_CLIENT: &str = "dcw-bench";

/// The slow log and command statistics as they were when the measurement started.
pub(crate) struct CostMark {
    saved_config: Option<(String, String)>,
    stats_before: BTreeMap<String, CommandStat>,
}

/// Calls and time inside Redis of one command name.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct CommandStat {
    calls: u64,
    usec: u64,
}

/// The daemon's commands during the measurement.
#[derive(Debug, Default)]
pub(crate) struct RedisCost {
    /// Whether the slow log could be used (`CONFIG` may be refused by an ACL).
    pub(crate) slowlog: bool,
    /// Commands over 0.5 ms and over 1 ms inside Redis.
    pub(crate) over_half_ms: usize,
    pub(crate) over_1_ms: usize,
    /// The slowest logged call (µs) per command name, slowest first.
    pub(crate) slowest: Vec<(String, u64)>,
    /// Calls and µs inside Redis per command name, from commandstats (every client's).
    stats: BTreeMap<String, CommandStat>,
}

impl CostMark {
    /// Names this connection as the bench's, lowers the slow log threshold and empties the
    /// log. Without `CONFIG` rights only the command statistics are measured.
    pub(crate) async fn start(con: &mut MultiplexedConnection) -> Self {
        let _: redis::RedisResult<()> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(BENCH_CLIENT)
            .query_async(con)
            .await;
        let saved_config = saved_slowlog_config(con).await;
        if saved_config.is_some() {
            let set: redis::RedisResult<()> = redis::cmd("CONFIG")
                .arg("SET")
                .arg("slowlog-log-slower-than")
                .arg(THRESHOLD_US)
                .arg("slowlog-max-len")
                .arg(MAX_ENTRIES)
                .query_async(con)
                .await;
            let reset: redis::RedisResult<()> =
                redis::cmd("SLOWLOG").arg("RESET").query_async(con).await;
            if let Err(error) = set.and(reset) {
                eprintln!("the slow log is not measured: {error}");
            }
        }
        Self {
            saved_config,
            stats_before: command_stats(con).await,
        }
    }

    /// Reads the slow log and the statistics, then restores the slow log's settings.
    pub(crate) async fn finish(self, con: &mut MultiplexedConnection) -> RedisCost {
        let stats_after = command_stats(con).await;
        let stats = stats_after
            .into_iter()
            .map(|(name, after)| {
                let before = self.stats_before.get(&name).copied().unwrap_or_default();
                let delta = CommandStat {
                    calls: after.calls.saturating_sub(before.calls),
                    usec: after.usec.saturating_sub(before.usec),
                };
                (name, delta)
            })
            .filter(|(_, delta)| delta.calls > 0)
            .collect();
        let mut cost = RedisCost {
            stats,
            ..RedisCost::default()
        };
        let Some((threshold, max_len)) = self.saved_config else {
            return cost;
        };
        let logged: redis::RedisResult<Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(con)
            .await;
        let restored: redis::RedisResult<()> = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(threshold)
            .arg("slowlog-max-len")
            .arg(max_len)
            .query_async(con)
            .await;
        if let Err(error) = restored {
            eprintln!("could not restore the slow log's settings: {error}");
        }
        if let Ok(logged) = logged {
            cost.slowlog = true;
            cost.add_slow_entries(logged);
        }
        cost
    }
}

impl RedisCost {
    /// Counts the slow log's entries of clients other than the bench's own.
    fn add_slow_entries(&mut self, logged: Value) {
        let Value::Array(entries) = logged else {
            return;
        };
        let mut slowest: BTreeMap<String, u64> = BTreeMap::new();
        for entry in entries {
            let Some((command, micros, client)) = slow_entry(entry) else {
                continue;
            };
            if client.starts_with(BENCH_CLIENT) {
                continue;
            }
            self.over_half_ms += usize::from(micros > 500);
            self.over_1_ms += usize::from(micros > 1_000);
            let top = slowest.entry(command).or_default();
            *top = (*top).max(micros);
        }
        self.slowest = slowest.into_iter().collect();
        self.slowest
            .sort_by_key(|(_, micros)| std::cmp::Reverse(*micros));
    }

    /// Microseconds inside Redis per event, per command name and in all, most costly first.
    pub(crate) fn per_event(&self, events: usize) -> Vec<(String, f64, f64)> {
        let events = events.max(1) as f64;
        let mut rows: Vec<(String, f64, f64)> = self
            .stats
            .iter()
            .map(|(name, stat)| {
                (
                    name.clone(),
                    stat.usec as f64 / events,
                    stat.calls as f64 / events,
                )
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows
    }

    /// Prints the figures under the drain's table.
    pub(crate) fn print(&self, events: usize) {
        if self.slowlog {
            println!(
                "daemon's commands inside Redis over 0.5 ms: {}, over 1 ms: {} (SLOWLOG, {THRESHOLD_US} µs threshold)",
                self.over_half_ms, self.over_1_ms
            );
            let slowest: Vec<String> = self
                .slowest
                .iter()
                .map(|(name, micros)| format!("{name} {:.2} ms", *micros as f64 / 1e3))
                .collect();
            println!(
                "slowest per command (over {THRESHOLD_US} µs): {}",
                if slowest.is_empty() {
                    "none".into()
                } else {
                    slowest.join(", ")
                }
            );
        } else {
            println!("slow log: not available (CONFIG refused)");
        }
        let rows: Vec<String> = self
            .per_event(events)
            .iter()
            .take(8)
            .map(|(name, usec, calls)| format!("{name} {usec:.3} µs ({calls:.4} calls)"))
            .collect();
        println!(
            "Redis time per event by command (commandstats, every client): {}",
            rows.join(", ")
        );
        println!(
            "Redis time inside commands: {:.2} µs an event (the rest of Redis CPU per event is \
             the work around each call: reading, replying, waking)",
            self.in_commands_per_event(events)
        );
    }

    /// Microseconds inside Redis per event, all commands together.
    fn in_commands_per_event(&self, events: usize) -> f64 {
        self.per_event(events).iter().map(|(_, usec, _)| usec).sum()
    }

    /// The figures as JSON.
    pub(crate) fn json(&self, events: usize) -> serde_json::Value {
        let per_event: serde_json::Map<String, serde_json::Value> = self
            .per_event(events)
            .into_iter()
            .map(|(name, usec, calls)| (name, json!({"usec": usec, "calls": calls})))
            .collect();
        json!({
            "slowlog": self.slowlog,
            "over_half_ms": self.over_half_ms,
            "over_1_ms": self.over_1_ms,
            "slowest_us": self.slowest.iter().cloned().collect::<BTreeMap<_, _>>(),
            "per_event": per_event,
            "in_commands_usec_per_event": self.in_commands_per_event(events),
        })
    }
}

/// The slow log's threshold and length, or `None` when `CONFIG GET` is refused.
async fn saved_slowlog_config(con: &mut MultiplexedConnection) -> Option<(String, String)> {
    let reply: BTreeMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("slowlog-*")
        .query_async(con)
        .await
        .ok()?;
    Some((
        reply.get("slowlog-log-slower-than")?.clone(),
        reply.get("slowlog-max-len")?.clone(),
    ))
}

/// Calls and µs per command name from `INFO commandstats`.
async fn command_stats(con: &mut MultiplexedConnection) -> BTreeMap<String, CommandStat> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap_or_default();
    parse_command_stats(&info)
}

/// Parses lines such as `cmdstat_xack:calls=10,usec=52,usec_per_call=5.20,…`.
fn parse_command_stats(info: &str) -> BTreeMap<String, CommandStat> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |wanted: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(wanted)?.strip_prefix('='))
                    .and_then(|value| value.trim().parse().ok())
            };
            Some((
                name.to_owned(),
                CommandStat {
                    calls: field("calls")?,
                    usec: field("usec")?,
                },
            ))
        })
        .collect()
}

/// A slow log entry's command name, duration (µs) and client name.
fn slow_entry(entry: Value) -> Option<(String, u64, String)> {
    let Value::Array(fields) = entry else {
        return None;
    };
    let micros = match fields.get(2)? {
        Value::Int(micros) => u64::try_from(*micros).ok()?,
        _ => return None,
    };
    let command = match fields.get(3)? {
        Value::Array(args) => match args.first()? {
            Value::BulkString(name) => String::from_utf8_lossy(name).to_lowercase(),
            _ => return None,
        },
        _ => return None,
    };
    let client = match fields.get(5) {
        Some(Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
        _ => String::new(),
    };
    Some((command, micros, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats_lines() {
        let info = "# Commandstats\r\n\
            cmdstat_xack:calls=10,usec=52,usec_per_call=5.20,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_client|setname:calls=1,usec=2,usec_per_call=2.00\r\n";
        let stats = parse_command_stats(info);
        assert_eq!(
            stats.get("xack"),
            Some(&CommandStat {
                calls: 10,
                usec: 52
            })
        );
        assert_eq!(stats.get("client|setname").map(|s| s.calls), Some(1));
    }

    #[test]
    fn counts_only_other_clients_slow_commands() {
        let entry = |micros: i64, command: &str, client: &str| {
            Value::Array(vec![
                Value::Int(1),
                Value::Int(1_700_000_000),
                Value::Int(micros),
                Value::Array(vec![Value::BulkString(command.as_bytes().to_vec())]),
                Value::BulkString(b"127.0.0.1:5000".to_vec()),
                Value::BulkString(client.as_bytes().to_vec()),
            ])
        };
        let mut cost = RedisCost::default();
        cost.add_slow_entries(Value::Array(vec![
            entry(1_500, "XACK", ""),
            entry(700, "XACK", ""),
            entry(600, "XREADGROUP", ""),
            entry(5_000, "INFO", BENCH_CLIENT),
        ]));
        assert_eq!((cost.over_half_ms, cost.over_1_ms), (3, 1));
        assert_eq!(
            cost.slowest,
            [("xack".to_owned(), 1_500), ("xreadgroup".to_owned(), 600)]
        );
    }
}
