//! SIGTERM and SIGINT become one cancellation token; a second signal exits at once.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;

/// Exit status when a second signal cuts the graceful stop short.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Starts a thread that cancels the returned token on the first SIGTERM or SIGINT and
/// exits the process on the second.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let cancel = CancellationToken::new();
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let token = cancel.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if let Some(signal) = received.next() {
                // Cancelled first: the stop must not depend on the log line being written.
                token.cancel();
                tracing::info!(
                    signal,
                    "stopping: finishing the work in hand (signal again to exit at once)"
                );
            }
            if let Some(signal) = received.next() {
                tracing::warn!(signal, "second signal: exiting at once");
                std::process::exit(FORCED_EXIT_CODE);
            }
        })?;
    Ok(cancel)
}
