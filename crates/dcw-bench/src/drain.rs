//! `drain`: on a scratch database and stream, the daemon drains a published backlog, then
//! (unless skipped) the per-event reference workers drain the same events; every study key
//! is checked after each, and the figures are printed side by side, then as one JSON line.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use dcw_testkit::synthetic::Dataset;
use dicom_cache_warmer::{ServiceUrl, Settings, StreamSettings, backlog, by_study, ensure_group};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use crate::daemon::{Counters, Daemon, DaemonArgs};
use crate::load::DatasetArgs;
use crate::private_redis::PrivateRedis;
use crate::probe::{PhaseLatency, Probe};
use crate::redis_cost::{CostMark, RedisCost};
use crate::reference;
use crate::sampling::{CpuMark, CpuUse, format_load, load_average, machine};
use crate::scratch::{Scratch, analyze, with_scratch};
use crate::verify::wrong_study_keys;

/// How often the drain benchmark looks at the group's backlog.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A drain that takes longer than this is reported as failed.
const DRAIN_DEADLINE: Duration = Duration::from_secs(600);
/// How long the GET probe is timed before the drain, with the daemon not yet started.
const PROBE_IDLE: Duration = Duration::from_secs(2);

/// The flags of `drain`.
#[derive(Args)]
pub(crate) struct DrainArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Concurrent workers of the per-event reference strategy; 0 skips it.
    #[arg(long, default_value_t = 4)]
    reference_workers: usize,
    /// Runs on a redis-server of this run only, so that the Redis figures (slow log,
    /// command statistics, CPU, the probe's waits) are the daemon's alone.
    #[arg(long)]
    private_redis: bool,
}

/// Runs the drain benchmark on a scratch environment and prints its report; fails when a
/// study key is wrong.
pub(crate) async fn run(
    mut settings: Settings,
    config: Option<&Path>,
    args: &DrainArgs,
) -> anyhow::Result<()> {
    let private_redis = if args.private_redis {
        Some(PrivateRedis::start().await?)
    } else {
        None
    };
    if let Some(redis) = &private_redis {
        settings.redis.url = ServiceUrl::from(redis.url.as_str());
        settings.redis.password = None;
        settings.redis.ca_file = None;
    }
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
pub(crate) struct DrainRun {
    /// How long the drain took.
    pub(crate) elapsed: Duration,
    /// Study keys not holding exactly the study's JSON afterwards.
    pub(crate) wrong_studies: usize,
    /// Queries, round trips and study fills.
    pub(crate) counters: Counters,
    /// CPU time of the client, Redis and PostgreSQL.
    pub(crate) cpu: CpuUse,
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
    redis_cost: RedisCost,
    probe: Vec<PhaseLatency>,
    probe_raised_priority: bool,
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

    // The server's readers, timed from their own process: idle, then during the drain.
    let probe_key = format!("{}probe", scratch.key_prefix);
    let mut probe = Probe::start(&mut con, settings, config, &probe_key).await?;
    tokio::time::sleep(PROBE_IDLE).await;
    let cost_mark = CostMark::start(&mut con).await;
    probe.mark("drain")?;
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
    let redis_cost = cost_mark.finish(&mut con).await;
    let probe_raised_priority = probe.raised_priority;
    let probe = probe.finish()?;
    let cpu = mark.used(&mut con, &pool, daemon.pid()).await;
    let counters = daemon.counters();
    let peak_rss_kib = daemon.peak_rss_kib();
    daemon.stop().await?;
    let (startup, elapsed) = timing?;
    let counters = counters?;
    let wrong_studies = wrong_study_keys(&mut con, &dataset).await?;

    let reference = if args.reference_workers > 0 {
        Some(reference::drain(scratch, &dataset, &mut con, &pool, args.reference_workers).await?)
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
        redis_cost,
        probe,
        probe_raised_priority,
        reference,
        load_before,
        load_after_daemon,
        load_after_reference,
    })
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

fn format_secs(secs: Option<f64>) -> String {
    secs.map_or("?".into(), |s| format!("{s:.2}"))
}

/// CPU seconds as microseconds per event.
fn format_per_event_us(secs: Option<f64>, events: f64) -> String {
    secs.map_or("?".into(), |s| format!("{:.2}", s * 1e6 / events))
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
            "redis CPU µs/event",
            format_per_event_us(self.daemon.cpu.redis, events),
            reference.map(|r| format_per_event_us(r.cpu.redis, events)),
        );
        row(
            "client CPU µs/event",
            format_per_event_us(self.daemon.cpu.client, events),
            reference.map(|r| format_per_event_us(r.cpu.client, events)),
        );
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
        self.redis_cost.print(self.events);
        let priority = if self.probe_raised_priority {
            "raised priority"
        } else {
            "normal priority: run as root to raise it"
        };
        for phase in &self.probe {
            println!(
                "probe GET ({priority}) {:<6} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} GETs)",
                phase.phase, phase.p50_ms, phase.p99_ms, phase.max_ms, phase.samples
            );
        }
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
            "redis_cost": self.redis_cost.json(self.events),
            "probe": self.probe.iter().map(|p| json!({"phase": p.phase, "samples": p.samples,
                "p50_ms": p.p50_ms, "p99_ms": p.p99_ms, "max_ms": p.max_ms})).collect::<Vec<_>>(),
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
