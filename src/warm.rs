//! `warm`: fills the cache for studies already in the database, selected by tenant and
//! study date, page by page with the daemon's own fill code; safe to interrupt and re-run.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::db;
use crate::fill::query::{self, StudyFilter};
use crate::fill::refresh::{self, Plan, Request};
use crate::ids::{TenantId, Uid};
use crate::ingest::event::EventKind;
use crate::redis_conn;
use crate::series::builder::schedule_of;
use crate::series::schedule::Schedule;

/// Attempts per page before `warm` gives up on an unreachable service.
const PAGE_ATTEMPTS: u32 = 5;
/// How often progress is logged when standard error is not a terminal.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The `warm` command line.
#[derive(Debug, Clone, clap::Args)]
pub struct WarmArgs {
    /// Only this tenant (repeat for several).
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Only studies on or after this date (YYYY-MM-DD).
    #[arg(long)]
    pub from: Option<NaiveDate>,
    /// Only studies on or before this date (YYYY-MM-DD).
    #[arg(long)]
    pub to: Option<NaiveDate>,
    /// Every study of every tenant (required when no other selection is given).
    #[arg(long, conflicts_with_all = ["tenants", "from", "to"])]
    pub all: bool,
    /// Studies per database page.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub page_size: u64,
    /// Pages refreshed at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub concurrency: u64,
    /// At most this many studies per second.
    #[arg(long, value_name = "STUDIES_PER_SEC")]
    pub rate: Option<f64>,
    /// Count the selected studies and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also schedule every series of the warmed studies for its metadata document (needs
    /// series.dicom_root and series.json_root; running daemons build them).
    #[arg(long)]
    pub series: bool,
}

/// What a `warm` run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WarmSummary {
    /// Studies the selection matched when the run started.
    pub selected: u64,
    /// Study keys written.
    pub filled: u64,
    /// Studies whose cached snapshot was already newer.
    pub stale: u64,
    /// Studies gone between listing and reading.
    pub missing: u64,
    /// Rows whose tenant or study UID cannot form a key (skipped).
    pub invalid: u64,
    /// Whether a signal stopped the run early.
    pub interrupted: bool,
    /// Whether the run only counted.
    pub dry_run: bool,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for WarmSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            return write!(
                f,
                "warm dry run: {} studies selected, nothing written",
                self.selected
            );
        }
        let secs = self.elapsed.as_secs_f64().max(f64::EPSILON);
        write!(
            f,
            "warm {}: {} selected, {} filled, {} already newer, {} gone, {} invalid ids skipped, \
             {:.1} s ({:.0} studies/s)",
            if self.interrupted {
                "interrupted"
            } else {
                "done"
            },
            self.selected,
            self.filled,
            self.stale,
            self.missing,
            self.invalid,
            secs,
            (self.filled + self.stale + self.missing) as f64 / secs,
        )
    }
}

