//! PostgreSQL: the connection options, the lazy pool and the embedded migrations.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

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
