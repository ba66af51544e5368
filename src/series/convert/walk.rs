//! The walk through a data set: dicom-parser's lazy reader, token by token, up to the
//! top-level pixel data, written as one DICOM JSON object.
//!
//! Values are taken as raw bytes into one reused buffer, and bulk values are skipped without
//! being held, so no in-memory object is built. Attributes are written in the file's order,
//! which PS3.5 7.1 makes ascending; a data set that is not gets its attributes sorted (the
//! last of a repeated tag wins), so the keys always ascend. The walk keeps what the data set
//! declares for the values after it (Specific Character Set, Pixel Representation) and what
//! the document needs to know of the instance.
//!
//! Binary values (OB OD OF OL OV OW UN) of at most [`INLINE_BINARY_MAX_BYTES`] bytes are
//! `InlineBinary`; larger ones are a `BulkDataURI` when a base URL is configured, else the
//! attribute is left out; pixel data (7FE0,0008/0009/0010) is never inlined.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary as _, VirtualVr};
use dicom_core::header::DataElementHeader;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_encoding::TransferSyntax;
use dicom_encoding::transfer_syntax::{Codec, Endianness};
use dicom_parser::DynStatefulDecoder;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;

use super::document::{SeriesJsonError, WriteResult};
use super::values::{self, Encoder, trim_padding};

// 1 KiB keeps the small vendor blobs (a few bytes to a few hundred) inline, so a viewer
// needs no extra round trip for them, while every multi-KB value (Siemens CSA headers of
// 5-20 KB, overlays, LUTs, icon images) goes out by reference: base64 of 1 KiB is 1,368
// bytes, already about 15% of a typical CT instance object (9-11 KB), once per slice.
/// Largest binary value, in bytes, written inline as base64 (`InlineBinary`).
pub(super) const INLINE_BINARY_MAX_BYTES: usize = 1024;

/// The token reader of a data set.
pub(super) type Reader<R> = LazyDataSetReader<DynStatefulDecoder<R>>;

/// Writes the data set, up to the top-level pixel data, as one JSON object; returns it with
/// what the top level says about the instance.
pub(super) fn write_data_set<R: Read>(
    reader: &mut Reader<R>,
    ts: &TransferSyntax,
    bulk: bool,
) -> Result<(Vec<u8>, TopLevel), SeriesJsonError> {
    let mut writer = Writer::new(ts, bulk);
    writer.data_set(reader)?;
    Ok((writer.out, writer.top))
}

/// What the top-level data set says about the instance as a whole.
#[derive(Debug, Default)]
pub(super) struct TopLevel {
    /// SOP Instance UID (0008,0018), first value, padding removed.
    pub(super) sop_instance_uid: Option<String>,
    /// Instance Number (0020,0013), when an integer.
    pub(super) instance_number: Option<i32>,
    /// Rows (0028,0010) has a value: the instance is an image.
    rows: bool,
    /// Bits Allocated (0028,0100) is more than 8.
    wide_pixels: bool,
    /// Float or Double Float Pixel Data (7FE0,0008/0009) is present.
    float_pixels: bool,
}

/// One open level of the data set tree.
enum Frame {
    /// A data set, top level or item: where its attributes start in `Writer::attributes`,
    /// the highest tag seen, and whether a tag came after a higher one.
    Object {
        first: usize,
        last: Option<Tag>,
        unsorted: bool,
    },
    /// A sequence: its tag and how many items were written.
    Sequence { tag: Tag, items: usize },
}

/// Appends DICOM JSON to a byte buffer while the data set is read.
struct Writer {
    out: Vec<u8>,
    /// Whether BulkDataURIs are wanted.
    bulk: bool,
    /// The attributes of the open data sets, outermost first: tag and where it starts in
    /// `out` (at its comma).
    attributes: Vec<(Tag, usize)>,
    /// Enclosing sequences: (sequence tag, item index), outermost first.
    path: Vec<(Tag, usize)>,
    frames: Vec<Frame>,
    /// Open sequences being skipped (excluded attributes, nested encapsulated pixel data).
    skipping: usize,
    encapsulated: bool,
    /// Pixel Representation (0028,0103) said the pixels are signed.
    signed_pixels: bool,
    /// The value being written, as read.
    value: Vec<u8>,
    /// Writes the values, in the byte order and the declared character set.
    values: Encoder,
    top: TopLevel,
}

