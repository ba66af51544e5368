//! `TestEnv`: a private database, stream, group and tenant prefix per test, against the
//! shared Redis and PostgreSQL; everything it made is removed when it is dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use dcw_testkit::synthetic::Dataset;
use dicom_cache_warmer::{
    Backlog, DicomStateMeta, MIGRATOR, ServiceUrl, Settings, backlog, connect_options, run,
    run_until_drained,
};
use rand::Rng;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long a test's own Redis command may wait for its answer: far above redis-rs' 500 ms
/// default, which a loaded machine (16 test threads on 2 cores) exceeds now and then.
const TEST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection for a test's own Redis reads and writes (not the daemon's), with a generous
/// response timeout.
pub async fn test_connection(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TEST_RESPONSE_TIMEOUT))
        .set_response_timeout(Some(TEST_RESPONSE_TIMEOUT));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn admin_database_url() -> String {
    std::env::var("DCW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("DCW_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One test's private slice of the shared services.
pub struct TestEnv {
    /// Settings pointing at this test's database, stream and group.
    pub settings: Settings,
    /// This test's database.
    pub db: PgPool,
    /// A Redis connection for the test's own reads and writes.
    pub redis: MultiplexedConnection,
    /// Every tenant id of this test starts with this.
    pub tenant_prefix: String,
    database_name: String,
}

impl TestEnv {
    /// Creates the database (migrated) and picks unique names.
    pub async fn new() -> Self {
        let env = Self::with_empty_database().await;
        MIGRATOR.run(&env.db).await.expect("migrate test database");
        env
    }

    /// Creates an empty database (no tables) and picks unique names.
    pub async fn with_empty_database() -> Self {
        // Daemon logs appear with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
        let id: String = format!("{:010x}", rand::rng().random::<u64>() & 0xff_ffff_ffff);
        let database_name = format!("dcw_it_{id}");
        let admin = PgPool::connect(&admin_database_url())
            .await
            .expect("admin database");
        sqlx::query(&format!("CREATE DATABASE {database_name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let mut url = url::Url::parse(&admin_database_url()).expect("admin URL");
        url.set_path(&database_name);

        let mut settings = Settings::default();
        settings.redis.url = ServiceUrl::from(redis_url().as_str());
        settings.database.url = ServiceUrl::from(url.as_str());
        settings.stream.key = format!("it:{id}:ingest");
        settings.stream.dead_letter_key = format!("it:{id}:dead");
        settings.stream.group = format!("it-{id}");
        settings.stream.consumer = format!("it-{id}-consumer");
        settings.stream.block_ms = 200;
        settings.http.listen = "127.0.0.1:0".into();
        settings.validate().expect("test settings are valid");

        // Named apart from the daemon's connections, which tests look for by name.
        let db = PgPoolOptions::new()
            .max_connections(settings.database.max_connections)
            .acquire_timeout(settings.database.connect_timeout())
            .connect_lazy_with(
                connect_options(&settings.database)
                    .expect("connect options")
                    .application_name("dcw-tests"),
            );
        let redis = test_connection(&redis_url()).await.expect("redis");
        Self {
            settings,
            db,
            redis,
            tenant_prefix: format!("it{id}t"),
            database_name,
        }
    }

    /// Short timeouts, so that idle entries are reclaimed after one second.
    pub fn reclaim_quickly(&mut self) {
        self.settings.database.statement_timeout_ms = 300;
        self.settings.redis.command_timeout_ms = 150;
        self.settings.stream.block_ms = 100;
        self.settings.stream.claim_idle_ms = 1_000;
        self.settings.stream.stale_consumer_ms = 1_500;
        self.settings.validate().expect("fast settings are valid");
    }

    /// Runs the daemon in this process until the stream has nothing new, then waits for
    /// the group to have nothing pending.
    pub async fn drain(&self) {
        let settings = Arc::new(self.settings.clone());
        tokio::time::timeout(
            DEADLINE,
            run_until_drained(settings, CancellationToken::new()),
        )
        .await
        .expect("the daemon drains the stream in time")
        .expect("the daemon returns Ok");
        assert!(
            self.backlog().await.is_drained(),
            "{:?}",
            self.backlog().await
        );
    }

    /// Runs the daemon in this process until the returned handle stops it.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(self.settings.clone())
    }

    /// Runs the daemon with other settings (on this test's slice) until the handle stops it.
    pub fn start_daemon_with(&self, settings: Settings) -> Daemon {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(Arc::new(settings), cancel.clone()));
        Daemon { cancel, task }
    }

    /// Environment variables that point the real binary at this test's slice, its
    /// endpoint on a port of its own (tests that talk to it set one after these).
    pub fn daemon_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DCW__HTTP__LISTEN", "127.0.0.1:0".to_owned()),
            ("DCW__REDIS__URL", redis_url()),
            (
                "DCW__DATABASE__URL",
                self.settings.database.url.expose().to_owned(),
            ),
            ("DCW__STREAM__KEY", self.settings.stream.key.clone()),
            (
                "DCW__STREAM__DEAD_LETTER_KEY",
                self.settings.stream.dead_letter_key.clone(),
            ),
            ("DCW__STREAM__GROUP", self.settings.stream.group.clone()),
            (
                "DCW__STREAM__CONSUMER",
                self.settings.stream.consumer.clone(),
            ),
            (
                "DCW__STREAM__BLOCK_MS",
                self.settings.stream.block_ms.to_string(),
            ),
        ]
    }

    /// Locks `dicom_state_meta` (ACCESS EXCLUSIVE) until the returned transaction ends: the
    /// daemon's queries wait on it.
    pub async fn lock_state_table(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        self.lock_table("dicom_state_meta").await
    }

    /// Locks `table` (ACCESS EXCLUSIVE) until the returned transaction ends.
    pub async fn lock_table(
        &self,
        table: &'static str,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut lock = self.db.begin().await.expect("begin");
        sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *lock)
            .await
            .unwrap_or_else(|error| panic!("lock {table}: {error}"));
        lock
    }

    /// How many of the daemon's connections (its `application_name`) to this test's database
    /// meet `condition`, a test's constant over `pg_stat_activity`'s columns.
    pub async fn daemon_backends(&self, condition: &'static str) -> i64 {
        let query = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND application_name = 'dicom-cache-warmer' AND {condition}"
        );
        sqlx::query_scalar::<_, i64>(&query)
            .fetch_one(&self.db)
            .await
            .expect("pg_stat_activity")
    }

    /// Waits until a query of the daemon in this test's database waits for a lock.
    pub async fn wait_for_a_query_waiting_on_a_lock(&self) {
        wait_for("the daemon's query to wait for the lock", || async {
            self.daemon_backends("wait_event_type = 'Lock'").await > 0
        })
        .await;
    }

    /// Waits until the outbox relay holds a batch of rows: its transaction took them and
    /// waits on the relay (publishing them).
    pub async fn wait_for_rows_held_by_the_relay(&self) {
        wait_for("the relay to hold a batch of outbox rows", || async {
            self.daemon_backends(
                "state = 'idle in transaction' AND query LIKE '%FOR UPDATE SKIP LOCKED%'",
            )
            .await
                > 0
        })
        .await;
    }

    /// The group's pending count and lag (a missing group counts as nothing done).
    pub async fn backlog(&self) -> Backlog {
        let mut con = self.redis.clone();
        backlog(&mut con, &self.settings.stream)
            .await
            .expect("XINFO GROUPS")
            .unwrap_or(Backlog {
                pending: 0,
                lag: None,
            })
    }

    /// Inserts the dataset's rows into this test's database, then publishes its events to
    /// this test's stream.
    pub async fn load(&self, dataset: &Dataset) {
        dataset.insert(&self.db).await.expect("insert rows");
        dataset
            .publish(&mut self.redis.clone(), &self.settings.stream.key)
            .await
            .expect("publish");
    }

    /// Waits until every published entry has been delivered and acknowledged.
    pub async fn wait_until_drained(&self) {
        wait_for("the group to drain", || async {
            self.backlog().await.is_drained()
        })
        .await;
    }

    /// Names of the group's consumers.
    pub async fn consumers(&self) -> Vec<String> {
        let mut con = self.redis.clone();
        let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.settings.stream.key)
            .arg(&self.settings.stream.group)
            .query_async(&mut con)
            .await
            .expect("XINFO CONSUMERS");
        reply.consumers.into_iter().map(|c| c.name).collect()
    }

    /// Reads a string key.
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut con = self.redis.clone();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .expect("GET")
    }

    /// The dead-letter stream's entries, fields as text.
    pub async fn dead_letters(&self) -> Vec<Vec<(String, Vec<u8>)>> {
        let mut con = self.redis.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.settings.stream.dead_letter_key)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .expect("XRANGE");
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let mut fields: Vec<(String, Vec<u8>)> = entry
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value(v).expect("bytes")))
                    .collect();
                fields.sort();
                fields
            })
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let database_name = self.database_name.clone();
        let keys = [
            self.settings.stream.key.clone(),
            self.settings.stream.dead_letter_key.clone(),
            dicom_cache_warmer::keys::series_schedule(&self.settings.stream.group),
            dicom_cache_warmer::keys::series_first_event(&self.settings.stream.group),
        ];
        let pattern = format!("*:{}*", self.tenant_prefix);
        // Drop runs inside the test's runtime: clean up from a thread with its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                if let Ok(admin) = PgPool::connect(&admin_database_url()).await {
                    let _ = sqlx::query(&format!(
                        "DROP DATABASE IF EXISTS {database_name} WITH (FORCE)"
                    ))
                    .execute(&admin)
                    .await;
                }
                if let Ok(mut con) = test_connection(&redis_url()).await {
                    let mut doomed: Vec<String> = keys.to_vec();
                    let mut cursor: u64 = 0;
                    loop {
                        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut con)
                            .await
                            .unwrap_or((0, Vec::new()));
                        doomed.extend(found);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(&doomed).query_async(&mut con).await;
                }
            });
        })
        .join()
        .expect("cleanup thread");
    }
}

