//! `outbox install` and `outbox uninstall`: the outbox's table, trigger functions and
//! triggers in the server's database (the SQL beside this file), each applied in one
//! transaction once the catalog says the role may.

use anyhow::anyhow;
use sqlx::{Connection, PgConnection};

use crate::config::Settings;
use crate::db;

/// The table, the trigger functions and the triggers.
const INSTALL_SQL: &str = include_str!("install.sql");
/// Their removal.
const UNINSTALL_SQL: &str = include_str!("uninstall.sql");
/// How long the DDL waits for the server's tables: a lock request queued behind a long
/// transaction would hold up every write of the server behind it.
const LOCK_TIMEOUT: &str = "5s";

/// What the connected role may do to the tables involved, as the catalog says.
#[derive(Debug, sqlx::FromRow)]
struct Standing {
    role: String,
    database: String,
    /// Where the outbox is created: the first schema of the search path that exists.
    schema: Option<String>,
    /// Whether the role owns (or is a member of the owner of) each table; `None` when the
    /// table does not exist.
    owns_state: Option<bool>,
    owns_image: Option<bool>,
    owns_outbox: Option<bool>,
    may_create: Option<bool>,
}

impl Standing {
    async fn read(con: &mut PgConnection) -> Result<Self, sqlx::Error> {
        sqlx::query_as(
            "SELECT current_user::text AS role, current_database()::text AS database,
                    current_schema()::text AS schema,
                    (SELECT pg_has_role(relowner, 'USAGE') FROM pg_class
                      WHERE oid = to_regclass('dicom_state_meta')) AS owns_state,
                    (SELECT pg_has_role(relowner, 'USAGE') FROM pg_class
                      WHERE oid = to_regclass('dicom_image_meta')) AS owns_image,
                    (SELECT pg_has_role(relowner, 'USAGE') FROM pg_class
                      WHERE oid = to_regclass(quote_ident(current_schema()) || '.dcw_ingest_outbox'))
                      AS owns_outbox,
                    has_schema_privilege(current_schema(), 'CREATE') AS may_create",
        )
        .fetch_one(con)
        .await
    }

    /// Refuses, naming the privilege, when the role may not change `table`'s triggers.
    fn check_owner(&self, command: &str, table: &str, owns: Option<bool>) -> anyhow::Result<()> {
        let role = &self.role;
        match owns {
            None => Err(anyhow!(
                "{command}: there is no table {table} in database {} for role {role} (search_path): \
                 run it on the server's database",
                self.database
            )),
            Some(false) => Err(anyhow!(
                "{command}: role {role} may not {} triggers on {table}: it must own the table (or be \
                 a superuser); run it as the table's owner",
                verb(command, "create")
            )),
            Some(true) => Ok(()),
        }
    }

    /// Refuses, naming the privilege, when the role may not create or replace the outbox.
    fn check_outbox(&self, command: &str) -> anyhow::Result<()> {
        let role = &self.role;
        let Some(schema) = &self.schema else {
            return Err(anyhow!(
                "{command}: no schema of role {role}'s search_path exists in database {}",
                self.database
            ));
        };
        match (self.owns_outbox, self.may_create) {
            (Some(false), _) => Err(anyhow!(
                "{command}: role {role} may not {} {schema}.dcw_ingest_outbox: it must own the \
                 table (or be a superuser); run it as the role that installed the outbox",
                verb(command, "replace")
            )),
            (None, Some(false) | None) => Err(anyhow!(
                "{command}: role {role} may not create tables in schema {schema}: it needs CREATE on \
                 the schema (GRANT CREATE ON SCHEMA {schema} TO {role}); run it as the owner of the \
                 server's tables"
            )),
            _ => Ok(()),
        }
    }
}

/// What `command` does to an object: drop it, or `making` it.
fn verb<'a>(command: &str, making: &'a str) -> &'a str {
    if command.ends_with("uninstall") {
        "drop"
    } else {
        making
    }
}

