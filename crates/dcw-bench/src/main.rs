//! `dcw-bench`: loads synthetic studies (`load`, for the demo) and benchmarks the daemon on
//! scratch databases and streams: a backlog drained, against a plain per-event worker on the
//! same data (`drain`); publish-to-key latency, idle and under a paced load (`latency`); and
//! series documents built from instance files (`series`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dcw_testkit::synthetic::{self, Dataset, DatasetSpec, InstanceEvent};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use dicom_cache_warmer::{
    Backlog, DicomStateMeta, DocumentOptions, InstanceJson, MIGRATOR, ServiceUrl, Settings,
    StreamSettings, ack, backlog, blocking_connection, by_study, command_pool, connection_info,
    encode_study, ensure_group, init_logging, lazy_pool, metrics_handle, parse_event,
    read_instance, read_new, run,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use sqlx::migrate::MigrateDatabase;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;

/// How often the drain benchmark looks at the group's backlog.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A drain that takes longer than this is reported as failed.
const DRAIN_DEADLINE: Duration = Duration::from_secs(600);
/// Time the daemon binary gets to answer on its HTTP endpoint.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Time the daemon gets to stop after SIGTERM (its grace is 25 s by default).
const STOP_DEADLINE: Duration = Duration::from_secs(40);
/// A probe whose key is not visible after this long fails the latency benchmark.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Entries one XREADGROUP of the reference worker asks for.
const REFERENCE_READ_COUNT: usize = 100;

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
    /// instance to the configured stream.
    Load(DatasetArgs),
    /// On a scratch database and stream: load, let the daemon drain the backlog, then a
    /// plain per-event worker drain the same events; check every study key after each,
    /// print the figures, clean up.
    Drain(DrainArgs),
    /// On a scratch database and stream: publish-to-key-visible latency of probe events
    /// for uncached studies, with the daemon idle, then under a paced background load.
    Latency(LatencyArgs),
    /// Series documents from a series of CT instance files in a temporary folder:
    /// instances per second through the daemon's code, warm and cold page cache.
    Series(SeriesArgs),
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
    /// Tenant ids start with this (`load` only; the benchmarks use a scratch prefix).
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

    fn describe(&self) -> String {
        format!(
            "{} studies, {} tenants, 1-{} series per study, {}-{} instances per series, seed {}",
            self.studies,
            self.tenants,
            self.max_series,
            self.min_instances,
            self.max_instances,
            self.seed
        )
    }
}

#[derive(Args)]
struct DaemonArgs {
    /// `binary`: the release binary as a child process, whose /metrics gives the counters
    /// and whose /proc status gives the peak resident memory; `in-process`: the library's
    /// run function inside this process (memory is then this whole process's).
    #[arg(long, value_enum, default_value_t = DaemonMode::Binary)]
    daemon: DaemonMode,
    /// The daemon binary (`cargo build --release --bin dicom-cache-warmer`).
    #[arg(long, default_value = "target/release/dicom-cache-warmer")]
    daemon_bin: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DaemonMode {
    Binary,
    InProcess,
}

#[derive(Args)]
struct DrainArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Concurrent workers of the per-event reference strategy; 0 skips it.
    #[arg(long, default_value_t = 4)]
    reference_workers: usize,
}

#[derive(Args)]
struct LatencyArgs {
    /// The background studies (their events make the load).
    #[command(flatten)]
    dataset: DatasetArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Probes per phase.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Background load of the second phase, in events per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// How often a probe looks for its study key, in microseconds.
    #[arg(long, default_value_t = 200)]
    poll_us: u64,
}

#[derive(Args)]
struct SeriesArgs {
    /// Instances in the series.
    #[arg(long, default_value_t = 500)]
    instances: usize,
    /// Threads converting files; the daemon uses one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Timed rounds per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
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
        Command::Load(args) => load(&settings, &args).await,
        Command::Drain(args) => drain(settings, cli.config.as_deref(), &args).await,
        Command::Latency(args) => latency(settings, cli.config.as_deref(), &args).await,
        Command::Series(args) => series(&args),
    }
}

async fn load(settings: &Settings, args: &DatasetArgs) -> anyhow::Result<()> {
    let dataset = Dataset::generate(&args.spec(&args.tenant_prefix));
    let pool = lazy_pool(&settings.database)?;
    dataset.insert(&pool).await.context("insert the studies")?;
    let mut con = blocking_connection(&settings.redis, Duration::ZERO).await?;
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

// ---------------------------------------------------------------------------------------
// Scratch database and stream

/// A database, streams and tenant ids of this run only; `cleanup` removes them.
struct Scratch {
    /// The settings pointed at the scratch database and stream.
    settings: Settings,
    /// Scratch Redis keys start with this.
    key_prefix: String,
    /// Scratch tenant ids start with this.
    tenant_prefix: String,
}

impl Scratch {
    async fn create(mut settings: Settings) -> anyhow::Result<Self> {
        let id = format!(
            "{}{}",
            std::process::id(),
            chrono::Utc::now().timestamp() % 100_000
        );
        let mut url = url::Url::parse(settings.database.url.expose())?;
        url.set_path(&format!("dcw_bench_{id}"));
        settings.database.url = ServiceUrl::from(url.as_str());
        let key_prefix = format!("dcw-bench:{id}:");
        settings.stream.key = format!("{key_prefix}ingest");
        settings.stream.dead_letter_key = format!("{key_prefix}dead");
        settings.http.listen = "127.0.0.1:0".into();
        Postgres::create_database(settings.database.url.expose())
            .await
            .context("create the scratch database")?;
        let scratch = Self {
            settings,
            key_prefix,
            tenant_prefix: format!("bench{id}t"),
        };
        let pool = scratch.pool()?;
        let migrated = MIGRATOR.run(&pool).await;
        pool.close().await;
        if let Err(error) = migrated {
            scratch.cleanup().await;
            return Err(error).context("migrate the scratch database");
        }
        Ok(scratch)
    }

    fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(lazy_pool(&self.settings.database)?)
    }

    async fn redis(&self) -> anyhow::Result<MultiplexedConnection> {
        Ok(blocking_connection(&self.settings.redis, Duration::ZERO).await?)
    }

    /// Drops the scratch database and deletes the scratch streams and keys.
    async fn cleanup(&self) {
        if let Err(error) = Postgres::force_drop_database(self.settings.database.url.expose()).await
        {
            eprintln!("could not drop the scratch database: {error}");
        }
        let Ok(mut con) = self.redis().await else {
            eprintln!("could not reach redis to delete the scratch keys");
            return;
        };
        for pattern in [
            format!("{}*", self.key_prefix),
            format!("*:{}*", self.tenant_prefix),
        ] {
            let mut doomed: Vec<String> = Vec::new();
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
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(chunk).query_async(&mut con).await;
            }
        }
    }
}

