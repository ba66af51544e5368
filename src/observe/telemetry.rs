//! The tracing subscriber: readable lines for people, JSON lines for machines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber; `RUST_LOG`, when set, wins over `log.level`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        // A log line that cannot be written (the reader of stderr is gone) is lost, never a
        // panic: tracing-subscriber would report it with eprintln!, which panics then.
        .log_internal_errors(false);
    // A second init (as in tests) keeps the first subscriber.
    let _ = match settings.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// An error and its causes on one line, `: `-separated, leaving out a cause whose message
/// is already on the line (sqlx, for one, repeats its source in its own message).
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    for cause in std::iter::successors(Some(error), |&e| e.source()) {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::other("connection refused");
        let error = anyhow::Error::new(sqlx::Error::Io(io)).context("count the studies");
        assert_eq!(
            one_line(error.as_ref()),
            "count the studies: error communicating with database: connection refused"
        );
        let error = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(one_line(error.as_ref()), "top: middle: root");
    }
}