/// A cluster-wide PostgreSQL role made for one test, dropped (with its privileges in the
/// test's database) however the test ends.
pub struct TestRole {
    /// The role's name.
    pub name: String,
    database_url: String,
}

impl TestRole {
    /// Creates `{tenant_prefix}_role` with a password, allowed to connect to the test's
    /// database and granted `grants` (statements with `{role}` in place of its name).
    pub async fn create(env: &TestEnv, grants: &[&str]) -> Self {
        let role = Self {
            name: format!("{}_role", env.tenant_prefix),
            database_url: env.settings.database.url.expose().to_owned(),
        };
        let mut statements = vec![
            format!("CREATE ROLE {} LOGIN PASSWORD 'role-secret'", role.name),
            format!(
                "GRANT CONNECT ON DATABASE {} TO {}",
                env.database_name, role.name
            ),
        ];
        statements.extend(grants.iter().map(|g| g.replace("{role}", &role.name)));
        for statement in statements {
            sqlx::query(&statement)
                .execute(&env.db)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        role
    }

    /// The test database's URL, connecting as this role.
    pub fn url(&self) -> String {
        self.database_url
            .replacen("postgres@", &format!("{}@", self.name), 1)
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (name, database_url) = (self.name.clone(), self.database_url.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                // Privileges in the test's database first (gone already when it was dropped).
                if let Ok(db) = PgPool::connect(&database_url).await {
                    let _ = sqlx::query(&format!("DROP OWNED BY {name}"))
                        .execute(&db)
                        .await;
                }
                if let Ok(admin) = PgPool::connect(&admin_database_url()).await {
                    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join()
        .expect("cleanup thread");
    }
}

/// A daemon running in the test's process.
pub struct Daemon {
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Cancels it and waits for it to return.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task")
            .expect("daemon returns Ok");
    }
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary pointed at `env`'s slice ([`TestEnv::daemon_env`]), killed when dropped,
/// with `RUST_LOG` cleared: its log level is the test's `DCW__LOG__LEVEL` (info unless set),
/// so that a developer's `RUST_LOG=warn` cannot hide a line a test waits for.
pub fn daemon_command(env: &TestEnv) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"));
    command
        .env_remove("RUST_LOG")
        .envs(env.daemon_env())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end and returns what it printed; panics after [`DEADLINE`] (the
/// child is killed then, `kill_on_drop`).
pub async fn output_of(command: &mut tokio::process::Command) -> std::process::Output {
    command.kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not exit within {DEADLINE:?}"))
        .expect("run the command")
}

/// Waits for `child` to exit, at most `within`; panics naming `what` when it does not.
pub async fn exit_within(
    child: &mut tokio::process::Child,
    within: Duration,
    what: &str,
) -> std::process::ExitStatus {
    tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("timed out after {within:?} waiting for {what}"))
        .expect("wait for the child")
}

/// Sends SIGTERM to `child` and waits for it to exit, at most [`DEADLINE`].
pub async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("the child is running");
    crate::chaos_support::send_signal("-TERM", pid).await;
    exit_within(child, DEADLINE, "the daemon to stop after SIGTERM").await
}

/// Waits for `child` to exit and returns its output, at most [`DEADLINE`].
pub async fn output_within(child: tokio::process::Child, what: &str) -> std::process::Output {
    tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
        .expect("wait for the child")
}

/// Reads a child's log until a line contains `needle`; panics if the log ends first or
/// after [`DEADLINE`].
pub async fn wait_for_log_line<R>(log: &mut tokio::io::Lines<R>, needle: &str)
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = log.next_line().await.expect("read log") {
            if line.contains(needle) {
                return;
            }
        }
        panic!("the log ended before a line with {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for a log line with {needle:?}"));
}

