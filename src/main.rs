//! Command line entry point: parse, load settings, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use dicom_cache_warmer::{self as dcw, Settings, WarmArgs};

/// Keeps a DICOMweb server's Redis study cache warm from ingest events.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file layered over config/default.toml (environment variables DCW__SECTION__KEY win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run {
        /// Stop once the stream has nothing new (a one-off catch-up); entries whose study
        /// is not in the database yet stay pending.
        #[arg(long)]
        until_drained: bool,
    },
    /// Create the database when missing and apply the migrations.
    Migrate,
    /// Print the effective configuration (secrets redacted) and test the connections.
    CheckConfig,
    /// Fill the cache for studies already in the database (Ctrl-C stops; safe to re-run).
    Warm(WarmArgs),
    /// Install or uninstall the outbox: the ingest events of a server that publishes none.
    ///
    /// A table and statement-level triggers in the server's database (database.url) record
    /// each series its writes change; the daemon relays them to stream.key when
    /// outbox.enabled is on.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Create or replace the outbox table and its triggers; safe to re-run.
    ///
    /// In one transaction: the table dcw_ingest_outbox and statement-level triggers on
    /// dicom_state_meta and dicom_image_meta. Run it as the owner of those tables (the role
    /// of database.url). It grants nothing: the daemon's role then needs
    /// GRANT SELECT, DELETE, UPDATE (id) ON dcw_ingest_outbox.
    Install,
    /// Remove the triggers, their functions and the table; safe to re-run.
    ///
    /// In one transaction; rows still waiting to be relayed go with the table. Run it as
    /// the owner of the tables.
    Uninstall,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => Arc::new(settings),
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    dcw::init_logging(&settings.log);
    // One thread for every task: the daemon waits on Redis and PostgreSQL, and its slow work
    // (reading DICOM files, writing documents) runs on the blocking pool. Tasks handing
    // replies to each other across two worker threads cost more in wake-ups than they
    // gained: the drain benchmark reads 10-25 % more events a second on one thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run {
            until_drained: false,
        }) {
            Command::Run { until_drained } => run_daemon(settings, until_drained).await,
            Command::Migrate => dcw::migrate(&settings).await,
            Command::CheckConfig => dcw::check_config(&settings).await,
            Command::Outbox(command) => {
                let report = match command {
                    OutboxCommand::Install => dcw::install_outbox(&settings).await?,
                    OutboxCommand::Uninstall => dcw::uninstall_outbox(&settings).await?,
                };
                println!("{report}");
                Ok(())
            }
            Command::Warm(args) => {
                let summary = dcw::warm(&settings, &args, dcw::on_signals()?).await?;
                println!("{summary}");
                Ok(())
            }
        }
    });
    // Everything the commands started has finished or was abandoned; a series build
    // abandoned at its deadline or at the stop may leave a thread blocked in a read (stuck
    // storage, a FIFO), which dropping the runtime would wait for: it is not waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", dcw::one_line(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs the daemon until a signal (or the drain), then allows it `shutdown.grace_secs` to
/// finish.
async fn run_daemon(settings: Arc<Settings>, until_drained: bool) -> anyhow::Result<()> {
    let cancel = dcw::on_signals()?;
    let grace = settings.shutdown.grace();
    let mut daemon = if until_drained {
        tokio::spawn(dcw::run_until_drained(settings, cancel.clone()))
    } else {
        tokio::spawn(dcw::run(settings, cancel.clone()))
    };
    tokio::select! {
        finished = &mut daemon => return finished?,
        () = cancel.cancelled() => {}
    }
    match tokio::time::timeout(grace, daemon).await {
        Ok(finished) => finished?,
        Err(_) => anyhow::bail!(
            "work in hand not finished within shutdown.grace_secs ({grace:?}); its entries stay pending"
        ),
    }
}
