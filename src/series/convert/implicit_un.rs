//! Undefined-length UN elements (PS3.5 6.2.2): their value is a sequence encoded in
//! implicit VR little endian whatever the transfer syntax, up to its sequence delimiter.
//! The header decoder here reads in the transfer syntax and switches to implicit VR little
//! endian inside such an element; dicom-parser's reader then reports it as a sequence.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use dicom_core::Tag;
use dicom_core::VR;
use dicom_core::header::{DataElementHeader, SequenceItemHeader};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_encoding::decode::implicit_le::ImplicitVRLittleEndianDecoder;
use dicom_encoding::decode::{DecodeFrom, Result};
use dicom_encoding::transfer_syntax::DynDecoder;

const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);

/// How deep the reader is inside undefined-length UN elements: 0 outside, else 1 plus the
/// undefined-length sequences opened inside, which each end with a sequence delimiter.
#[derive(Debug, Clone, Default)]
pub(super) struct UnDepth(Rc<Cell<u32>>);

impl UnDepth {
    /// Whether the last header read is inside an undefined-length UN element, so that its
    /// value is little endian.
    pub(super) fn inside(&self) -> bool {
        self.0.get() > 0
    }
}

/// Decodes headers in the transfer syntax, and in implicit VR little endian inside
/// undefined-length UN elements.
pub(super) struct HeaderDecoder<R> {
    outer: DynDecoder<R>,
    implicit: ImplicitVRLittleEndianDecoder<StandardDataDictionary>,
    depth: UnDepth,
}

impl<R> HeaderDecoder<R> {
    /// A decoder that reads with `outer` outside UN elements and reports its depth to
    /// `depth`.
    pub(super) fn new(outer: DynDecoder<R>, depth: UnDepth) -> Self {
        Self {
            outer,
            implicit: ImplicitVRLittleEndianDecoder::default(),
            depth,
        }
    }

    fn current(&self) -> &dyn DecodeFrom<R>
    where
        R: Read,
    {
        if self.depth.inside() {
            &self.implicit
        } else {
            &*self.outer
        }
    }
}

impl<R: Read> DecodeFrom<R> for HeaderDecoder<R> {
    fn decode_header(&self, source: &mut R) -> Result<(DataElementHeader, usize)> {
        let inside = self.depth.inside();
        let (header, read) = self.current().decode_header(source)?;
        let depth = &self.depth.0;
        if header.tag == SEQUENCE_DELIMITER {
            depth.set(depth.get().saturating_sub(1));
        } else if header.len.is_undefined() && header.tag.group() != 0xFFFE {
            if inside {
                depth.set(depth.get() + 1);
            } else if header.vr == VR::UN {
                depth.set(1);
            }
        }
        Ok((header, read))
    }

    fn decode_item_header(&self, source: &mut R) -> Result<SequenceItemHeader> {
        let header = self.current().decode_item_header(source)?;
        if header == SequenceItemHeader::SequenceDelimiter {
            let depth = &self.depth.0;
            depth.set(depth.get().saturating_sub(1));
        }
        Ok(header)
    }

    fn decode_tag(&self, source: &mut R) -> Result<Tag> {
        self.current().decode_tag(source)
    }
}

#[cfg(test)]
mod tests {
    use dicom_core::Tag;
    use dicom_dictionary_std::{tags, uids};
    use serde_json::json;

    use crate::series::convert::test_support::{
        ITEM, ITEM_END, SEQUENCE_END, assert_structure, from_bytes, implicit, in_memory, parse,
        part10, undefined,
    };

    /// Explicit VR big endian (retired, still read).
    const BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

    /// pydicom's `UN_sequence.dcm`, in short: a private undefined-length UN whose value is
    /// an implicit VR little endian sequence, then an element in the file's own encoding.
    fn un_sequence(ts: &str) -> Vec<u8> {
        let big_endian = ts == BIG_ENDIAN;
        let explicit_vr = ts != uids::IMPLICIT_VR_LITTLE_ENDIAN;
        let mut bytes = part10(&in_memory(Vec::new()), ts);
        let un = Tag(0x4453, 0x100C);
        bytes.extend(undefined(un, explicit_vr.then_some(b"UN"), big_endian));
        for part in [
            undefined(ITEM, None, false),
            undefined(tags::REFERENCED_SERIES_SEQUENCE, None, false),
            undefined(ITEM, None, false),
            implicit(
                tags::REFERENCED_SOP_CLASS_UID,
                b"1.2.840.10008.5.1.4.1.1.2\0",
            ),
            implicit(tags::REFERENCED_SOP_INSTANCE_UID, b"1.2.3\0"),
            undefined(ITEM_END, None, false),
            undefined(SEQUENCE_END, None, false),
            implicit(tags::STUDY_INSTANCE_UID, b"1.2.3.4\0"),
            implicit(tags::ROWS, &512_u16.to_le_bytes()),
            undefined(ITEM_END, None, false),
            undefined(SEQUENCE_END, None, false),
        ] {
            bytes.extend(part);
        }
        // (4455,0010) LO "ACME" in the file's encoding.
        if !explicit_vr {
            bytes.extend(implicit(Tag(0x4455, 0x0010), b"ACME"));
            return bytes;
        }
        let (group, element, len) = if big_endian {
            (
                0x4455_u16.to_be_bytes(),
                0x0010_u16.to_be_bytes(),
                4_u16.to_be_bytes(),
            )
        } else {
            (
                0x4455_u16.to_le_bytes(),
                0x0010_u16.to_le_bytes(),
                4_u16.to_le_bytes(),
            )
        };
        bytes.extend([group, element].concat());
        bytes.extend(b"LO");
        bytes.extend(len);
        bytes.extend(b"ACME");
        bytes
    }

    #[test]
    fn undefined_length_un_is_an_implicit_vr_sequence_written_as_sq() {
        for ts in [
            uids::EXPLICIT_VR_LITTLE_ENDIAN,
            BIG_ENDIAN,
            uids::IMPLICIT_VR_LITTLE_ENDIAN,
        ] {
            let instance = from_bytes(&un_sequence(ts), None);
            let json = parse(instance.expect(ts).as_bytes());
            assert_structure(&json);
            assert_eq!(
                json["4453100C"],
                json!({"vr": "SQ", "Value": [{
                    "00081115": {"vr": "SQ", "Value": [{
                        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                        "00081155": {"vr": "UI", "Value": ["1.2.3"]}
                    }]},
                    "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
                    "00280010": {"vr": "US", "Value": [512]}
                }]}),
                "{ts}"
            );
            assert_eq!(
                json["44550010"],
                json!({"vr": "LO", "Value": ["ACME"]}),
                "{ts}: read on in the file's encoding"
            );
        }
    }
}
