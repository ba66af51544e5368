//! Test and benchmark data for `dicom-cache-warmer`: DICOM instance files made with
//! dicom-object (`fixtures`), deterministic synthetic studies with their ingest events
//! (`synthetic`), and their rows written as the server writes them (`server_writes`). A
//! dev-dependency: never part of the daemon's build.

pub mod fixtures;
pub mod server_writes;
pub mod synthetic;
