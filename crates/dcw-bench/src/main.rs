//! `dcw-bench`: loads synthetic studies (`load`, for the demo) and benchmarks the daemon on
//! scratch databases and streams: a backlog drained, against a plain per-event worker on the
//! same data (`drain`); publish-to-key latency, idle and under a paced load (`latency`);
//! series documents built from instance files (`series`); and the outbox: its triggers'
//! cost on the server's writes and the relay's speed (`outbox`).
//!
//! # Layout
//!
//! - `main`: the command line and the dispatch to one module per subcommand.
//! - `load`: the synthetic dataset's flags (shared by `drain` and `latency`) and `load`,
//!   which can also write the instances' files in the server's layout.
//! - `scratch`: the database, streams and tenant ids of one run, removed afterwards.
//! - `daemon`: the daemon under test, as the release binary or in this process; its
//!   counters, peak memory and graceful stop.
//! - `sampling`: the machine, its load average and CPU time, from /proc and the servers.
//! - `verify`: the study keys a dataset must leave in Redis, and how many are wrong.
//! - `drain`: the daemon drains a backlog; the figures beside the reference's.
//! - `redis_cost`: the daemon's commands inside Redis (slow log, command statistics).
//! - `private_redis`: a redis-server of one run, for Redis figures of the daemon alone.
//! - `probe`: a separate process timing GETs, as the server's readers, idle and under load.
//! - `hostile`: peak memory under input made to exhaust it (oversize entries, many series).
//! - `reference`: a plain per-event worker draining the same events.
//! - `latency`: probe events timed until their study key is visible, idle and under load.
//! - `series`: series documents built from instance files, warm and cold page cache.
//! - `outbox`: wado-consumer batches with and without the outbox's triggers; studies
//!   written by COPY relayed and warmed by the daemon.

mod daemon;
mod drain;
mod hostile;
mod latency;
mod load;
mod outbox;
mod private_redis;
mod probe;
mod redis_cost;
mod reference;
mod sampling;
mod scratch;
mod series;
mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dicom_cache_warmer::{Settings, init_logging};

#[derive(Parser)]
#[command(about = "Load synthetic studies, or benchmark the daemon on scratch data")]
struct Cli {
    /// A TOML file layered over config/default.toml (DCW__SECTION__KEY variables win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Insert the studies into the configured database and publish one event per
    /// instance to the configured stream; with --series-root, also write their instance
    /// files for series documents.
    Load(load::LoadArgs),
    /// On a scratch database and stream: load, let the daemon drain the backlog, then a
    /// plain per-event worker drain the same events; check every study key after each,
    /// print the figures, clean up.
    Drain(drain::DrainArgs),
    /// On a scratch database and stream: publish-to-key-visible latency of probe events
    /// for uncached studies, with the daemon idle, then under a paced background load.
    Latency(latency::LatencyArgs),
    /// Series documents from a series of CT instance files in a temporary folder:
    /// instances per second through the daemon's code, warm and cold page cache.
    Series(series::SeriesArgs),
    /// On a scratch database and stream: wado-consumer batches (series rows, then instance
    /// rows) timed with and without the outbox's triggers; then studies written by one COPY
    /// with the daemon relaying the outbox, timed until every study key is warm.
    Outbox(outbox::OutboxArgs),
    /// On a scratch database and stream: the daemon's peak memory under input made to
    /// exhaust it (oversize entries, or one study naming 100,000 unknown series), and
    /// whether a valid study published after it is still warmed.
    Hostile(hostile::HostileArgs),
    /// (Internal: started by `drain`.) GETs a key every 0.5 ms until stdin closes and
    /// prints the latency of each phase its stdin names.
    #[command(hide = true)]
    Probe(probe::ProbeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    if !matches!(cli.command, Command::Load(_)) {
        // As the daemon binary is run: one line per batch would be the bench's own noise.
        settings.log.level = "warn".into();
    }
    init_logging(&settings.log);
    match cli.command {
        Command::Load(args) => load::run(&settings, &args).await,
        Command::Drain(args) => drain::run(settings, cli.config.as_deref(), &args).await,
        Command::Latency(args) => latency::run(settings, cli.config.as_deref(), &args).await,
        Command::Series(args) => series::run(&args),
        Command::Outbox(args) => outbox::run(settings, cli.config.as_deref(), &args).await,
        Command::Hostile(args) => hostile::run(settings, cli.config.as_deref(), &args).await,
        Command::Probe(args) => tokio::task::block_in_place(|| probe::run(&settings, &args)),
    }
}
