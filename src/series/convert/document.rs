//! DICOM JSON (PS3.18 Annex F) of one instance, written while its Part-10 stream is read
//! (up to the pixel data), and the series metadata document that joins them.
//!
//! BulkDataURIs are `{base}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}`,
//! where `{path}` is the tag (`7FE00010`), or for a nested attribute the enclosing sequence
//! tags and zero-based item indices, `00540016/0/00181078`. The walk writes the path after a
//! placeholder, filled in here once the SOP Instance UID is known.

use std::cmp::Ordering;
use std::io::BufRead;

use dicom_core::Tag;
use dicom_encoding::text::DecodeTextError;

use super::values::URI_PREFIX;
use super::{part10, walk};

/// Settings shared by every instance of a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentOptions {
    /// Base of the BulkDataURIs (for example `https://pacs/dicomweb`); `None` leaves
    /// bulk data out.
    pub bulkdata_base_url: Option<String>,
}

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
    /// A text value cannot be decoded in its character set.
    #[error("the text of {tag} cannot be decoded")]
    Text {
        /// The attribute.
        tag: Tag,
        /// The decoder's complaint.
        #[source]
        source: DecodeTextError,
    },
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
pub(super) type WriteResult = Result<(), SeriesJsonError>;

/// One instance's DICOM JSON object and the key that places it in the series document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceJson {
    instance_number: Option<i32>,
    sop_instance_uid: String,
    bytes: Vec<u8>,
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
    let (mut reader, ts) = part10::data_set_reader(source)?;
    let (out, top) = walk::write_data_set(&mut reader, ts, opts.bulkdata_base_url.is_some())?;
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
    Ok(InstanceJson {
        instance_number: top.instance_number,
        sop_instance_uid,
        bytes,
    })
}