/// Runs `body` on a fresh scratch environment and removes it afterwards, whatever happened.
async fn with_scratch<T>(
    settings: Settings,
    body: impl AsyncFnOnce(&Scratch) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let scratch = Scratch::create(settings).await?;
    let outcome = body(&scratch).await;
    scratch.cleanup().await;
    outcome
}

// ---------------------------------------------------------------------------------------
// The daemon under test

/// The daemon, run either as the release binary or in this process.
enum Daemon {
    Binary {
        child: ChildGuard,
        http: SocketAddr,
        path: PathBuf,
    },
    InProcess {
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
}

/// Kills the child process if it is still running when dropped (an error path).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The daemon's own counters.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    db_queries: f64,
    redis_round_trips: f64,
    /// Study keys written (one study is written again for every batch it appears in).
    study_fills: f64,
}

impl Daemon {
    /// Starts the daemon on `settings` (the scratch database and stream).
    async fn start(
        args: &DaemonArgs,
        settings: &Settings,
        config: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if args.daemon == DaemonMode::InProcess {
            metrics_handle().context("install the metrics recorder")?;
            let cancel = CancellationToken::new();
            let task = tokio::spawn(run(Arc::new(settings.clone()), cancel.clone()));
            return Ok(Self::InProcess { cancel, task });
        }
        let http = SocketAddr::from((
            [127, 0, 0, 1],
            TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
        ));
        let mut command = std::process::Command::new(&args.daemon_bin);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .arg("run")
            .env("DCW__DATABASE__URL", settings.database.url.expose())
            .env("DCW__STREAM__KEY", &settings.stream.key)
            .env("DCW__STREAM__GROUP", &settings.stream.group)
            .env(
                "DCW__STREAM__DEAD_LETTER_KEY",
                &settings.stream.dead_letter_key,
            )
            .env("DCW__HTTP__LISTEN", http.to_string())
            .env("DCW__LOG__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (build it with `cargo build --release --bin dicom-cache-warmer`, \
                     or pass --daemon in-process)",
                    args.daemon_bin.display()
                )
            })?;
        Ok(Self::Binary {
            child: ChildGuard(child),
            http,
            path: args.daemon_bin.clone(),
        })
    }

    /// What the figures were measured on.
    fn describe(&self) -> String {
        match self {
            Self::Binary { child, path, .. } => format!(
                "release binary {} as a child process (pid {})",
                path.display(),
                child.0.id()
            ),
            Self::InProcess { .. } => "in-process (the library's run)".into(),
        }
    }

    fn mode(&self) -> &'static str {
        match self {
            Self::Binary { .. } => "binary",
            Self::InProcess { .. } => "in-process",
        }
    }

    /// The daemon's process id, when it runs as a child process.
    fn pid(&self) -> Option<u32> {
        match self {
            Self::Binary { child, .. } => Some(child.0.id()),
            Self::InProcess { .. } => None,
        }
    }

    /// Fails when the daemon has stopped on its own.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Binary { child, .. } => match child.0.try_wait()? {
                Some(status) => bail!("the daemon exited early: {status}"),
                None => Ok(()),
            },
            Self::InProcess { task, .. } => {
                ensure!(!task.is_finished(), "the daemon stopped early");
                Ok(())
            }
        }
    }

    /// Waits until the daemon answers on its HTTP endpoint (binary) or has had time to
    /// start its reader (in-process).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            match self {
                Self::Binary { http, .. } => {
                    if matches!(http_get(*http, "/readyz"), Ok((200, _))) {
                        return Ok(());
                    }
                }
                Self::InProcess { .. } => {
                    if started.elapsed() > Duration::from_millis(300) {
                        return Ok(());
                    }
                }
            }
            ensure!(
                started.elapsed() < START_DEADLINE,
                "the daemon was not ready after {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The daemon's PostgreSQL query and Redis round-trip counters.
    fn counters(&self) -> anyhow::Result<Counters> {
        let rendered = match self {
            Self::Binary { http, .. } => {
                let (status, body) = http_get(*http, "/metrics")?;
                ensure!(status == 200, "GET /metrics answered {status}");
                body
            }
            Self::InProcess { .. } => metrics_handle().context("no metrics recorder")?.render(),
        };
        Ok(Counters {
            db_queries: metric_sum(&rendered, "dcw_db_queries_total"),
            redis_round_trips: metric_sum(&rendered, "dcw_redis_round_trips_total"),
            study_fills: metric_sum(&rendered, "dcw_studies_filled_total"),
        })
    }

    /// Peak resident memory (VmHWM) in KiB of the daemon's process: the child's, or this
    /// whole process's when in-process.
    fn peak_rss_kib(&self) -> Option<u64> {
        let pid = match self {
            Self::Binary { child, .. } => child.0.id().to_string(),
            Self::InProcess { .. } => "self".into(),
        };
        proc_status_kib(&pid, "VmHWM")
    }

    /// Stops the daemon gracefully (SIGTERM) and checks that it exited cleanly.
    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Binary { mut child, .. } => {
                let pid = child.0.id().to_string();
                // std has no signal but SIGKILL; `kill` is in every base system.
                std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .context("run kill -TERM")?;
                let started = Instant::now();
                loop {
                    if let Some(status) = child.0.try_wait()? {
                        ensure!(status.success(), "the daemon exited with {status}");
                        return Ok(());
                    }
                    ensure!(
                        started.elapsed() < STOP_DEADLINE,
                        "the daemon did not stop within {STOP_DEADLINE:?} of SIGTERM"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Self::InProcess { cancel, task } => {
                cancel.cancel();
                task.await?
            }
        }
    }
}

/// A plain HTTP/1.0 GET on localhost (no chunked replies): status and body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP reply without a header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP reply without a status")?;
    Ok((status, body.to_owned()))
}

