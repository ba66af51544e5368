//! DICOM JSON (PS3.18 Annex F) of one instance, written while its Part-10 stream is read
//! (up to the pixel data), and the series metadata document that joins them.
//!
//! BulkDataURIs are `{base}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}`,
//! where `{path}` is the tag (`7FE00010`), or for a nested attribute the enclosing sequence
//! tags and zero-based item indices, `00540016/0/00181078`. The walk writes the path after a
//! placeholder, filled in here once the SOP Instance UID is known.

use std::cmp::Ordering;
use std::io::BufRead;

use super::binary::Binaries;
use super::values::URI_PREFIX;
use super::walk::LeftOut;
use super::{SeriesJsonError, part10, walk};
use crate::observe::metrics::{self, Counter};

/// Settings shared by every instance of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentOptions {
    /// Base of the BulkDataURIs (for example `https://pacs/dicomweb`); `None` leaves
    /// pixel data out and writes other binary values inline.
    pub bulkdata_base_url: Option<String>,
    /// Without a base URL, the largest binary value written inline, in bytes; larger
    /// ones are left out.
    pub inline_binary_max_bytes: usize,
}

impl Default for DocumentOptions {
    /// No BulkDataURIs; binary values up to 64 KiB inline.
    fn default() -> Self {
        Self {
            bulkdata_base_url: None,
            inline_binary_max_bytes: 65_536,
        }
    }
}

/// One instance's DICOM JSON object and the key that places it in the series document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceJson {
    instance_number: Option<i32>,
    sop_instance_uid: String,
    bytes: Vec<u8>,
    /// What was left out, with the series named for the log (none in the common case).
    left_out: Option<Box<(String, Vec<LeftOut>)>>,
}

impl InstanceJson {
    /// Instance Number (0020,0013), when present and an integer.
    pub fn instance_number(&self) -> Option<i32> {
        self.instance_number
    }

    /// SOP Instance UID (0008,0018), padding removed.
    pub fn sop_instance_uid(&self) -> &str {
        &self.sop_instance_uid
    }

    /// The JSON object, compact UTF-8.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// What the conversion left out.
    #[cfg(test)]
    pub(super) fn left_out(&self) -> Vec<LeftOut> {
        self.left_out
            .as_ref()
            .map(|b| b.1.clone())
            .unwrap_or_default()
    }

    /// The JSON object, taken out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads a Part-10 stream (128-byte preamble optional, then `DICM` and the file meta group)
/// up to its pixel data and converts the data set to its DICOM JSON object.
pub fn instance_json<R: BufRead>(
    source: R,
    study_uid: &str,
    series_uid: &str,
    opts: &DocumentOptions,
) -> Result<InstanceJson, SeriesJsonError> {
    check_uid("Study Instance UID", study_uid)?;
    check_uid("Series Instance UID", series_uid)?;
    let (mut reader, ts, un) = part10::data_set_reader(source)?;
    let binaries = Binaries {
        bulk: opts.bulkdata_base_url.is_some(),
        inline_max: opts.inline_binary_max_bytes,
    };
    let (out, top) = walk::write_data_set(&mut reader, ts, un, binaries)?;
    let sop_instance_uid = top
        .sop_instance_uid
        .filter(|s| !s.is_empty())
        .ok_or(SeriesJsonError::MissingSopInstanceUid)?;
    check_uid("SOP Instance UID", &sop_instance_uid)?;
    let bytes = match &opts.bulkdata_base_url {
        Some(base) => {
            let prefix = format!(
                "{}/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/bulkdata",
                base.trim_end_matches('/')
            );
            fill_uri_prefixes(&out, &json_string_body(&prefix)?)
        }
        None => out,
    };
    let left_out =
        (!top.left_out.is_empty()).then(|| Box::new((series_uid.to_owned(), top.left_out)));
    Ok(InstanceJson {
        instance_number: top.instance_number,
        sop_instance_uid,
        bytes,
        left_out,
    })
}

/// Joins instances into the series document: a JSON array sorted by Instance Number
/// (missing last), then SOP Instance UID. What the instances left out is logged here, once
/// for the series, and counted.
pub fn series_document(mut instances: Vec<InstanceJson>) -> Vec<u8> {
    report_left_out(&instances);
    instances.sort_by(|a, b| {
        let by_number = match (a.instance_number, b.instance_number) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_number.then_with(|| a.sop_instance_uid.cmp(&b.sop_instance_uid))
    });
    let len = instances.iter().map(|i| i.bytes.len() + 1).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, instance) in instances.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&instance.bytes);
    }
    out.push(b']');
    out
}

