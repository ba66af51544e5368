//! The one-shot subcommands: `migrate` and `check-config` (`outbox install` and `uninstall`
//! live with the outbox).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

use crate::config::Settings;
use crate::observe::telemetry;
use crate::series::rows;
use crate::{db, outbox, redis_conn};

/// Creates the database when missing and applies `migrations/`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let mut con = match db::connect(&settings.database).await {
        Err(error) if is_missing_database(&error) => {
            create_database(settings).await?;
            db::connect(&settings.database).await?
        }
        other => other?,
    };
    db::MIGRATOR
        .run(&mut con)
        .await
        .context("apply migrations")?;
    tracing::info!(database = %settings.database.url, "migrations applied");
    Ok(())
}

/// PostgreSQL's "invalid_catalog_name": the database in the URL does not exist.
fn is_missing_database(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .and_then(|e| e.code())
        .is_some_and(|code| code == "3D000")
}

/// Creates the URL's database from the server's maintenance database `postgres`.
async fn create_database(settings: &Settings) -> anyhow::Result<()> {
    let options = db::connect_options(&settings.database).context("database.url")?;
    let name = options
        .get_database()
        .context("database.url names no database")?
        .to_owned();
    let mut maintenance = PgConnection::connect_with(&options.database("postgres"))
        .await
        .context("connect to the maintenance database `postgres` to create the database")?;
    // An identifier cannot be a bind parameter: quote it, doubling any quote inside.
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::raw_sql(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut maintenance)
        .await
        .with_context(|| format!("create database {quoted}"))?;
    tracing::info!(database = %settings.database.url, "created the database");
    Ok(())
}

/// Prints the effective settings (secrets redacted) and tests both connections;
/// fails when either service cannot be used.
pub async fn check_config(settings: &Settings) -> anyhow::Result<()> {
    println!("{}", settings.to_redacted_toml());
    let mut checks = vec![
        ("redis", check_redis(settings).await),
        ("postgres", check_database(settings).await),
    ];
    if let Some((dicom_root, json_root)) = settings.series.roots() {
        checks.push(("series.dicom_root", check_readable(dicom_root)));
        checks.push(("series.json_root", check_writable(json_root)));
        if settings.series.record_status {
            checks.push(("series.record_status", check_record_grant(settings).await));
        }
    }
    if settings.outbox.enabled {
        checks.push(("outbox.enabled", check_relay_grant(settings).await));
    }
    for (what, result) in &checks {
        match result {
            Ok(detail) => println!("{what}: ok ({detail})"),
            Err(error) => println!("{what}: FAILED: {}", telemetry::one_line(error.as_ref())),
        }
    }
    anyhow::ensure!(checks.iter().all(|(_, r)| r.is_ok()), "a check failed");
    Ok(())
}

fn check_readable(root: &Path) -> anyhow::Result<String> {
    let entries = std::fs::read_dir(root).with_context(|| format!("list {}", root.display()))?;
    Ok(format!(
        "{} readable, {} entries",
        root.display(),
        entries.count()
    ))
}

/// Creates and removes a probe file, as publishing a document does.
fn check_writable(root: &Path) -> anyhow::Result<String> {
    let probe = root.join(format!(".dcw-check-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("create a file in {}", root.display()))?;
    std::fs::remove_file(&probe).with_context(|| format!("remove {}", probe.display()))?;
    Ok(format!("{} writable", root.display()))
}

async fn check_redis(settings: &Settings) -> anyhow::Result<String> {
    let mut con = redis_conn::blocking_connection(&settings.redis, Duration::ZERO)
        .await
        .with_context(|| format!("connect to {}", settings.redis.url))?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("unknown version");
    Ok(format!("{} {version}", settings.redis.url))
}

async fn check_database(settings: &Settings) -> anyhow::Result<String> {
    let mut con = db::connect(&settings.database).await?;
    db::run_on(&settings.database, &mut con, async |con| {
        sqlx::query("SELECT 1 FROM dicom_state_meta LIMIT 1")
            .persistent(false)
            .execute(con)
            .await
    })
    .await
    .context("read dicom_state_meta (run `dicom-cache-warmer migrate` on a new database)")?;
    Ok(format!(
        "{}, dicom_state_meta readable",
        settings.database.url
    ))
}

async fn check_record_grant(settings: &Settings) -> anyhow::Result<String> {
    let mut con = db::connect(&settings.database).await?;
    db::run_on(&settings.database, &mut con, async |con| {
        rows::check_record_grant(con).await
    })
    .await?;
    Ok("dicom_json_meta writable".into())
}

async fn check_relay_grant(settings: &Settings) -> anyhow::Result<String> {
    let mut con = db::connect(&settings.database).await?;
    outbox::check_relay_grant(&mut con).await?;
    Ok("dcw_ingest_outbox can be relayed".into())
}
