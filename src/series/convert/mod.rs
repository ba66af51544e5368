//! DICOM JSON (PS3.18 Annex F) from Part-10 files, converted while they are read, in the
//! order the bytes flow: `part10` opens a file and reads up to its data set, `walk` reads
//! the data set token by token, `values` writes each value as JSON, and `document` makes
//! the instance's object and joins a series' objects.

pub mod document;
pub mod part10;
mod values;
mod walk;

#[cfg(test)]
mod test_support;
