//! PgBouncer in transaction pooling mode (Debian's `pgbouncer`, a private process per test,
//! its startup parameters left at their defaults) in front of the test's database. With the
//! default `database.statement_timeout_via = "startup"`, PgBouncer refuses the daemon's
//! connections and `check-config` names the setting to change; with `transaction`, the real
//! binary warms studies and builds a series document through it, and its statement timeout
//! still cancels a query stuck on a lock without leaking to the pooler's other clients.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use dcw_testkit::server_writes::upsert_series;
use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::chaos_support::{Replica, check_cache, database_address, database_url_via, free_port};
use crate::helpers::{DEADLINE, TestEnv, wait_for};
use crate::outbox;
use crate::security::run_binary;
use crate::series::SeriesFixture;

/// Server connections PgBouncer keeps per database: fewer than the daemon's pool, so that its
/// transactions take turns on them and land on another one than last time.
const SERVER_CONNECTIONS: usize = 2;

/// The `pgbouncer` program, on the PATH or where Debian's package puts it.
fn pgbouncer_program() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|program| program.is_file())
}

/// A PgBouncer of the test's own on 127.0.0.1 and a free port, pooling by transaction in front
/// of the test's PostgreSQL, trusting its users; killed when dropped.
struct PrivatePgBouncer {
    port: u16,
    child: Child,
    log: PathBuf,
    // Removed after `drop` has killed the process.
    _dir: tempfile::TempDir,
}

