//! Reading one instance file up to its pixel data, with errors that tell a missing file
//! from an unreadable one and from one that is not valid DICOM.

use std::io;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions, ReadError};

/// Why an instance file could not be read.
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
    /// The file is not a valid DICOM Part-10 file: garbage, truncated or unsupported.
    #[error("instance file {} is not a valid DICOM file", path.display())]
    Invalid {
        /// The path that was opened.
        path: PathBuf,
        /// What the parser found wrong.
        #[source]
        source: Box<ReadError>,
    },
}

/// Reads a Part-10 file's meta group and data set, stopping before the pixel data (7FE0,0010).
pub fn read_instance(path: &Path) -> Result<DefaultDicomObject, InstanceFileError> {
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| classify(path, e))
}

fn classify(path: &Path, error: ReadError) -> InstanceFileError {
    let path = path.to_owned();
    match error {
        ReadError::OpenFile { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            InstanceFileError::Missing { path }
        }
        ReadError::OpenFile { source, .. } => InstanceFileError::Unreadable { path, source },
        // A short read means a truncated file, which is the file's fault, not the disk's.
        ReadError::ReadFile { source, .. } | ReadError::ReadPreambleBytes { source, .. }
            if source.kind() != io::ErrorKind::UnexpectedEof =>
        {
            InstanceFileError::Unreadable { path, source }
        }
        other => InstanceFileError::Invalid {
            path,
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use dicom_dictionary_std::uids;

    use super::*;
    use crate::fixtures::{self, CtInstance};

    fn write_fixture(dir: &Path) -> PathBuf {
        let path = dir.join("ct.dcm");
        let ct = CtInstance {
            study_uid: "1.2.3",
            series_uid: "1.2.3.4",
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
    fn reads_meta_and_data_set_but_not_pixel_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = read_instance(&write_fixture(dir.path())).expect("read fixture");
        assert_eq!(
            file.meta().transfer_syntax(),
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        assert!(file.get(tags::ROWS).is_some());
        assert!(
            file.get(tags::PIXEL_DATA).is_none(),
            "stopped before the pixel data"
        );
        assert!(file.get(fixtures::PRIVATE_LONG_OB_TAG).is_some());
    }

    #[test]
    fn missing_file_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.dcm");
        let err = read_instance(&path).expect_err("no file");
        assert!(
            matches!(&err, InstanceFileError::Missing { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn directory_is_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_instance(dir.path()).expect_err("a directory");
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
            let err = read_instance(&write_bytes(dir.path(), name, bytes)).expect_err(name);
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
            match read_instance(&path) {
                Ok(file) => {
                    assert!(
                        cut >= meta_end,
                        "cut at {cut} inside the meta group was accepted"
                    );
                    // Only a cut between elements can parse, and it loses what follows.
                    if cut < pixel_data {
                        assert!(file.get(tags::RESCALE_SLOPE).is_none(), "cut at {cut}");
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
    fn length_beyond_the_end_of_file_is_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = fs::read(write_fixture(dir.path())).expect("read fixture bytes");
        let header = [0x09, 0x00, 0x02, 0x10, b'O', b'B', 0, 0];
        let at = bytes
            .windows(header.len())
            .position(|w| w == header)
            .expect("long private OB header");
        // 16 MiB: past the end of the file, yet small enough to allocate in a test.
        bytes[at + 8..at + 12].copy_from_slice(&0x0100_0000_u32.to_le_bytes());
        let err = read_instance(&write_bytes(dir.path(), "long.dcm", &bytes)).expect_err("corrupt");
        assert!(matches!(err, InstanceFileError::Invalid { .. }), "{err:?}");
    }
}
