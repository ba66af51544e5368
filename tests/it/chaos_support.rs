//! What the chaos tests break on purpose, each stopped when dropped: the real binary as a
//! child process (its JSON log read into figures), a private `redis-server` that can be
//! stopped and started again on the same port and directory, a TCP proxy whose switch cuts
//! every connection, and a paced ingest load that commits rows before publishing events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcw_testkit::synthetic::{self, Dataset, InstanceEvent};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use dicom_cache_warmer::{
    Backlog, DicomStateMeta, Settings, StreamSettings, by_study, encode_study,
};
use redis::aio::MultiplexedConnection;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::helpers::{DEADLINE, TestEnv, test_connection};

/// The daemon's settings that make a dead consumer's entries claimable after one second
/// and a dead consumer deletable after one and a half (as `TestEnv::reclaim_quickly`).
pub fn reclaim_quickly_env() -> Vec<(&'static str, String)> {
    vec![
        ("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "300".into()),
        ("DCW__REDIS__COMMAND_TIMEOUT_MS", "150".into()),
        ("DCW__STREAM__BLOCK_MS", "100".into()),
        ("DCW__STREAM__CLAIM_IDLE_MS", "1000".into()),
        ("DCW__STREAM__STALE_CONSUMER_MS", "1500".into()),
    ]
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Sends `signal` (such as `-KILL`) to `pid` with the `kill` command.
pub async fn send_signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// What a replica's log said, added up.
#[derive(Debug, Default, Clone)]
pub struct LogFigures {
    /// Its consumer name, from the start-up line.
    pub consumer: Option<String>,
    /// Batches it finished (written and acknowledged).
    pub batches: usize,
    /// Entries in the batches it finished.
    pub entries_done: usize,
    /// Entries in its largest finished batch (a window).
    pub largest_batch: usize,
    /// Entries its XACKs found already acknowledged (by itself or another consumer).
    pub ack_shortfall: usize,
    /// Entries it claimed from idle consumers.
    pub reclaimed: usize,
    /// Idle consumers it deleted.
    pub consumers_deleted: usize,
    /// Entries it dead-lettered.
    pub dead_lettered: usize,
    /// When it found a service unreachable, by service.
    pub unreachable: Vec<(String, Instant)>,
    /// When it found a service reachable again, by service.
    pub reachable_again: Vec<(String, Instant)>,
    /// Warnings and errors, as logged.
    pub warnings: Vec<String>,
}

impl LogFigures {
    /// Whether it found `service` unreachable at or after `since`.
    pub fn saw_outage_of(&self, service: &str, since: Instant) -> bool {
        self.unreachable
            .iter()
            .any(|(name, at)| name == service && *at >= since)
    }

    /// How long after `since` it first found `service` reachable again.
    pub fn back_after(&self, service: &str, since: Instant) -> Option<Duration> {
        self.reachable_again
            .iter()
            .filter(|(name, at)| name == service && *at >= since)
            .map(|(_, at)| at.duration_since(since))
            .next()
    }

    /// Entries whose acknowledgement by this replica counted: XACK returns only entries
    /// that were still pending, so summed over replicas this counts each entry once.
    pub fn first_acks(&self) -> usize {
        self.entries_done - self.ack_shortfall
    }

    fn record(&mut self, line: &str) {
        let Ok(serde_json::Value::Object(event)) = serde_json::from_str(line) else {
            self.warnings.push(format!("(not JSON) {line}"));
            return;
        };
        let text = |name: &str| event.get(name).and_then(|v| v.as_str()).unwrap_or("");
        let count = |name: &str| {
            event
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0)
        };
        let message = text("message");
        match message {
            "warming caches from the ingest stream" => {
                self.consumer = Some(text("consumer").to_owned());
            }
            "batch done" => {
                self.batches += 1;
                self.entries_done += count("entries");
                self.largest_batch = self.largest_batch.max(count("entries"));
                self.dead_lettered += count("dead_lettered");
            }
            "XACK acknowledged fewer entries than sent" => {
                self.ack_shortfall += count("expected").saturating_sub(count("acked"));
            }
            "reclaimed idle entries" => self.reclaimed += count("entries"),
            "deleted idle consumers that owned no entries" => {
                self.consumers_deleted += count("consumers");
            }
            // The monitor's probes, and the work's own failures.
            _ if message.starts_with("unreachable") || message.starts_with("failed; retrying") => {
                self.unreachable
                    .push((text("service").to_owned(), Instant::now()));
            }
            "reachable again" | "works again" => {
                self.reachable_again
                    .push((text("service").to_owned(), Instant::now()));
            }
            _ => {}
        }
        if matches!(text("level"), "WARN" | "ERROR") {
            self.warnings.push(line.to_owned());
        }
    }
}

/// The real `dicom-cache-warmer` binary, killed when dropped.
pub struct Replica {
    child: Child,
    pid: u32,
    /// Its consumer name (host name and process id, the default).
    pub consumer: String,
    figures: Arc<Mutex<LogFigures>>,
    log_reader: JoinHandle<()>,
}

impl Replica {
    /// Starts the binary against the test's slice, with the default (per-process) consumer
    /// name, quick reclaiming, JSON logs and `overrides` last; returns once it has started
    /// warming.
    pub async fn start(env: &TestEnv, overrides: &[(&'static str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"));
        command
            .envs(env.daemon_env())
            .env_remove("DCW__STREAM__CONSUMER")
            .env_remove("RUST_LOG")
            .envs(reclaim_quickly_env())
            .env("DCW__LOG__FORMAT", "json")
            .env("DCW__LOG__LEVEL", "info");
        if has_http_endpoint() {
            // Several replicas on one machine: each its own port.
            command.env("DCW__HTTP__LISTEN", "127.0.0.1:0");
        }
        let mut child = command
            .envs(overrides.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start dicom-cache-warmer");
        let pid = child.id().expect("a running child has a pid");
        let figures = Arc::new(Mutex::new(LogFigures::default()));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let log_reader = tokio::spawn({
            let figures = Arc::clone(&figures);
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    figures.lock().expect("log figures").record(&line);
                }
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let consumer = loop {
            if let Some(consumer) = figures.lock().expect("log figures").consumer.clone() {
                break consumer;
            }
            if let Some(status) = child.try_wait().expect("child status") {
                panic!(
                    "the daemon exited at start with {status}: {:?}",
                    figures.lock().expect("log figures").warnings
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not start in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self {
            child,
            pid,
            consumer,
            figures,
            log_reader,
        }
    }

    /// Its log figures so far.
    pub fn figures(&self) -> LogFigures {
        self.figures.lock().expect("log figures").clone()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("child status").is_none()
    }

    /// Stops the process (SIGSTOP) and returns once every one of its threads is stopped,
    /// so that it can send nothing more until [`Replica::thaw`].
    pub async fn freeze(&self) {
        send_signal("-STOP", self.pid).await;
        let deadline = Instant::now() + DEADLINE;
        while !all_threads_stopped(self.pid) {
            assert!(Instant::now() < deadline, "the daemon did not stop");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Lets a frozen process run again (SIGCONT).
    pub async fn thaw(&self) {
        send_signal("-CONT", self.pid).await;
    }

    /// `kill -9`: returns its log figures once it is dead and its log read to the end.
    pub async fn kill_hard(mut self) -> LogFigures {
        send_signal("-KILL", self.pid).await;
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("a killed daemon dies")
            .expect("wait");
        assert_eq!(status.code(), None, "killed by a signal, not exited");
        self.finish_log().await
    }

    /// SIGTERM: it must exit 0 within its grace period; returns its log figures.
    pub async fn stop(mut self) -> LogFigures {
        send_signal("-TERM", self.pid).await;
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the daemon stops in time")
            .expect("wait");
        assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
        self.finish_log().await
    }

    async fn finish_log(&mut self) -> LogFigures {
        tokio::time::timeout(DEADLINE, &mut self.log_reader)
            .await
            .expect("the log ends with the process")
            .expect("log reader");
        self.figures()
    }
}

/// Whether this build of the daemon has the HTTP endpoint (and so an `http.listen` to move
/// off its fixed default port).
fn has_http_endpoint() -> bool {
    Settings::default().to_redacted_toml().contains("[http]")
}

/// True when every thread of `pid` is in the stopped state (`T` in `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| matches!(state, 'T' | 't'))
        })
    })
}

/// Freezes the replica until it holds unacknowledged entries after having acknowledged
/// some, then kills it (`kill -9`) there; returns how many entries it left pending and its
/// log figures.
pub async fn kill_holding_entries(
    replica: Replica,
    con: &MultiplexedConnection,
    settings: &StreamSettings,
) -> (usize, LogFigures) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        replica.freeze().await;
        // A round trip first: what the process sent before it stopped has been handled by
        // Redis before the next command of this connection is.
        let _: String = redis::cmd("PING")
            .query_async(&mut con.clone())
            .await
            .expect("PING");
        let holding = consumer_pending(con, settings, &replica.consumer).await;
        if holding > 0 && replica.figures().batches > 0 {
            let figures = replica.kill_hard().await;
            return (holding, figures);
        }
        replica.thaw().await;
        assert!(
            Instant::now() < deadline,
            "the replica never held entries after acknowledging some"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Entries pending for one consumer of the group (0 when it is not in the group).
pub async fn consumer_pending(
    con: &MultiplexedConnection,
    settings: &StreamSettings,
    consumer: &str,
) -> usize {
    consumers(con, settings)
        .await
        .into_iter()
        .find(|(name, _)| name == consumer)
        .map_or(0, |(_, pending)| pending)
}

/// The group's consumers and their pending counts.
pub async fn consumers(
    con: &MultiplexedConnection,
    settings: &StreamSettings,
) -> Vec<(String, usize)> {
    let mut con = con.clone();
    let reply: redis::RedisResult<redis::streams::StreamInfoConsumersReply> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&settings.key)
        .arg(&settings.group)
        .query_async(&mut con)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        // No stream or group yet (a daemon creates them with its first read): no consumers.
        Err(error) if error.code() == Some("NOGROUP") || error.detail() == Some("no such key") => {
            return Vec::new();
        }
        Err(error) => panic!("XINFO CONSUMERS: {error}"),
    };
    reply
        .consumers
        .into_iter()
        .map(|c| (c.name, c.pending))
        .collect()
}

/// The group's backlog (pending and lag) on any Redis.
pub async fn backlog(con: &MultiplexedConnection, settings: &StreamSettings) -> Backlog {
    dicom_cache_warmer::backlog(&mut con.clone(), settings)
        .await
        .expect("XINFO GROUPS")
        .expect("the group exists")
}

/// Entries in a stream.
pub async fn stream_length(con: &MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut con.clone())
        .await
        .expect("XLEN")
}

/// How the study keys compare with the rows they must hold.
#[derive(Debug)]
pub struct CacheCheck {
    /// Studies in the dataset.
    pub expected: usize,
    /// Study keys equal to `encode_study` of the study's rows.
    pub correct: usize,
    /// The other keys, with what they hold (truncated).
    pub wrong: Vec<String>,
}

/// Compares every study key with the encoding of its rows (`rows` sorted by tenant,
/// study and series, as in a dataset).
pub async fn check_cache(con: &MultiplexedConnection, rows: &[DicomStateMeta]) -> CacheCheck {
    let mut con = con.clone();
    let mut check = CacheCheck {
        expected: 0,
        correct: 0,
        wrong: Vec::new(),
    };
    for study_rows in by_study(rows) {
        check.expected += 1;
        let key = keys::study_metadata(
            &TenantId::parse(&study_rows[0].tenant_id).expect("tenant"),
            &Uid::parse(&study_rows[0].study_uid).expect("study uid"),
        );
        let cached: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .expect("GET");
        match cached {
            Some(value) if value == encode_study(study_rows) => check.correct += 1,
            Some(value) => check.wrong.push(format!(
                "{key} holds a different value: {}",
                value.chars().take(200).collect::<String>()
            )),
            None => check.wrong.push(format!("{key} is missing")),
        }
    }
    check
}

/// A `redis-server` of the test's own, on a free port, with an append-only file fsynced
/// on every write; killed when dropped.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    // Fields drop in order: the server is killed before its directory is removed.
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts it and returns once it answers.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("a directory for redis"),
        };
        redis.restart().await;
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection to it.
    pub async fn connection(&self) -> MultiplexedConnection {
        test_connection(&self.url())
            .await
            .expect("connect to the private redis")
    }

    /// Stops it with SIGTERM (it writes out its append-only file) and waits for it to exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        send_signal("-TERM", child.id().expect("running")).await;
        let status = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("redis stops in time")
            .expect("wait");
        assert!(status.success(), "redis shut down cleanly: {status}");
    }

    /// Starts it (again) on the same port and directory; returns once it has loaded its
    /// data and answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        self.child = Some(
            Command::new("redis-server")
                .args(["--port", &port, "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .args(["--dir", &dir, "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start redis-server"),
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            // A loading server answers PING with an error: this waits for the data too.
            if let Ok(mut con) = test_connection(&self.url()).await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut con).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How a [`CuttableProxy`] treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Forwarding.
    Up,
    /// Live connections reset, new ones blackholed.
    Cut,
    /// Nothing forwarded any more, nothing closed: live and new connections hang, as
    /// behind a firewall that drops packets.
    Frozen,
    /// Live connections silent for good (as after a NAT or firewall forgot them, or a
    /// failover), new ones forwarded.
    Stranded,
}

/// A TCP proxy to `upstream` with a switch: cut, it resets every live connection and
/// blackholes new ones (accepted, never answered) until restored; frozen, it stops
/// forwarding on every connection without closing any. Stops when dropped.
pub struct CuttableProxy {
    /// The port it listens on.
    pub port: u16,
    link: watch::Sender<Link>,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts forwarding.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (link, watch_link) = watch::channel(Link::Up);
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: every connection task ends with it.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(forward(client, upstream, watch_link.clone()));
                while connections.try_join_next().is_some() {}
            }
        });
        Self { port, link, task }
    }

    /// Resets every connection and blackholes new ones.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Stops forwarding without closing anything (a black hole).
    pub fn freeze(&self) {
        self.link.send_replace(Link::Frozen);
    }

    /// Forwards again (connections blackholed or frozen meanwhile are reset).
    pub fn restore(&self) {
        self.link.send_replace(Link::Up);
    }

    /// Forwards new connections; every connection open now (frozen or not) stays silent
    /// and open until the proxy is dropped.
    pub fn strand(&self) {
        self.link.send_replace(Link::Stranded);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    if matches!(*link.borrow_and_update(), Link::Cut | Link::Frozen) {
        // Blackholed: held without a byte read or written until the link is up again.
        let _ = client.set_zero_linger();
        let _ = link.wait_for(|link| *link == Link::Up).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    // As a router would: no delay of its own added to small packets.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut changed = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                _ = &mut copy => return,
                changed = link.changed() => match changed.map(|()| *link.borrow_and_update()) {
                    Ok(Link::Up) => {}
                    Ok(changed) => break changed,
                    Err(_) => return,
                },
            }
        }
    };
    // A reset, as a broken network would give, rather than a polite close.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    if changed == Link::Frozen {
        // Held open, silent, until the link changes again.
        changed = link
            .wait_for(|link| *link != Link::Frozen)
            .await
            .map_or(Link::Cut, |link| *link);
    }
    if changed == Link::Stranded {
        // Held open, silent, for good.
        std::future::pending::<()>().await;
    }
}

