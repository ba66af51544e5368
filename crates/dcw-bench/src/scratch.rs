//! Scratch environments: a PostgreSQL database, Redis streams and tenant ids of one run
//! only, migrated before the run and removed after it, whatever happened.

use std::time::Duration;

use anyhow::Context;
use dicom_cache_warmer::{MIGRATOR, ServiceUrl, Settings, blocking_connection, lazy_pool};
use redis::aio::MultiplexedConnection;
use sqlx::migrate::MigrateDatabase;
use sqlx::{PgPool, Postgres};

/// A database, streams and tenant ids of this run only; `cleanup` removes them.
pub(crate) struct Scratch {
    /// The settings pointed at the scratch database and stream.
    pub(crate) settings: Settings,
    /// Scratch Redis keys start with this.
    pub(crate) key_prefix: String,
    /// Scratch tenant ids start with this.
    pub(crate) tenant_prefix: String,
}

impl Scratch {
    async fn create(mut settings: Settings) -> anyhow::Result<Self> {
        let id = format!(
            "{}{}",
            std::process::id(),
            chrono::Utc::now().timestamp() % 100_000
        );
        let mut url = url::Url::parse(settings.database.url.expose())?;
        url.set_path(&format!("dcw_bench_{id}"));
        settings.database.url = ServiceUrl::from(url.as_str());
        let key_prefix = format!("dcw-bench:{id}:");
        settings.stream.key = format!("{key_prefix}ingest");
        settings.stream.dead_letter_key = format!("{key_prefix}dead");
        settings.http.listen = "127.0.0.1:0".into();
        Postgres::create_database(settings.database.url.expose())
            .await
            .context("create the scratch database")?;
        let scratch = Self {
            settings,
            key_prefix,
            tenant_prefix: format!("bench{id}t"),
        };
        let pool = scratch.pool()?;
        let migrated = MIGRATOR.run(&pool).await;
        pool.close().await;
        if let Err(error) = migrated {
            scratch.cleanup().await;
            return Err(error).context("migrate the scratch database");
        }
        Ok(scratch)
    }

    /// A pool on the scratch database.
    pub(crate) fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(lazy_pool(&self.settings.database)?)
    }

    /// A connection to the Redis server of the scratch streams.
    pub(crate) async fn redis(&self) -> anyhow::Result<MultiplexedConnection> {
        Ok(blocking_connection(&self.settings.redis, Duration::ZERO).await?)
    }

    /// Drops the scratch database and deletes the scratch streams and keys.
    async fn cleanup(&self) {
        if let Err(error) = Postgres::force_drop_database(self.settings.database.url.expose()).await
        {
            eprintln!("could not drop the scratch database: {error}");
        }
        let Ok(mut con) = self.redis().await else {
            eprintln!("could not reach redis to delete the scratch keys");
            return;
        };
        for pattern in [
            format!("{}*", self.key_prefix),
            format!("*:{}*", self.tenant_prefix),
        ] {
            let mut doomed: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let Ok((next, found)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1_000)
                    .query_async(&mut con)
                    .await
                else {
                    break;
                };
                doomed.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            for chunk in doomed.chunks(1_000) {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(chunk).query_async(&mut con).await;
            }
        }
    }
}

/// Runs `body` on a fresh scratch environment and removes it afterwards, whatever happened.
pub(crate) async fn with_scratch<T>(
    settings: Settings,
    body: impl AsyncFnOnce(&Scratch) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let scratch = Scratch::create(settings).await?;
    let outcome = body(&scratch).await;
    scratch.cleanup().await;
    outcome
}

/// Gives the planner the statistics that autovacuum keeps on a live database. Without them
/// PostgreSQL may look studies up through `index_state_unique4patient` (tenant, patient,
/// study, series), scanning the tenant's whole index range for each study.
pub(crate) async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("ANALYZE dicom_state_meta")
        .execute(pool)
        .await
        .context("analyze dicom_state_meta")?;
    Ok(())
}
