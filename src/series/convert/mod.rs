//! DICOM JSON (PS3.18 F.2) from Part 10 files, converted while they are read.

pub mod document;
pub mod part10;