/// The settings' database URL with its port replaced (to go through a proxy).
pub fn database_url_via(settings: &Settings, port: u16) -> String {
    url_via(settings.database.url.expose(), port)
}

/// The settings' database host and port.
pub fn database_address(settings: &Settings) -> SocketAddr {
    address_of(settings.database.url.expose(), 5432)
}

/// The settings' Redis URL with its port replaced (to go through a proxy).
pub fn redis_url_via(settings: &Settings, port: u16) -> String {
    url_via(settings.redis.url.expose(), port)
}

/// The settings' Redis host and port.
pub fn redis_address(settings: &Settings) -> SocketAddr {
    address_of(settings.redis.url.expose(), 6379)
}

fn url_via(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).expect("a service URL");
    url.set_port(Some(port)).expect("a URL with a host");
    url.to_string()
}

fn address_of(url: &str, default_port: u16) -> SocketAddr {
    let url = url::Url::parse(url).expect("a service URL");
    let host = url.host_str().expect("a host");
    let port = url.port().unwrap_or(default_port);
    format!("{host}:{port}")
        .parse()
        .expect("the test services are at IP addresses")
}

/// An ingest pipeline in miniature: for each chunk of the dataset's events, the rows of
/// the series they touch are committed first (`series_related_instances` counting the
/// instances so far, as the server does), then the events are published; a pause between
/// chunks paces it. The final rows are the dataset's, so a study key that missed a late
/// event holds a smaller count: stale, and seen as such. The last chunk waits for
/// [`LoadTask::finish`]: until then the chunk before it is published again at the same pace
/// (its rows unchanged), so the load is still running at any fault the test makes first,
/// however slowly the test runs.
pub struct IngestLoad {
    /// Events per chunk.
    pub chunk: usize,
    /// Pause after each chunk.
    pub pace: Duration,
}

