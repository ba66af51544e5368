//! `hostile`: the daemon's peak memory with its default settings under input made to
//! exhaust it, and whether a valid event published after that input is still warmed:
//! oversize entries (`--case oversize`, 300 of 200 KB), or one study's events naming
//! distinct series that are not in the database, series documents on (`--case series`,
//! 100,000 events).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::{Args, ValueEnum};
use dcw_testkit::synthetic::{Dataset, DatasetSpec, InstanceEvent};
use dicom_cache_warmer::{Settings, backlog, by_study, ensure_group};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use crate::daemon::{Daemon, DaemonArgs};
use crate::sampling::{format_load, load_average, process_cpu_secs};
use crate::scratch::{Scratch, with_scratch};
use crate::verify::wrong_study_keys;

/// How long the valid study may take to be warmed, and the hostile input to be read.
const DEADLINE: Duration = Duration::from_secs(300);
/// How often the warm key and the backlog are looked at.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The value of an oversize entry.
const OVERSIZE_VALUE_BYTES: usize = 200_000;
/// Entries per XADD pipeline.
const PUBLISH_CHUNK: usize = 1_000;

/// The flags of `hostile`.
#[derive(Args)]
pub(crate) struct HostileArgs {
    /// The input: oversize entries, or distinct unknown series of one study.
    #[arg(long, value_enum)]
    case: Case,
    /// Hostile entries (default: 300 oversize, 100000 series).
    #[arg(long)]
    entries: Option<usize>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Case {
    Oversize,
    Series,
}

/// Runs the case on a scratch environment and prints the daemon's peak memory.
pub(crate) async fn run(
    mut settings: Settings,
    config: Option<&std::path::Path>,
    args: &HostileArgs,
) -> anyhow::Result<()> {
    let folders = tempfile::tempdir()?;
    if args.case == Case::Series {
        settings.series.dicom_root = Some(folders.path().join("dicom"));
        settings.series.json_root = Some(folders.path().join("json"));
    }
    with_scratch(settings, async |scratch| {
        run_on(scratch, config, args).await
    })
    .await
}

async fn run_on(
    scratch: &Scratch,
    config: Option<&std::path::Path>,
    args: &HostileArgs,
) -> anyhow::Result<()> {
    let settings = &scratch.settings;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: scratch.tenant_prefix.clone(),
        tenants: 1,
        studies: 2,
        ..DatasetSpec::default()
    });
    let pool = scratch.pool()?;
    dataset.insert(&pool).await.context("insert the studies")?;
    pool.close().await;
    let mut con = scratch.redis().await?;
    ensure_group(&mut con, &settings.stream).await?;
    let mut studies = by_study(&dataset.rows);
    let target = &studies.next().context("a first study")?[0];
    let victim = studies.next().context("a second study")?;
    let count = match args.case {
        Case::Oversize => args.entries.unwrap_or(300),
        Case::Series => args.entries.unwrap_or(100_000),
    };
    let blob = vec![b'x'; OVERSIZE_VALUE_BYTES];
    for chunk in (0..count).collect::<Vec<_>>().chunks(PUBLISH_CHUNK) {
        let mut pipe = redis::pipe();
        for &n in chunk {
            let event = InstanceEvent {
                tenant_id: target.tenant_id.clone(),
                study_uid: target.study_uid.clone(),
                series_uid: format!("{}.9{n}", target.study_uid),
                sop_uid: format!("{}.9{n}.1", target.study_uid),
            };
            let mut xadd = event.xadd(&settings.stream.key);
            if args.case == Case::Oversize {
                xadd.arg("blob").arg(&blob);
            }
            pipe.add_command(xadd).ignore();
        }
        pipe.query_async::<()>(&mut con).await?;
    }
    // A valid study published after the hostile input.
    let valid = Dataset {
        rows: victim.to_vec(),
        events: dataset
            .events
            .iter()
            .filter(|event| event.study_uid == victim[0].study_uid)
            .cloned()
            .collect(),
    };
    valid.publish(&mut con, &settings.stream.key).await?;

    let load_before = load_average();
    let mut daemon = Daemon::start(&args.daemon, settings, config).await?;
    let started = Instant::now();
    let warmed = wait_until(&mut daemon, "the valid study to be warmed", async || {
        Ok(wrong_study_keys(&mut con.clone(), &valid).await? == 0)
    })
    .await?;
    let read = wait_until(&mut daemon, "every entry to be read", async || {
        let backlog = backlog(&mut con.clone(), &settings.stream).await?;
        Ok(backlog.is_some_and(|b| b.lag == Some(0)))
    })
    .await?;
    // The window in hand is processed after its last read: done once the daemon idles.
    wait_idle(&mut daemon).await?;
    let settled = read_settled(&mut con, settings).await?;
    let peak_rss_kib = daemon.peak_rss_kib();
    let described = daemon.describe();
    daemon.stop().await?;
    let case = match args.case {
        Case::Oversize => format!("{count} entries of {OVERSIZE_VALUE_BYTES} bytes"),
        Case::Series => format!("{count} events naming distinct series not in the database"),
    };
    println!(
        "dcw-bench hostile: {case}, then {} valid events",
        valid.events.len()
    );
    println!("daemon           {described}");
    println!(
        "valid study warm {:.2} s after the start",
        (warmed - started).as_secs_f64()
    );
    println!(
        "all entries read {:.2} s after the start; then {} pending, {} dead-lettered",
        (read - started).as_secs_f64(),
        settled.0,
        settled.1
    );
    let peak_mib = peak_rss_kib.map(|kib| kib as f64 / 1024.0);
    match peak_mib {
        Some(mib) => println!("peak RSS         {mib:.1} MiB (VmHWM of the daemon process)"),
        None => println!("peak RSS         unknown (no /proc, or the daemon runs in-process)"),
    }
    println!("load before      {}", format_load(load_before));
    println!(
        "{}",
        json!({"command": "hostile", "case": case, "warm_secs": (warmed - started).as_secs_f64(),
            "read_secs": (read - started).as_secs_f64(), "pending": settled.0,
            "dead_lettered": settled.1, "peak_rss_mib": peak_mib})
    );
    Ok(())
}

