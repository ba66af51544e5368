//! The HTTP endpoint: `/healthz` (liveness), `/readyz` (readiness), `/metrics` (Prometheus).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::observe::health::Health;
use crate::observe::metrics;

#[derive(Clone)]
struct Endpoint {
    health: Arc<Health>,
    max_silence: Duration,
    stall_after: Duration,
}

/// Binds `listen` (failing at once when it cannot) and serves until `cancel` fires.
pub async fn bind(
    listen: &str,
    health: Arc<Health>,
    (max_silence, stall_after): (Duration, Duration),
    cancel: CancellationToken,
) -> std::io::Result<impl Future<Output = ()> + use<>> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Endpoint {
            health,
            max_silence,
            stall_after,
        });
    Ok(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP endpoint failed");
        }
    })
}

async fn healthz(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint.health.is_live(endpoint.max_silence) {
        (StatusCode::OK, "live\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "main loop made no progress\n",
        )
    }
}

async fn readyz(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    match endpoint.health.readiness(endpoint.stall_after) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn render_metrics() -> (StatusCode, String) {
    match metrics::render() {
        Some(text) => (StatusCode::OK, text),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".into(),
        ),
    }
}
