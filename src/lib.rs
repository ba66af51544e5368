//! `dicom-cache-warmer` keeps a DICOMweb server's Redis cache warm from ingest events.
//!
//! The data flow, one module per step:
//!
//! ```text
//! stream entry ──stream──▶ raw fields ──event──▶ IngestEvent (validated ids)
//!     ──pipeline──▶ batch coalesced by (tenant, study)
//!     ──db──▶ DicomStateMeta rows (one query per batch)
//!     ──study──▶ study metadata JSON ──cache──▶ Redis (one pipelined round trip)
//!     ──stream──▶ XACK (one per batch)
//! ```
//!
//! `app` runs that loop until `shutdown` cancels it; `config` and `telemetry` set it up.

pub mod app;
pub mod backoff;
pub mod cache;
pub mod commands;
pub mod config;
pub mod db;
pub mod event;
pub mod fixtures;
pub mod health;
pub mod http;
pub mod ids;
pub mod instance_file;
pub mod jwks;
pub mod keys;
pub mod lock;
pub mod metrics;
pub mod monitor;
pub mod pipeline;
pub mod recheck;
pub mod redis_conn;
pub mod refresh;
pub mod schedule;
pub mod series_builder;
pub mod series_json;
pub mod shutdown;
pub mod stream;
pub mod study;
pub mod synthetic;
pub mod telemetry;
pub mod warm;
pub mod window;