/// Warns once for the series about the attributes its instances left out, naming each tag
/// once, and counts them.
fn report_left_out(instances: &[InstanceJson]) {
    let mut series_uid = None;
    let (mut too_large, mut too_deep) = (Vec::new(), Vec::new());
    let (mut large_count, mut deep_count) = (0, 0);
    for (uid, left_out) in instances.iter().filter_map(|i| i.left_out.as_deref()) {
        series_uid = Some(uid.as_str());
        for item in left_out {
            let (tags, count, tag) = match *item {
                LeftOut::TooLarge(tag) => (&mut too_large, &mut large_count, tag),
                LeftOut::TooDeep(tag) => (&mut too_deep, &mut deep_count, tag),
            };
            *count += 1;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
    }
    let Some(series_uid) = series_uid else {
        return;
    };
    let names = |tags: &[dicom_core::Tag]| {
        tags.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    if large_count > 0 {
        metrics::add(Counter::SeriesBinariesLeftOut, large_count);
        tracing::warn!(
            series_uid,
            values = large_count,
            tags = %names(&too_large),
            "binary values over series.inline_binary_max_bytes left out of the series document (no series.bulkdata_base_url)"
        );
    }
    if deep_count > 0 {
        metrics::add(Counter::SeriesSequencesTooDeep, deep_count);
        tracing::warn!(
            series_uid,
            sequences = deep_count,
            tags = %names(&too_deep),
            max_depth = walk::MAX_DEPTH,
            "sequences nested too deep left out of the series document"
        );
    }
}

fn check_uid(attribute: &'static str, value: &str) -> Result<(), SeriesJsonError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SeriesJsonError::InvalidUid {
            attribute,
            value: value.to_owned(),
        })
    }
}

/// `text` as the inside of a JSON string literal (escaped, without the quotes).
fn json_string_body(text: &str) -> Result<Vec<u8>, SeriesJsonError> {
    let mut quoted = serde_json::to_vec(text)?;
    quoted.pop();
    quoted.remove(0);
    Ok(quoted)
}

/// `out` with every [`URI_PREFIX`] replaced by `prefix`.
fn fill_uri_prefixes(out: &[u8], prefix: &[u8]) -> Vec<u8> {
    let mut filled = Vec::with_capacity(out.len() + 8 * prefix.len());
    for (i, part) in out.split(|&b| b == URI_PREFIX).enumerate() {
        if i > 0 {
            filled.extend_from_slice(prefix);
        }
        filled.extend_from_slice(part);
    }
    filled
}

#[cfg(test)]
mod tests {
    use dicom_core::VR;
    use dicom_dictionary_std::{tags, uids};
    use dicom_json::DicomJson;
    use dicom_object::InMemDicomObject;

    use super::*;
    use crate::series::convert::test_support::{
        BASE, SERIES, convert, ct, element, explicit_le, from_bytes, in_memory, opts, parse,
        part10, write_fixture,
    };
    use dcw_testkit::fixtures;

