//! PostgreSQL over TLS with `sslmode=verify-full`: a private cluster of the test's own that
//! accepts nothing but TLS (`hostssl`, no `host` line), its certificate signed by a CA made in
//! the test. The real binary migrates and warms through it; with another CA, or without TLS,
//! `warm` and `check-config` fail with a message naming the cause, and the daemon is not
//! ready, naming it, until the connection verifies.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use sqlx::PgPool;

use crate::chaos_support::{Replica, check_cache, free_port};
use crate::helpers::{TestEnv, wait_for};
use crate::security::{make_certificates, openssl, run_binary};

/// The newest PostgreSQL server binaries in `/usr/lib/postgresql/*/bin`.
fn postgres_bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max();
    newest
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL program as the `postgres` user (initdb and postgres refuse root),
/// killed after two minutes.
fn as_postgres(bin: &Path, program: &str, args: &[&str], cwd: &Path) -> std::process::ExitStatus {
    std::process::Command::new("timeout")
        .args(["--kill-after=5", "120", "runuser", "-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|error| panic!("run {program} as postgres: {error}"))
}

/// A PostgreSQL cluster of the test's own on 127.0.0.1 and 127.0.0.2 and a free port, TLS only, trusting
/// every user over TLS; stopped (`pg_ctl stop -m immediate`) and removed when dropped.
pub struct PrivatePostgres {
    /// Its port.
    pub port: u16,
    /// The CA that signed its certificate (for `localhost` and 127.0.0.1).
    pub ca_file: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    // Removed after `drop` has stopped the server.
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates the cluster and returns once it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("certificate directory");
        make_certificates(&certs);
        // From here on, whatever happens, dropping the guard stops the server.
        let cluster = Self {
            port: free_port(),
            ca_file: certs.join("ca.crt"),
            bin: postgres_bin_dir(),
            data: dir.path().join("data"),
            dir,
        };
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(cluster.dir.path())
            .status()
            .expect("run chown");
        assert!(status.success(), "chown the cluster directory to postgres");
        let data = cluster.data.to_str().expect("UTF-8 temp dir");
        assert!(
            as_postgres(
                &cluster.bin,
                "initdb",
                &[
                    "-D",
                    data,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                cluster.dir.path(),
            )
            .success(),
            "initdb"
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1,127.0.0.2'\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{certs}/server.crt'\nssl_key_file = '{certs}/server.key'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            port = cluster.port,
            dir = cluster.dir.path().display(),
            certs = certs.display(),
        );
        append(&cluster.data.join("postgresql.conf"), &conf);
        // TLS or nothing: no `host` line, so a plain TCP connection finds no entry.
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.0/8 trust\n",
        )
        .expect("write pg_hba.conf");
        let log = cluster.dir.path().join("log");
        let started = as_postgres(
            &cluster.bin,
            "pg_ctl",
            &[
                "-D",
                data,
                "-l",
                log.to_str().expect("UTF-8 temp dir"),
                "-w",
                "-t",
                "15",
                "start",
            ],
            cluster.dir.path(),
        );
        assert!(
            started.success(),
            "the private PostgreSQL did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        cluster
    }

    /// A URL for `database` on it, as user `postgres` at host `localhost`, with `query`.
    pub fn url(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?{query}",
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(data) = self.data.to_str() {
            as_postgres(
                &self.bin,
                "pg_ctl",
                &["-D", data, "-m", "immediate", "-w", "stop"],
                self.dir.path(),
            );
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .unwrap_or_else(|error| panic!("append to {}: {error}", path.display()));
}

fn database_url(url: &str) -> Vec<(&'static str, String)> {
    vec![("DCW__DATABASE__URL", url.to_owned())]
}

#[tokio::test]
async fn postgres_over_verify_full_tls_warms_and_refuses_another_ca_another_name_or_no_tls() {
    let env = TestEnv::new().await;
    let postgres = PrivatePostgres::start();
    let verified = postgres.url(
        "dicom",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            postgres.ca_file.display()
        ),
    );

    // `migrate` creates the database (through the maintenance database) and its tables.
    let migrated = run_binary(&env, &database_url(&verified), &["migrate"]).await;
    assert!(
        migrated.status.success(),
        "migrate over TLS: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    // The test's own connection, verified the same way, loads the studies.
    let db = PgPool::connect(&verified)
        .await
        .expect("connect over verified TLS");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&db)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "the connection is TLS");
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 2,
        studies: 6,
        ..DatasetSpec::default()
    });
    dataset.insert(&db).await.expect("insert rows");
    db.close().await;

    let warmed = run_binary(&env, &database_url(&verified), &["warm", "--all"]).await;
    let summary = String::from_utf8_lossy(&warmed.stdout);
    assert!(
        warmed.status.success(),
        "warm over TLS: {}",
        String::from_utf8_lossy(&warmed.stderr)
    );
    assert!(summary.contains("6 selected, 6 filled"), "{summary}");
    let cache = check_cache(&env.redis, &dataset.rows).await;
    assert_eq!(cache.correct, 6, "{:?}", cache.wrong);

    // A certificate from a CA the URL does not name is not trusted: an unrelated CA, and an
    // impostor with the real CA's name (rustls finds the issuer by name, then the signature
    // fails). `warm` exits 1 naming the cause; `check-config` prints it on its FAILED line.
    let others = tempfile::tempdir().expect("other CAs' directory");
    openssl(
        others.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "unrelated.key",
            "-out",
            "unrelated.crt",
            "-days",
            "1",
            "-subj",
            "/CN=dcw-unrelated-ca",
        ],
    );
    make_certificates(others.path());
    for (ca, cause) in [
        ("unrelated.crt", "invalid peer certificate: UnknownIssuer"),
        ("ca.crt", "invalid peer certificate: BadSignature"),
    ] {
        let untrusted = postgres.url(
            "dicom",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                others.path().join(ca).display()
            ),
        );
        let refused = run_binary(&env, &database_url(&untrusted), &["warm", "--all"]).await;
        let said = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{ca}: {said}");
        assert!(said.contains(cause), "{ca}: {said}");
        let checked = run_binary(&env, &database_url(&untrusted), &["check-config"]).await;
        let printed = String::from_utf8_lossy(&checked.stdout);
        assert!(!checked.status.success(), "{ca}: {printed}");
        assert!(
            printed
                .lines()
                .any(|line| line.starts_with("postgres: FAILED") && line.contains(cause)),
            "{ca}: {printed}"
        );
    }

    // The right CA, but an address the certificate does not name (it names localhost and
    // 127.0.0.1; the server also listens on 127.0.0.2).
    let misnamed = verified.replace("@localhost:", "@127.0.0.2:");
    let refused = run_binary(&env, &database_url(&misnamed), &["warm", "--all"]).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("certificate not valid for name \"127.0.0.2\""),
        "{said}"
    );

    // Without TLS the server finds no pg_hba.conf entry: refused, and said so.
    let plain = postgres.url("dicom", "sslmode=disable");
    let refused = run_binary(&env, &database_url(&plain), &["warm", "--all"]).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("no pg_hba.conf entry") && said.contains("no encryption"),
        "{said}"
    );
}

