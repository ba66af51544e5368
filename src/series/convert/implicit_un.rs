//! Undefined-length UN elements (PS3.5 6.2.2): their value is a sequence encoded in
//! implicit VR little endian whatever the transfer syntax, up to its sequence delimiter.
//! The header decoder here reads in the transfer syntax and switches to implicit VR little
//! endian inside such an element; dicom-parser's reader then reports it as a sequence.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use dicom_core::Tag;
use dicom_core::header::{DataElementHeader, SequenceItemHeader};
use dicom_core::{Length, VR};
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
        } else if header.len == Length::UNDEFINED && header.tag.group() != 0xFFFE {
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