    #[test]
    fn document_parses_back_and_is_sorted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("1.2.3.3", Some(3)),
            ("1.2.3.1", Some(1)),
            ("1.2.3.0", None),
            ("1.2.3.2", Some(2)),
        ];
        let instances: Vec<InstanceJson> = cases
            .iter()
            .map(|(sop, number)| {
                let path = write_fixture(dir.path(), &ct(sop, *number));
                convert(&path, Some(BASE))
            })
            .collect();
        let document = series_document(instances);

        let objects: Vec<DicomJson<InMemDicomObject>> =
            serde_json::from_slice(&document).expect("dicom-json parses the document");
        let objects: Vec<InMemDicomObject> =
            objects.into_iter().map(DicomJson::into_inner).collect();
        assert_eq!(objects.len(), 4);
        let uids: Vec<String> = objects
            .iter()
            .map(|o| {
                o.get(tags::SOP_INSTANCE_UID)
                    .and_then(|e| e.value().primitive())
                    .map(|v| v.to_str().into_owned())
                    .expect("SOP Instance UID")
            })
            .collect();
        assert_eq!(uids, ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.0"]);
        let first = &objects[0];
        let name = first
            .get(tags::PATIENT_NAME)
            .and_then(|e| e.value().primitive());
        assert_eq!(
            name.map(|v| v.to_str().into_owned()).as_deref(),
            Some(fixtures::PATIENT_NAME)
        );
        let rows = first.get(tags::ROWS).and_then(|e| e.value().primitive());
        assert_eq!(rows.and_then(|v| v.to_int::<u16>().ok()), Some(64));
    }

    #[test]
    fn series_document_orders_by_number_then_uid() {
        let instance = |sop: &str, number: Option<&str>| {
            let mut obj =
                InMemDicomObject::from_element_iter([element(tags::SOP_INSTANCE_UID, VR::UI, sop)]);
            if let Some(number) = number {
                obj.put(element(tags::INSTANCE_NUMBER, VR::IS, number));
            }
            explicit_le(&obj)
        };
        let document = series_document(vec![
            instance("9.9", None),
            instance("1.5", Some("10")),
            instance("1.4", Some(" 2 ")),
            instance("1.3", Some("10")),
            instance("1.1", None),
            instance("1.2", Some("not a number")),
        ]);
        let uids: Vec<String> = parse(&document)
            .as_array()
            .expect("array")
            .iter()
            .map(|o| {
                o["00080018"]["Value"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(uids, ["1.4", "1.3", "1.5", "1.1", "1.2", "9.9"]);
        assert_eq!(series_document(Vec::new()), b"[]");
    }

    #[test]
    fn missing_or_unsafe_uids_are_errors() {
        let no_sop = InMemDicomObject::from_element_iter([element(tags::ROWS, VR::US, 1_u16)]);
        let err = from_bytes(&part10(&no_sop, uids::EXPLICIT_VR_LITTLE_ENDIAN), None);
        assert!(
            matches!(err, Err(SeriesJsonError::MissingSopInstanceUid)),
            "{err:?}"
        );

        let blank_sop =
            InMemDicomObject::from_element_iter([element(tags::SOP_INSTANCE_UID, VR::UI, " \0")]);
        let err = from_bytes(&part10(&blank_sop, uids::EXPLICIT_VR_LITTLE_ENDIAN), None);
        assert!(
            matches!(err, Err(SeriesJsonError::MissingSopInstanceUid)),
            "{err:?}"
        );

        let bad_sop = InMemDicomObject::from_element_iter([element(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            "1.2/../3",
        )]);
        let err = from_bytes(&part10(&bad_sop, uids::EXPLICIT_VR_LITTLE_ENDIAN), None);
        assert!(
            matches!(
                err,
                Err(SeriesJsonError::InvalidUid {
                    attribute: "SOP Instance UID",
                    ..
                })
            ),
            "{err:?}"
        );

        let bytes = part10(&in_memory(Vec::new()), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        let err = instance_json(&bytes[..], "1.2 3", SERIES, &opts(None));
        assert!(
            matches!(err, Err(SeriesJsonError::InvalidUid { .. })),
            "{err:?}"
        );
    }
}
