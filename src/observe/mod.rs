//! What the daemon shows of itself: metrics, health, the HTTP endpoint, and logs.

pub mod health;
pub mod http;
pub mod metrics;
pub mod telemetry;
