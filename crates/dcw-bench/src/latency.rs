//! `latency`: on a scratch database and stream, probe events for uncached studies are
//! published one at a time and timed until their study key is visible, first with the
//! daemon idle, then under a paced background load; percentiles as a table and a JSON line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use dcw_testkit::synthetic::{Dataset, DatasetSpec, InstanceEvent};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::{
    Backlog, RedisSettings, Settings, backlog, connection_info, ensure_group, keys,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::daemon::{Daemon, DaemonArgs};
use crate::load::DatasetArgs;
use crate::sampling::{format_load, load_average, machine};
use crate::scratch::{Scratch, analyze, with_scratch};
use crate::verify::wrong_study_keys;

/// A probe whose key is not visible after this long fails the latency benchmark.
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The flags of `latency`.
#[derive(Args)]
pub(crate) struct LatencyArgs {
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

/// Runs the latency benchmark on a scratch environment and prints its report.
pub(crate) async fn run(
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

    let wrong_probe_keys = wrong_study_keys(&mut con, &probe_studies).await?;
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
        let mut con = blocking_redis(&redis)?;
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
    redis: &RedisSettings,
    stream_key: &str,
    events: &[InstanceEvent],
    rate: u64,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, Duration)> {
    ensure!(!events.is_empty(), "no background events");
    let mut con = blocking_redis(redis)?;
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

/// A plain blocking connection, for the threads that publish and poll.
fn blocking_redis(redis: &RedisSettings) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(connection_info(redis)?)?;
    Ok(client.get_connection_with_timeout(redis.command_timeout())?)
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