/// Polls `condition` until it holds, failing if the daemon exits or [`DEADLINE`] passes;
/// returns when it held.
async fn wait_until(
    daemon: &mut Daemon,
    what: &str,
    mut condition: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        daemon.check_running()?;
        if condition().await? {
            return Ok(Instant::now());
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "waited {DEADLINE:?} for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until the daemon process has used no CPU for a second.
async fn wait_idle(daemon: &mut Daemon) -> anyhow::Result<()> {
    let Some(pid) = daemon.pid() else {
        return Ok(());
    };
    let mut last = process_cpu_secs(&pid.to_string());
    let mut since = Instant::now();
    loop {
        daemon.check_running()?;
        tokio::time::sleep(POLL_INTERVAL).await;
        let now = process_cpu_secs(&pid.to_string());
        if now != last {
            (last, since) = (now, Instant::now());
        }
        if since.elapsed() >= Duration::from_secs(1) {
            return Ok(());
        }
        ensure!(since.elapsed() < DEADLINE, "the daemon did not idle");
    }
}

/// Entries pending and dead-lettered once every entry was read.
async fn read_settled(
    con: &mut MultiplexedConnection,
    settings: &Settings,
) -> anyhow::Result<(usize, usize)> {
    let pending = backlog(con, &settings.stream)
        .await?
        .map_or(0, |backlog| backlog.pending);
    let dead: usize = redis::cmd("XLEN")
        .arg(&settings.stream.dead_letter_key)
        .query_async(con)
        .await?;
    Ok((pending, dead))
}