/// Joins instances into the series document: a JSON array sorted by Instance Number
/// (missing last), then SOP Instance UID.
pub fn series_document(mut instances: Vec<InstanceJson>) -> Vec<u8> {
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
    use std::path::{Path, PathBuf};

    use dicom_core::value::{C, DataSetSequence, PixelFragmentSequence, PrimitiveValue};
    use dicom_core::{DataElement, dicom_value};
    use dicom_dictionary_std::uids;
    use dicom_json::DicomJson;
    use dicom_object::mem::InMemElement;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    use serde_json::{Value as Json, json};

    use dicom_core::{Tag, VR};
    use dicom_dictionary_std::tags;

    use super::*;
    use crate::series::convert::part10::read_instance;
    use crate::series::convert::walk::INLINE_BINARY_MAX_BYTES;
    use dcw_testkit::fixtures::{self, CtInstance};

    const STUDY: &str = "1.2.826.0.1.3680043.8.498.10";
    const SERIES: &str = "1.2.826.0.1.3680043.8.498.20";
    // Odd length, so the file pads it with a NUL that must not reach the JSON.
    const SOP: &str = "1.2.826.0.1.3680043.8.498.30.11";
    const BASE: &str = "https://pacs.example/dicomweb/";
    const PREFIX: &str = concat!(
        "https://pacs.example/dicomweb/studies/1.2.826.0.1.3680043.8.498.10",
        "/series/1.2.826.0.1.3680043.8.498.20",
        "/instances/1.2.826.0.1.3680043.8.498.30.11/bulkdata"
    );

    fn ct(sop_uid: &str, instance_number: Option<i32>) -> CtInstance<'_> {
        CtInstance {
            study_uid: STUDY,
            series_uid: SERIES,
            sop_uid,
            instance_number,
            patient_name: fixtures::PATIENT_NAME,
        }
    }

    fn opts(base: Option<&str>) -> DocumentOptions {
        DocumentOptions {
            bulkdata_base_url: base.map(str::to_owned),
        }
    }

    fn write_fixture(dir: &Path, ct: &CtInstance<'_>) -> PathBuf {
        let path = dir.join(format!("{}.dcm", ct.sop_uid));
        fixtures::write_ct_instance(&path, ct).expect("write fixture");
        path
    }

    fn convert(path: &Path, base: Option<&str>) -> InstanceJson {
        read_instance(path, STUDY, SERIES, &opts(base)).expect("read_instance")
    }

    /// The object as a Part-10 stream in transfer syntax `ts`.
    fn part10(obj: &InMemDicomObject, ts: &str) -> Vec<u8> {
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax(ts)
            .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(SOP)
            .build()
            .expect("file meta");
        // Exact: the meta group keeps its valid UID whatever the data set holds.
        let file = obj.clone().with_exact_meta(meta);
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).expect("write Part 10");
        bytes
    }

    fn from_bytes(bytes: &[u8], base: Option<&str>) -> Result<InstanceJson, SeriesJsonError> {
        instance_json(bytes, STUDY, SERIES, &opts(base))
    }

    fn explicit_le(obj: &InMemDicomObject) -> InstanceJson {
        from_bytes(&part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN), None).expect("instance_json")
    }

    fn parse(bytes: &[u8]) -> Json {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    /// The fixture written to disk, read back up to the pixel data, as parsed JSON.
    fn fixture_json(base: Option<&str>) -> Json {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_fixture(dir.path(), &ct(SOP, Some(7)));
        parse(convert(&path, base).as_bytes())
    }

    fn in_memory(elements: Vec<InMemElement>) -> InMemDicomObject {
        let mut obj = InMemDicomObject::from_element_iter(elements);
        obj.put(DataElement::new(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(SOP),
        ));
        obj
    }

    fn memory_json(elements: Vec<InMemElement>, base: Option<&str>) -> Json {
        let bytes = part10(&in_memory(elements), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        parse(from_bytes(&bytes, base).expect("instance_json").as_bytes())
    }

    fn element(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> InMemElement {
        DataElement::new(tag, vr, value.into())
    }

    /// Checks F.2 structure at every level: keys, `vr`, at most one value field, no empty Value.
    fn assert_structure(object: &Json) {
        let map = object.as_object().expect("an object");
        let keys: Vec<&String> = map.keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "keys in ascending order");
        for (key, attribute) in map {
            assert!(
                key.len() == 8
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
                "key {key} is 8 uppercase hex digits"
            );
            assert!(!key.starts_with("0002"), "no file meta attribute {key}");
            assert!(!key.ends_with("0000"), "no group length {key}");
            let attribute = attribute.as_object().expect("attribute object");
            assert!(attribute["vr"].is_string(), "{key} has a vr");
            let fields = ["Value", "InlineBinary", "BulkDataURI"]
                .iter()
                .filter(|f| attribute.contains_key(**f))
                .count();
            assert!(fields <= 1, "{key} has at most one value field");
            assert_eq!(attribute.len(), 1 + fields, "{key} has nothing else");
            if let Some(value) = attribute.get("Value") {
                let value = value.as_array().expect("Value is an array");
                assert!(!value.is_empty(), "{key} has no empty Value");
                if attribute["vr"] == "SQ" {
                    value.iter().for_each(assert_structure);
                }
            }
        }
    }

    #[test]
    fn json_maps_keep_document_order_in_tests() {
        // The key-order assertions rely on serde_json's `preserve_order` (which dicom-json
        // turns on); without it a sorted map would hide unsorted output.
        let map: Json = serde_json::from_str(r#"{"b":1,"a":2}"#).expect("json");
        let first = map.as_object().and_then(|m| m.keys().next().cloned());
        assert_eq!(first.as_deref(), Some("b"));
    }

    #[test]
    fn fixture_values_follow_f2_types() {
        assert_eq!(SOP.len() % 2, 1, "the SOP UID is NUL-padded in the file");
        let json = fixture_json(None);
        assert_structure(&json);
        // Binary numbers.
        assert_eq!(json["00280010"], json!({"vr": "US", "Value": [64]}));
        assert_eq!(json["00280100"], json!({"vr": "US", "Value": [16]}));
        assert_eq!(json["00280106"], json!({"vr": "SS", "Value": [-1024]}));
        assert_eq!(json["00189306"], json!({"vr": "FD", "Value": [0.625]}));
        // Textual numbers, padded and multi-valued.
        assert_eq!(json["00200011"], json!({"vr": "IS", "Value": [6]}));
        assert_eq!(json["00200013"], json!({"vr": "IS", "Value": [7]}));
        assert_eq!(json["00281052"], json!({"vr": "DS", "Value": [-1024]}));
        assert!(
            json["00281052"]["Value"][0].is_i64(),
            "padded DS is a number"
        );
        assert_eq!(json["00281053"], json!({"vr": "DS", "Value": [1]}));
        assert_eq!(json["00180050"], json!({"vr": "DS", "Value": [0.625]}));
        assert_eq!(json["00281050"], json!({"vr": "DS", "Value": [40, 400]}));
        assert_eq!(json["00281051"], json!({"vr": "DS", "Value": [400, 1500]}));
        assert_eq!(
            json["00200032"],
            json!({"vr": "DS", "Value": [-250, -250, -1145.125]})
        );
        assert_eq!(
            json["00200037"],
            json!({"vr": "DS", "Value": [1, 0, 0, 0, 1, 0]})
        );
        assert_eq!(
            json["00280030"],
            json!({"vr": "DS", "Value": [0.976562, 0.976562]})
        );
        // Strings, unformatted and unpadded.
        assert_eq!(
            json["00080008"],
            json!({"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]})
        );
        assert_eq!(json["00080020"], json!({"vr": "DA", "Value": ["20250807"]}));
        assert_eq!(
            json["00080030"],
            json!({"vr": "TM", "Value": ["094022.123456"]})
        );
        assert_eq!(json["00080018"], json!({"vr": "UI", "Value": [SOP]}));
        assert_eq!(
            json["00080005"],
            json!({"vr": "CS", "Value": ["ISO_IR 192"]})
        );
        // Person name groups.
        assert_eq!(
            json["00100010"],
            json!({"vr": "PN", "Value": [{
                "Alphabetic": "Yamada^Tarou",
                "Ideographic": "山田^太郎",
                "Phonetic": "やまだ^たろう"
            }]})
        );
    }

    #[test]
    fn fixture_empty_attributes_sequences_and_private_tags() {
        let json = fixture_json(None);
        assert_eq!(json["00080090"], json!({"vr": "PN"}), "empty PN");
        assert_eq!(json["00081030"], json!({"vr": "LO"}), "empty LO");
        assert_eq!(json["00081110"], json!({"vr": "SQ"}), "empty SQ");
        assert_eq!(
            json["00081140"],
            json!({"vr": "SQ", "Value": [{
                "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                "00081155": {"vr": "UI", "Value": ["1.2.3.4.5.6.7"]}
            }]})
        );
        assert_eq!(json["00090010"], json!({"vr": "LO", "Value": ["ACME 1.1"]}));
        assert_eq!(
            json["00091001"],
            json!({"vr": "OB", "InlineBinary": "AQIDBA=="})
        );
        let map = json.as_object().expect("object");
        assert!(
            !map.contains_key("00091002"),
            "long OB left out without a base URL"
        );
        assert!(
            !map.contains_key("7FE00010"),
            "pixel data left out without a base URL"
        );
        assert!(
            !map.keys().any(|k| k.starts_with("0002")),
            "no file meta group"
        );
    }

    #[test]
    fn fixture_bulk_data_uris_with_a_base_url() {
        let json = fixture_json(Some(BASE));
        assert_structure(&json);
        assert_eq!(
            json["00091002"],
            json!({"vr": "OB", "BulkDataURI": format!("{PREFIX}/00091002")})
        );
        assert_eq!(
            json["7FE00010"],
            json!({"vr": "OW", "BulkDataURI": format!("{PREFIX}/7FE00010")})
        );
        assert_eq!(
            json["00091001"],
            json!({"vr": "OB", "InlineBinary": "AQIDBA=="})
        );
        let last = json.as_object().and_then(|m| m.keys().next_back().cloned());
        assert_eq!(
            last.as_deref(),
            Some("7FE00010"),
            "pixel data in its sorted place"
        );
    }

    #[test]
    fn pixel_data_vr_follows_encoding_and_bits_allocated() {
        let image = |bits: u16| {
            in_memory(vec![
                element(tags::ROWS, VR::US, 8_u16),
                element(tags::BITS_ALLOCATED, VR::US, bits),
            ])
        };
        let vr = |obj: &InMemDicomObject, ts: &str| {
            let instance = from_bytes(&part10(obj, ts), Some(BASE)).expect("instance_json");
            parse(instance.as_bytes())["7FE00010"]["vr"].clone()
        };
        let native = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        assert_eq!(vr(&image(16), native), "OW");
        assert_eq!(vr(&image(16), uids::IMPLICIT_VR_LITTLE_ENDIAN), "OW");
        assert_eq!(vr(&image(8), native), "OB");
        assert_eq!(vr(&image(16), uids::JPEG2000), "OB", "encapsulated");
        let not_image = in_memory(vec![element(tags::MODALITY, VR::CS, "SR")]);
        assert_eq!(vr(&not_image, native), Json::Null, "no Rows, no pixel data");
    }

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
    fn text_is_split_trimmed_and_never_reformatted() {
        let json = memory_json(
            vec![
                element(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY "),
                element(tags::FRAME_OF_REFERENCE_UID, VR::UI, "1.2.3\0"),
                element(
                    tags::ADDITIONAL_PATIENT_HISTORY,
                    VR::LT,
                    "a\\b \"quoted\"\n  ",
                ),
                element(tags::PATIENT_ID, VR::LO, "A\\\\C"),
                element(tags::STUDY_ID, VR::SH, "  "),
                element(tags::STUDY_DATE, VR::DA, "20250807"),
                element(tags::INSTITUTION_NAME, VR::LO, "Clinic \u{1}\\ü"),
            ],
            None,
        );
        assert_structure(&json);
        assert_eq!(json["00080008"]["Value"], json!(["ORIGINAL", "PRIMARY"]));
        assert_eq!(json["00200052"]["Value"], json!(["1.2.3"]));
        assert_eq!(
            json["001021B0"]["Value"],
            json!(["a\\b \"quoted\"\n"]),
            "LT not split"
        );
        assert_eq!(json["00100020"]["Value"], json!(["A", null, "C"]));
        assert_eq!(
            json["00200010"],
            json!({"vr": "SH"}),
            "only padding is empty"
        );
        assert_eq!(json["00080020"]["Value"], json!(["20250807"]));
        assert_eq!(json["00080080"]["Value"], json!(["Clinic \u{1}", "ü"]));
    }

    #[test]
    fn textual_numbers_parse_or_stay_strings() {
        let json = memory_json(
            vec![
                element(tags::SERIES_NUMBER, VR::IS, " +12 "),
                element(tags::ACQUISITION_NUMBER, VR::IS, "1.5"),
                element(
                    tags::WINDOW_CENTER,
                    VR::DS,
                    "1e3\\abc\\ \\+2.50\\NaN\\1e999",
                ),
                element(tags::RESCALE_INTERCEPT, VR::DS, "-0.1"),
                element(tags::NUMBER_OF_FRAMES, VR::IS, "   "),
            ],
            None,
        );
        assert_eq!(json["00200011"]["Value"], json!([12]));
        assert_eq!(json["00200012"]["Value"], json!(["1.5"]));
        assert_eq!(
            json["00281050"]["Value"],
            json!([1000, "abc", null, 2.5, "NaN", "1e999"])
        );
        assert_eq!(json["00281052"]["Value"], json!([-0.1]));
        assert_eq!(json["00280008"], json!({"vr": "IS"}));
    }

    #[test]
    fn binary_numbers_are_numbers() {
        let obj = in_memory(vec![
            DataElement::new(
                tags::SINGLE_COLLIMATION_WIDTH,
                VR::FD,
                dicom_value!(F64, [f64::NAN, f64::INFINITY, 1.5, 2.0]),
            ),
            DataElement::new(
                tags::SPACING_BETWEEN_SLICES,
                VR::DS,
                dicom_value!(F64, [0.5]),
            ),
            DataElement::new(Tag(0x0018, 0x9089), VR::FD, PrimitiveValue::Empty),
            DataElement::new(
                tags::RECOMMENDED_DISPLAY_FRAME_RATE_IN_FLOAT,
                VR::FL,
                PrimitiveValue::from(0.1_f32),
            ),
            DataElement::new(
                tags::SIMPLE_FRAME_LIST,
                VR::UL,
                dicom_value!(U32, [1, 4_000_000_000]),
            ),
            DataElement::new(
                tags::REFERENCE_PIXEL_X0,
                VR::SL,
                PrimitiveValue::from(-7_i32),
            ),
            DataElement::new(
                tags::SELECTOR_SV_VALUE,
                VR::SV,
                dicom_value!(I64, [-1, i64::MIN]),
            ),
            DataElement::new(
                tags::SELECTOR_UV_VALUE,
                VR::UV,
                dicom_value!(U64, [u64::MAX]),
            ),
            DataElement::new(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from(5_i32)),
        ]);
        let instance = explicit_le(&obj);
        let big_endian = part10(&obj, "1.2.840.10008.1.2.2");
        assert_eq!(
            from_bytes(&big_endian, None)
                .expect("big endian")
                .as_bytes(),
            instance.as_bytes(),
            "the same values from a big-endian file"
        );
        let text = String::from_utf8(instance.as_bytes().to_vec()).expect("UTF-8");
        assert!(
            text.contains(r#""Value":[0.1]"#),
            "FL in its shortest f32 form: {text}"
        );
        let json = parse(instance.as_bytes());
        assert_eq!(json["00189306"]["Value"], json!([null, null, 1.5, 2]));
        assert_eq!(json["00180088"]["Value"], json!([0.5]));
        assert_eq!(json["00189089"], json!({"vr": "FD"}));
        assert_eq!(json["00081161"]["Value"], json!([1, 4_000_000_000_u32]));
        assert_eq!(json["00186020"]["Value"], json!([-7]));
        assert_eq!(
            json["00720082"]["Value"],
            json!([-1, "-9223372036854775808"])
        );
        assert_eq!(json["00720083"]["Value"], json!(["18446744073709551615"]));
        assert_eq!(json["00200011"]["Value"], json!([5]));
    }

    #[test]
    fn person_names_become_group_objects() {
        let json = memory_json(
            vec![
                element(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
                element(tags::PATIENT_NAME, VR::PN, "Doe^John"),
                element(
                    tags::PERFORMING_PHYSICIAN_NAME,
                    VR::PN,
                    "=山田^太郎\\A\\\\^^\\==x",
                ),
                element(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "=="),
                element(tags::NAME_OF_PHYSICIANS_READING_STUDY, VR::PN, "^^ "),
            ],
            None,
        );
        assert_eq!(
            json["00100010"]["Value"],
            json!([{"Alphabetic": "Doe^John"}])
        );
        assert_eq!(
            json["00081050"]["Value"],
            json!([{"Ideographic": "山田^太郎"}, {"Alphabetic": "A"}, null, null, {"Phonetic": "x"}])
        );
        assert_eq!(json["00080090"], json!({"vr": "PN"}));
        assert_eq!(json["00081060"], json!({"vr": "PN"}));
    }

    #[test]
    fn tags_sequences_and_exclusions() {
        let item = InMemDicomObject::from_element_iter([element(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            "1.2",
        )]);
        let json = memory_json(
            vec![
                DataElement::new(
                    tags::FRAME_INCREMENT_POINTER,
                    VR::AT,
                    dicom_value!(Tags, [tags::PIXEL_DATA, Tag(0x0018, 0x1063)]),
                ),
                DataElement::new(
                    tags::REFERENCED_IMAGE_SEQUENCE,
                    VR::SQ,
                    DataSetSequence::from(vec![InMemDicomObject::new_empty(), item]),
                ),
                element(Tag(0x0008, 0x0000), VR::UL, 100_u32),
                element(tags::TRANSFER_SYNTAX_UID, VR::UI, "1.2.840.10008.1.2.1"),
                DataElement::new(
                    tags::DATA_SET_TRAILING_PADDING,
                    VR::OB,
                    PrimitiveValue::U8(C::from_slice(&[0, 0])),
                ),
            ],
            None,
        );
        assert_structure(&json);
        assert_eq!(json["00280009"]["Value"], json!(["7FE00010", "00181063"]));
        assert_eq!(
            json["00081140"]["Value"],
            json!([{}, {"00081155": {"vr": "UI", "Value": ["1.2"]}}])
        );
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["00080018", "00081140", "00280009"]);
    }

    #[test]
    fn nested_binary_and_icon_pixels_get_path_uris() {
        let icon = InMemDicomObject::from_element_iter([
            element(tags::ROWS, VR::US, 2_u16),
            DataElement::new(tags::PIXEL_DATA, VR::OW, dicom_value!(U16, [1, 2, 3, 4])),
            DataElement::new(
                Tag(0x0029, 0x1010),
                VR::OB,
                PrimitiveValue::U8(C::from_vec(vec![7; 2000])),
            ),
            DataElement::new(Tag(0x0029, 0x1011), VR::OW, dicom_value!(U16, [0x0102])),
        ]);
        let elements = || {
            vec![DataElement::new(
                tags::ICON_IMAGE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![icon.clone()]),
            )]
        };
        let with = memory_json(elements(), Some(BASE));
        let item = &with["00880200"]["Value"][0];
        assert_eq!(
            item["7FE00010"],
            json!({"vr": "OW", "BulkDataURI": format!("{PREFIX}/00880200/0/7FE00010")})
        );
        assert_eq!(
            item["00291010"],
            json!({"vr": "OB", "BulkDataURI": format!("{PREFIX}/00880200/0/00291010")})
        );
        assert_eq!(
            item["00291011"],
            json!({"vr": "OW", "InlineBinary": "AgE="}),
            "little endian"
        );

        let without = memory_json(elements(), None);
        let item = without["00880200"]["Value"][0].as_object().expect("item");
        let keys: Vec<&String> = item.keys().collect();
        assert_eq!(keys, ["00280010", "00291011"]);
    }

    #[test]
    fn text_is_decoded_in_the_declared_character_set() {
        let json = memory_json(
            vec![
                element(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
                element(tags::INSTITUTION_NAME, VR::LO, "Zürich\\Genève"),
                element(tags::PATIENT_NAME, VR::PN, "Müller^Jürg"),
                element(tags::PATIENT_COMMENTS, VR::LT, "naïve\\text"),
            ],
            None,
        );
        assert_eq!(json["00080080"]["Value"], json!(["Zürich", "Genève"]));
        assert_eq!(
            json["00100010"]["Value"],
            json!([{"Alphabetic": "Müller^Jürg"}])
        );
        assert_eq!(json["00104000"]["Value"], json!(["naïve\\text"]));
    }

    #[test]
    fn us_or_ss_attributes_are_signed_with_signed_pixels_in_implicit_vr() {
        let obj = in_memory(vec![
            element(tags::PIXEL_REPRESENTATION, VR::US, 1_u16),
            element(tags::SMALLEST_IMAGE_PIXEL_VALUE, VR::SS, -5_i16),
        ]);
        for ts in [
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
        ] {
            let json = parse(
                from_bytes(&part10(&obj, ts), None)
                    .expect("converts")
                    .as_bytes(),
            );
            assert_eq!(json["00280106"], json!({"vr": "SS", "Value": [-5]}), "{ts}");
        }
    }

    #[test]
    fn encapsulated_pixel_data_in_an_item_is_skipped_to_the_next_attribute() {
        let icon = InMemDicomObject::from_element_iter([
            element(tags::ROWS, VR::US, 2_u16),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new(vec![0], vec![vec![1, 2, 3, 4]]),
            ),
        ]);
        let obj = in_memory(vec![
            DataElement::new(
                tags::ICON_IMAGE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![icon]),
            ),
            element(tags::ROWS, VR::US, 512_u16),
            DataElement::new(
                tags::PIXEL_DATA,
                VR::OB,
                PixelFragmentSequence::new(vec![0], vec![vec![9; 64]]),
            ),
        ]);
        let bytes = part10(&obj, uids::JPEG2000);
        let json = parse(from_bytes(&bytes, Some(BASE)).expect("converts").as_bytes());
        assert_structure(&json);
        let item = &json["00880200"]["Value"][0];
        assert_eq!(
            item["7FE00010"],
            json!({"vr": "OB", "BulkDataURI": format!("{PREFIX}/00880200/0/7FE00010")})
        );
        assert_eq!(
            json["00280010"]["Value"],
            json!([512]),
            "read on after the icon"
        );
        assert_eq!(
            json["7FE00010"],
            json!({"vr": "OB", "BulkDataURI": format!("{PREFIX}/7FE00010")})
        );
    }

    #[test]
    fn attributes_out_of_order_are_sorted_and_the_last_repeat_wins() {
        // Explicit VR little endian elements after the file's (0008,0018) and (0018,0088):
        // (0008,0016) UI "1.2", (0008,0018) UI "1.3" again, and an item whose (0008,1155)
        // precedes its (0008,1150).
        let obj = in_memory(vec![element(tags::SPACING_BETWEEN_SLICES, VR::DS, "2")]);
        let mut bytes = part10(&obj, uids::EXPLICIT_VR_LITTLE_ENDIAN);
        let ui = |element: u8, value: &[u8; 4]| {
            let mut bytes = vec![8, 0, element, 0x11, b'U', b'I', 4, 0];
            bytes.extend_from_slice(value);
            bytes
        };
        bytes.extend_from_slice(&[8, 0, 0x16, 0, b'U', b'I', 4, 0, b'1', b'.', b'2', 0]);
        bytes.extend_from_slice(&[8, 0, 0x18, 0, b'U', b'I', 4, 0, b'1', b'.', b'3', 0]);
        // (0008,1140) SQ of undefined length, one item of undefined length.
        bytes.extend_from_slice(&[8, 0, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        bytes.extend(ui(0x55, b"1.5\0"));
        bytes.extend(ui(0x50, b"1.4\0"));
        bytes.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let instance = from_bytes(&bytes, Some(BASE)).expect("converts");
        assert_eq!(
            instance.sop_instance_uid(),
            "1.3",
            "the last (0008,0018) wins"
        );
        let json = parse(instance.as_bytes());
        assert_structure(&json);
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["00080016", "00080018", "00081140", "00180088"]);
        assert_eq!(json["00080018"]["Value"], json!(["1.3"]));
        let item = json["00081140"]["Value"][0].as_object().expect("item");
        let keys: Vec<&String> = item.keys().collect();
        assert_eq!(keys, ["00081150", "00081155"]);
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

    #[test]
    fn inline_limit_is_inclusive() {
        let value = |len: usize| PrimitiveValue::U8(C::from_vec(vec![0; len]));
        let json = memory_json(
            vec![
                DataElement::new(Tag(0x0009, 0x1001), VR::OB, value(INLINE_BINARY_MAX_BYTES)),
                DataElement::new(
                    Tag(0x0009, 0x1002),
                    VR::UN,
                    value(INLINE_BINARY_MAX_BYTES + 1),
                ),
                DataElement::new(Tag(0x0009, 0x1003), VR::OB, PrimitiveValue::Empty),
            ],
            Some(BASE),
        );
        assert!(json["00091001"]["InlineBinary"].is_string());
        assert!(json["00091002"]["BulkDataURI"].is_string());
        assert_eq!(json["00091003"], json!({"vr": "OB"}));
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