/// Runs `warm` until every selected study is refreshed or `cancel` fires.
pub async fn run(
    settings: &Settings,
    args: &WarmArgs,
    cancel: CancellationToken,
) -> anyhow::Result<WarmSummary> {
    anyhow::ensure!(
        args.all || !args.tenants.is_empty() || args.from.is_some() || args.to.is_some(),
        "choose studies with --tenant, --from, --to, or --all"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    anyhow::ensure!(
        !args.series || settings.series.roots().is_some(),
        "--series needs series.dicom_root and series.json_root"
    );
    let schedule = args.series.then(|| schedule_of(settings));
    let started = Instant::now();
    let db = db::lazy_pool(&settings.database).context("database.url")?;
    let redis = redis_conn::command_pool(&settings.redis).context("redis.url")?;
    let filter = StudyFilter {
        tenants: args.tenants.clone(),
        from: args.from,
        to: args.to,
    };
    let mut summary = WarmSummary {
        selected: u64::try_from(
            db::run(&settings.database, &db, async |con| {
                query::count_studies(con, &filter).await
            })
            .await
            .context("count the studies")?,
        )
        .unwrap_or(0),
        ..WarmSummary::default()
    };
    if args.dry_run {
        summary.dry_run = true;
        summary.elapsed = started.elapsed();
        return Ok(summary);
    }
    let progress = Progress::new(summary.selected);
    let mut in_flight = JoinSet::new();
    let mut after = (String::new(), String::new());
    let mut listed = 0_u64;
    loop {
        if cancel.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        let page = db::run(&settings.database, &db, async |con| {
            query::list_studies(con, &filter, &after, args.page_size as usize).await
        })
        .await
        .context("list the studies")?;
        let Some(last) = page.last() else { break };
        after = last.clone();
        listed += page.len() as u64;
        let (studies, invalid) = validate(page);
        summary.invalid += invalid;
        if let Some(rate) = args.rate {
            // Pace the start of each page so that the run keeps to the rate on average.
            let due = Duration::from_secs_f64(listed as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep(due.saturating_sub(started.elapsed())) => {}
                () = cancel.cancelled() => {}
            }
        }
        in_flight.spawn(refresh_page(
            settings.clone(),
            db.clone(),
            redis.clone(),
            studies,
            schedule.clone(),
        ));
        if in_flight.len() >= args.concurrency as usize {
            add(&mut summary, &progress, in_flight.join_next().await)?;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        add(&mut summary, &progress, Some(done))?;
    }
    progress.finish();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Keeps the rows whose ids can form keys; counts the others.
fn validate(page: Vec<(String, String)>) -> (Vec<(TenantId, Uid)>, u64) {
    let mut invalid = 0;
    let studies = page
        .into_iter()
        .filter_map(|(tenant, study)| match (TenantId::parse(&tenant), Uid::parse(&study)) {
            (Ok(tenant), Ok(study)) => Some((tenant, study)),
            _ => {
                tracing::warn!(%tenant, study_uid = %study, "study skipped: its ids cannot form a cache key");
                invalid += 1;
                None
            }
        })
        .collect();
    (studies, invalid)
}

type PageResult = anyhow::Result<(refresh::Written, u64)>;

fn add(
    summary: &mut WarmSummary,
    progress: &Progress,
    done: Option<Result<PageResult, tokio::task::JoinError>>,
) -> anyhow::Result<()> {
    let Some(done) = done else { return Ok(()) };
    let (written, missing) = done??;
    summary.filled += written.filled as u64;
    summary.stale += written.stale as u64;
    summary.missing += missing;
    progress.advance((written.filled + written.stale) as u64 + missing, summary);
    Ok(())
}

/// Refreshes one page with the daemon's fill code, retrying faults a few times.
async fn refresh_page(
    settings: Settings,
    db: sqlx::PgPool,
    redis: deadpool_redis::Pool,
    studies: Vec<(TenantId, Uid)>,
    schedule: Option<Schedule>,
) -> PageResult {
    // No event names a series: whatever rows exist are the study.
    let none = BTreeSet::new();
    let requests: Vec<Request> = studies
        .iter()
        .map(|(t, s)| (t, s, EventKind::Stored, &none))
        .collect();
    let mut backoff = Backoff::default();
    let mut attempt = 1;
    loop {
        let tried = async {
            let mut pipe = redis::pipe();
            let plans =
                refresh::plan(&db, &settings, &mut pipe, &requests, schedule.as_ref()).await?;
            let mut con = redis.get().await?;
            let written = refresh::send(&mut *con, &pipe, &plans).await?;
            let missing = plans.iter().filter(|p| **p == Plan::Missing).count() as u64;
            anyhow::Ok((written, missing))
        };
        match tried.await {
            Ok(done) => return Ok(done),
            Err(error) if attempt < PAGE_ATTEMPTS => {
                tracing::warn!(%error, attempt, "page failed: retrying");
                attempt += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(error.context(format!("page failed {PAGE_ATTEMPTS} times"))),
        }
    }
}

/// A progress bar on a terminal, periodic log lines otherwise.
enum Progress {
    Bar(ProgressBar),
    Log(Cell<Instant>),
}

impl Progress {
    fn new(total: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:40} {pos}/{len} studies  {per_sec}  eta {eta}")
            {
                bar.set_style(style);
            }
            Self::Bar(bar)
        } else {
            Self::Log(Cell::new(Instant::now()))
        }
    }

    fn advance(&self, studies: u64, summary: &WarmSummary) {
        match self {
            Self::Bar(bar) => bar.inc(studies),
            Self::Log(last) => {
                if last.get().elapsed() >= LOG_INTERVAL {
                    last.set(Instant::now());
                    tracing::info!(
                        done = summary.filled + summary.stale + summary.missing,
                        selected = summary.selected,
                        "warm progress"
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
