//! The walk through a data set: dicom-parser's lazy reader, token by token, up to the
//! top-level pixel data, written as one DICOM JSON object.
//!
//! Values are taken as raw bytes into one reused buffer, and bulk values are skipped without
//! being held, so no in-memory object is built. Attributes are written in the file's order,
//! which PS3.5 7.1 makes ascending; a data set that is not gets its attributes sorted (the
//! last of a repeated tag wins), so the keys always ascend. The walk acts on what a data
//! set or item declares for the values after it, up to the end of that item (the Specific
//! Character Set goes to the value encoder; Pixel Representation makes "US or SS"
//! attributes SS) and keeps what the document needs to know of the instance. Sequences
//! nested deeper than [`MAX_DEPTH`] are left out; `binary` says where binary values go.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary as _, VirtualVr};
use dicom_core::header::DataElementHeader;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_encoding::TransferSyntax;
use dicom_encoding::transfer_syntax::{Codec, Endianness};
use dicom_parser::StatefulDecoder;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;

use super::binary::{self, Binaries, Placement};
use super::charset::Charset;
use super::implicit_un::{HeaderDecoder, UnDepth};
use super::values::{self, Encoder, trim_padding};
use super::{SeriesJsonError, WriteResult};

/// Deepest sequence nesting written: a sequence inside this many items is left out (a
/// reader with a nesting limit could refuse the document otherwise).
pub(super) const MAX_DEPTH: usize = 64;

/// The token reader of a data set.
pub(super) type Reader<R> = LazyDataSetReader<StatefulDecoder<HeaderDecoder<R>, R>>;

/// Writes the data set, up to the top-level pixel data, as one JSON object; returns it with
/// what the top level says about the instance.
pub(super) fn write_data_set<R: Read>(
    reader: &mut Reader<R>,
    ts: &TransferSyntax,
    un: UnDepth,
    binaries: Binaries,
) -> Result<(Vec<u8>, TopLevel), SeriesJsonError> {
    let mut writer = Writer::new(ts, un, binaries);
    writer.data_set(reader)?;
    Ok((writer.out, writer.top))
}

/// An attribute left out of the document, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeftOut {
    /// A binary value over the inline limit, without a bulk data base URL.
    TooLarge(Tag),
    /// A sequence nested deeper than [`MAX_DEPTH`].
    TooDeep(Tag),
}

/// What the top-level data set says about the instance as a whole.
#[derive(Debug, Default)]
pub(super) struct TopLevel {
    /// SOP Instance UID (0008,0018), first value, padding removed.
    pub(super) sop_instance_uid: Option<String>,
    /// Instance Number (0020,0013), when an integer.
    pub(super) instance_number: Option<i32>,
    /// Attributes left out, in the order met.
    pub(super) left_out: Vec<LeftOut>,
    /// The walk stopped at Pixel Data (7FE0,0010).
    pixel_data: bool,
    /// Bits Allocated (0028,0100) is more than 8.
    wide_pixels: bool,
    /// Float or Double Float Pixel Data (7FE0,0008/0009) is present.
    float_pixels: bool,
}

/// What a data set declares for the values after it, until the end of its item.
#[derive(Debug, Clone, Copy)]
struct Scope {
    charset: Charset,
    /// Pixel Representation (0028,0103) said the pixels are signed.
    signed_pixels: bool,
}

/// One open level of the data set tree.
enum Frame {
    /// A data set, top level or item: where its attributes start in `Writer::attributes`,
    /// the highest tag seen, whether a tag came after a higher one, and the enclosing
    /// scope, restored at the item's end.
    Object {
        first: usize,
        last: Option<Tag>,
        unsorted: bool,
        outer: Scope,
    },
    /// A sequence: its tag and how many items were written.
    Sequence { tag: Tag, items: usize },
}