impl IngestLoad {
    /// Starts publishing `dataset` to `stream_key`.
    pub fn spawn(
        &self,
        dataset: &Dataset,
        db: PgPool,
        mut con: MultiplexedConnection,
        stream_key: String,
    ) -> LoadTask {
        let (chunk, pace) = (self.chunk, self.pace);
        let templates: HashMap<String, DicomStateMeta> = dataset
            .rows
            .iter()
            .map(|row| (row.series_uid.clone(), row.clone()))
            .collect();
        let events = dataset.events.clone();
        let (release, mut released) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut instances: HashMap<String, i32> = HashMap::new();
            let chunks: Vec<&[InstanceEvent]> = events.chunks(chunk).collect();
            let mut published = 0;
            for (index, events) in chunks.iter().copied().enumerate() {
                if index + 1 == chunks.len() {
                    let again = index
                        .checked_sub(1)
                        .map_or(events, |previous| chunks[previous]);
                    while !*released.borrow() {
                        Dataset {
                            rows: Vec::new(),
                            events: again.to_vec(),
                        }
                        .publish(&mut con, &stream_key)
                        .await
                        .expect("publish the events again");
                        published += again.len();
                        tokio::select! {
                            // Released, or the test gone.
                            _ = released.wait_for(|released| *released) => break,
                            () = tokio::time::sleep(pace) => {}
                        }
                    }
                }
                let mut touched: Vec<DicomStateMeta> = Vec::new();
                for InstanceEvent { series_uid, .. } in events {
                    *instances.entry(series_uid.clone()).or_default() += 1;
                }
                for series_uid in events
                    .iter()
                    .map(|e| &e.series_uid)
                    .collect::<std::collections::BTreeSet<_>>()
                {
                    let mut row = templates[series_uid].clone();
                    row.series_related_instances = Some(instances[series_uid]);
                    touched.push(row);
                }
                synthetic::insert_rows(&db, &touched)
                    .await
                    .expect("commit the rows");
                Dataset {
                    rows: Vec::new(),
                    events: events.to_vec(),
                }
                .publish(&mut con, &stream_key)
                .await
                .expect("publish the events");
                published += events.len();
                tokio::time::sleep(pace).await;
            }
            published
        });
        LoadTask { task, release }
    }
}

/// A running [`IngestLoad`], stopped when dropped.
pub struct LoadTask {
    task: JoinHandle<usize>,
    release: watch::Sender<bool>,
}

impl LoadTask {
    /// True once every event is published (only after [`LoadTask::finish`] released the
    /// last chunk).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Lets the last chunk go and waits for it to be published; returns how many events
    /// were (those published again included).
    pub async fn finish(mut self) -> usize {
        self.release.send_replace(true);
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the load ends in time")
            .expect("the load")
    }
}

impl Drop for LoadTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