/// Sums every series of a counter in Prometheus text output.
fn metric_sum(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `kB` field of /proc/{pid}/status, such as VmHWM (peak resident set).
fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// Machine and load, printed beside every figure

/// The load average (1, 5, 15 minutes) from /proc/loadavg.
fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|()| fields.next().unwrap_or(0.0))
}

fn format_load(load: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", load[0], load[1], load[2])
}

/// Cores, processor, memory, and the Redis and PostgreSQL versions.
async fn machine(con: &mut MultiplexedConnection, pool: &PgPool) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown processor", |(_, model)| model.trim());
    let memory_gib = proc_meminfo_kib("MemTotal").unwrap_or(0) as f64 / 1_048_576.0;
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(con)
        .await
        .unwrap_or_default();
    let redis_version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let pg_version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|_| "?".into());
    format!(
        "{cores} cores ({model}), {memory_gib:.1} GiB; Redis {redis_version}; PostgreSQL {pg_version}; all on this machine"
    )
}

fn proc_meminfo_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// CPU time of the client, Redis and PostgreSQL, where they run on this machine

/// CPU seconds (user + system) spent during a measurement.
#[derive(Debug, Default, Clone, Copy)]
struct CpuUse {
    /// The daemon's process, or this process for the in-process daemon and the reference.
    client: Option<f64>,
    /// The whole Redis server (other clients' commands included), from INFO cpu.
    redis: Option<f64>,
    /// The PostgreSQL backends of the scratch database that started during the measurement.
    postgres: Option<f64>,
}