/// Appends DICOM JSON to a byte buffer while the data set is read.
struct Writer {
    out: Vec<u8>,
    binaries: Binaries,
    /// The attributes of the open data sets, outermost first: tag and where it starts in
    /// `out` (at its comma).
    attributes: Vec<(Tag, usize)>,
    /// Enclosing sequences: (sequence tag, item index), outermost first.
    path: Vec<(Tag, usize)>,
    frames: Vec<Frame>,
    /// Open sequences being skipped (excluded attributes, nested encapsulated pixel data).
    skipping: usize,
    encapsulated: bool,
    /// The transfer syntax is big endian.
    big_endian: bool,
    /// Inside undefined-length UN elements, which are little endian.
    un: UnDepth,
    /// Pixel Representation (0028,0103) said the pixels are signed.
    signed_pixels: bool,
    /// The value being written, as read.
    value: Vec<u8>,
    /// Writes the values, in the byte order and the declared character set.
    values: Encoder,
    top: TopLevel,
}

impl Writer {
    fn new(ts: &TransferSyntax, un: UnDepth, binaries: Binaries) -> Self {
        let big_endian = ts.endianness() == Endianness::Big;
        let values = Encoder::new(big_endian);
        Self {
            out: Vec::with_capacity(4096),
            binaries,
            attributes: Vec::with_capacity(64),
            path: Vec::new(),
            frames: vec![Frame::Object {
                first: 0,
                last: None,
                unsorted: false,
                outer: Scope {
                    charset: values.charset(),
                    signed_pixels: false,
                },
            }],
            skipping: 0,
            encapsulated: matches!(ts.codec(), Codec::EncapsulatedPixelData(..)),
            big_endian,
            un,
            signed_pixels: false,
            value: Vec::with_capacity(256),
            values,
            top: TopLevel::default(),
        }
    }

