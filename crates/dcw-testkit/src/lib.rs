//! Test and benchmark data for `dicom-cache-warmer`: DICOM instance files made with
//! dicom-object (`fixtures`), and deterministic synthetic studies with their ingest events
//! (`synthetic`). A dev-dependency: never part of the daemon's build.

pub mod fixtures;
pub mod synthetic;