/// Creates (or replaces) the outbox, its trigger functions and its triggers in the
/// database of `database.url`; returns what to tell the operator.
pub async fn install(settings: &Settings) -> anyhow::Result<String> {
    const COMMAND: &str = "outbox install";
    let mut con = db::connect(&settings.database).await?;
    let standing = Standing::read(&mut con).await?;
    standing.check_owner(COMMAND, "dicom_state_meta", standing.owns_state)?;
    standing.check_owner(COMMAND, "dicom_image_meta", standing.owns_image)?;
    standing.check_outbox(COMMAND)?;
    apply(&mut con, INSTALL_SQL)
        .await
        .map_err(|error| explain(COMMAND, &standing.role, error))?;
    let schema = standing.schema.unwrap_or_default();
    Ok(format!(
        "outbox installed in database {database}, schema {schema}: table dcw_ingest_outbox; \
         triggers on dicom_state_meta (insert, update, delete) and dicom_image_meta (insert, \
         update).\nThe daemon's role needs: GRANT SELECT, DELETE, UPDATE (id) ON \
         {schema}.dcw_ingest_outbox TO <role>; then set outbox.enabled = true \
         (DCW__OUTBOX__ENABLED=true).",
        database = standing.database,
    ))
}

/// Removes the triggers, their functions and the outbox (with any rows still waiting);
/// returns what to tell the operator.
pub async fn uninstall(settings: &Settings) -> anyhow::Result<String> {
    const COMMAND: &str = "outbox uninstall";
    let mut con = db::connect(&settings.database).await?;
    let standing = Standing::read(&mut con).await?;
    for (table, owns) in [
        ("dicom_state_meta", standing.owns_state),
        ("dicom_image_meta", standing.owns_image),
    ] {
        // A missing table has no trigger to drop.
        if owns.is_some() {
            standing.check_owner(COMMAND, table, owns)?;
        }
    }
    if standing.owns_outbox == Some(false) {
        standing.check_outbox(COMMAND)?;
    }
    let waiting: i64 = if standing.owns_outbox.is_some() {
        sqlx::query_scalar("SELECT count(*) FROM dcw_ingest_outbox")
            .fetch_one(&mut con)
            .await?
    } else {
        0
    };
    apply(&mut con, UNINSTALL_SQL)
        .await
        .map_err(|error| explain(COMMAND, &standing.role, error))?;
    Ok(format!(
        "outbox uninstalled from database {}: triggers, functions and table dcw_ingest_outbox \
         removed ({waiting} rows were waiting to be relayed).",
        standing.database
    ))
}

/// Runs `sql` in one transaction, waiting at most [`LOCK_TIMEOUT`] for each lock.
async fn apply(con: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    let mut tx = con.begin().await?;
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('client_min_messages', 'warning', true)",
    )
    .bind(LOCK_TIMEOUT)
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(sql).execute(&mut *tx).await?;
    tx.commit().await
}

/// The reason a refused change gives, naming the privilege or the lock it lacked.
fn explain(command: &str, role: &str, error: sqlx::Error) -> anyhow::Error {
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned());
    match code.as_deref() {
        // insufficient_privilege
        Some("42501") => anyhow!(
            "{command}: role {role} lacks a privilege ({}): run it as the owner of \
             dicom_state_meta, dicom_image_meta and the outbox (the role that installed it), or \
             as a superuser; nothing was changed",
            error
                .as_database_error()
                .map(|e| e.message())
                .unwrap_or_default()
        ),
        // lock_not_available
        Some("55P03") => anyhow!(
            "{command}: the tables stayed locked by other sessions for {LOCK_TIMEOUT} (the \
             server writing, or a long transaction); nothing was changed: try again"
        ),
        _ => anyhow::Error::new(error).context(format!("{command}: nothing was changed")),
    }
}
