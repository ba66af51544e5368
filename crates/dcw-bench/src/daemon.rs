//! The daemon under test: the release binary started as a child process (its HTTP
//! endpoint, /metrics and /proc status read from outside) or the library's run function in
//! this process; started on the scratch settings and stopped gracefully.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Args, ValueEnum};
use dicom_cache_warmer::{Settings, metrics_handle, run};
use tokio_util::sync::CancellationToken;

use crate::sampling::proc_status_kib;

/// Time the daemon binary gets to answer on its HTTP endpoint.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Time the daemon gets to stop after SIGTERM (its grace is 25 s by default).
const STOP_DEADLINE: Duration = Duration::from_secs(40);

/// How the daemon under test is run.
#[derive(Args)]
pub(crate) struct DaemonArgs {
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

/// The daemon, run either as the release binary or in this process.
pub(crate) enum Daemon {
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
pub(crate) struct ChildGuard(Child);

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
pub(crate) struct Counters {
    /// PostgreSQL queries.
    pub(crate) db_queries: f64,
    /// Redis round trips.
    pub(crate) redis_round_trips: f64,
    /// Study keys written (one study is written again for every batch it appears in).
    pub(crate) study_fills: f64,
    /// Outbox rows relayed to the stream.
    pub(crate) outbox_rows: f64,
}

impl Daemon {
    /// Starts the daemon on `settings` (the scratch database and stream).
    pub(crate) async fn start(
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
        for (name, root) in [
            ("DCW__SERIES__DICOM_ROOT", &settings.series.dicom_root),
            ("DCW__SERIES__JSON_ROOT", &settings.series.json_root),
        ] {
            if let Some(root) = root {
                command.env(name, root);
            }
        }
        let child = command
            .arg("run")
            .env("DCW__DATABASE__URL", settings.database.url.expose())
            .env("DCW__REDIS__URL", settings.redis.url.expose())
            .env("DCW__STREAM__KEY", &settings.stream.key)
            .env("DCW__STREAM__GROUP", &settings.stream.group)
            .env(
                "DCW__STREAM__DEAD_LETTER_KEY",
                &settings.stream.dead_letter_key,
            )
            .env("DCW__HTTP__LISTEN", http.to_string())
            .env("DCW__OUTBOX__ENABLED", settings.outbox.enabled.to_string())
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
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Binary { child, path, .. } => format!(
                "release binary {} as a child process (pid {})",
                path.display(),
                child.0.id()
            ),
            Self::InProcess { .. } => "in-process (the library's run)".into(),
        }
    }

    /// `binary` or `in-process`, as the reports name the mode.
    pub(crate) fn mode(&self) -> &'static str {
        match self {
            Self::Binary { .. } => "binary",
            Self::InProcess { .. } => "in-process",
        }
    }

    /// The daemon's process id, when it runs as a child process.
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Self::Binary { child, .. } => Some(child.0.id()),
            Self::InProcess { .. } => None,
        }
    }

    /// Fails when the daemon has stopped on its own.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
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
    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
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
    pub(crate) fn counters(&self) -> anyhow::Result<Counters> {
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
            outbox_rows: metric_sum(&rendered, "dcw_outbox_rows_relayed_total"),
        })
    }

    /// Peak resident memory (VmHWM) in KiB of the daemon's process: the child's, or this
    /// whole process's when in-process.
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        let pid = match self {
            Self::Binary { child, .. } => child.0.id().to_string(),
            Self::InProcess { .. } => "self".into(),
        };
        proc_status_kib(&pid, "VmHWM")
    }

    /// Stops the daemon gracefully (SIGTERM) and checks that it exited cleanly.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
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
