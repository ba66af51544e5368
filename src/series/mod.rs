//! Series documents: the pending-series schedule, the `json_generating` lock, the builder
//! (task loop and locked build), the storage layout with atomic publication, the series
//! queries, and the DICOM JSON converter.

pub mod builder;
pub mod convert;
pub mod files;
pub mod lock;
pub mod rows;
pub mod schedule;
