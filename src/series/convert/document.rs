//! DICOM JSON (PS3.18 Annex F) of one instance, written while its Part-10 stream is read
//! (up to the pixel data), and the series metadata document that joins them.
//!
//! The data set is read token by token with dicom-parser's lazy reader: values are taken as
//! raw bytes into one reused buffer, and bulk values are skipped without being held, so no
//! in-memory object is built. Attributes are written in the file's order, which PS3.5 7.1
//! makes ascending; a data set that is not gets its attributes sorted (the last of a repeated
//! tag wins), so the keys always ascend.
//!
//! Policies where F.2 leaves a choice:
//! - binary values (OB OD OF OL OV OW UN) of at most [`INLINE_BINARY_MAX_BYTES`] bytes are
//!   `InlineBinary`; larger ones are a `BulkDataURI` when a base URL is configured, else the
//!   attribute is left out; pixel data (7FE0,0008/0009/0010) is never inlined;
//! - a non-finite FL/FD/OF/OD number (NaN, ±infinity) is written as `null`;
//! - an IS or DS value that does not parse as a number stays a (trimmed) string, as F.2.3
//!   allows, and so do SV/UV values beyond ±(2^53 − 1), which a JSON reader would round;
//! - an attribute whose only value is empty after removing padding (including a PN whose
//!   groups are all empty or hold only `^`) is written like a zero-length one, `{"vr":…}`;
//!   inside a multi-value such a value is `null`;
//! - BulkDataURIs are `{base}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}`,
//!   where `{path}` is the tag (`7FE00010`), or for a nested attribute the enclosing sequence
//!   tags and zero-based item indices, `00540016/0/00181078`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::io::{BufRead, Read};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use dicom_core::dictionary::{DataDictionary as _, VirtualVr};
use dicom_core::header::DataElementHeader;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_encoding::TransferSyntax;
use dicom_encoding::text::{DecodeTextError, SpecificCharacterSet, TextCodec as _};
use dicom_encoding::transfer_syntax::{Codec, Endianness};
use dicom_parser::DynStatefulDecoder;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;

use super::part10;

// 1 KiB keeps the small vendor blobs (a few bytes to a few hundred) inline, so a viewer
// needs no extra round trip for them, while every multi-KB value (Siemens CSA headers of
// 5-20 KB, overlays, LUTs, icon images) goes out by reference: base64 of 1 KiB is 1,368
// bytes, already about 15% of a typical CT instance object (9-11 KB), once per slice.
/// Largest binary value, in bytes, written inline as base64 (`InlineBinary`).
pub const INLINE_BINARY_MAX_BYTES: usize = 1024;

// Integers beyond this lose precision in a JSON reader that uses doubles (JavaScript).
const MAX_EXACT_JSON_INT: u64 = (1 << 53) - 1;

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
    let mut writer = Writer::new(ts, opts.bulkdata_base_url.is_some());
    writer.data_set(&mut reader)?;
    let top = writer.top;
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
            fill_uri_prefixes(&writer.out, &json_string_body(&prefix)?)
        }
        None => writer.out,
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

/// Stands for the BulkDataURI prefix until the SOP Instance UID is known: a NUL byte, which
/// JSON text never holds unescaped.
const URI_PREFIX: u8 = 0;

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

/// The token reader of a data set.
pub(super) type Reader<R> = LazyDataSetReader<DynStatefulDecoder<R>>;
type WriteResult = Result<(), SeriesJsonError>;

