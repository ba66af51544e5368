//! PostgreSQL: the connection options, the lazy pool, one-off connections, the client-side
//! deadline of every query and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::config::DatabaseSettings;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options from the settings, with the server-side statement timeout.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose())?
        .application_name("dicom-cache-warmer")
        .options([(
            "statement_timeout",
            format!("{}ms", settings.statement_timeout_ms),
        )]);
    Ok(match &settings.password {
        Some(password) => options.password(password.expose()),
        None => options,
    })
}

/// A pool that connects on first use, so an unreachable database never stops start-up.
pub fn lazy_pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout())
        .connect_lazy_with(connect_options(settings)?))
}

/// Runs `query` within `settings.query_deadline()`: a connection that stops answering
/// without closing (a black hole) then fails the query, rather than holding it until the
/// kernel gives up on the connection a quarter of an hour later. The server's statement
/// timeout never reaches a query lost on the way.
pub async fn bounded<T>(
    settings: &DatabaseSettings,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let deadline = settings.query_deadline();
    tokio::time::timeout(deadline, query)
        .await
        .unwrap_or_else(|_| Err(no_answer(deadline)))
}

fn no_answer(deadline: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("PostgreSQL did not answer within {deadline:?}"),
    ))
}

/// One connection for a command, within `database.connect_timeout_ms`; the error names
/// the URL (its password redacted).
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgConnection> {
    let options = connect_options(settings).context("database.url")?;
    tokio::time::timeout(
        settings.connect_timeout(),
        PgConnection::connect_with(&options),
    )
    .await
    .context("connect to postgres: timed out")?
    .with_context(|| format!("connect to {}", settings.url))
}
