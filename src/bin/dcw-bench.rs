//! `dcw-bench`: loads synthetic studies (`load`, for the demo) and measures the daemon
//! draining a backlog (`drain`) on a scratch database and stream.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dicom_cache_warmer::config::{ServiceUrl, Settings};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::{app, db, keys, metrics, redis_conn, stream, study, telemetry};
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use tokio_util::sync::CancellationToken;

/// How often the drain benchmark looks at the group's backlog.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A drain that takes longer than this is reported as failed.
const DRAIN_DEADLINE: Duration = Duration::from_secs(600);

#[derive(Parser)]
#[command(about = "Load synthetic studies, or benchmark the daemon draining a backlog")]
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
    /// instance to the configured stream.
    Load(DatasetArgs),
    /// On a scratch database and stream: load, run the daemon until the backlog is
    /// drained, check every study key, print the figures, clean up.
    Drain(DatasetArgs),
}

#[derive(Args)]
struct DatasetArgs {
    /// Number of studies.
    #[arg(long, default_value_t = 50)]
    studies: usize,
    /// Number of tenants the studies are spread over.
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Series per study: 1 to this many.
    #[arg(long, default_value_t = 6)]
    max_series: usize,
    /// Instances per series: at least this many.
    #[arg(long, default_value_t = 10)]
    min_instances: usize,
    /// Instances per series: at most this many.
    #[arg(long, default_value_t = 200)]
    max_instances: usize,
    /// The same seed gives the same dataset.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tenant ids start with this.
    #[arg(long, default_value = "demo")]
    tenant_prefix: String,
}

