//! Opening an instance file and converting it, with errors that tell a missing file from
//! an unreadable one and from one that is not valid DICOM.

use std::error::Error as _;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use super::SeriesJsonError;
use super::document::{self, DocumentOptions, InstanceJson};

/// Why an instance file could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum InstanceFileError {
    /// No file at that path.
    #[error("instance file {} does not exist", path.display())]
    Missing {
        /// The path that was opened.
        path: PathBuf,
    },
    /// The file exists but the operating system would not let it be read.
    #[error("instance file {} could not be read", path.display())]
    Unreadable {
        /// The path that was opened.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid DICOM Part-10 file: garbage, truncated, unsupported, or
    /// without a usable SOP Instance UID.
    #[error("instance file {} is not a valid DICOM file", path.display())]
    Invalid {
        /// The path that was opened.
        path: PathBuf,
        /// What the conversion found wrong.
        #[source]
        source: Box<SeriesJsonError>,
    },
}

/// Reads a Part-10 file up to its pixel data (7FE0,0010) and converts its data set to the
/// instance's DICOM JSON object.
pub fn read_instance(
    path: &Path,
    study_uid: &str,
    series_uid: &str,
    opts: &DocumentOptions,
) -> Result<InstanceJson, InstanceFileError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => InstanceFileError::Missing {
            path: path.to_owned(),
        },
        _ => InstanceFileError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })?;
    document::instance_json(BufReader::new(file), study_uid, series_uid, opts)
        .map_err(|e| classify(path, e))
}