/// What the top-level data set says about the instance as a whole.
#[derive(Debug, Default)]
struct TopLevel {
    sop_instance_uid: Option<String>,
    instance_number: Option<i32>,
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
    big_endian: bool,
    encapsulated: bool,
    charset: SpecificCharacterSet,
    /// The declared character set is UTF-8, so valid UTF-8 needs no decoding.
    utf8: bool,
    /// Pixel Representation (0028,0103) said the pixels are signed.
    signed_pixels: bool,
    /// The value being written, as read.
    value: Vec<u8>,
    /// Little-endian value bytes and their base64.
    scratch: Vec<u8>,
    base64: String,
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
            big_endian: ts.endianness() == Endianness::Big,
            encapsulated: matches!(ts.codec(), Codec::EncapsulatedPixelData(..)),
            charset: SpecificCharacterSet::default(),
            utf8: false,
            signed_pixels: false,
            value: Vec::with_capacity(256),
            scratch: Vec::new(),
            base64: String::new(),
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
            self.comma_unless_first(i);
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
                self.set_charset(tag, &bytes)?;
            }
            if tag == tags::PIXEL_REPRESENTATION && vr == VR::US {
                let first = words(&bytes, self.big_endian).next();
                self.signed_pixels = first.is_some_and(|w| u16::from_le_bytes(w) != 0);
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
                let text = self.text(tag, VR::UI, bytes)?;
                let first = text.split('\\').next().unwrap_or_default();
                self.top.sop_instance_uid = Some(trim_padding(first).trim().to_owned());
            }
            (tags::INSTANCE_NUMBER, VR::IS) => {
                let text = self.text(tag, VR::IS, bytes)?;
                let first = text.split('\\').next().unwrap_or_default();
                self.top.instance_number = first.trim().parse().ok();
            }
            (tags::ROWS, _) => self.top.rows = !bytes.is_empty(),
            (tags::BITS_ALLOCATED, VR::US) => {
                let first = words(bytes, self.big_endian).next();
                self.top.wide_pixels = first.map(u16::from_le_bytes) > Some(8);
            }
            _ => {}
        }
        Ok(())
    }

    /// Switches the character set as dicom-rs does: to the first value, when known.
    fn set_charset(&mut self, tag: Tag, bytes: &[u8]) -> WriteResult {
        let text = self.text(tag, VR::CS, bytes)?;
        let first = text.split('\\').next().unwrap_or_default();
        if let Some(charset) = SpecificCharacterSet::from_code(first) {
            self.utf8 = charset == SpecificCharacterSet::ISO_IR_192;
            self.charset = charset;
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

    fn primitive(&mut self, tag: Tag, vr: VR, bytes: &[u8]) -> WriteResult {
        match vr {
            VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
                self.inline_binary(tag, vr, bytes);
                Ok(())
            }
            VR::SQ => {
                self.open(tag, vr);
                self.out.push(b'}');
                Ok(())
            }
            VR::PN => {
                let text = self.text(tag, vr, bytes)?;
                self.person_names(tag, &text)
            }
            VR::IS => {
                let text = self.text(tag, vr, bytes)?;
                self.text_numbers(tag, vr, &text, Number::Int)
            }
            VR::DS => {
                let text = self.text(tag, vr, bytes)?;
                self.text_numbers(tag, vr, &text, Number::Float)
            }
            VR::US | VR::SS | VR::UL | VR::SL | VR::SV | VR::UV | VR::FL | VR::FD => {
                self.binary_numbers(tag, vr, bytes)
            }
            VR::AT => {
                self.tags(tag, bytes);
                Ok(())
            }
            VR::LT | VR::ST | VR::UT | VR::UR => {
                let text = self.text(tag, vr, bytes)?;
                self.single_text(tag, vr, &text)
            }
            VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DT
            | VR::LO
            | VR::SH
            | VR::TM
            | VR::UC
            | VR::UI => {
                let text = self.text(tag, vr, bytes)?;
                self.multi_text(tag, vr, &text)
            }
        }
    }

    /// The value's text: borrowed when it needs no decoding, else decoded like dicom-rs
    /// does (each backslash-separated part on its own; AE AS CS UR in the default set).
    fn text<'a>(&self, tag: Tag, vr: VR, bytes: &'a [u8]) -> Result<Cow<'a, str>, SeriesJsonError> {
        let declared = !matches!(vr, VR::AE | VR::AS | VR::CS | VR::UR);
        // Every supported character set reads ASCII as ASCII, except ISO 2022 escapes.
        if !bytes.contains(&0x1B)
            && let Ok(text) = std::str::from_utf8(bytes)
            && (text.is_ascii() || (declared && self.utf8))
        {
            return Ok(Cow::Borrowed(text));
        }
        let default_charset;
        let charset = if declared {
            &self.charset
        } else {
            default_charset = SpecificCharacterSet::default();
            &default_charset
        };
        let decode = |part: &[u8]| {
            charset
                .decode(part)
                .map_err(|source| SeriesJsonError::Text { tag, source })
        };
        if matches!(vr, VR::LT | VR::ST | VR::UT | VR::UR) {
            return decode(bytes).map(Cow::Owned);
        }
        let parts: Vec<String> = bytes
            .split(|&b| b == b'\\')
            .map(decode)
            .collect::<Result<_, _>>()?;
        Ok(Cow::Owned(parts.join("\\")))
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
        self.out.extend_from_slice(&hex_tag(tag));
        self.out.extend_from_slice(b"\":{\"vr\":\"");
        self.out.extend_from_slice(&vr.to_bytes());
        self.out.push(b'"');
    }

    /// Writes a short binary value as base64 (little-endian words), or `{"vr":…}` when empty.
    fn inline_binary(&mut self, tag: Tag, vr: VR, bytes: &[u8]) {
        self.open(tag, vr);
        if !bytes.is_empty() {
            let word = word_size(vr);
            let le = if self.big_endian && word > 1 {
                self.scratch.clear();
                for chunk in bytes.chunks(word) {
                    self.scratch.extend(chunk.iter().rev());
                }
                &self.scratch[..]
            } else {
                bytes
            };
            self.base64.clear();
            BASE64.encode_string(le, &mut self.base64);
            self.out.extend_from_slice(b",\"InlineBinary\":\"");
            // The base64 alphabet needs no JSON escaping.
            self.out.extend_from_slice(self.base64.as_bytes());
            self.out.push(b'"');
        }
        self.out.push(b'}');
    }

    /// Writes a BulkDataURI attribute, or nothing when no base URL is configured. The URI's
    /// prefix goes in when the object is finished, once the SOP Instance UID is known.
    fn bulk_attribute(&mut self, tag: Tag, vr: VR) {
        if !self.bulk {
            return;
        }
        self.open(tag, vr);
        self.out.extend_from_slice(b",\"BulkDataURI\":\"");
        self.out.push(URI_PREFIX);
        for (seq, item) in &self.path {
            self.out.push(b'/');
            self.out.extend_from_slice(&hex_tag(*seq));
            self.out.push(b'/');
            self.out
                .extend_from_slice(itoa::Buffer::new().format(*item).as_bytes());
        }
        self.out.push(b'/');
        self.out.extend_from_slice(&hex_tag(tag));
        self.out.extend_from_slice(b"\"}");
    }

    fn person_names(&mut self, tag: Tag, text: &str) -> WriteResult {
        let values = || text.split('\\').map(trim_padding);
        self.open(tag, VR::PN);
        if !only_empty(values(), pn_is_empty) {
            self.out.extend_from_slice(b",\"Value\":[");
            for (i, name) in values().enumerate() {
                self.comma_unless_first(i);
                self.person_name(name)?;
            }
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Writes `{"Alphabetic":…,"Ideographic":…,"Phonetic":…}` without empty groups, or `null`.
    fn person_name(&mut self, name: &str) -> WriteResult {
        if pn_is_empty(name) {
            self.out.extend_from_slice(b"null");
            return Ok(());
        }
        self.out.push(b'{');
        let mut first = true;
        for (group, key) in name
            .splitn(3, '=')
            .zip(["Alphabetic", "Ideographic", "Phonetic"])
        {
            let group = group.trim_end_matches(' ');
            if pn_group_is_empty(group) {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            self.out.push(b'"');
            self.out.extend_from_slice(key.as_bytes());
            self.out.extend_from_slice(b"\":");
            serde_json::to_writer(&mut self.out, group)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Writes US SS UL SL SV UV FL or FD values, read in the transfer syntax's byte order.
    fn binary_numbers(&mut self, tag: Tag, vr: VR, bytes: &[u8]) -> WriteResult {
        self.open(tag, vr);
        if bytes.len() >= word_size(vr) {
            let be = self.big_endian;
            self.out.extend_from_slice(b",\"Value\":[");
            match vr {
                VR::US => self.ints(words(bytes, be).map(|w| u16::from_le_bytes(w).into()))?,
                VR::SS => self.ints(words(bytes, be).map(|w| i16::from_le_bytes(w).into()))?,
                VR::UL => self.ints(words(bytes, be).map(|w| u32::from_le_bytes(w).into()))?,
                VR::SL => self.ints(words(bytes, be).map(|w| i32::from_le_bytes(w).into()))?,
                VR::SV => self.ints(words(bytes, be).map(|w| i64::from_le_bytes(w).into()))?,
                VR::UV => self.ints(words(bytes, be).map(|w| u64::from_le_bytes(w).into()))?,
                VR::FL => {
                    for (i, x) in words(bytes, be).map(f32::from_le_bytes).enumerate() {
                        self.comma_unless_first(i);
                        self.f32(x)?;
                    }
                }
                _ => {
                    for (i, x) in words(bytes, be).map(f64::from_le_bytes).enumerate() {
                        self.comma_unless_first(i);
                        self.f64(x)?;
                    }
                }
            }
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }

    fn ints(&mut self, values: impl Iterator<Item = i128>) -> WriteResult {
        for (i, x) in values.enumerate() {
            self.comma_unless_first(i);
            self.int(x)?;
        }
        Ok(())
    }

    fn comma_unless_first(&mut self, index: usize) {
        if index > 0 {
            self.out.push(b',');
        }
    }

    /// Writes an integer, as a string when a double cannot hold it exactly.
    fn int(&mut self, x: i128) -> WriteResult {
        if let Ok(small) = i64::try_from(x)
            && small.unsigned_abs() <= MAX_EXACT_JSON_INT
        {
            self.out
                .extend_from_slice(itoa::Buffer::new().format(small).as_bytes());
        } else {
            serde_json::to_writer(&mut self.out, &x.to_string())?;
        }
        Ok(())
    }

    /// Writes a double in its shortest form, integral values without `.0`, non-finite as `null`.
    fn f64(&mut self, x: f64) -> WriteResult {
        if x.fract() == 0.0 && x.abs() <= MAX_EXACT_JSON_INT as f64 {
            // Exact: the value is integral and within ±2^53.
            self.int(i128::from(x as i64))
        } else {
            serde_json::to_writer(&mut self.out, &x)?;
            Ok(())
        }
    }

    /// Writes a float in its shortest single-precision form, like [`Writer::f64`].
    fn f32(&mut self, x: f32) -> WriteResult {
        if x.fract() == 0.0 && f64::from(x).abs() <= MAX_EXACT_JSON_INT as f64 {
            self.int(i128::from(x as i64))
        } else {
            serde_json::to_writer(&mut self.out, &x)?;
            Ok(())
        }
    }

    /// Writes IS or DS values: numbers, `null` when empty, the text itself when unparsable.
    fn text_numbers(&mut self, tag: Tag, vr: VR, text: &str, kind: Number) -> WriteResult {
        let values = || text.split('\\').map(str::trim);
        self.open(tag, vr);
        if !only_empty(values(), str::is_empty) {
            self.out.extend_from_slice(b",\"Value\":[");
            for (i, value) in values().enumerate() {
                self.comma_unless_first(i);
                self.number_text(value, kind)?;
            }
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Writes one trimmed textual number, `null` when empty, the text itself when unparsable.
    fn number_text(&mut self, text: &str, kind: Number) -> WriteResult {
        if text.is_empty() {
            self.out.extend_from_slice(b"null");
            return Ok(());
        }
        match kind {
            Number::Int => {
                if let Ok(x) = text.parse::<i128>() {
                    return self.int(x);
                }
            }
            Number::Float => {
                if let Ok(x) = text.parse::<f64>()
                    && x.is_finite()
                {
                    return self.f64(x);
                }
            }
        }
        serde_json::to_writer(&mut self.out, text)?;
        Ok(())
    }

    /// Writes AT values: (group, element) pairs as 8 hex digits.
    fn tags(&mut self, tag: Tag, bytes: &[u8]) {
        self.open(tag, VR::AT);
        if bytes.len() >= 4 {
            self.out.extend_from_slice(b",\"Value\":[");
            for (i, pair) in bytes.chunks_exact(4).enumerate() {
                let mut halves = words::<2>(pair, self.big_endian).map(u16::from_le_bytes);
                let (group, element) = (halves.next(), halves.next());
                let (group, element) = (group.unwrap_or_default(), element.unwrap_or_default());
                self.comma_unless_first(i);
                self.out.push(b'"');
                self.out.extend_from_slice(&hex_tag(Tag(group, element)));
                self.out.push(b'"');
            }
            self.out.push(b']');
        }
        self.out.push(b'}');
    }

    /// Writes LT, ST, UT or UR: one value, backslashes kept.
    fn single_text(&mut self, tag: Tag, vr: VR, text: &str) -> WriteResult {
        let text = trim_padding(text);
        self.open(tag, vr);
        if !text.is_empty() {
            self.out.extend_from_slice(b",\"Value\":[");
            serde_json::to_writer(&mut self.out, text)?;
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }

    fn multi_text(&mut self, tag: Tag, vr: VR, text: &str) -> WriteResult {
        let values = || text.split('\\').map(trim_padding);
        self.open(tag, vr);
        if !only_empty(values(), str::is_empty) {
            self.out.extend_from_slice(b",\"Value\":[");
            for (i, value) in values().enumerate() {
                self.comma_unless_first(i);
                if value.is_empty() {
                    self.out.extend_from_slice(b"null");
                } else {
                    serde_json::to_writer(&mut self.out, value)?;
                }
            }
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// Bytes per number of a binary VR, which the byte order applies to (1 for OB and UN).
fn word_size(vr: VR) -> usize {
    match vr {
        VR::OW | VR::US | VR::SS => 2,
        VR::OF | VR::OL | VR::UL | VR::SL | VR::FL => 4,
        VR::OD | VR::OV | VR::FD | VR::SV | VR::UV => 8,
        _ => 1,
    }
}

/// The value's `N`-byte words, made little-endian whatever the transfer syntax.
fn words<const N: usize>(bytes: &[u8], big_endian: bool) -> impl Iterator<Item = [u8; N]> {
    bytes.chunks_exact(N).map(move |chunk| {
        let mut word: [u8; N] = chunk.try_into().expect("chunks_exact yields N bytes");
        if big_endian {
            word.reverse();
        }
        word
    })
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

#[derive(Debug, Clone, Copy)]
enum Number {
    Int,
    Float,
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

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The tag as 8 uppercase hex digits.
fn hex_tag(tag: Tag) -> [u8; 8] {
    let n = (u32::from(tag.group()) << 16) | u32::from(tag.element());
    let mut out = [0u8; 8];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((n >> (28 - 4 * i)) & 0xF) as usize];
    }
    out
}

/// Removes trailing padding: spaces, and the NULs that pad UIs (and that some writers misuse).
pub(super) fn trim_padding(text: &str) -> &str {
    text.trim_end_matches([' ', '\0'])
}

/// Whether the attribute has no value, or exactly one that `is_empty` calls empty.
fn only_empty<'a>(mut values: impl Iterator<Item = &'a str>, is_empty: fn(&str) -> bool) -> bool {
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(one), None) => is_empty(one),
        _ => false,
    }
}

fn pn_is_empty(name: &str) -> bool {
    name.split('=').all(pn_group_is_empty)
}

/// A component group with no name in it: empty, or only `^` separators and spaces.
fn pn_group_is_empty(group: &str) -> bool {
    group.bytes().all(|b| b == b'^' || b == b' ')
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

    use super::*;
    use crate::series::convert::part10::read_instance;
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
