//! The daemon's wiring: builds the pools, starts the side tasks (endpoint, monitor,
//! watchdog, series builder, JWKS refresher, outbox relay), runs the consumer, then waits
//! for them all.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::consumer::{self, Until};
use crate::fill::recheck::Rechecks;
use crate::fill::round::{self, Services};
use crate::observe::health::{Health, Service};
use crate::observe::telemetry::one_line;
use crate::observe::{http, metrics};
use crate::outbox::relay::Relay;
use crate::series::builder::{self, BuildOutcome, Builder};
use crate::series::rows;
use crate::{db, jwks, monitor, redis_conn};

/// Runs the daemon until `cancel` fires, then finishes the window in hand and returns.
pub async fn run(settings: Arc<Settings>, cancel: CancellationToken) -> anyhow::Result<()> {
    run_until(settings, cancel, Until::Cancelled).await
}

/// Runs the daemon until the stream has nothing new (or `cancel` fires), then stops every
/// task and returns: a drain for tests and one-off catch-ups.
pub async fn run_until_drained(
    settings: Arc<Settings>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    run_until(settings, cancel, Until::Drained).await
}

async fn run_until(
    settings: Arc<Settings>,
    cancel: CancellationToken,
    until: Until,
) -> anyhow::Result<()> {
    let redis = redis_conn::command_pool(&settings.redis).context("redis.url")?;
    let db = db::lazy_pool(&settings.database).context("database.url")?;
    let services = Services {
        rechecks: Rechecks::spawn(settings.clone(), redis.clone(), db.clone(), cancel.clone()),
        schedule: settings
            .series
            .roots()
            .map(|_| builder::schedule_of(&settings)),
        redis,
        db,
    };
    if settings.series.roots().is_some() && settings.series.record_status {
        refuse_without_grant(
            &settings,
            "series.record_status: could not check the grant on dicom_json_meta",
            db::run(&settings.database, &services.db, async |con| {
                rows::check_record_grant(con).await
            }),
        )
        .await?;
    }
    let mut relay = Relay::new(settings.clone(), services.redis.clone()).context("database.url")?;
    if let Some(relay) = &relay {
        refuse_without_grant(
            &settings,
            "outbox.enabled: could not check dcw_ingest_outbox and its grants",
            relay.check_grant(),
        )
        .await?;
    }
    // Built before any task starts: an unreadable jwks.ca_file fails the start.
    let jwks = jwks::Refresher::new(&settings.jwks, services.redis.clone())?;
    metrics::handle();
    metrics::register(
        "dcw_entries_dead_lettered_total",
        "reason",
        round::dead_letter_reasons(),
    );
    metrics::register(
        "dcw_connection_errors_total",
        "service",
        Service::ALL.map(Service::label),
    );
    metrics::register("dcw_series_builds_total", "result", BuildOutcome::LABELS);
    let health = Arc::new(Health::default());
    health.beat();
    let endpoint = http::bind(
        &settings.http.listen,
        health.clone(),
        (
            settings.liveness_max_silence(),
            settings.stream.stall_after(),
        ),
        cancel.clone(),
    )
    .await
    .with_context(|| format!("http.listen: cannot listen on {}", settings.http.listen))?;
    let endpoint = tokio::spawn(endpoint);
    let monitoring = tokio::spawn(monitor::run(
        settings.clone(),
        health.clone(),
        services.redis.clone(),
        services.db.clone(),
        cancel.clone(),
    ));
    tokio::spawn(monitor::watchdog(health.clone(), cancel.clone()));
    let builder = Builder::new(
        settings.clone(),
        services.db.clone(),
        services.redis.clone(),
    )
    .map(|builder| tokio::spawn(builder.run(cancel.clone())));
    let jwks = jwks.map(|refresher| tokio::spawn(refresher.run(health.clone(), cancel.clone())));
    if let Some(relay) = &mut relay
        && until == Until::Drained
    {
        // A drain covers what waits in the outbox now, not only what is in the stream.
        relay.relay_all(&cancel).await;
    }
    let relay = relay.map(|relay| tokio::spawn(relay.run(cancel.clone())));
    consumer::run(&services, &settings, &health, &cancel, until).await;
    // Drained: the side tasks stop as they would on a signal.
    cancel.cancel();
    // They all end on `cancel`; a panic in one is a bug worth exiting non-zero for.
    monitoring.await?;
    if let Some(builder) = builder {
        // Builds in hand finish and release their locks.
        builder.await?;
    }
    if let Some(jwks) = jwks {
        jwks.await?;
    }
    if let Some(relay) = relay {
        // A step in hand commits (or leaves its rows for the next relay).
        relay.await?;
    }
    endpoint.await?;
    db::close(&services.db).await;
    tracing::info!("stopped");
    Ok(())
}

/// Fails the start when the database answers that a grant (or table) the settings need
/// is missing; a database that fails or does not answer in time is left to the tasks,
/// which back off, and only `what` is logged.
async fn refuse_without_grant(
    settings: &Settings,
    what: &str,
    check: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let timeout = settings.database.connect_timeout();
    match tokio::time::timeout(timeout, check).await {
        Ok(Err(error)) if error.downcast_ref::<sqlx::Error>().is_none() => Err(error),
        Ok(Err(error)) => {
            tracing::warn!(error = %one_line(error.as_ref()), "{what}");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("{what}: the database did not answer in time");
            Ok(())
        }
        Ok(Ok(())) => Ok(()),
    }
}
