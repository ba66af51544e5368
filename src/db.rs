//! PostgreSQL: the connection options, the lazy pool, one-off connections, the one way every
//! query runs (under the server's statement timeout and a client-side deadline) and the
//! embedded migrations.
//!
//! Every query is prepared unnamed (`.persistent(false)`): a statement prepared under a name
//! lives on one server connection, and a transaction-pooling PgBouncer (before 1.21, or
//! without `max_prepared_statements`) gives the next transaction another one. An unnamed
//! statement is prepared in the transaction that runs it, for one more round trip per query.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use crate::config::{DatabaseSettings, StatementTimeoutVia};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How PgBouncer, in its default configuration, refuses a startup parameter it does not track
/// (`options`, and sqlx's `extra_float_digits`).
const PGBOUNCER_REFUSAL: &str = "unsupported startup parameter";

/// Connection options from the settings; with `statement_timeout_via = "startup"`, they carry
/// the server-side statement timeout.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options =
        PgConnectOptions::from_str(settings.url.expose())?.application_name("dicom-cache-warmer");
    let options = match settings.statement_timeout_via {
        StatementTimeoutVia::Startup => options.options([(
            "statement_timeout",
            format!("{}ms", settings.statement_timeout_ms),
        )]),
        // PgBouncer also refuses sqlx's `extra_float_digits` startup parameter unless told to
        // ignore it; it only shapes floats in text results, and ours are binary.
        StatementTimeoutVia::Transaction => options.extra_float_digits(None),
    };
    Ok(match &settings.password {
        Some(password) => options.password(password.expose()),
        None => options,
    })
}

/// A pool of up to `database.max_connections` that connects on first use, so an unreachable
/// database never stops start-up.
pub fn lazy_pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    lazy_pool_of(settings, settings.max_connections)
}

/// A pool of up to `max_connections` that connects on first use.
pub fn lazy_pool_of(
    settings: &DatabaseSettings,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(settings.connect_timeout())
        .idle_timeout(settings.idle_timeout())
        .connect_lazy_with(connect_options(settings)?))
}

/// How long closing a pool at the end may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Closes `pool`'s connections, waiting at most a second: sqlx waits for every connection to
/// come back, and one stranded in a black hole comes back only when the kernel gives up on
/// it. The exit closes what is left.
pub async fn close(pool: &PgPool) {
    if tokio::time::timeout(CLOSE_TIMEOUT, pool.close())
        .await
        .is_err()
    {
        tracing::debug!("PostgreSQL connections left to the exit: one did not come back in time");
    }
}

/// A connection from the pool whose work may be cut short: dropped before
/// [`InFlight::finished`], it is closed (within sqlx's 5 s) rather than given back. Given back,
/// sqlx first reads whatever the cut query left unread, with no deadline: a connection lost in
/// a black hole would hold its place in the pool until the kernel gives up on it, a quarter of
/// an hour later, and a few of them would starve the pool.
pub struct InFlight(Option<PoolConnection<Postgres>>);

impl InFlight {
    /// A connection from `pool`, within `database.connect_timeout_ms`.
    pub async fn acquire(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self(Some(pool.acquire().await.map_err(explain)?)))
    }

    /// The connection, to run the work on.
    pub fn connection(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("a connection until finished")
    }

    /// The work ended (in success or in error): the connection goes back to the pool.
    pub fn finished(mut self) {
        self.0.take();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(mut con) = self.0.take() {
            con.close_on_drop();
        }
    }
}

/// Runs `query` on a connection from `pool`, under the statement timeout and within the
/// client deadline (see [`run_on`]).
pub async fn run<T, E>(
    settings: &DatabaseSettings,
    pool: &PgPool,
    query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    bounded(settings, async {
        let mut con = InFlight::acquire(pool).await?;
        let value = with_statement_timeout(settings, con.connection(), query).await;
        con.finished();
        value
    })
    .await
}

/// Runs `query` on `con` under the server's statement timeout, within
/// `settings.query_deadline()`: a connection that stops answering without closing (a black
/// hole) then fails the query, rather than holding it until the kernel gives up on the
/// connection a quarter of an hour later. The server's statement timeout never reaches a
/// query lost on the way.
pub async fn run_on<T, E>(
    settings: &DatabaseSettings,
    con: &mut PgConnection,
    query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    bounded(settings, with_statement_timeout(settings, con, query)).await
}

/// With `statement_timeout_via = "transaction"`, one simple-query message opens the
/// transaction and sets the timeout for it alone (one round trip), and COMMIT closes it (one
/// more); the setting never outlives the transaction, so nothing leaks to the pooler's other
/// clients. A query that fails leaves the transaction to sqlx, which rolls it back before the
/// connection is used again.
async fn with_statement_timeout<T, E>(
    settings: &DatabaseSettings,
    con: &mut PgConnection,
    query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    match settings.statement_timeout_via {
        StatementTimeoutVia::Startup => query(con).await,
        StatementTimeoutVia::Transaction => {
            let mut tx = con.begin_with(begin_with_timeout(settings)).await?;
            let value = query(&mut tx).await?;
            tx.commit().await?;
            Ok(value)
        }
    }
}

/// A transaction on `con`, under the statement timeout (set for this transaction alone with
/// `statement_timeout_via = "transaction"`), that the server ends by itself once it has
/// waited on the client for `idle_limit` (`idle_in_transaction_session_timeout`). The caller
/// bounds it with a deadline of its own, as it holds the transaction across other work.
///
/// A client lost in a black hole never ends its transaction: without the limit, its row
/// locks would be held until the server's TCP keepalive gave up on it, over two hours on
/// Linux' defaults (sqlx cannot set keepalive on the client's side).
pub async fn begin<'c>(
    settings: &DatabaseSettings,
    con: &'c mut PgConnection,
    idle_limit: Duration,
) -> Result<Transaction<'c, Postgres>, sqlx::Error> {
    let limit = format!(
        "SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
        idle_limit.as_millis()
    );
    let begin = match settings.statement_timeout_via {
        StatementTimeoutVia::Startup => format!("BEGIN; {limit}"),
        StatementTimeoutVia::Transaction => format!("{}; {limit}", begin_with_timeout(settings)),
    };
    con.begin_with(begin).await
}

/// One simple-query message that opens a transaction and sets the timeout for it alone.
fn begin_with_timeout(settings: &DatabaseSettings) -> String {
    format!(
        "BEGIN; SET LOCAL statement_timeout = '{}ms'",
        settings.statement_timeout_ms
    )
}

async fn bounded<T, E>(
    settings: &DatabaseSettings,
    query: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    let deadline = settings.query_deadline();
    tokio::time::timeout(deadline, query)
        .await
        .unwrap_or_else(|_| Err(no_answer(deadline).into()))
}

/// The error of a query that got no answer within `deadline`.
pub fn no_answer(deadline: Duration) -> sqlx::Error {
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
    .map_err(explain)
    .with_context(|| format!("connect to {}", settings.url))
}

/// `error`, naming the setting to change when it is PgBouncer refusing a startup parameter.
pub fn explain(error: sqlx::Error) -> sqlx::Error {
    match error.as_database_error() {
        Some(refusal) if refusal.message().starts_with(PGBOUNCER_REFUSAL) => {
            sqlx::Error::Configuration(
                format!(
                    "{}: behind PgBouncer, set database.statement_timeout_via = \"transaction\" \
                     (DCW__DATABASE__STATEMENT_TIMEOUT_VIA=transaction)",
                    refusal.message()
                )
                .into(),
            )
        }
        _ => error,
    }
}