/// Where a CPU measurement starts.
struct CpuMark {
    own: Option<f64>,
    redis: Option<f64>,
    pg_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl CpuMark {
    async fn now(con: &mut MultiplexedConnection, pool: &PgPool) -> Self {
        Self {
            own: process_cpu_secs("self"),
            redis: redis_cpu_secs(con).await,
            pg_since: sqlx::query_scalar("SELECT clock_timestamp()")
                .fetch_one(pool)
                .await
                .ok(),
        }
    }

    /// The CPU used since the mark; `client_pid` is the daemon's process (`None`: this one).
    async fn used(
        &self,
        con: &mut MultiplexedConnection,
        pool: &PgPool,
        client_pid: Option<u32>,
    ) -> CpuUse {
        let client = match client_pid {
            Some(pid) => process_cpu_secs(&pid.to_string()),
            None => process_cpu_secs("self")
                .zip(self.own)
                .map(|(now, then)| now - then),
        };
        let redis = redis_cpu_secs(con)
            .await
            .zip(self.redis)
            .map(|(now, then)| now - then);
        let mut postgres = None;
        if let Some(since) = self.pg_since {
            let backends: Result<Vec<i32>, _> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND backend_start >= $1",
            )
            .bind(since)
            .fetch_all(pool)
            .await;
            postgres = backends.ok().and_then(|pids| {
                pids.iter()
                    .map(|pid| process_cpu_secs(&pid.to_string()))
                    .sum::<Option<f64>>()
            });
        }
        CpuUse {
            client,
            redis,
            postgres,
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc/{pid}/stat.
fn process_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count the fields after its ')'. utime and
    // stime are fields 14 and 15, so the 12th and 13th after the name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_sec())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 almost everywhere).
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The Redis server's CPU seconds so far (user + system), from INFO cpu.
async fn redis_cpu_secs(con: &mut MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(con).await.ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}

fn format_secs(secs: Option<f64>) -> String {
    secs.map_or("?".into(), |s| format!("{s:.2}"))
}

// ---------------------------------------------------------------------------------------
// drain

async fn drain(settings: Settings, config: Option<&Path>, args: &DrainArgs) -> anyhow::Result<()> {
    let report = with_scratch(settings, async |scratch| {
        drain_on(scratch, config, args).await
    })
    .await?;
    report.print(args);
    ensure!(
        report.daemon.wrong_studies == 0,
        "{} study keys written by the daemon are wrong",
        report.daemon.wrong_studies
    );
    if let Some(reference) = &report.reference {
        ensure!(
            reference.wrong_studies == 0,
            "{} study keys written by the reference worker are wrong",
            reference.wrong_studies
        );
    }
    Ok(())
}

/// One strategy's drain of the backlog.
struct DrainRun {
    elapsed: Duration,
    wrong_studies: usize,
    counters: Counters,
    cpu: CpuUse,
}

struct DrainReport {
    machine: String,
    daemon_description: String,
    daemon_mode: &'static str,
    events: usize,
    studies: usize,
    publish: Duration,
    startup: Duration,
    daemon: DrainRun,
    peak_rss_kib: Option<u64>,
    reference: Option<DrainRun>,
    load_before: [f64; 3],
    load_after_daemon: [f64; 3],
    load_after_reference: Option<[f64; 3]>,
}

async fn drain_on(
    scratch: &Scratch,
    config: Option<&Path>,
    args: &DrainArgs,
) -> anyhow::Result<DrainReport> {
    let settings = &scratch.settings;
    let dataset = Dataset::generate(&args.dataset.spec(&scratch.tenant_prefix));
    let pool = scratch.pool()?;
    dataset.insert(&pool).await.context("insert the studies")?;
    analyze(&pool).await?;
    let mut con = scratch.redis().await?;
    let machine = machine(&mut con, &pool).await;
    let published = Instant::now();
    dataset
        .publish(&mut con, &settings.stream.key)
        .await
        .context("publish the events")?;
    let publish = published.elapsed();
    // The group exists before the daemon starts, so that the backlog is watched from the
    // first delivery on (the daemon's own create then finds it).
    ensure_group(&mut con, &settings.stream).await?;

    let load_before = load_average();
    let mark = CpuMark::now(&mut con, &pool).await;
    let mut daemon = Daemon::start(&args.daemon, settings, config).await?;
    let daemon_description = daemon.describe();
    let daemon_mode = daemon.mode();
    let timing = wait_drained(
        &mut con,
        &settings.stream,
        dataset.events.len(),
        &mut daemon,
    )
    .await;
    let load_after_daemon = load_average();
    let cpu = mark.used(&mut con, &pool, daemon.pid()).await;
    let counters = daemon.counters();
    let peak_rss_kib = daemon.peak_rss_kib();
    daemon.stop().await?;
    let (startup, elapsed) = timing?;
    let counters = counters?;
    let wrong_studies = wrong_study_keys(&mut con, &dataset).await?;

    let reference = if args.reference_workers > 0 {
        Some(reference_drain(scratch, &dataset, &mut con, &pool, args.reference_workers).await?)
    } else {
        None
    };
    let load_after_reference = reference.as_ref().map(|_| load_average());
    pool.close().await;
    Ok(DrainReport {
        machine,
        daemon_description,
        daemon_mode,
        events: dataset.events.len(),
        studies: by_study(&dataset.rows).count(),
        publish,
        startup,
        daemon: DrainRun {
            elapsed,
            wrong_studies,
            counters,
            cpu,
        },
        peak_rss_kib,
        reference,
        load_before,
        load_after_daemon,
        load_after_reference,
    })
}

/// Gives the planner the statistics that autovacuum keeps on a live database. Without them
/// PostgreSQL may look studies up through `index_state_unique4patient` (tenant, patient,
/// study, series), scanning the tenant's whole index range for each study.
async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("ANALYZE dicom_state_meta")
        .execute(pool)
        .await
        .context("analyze dicom_state_meta")?;
    Ok(())
}

/// Waits until the group has nothing pending or unread; returns the time from the start
/// to the first delivery (the daemon's start-up) and from there to the end (the drain).
async fn wait_drained(
    con: &mut MultiplexedConnection,
    settings: &StreamSettings,
    events: usize,
    daemon: &mut Daemon,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut first_delivery = None;
    loop {
        daemon.check_running()?;
        let backlog = backlog(con, settings).await?;
        let now = Instant::now();
        if let Some(backlog) = backlog {
            let delivered = backlog.pending > 0 || backlog.lag.is_some_and(|lag| lag < events);
            if delivered && first_delivery.is_none() {
                first_delivery = Some(now);
            }
            if backlog.is_drained() {
                let first = first_delivery.unwrap_or(started);
                return Ok((first - started, now - first));
            }
        }
        ensure!(
            started.elapsed() < DRAIN_DEADLINE,
            "not drained after {DRAIN_DEADLINE:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The study keys of the dataset, each with the JSON it must hold.
fn expected_study_keys(dataset: &Dataset) -> anyhow::Result<Vec<(String, String, String)>> {
    by_study(&dataset.rows)
        .map(|rows| {
            let tenant = TenantId::parse(&rows[0].tenant_id)?;
            let uid = Uid::parse(&rows[0].study_uid)?;
            Ok((
                keys::study_metadata(&tenant, &uid),
                keys::study_version(&tenant, &uid),
                encode_study(rows),
            ))
        })
        .collect()
}

/// How many of the dataset's study keys do not hold exactly the study's JSON.
async fn wrong_study_keys(
    con: &mut MultiplexedConnection,
    dataset: &Dataset,
) -> anyhow::Result<usize> {
    let expected = expected_study_keys(dataset)?;
    let mut wrong = 0;
    for chunk in expected.chunks(500) {
        let mut pipe = redis::pipe();
        for (key, _, _) in chunk {
            pipe.cmd("GET").arg(key);
        }
        let cached: Vec<Option<String>> = pipe.query_async(con).await?;
        wrong += chunk
            .iter()
            .zip(&cached)
            .filter(|((_, _, json), cached)| cached.as_deref() != Some(json.as_str()))
            .count();
    }
    Ok(wrong)
}

// ---------------------------------------------------------------------------------------
// The reference strategy: a plain per-event worker

/// One study's rows, as a per-event worker reads them.
const REFERENCE_SELECT: &str = "SELECT tenant_id, patient_id, study_uid, series_uid, \
     study_uid_hash, series_uid_hash, study_date_origin, patient_name, patient_sex, \
     patient_birth_date, patient_birth_time, patient_age, patient_size, patient_weight, \
     study_date, study_time, accession_number, study_id, study_description, modality, \
     series_number, series_date, series_time, series_description, body_part_examined, \
     protocol_name, series_related_instances, created_time, updated_time \
     FROM dicom_state_meta \
     WHERE tenant_id = $1 AND study_uid = $2 \
       AND created_time IS NOT NULL AND updated_time IS NOT NULL \
     ORDER BY series_uid";

#[derive(Default)]
struct ReferenceCounts {
    queries: AtomicU64,
    round_trips: AtomicU64,
    fills: AtomicU64,
}

/// Drains the same events with `workers` plain per-event workers on their own stream and
/// group, after removing the daemon's study keys: per entry one SELECT, one MULTI of SET
/// and DEL, one XACK (entries read 100 at a time).
async fn reference_drain(
    scratch: &Scratch,
    dataset: &Dataset,
    con: &mut MultiplexedConnection,
    pool: &PgPool,
    workers: usize,
) -> anyhow::Result<DrainRun> {
    let expected = expected_study_keys(dataset)?;
    for chunk in expected.chunks(1_000) {
        let mut pipe = redis::pipe();
        for (key, version, _) in chunk {
            pipe.cmd("DEL").arg(key).arg(version).ignore();
        }
        pipe.query_async::<()>(con).await?;
    }
    let stream = StreamSettings {
        key: format!("{}reference", scratch.key_prefix),
        group: "dcw-bench-reference".into(),
        batch_size: REFERENCE_READ_COUNT,
        // An empty read after 1 ms means every entry has been delivered.
        block_ms: 1,
        ..scratch.settings.stream.clone()
    };
    dataset.publish(con, &stream.key).await?;
    ensure_group(con, &stream).await?;

    let mark = CpuMark::now(con, pool).await;
    let mut settings = scratch.settings.clone();
    settings.database.max_connections = u32::try_from(workers)?;
    settings.redis.pool_size = workers;
    let db = lazy_pool(&settings.database)?;
    let redis = command_pool(&settings.redis)?;
    let counts = Arc::new(ReferenceCounts::default());
    let ttl = settings.cache.study_ttl_secs;
    // Connections are opened before the clock starts, as a running worker has them.
    sqlx::query("SELECT 1").execute(&db).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..workers {
        let stream = StreamSettings {
            consumer: format!("reference-{n}"),
            ..stream.clone()
        };
        let (db, redis, counts) = (db.clone(), redis.clone(), counts.clone());
        tasks.spawn(async move { reference_worker(&stream, &db, &redis, ttl, &counts).await });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let cpu = mark.used(con, pool, None).await;
    db.close().await;
    let backlog = backlog(con, &stream).await?;
    ensure!(
        backlog.is_some_and(|b| b.is_drained()),
        "the reference workers left entries: {backlog:?}"
    );
    Ok(DrainRun {
        elapsed,
        wrong_studies: wrong_study_keys(con, dataset).await?,
        counters: Counters {
            db_queries: counts.queries.load(Ordering::Relaxed) as f64,
            redis_round_trips: counts.round_trips.load(Ordering::Relaxed) as f64,
            study_fills: counts.fills.load(Ordering::Relaxed) as f64,
        },
        cpu,
    })
}

async fn reference_worker(
    stream: &StreamSettings,
    db: &PgPool,
    redis: &deadpool_redis::Pool,
    ttl_secs: u64,
    counts: &ReferenceCounts,
) -> anyhow::Result<()> {
    let mut con = redis.get().await?;
    loop {
        let entries = read_new(&mut *con, stream, true).await?;
        counts.round_trips.fetch_add(1, Ordering::Relaxed);
        if entries.is_empty() {
            return Ok(());
        }
        for entry in &entries {
            if let Ok(event) = parse_event(&entry.fields) {
                let rows: Vec<DicomStateMeta> = sqlx::query_as(REFERENCE_SELECT)
                    .bind(event.tenant.as_str())
                    .bind(event.study.as_str())
                    .fetch_all(db)
                    .await?;
                counts.queries.fetch_add(1, Ordering::Relaxed);
                if !rows.is_empty() {
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(keys::study_metadata(&event.tenant, &event.study))
                        .arg(encode_study(&rows))
                        .arg("EX")
                        .arg(ttl_secs)
                        .ignore()
                        .cmd("DEL")
                        .arg(keys::study_negative_flag(&event.tenant, &event.study))
                        .ignore()
                        .query_async::<()>(&mut *con)
                        .await?;
                    counts.round_trips.fetch_add(1, Ordering::Relaxed);
                    counts.fills.fetch_add(1, Ordering::Relaxed);
                }
            }
            ack(&mut *con, stream, &[entry.id]).await?;
            counts.round_trips.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn cpu_json(cpu: &CpuUse) -> serde_json::Value {
    json!({"client": cpu.client, "redis": cpu.redis, "postgres": cpu.postgres})
}

impl DrainReport {
    fn print(&self, args: &DrainArgs) {
        let events = self.events as f64;
        let rate = |run: &DrainRun| events / run.elapsed.as_secs_f64();
        let per_event = |value: f64| value / events;
        println!("dcw-bench drain: {}", args.dataset.describe());
        println!("machine          {}", self.machine);
        println!("daemon           {}", self.daemon_description);
        println!(
            "events           {} (published in {:.2} s), {} studies",
            self.events,
            self.publish.as_secs_f64(),
            self.studies
        );
        let reference_header = match &self.reference {
            Some(_) => format!("reference ({} workers)", args.reference_workers),
            None => "reference (skipped)".into(),
        };
        println!("{:<24} {:>14} {:>24}", "", "daemon", reference_header);
        let row = |name: &str, daemon: String, reference: Option<String>| {
            println!(
                "{name:<24} {daemon:>14} {:>24}",
                reference.unwrap_or_default()
            );
        };
        let reference = self.reference.as_ref();
        row(
            "drain time (s)",
            format!("{:.3}", self.daemon.elapsed.as_secs_f64()),
            reference.map(|r| format!("{:.3}", r.elapsed.as_secs_f64())),
        );
        row(
            "events/s",
            format!("{:.0}", rate(&self.daemon)),
            reference.map(|r| format!("{:.0}", rate(r))),
        );
        row(
            "studies/s",
            format!(
                "{:.1}",
                self.studies as f64 / self.daemon.elapsed.as_secs_f64()
            ),
            reference.map(|r| format!("{:.1}", self.studies as f64 / r.elapsed.as_secs_f64())),
        );
        row(
            "pg queries/event",
            format!("{:.5}", per_event(self.daemon.counters.db_queries)),
            reference.map(|r| format!("{:.5}", per_event(r.counters.db_queries))),
        );
        row(
            "redis round trips/event",
            format!("{:.5}", per_event(self.daemon.counters.redis_round_trips)),
            reference.map(|r| format!("{:.5}", per_event(r.counters.redis_round_trips))),
        );
        row(
            "study fills per study",
            format!(
                "{:.1}",
                self.daemon.counters.study_fills / self.studies as f64
            ),
            reference.map(|r| format!("{:.1}", r.counters.study_fills / self.studies as f64)),
        );
        row(
            "wrong study keys",
            self.daemon.wrong_studies.to_string(),
            reference.map(|r| r.wrong_studies.to_string()),
        );
        for (name, pick) in [
            (
                "client CPU (s)",
                (|c: &CpuUse| c.client) as fn(&CpuUse) -> Option<f64>,
            ),
            ("redis CPU (s)", |c: &CpuUse| c.redis),
            ("postgres CPU (s)", |c: &CpuUse| c.postgres),
        ] {
            row(
                name,
                format_secs(pick(&self.daemon.cpu)),
                reference.map(|r| format_secs(pick(&r.cpu))),
            );
        }
        row(
            "load after (1 5 15 min)",
            format_load(self.load_after_daemon),
            self.load_after_reference.map(format_load),
        );
        println!(
            "(CPU: client = the daemon's process, or this one for the in-process daemon and the \
             reference workers; redis = the whole server; postgres = the scratch database's backends)"
        );
        let ratio = reference.map(|r| rate(&self.daemon) / rate(r));
        if let Some(ratio) = ratio {
            println!("daemon / reference events/s: {ratio:.1}x");
        }
        println!(
            "daemon start-up  {:.0} ms from start to first delivery (not in the drain time)",
            self.startup.as_secs_f64() * 1e3
        );
        let rss_source = match self.daemon_mode {
            "binary" => "the daemon process",
            _ => "this whole process: daemon, dataset and bench",
        };
        match self.peak_rss_kib {
            Some(kib) => println!(
                "peak RSS         {kib} KiB = {:.1} MiB (VmHWM of {rss_source})",
                kib as f64 / 1024.0
            ),
            None => println!("peak RSS         unknown (no /proc)"),
        }
        println!("load before      {}", format_load(self.load_before));
        let mut line = json!({
            "command": "drain",
            "daemon": self.daemon_mode,
            "studies": self.studies,
            "events": self.events,
            "drain_secs": self.daemon.elapsed.as_secs_f64(),
            "events_per_sec": rate(&self.daemon),
            "studies_per_sec": self.studies as f64 / self.daemon.elapsed.as_secs_f64(),
            "pg_queries_per_event": per_event(self.daemon.counters.db_queries),
            "redis_round_trips_per_event": per_event(self.daemon.counters.redis_round_trips),
            "study_fills": self.daemon.counters.study_fills,
            "wrong_studies": self.daemon.wrong_studies,
            "startup_ms": self.startup.as_secs_f64() * 1e3,
            "cpu_secs": cpu_json(&self.daemon.cpu),
            "peak_rss_kib": self.peak_rss_kib,
            "load_before": self.load_before,
            "load_after": self.load_after_daemon,
        });
        if let Some(r) = reference {
            line["reference"] = json!({
                "workers": args.reference_workers,
                "drain_secs": r.elapsed.as_secs_f64(),
                "events_per_sec": rate(r),
                "pg_queries_per_event": per_event(r.counters.db_queries),
                "redis_round_trips_per_event": per_event(r.counters.redis_round_trips),
                "study_fills": r.counters.study_fills,
                "wrong_studies": r.wrong_studies,
                "cpu_secs": cpu_json(&r.cpu),
                "load_after": self.load_after_reference,
            });
            line["daemon_to_reference"] = json!(ratio);
        }
        println!("{line}");
    }
}

// ---------------------------------------------------------------------------------------
// latency

async fn latency(
    settings: Settings,
    config: Option<&Path>,
    args: &LatencyArgs,
) -> anyhow::Result<()> {
    ensure!(args.probes > 0, "--probes must be at least 1");
    let report = with_scratch(settings, async |scratch| {
        latency_on(scratch, config, args).await
    })
    .await?;
    report.print(args);
    Ok(())
}

/// The latencies of one phase's probes, and the background load it ran under.
struct Phase {
    latencies: Vec<Duration>,
    load: [f64; 3],
    background_rate: Option<f64>,
    backlog_after: Option<Backlog>,
}

struct LatencyReport {
    machine: String,
    daemon_description: String,
    daemon_mode: &'static str,
    idle: Phase,
    loaded: Phase,
    wrong_probe_keys: usize,
}

async fn latency_on(
    scratch: &Scratch,
    config: Option<&Path>,
    args: &LatencyArgs,
) -> anyhow::Result<LatencyReport> {
    let settings = &scratch.settings;
    let background = Dataset::generate(&args.dataset.spec(&format!("{}b", scratch.tenant_prefix)));
    // Each probe is the first instance of a study of its own, in the database and never
    // cached until its event arrives.
    let probe_studies = Dataset::generate(&DatasetSpec {
        tenant_prefix: format!("{}p", scratch.tenant_prefix),
        tenants: 2,
        studies: 2 * args.probes,
        max_series: 2,
        min_instances: 1,
        max_instances: 3,
        seed: args.dataset.seed.wrapping_add(1),
    });
    let mut firsts: BTreeMap<(&str, &str), &InstanceEvent> = BTreeMap::new();
    for event in &probe_studies.events {
        firsts
            .entry((&event.tenant_id, &event.study_uid))
            .or_insert(event);
    }
    let probes: Vec<InstanceEvent> = firsts.into_values().cloned().collect();

    let pool = scratch.pool()?;
    background
        .insert(&pool)
        .await
        .context("insert the studies")?;
    probe_studies
        .insert(&pool)
        .await
        .context("insert the probe studies")?;
    analyze(&pool).await?;
    let mut con = scratch.redis().await?;
    let machine = machine(&mut con, &pool).await;
    ensure_group(&mut con, &settings.stream).await?;

    let mut daemon = Daemon::start(&args.daemon, settings, config).await?;
    let daemon_description = daemon.describe();
    let daemon_mode = daemon.mode();
    let phases = async {
        daemon.wait_ready().await?;
        // Connections in the pools are opened by the first batches; let the daemon settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let poll = Duration::from_micros(args.poll_us);
        let (idle_probes, loaded_probes) = probes.split_at(args.probes);

        let idle = run_probes(settings, idle_probes, poll, args.dataset.seed).await?;
        let idle = Phase {
            latencies: idle,
            load: load_average(),
            background_rate: None,
            backlog_after: None,
        };

        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (redis, key, events, stop) = (
                settings.redis.clone(),
                settings.stream.key.clone(),
                background.events.clone(),
                stop.clone(),
            );
            let rate = args.rate;
            tokio::task::spawn_blocking(move || publish_paced(&redis, &key, &events, rate, &stop))
        };
        // The daemon reaches its steady state under the load before the first probe.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let loaded = run_probes(settings, loaded_probes, poll, args.dataset.seed + 1).await;
        stop.store(true, Ordering::Relaxed);
        let (sent, published_for) = publisher.await??;
        let loaded = Phase {
            latencies: loaded?,
            load: load_average(),
            background_rate: Some(sent as f64 / published_for.as_secs_f64()),
            backlog_after: backlog(&mut con, &settings.stream).await?,
        };
        daemon.check_running()?;
        anyhow::Ok((idle, loaded))
    }
    .await;
    daemon.stop().await?;
    let (idle, loaded) = phases?;

    let expected: Vec<(String, String)> = by_study(&probe_studies.rows)
        .map(|rows| {
            let tenant = TenantId::parse(&rows[0].tenant_id)?;
            let uid = Uid::parse(&rows[0].study_uid)?;
            anyhow::Ok((keys::study_metadata(&tenant, &uid), encode_study(rows)))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut wrong_probe_keys = 0;
    for (key, json) in &expected {
        let cached: Option<String> = redis::cmd("GET").arg(key).query_async(&mut con).await?;
        if cached.as_deref() != Some(json.as_str()) {
            wrong_probe_keys += 1;
        }
    }
    pool.close().await;
    Ok(LatencyReport {
        machine,
        daemon_description,
        daemon_mode,
        idle,
        loaded,
        wrong_probe_keys,
    })
}

/// Publishes each probe's event and times it until its study key is visible, polling every
/// `poll`; probes are 10 to 30 ms apart. Runs on a thread of its own with a plain blocking
/// connection, so that the polling interval is the operating system's sleep, not the async
/// timer's millisecond.
async fn run_probes(
    settings: &Settings,
    probes: &[InstanceEvent],
    poll: Duration,
    seed: u64,
) -> anyhow::Result<Vec<Duration>> {
    let (redis, key, probes) = (
        settings.redis.clone(),
        settings.stream.key.clone(),
        probes.to_vec(),
    );
    tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(connection_info(&redis)?)?;
        let mut con = client.get_connection_with_timeout(redis.command_timeout())?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut latencies = Vec::with_capacity(probes.len());
        for probe in &probes {
            std::thread::sleep(Duration::from_millis(rng.random_range(10..30)));
            let study_key = keys::study_metadata(
                &TenantId::parse(&probe.tenant_id)?,
                &Uid::parse(&probe.study_uid)?,
            );
            let started = Instant::now();
            let _: String = probe.xadd(&key).query(&mut con)?;
            loop {
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(&study_key).query(&mut con)?;
                if value.is_some() {
                    break;
                }
                ensure!(
                    started.elapsed() < PROBE_DEADLINE,
                    "probe study {} not visible after {PROBE_DEADLINE:?}",
                    probe.study_uid
                );
                std::thread::sleep(poll);
            }
            latencies.push(started.elapsed());
        }
        Ok(latencies)
    })
    .await?
}

/// Publishes `events` (over again when they run out) at `rate` per second until `stop`;
/// returns how many were published and for how long.
fn publish_paced(
    redis: &dicom_cache_warmer::RedisSettings,
    stream_key: &str,
    events: &[InstanceEvent],
    rate: u64,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, Duration)> {
    ensure!(!events.is_empty(), "no background events");
    let client = redis::Client::open(connection_info(redis)?)?;
    let mut con = client.get_connection_with_timeout(redis.command_timeout())?;
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let now_due = due.saturating_sub(sent).min(1_000);
        if now_due > 0 {
            let mut pipe = redis::pipe();
            for n in sent..sent + now_due {
                let event = &events[(n % events.len() as u64) as usize];
                pipe.add_command(event.xadd(stream_key)).ignore();
            }
            pipe.query::<()>(&mut con)?;
            sent += now_due;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok((sent, started.elapsed()))
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Phase {
    fn quantiles_ms(&self) -> [f64; 4] {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        [
            percentile(&sorted, 50.0),
            percentile(&sorted, 95.0),
            percentile(&sorted, 99.0),
            percentile(&sorted, 100.0),
        ]
        .map(|d| d.as_secs_f64() * 1e3)
    }
}

impl LatencyReport {
    fn print(&self, args: &LatencyArgs) {
        println!(
            "dcw-bench latency: {} probes per phase, key polled every {} µs; background: {}",
            args.probes,
            args.poll_us,
            args.dataset.describe()
        );
        println!("machine     {}", self.machine);
        println!("daemon      {}", self.daemon_description);
        println!(
            "{:<22} {:>8} {:>8} {:>8} {:>8}  {:<16} load after (1 5 15 min)",
            "phase (ms)", "p50", "p95", "p99", "max", "background"
        );
        for (name, phase) in [("idle", &self.idle), ("under load", &self.loaded)] {
            let q = phase.quantiles_ms();
            let background = phase
                .background_rate
                .map_or("none".into(), |r| format!("{r:.0} events/s"));
            println!(
                "{name:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {background:<16} {}",
                q[0],
                q[1],
                q[2],
                q[3],
                format_load(phase.load)
            );
        }
        if let Some(backlog) = self.loaded.backlog_after {
            println!(
                "backlog when the load stopped: {} pending, {} unread",
                backlog.pending,
                backlog.lag.map_or("?".into(), |l| l.to_string())
            );
        }
        println!("wrong probe keys {}", self.wrong_probe_keys);
        let phase_json = |phase: &Phase| {
            let q = phase.quantiles_ms();
            json!({
                "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2], "max_ms": q[3],
                "background_events_per_sec": phase.background_rate,
                "load_after": phase.load,
            })
        };
        println!(
            "{}",
            json!({
                "command": "latency",
                "daemon": self.daemon_mode,
                "probes": args.probes,
                "poll_us": args.poll_us,
                "target_rate": args.rate,
                "idle": phase_json(&self.idle),
                "loaded": phase_json(&self.loaded),
                "backlog_pending_after": self.loaded.backlog_after.map(|b| b.pending),
                "backlog_unread_after": self.loaded.backlog_after.and_then(|b| b.lag),
                "wrong_probe_keys": self.wrong_probe_keys,
            })
        );
    }
}

// ---------------------------------------------------------------------------------------
// series

const SERIES_STUDY_UID: &str = "1.2.826.0.1.3680043.10.543.9";
const SERIES_UID: &str = "1.2.826.0.1.3680043.10.543.9.1";

fn series(args: &SeriesArgs) -> anyhow::Result<()> {
    ensure!(
        args.instances > 0 && args.rounds > 0,
        "--instances and --rounds must be at least 1"
    );
    let dir = std::env::temp_dir().join(format!("dcw-bench-series-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outcome = series_in(&dir, args);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn series_in(dir: &Path, args: &SeriesArgs) -> anyhow::Result<()> {
    let paths = synthetic::write_ct_series(dir, SERIES_STUDY_UID, SERIES_UID, args.instances)?;
    // Written pages are dirty until written back, and dirty pages cannot be evicted.
    let synced = std::process::Command::new("sync")
        .args(&paths)
        .status()
        .is_ok_and(|s| s.success());
    let can_evict = synced && evict(&paths);
    let document = build_series_document(&paths, 1)?;
    let file_bytes = std::fs::metadata(&paths[0])?.len();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let mut thread_counts = vec![1, threads];
    thread_counts.dedup();

    println!(
        "dcw-bench series: {} CT instances of {file_bytes} bytes (pixel data {} bytes) read up to the pixel data; median of {} rounds",
        args.instances,
        2 * usize::from(dcw_testkit::fixtures::IMAGE_SIZE).pow(2),
        args.rounds
    );
    println!(
        "document         {} bytes, {} bytes per instance",
        document.len(),
        document.len() / args.instances
    );
    println!(
        "{:<8} {:<6} {:>12} {:>10}  load (1 5 15 min)",
        "threads", "cache", "instances/s", "ms/series"
    );
    let mut results = Vec::new();
    for cold in [false, true] {
        if cold && !can_evict {
            println!("cold runs skipped: the files cannot be evicted from the page cache here");
            continue;
        }
        for &threads in &thread_counts {
            if !cold {
                build_series_document(&paths, threads)?;
            }
            let mut times = Vec::with_capacity(args.rounds);
            for _ in 0..args.rounds {
                if cold {
                    evict(&paths);
                }
                let started = Instant::now();
                std::hint::black_box(build_series_document(&paths, threads)?);
                times.push(started.elapsed());
            }
            times.sort_unstable();
            let median = times[times.len() / 2];
            let rate = args.instances as f64 / median.as_secs_f64();
            let cache = if cold { "cold" } else { "warm" };
            let load = load_average();
            println!(
                "{threads:<8} {cache:<6} {rate:>12.0} {:>10.1}  {}",
                median.as_secs_f64() * 1e3,
                format_load(load)
            );
            results.push(json!({
                "threads": threads, "cache": cache, "instances_per_sec": rate,
                "ms_per_series": median.as_secs_f64() * 1e3, "load": load,
            }));
        }
    }
    println!(
        "plain dicom-object + dicom-json per file, same files: cargo bench --bench series_files"
    );
    println!(
        "{}",
        json!({
            "command": "series",
            "instances": args.instances,
            "file_bytes": file_bytes,
            "document_bytes": document.len(),
            "json_bytes_per_instance": document.len() / args.instances,
            "results": results,
        })
    );
    Ok(())
}

/// The series document through the daemon's code: each file read up to its pixel data and
/// converted on `threads` threads (taking the next file as they go, as the daemon's
/// blocking tasks do), then joined.
fn build_series_document(paths: &[PathBuf], threads: usize) -> anyhow::Result<Vec<u8>> {
    let convert = |path: &Path| -> anyhow::Result<InstanceJson> {
        Ok(read_instance(
            path,
            SERIES_STUDY_UID,
            SERIES_UID,
            &DocumentOptions::default(),
        )?)
    };
    let next = AtomicUsize::new(0);
    let instances: Vec<InstanceJson> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
                        done.push(convert(path)?);
                    }
                    anyhow::Ok(done)
                })
            })
            .collect();
        let mut instances = Vec::with_capacity(paths.len());
        for worker in workers {
            let done = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a conversion thread panicked"))??;
            instances.extend(done);
        }
        anyhow::Ok(instances)
    })?;
    Ok(dicom_cache_warmer::series_document(instances))
}

/// Drops the files from the page cache (POSIX_FADV_DONTNEED through GNU dd), leaving the
/// rest of the machine's cache alone; false when that is not possible here.
fn evict(paths: &[PathBuf]) -> bool {
    paths.iter().all(|path| {
        std::process::Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .is_ok_and(|s| s.success())
    })
}
