//! In transit and at rest: the real binary over TLS to a private redis-server (a CA made in
//! the test) as a Redis ACL user limited to the README's rule, and as a PostgreSQL role with
//! exactly the README's grants; a missing certificate or grant fails with a clear message.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use dicom_cache_warmer::{RedisSettings, ServiceUrl, backlog, blocking_connection};
use redis::aio::MultiplexedConnection;
use tokio::process::{Child, Command};

use crate::acl::{ACL_USER, AclRule, use_readme_stream_names};
use crate::chaos_support::free_port;
use crate::helpers::{TestEnv, TestRole, daemon_command, output_of, terminate, wait_for};

/// Runs `openssl` with `args` in `dir`; panics when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA (`ca.crt`, `ca.key`) and a server certificate (`server.crt`, `server.key`) for
/// `localhost` and 127.0.0.1 signed by it, made in `dir`.
pub fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=dcw-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write extension");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
}

/// A redis-server of the test's own that speaks only TLS, with an admin user.
async fn start_tls_redis(dir: &Path, port: u16) -> Child {
    let conf = format!(
        "port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {d}/server.crt\ntls-key-file {d}/server.key\n\
         tls-ca-cert-file {d}/ca.crt\ntls-auth-clients no\nsave \"\"\nappendonly no\ndir {d}\n\
         user default on >admin-secret ~* &* +@all\n",
        d = dir.display()
    );
    std::fs::write(dir.join("redis.conf"), conf).expect("write redis.conf");
    Command::new("redis-server")
        .arg(dir.join("redis.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server")
}

fn tls_settings(dir: &Path, port: u16, user: &str) -> RedisSettings {
    RedisSettings {
        url: ServiceUrl::from(format!("rediss://{user}@127.0.0.1:{port}").as_str()),
        ca_file: Some(dir.join("ca.crt")),
        ..RedisSettings::default()
    }
}

async fn admin_connection(dir: &Path, port: u16) -> MultiplexedConnection {
    let settings = tls_settings(dir, port, "default:admin-secret");
    let deadline = tokio::time::Instant::now() + crate::helpers::DEADLINE;
    loop {
        if let Ok(con) = blocking_connection(&settings, Duration::ZERO).await {
            return con;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the TLS redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the real binary on `env`'s slice with `vars` added (later ones win) and a `warn` log.
pub async fn run_binary(
    env: &TestEnv,
    vars: &[(&str, String)],
    args: &[&str],
) -> std::process::Output {
    output_of(
        daemon_command(env)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DCW__LOG__LEVEL", "warn")
            .args(args),
    )
    .await
}

#[tokio::test]
async fn the_daemon_works_over_tls_with_the_least_privileged_redis_user_and_database_role() {
    let mut env = TestEnv::new().await;
    // The stream under a name the README's rule covers.
    use_readme_stream_names(&mut env);
    let dir = tempfile::tempdir().expect("temp dir");
    make_certificates(dir.path());
    let port = free_port();
    let _redis = start_tls_redis(dir.path(), port).await;
    let mut admin = admin_connection(dir.path(), port).await;
    // A user with exactly the README's rule.
    AclRule::from_readme()
        .apply(&mut admin, "warmer-secret")
        .await;

    // A role with exactly the README's grants.
    let role = TestRole::create(
        &env,
        &[
            "GRANT SELECT ON dicom_state_meta, dicom_image_meta, dicom_json_meta TO {role}",
            "GRANT INSERT, UPDATE ON dicom_json_meta TO {role}",
        ],
    )
    .await;
    let role_url = role.url();

    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        studies: 3,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    dataset
        .publish(&mut admin, &env.settings.stream.key)
        .await
        .expect("publish");
    let series_root = tempfile::tempdir().expect("series root");
    let vars = vec![
        (
            "DCW__REDIS__URL",
            format!("rediss://{ACL_USER}@127.0.0.1:{port}"),
        ),
        ("DCW__REDIS__PASSWORD", "warmer-secret".to_owned()),
        (
            "DCW__REDIS__CA_FILE",
            dir.path().join("ca.crt").display().to_string(),
        ),
        ("DCW__DATABASE__URL", role_url.clone()),
        // Series scheduling, locks and builds also run under the limited user.
        (
            "DCW__SERIES__DICOM_ROOT",
            series_root.path().display().to_string(),
        ),
        (
            "DCW__SERIES__JSON_ROOT",
            series_root.path().display().to_string(),
        ),
        ("DCW__SERIES__QUIET_MS", "100".to_owned()),
        ("DCW__SERIES__MAX_DELAY_MS", "200".to_owned()),
    ];

    let checked = run_binary(&env, &vars, &["check-config"]).await;
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    assert!(!String::from_utf8_lossy(&checked.stdout).contains("warmer-secret"));

    let mut daemon = daemon_command(&env)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DCW__LOG__LEVEL", "warn")
        .spawn()
        .expect("start the daemon");
    wait_for("the group to drain over TLS", || {
        let mut admin = admin.clone();
        let stream_settings = env.settings.stream.clone();
        async move {
            backlog(&mut admin, &stream_settings)
                .await
                .ok()
                .flatten()
                .is_some_and(|b| b.is_drained())
        }
    })
    .await;
    for row in &dataset.rows {
        let key = keys::study_metadata(
            &TenantId::parse(&row.tenant_id).expect("tenant"),
            &Uid::parse(&row.study_uid).expect("uid"),
        );
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .expect("GET");
        assert!(value.is_some(), "{key} filled");
    }
    // The series were scheduled, claimed and tried under the limited user: the schedule empties.
    wait_for("the series schedule to be worked off", || {
        let mut admin = admin.clone();
        let due = keys::series_schedule(&env.settings.stream.group);
        async move {
            redis::cmd("ZCARD")
                .arg(&due)
                .query_async::<i64>(&mut admin)
                .await
                .is_ok_and(|n| n == 0)
        }
    })
    .await;
    let dead: i64 = redis::cmd("XLEN")
        .arg(&env.settings.stream.dead_letter_key)
        .query_async(&mut admin)
        .await
        .expect("XLEN");
    assert_eq!(dead, 0, "no command was refused to the limited user");
    assert_eq!(terminate(&mut daemon).await.code(), Some(0));

    // Without the CA file the certificate is not trusted; without a grant the table is not readable.
    let mut without_ca = vars.clone();
    without_ca.retain(|(k, _)| *k != "DCW__REDIS__CA_FILE");
    let refused = run_binary(&env, &without_ca, &["check-config"]).await;
    let printed = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success());
    assert!(
        printed.contains("redis: FAILED") && printed.to_lowercase().contains("certificate"),
        "{printed}"
    );

    // Recording builds (on by default) needs INSERT and UPDATE: check-config and the start
    // refuse without them, naming the grant and the key that turns recording off.
    sqlx::query(&format!(
        "REVOKE INSERT, UPDATE ON dicom_json_meta FROM {}",
        role.name
    ))
    .execute(&env.db)
    .await
    .expect("revoke");
    let refused = run_binary(&env, &vars, &["check-config"]).await;
    let printed = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success());
    let missing = format!(
        "series.record_status: FAILED: series.record_status: role {0} may not INSERT and UPDATE dicom_json_meta: GRANT INSERT, UPDATE ON dicom_json_meta TO {0}, or set series.record_status = false (DCW__SERIES__RECORD_STATUS=false)",
        role.name
    );
    assert!(printed.contains(&missing), "{printed}");
    let refused = run_binary(&env, &vars, &["run"]).await;
    let logged = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{logged}");
    assert!(
        logged.contains(&format!(
            "GRANT INSERT, UPDATE ON dicom_json_meta TO {}",
            role.name
        )),
        "{logged}"
    );

    sqlx::query(&format!(
        "REVOKE SELECT ON dicom_state_meta FROM {}",
        role.name
    ))
    .execute(&env.db)
    .await
    .expect("revoke");
    let refused = run_binary(&env, &vars, &["check-config"]).await;
    let printed = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success());
    assert!(
        printed.contains("postgres: FAILED") && printed.contains("permission denied"),
        "{printed}"
    );
}
