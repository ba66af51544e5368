//! `dicom-cache-warmer` keeps a DICOMweb server's Redis cache warm from ingest events.
//!
//! The modules, in the order an entry travels through them:
//!
//! ```text
//! config (sections, load, validate, secret) ─▶ app (pools, tasks) ─▶ consumer (the loop)
//!   outbox:  server's write ─▶ trigger row (install) ─▶ relay (table: XADD, then DELETE) ─▶ stream
//!   ingest:  reader ─▶ stream (XREADGROUP, XAUTOCLAIM; bounded, reply) ─▶ event (validated ids)
//!            ─▶ window (by study)
//!   fill:    round (plan ─▶ query ─▶ study JSON ─▶ cache script, one write round trip)
//!            ─▶ stream XACK / dead letters ─▶ recheck (negative flags, a second look)
//!   series:  schedule ─▶ builder (lock, rows) ─▶ files (atomic publish)
//!            convert: instance ─▶ part10 ─▶ walk ─▶ values ─▶ document
//! jwks:    check ─▶ fetch ─▶ refresher      monitor (probes, watchdog)      warm (backfill)
//! observe: metrics (a leaf), health, http endpoint, telemetry
//! shared:  ids, keys, backoff, shutdown, db (pool, connections), redis_conn (connections),
//!          lua (scripts by hash)
//! ```

// Shared vocabulary: the ids every key and path is built from, and the keys themselves.
pub mod ids;
pub mod keys;

mod backoff;
mod lua;
mod shutdown;

// Setting up: configuration, connections, what the daemon shows of itself.
mod config;
mod db;
mod observe;
mod redis_conn;

// Where the events come from when the server publishes none: the outbox and its relay.
mod outbox;

// The data flow.
mod fill;
mod ingest;
mod series;

// Side tasks.
mod jwks;
mod monitor;

// The daemon and the other commands.
mod app;
mod commands;
mod consumer;
mod warm;

// What `main`, the tests and the benchmarks use.
pub use app::{run, run_until_drained};
pub use commands::{check_config, migrate};
pub use config::{JwksSettings, RedisSettings, ServiceUrl, Settings, StreamSettings};
pub use db::{MIGRATOR, connect_options, lazy_pool};
pub use fill::cache::add_fill_study;
pub use fill::study::{DicomStateMeta, by_study, encode as encode_study};
pub use ingest::event::{Field, IngestEvent, parse as parse_event};
pub use ingest::stream::{Backlog, ReadMode, ack, backlog, ensure_group, read_new};
pub use jwks::{Cached, FetchError, MAX_DOCUMENT_BYTES, MAX_REDIRECTS, Outcome, Refresher};
pub use keys::JWKS as JWKS_KEY;
pub use observe::metrics::handle as metrics_handle;
pub use observe::telemetry::{init as init_logging, one_line};
pub use outbox::install::{install as install_outbox, uninstall as uninstall_outbox};
pub use redis_conn::{blocking_connection, command_pool, connection_info};
pub use series::convert::document::{
    DocumentOptions, InstanceJson, instance_json, series_document,
};
pub use series::convert::instance::read_instance;
pub use series::files::document_path;
pub use series::lock::SeriesLock;
pub use shutdown::{FORCED_EXIT_CODE, on_signals};
pub use warm::{WarmArgs, WarmSummary, run as warm};