impl DatasetArgs {
    fn spec(&self, tenant_prefix: &str) -> DatasetSpec {
        DatasetSpec {
            tenant_prefix: tenant_prefix.to_owned(),
            tenants: self.tenants,
            studies: self.studies,
            max_series: self.max_series,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            seed: self.seed,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    match cli.command {
        Command::Load(args) => load(&settings, &args).await,
        Command::Drain(args) => drain(settings, &args).await,
    }
}

async fn load(settings: &Settings, args: &DatasetArgs) -> anyhow::Result<()> {
    let dataset = Dataset::generate(&args.spec(&args.tenant_prefix));
    let pool = db::lazy_pool(&settings.database)?;
    dataset.insert(&pool).await.context("insert the studies")?;
    let mut con = redis_conn::blocking_connection(&settings.redis, Duration::ZERO).await?;
    dataset
        .publish(&mut con, &settings.stream.key)
        .await
        .context("publish the events")?;
    println!(
        "loaded {} studies ({} series rows) and published {} events to {}",
        args.studies,
        dataset.rows.len(),
        dataset.events.len(),
        settings.stream.key
    );
    Ok(())
}

async fn drain(mut settings: Settings, args: &DatasetArgs) -> anyhow::Result<()> {
    let recorder = metrics::handle().context("metrics recorder")?;
    let id = format!(
        "{}{}",
        std::process::id(),
        chrono::Utc::now().timestamp() % 100_000
    );
    let mut url = url::Url::parse(settings.database.url.expose())?;
    url.set_path(&format!("dcw_bench_{id}"));
    settings.database.url = ServiceUrl::from(url.as_str());
    settings.stream.key = format!("dcw-bench:{id}:ingest");
    settings.stream.dead_letter_key = format!("dcw-bench:{id}:dead");
    settings.http.listen = "127.0.0.1:0".into();
    let tenant_prefix = format!("bench{id}t");
    let dataset = Dataset::generate(&args.spec(&tenant_prefix));

    Postgres::create_database(settings.database.url.expose()).await?;
    let outcome = measure(&settings, &dataset, recorder).await;
    cleanup(&settings, &tenant_prefix).await;
    let figures = outcome?;
    figures.print(args);
    anyhow::ensure!(
        figures.wrong_studies == 0,
        "{} study keys are wrong",
        figures.wrong_studies
    );
    Ok(())
}

struct Figures {
    events: usize,
    studies: usize,
    elapsed: Duration,
    wrong_studies: usize,
    db_queries: f64,
    redis_round_trips: f64,
    peak_rss_kib: u64,
}

impl Figures {
    fn print(&self, args: &DatasetArgs) {
        let secs = self.elapsed.as_secs_f64();
        let events = self.events as f64;
        println!(
            "dataset        {} studies, 1-{} series each, {}-{} instances per series, seed {}",
            self.studies, args.max_series, args.min_instances, args.max_instances, args.seed
        );
        println!("events         {}", self.events);
        println!("drain time     {:.3} s", secs);
        println!("events/s       {:.0}", events / secs);
        println!("studies/s      {:.1}", self.studies as f64 / secs);
        println!(
            "pg queries     {:.5} per event ({} in all)",
            self.db_queries / events,
            self.db_queries
        );
        println!(
            "redis trips    {:.5} per event ({} in all)",
            self.redis_round_trips / events,
            self.redis_round_trips
        );
        println!("wrong studies  {}", self.wrong_studies);
        println!(
            "peak RSS       {} KiB (bench process: daemon plus dataset)",
            self.peak_rss_kib
        );
        println!(
            "{}",
            serde_json::json!({
                "events": self.events, "studies": self.studies, "drain_secs": secs,
                "events_per_sec": events / secs, "studies_per_sec": self.studies as f64 / secs,
                "pg_queries_per_event": self.db_queries / events,
                "redis_round_trips_per_event": self.redis_round_trips / events,
                "wrong_studies": self.wrong_studies, "peak_rss_kib": self.peak_rss_kib,
            })
        );
    }
}

async fn measure(
    settings: &Settings,
    dataset: &Dataset,
    recorder: &'static metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<Figures> {
    let pool = db::lazy_pool(&settings.database)?;
    db::MIGRATOR.run(&pool).await?;
    dataset.insert(&pool).await?;
    let mut con = redis_conn::blocking_connection(&settings.redis, Duration::ZERO).await?;
    dataset.publish(&mut con, &settings.stream.key).await?;

    let cancel = CancellationToken::new();
    let started = Instant::now();
    let daemon = tokio::spawn(app::run(Arc::new(settings.clone()), cancel.clone()));
    loop {
        let backlog = stream::backlog(&mut con, &settings.stream).await?;
        if backlog.is_some_and(|b| b.is_drained()) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < DRAIN_DEADLINE,
            "not drained after {DRAIN_DEADLINE:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    daemon.await??;

    let rendered = recorder.render();
    let mut wrong_studies = 0;
    let mut by_study: BTreeMap<(&str, &str), Vec<study::DicomStateMeta>> = BTreeMap::new();
    for row in &dataset.rows {
        by_study
            .entry((&row.tenant_id, &row.study_uid))
            .or_default()
            .push(row.clone());
    }
    for ((tenant, study_uid), rows) in &by_study {
        let key = keys::study_metadata(&TenantId::parse(tenant)?, &Uid::parse(study_uid)?);
        let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
        if cached.as_deref() != Some(study::encode(rows).as_str()) {
            wrong_studies += 1;
        }
    }
    pool.close().await;
    Ok(Figures {
        events: dataset.events.len(),
        studies: by_study.len(),
        elapsed,
        wrong_studies,
        db_queries: metric_sum(&rendered, "dcw_db_queries_total"),
        redis_round_trips: metric_sum(&rendered, "dcw_redis_round_trips_total"),
        peak_rss_kib: peak_rss_kib(),
    })
}

/// Sums every series of a counter in Prometheus text output.
fn metric_sum(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The process's peak resident set (VmHWM), in KiB; 0 where /proc is unavailable.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Drops the scratch database and deletes the scratch stream and keys.
async fn cleanup(settings: &Settings, tenant_prefix: &str) {
    if let Err(error) = Postgres::force_drop_database(settings.database.url.expose()).await {
        eprintln!("could not drop the scratch database: {error}");
    }
    let Ok(mut con) = redis_conn::blocking_connection(&settings.redis, Duration::ZERO).await else {
        eprintln!("could not reach redis to delete the scratch keys");
        return;
    };
    let mut doomed = vec![
        settings.stream.key.clone(),
        settings.stream.dead_letter_key.clone(),
    ];
    let pattern = format!("*:{tenant_prefix}*");
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, found)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut con)
            .await
        else {
            break;
        };
        doomed.extend(found);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for chunk in doomed.chunks(1_000) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(chunk).query_async(&mut con).await;
    }
}