impl PrivatePgBouncer {
    /// Starts one for `env`'s database and returns once a query goes through it; `None` when
    /// pgbouncer is not installed.
    async fn start(env: &TestEnv) -> Option<Self> {
        let program = pgbouncer_program()?;
        let dir = tempfile::tempdir().expect("a directory for pgbouncer");
        let upstream = database_address(&env.settings);
        let url = url::Url::parse(env.settings.database.url.expose()).expect("database URL");
        let userlist = dir.path().join("userlist.txt");
        std::fs::write(&userlist, format!("\"{}\" \"\"\n", url.username())).expect("userlist");
        // PgBouncer refuses to run as root; started as root, it becomes `user` (the owner of
        // the PostgreSQL server, as for the private cluster) once it has read its files.
        let running_as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={host} port={upstream_port}\n\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {userlist}\n\
                 pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\n{user}",
                host = upstream.ip(),
                upstream_port = upstream.port(),
                userlist = userlist.display(),
                user = if running_as_root {
                    "user = postgres\n"
                } else {
                    ""
                },
            ),
        )
        .expect("pgbouncer.ini");
        let log = dir.path().join("pgbouncer.log");
        let child = Command::new(program)
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("pgbouncer log"))
            .spawn()
            .expect("start pgbouncer");
        let mut bouncer = Self {
            port,
            child,
            log,
            _dir: dir,
        };
        bouncer.wait_until_it_answers(env).await;
        Some(bouncer)
    }

    /// `env`'s database URL through it.
    fn url(&self, env: &TestEnv) -> String {
        database_url_via(&env.settings, self.port)
    }

    /// A connection through it that sends no startup parameter PgBouncer refuses.
    async fn connect(&self, env: &TestEnv) -> Result<PgConnection, sqlx::Error> {
        PgConnectOptions::from_str(&self.url(env))?
            .extra_float_digits(None)
            .connect()
            .await
    }

    async fn wait_until_it_answers(&mut self, env: &TestEnv) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answered = match self.connect(env).await {
                Ok(mut con) => sqlx::raw_sql("SELECT 1").execute(&mut con).await.map(drop),
                Err(error) => Err(error),
            };
            let Err(error) = answered else { return };
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(status) = self.child.try_wait().expect("pgbouncer status") {
                panic!("pgbouncer exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not answer in time ({error}): {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts PgBouncer for `env`, or says why the test is skipped.
async fn pgbouncer_or_skip(env: &TestEnv) -> Option<PrivatePgBouncer> {
    let bouncer = PrivatePgBouncer::start(env).await;
    if bouncer.is_none() {
        eprintln!(
            "SKIPPED: pgbouncer is not installed (apt-get install pgbouncer; scripts/test.sh \
             installs it through scripts/services.sh)"
        );
    }
    bouncer
}

fn transaction_via(bouncer: &PrivatePgBouncer, env: &TestEnv) -> Vec<(&'static str, String)> {
    vec![
        ("DCW__DATABASE__URL", bouncer.url(env)),
        ("DCW__DATABASE__STATEMENT_TIMEOUT_VIA", "transaction".into()),
    ]
}

/// `check-config`'s line for PostgreSQL, and whether every check passed.
async fn check_postgres(env: &TestEnv, vars: &[(&'static str, String)]) -> (bool, String) {
    let checked = run_binary(env, vars, &["check-config"]).await;
    let printed = String::from_utf8_lossy(&checked.stdout);
    let line = printed
        .lines()
        .find(|line| line.starts_with("postgres: "))
        .unwrap_or_else(|| panic!("a postgres line in {printed}"))
        .to_owned();
    (checked.status.success(), line)
}

#[tokio::test]
async fn behind_pgbouncer_startup_is_refused_by_name_and_transaction_warms_studies_and_series() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    let Some(bouncer) = pgbouncer_or_skip(&env).await else {
        return;
    };

    // The default sends the statement timeout as a startup parameter: PgBouncer refuses the
    // connection, and check-config says which setting to change.
    let startup = [("DCW__DATABASE__URL", bouncer.url(&env))];
    let (ok, line) = check_postgres(&env, &startup).await;
    assert!(!ok, "{line}");
    assert!(
        line.starts_with("postgres: FAILED")
            && line.contains("unsupported startup parameter")
            && line.contains("set database.statement_timeout_via = \"transaction\""),
        "{line}"
    );

    let transaction = transaction_via(&bouncer, &env);
    let (ok, line) = check_postgres(&env, &transaction).await;
    assert!(ok && line.starts_with("postgres: ok"), "{line}");

    // The daemon: studies, and a series document with its dicom_json_meta row, all through
    // PgBouncer (the dataset's other series have no files: their builds fail and are recorded
    // as such, also through PgBouncer).
    let roots = env.settings.series.roots().expect("series documents on");
    let series_env = [
        ("DCW__SERIES__DICOM_ROOT", roots.0.display().to_string()),
        ("DCW__SERIES__JSON_ROOT", roots.1.display().to_string()),
        ("DCW__SERIES__QUIET_MS", "300".to_owned()),
        ("DCW__SERIES__MAX_DELAY_MS", "2000".to_owned()),
    ];
    let started = tokio::time::Instant::now();
    let daemon = Replica::start(&env, &[&transaction[..], &series_env[..]].concat()).await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 2,
        studies: 12,
        seed: 11,
        ..DatasetSpec::default()
    });
    env.load(&dataset).await;
    series.publish(&env, &series.sops).await;
    env.wait_until_drained().await;
    wait_for("the series document", || async {
        series.document().exists()
    })
    .await;
    wait_for("the series build to be recorded", || async {
        let status: Option<i32> =
            sqlx::query_scalar("SELECT json_status FROM dicom_json_meta WHERE series_uid = $1")
                .bind(series.series.as_str())
                .fetch_optional(&env.db)
                .await
                .expect("dicom_json_meta");
        status == Some(1)
    })
    .await;
    let figures = daemon.stop().await;
    assert!(
        !figures.saw_outage_of("postgres", started),
        "{:?}",
        figures.warnings
    );
    let database_errors: Vec<&String> = figures
        .warnings
        .iter()
        .filter(|w| w.contains("database") || w.contains("PostgreSQL"))
        .collect();
    assert!(database_errors.is_empty(), "{database_errors:?}");
    let cache = check_cache(&env.redis, &dataset.rows).await;
    assert_eq!(cache.correct, cache.expected, "{:?}", cache.wrong);

    // warm: concurrent pages, each its own transactions on whichever server connection.
    let warmed = run_binary(&env, &transaction, &["warm", "--all", "--page-size", "2"]).await;
    let summary = String::from_utf8_lossy(&warmed.stdout);
    assert!(
        warmed.status.success(),
        "{summary}{}",
        String::from_utf8_lossy(&warmed.stderr)
    );
    assert!(summary.contains("13 selected"), "{summary}");
}

#[tokio::test]
async fn behind_pgbouncer_the_timeout_set_per_transaction_cancels_a_stuck_query_and_stays_in_it() {
    let env = TestEnv::new().await;
    let Some(bouncer) = pgbouncer_or_skip(&env).await else {
        return;
    };
    let mut vars = transaction_via(&bouncer, &env);
    vars.push(("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "500".into()));

    // The test holds dicom_state_meta; the daemon's reads wait for it. The server cancels them
    // after 500 ms: its statement timeout, not the client's deadline of 6.5 s (connect 5 s +
    // statement 0.5 s + 1 s) that would say "PostgreSQL did not answer".
    let mut holder = PgConnection::connect(env.settings.database.url.expose())
        .await
        .expect("connect directly");
    let mut lock = holder.begin().await.expect("BEGIN");
    sqlx::query("LOCK TABLE dicom_state_meta IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock dicom_state_meta");
    let timed_out = "canceling statement due to statement timeout";
    // The server's own words: its statement timeout, not the client's deadline.
    let (ok, line) = check_postgres(&env, &vars).await;
    assert!(!ok && line.contains(timed_out), "{line}");
    let warmed = run_binary(&env, &vars, &["warm", "--all"]).await;
    let said = String::from_utf8_lossy(&warmed.stderr);
    assert_eq!(warmed.status.code(), Some(1), "{said}");
    assert!(
        said.contains("count the studies") && said.contains(timed_out),
        "{said}"
    );
    lock.rollback().await.expect("ROLLBACK");
    let (ok, line) = check_postgres(&env, &vars).await;
    assert!(ok, "{line}");

    // SET LOCAL ended with each transaction: with every server connection of the pool held by
    // a client of its own, each still has the server's default.
    let default: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut holder)
        .await
        .expect("the server's default");
    let mut held = Vec::new();
    for _ in 0..SERVER_CONNECTIONS {
        let mut con = bouncer
            .connect(&env)
            .await
            .expect("connect through pgbouncer");
        sqlx::raw_sql("BEGIN")
            .execute(&mut con)
            .await
            .expect("BEGIN");
        held.push(con);
    }
    let mut servers = Vec::new();
    for con in &mut held {
        let (pid, timeout): (i32, String) =
            sqlx::query_as("SELECT pg_backend_pid(), current_setting('statement_timeout')")
                .persistent(false)
                .fetch_one(&mut *con)
                .await
                .expect("the setting through pgbouncer");
        assert_eq!(timeout, default, "server connection {pid}");
        servers.push(pid);
    }
    servers.sort_unstable();
    servers.dedup();
    assert_eq!(servers.len(), SERVER_CONNECTIONS, "{servers:?}");
}

#[tokio::test]
async fn behind_pgbouncer_the_outbox_relay_relays_under_the_timeout_set_per_transaction() {
    let env = TestEnv::new().await;
    let Some(bouncer) = pgbouncer_or_skip(&env).await else {
        return;
    };
    // Installed on PostgreSQL itself, as README says.
    outbox::install(&env).await;
    let mut vars = transaction_via(&bouncer, &env);
    vars.extend([
        ("DCW__OUTBOX__ENABLED", "true".into()),
        ("DCW__OUTBOX__POLL_MS", "200".into()),
        ("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "500".into()),
        ("DCW__STREAM__CLAIM_IDLE_MS", "10000".into()),
        ("DCW__STREAM__STALE_CONSUMER_MS", "20000".into()),
    ]);
    let replica = Replica::start(&env, &vars).await;

    // Several relay transactions, sharing PgBouncer's two server connections with the
    // daemon's fills: every statement is prepared in the transaction that runs it.
    let mut expected = BTreeMap::new();
    for seed in 0..4 {
        let dataset = outbox::dataset(&env, 3, seed);
        upsert_series(&env.db, &dataset.rows)
            .await
            .expect("upsert series");
        expected.extend(outbox::by_study(&dataset.rows));
    }
    wait_for("every study warmed through PgBouncer", || async {
        outbox::all_warm(&env, &expected).await
    })
    .await;
    assert!(
        replica.figures().warnings.is_empty(),
        "{:?}",
        replica.figures().warnings
    );

    // The relay's next take waits for the test's lock: the server cancels it after 500 ms,
    // so SET LOCAL reached the relay's transaction (the client's deadline, 5 s later, would
    // say "no answer").
    let lock = env.lock_table("dcw_ingest_outbox").await;
    let cancelled = "canceling statement due to statement timeout";
    wait_for("the relay's take cancelled by the server", || async {
        replica
            .figures()
            .warnings
            .iter()
            .any(|warning| warning.contains("outbox relay failed") && warning.contains(cancelled))
    })
    .await;
    lock.rollback().await.expect("ROLLBACK");

    let later = outbox::dataset(&env, 2, 9);
    upsert_series(&env.db, &later.rows)
        .await
        .expect("upsert series");
    let later = outbox::by_study(&later.rows);
    wait_for("the relay working again", || async {
        outbox::all_warm(&env, &later).await && outbox::outbox_rows(&env).await == 0
    })
    .await;
    let figures = replica.stop().await;
    let unexpected: Vec<&String> = figures
        .warnings
        .iter()
        .filter(|warning| !warning.contains(cancelled))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
}
