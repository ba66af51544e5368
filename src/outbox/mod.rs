//! The publisher for an unchanged server: a transactional outbox in its database, relayed
//! to the ingest stream.
//!
//! # The outbox in brief
//!
//! The server writes `dicom_state_meta` and `dicom_image_meta` and publishes nothing to
//! Redis. `outbox install` adds a table, `dcw_ingest_outbox`, and statement-level triggers
//! on those two tables that add, in the same transaction as the server's write, one row
//! per (tenant, study, series) the statement changed, and `NOTIFY dcw_ingest_outbox`. A row
//! exists exactly when the write it stands for committed.
//!
//! With `outbox.enabled`, the relay takes the oldest rows (`FOR UPDATE SKIP LOCKED`, so
//! replicas take different rows), `XADD`s one event per row to `stream.key`, and only then
//! deletes them and commits: a crash between the two publishes the rows again (at least
//! once; an event only says "read this study again", so a duplicate is harmless).
//!
//! - `install`: the `outbox install` and `outbox uninstall` commands and their privilege
//!   checks; the SQL itself is in `install.sql` and `uninstall.sql`.
//! - `table`: the relay's queries: take a batch, delete it, measure what waits.
//! - `relay`: the side task: notifications, polling, steps, backoff, metrics.

pub mod install;
pub mod relay;
mod table;

pub use table::check_relay_grant;
