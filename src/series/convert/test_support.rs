//! What the converter's unit tests share: sample data sets as Part-10 bytes or files, their
//! conversion, and a check of the F.2 structure at every level.

use std::path::{Path, PathBuf};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use serde_json::Value as Json;

use super::SeriesJsonError;
use super::document::{DocumentOptions, InstanceJson, instance_json};
use super::instance::read_instance;
use dcw_testkit::fixtures::{self, CtInstance};

const STUDY: &str = "1.2.826.0.1.3680043.8.498.10";
pub(super) const SERIES: &str = "1.2.826.0.1.3680043.8.498.20";
// Odd length, so the file pads it with a NUL that must not reach the JSON.
pub(super) const SOP: &str = "1.2.826.0.1.3680043.8.498.30.11";
pub(super) const BASE: &str = "https://pacs.example/dicomweb/";
pub(super) const PREFIX: &str = concat!(
    "https://pacs.example/dicomweb/studies/1.2.826.0.1.3680043.8.498.10",
    "/series/1.2.826.0.1.3680043.8.498.20",
    "/instances/1.2.826.0.1.3680043.8.498.30.11/bulkdata"
);

pub(super) fn ct(sop_uid: &str, instance_number: Option<i32>) -> CtInstance<'_> {
    CtInstance {
        study_uid: STUDY,
        series_uid: SERIES,
        sop_uid,
        instance_number,
        patient_name: fixtures::PATIENT_NAME,
    }
}

pub(super) fn opts(base: Option<&str>) -> DocumentOptions {
    DocumentOptions {
        bulkdata_base_url: base.map(str::to_owned),
        ..DocumentOptions::default()
    }
}

pub(super) fn write_fixture(dir: &Path, ct: &CtInstance<'_>) -> PathBuf {
    let path = dir.join(format!("{}.dcm", ct.sop_uid));
    fixtures::write_ct_instance(&path, ct).expect("write fixture");
    path
}

pub(super) fn convert(path: &Path, base: Option<&str>) -> InstanceJson {
    read_instance(path, STUDY, SERIES, &opts(base)).expect("read_instance")
}

/// The object as a Part-10 stream in transfer syntax `ts`.
pub(super) fn part10(obj: &InMemDicomObject, ts: &str) -> Vec<u8> {
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

pub(super) fn from_bytes(
    bytes: &[u8],
    base: Option<&str>,
) -> Result<InstanceJson, SeriesJsonError> {
    instance_json(bytes, STUDY, SERIES, &opts(base))
}

pub(super) fn explicit_le(obj: &InMemDicomObject) -> InstanceJson {
    from_bytes(&part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN), None).expect("instance_json")
}

pub(super) fn parse(bytes: &[u8]) -> Json {
    serde_json::from_slice(bytes).expect("valid JSON")
}

/// The fixture written to disk, read back up to the pixel data, as parsed JSON.
pub(super) fn fixture_json(base: Option<&str>) -> Json {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_fixture(dir.path(), &ct(SOP, Some(7)));
    parse(convert(&path, base).as_bytes())
}

pub(super) fn in_memory(elements: Vec<InMemElement>) -> InMemDicomObject {
    let mut obj = InMemDicomObject::from_element_iter(elements);
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(SOP),
    ));
    obj
}

pub(super) fn memory_json(elements: Vec<InMemElement>, base: Option<&str>) -> Json {
    let bytes = part10(&in_memory(elements), uids::EXPLICIT_VR_LITTLE_ENDIAN);
    parse(from_bytes(&bytes, base).expect("instance_json").as_bytes())
}

pub(super) fn element(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> InMemElement {
    DataElement::new(tag, vr, value.into())
}

/// An explicit VR little endian element: tag, VR, length and `value` (of even length).
pub(super) fn explicit(tag: Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut bytes = tag_bytes(tag, false);
    bytes.extend_from_slice(vr);
    if matches!(
        vr,
        b"OB" | b"OW" | b"OF" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR"
    ) {
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    bytes.extend_from_slice(value);
    bytes
}

/// An implicit VR little endian element.
pub(super) fn implicit(tag: Tag, value: &[u8]) -> Vec<u8> {
    let mut bytes = tag_bytes(tag, false);
    bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    bytes.extend_from_slice(value);
    bytes
}

/// The header of a sequence or item of undefined length, or a delimiter, in `vr` (none for
/// items and delimiters), little or big endian.
pub(super) fn undefined(tag: Tag, vr: Option<&[u8; 2]>, big_endian: bool) -> Vec<u8> {
    let mut bytes = tag_bytes(tag, big_endian);
    if let Some(vr) = vr {
        bytes.extend_from_slice(vr);
        bytes.extend_from_slice(&[0, 0]);
    }
    let len: u32 = if tag.group() == 0xFFFE && tag.element() != 0xE000 {
        0
    } else {
        u32::MAX
    };
    let len = if big_endian {
        len.to_be_bytes()
    } else {
        len.to_le_bytes()
    };
    bytes.extend_from_slice(&len);
    bytes
}

/// Item start, item end and sequence end.
pub(super) const ITEM: Tag = Tag(0xFFFE, 0xE000);
pub(super) const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
pub(super) const SEQUENCE_END: Tag = Tag(0xFFFE, 0xE0DD);

fn tag_bytes(tag: Tag, big_endian: bool) -> Vec<u8> {
    let (group, element) = (tag.group(), tag.element());
    if big_endian {
        [group.to_be_bytes(), element.to_be_bytes()].concat()
    } else {
        [group.to_le_bytes(), element.to_le_bytes()].concat()
    }
}

/// Part-10 bytes of the object in explicit VR little endian, with `more` elements after
/// its own (which end with the SOP Instance UID and whatever sorts before it).
pub(super) fn explicit_le_with(obj: &InMemDicomObject, more: &[&[u8]]) -> Vec<u8> {
    let mut bytes = part10(obj, uids::EXPLICIT_VR_LITTLE_ENDIAN);
    for element in more {
        bytes.extend_from_slice(element);
    }
    bytes
}

/// Checks F.2 structure at every level: keys, `vr`, at most one value field, no empty Value.
pub(super) fn assert_structure(object: &Json) {
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