/// The server's `DicomStateMeta` (database/src/dicom_meta.rs), mirrored field by field
/// with the server's serde setup, independent of the daemon's own type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDicomStateMeta {
    #[serde(rename = "tenant_id")]
    pub tenant_id: String,
    #[serde(rename = "patient_id")]
    pub patient_id: String,
    #[serde(rename = "study_uid")]
    pub study_uid: String,
    #[serde(rename = "series_uid")]
    pub series_uid: String,
    #[serde(rename = "study_uid_hash")]
    pub study_uid_hash: String,
    #[serde(rename = "series_uid_hash")]
    pub series_uid_hash: String,
    #[serde(rename = "study_date_origin")]
    pub study_date_origin: String,
    #[serde(rename = "patient_name")]
    pub patient_name: Option<String>,
    #[serde(rename = "patient_sex")]
    pub patient_sex: Option<String>,
    #[serde(rename = "patient_birth_date")]
    pub patient_birth_date: Option<NaiveDate>,
    #[serde(rename = "patient_birth_time")]
    pub patient_birth_time: Option<NaiveTime>,
    #[serde(rename = "patient_age")]
    pub patient_age: Option<String>,
    #[serde(rename = "patient_size")]
    pub patient_size: Option<f64>,
    #[serde(rename = "patient_weight")]
    pub patient_weight: Option<f64>,
    #[serde(rename = "study_date")]
    pub study_date: NaiveDate,
    #[serde(rename = "study_time")]
    pub study_time: Option<NaiveTime>,
    #[serde(rename = "accession_number")]
    pub accession_number: Option<String>,
    #[serde(rename = "study_id")]
    pub study_id: Option<String>,
    #[serde(rename = "study_description")]
    pub study_description: Option<String>,
    #[serde(rename = "modality")]
    pub modality: Option<String>,
    #[serde(rename = "series_number")]
    pub series_number: Option<i32>,
    #[serde(rename = "series_date")]
    pub series_date: Option<NaiveDate>,
    #[serde(rename = "series_time")]
    pub series_time: Option<NaiveTime>,
    #[serde(rename = "series_description")]
    pub series_description: Option<String>,
    #[serde(rename = "body_part_examined")]
    pub body_part_examined: Option<String>,
    #[serde(rename = "protocol_name")]
    pub protocol_name: Option<String>,
    #[serde(rename = "series_related_instances")]
    pub series_related_instances: Option<i32>,
    #[serde(rename = "created_time")]
    pub created_time: NaiveDateTime,
    #[serde(rename = "updated_time")]
    pub updated_time: NaiveDateTime,
}

