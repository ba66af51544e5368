//! The GET probe: a separate process at raised CPU priority (as if the DICOMweb server ran
//! on its own host) that GETs a 4 KB key on its own connection every 0.5 ms, as the
//! server's readers do, and reports its latency per phase (idle, during a drain).
//!
//! The parent writes one line per new phase to the probe's stdin and closes it at the end;
//! the probe then prints one JSON line per phase.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use dicom_cache_warmer::{Settings, connection_info};
use serde_json::json;

use crate::redis_cost::BENCH_CLIENT;

/// The size of the probed value: a study key of a small study.
const VALUE_BYTES: usize = 4_096;
/// The time the probe gets to connect, or to report after its stdin closes.
const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// The niceness asked for the probe (negative: higher priority; needs root).
const NICENESS: &str = "-10";

/// The flags of the hidden `probe` subcommand.
#[derive(Args)]
pub(crate) struct ProbeArgs {
    /// The key to GET.
    #[arg(long)]
    key: String,
    /// Microseconds between GETs.
    #[arg(long, default_value_t = 500)]
    interval_us: u64,
}

/// Latency of the probe's GETs in one phase.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PhaseLatency {
    /// The phase's name.
    pub(crate) phase: String,
    /// GETs timed.
    pub(crate) samples: usize,
    /// Milliseconds: median, 99th percentile, slowest.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// The probe process, started by the bench.
pub(crate) struct Probe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Whether its niceness was raised.
    pub(crate) raised_priority: bool,
}

impl Probe {
    /// Writes the probed value and starts the probe process, which is timing GETs (phase
    /// `idle`) once this returns.
    pub(crate) async fn start(
        con: &mut redis::aio::MultiplexedConnection,
        settings: &Settings,
        config: Option<&Path>,
        key: &str,
    ) -> anyhow::Result<Self> {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(vec![b'x'; VALUE_BYTES])
            .query_async(con)
            .await?;
        let exe = std::env::current_exe()?;
        let mut command = Command::new("nice");
        command.arg("-n").arg(NICENESS).arg(exe);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .arg("probe")
            .arg("--key")
            .arg(key)
            .env("DCW__REDIS__URL", settings.redis.url.expose())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the GET probe")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("probe stdout")?);
        let ready = tokio::task::block_in_place(|| read_line(&mut stdout))?;
        if ready.trim() != "ready" {
            bail!("the probe did not start: {ready:?}");
        }
        let raised_priority = niceness(child.id()).is_some_and(|nice| nice < 0);
        Ok(Self {
            child,
            stdin,
            stdout,
            raised_priority,
        })
    }

    /// Starts a new phase of the probe's timing.
    pub(crate) fn mark(&mut self, phase: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the probe has finished")?;
        writeln!(stdin, "{phase}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Ends the probe and returns the latency of each phase.
    pub(crate) fn finish(mut self) -> anyhow::Result<Vec<PhaseLatency>> {
        drop(self.stdin.take());
        let mut phases = Vec::new();
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            loop {
                let line = read_line(&mut self.stdout)?;
                if line.is_empty() {
                    return Ok(());
                }
                let value: serde_json::Value = serde_json::from_str(&line)?;
                let number = |name: &str| value[name].as_f64().unwrap_or(f64::NAN);
                phases.push(PhaseLatency {
                    phase: value["phase"].as_str().unwrap_or("?").to_owned(),
                    samples: value["samples"].as_u64().unwrap_or(0) as usize,
                    p50_ms: number("p50_ms"),
                    p99_ms: number("p99_ms"),
                    max_ms: number("max_ms"),
                });
            }
        })?;
        let _ = self.child.wait();
        Ok(phases)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads one line from the probe, failing after [`PROBE_DEADLINE`] instead of hanging.
fn read_line(stdout: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).map(|_| line);
            let _ = sender.send(read);
        });
        match receiver.recv_timeout(PROBE_DEADLINE) {
            Ok(read) => Ok(read?),
            Err(_) => bail!("the probe did not answer within {PROBE_DEADLINE:?}"),
        }
    })
}

/// A process's niceness, field 19 of /proc/{pid}/stat.
fn niceness(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}

/// The probe process: GETs `key` every `interval_us` until its stdin closes, then prints
/// one JSON line per phase.
pub(crate) fn run(settings: &Settings, args: &ProbeArgs) -> anyhow::Result<()> {
    let client = redis::Client::open(connection_info(&settings.redis)?)?;
    let mut con = client.get_connection()?;
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(format!("{BENCH_CLIENT}-probe"))
        .exec(&mut con)?;
    let phases = Arc::new(Mutex::new(vec!["idle".to_owned()]));
    let phase = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (phases, phase, done) = (phases.clone(), phase.clone(), done.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                let mut names = phases.lock().expect("not poisoned");
                names.push(line.trim().to_owned());
                phase.store(names.len() - 1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    let interval = Duration::from_micros(args.interval_us);
    let mut samples: Vec<Vec<u32>> = Vec::new();
    let mut next = Instant::now();
    while !done.load(Ordering::SeqCst) {
        let current = phase.load(Ordering::SeqCst);
        let sent = Instant::now();
        let _: Vec<u8> = redis::cmd("GET").arg(&args.key).query(&mut con)?;
        let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        if samples.len() <= current {
            samples.resize_with(current + 1, Vec::new);
        }
        samples[current].push(micros);
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    let names = phases.lock().expect("not poisoned").clone();
    for (name, mut times) in names.into_iter().zip(samples) {
        times.sort_unstable();
        let at = |fraction: f64| {
            let index = ((times.len() as f64 * fraction) as usize).min(times.len() - 1);
            f64::from(times[index]) / 1e3
        };
        if times.is_empty() {
            continue;
        }
        println!(
            "{}",
            json!({"phase": name, "samples": times.len(), "p50_ms": at(0.5), "p99_ms": at(0.99),
                "max_ms": f64::from(*times.last().expect("not empty")) / 1e3})
        );
    }
    Ok(())
}