impl Writer {
    fn new(ts: &TransferSyntax, bulk: bool) -> Self {
        Self {
            out: Vec::with_capacity(4096),
            bulk,
            attributes: Vec::with_capacity(64),
            path: Vec::new(),
            frames: vec![Frame::Object {
                first: 0,
                last: None,
                unsorted: false,
            }],
            skipping: 0,
            encapsulated: matches!(ts.codec(), Codec::EncapsulatedPixelData(..)),
            signed_pixels: false,
            value: Vec::with_capacity(256),
            values: Encoder::new(ts.endianness() == Endianness::Big),
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
                        break;
                    }
                    self.check_order(tag)?;
                    if is_metadata(tag) {
                        self.open(tag, VR::SQ);
                        self.frames.push(Frame::Sequence { tag, items: 0 });
                    } else {
                        self.skipping = 1;
                    }
                }
                LazyDataToken::PixelSequenceStart => {
                    if self.reached_pixel_data(tags::PIXEL_DATA) {
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
        });
        Ok(())
    }

    fn item_end(&mut self) -> WriteResult {
        if self.frames.len() < 2 {
            return Err(SeriesJsonError::Structure("item end outside an item"));
        }
        let Some(Frame::Object {
            first, unsorted, ..
        }) = self.frames.pop()
        else {
            return Err(SeriesJsonError::Structure("item end outside an item"));
        };
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
        if is_binary(vr) && (is_pixel_data(tag) || len as usize > INLINE_BINARY_MAX_BYTES) {
            discard(value, Some(header))?;
            self.bulk_attribute(tag, vr);
            return Ok(());
        }
        let mut bytes = std::mem::take(&mut self.value);
        bytes.clear();
        let read = value.read_value_into(&mut bytes);
        let result = read.map_err(SeriesJsonError::from).and_then(|()| {
            check_length(&header, bytes.len() as u64)?;
            if top {
                self.note_top_level(tag, vr, &bytes)?;
            }
            if tag == tags::SPECIFIC_CHARACTER_SET {
                self.values.set_charset(tag, &bytes)?;
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
    fn note_top_level(&mut self, tag: Tag, vr: VR, bytes: &[u8]) -> WriteResult {
        match (tag, vr) {
            (tags::SOP_INSTANCE_UID, VR::UI) => {
                let text = self.values.text(tag, VR::UI, bytes)?;
                let first = text.split('\\').next().unwrap_or_default();
                self.top.sop_instance_uid = Some(trim_padding(first).trim().to_owned());
            }
            (tags::INSTANCE_NUMBER, VR::IS) => {
                let text = self.values.text(tag, VR::IS, bytes)?;
                let first = text.split('\\').next().unwrap_or_default();
                self.top.instance_number = first.trim().parse().ok();
            }
            (tags::ROWS, _) => self.top.rows = !bytes.is_empty(),
            (tags::BITS_ALLOCATED, VR::US) => {
                let first = self.values.first_u16(bytes);
                self.top.wide_pixels = first > Some(8);
            }
            _ => {}
        }
        Ok(())
    }

    /// The VR of the pixel data BulkDataURI to add, when the instance is an image read
    /// without it.
    fn synthesized_pixel_vr(&self) -> Option<VR> {
        if !self.bulk || self.top.float_pixels || !self.top.rows {
            return None;
        }
        Some(if !self.encapsulated && self.top.wide_pixels {
            VR::OW
        } else {
            VR::OB
        })
    }

    /// Writes one attribute with its value as read.
    fn primitive(&mut self, tag: Tag, vr: VR, bytes: &[u8]) -> WriteResult {
        self.open(tag, vr);
        self.values.write(&mut self.out, tag, vr, bytes)?;
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
        if !self.bulk {
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

fn is_binary(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    )
}

/// Whether an attribute belongs in metadata: not file meta, group length or padding.
fn is_metadata(tag: Tag) -> bool {
    tag.group() != 0x0002 && tag.element() != 0x0000 && tag != tags::DATA_SET_TRAILING_PADDING
}

fn is_pixel_data(tag: Tag) -> bool {
    tag == tags::PIXEL_DATA || tag == tags::FLOAT_PIXEL_DATA || tag == tags::DOUBLE_FLOAT_PIXEL_DATA
}
