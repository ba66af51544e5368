//! Where binary values go in DICOM JSON (PS3.18 F.2.6, F.2.7): inline as base64, by
//! reference as a BulkDataURI, or left out.
//!
//! With a bulk data base URL, binary values (OB OD OF OL OV OW UN) of at most
//! [`INLINE_BINARY_MAX_BYTES`] bytes are `InlineBinary` and larger ones a `BulkDataURI`.
//! Without one (the server has no bulk data route), values up to the configured limit
//! are inline and larger ones left out, logged and counted. Pixel data
//! (7FE0,0008/0009/0010) is never inlined: a BulkDataURI, or left out without a base URL.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

// 1 KiB keeps the small vendor blobs (a few bytes to a few hundred) inline, so a viewer
// needs no extra round trip for them, while every multi-KB value (Siemens CSA headers of
// 5-20 KB, overlays, LUTs, icon images) goes out by reference: base64 of 1 KiB is 1,368
// bytes, already about 15% of a typical CT instance object (9-11 KB), once per slice.
/// Largest binary value, in bytes, written inline as base64 (`InlineBinary`) when the
/// document has a bulk data base URL.
const INLINE_BINARY_MAX_BYTES: usize = 1024;

/// Where binary values go: by reference (a bulk data base URL is configured), and the
/// largest written inline, in bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Binaries {
    /// Whether BulkDataURIs are wanted.
    pub(super) bulk: bool,
    /// Without BulkDataURIs, the largest value written inline; larger ones are left out.
    pub(super) inline_max: usize,
}

/// What becomes of an attribute's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// Written as read: `InlineBinary` for a binary VR.
    Value,
    /// A `BulkDataURI`.
    Reference,
    /// Pixel data without a base URL: left out, as documented.
    Omitted,
    /// Over the inline limit without a base URL: left out, logged and counted.
    TooLarge,
}

impl Binaries {
    /// Where the value of `tag`, `len` bytes of `vr`, goes.
    pub(super) fn place(&self, tag: Tag, vr: VR, len: u32) -> Placement {
        if !is_binary(vr) {
            return Placement::Value;
        }
        let inline_max = if self.bulk {
            INLINE_BINARY_MAX_BYTES
        } else {
            self.inline_max
        };
        match (is_pixel_data(tag) || len as usize > inline_max, self.bulk) {
            (false, _) => Placement::Value,
            (true, true) => Placement::Reference,
            (true, false) if is_pixel_data(tag) => Placement::Omitted,
            (true, false) => Placement::TooLarge,
        }
    }
}

/// The VR of a pixel data BulkDataURI: OW for native pixels of more than 8 bits, else OB.
pub(super) fn pixel_data_vr(encapsulated: bool, wide_pixels: bool) -> VR {
    if !encapsulated && wide_pixels {
        VR::OW
    } else {
        VR::OB
    }
}

fn is_binary(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    )
}

fn is_pixel_data(tag: Tag) -> bool {
    tag == tags::PIXEL_DATA || tag == tags::FLOAT_PIXEL_DATA || tag == tags::DOUBLE_FLOAT_PIXEL_DATA
}

#[cfg(test)]
mod tests {
    use dicom_core::value::{C, DataSetSequence, PrimitiveValue};
    use dicom_core::{DataElement, dicom_value};
    use dicom_dictionary_std::uids;
    use dicom_object::InMemDicomObject;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::series::convert::document::{DocumentOptions, instance_json};
    use crate::series::convert::test_support::{
        BASE, PREFIX, SERIES, assert_structure, element, fixture_json, from_bytes, in_memory,
        memory_json, parse, part10,
    };
    use crate::series::convert::walk::LeftOut;

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
                element(tags::ROWS, VR::US, 1_u16),
                element(tags::BITS_ALLOCATED, VR::US, bits),
                DataElement::new(tags::PIXEL_DATA, VR::OB, dicom_value!(U8, [0, 0])),
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
        // MR spectroscopy: Rows, and its data in (5600,0020), but no pixel data.
        let spectroscopy = in_memory(vec![
            element(tags::ROWS, VR::US, 1_u16),
            DataElement::new(tags::SPECTROSCOPY_DATA, VR::OF, dicom_value!(F32, [1.0])),
        ]);
        assert_eq!(
            vr(&spectroscopy, native),
            Json::Null,
            "no pixel data, no URI"
        );
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
        assert_eq!(keys, ["00280010", "00291010", "00291011"], "no pixel data");
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
    fn without_a_base_url_binaries_are_inline_up_to_the_limit_then_left_out() {
        let value = |len: usize| PrimitiveValue::U8(C::from_vec(vec![7; len]));
        let obj = in_memory(vec![
            DataElement::new(Tag(0x0009, 0x1001), VR::OB, value(2000)),
            DataElement::new(Tag(0x0029, 0x1010), VR::OB, value(2001)),
            element(tags::ROWS, VR::US, 1_u16),
            DataElement::new(tags::PIXEL_DATA, VR::OB, value(2)),
        ]);
        let options = DocumentOptions {
            inline_binary_max_bytes: 2000,
            ..DocumentOptions::default()
        };
        let bytes = part10(&obj, uids::EXPLICIT_VR_LITTLE_ENDIAN);
        let instance = instance_json(&bytes[..], "1.2", SERIES, &options).expect("converts");
        let json = parse(instance.as_bytes());
        assert_eq!(
            json["00091001"]["InlineBinary"].as_str().map(str::len),
            Some(2000 / 3 * 4 + 4),
            "a CSA-header-sized value, inline"
        );
        let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["00080018", "00091001", "00280010"]);
        assert_eq!(
            instance.left_out(),
            [LeftOut::TooLarge(Tag(0x0029, 0x1010))],
            "pixel data is not counted"
        );
        // The default limit keeps the 2001 bytes too.
        let json = memory_json(
            vec![DataElement::new(Tag(0x0029, 0x1010), VR::OB, value(2001))],
            None,
        );
        assert!(json["00291010"]["InlineBinary"].is_string());
    }
}
