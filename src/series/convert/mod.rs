//! DICOM JSON (PS3.18 Annex F) from Part-10 files, converted while they are read, in the
//! order the bytes flow: `instance` opens a file, `part10` reads up to its data set, `walk` reads
//! the data set token by token, `values` writes each value as JSON (`charset` decoding its
//! text), and `document` makes the instance's object and joins a series' objects.

use dicom_core::Tag;

mod binary;
mod charset;
pub mod document;
mod implicit_un;
pub mod instance;
mod part10;
mod values;
mod walk;

/// Why an instance could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum SeriesJsonError {
    /// The stream ends, or fails, before the data set.
    #[error("the preamble or the file meta group cannot be read")]
    Header(#[source] std::io::Error),
    /// The file meta group is not as PS3.10 7.1 lays it out.
    #[error("the file meta group {0}")]
    Meta(&'static str),
    /// The transfer syntax is unknown, or needs a codec this build does not have.
    #[error("transfer syntax {0:?} is not supported")]
    UnsupportedTransferSyntax(String),
    /// The data set cannot be parsed: malformed, or the stream failed.
    #[error("the data set cannot be read")]
    Read(#[from] dicom_parser::dataset::lazy_read::Error),
    /// A value cannot be read from the stream.
    #[error("a value cannot be read")]
    Value(#[from] dicom_parser::dataset::Error),
    /// A value is shorter than its header says: the stream ended inside it.
    #[error("the value of {tag} ends after {read} of its {len} bytes")]
    Truncated {
        /// The attribute.
        tag: Tag,
        /// Bytes present.
        read: u64,
        /// Bytes declared.
        len: u32,
    },
    /// Items or delimiters where the data set's structure does not allow them.
    #[error("unexpected {0} in the data set")]
    Structure(&'static str),
    /// The data set has no SOP Instance UID (0008,0018), or it is empty.
    #[error("the data set has no SOP Instance UID (0008,0018)")]
    MissingSopInstanceUid,
    /// A UID holds characters that cannot go into a BulkDataURI path unescaped.
    #[error("{attribute} {value:?} holds characters outside 0-9 A-Z a-z . _ -")]
    InvalidUid {
        /// Which UID: study, series or SOP instance.
        attribute: &'static str,
        /// The offending value.
        value: String,
    },
    /// serde_json failed to encode a string or a number.
    #[error("JSON encoding failed")]
    Encode(#[from] serde_json::Error),
}

/// What writing a part of the JSON, or checking a value, returns.
type WriteResult = Result<(), SeriesJsonError>;

#[cfg(test)]
mod test_support;