    /// Writes the whole data set, up to the top-level pixel data, as one JSON object.
    fn data_set<R: Read>(&mut self, reader: &mut Reader<R>) -> WriteResult {
        self.out.push(b'{');
        while let Some(token) = reader.advance() {
            let token = token?;
            if self.skipping > 0 {
                match token {
                    LazyDataToken::SequenceStart { .. } | LazyDataToken::PixelSequenceStart => {
                        self.skipping += 1;
                    }
                    LazyDataToken::SequenceEnd => self.skipping -= 1,
                    value @ (LazyDataToken::LazyValue { .. }
                    | LazyDataToken::LazyItemValue { .. }) => discard(value, None)?,
                    _ => {}
                }
                continue;
            }
            match token {
                LazyDataToken::ElementHeader(header) => {
                    if self.reached_pixel_data(header.tag) {
                        self.top.pixel_data = header.tag == tags::PIXEL_DATA;
                        break;
                    }
                    self.check_order(header.tag)?;
                    match reader.advance() {
                        Some(value) => self.element(header, value?)?,
                        None => return Err(SeriesJsonError::Structure("end of data")),
                    }
                }
                LazyDataToken::SequenceStart { tag, .. } => {
                    if self.reached_pixel_data(tag) {
                        self.top.pixel_data = tag == tags::PIXEL_DATA;
                        break;
                    }
                    self.check_order(tag)?;
                    if self.path.len() >= MAX_DEPTH {
                        self.top.left_out.push(LeftOut::TooDeep(tag));
                        self.skipping = 1;
                    } else if is_metadata(tag) {
                        self.open(tag, VR::SQ);
                        self.frames.push(Frame::Sequence { tag, items: 0 });
                    } else {
                        self.skipping = 1;
                    }
                }
                LazyDataToken::PixelSequenceStart => {
                    if self.reached_pixel_data(tags::PIXEL_DATA) {
                        self.top.pixel_data = true;
                        break;
                    }
                    self.check_order(tags::PIXEL_DATA)?;
                    self.bulk_attribute(tags::PIXEL_DATA, VR::OB);
                    self.skipping = 1;
                }
                LazyDataToken::ItemStart { .. } => self.item_start()?,
                LazyDataToken::ItemEnd => self.item_end()?,
                LazyDataToken::SequenceEnd => self.sequence_end()?,
                _ => return Err(SeriesJsonError::Structure("value without a header")),
            }
        }
        if self.frames.len() > 1 || self.skipping > 0 {
            return Err(SeriesJsonError::Structure("end of data inside a sequence"));
        }
        if let Some(vr) = self.synthesized_pixel_vr() {
            self.bulk_attribute(tags::PIXEL_DATA, vr);
        }
        if let Some(Frame::Object {
            first, unsorted, ..
        }) = self.frames.pop()
        {
            self.close_attributes(first, unsorted);
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Ends a data set's attributes, sorting them by tag when the file had them out of order.
    fn close_attributes(&mut self, first: usize, unsorted: bool) {
        if !unsorted {
            self.attributes.truncate(first);
            return;
        }
        let attributes = self.attributes.split_off(first);
        let start = attributes.first().map_or(self.out.len(), |a| a.1);
        let written = self.out.split_off(start);
        let ends = attributes
            .iter()
            .skip(1)
            .map(|a| a.1)
            .chain([start + written.len()]);
        let mut fragments: Vec<(Tag, &[u8])> = attributes
            .iter()
            .zip(ends)
            .map(|(&(tag, from), to)| {
                let fragment = &written[from - start..to - start];
                (tag, fragment.strip_prefix(b",").unwrap_or(fragment))
            })
            .collect();
        // Reversed, so that the stable sort and dedup keep the last of a repeated tag.
        fragments.reverse();
        fragments.sort_by_key(|f| f.0);
        fragments.dedup_by_key(|f| f.0);
        for (i, (_, fragment)) in fragments.iter().enumerate() {
            values::comma_unless_first(&mut self.out, i);
            self.out.extend_from_slice(fragment);
        }
    }

    /// Whether `tag` ends the top-level data set: the pixel data and what follows it.
    fn reached_pixel_data(&self, tag: Tag) -> bool {
        self.frames.len() == 1 && tag >= tags::PIXEL_DATA
    }

    fn check_order(&mut self, tag: Tag) -> WriteResult {
        let Some(Frame::Object { last, unsorted, .. }) = self.frames.last_mut() else {
            return Err(SeriesJsonError::Structure("attribute outside an item"));
        };
        if last.is_some_and(|last| last >= tag) {
            *unsorted = true;
        } else {
            *last = Some(tag);
        }
        Ok(())
    }

    fn item_start(&mut self) -> WriteResult {
        let Some(Frame::Sequence { tag, items }) = self.frames.last() else {
            return Err(SeriesJsonError::Structure("item outside a sequence"));
        };
        let (tag, index) = (*tag, *items);
        self.out
            .extend_from_slice(if index == 0 { b",\"Value\":[{" } else { b",{" });
        self.path.push((tag, index));
        self.frames.push(Frame::Object {
            first: self.attributes.len(),
            last: None,
            unsorted: false,
            outer: Scope {
                charset: self.values.charset(),
                signed_pixels: self.signed_pixels,
            },
        });
        Ok(())
    }

    fn item_end(&mut self) -> WriteResult {
        if self.frames.len() < 2 {
            return Err(SeriesJsonError::Structure("item end outside an item"));
        }
        let Some(Frame::Object {
            first,
            unsorted,
            outer,
            ..
        }) = self.frames.pop()
        else {
            return Err(SeriesJsonError::Structure("item end outside an item"));
        };
        self.values.use_charset(outer.charset);
        self.signed_pixels = outer.signed_pixels;
        self.close_attributes(first, unsorted);
        let Some(Frame::Sequence { items, .. }) = self.frames.last_mut() else {
            return Err(SeriesJsonError::Structure("item end outside a sequence"));
        };
        *items += 1;
        self.path.pop();
        self.out.push(b'}');
        Ok(())
    }

    fn sequence_end(&mut self) -> WriteResult {
        let Some(Frame::Sequence { items, .. }) = self.frames.pop() else {
            return Err(SeriesJsonError::Structure(
                "sequence end outside a sequence",
            ));
        };
        if items > 0 {
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Writes one attribute with a value (or leaves it out), consuming the value token.
    fn element<D: dicom_parser::StatefulDecode>(
        &mut self,
        header: DataElementHeader,
        value: LazyDataToken<D>,
    ) -> WriteResult {
        let tag = header.tag;
        // As dicom-rs reads them: "US or SS" attributes are SS once pixels are signed.
        let vr = if self.signed_pixels && is_us_or_ss(tag) {
            VR::SS
        } else {
            header.vr
        };
        let len = header.len.0;
        let top = self.frames.len() == 1;
        if top && (tag == tags::FLOAT_PIXEL_DATA || tag == tags::DOUBLE_FLOAT_PIXEL_DATA) {
            self.top.float_pixels = true;
        }
        if !is_metadata(tag) {
            return discard(value, Some(header));
        }
        match self.binaries.place(tag, vr, len) {
            Placement::Value => {}
            Placement::Reference => {
                discard(value, Some(header))?;
                self.bulk_attribute(tag, vr);
                return Ok(());
            }
            Placement::Omitted => return discard(value, Some(header)),
            Placement::TooLarge => {
                self.top.left_out.push(LeftOut::TooLarge(tag));
                return discard(value, Some(header));
            }
        }
        // Values inside an undefined-length UN element are little endian.
        self.values
            .set_big_endian(self.big_endian && !self.un.inside());
        let mut bytes = std::mem::take(&mut self.value);
        bytes.clear();
        let read = value.read_value_into(&mut bytes);
        let result = read.map_err(SeriesJsonError::from).and_then(|()| {
            check_length(&header, bytes.len() as u64)?;
            if top {
                self.note_top_level(tag, vr, &bytes);
            }
            if tag == tags::SPECIFIC_CHARACTER_SET {
                self.values.declare_charset(&bytes);
            }
            if tag == tags::PIXEL_REPRESENTATION && vr == VR::US {
                let first = self.values.first_u16(&bytes);
                self.signed_pixels = first.is_some_and(|w| w != 0);
            }
            self.primitive(tag, vr, &bytes)
        });
        self.value = bytes;
        result
    }

    /// Keeps what the document needs to know of the instance from its top-level values.
    fn note_top_level(&mut self, tag: Tag, vr: VR, bytes: &[u8]) {
        match (tag, vr) {
            (tags::SOP_INSTANCE_UID, VR::UI) => {
                let first = self.values.values(vr, bytes).next().unwrap_or_default();
                self.top.sop_instance_uid = Some(trim_padding(&first).trim().to_owned());
            }
            (tags::INSTANCE_NUMBER, VR::IS) => {
                let first = self.values.values(vr, bytes).next().unwrap_or_default();
                self.top.instance_number = first.trim().parse().ok();
            }
            (tags::BITS_ALLOCATED, VR::US) => {
                let first = self.values.first_u16(bytes);
                self.top.wide_pixels = first > Some(8);
            }
            _ => {}
        }
    }

    /// The VR of the pixel data BulkDataURI to add, when the walk stopped at the pixel data.
    fn synthesized_pixel_vr(&self) -> Option<VR> {
        let present = self.top.pixel_data && !self.top.float_pixels;
        (self.binaries.bulk && present)
            .then(|| binary::pixel_data_vr(self.encapsulated, self.top.wide_pixels))
    }

    /// Writes one attribute with its value as read.
    fn primitive(&mut self, tag: Tag, vr: VR, bytes: &[u8]) -> WriteResult {
        self.open(tag, vr);
        self.values.write(&mut self.out, vr, bytes)?;
        self.out.push(b'}');
        Ok(())
    }

    /// Writes `"GGGGEEEE":{"vr":"XX"`, preceded by a comma unless it is the first key.
    fn open(&mut self, tag: Tag, vr: VR) {
        self.attributes.push((tag, self.out.len()));
        if let Some(Frame::Object { first, .. }) = self.frames.last()
            && self.attributes.len() > *first + 1
        {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(&values::hex_tag(tag));
        self.out.extend_from_slice(b"\":{\"vr\":\"");
        self.out.extend_from_slice(&vr.to_bytes());
        self.out.push(b'"');
    }

    /// Writes a BulkDataURI attribute, or nothing when no base URL is configured.
    fn bulk_attribute(&mut self, tag: Tag, vr: VR) {
        if !self.binaries.bulk {
            return;
        }
        self.open(tag, vr);
        values::bulk_data_uri(&mut self.out, &self.path, tag);
        self.out.push(b'}');
    }
}

/// Consumes a value token unread, checking that the stream holds all of it.
pub(super) fn discard<D: dicom_parser::StatefulDecode>(
    value: LazyDataToken<D>,
    header: Option<DataElementHeader>,
) -> WriteResult {
    let mut counted = ByteCount(0);
    value.read_value_into(&mut counted)?;
    match header {
        Some(header) => check_length(&header, counted.0),
        None => Ok(()),
    }
}

/// Checks that `read` bytes are all the header announced.
pub(super) fn check_length(header: &DataElementHeader, read: u64) -> WriteResult {
    if read == u64::from(header.len.0) {
        Ok(())
    } else {
        Err(SeriesJsonError::Truncated {
            tag: header.tag,
            read,
            len: header.len.0,
        })
    }
}

/// A writer that only counts what it is given.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether the dictionary gives the attribute "US or SS", as Smallest Image Pixel Value.
fn is_us_or_ss(tag: Tag) -> bool {
    StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|entry| entry.vr == VirtualVr::Xs)
}

/// Whether an attribute belongs in metadata: not file meta, group length or padding.
fn is_metadata(tag: Tag) -> bool {
    tag.group() != 0x0002 && tag.element() != 0x0000 && tag != tags::DATA_SET_TRAILING_PADDING
}

#[cfg(test)]
mod tests {
    use dicom_core::value::{C, DataSetSequence, PixelFragmentSequence, PrimitiveValue};
    use dicom_core::{DataElement, dicom_value};
    use dicom_dictionary_std::uids;
    use dicom_object::InMemDicomObject;
    use serde_json::json;

    use super::*;
    use crate::series::convert::document::InstanceJson;
    use crate::series::convert::test_support::{
        BASE, PREFIX, assert_structure, element, fixture_json, from_bytes, in_memory, memory_json,
        parse, part10,
    };
    use crate::series::convert::test_support::{
        ITEM, ITEM_END, SEQUENCE_END, explicit, explicit_le_with, undefined,
    };

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
            json["00091002"]["InlineBinary"].is_string(),
            "a longer OB is inline without a base URL"
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
    fn pixel_representation_in_an_item_ends_with_its_item() {
        let smallest = |value: u16| {
            explicit(
                tags::SMALLEST_IMAGE_PIXEL_VALUE,
                b"US",
                &value.to_le_bytes(),
            )
        };
        let bytes = explicit_le_with(
            &in_memory(Vec::new()),
            &[
                &undefined(tags::REFERENCED_IMAGE_SEQUENCE, Some(b"SQ"), false),
                &undefined(ITEM, None, false),
                &explicit(tags::PIXEL_REPRESENTATION, b"US", &1_u16.to_le_bytes()),
                &smallest(0xFFFF),
                &undefined(ITEM_END, None, false),
                &undefined(SEQUENCE_END, None, false),
                &smallest(0xFFFF),
            ],
        );
        let json = parse(from_bytes(&bytes, None).expect("converts").as_bytes());
        assert_eq!(
            json["00081140"]["Value"][0]["00280106"],
            json!({"vr": "SS", "Value": [-1]})
        );
        assert_eq!(
            json["00280106"],
            json!({"vr": "US", "Value": [65535]}),
            "unsigned again after the item"
        );
    }

    #[test]
    fn sequences_inside_64_items_are_left_out() {
        let content = Tag(0x0040, 0xA730);
        let mut more = Vec::new();
        for _ in 0..70 {
            more.push(undefined(content, Some(b"SQ"), false));
            more.push(undefined(ITEM, None, false));
        }
        more.push(explicit(tags::TEXT_VALUE, b"UT", b"deep"));
        for _ in 0..70 {
            more.push(undefined(ITEM_END, None, false));
            more.push(undefined(SEQUENCE_END, None, false));
        }
        more.push(explicit(Tag(0x0041, 0x0010), b"LO", b"after "));
        let more: Vec<&[u8]> = more.iter().map(Vec::as_slice).collect();
        let bytes = explicit_le_with(&in_memory(Vec::new()), &more);
        let instance: InstanceJson = from_bytes(&bytes, None).expect("converts");
        let text = String::from_utf8(instance.as_bytes().to_vec()).expect("UTF-8");
        assert_eq!(text.matches("\"0040A730\"").count(), MAX_DEPTH);
        assert!(!text.contains("deep"));
        assert!(
            text.ends_with(r#""00410010":{"vr":"LO","Value":["after"]}}"#),
            "read on after the left-out sequence: {text}"
        );
        assert_eq!(instance.left_out(), [LeftOut::TooDeep(content)]);
    }
}