/// An I/O failure other than a short read is the disk's fault; anything else, including a
/// truncated file, is the file's.
fn classify(path: &Path, error: SeriesJsonError) -> InstanceFileError {
    let path = path.to_owned();
    let io_failure = std::iter::successors(error.source(), |&e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .find(|e| e.kind() != io::ErrorKind::UnexpectedEof);
    match io_failure {
        Some(io) => InstanceFileError::Unreadable {
            path,
            source: io::Error::new(io.kind(), io.to_string()),
        },
        None => InstanceFileError::Invalid {
            path,
            source: Box::new(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::series::convert::test_support::from_bytes;
    use dcw_testkit::fixtures::{self, CtInstance};

    const STUDY: &str = "1.2.3";
    const SERIES: &str = "1.2.3.4";

    fn read(path: &Path) -> Result<InstanceJson, InstanceFileError> {
        read_instance(path, STUDY, SERIES, &DocumentOptions::default())
    }

    fn write_fixture(dir: &Path) -> PathBuf {
        let path = dir.join("ct.dcm");
        let ct = CtInstance {
            study_uid: STUDY,
            series_uid: SERIES,
            sop_uid: "1.2.3.4.5",
            instance_number: Some(1),
            patient_name: fixtures::PATIENT_NAME,
        };
        fixtures::write_ct_instance(&path, &ct).expect("write fixture");
        path
    }

    /// Offset of the pixel data element header in a Part-10 file, found by its bytes.
    fn pixel_data_offset(bytes: &[u8]) -> usize {
        let header = [0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0];
        bytes
            .windows(header.len())
            .rposition(|w| w == header)
            .expect("pixel data header")
    }

    fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).expect("write bytes");
        path
    }

    #[test]
    fn converts_the_data_set_up_to_the_pixel_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_fixture(dir.path());
        let options = DocumentOptions {
            bulkdata_base_url: Some("https://pacs".into()),
            ..DocumentOptions::default()
        };
        let instance = read_instance(&path, STUDY, SERIES, &options).expect("read fixture");
        assert_eq!(instance.sop_instance_uid(), "1.2.3.4.5");
        assert_eq!(instance.instance_number(), Some(1));
        let json: serde_json::Value =
            serde_json::from_slice(instance.as_bytes()).expect("valid JSON");
        assert_eq!(json["00280010"]["Value"][0], 64, "Rows");
        assert_eq!(
            json["7FE00010"]["BulkDataURI"],
            "https://pacs/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/bulkdata/7FE00010",
            "pixel data by reference, never read"
        );
        assert!(
            json["00091002"]["BulkDataURI"].is_string(),
            "long OB skipped"
        );
    }

    #[test]
    fn missing_file_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.dcm");
        let err = read(&path).expect_err("no file");
        assert!(
            matches!(&err, InstanceFileError::Missing { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn directory_is_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read(dir.path()).expect_err("a directory");
        assert!(
            matches!(err, InstanceFileError::Unreadable { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_is_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A deterministic pseudo-random byte stream (xorshift), no extra dependency.
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        let mut magic_then_noise = vec![0; 128];
        magic_then_noise.extend_from_slice(b"DICM");
        magic_then_noise.extend_from_slice(&noise);
        let cases: [(&str, &[u8]); 5] = [
            ("empty", b""),
            ("text", b"this is not a DICOM file\n"),
            ("zeros", &[0; 1024]),
            ("noise", &noise),
            ("magic then noise", &magic_then_noise),
        ];
        for (name, bytes) in cases {
            let err = read(&write_bytes(dir.path(), name, bytes)).expect_err(name);
            assert!(
                matches!(err, InstanceFileError::Invalid { .. }),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains("not a valid DICOM file"), "{name}");
        }
    }

    #[test]
    fn truncated_files_fail_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = fs::read(write_fixture(dir.path())).expect("read fixture bytes");
        let pixel_data = pixel_data_offset(&bytes);
        // The file meta group ends where the first data set group (0008) starts.
        let meta_end = 132
            + bytes[132..]
                .windows(2)
                .position(|w| w == [0x08, 0x00])
                .expect("data set start");
        let mut invalid = 0;
        for cut in (0..pixel_data).chain([pixel_data + 4, pixel_data + 100]) {
            let path = write_bytes(dir.path(), "truncated.dcm", &bytes[..cut]);
            match read(&path) {
                Ok(instance) => {
                    assert!(
                        cut >= meta_end,
                        "cut at {cut} inside the meta group was accepted"
                    );
                    // Only a cut between elements can parse, and it loses what follows.
                    if cut < pixel_data {
                        let json = String::from_utf8_lossy(instance.as_bytes()).into_owned();
                        assert!(!json.contains("00281053"), "cut at {cut}: {json}");
                    }
                }
                Err(InstanceFileError::Invalid { .. }) => invalid += 1,
                Err(other) => panic!("cut at {cut}: unexpected {other:?}"),
            }
        }
        assert!(
            invalid > pixel_data / 2,
            "most cuts are invalid: {invalid} of {pixel_data}"
        );
    }

    #[test]
    fn a_length_beyond_the_end_of_file_is_invalid_and_never_allocated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = fs::read(write_fixture(dir.path())).expect("read fixture bytes");
        // About 4 GB, on a binary value (counted past) and on a text value (read as it comes):
        // neither is allocated up front, as dicom-object did.
        let headers: [&[u8]; 2] = [
            &[0x09, 0x00, 0x02, 0x10, b'O', b'B', 0, 0],
            &[0x10, 0x00, 0x20, 0x00, b'L', b'O'],
        ];
        for header in headers {
            let mut bytes = fixture.clone();
            let at = header.len()
                + bytes
                    .windows(header.len())
                    .position(|w| w == header)
                    .expect("element header");
            if header[4] == b'O' {
                bytes[at..at + 4].copy_from_slice(&0xF000_0000_u32.to_le_bytes());
            } else {
                // A short-form length (2 bytes), as LO has: turn the element into UT, whose
                // length has 4 bytes after 2 reserved ones, and keep the rest of the file.
                bytes[at - 2..at].copy_from_slice(b"UT");
                bytes.splice(at..at + 2, [0, 0, 0, 0, 0, 0xF0]);
            }
            let err = read(&write_bytes(dir.path(), "long.dcm", &bytes)).expect_err("corrupt");
            assert!(
                matches!(
                    &err,
                    InstanceFileError::Invalid { source, .. }
                        if matches!(**source, SeriesJsonError::Truncated { len: 0xF000_0000, .. })
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_file_meta_group_without_its_length_or_transfer_syntax_is_refused() {
        // No preamble: `DICM`, then (0002,0001) OB where the group length belongs.
        let mut no_length = b"DICM".to_vec();
        no_length.extend_from_slice(&[2, 0, 1, 0, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1]);
        let err = from_bytes(&no_length, None);
        assert!(
            matches!(err, Err(SeriesJsonError::Meta(m)) if m.contains("group length")),
            "{err:?}"
        );
        // A 12-byte group holding only (0002,0002) UI "1.2".
        let mut no_syntax = b"DICM".to_vec();
        no_syntax.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0, 12, 0, 0, 0]);
        no_syntax.extend_from_slice(&[2, 0, 2, 0, b'U', b'I', 4, 0, b'1', b'.', b'2', 0]);
        let err = from_bytes(&no_syntax, None);
        assert!(
            matches!(err, Err(SeriesJsonError::Meta(m)) if m.contains("Transfer Syntax")),
            "{err:?}"
        );
    }
}
