//! Command line entry point: parse, load settings, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use dicom_cache_warmer::config::Settings;
use dicom_cache_warmer::warm::{self, WarmArgs};
use dicom_cache_warmer::{app, commands, shutdown, telemetry};

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
    Run,
    /// Create the database when missing and apply the migrations.
    Migrate,
    /// Print the effective configuration (secrets redacted) and test the connections.
    CheckConfig,
    /// Fill the cache for studies already in the database (Ctrl-C stops; safe to re-run).
    Warm(WarmArgs),
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
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run_daemon(settings).await,
            Command::Migrate => commands::migrate(&settings).await,
            Command::CheckConfig => commands::check_config(&settings).await,
            Command::Warm(args) => {
                let summary = warm::run(&settings, &args, shutdown::on_signals()?).await?;
                println!("{summary}");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", telemetry::one_line(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs the daemon until a signal, then allows it `shutdown.grace_secs` to finish.
async fn run_daemon(settings: Arc<Settings>) -> anyhow::Result<()> {
    let cancel = shutdown::on_signals()?;
    let grace = settings.shutdown.grace();
    let mut daemon = tokio::spawn(app::run(settings, cancel.clone()));
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
