//! The one-shot subcommands: `migrate` and `check-config`.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::{Connection, PgConnection, Postgres};

use crate::config::Settings;
use crate::{db, redis_conn};

/// Creates the database when missing and applies `migrations/`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let url = settings.database.url.expose();
    let timeout = settings.database.connect_timeout();
    let exists = tokio::time::timeout(timeout, Postgres::database_exists(url))
        .await
        .context("connect to postgres: timed out")?
        .with_context(|| format!("connect to postgres at {}", settings.database.url))?;
    if !exists {
        Postgres::create_database(url)
            .await
            .context("create the database")?;
        tracing::info!(database = %settings.database.url, "created the database");
    }
    let mut con = connect_database(settings).await?;
    db::MIGRATOR
        .run(&mut con)
        .await
        .context("apply migrations")?;
    tracing::info!(database = %settings.database.url, "migrations applied");
    Ok(())
}

/// Prints the effective settings (secrets redacted) and tests both connections;
/// fails when either service cannot be used.
pub async fn check_config(settings: &Settings) -> anyhow::Result<()> {
    println!("{}", settings.to_redacted_toml());
    let redis = check_redis(settings).await;
    let database = check_database(settings).await;
    for (service, result) in [("redis", &redis), ("postgres", &database)] {
        match result {
            Ok(detail) => println!("{service}: ok ({detail})"),
            Err(error) => println!("{service}: FAILED: {error:#}"),
        }
    }
    anyhow::ensure!(
        redis.is_ok() && database.is_ok(),
        "a connection check failed"
    );
    Ok(())
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
    let mut con = connect_database(settings).await?;
    sqlx::query("SELECT 1 FROM dicom_state_meta LIMIT 1")
        .execute(&mut con)
        .await
        .context("read dicom_state_meta (run `dicom-cache-warmer migrate` on a new database)")?;
    Ok(format!(
        "{}, dicom_state_meta readable",
        settings.database.url
    ))
}

async fn connect_database(settings: &Settings) -> anyhow::Result<PgConnection> {
    let options = db::connect_options(&settings.database).context("database.url")?;
    tokio::time::timeout(
        settings.database.connect_timeout(),
        PgConnection::connect_with(&options),
    )
    .await
    .context("connect to postgres: timed out")?
    .with_context(|| format!("connect to {}", settings.database.url))
}