#[tokio::test]
async fn the_daemon_over_tls_that_does_not_verify_is_not_ready_and_says_why_until_it_does() {
    let env = TestEnv::new().await;
    let postgres = PrivatePostgres::start();
    let verified = postgres.url(
        "dicom",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            postgres.ca_file.display()
        ),
    );
    let migrated = run_binary(&env, &database_url(&verified), &["migrate"]).await;
    assert!(
        migrated.status.success(),
        "migrate over TLS: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    // The CA file the daemon is given: first another CA's, later the right one.
    let others = tempfile::tempdir().expect("another CA's directory");
    make_certificates(others.path());
    let ca_file = others.path().join("given-ca.crt");
    std::fs::copy(others.path().join("ca.crt"), &ca_file).expect("another CA");
    let untrusted = postgres.url(
        "dicom",
        &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
    );
    let plain = postgres.url("dicom", "sslmode=disable");

    for (url, cause) in [
        (&plain, "no pg_hba.conf entry"),
        (&untrusted, "invalid peer certificate: BadSignature"),
    ] {
        let port = free_port();
        let replica = Replica::start(
            &env,
            &[
                ("DCW__DATABASE__URL", url.clone()),
                ("DCW__HTTP__LISTEN", format!("127.0.0.1:{port}")),
            ],
        )
        .await;
        wait_for("readiness to name the cause", || async {
            crate::endpoint::get(port, "/readyz")
                .await
                .is_some_and(|(status, body)| status == 503 && body.contains(cause))
        })
        .await;
        if url == &untrusted {
            std::fs::copy(&postgres.ca_file, &ca_file).expect("the right CA");
            wait_for("readiness once the certificate verifies", || async {
                crate::endpoint::get(port, "/readyz")
                    .await
                    .is_some_and(|(status, _)| status == 200)
            })
            .await;
        }
        replica.stop().await;
    }
}