impl From<&DicomStateMeta> for ServerDicomStateMeta {
    fn from(r: &DicomStateMeta) -> Self {
        Self {
            tenant_id: r.tenant_id.clone(),
            patient_id: r.patient_id.clone(),
            study_uid: r.study_uid.clone(),
            series_uid: r.series_uid.clone(),
            study_uid_hash: r.study_uid_hash.clone(),
            series_uid_hash: r.series_uid_hash.clone(),
            study_date_origin: r.study_date_origin.clone(),
            patient_name: r.patient_name.clone(),
            patient_sex: r.patient_sex.clone(),
            patient_birth_date: r.patient_birth_date,
            patient_birth_time: r.patient_birth_time,
            patient_age: r.patient_age.clone(),
            patient_size: r.patient_size,
            patient_weight: r.patient_weight,
            study_date: r.study_date,
            study_time: r.study_time,
            accession_number: r.accession_number.clone(),
            study_id: r.study_id.clone(),
            study_description: r.study_description.clone(),
            modality: r.modality.clone(),
            series_number: r.series_number,
            series_date: r.series_date,
            series_time: r.series_time,
            series_description: r.series_description.clone(),
            body_part_examined: r.body_part_examined.clone(),
            protocol_name: r.protocol_name.clone(),
            series_related_instances: r.series_related_instances,
            created_time: r.created_time,
            updated_time: r.updated_time,
        }
    }
}
