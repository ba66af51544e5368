//! DICOM JSON (PS3.18 Annex F) of one instance's data set, and the series metadata
//! document that joins them: pure functions, no I/O.
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

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use dicom_core::header::Header as _;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;

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

// Retired, so deprecated in the dictionary, but files in it still exist.
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// How an instance's pixel data is encoded, which decides the VR of its BulkDataURI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelEncoding {
    /// Native (uncompressed) pixel data.
    Native,
    /// Encapsulated (compressed) pixel data, always OB.
    Encapsulated,
}

impl PixelEncoding {
    /// The encoding implied by a transfer syntax UID (trailing padding allowed).
    pub fn from_transfer_syntax(uid: &str) -> Self {
        match trim_padding(uid) {
            uids::IMPLICIT_VR_LITTLE_ENDIAN
            | uids::EXPLICIT_VR_LITTLE_ENDIAN
            | EXPLICIT_VR_BIG_ENDIAN
            | uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => Self::Native,
            _ => Self::Encapsulated,
        }
    }
}

/// Why an instance could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum SeriesJsonError {
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

/// Converts one instance's data set (read up to, or including, its pixel data) to its
/// DICOM JSON object.
pub fn instance_json(
    obj: &InMemDicomObject,
    study_uid: &str,
    series_uid: &str,
    pixels: PixelEncoding,
    opts: &DocumentOptions,
) -> Result<InstanceJson, SeriesJsonError> {
    let sop_instance_uid = obj
        .get(tags::SOP_INSTANCE_UID)
        .and_then(|e| e.value().primitive())
        .and_then(first_text)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or(SeriesJsonError::MissingSopInstanceUid)?;
    check_uid("Study Instance UID", study_uid)?;
    check_uid("Series Instance UID", series_uid)?;
    check_uid("SOP Instance UID", &sop_instance_uid)?;

    let bulk_prefix = opts.bulkdata_base_url.as_deref().map(|base| {
        format!(
            "{}/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/bulkdata",
            base.trim_end_matches('/')
        )
    });
    let synthesized_pixel_vr = if bulk_prefix.is_some() {
        synthesized_pixel_vr(obj, pixels)
    } else {
        None
    };
    let mut writer = Writer {
        out: Vec::with_capacity(4096),
        bulk_prefix,
        path: Vec::new(),
        scratch: Vec::new(),
        base64: String::new(),
    };
    writer.object(obj, synthesized_pixel_vr)?;

    Ok(InstanceJson {
        instance_number: obj
            .get(tags::INSTANCE_NUMBER)
            .and_then(|e| e.value().primitive())
            .and_then(first_i32),
        sop_instance_uid,
        bytes: writer.out,
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

/// The VR of the pixel data BulkDataURI to add, when the object is an image read without it.
fn synthesized_pixel_vr(obj: &InMemDicomObject, pixels: PixelEncoding) -> Option<VR> {
    let present = [
        tags::FLOAT_PIXEL_DATA,
        tags::DOUBLE_FLOAT_PIXEL_DATA,
        tags::PIXEL_DATA,
    ]
    .into_iter()
    .any(|t| obj.get(t).is_some());
    let is_image = obj
        .get(tags::ROWS)
        .and_then(|e| e.value().primitive())
        .is_some_and(|v| v.calculate_byte_len() > 0);
    if present || !is_image {
        return None;
    }
    let wide = obj
        .get(tags::BITS_ALLOCATED)
        .and_then(|e| e.value().primitive())
        .and_then(first_i32)
        .is_some_and(|bits| bits > 8);
    Some(match pixels {
        PixelEncoding::Native if wide => VR::OW,
        _ => VR::OB,
    })
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

/// Appends DICOM JSON to a byte buffer, straight from the data set.
struct Writer {
    out: Vec<u8>,
    /// `{base}/studies/…/instances/{sop}/bulkdata`, when BulkDataURIs are wanted.
    bulk_prefix: Option<String>,
    /// Enclosing sequences: (sequence tag, item index), outermost first.
    path: Vec<(Tag, usize)>,
    /// Little-endian value bytes awaiting base64.
    scratch: Vec<u8>,
    base64: String,
}

type WriteResult = Result<(), SeriesJsonError>;

impl Writer {
    /// Writes one data set as a JSON object, adding the pixel data reference when asked.
    fn object(&mut self, obj: &InMemDicomObject, mut pixel_vr: Option<VR>) -> WriteResult {
        self.out.push(b'{');
        let mut first = true;
        for elem in obj.iter() {
            let tag = elem.tag();
            if let Some(vr) = pixel_vr
                && tag > tags::PIXEL_DATA
            {
                self.bulk_attribute(tags::PIXEL_DATA, vr, &mut first)?;
                pixel_vr = None;
            }
            if !is_metadata(tag) {
                continue;
            }
            self.element(elem, &mut first)?;
        }
        if let Some(vr) = pixel_vr {
            self.bulk_attribute(tags::PIXEL_DATA, vr, &mut first)?;
        }
        self.out.push(b'}');
        Ok(())
    }

    fn element(&mut self, elem: &InMemElement, first: &mut bool) -> WriteResult {
        let tag = elem.tag();
        match elem.value() {
            Value::Sequence(seq) => {
                // An undefined-length UN can be parsed as a sequence: its items are only
                // valid JSON under SQ.
                self.open(tag, VR::SQ, first);
                let items = seq.items();
                if !items.is_empty() {
                    self.out.extend_from_slice(b",\"Value\":[");
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(b',');
                        }
                        self.path.push((tag, i));
                        self.object(item, None)?;
                        self.path.pop();
                    }
                    self.out.push(b']');
                }
                self.out.push(b'}');
                Ok(())
            }
            Value::PixelSequence(_) => self.bulk_attribute(tag, VR::OB, first),
            Value::Primitive(value) => self.primitive(tag, elem.vr(), value, first),
        }
    }

    fn primitive(
        &mut self,
        tag: Tag,
        vr: VR,
        value: &PrimitiveValue,
        first: &mut bool,
    ) -> WriteResult {
        match vr {
            VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
                self.binary(tag, vr, value, first)
            }
            VR::SQ => {
                self.open(tag, vr, first);
                self.out.push(b'}');
                Ok(())
            }
            VR::PN => self.person_names(tag, value, first),
            VR::IS | VR::US | VR::SS | VR::UL | VR::SL | VR::SV | VR::UV => {
                self.numbers(tag, vr, value, Number::Int, first)
            }
            VR::DS | VR::FL | VR::FD => self.numbers(tag, vr, value, Number::Float, first),
            VR::AT => self.tags(tag, value, first),
            VR::LT | VR::ST | VR::UT | VR::UR => self.single_text(tag, vr, value, first),
            VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DT
            | VR::LO
            | VR::SH
            | VR::TM
            | VR::UC
            | VR::UI => self.multi_text(tag, vr, value, first),
        }
    }

    /// Writes `"GGGGEEEE":{"vr":"XX"`, preceded by a comma unless it is the first key.
    fn open(&mut self, tag: Tag, vr: VR, first: &mut bool) {
        if !*first {
            self.out.push(b',');
        }
        *first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(&hex_tag(tag));
        self.out.extend_from_slice(b"\":{\"vr\":\"");
        self.out.extend_from_slice(&vr.to_bytes());
        self.out.push(b'"');
    }

    fn binary(
        &mut self,
        tag: Tag,
        vr: VR,
        value: &PrimitiveValue,
        first: &mut bool,
    ) -> WriteResult {
        let len = value.calculate_byte_len();
        if len == 0 {
            self.open(tag, vr, first);
            self.out.push(b'}');
            return Ok(());
        }
        if is_pixel_data(tag) || len > INLINE_BINARY_MAX_BYTES {
            return self.bulk_attribute(tag, vr, first);
        }
        self.open(tag, vr, first);
        little_endian_bytes(value, &mut self.scratch);
        self.base64.clear();
        BASE64.encode_string(&self.scratch, &mut self.base64);
        self.out.extend_from_slice(b",\"InlineBinary\":\"");
        // The base64 alphabet needs no JSON escaping.
        self.out.extend_from_slice(self.base64.as_bytes());
        self.out.extend_from_slice(b"\"}");
        Ok(())
    }

    /// Writes a BulkDataURI attribute, or nothing when no base URL is configured.
    fn bulk_attribute(&mut self, tag: Tag, vr: VR, first: &mut bool) -> WriteResult {
        let Some(prefix) = &self.bulk_prefix else {
            return Ok(());
        };
        let mut uri = String::with_capacity(prefix.len() + 10 + self.path.len() * 16);
        uri.push_str(prefix);
        for (seq, item) in &self.path {
            uri.push('/');
            uri.push_str(hex_tag_str(*seq).as_str());
            uri.push('/');
            uri.push_str(&item.to_string());
        }
        uri.push('/');
        uri.push_str(hex_tag_str(tag).as_str());
        self.open(tag, vr, first);
        self.out.extend_from_slice(b",\"BulkDataURI\":");
        serde_json::to_writer(&mut self.out, &uri)?;
        self.out.push(b'}');
        Ok(())
    }

    fn person_names(&mut self, tag: Tag, value: &PrimitiveValue, first: &mut bool) -> WriteResult {
        let texts = texts(value);
        let values = || split_values(&texts).map(trim_padding);
        self.open(tag, VR::PN, first);
        if !only_empty(values(), pn_is_empty) {
            self.out.extend_from_slice(b",\"Value\":[");
            for (i, name) in values().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
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

    fn numbers(
        &mut self,
        tag: Tag,
        vr: VR,
        value: &PrimitiveValue,
        kind: Number,
        first: &mut bool,
    ) -> WriteResult {
        self.open(tag, vr, first);
        match value {
            PrimitiveValue::Empty => {}
            PrimitiveValue::U8(v) => self.int_values(v.iter().map(|&x| i128::from(x)))?,
            PrimitiveValue::U16(v) => self.int_values(v.iter().map(|&x| i128::from(x)))?,
            PrimitiveValue::I16(v) => self.int_values(v.iter().map(|&x| i128::from(x)))?,
            PrimitiveValue::U32(v) => self.int_values(v.iter().map(|&x| i128::from(x)))?,
            PrimitiveValue::I32(v) => self.int_values(v.iter().map(|&x| i128::from(x)))?,
            PrimitiveValue::U64(v) => self.int_values(v.iter().map(|&x| i128::from(x)))?,
            PrimitiveValue::I64(v) => self.int_values(v.iter().map(|&x| i128::from(x)))?,
            PrimitiveValue::F32(v) if !v.is_empty() => {
                self.out.extend_from_slice(b",\"Value\":[");
                for (i, &x) in v.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.f32(x)?;
                }
                self.out.push(b']');
            }
            PrimitiveValue::F64(v) if !v.is_empty() => {
                self.out.extend_from_slice(b",\"Value\":[");
                for (i, &x) in v.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.f64(x)?;
                }
                self.out.push(b']');
            }
            PrimitiveValue::F32(_) | PrimitiveValue::F64(_) => {}
            _ => {
                // Files hold IS and DS as text; other VRs get here only from unusual
                // in-memory values, which the text path handles too.
                let texts = texts(value);
                let values = || split_values(&texts).map(str::trim);
                if !only_empty(values(), str::is_empty) {
                    self.out.extend_from_slice(b",\"Value\":[");
                    for (i, text) in values().enumerate() {
                        if i > 0 {
                            self.out.push(b',');
                        }
                        self.number_text(text, kind)?;
                    }
                    self.out.push(b']');
                }
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    fn int_values(&mut self, values: impl ExactSizeIterator<Item = i128>) -> WriteResult {
        if values.len() == 0 {
            return Ok(());
        }
        self.out.extend_from_slice(b",\"Value\":[");
        for (i, x) in values.enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.int(x)?;
        }
        self.out.push(b']');
        Ok(())
    }

    /// Writes an integer, as a string when a double cannot hold it exactly.
    fn int(&mut self, x: i128) -> WriteResult {
        if let Ok(small) = i64::try_from(x)
            && small.unsigned_abs() <= MAX_EXACT_JSON_INT
        {
            serde_json::to_writer(&mut self.out, &small)?;
        } else {
            serde_json::to_writer(&mut self.out, &x.to_string())?;
        }
        Ok(())
    }

    /// Writes a double in its shortest form, integral values without `.0`, non-finite as `null`.
    fn f64(&mut self, x: f64) -> WriteResult {
        if x.fract() == 0.0 && x.abs() <= MAX_EXACT_JSON_INT as f64 {
            // Exact: the value is integral and within ±2^53.
            serde_json::to_writer(&mut self.out, &(x as i64))?;
        } else {
            serde_json::to_writer(&mut self.out, &x)?;
        }
        Ok(())
    }

    /// Writes a float in its shortest single-precision form, like [`Writer::f64`].
    fn f32(&mut self, x: f32) -> WriteResult {
        if x.fract() == 0.0 && f64::from(x).abs() <= MAX_EXACT_JSON_INT as f64 {
            serde_json::to_writer(&mut self.out, &(x as i64))?;
        } else {
            serde_json::to_writer(&mut self.out, &x)?;
        }
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

    fn tags(&mut self, tag: Tag, value: &PrimitiveValue, first: &mut bool) -> WriteResult {
        let PrimitiveValue::Tags(values) = value else {
            // Not the parser's form for AT: fall back to the value's text.
            return self.multi_text(tag, VR::AT, value, first);
        };
        self.open(tag, VR::AT, first);
        if !values.is_empty() {
            self.out.extend_from_slice(b",\"Value\":[");
            for (i, &t) in values.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.out.push(b'"');
                self.out.extend_from_slice(&hex_tag(t));
                self.out.push(b'"');
            }
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Writes LT, ST, UT or UR: one value, backslashes kept.
    fn single_text(
        &mut self,
        tag: Tag,
        vr: VR,
        value: &PrimitiveValue,
        first: &mut bool,
    ) -> WriteResult {
        let texts = texts(value);
        let text: Cow<'_, str> = match &texts[..] {
            [] => Cow::Borrowed(""),
            [one] => Cow::Borrowed(one.as_str()),
            // Several strings only come from an in-memory object: they were one value.
            many => Cow::Owned(many.join("\\")),
        };
        let text = trim_padding(&text);
        self.open(tag, vr, first);
        if !text.is_empty() {
            self.out.extend_from_slice(b",\"Value\":[");
            serde_json::to_writer(&mut self.out, text)?;
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }

    fn multi_text(
        &mut self,
        tag: Tag,
        vr: VR,
        value: &PrimitiveValue,
        first: &mut bool,
    ) -> WriteResult {
        let texts = texts(value);
        let values = || split_values(&texts).map(trim_padding);
        self.open(tag, vr, first);
        if !only_empty(values(), str::is_empty) {
            self.out.extend_from_slice(b",\"Value\":[");
            for (i, text) in values().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                if text.is_empty() {
                    self.out.extend_from_slice(b"null");
                } else {
                    serde_json::to_writer(&mut self.out, text)?;
                }
            }
            self.out.push(b']');
        }
        self.out.push(b'}');
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Number {
    Int,
    Float,
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

fn hex_tag_str(tag: Tag) -> String {
    hex_tag(tag).iter().map(|&b| char::from(b)).collect()
}

/// Removes trailing padding: spaces, and the NULs that pad UIs (and that some writers misuse).
fn trim_padding(text: &str) -> &str {
    text.trim_end_matches([' ', '\0'])
}

/// The value's strings: borrowed as the parser stores them, formatted for other forms.
fn texts(value: &PrimitiveValue) -> Cow<'_, [String]> {
    match value {
        PrimitiveValue::Empty => Cow::Borrowed(&[]),
        PrimitiveValue::Str(s) => Cow::Borrowed(std::slice::from_ref(s)),
        PrimitiveValue::Strs(v) => Cow::Borrowed(&v[..]),
        other => other.to_multi_str(),
    }
}

/// Every value, splitting strings that hold several backslash-separated values.
fn split_values(texts: &[String]) -> impl Iterator<Item = &str> {
    texts.iter().flat_map(|s| s.split('\\'))
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

fn first_text(value: &PrimitiveValue) -> Option<&str> {
    match value {
        PrimitiveValue::Str(s) => Some(trim_padding(s)),
        PrimitiveValue::Strs(v) => v.first().map(|s| trim_padding(s)),
        _ => None,
    }
}

fn first_i32(value: &PrimitiveValue) -> Option<i32> {
    match value {
        PrimitiveValue::Str(_) | PrimitiveValue::Strs(_) => {
            let text = texts(value);
            split_values(&text).next()?.trim().parse().ok()
        }
        PrimitiveValue::U16(v) => v.first().map(|&x| i32::from(x)),
        PrimitiveValue::I16(v) => v.first().map(|&x| i32::from(x)),
        PrimitiveValue::I32(v) => v.first().copied(),
        PrimitiveValue::U32(v) => v.first().and_then(|&x| i32::try_from(x).ok()),
        PrimitiveValue::I64(v) => v.first().and_then(|&x| i32::try_from(x).ok()),
        PrimitiveValue::U64(v) => v.first().and_then(|&x| i32::try_from(x).ok()),
        _ => None,
    }
}

/// The value's bytes as DICOM JSON wants them: little endian, whatever the host.
fn little_endian_bytes(value: &PrimitiveValue, out: &mut Vec<u8>) {
    // Every numeric type writes its values one after the other, little-endian.
    macro_rules! little_endian {
        ($values:expr) => {
            $values
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    out.clear();
    match value {
        PrimitiveValue::U8(v) => out.extend_from_slice(v),
        PrimitiveValue::U16(v) => little_endian!(v),
        PrimitiveValue::I16(v) => little_endian!(v),
        PrimitiveValue::U32(v) => little_endian!(v),
        PrimitiveValue::I32(v) => little_endian!(v),
        PrimitiveValue::U64(v) => little_endian!(v),
        PrimitiveValue::I64(v) => little_endian!(v),
        PrimitiveValue::F32(v) => little_endian!(v),
        PrimitiveValue::F64(v) => little_endian!(v),
        other => out.extend_from_slice(&other.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use std::hint::black_box;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use dicom_core::value::{C, DataSetSequence};
    use dicom_core::{DataElement, dicom_value};
    use dicom_json::DicomJson;
    use dicom_object::{DefaultDicomObject, OpenFileOptions};
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::fixtures::{self, CtInstance};
    use crate::instance_file::read_instance;

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

    fn convert(file: &DefaultDicomObject, base: Option<&str>) -> InstanceJson {
        let pixels = PixelEncoding::from_transfer_syntax(file.meta().transfer_syntax());
        instance_json(file, STUDY, SERIES, pixels, &opts(base)).expect("instance_json")
    }

    fn parse(bytes: &[u8]) -> Json {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    /// The fixture written to disk, read back up to the pixel data, as parsed JSON.
    fn fixture_json(base: Option<&str>) -> Json {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_fixture(dir.path(), &ct(SOP, Some(7)));
        let file = read_instance(&path).expect("read fixture");
        parse(convert(&file, base).as_bytes())
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
        let obj = in_memory(elements);
        let instance = instance_json(&obj, STUDY, SERIES, PixelEncoding::Native, &opts(base))
            .expect("instance_json");
        parse(instance.as_bytes())
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
    fn pixel_data_read_in_full_is_never_inlined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_fixture(dir.path(), &ct(SOP, Some(1)));
        let file = OpenFileOptions::new()
            .open_file(&path)
            .expect("read whole file");
        assert!(file.get(tags::PIXEL_DATA).is_some(), "pixel data was read");

        let without = parse(convert(&file, None).as_bytes());
        assert!(without.get("7FE00010").is_none());
        let with = parse(convert(&file, Some(BASE)).as_bytes());
        assert_eq!(
            with["7FE00010"],
            json!({"vr": "OW", "BulkDataURI": format!("{PREFIX}/7FE00010")})
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
        let vr = |obj: &InMemDicomObject, pixels| {
            let instance = instance_json(obj, STUDY, SERIES, pixels, &opts(Some(BASE)))
                .expect("instance_json");
            parse(instance.as_bytes())["7FE00010"]["vr"].clone()
        };
        assert_eq!(vr(&image(16), PixelEncoding::Native), "OW");
        assert_eq!(vr(&image(8), PixelEncoding::Native), "OB");
        assert_eq!(vr(&image(16), PixelEncoding::Encapsulated), "OB");
        let not_image = in_memory(vec![element(tags::MODALITY, VR::CS, "SR")]);
        assert_eq!(
            vr(&not_image, PixelEncoding::Native),
            Json::Null,
            "no Rows, no pixel data"
        );

        assert_eq!(
            PixelEncoding::from_transfer_syntax("1.2.840.10008.1.2.1\0"),
            PixelEncoding::Native
        );
        assert_eq!(
            PixelEncoding::from_transfer_syntax("1.2.840.10008.1.2"),
            PixelEncoding::Native
        );
        assert_eq!(
            PixelEncoding::from_transfer_syntax("1.2.840.10008.1.2.4.90"),
            PixelEncoding::Encapsulated
        );
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
                convert(&read_instance(&path).expect("read"), Some(BASE))
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
            instance_json(&obj, STUDY, SERIES, PixelEncoding::Native, &opts(None))
                .expect("instance_json")
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
        let instance = instance_json(&obj, STUDY, SERIES, PixelEncoding::Native, &opts(None))
            .expect("instance_json");
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
        let err = instance_json(&no_sop, STUDY, SERIES, PixelEncoding::Native, &opts(None));
        assert!(
            matches!(err, Err(SeriesJsonError::MissingSopInstanceUid)),
            "{err:?}"
        );

        let blank_sop =
            InMemDicomObject::from_element_iter([element(tags::SOP_INSTANCE_UID, VR::UI, " \0")]);
        let err = instance_json(
            &blank_sop,
            STUDY,
            SERIES,
            PixelEncoding::Native,
            &opts(None),
        );
        assert!(
            matches!(err, Err(SeriesJsonError::MissingSopInstanceUid)),
            "{err:?}"
        );

        let bad_sop = InMemDicomObject::from_element_iter([element(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            "1.2/../3",
        )]);
        let err = instance_json(&bad_sop, STUDY, SERIES, PixelEncoding::Native, &opts(None));
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

        let obj = in_memory(Vec::new());
        let err = instance_json(&obj, "1.2 3", SERIES, PixelEncoding::Native, &opts(None));
        assert!(
            matches!(err, Err(SeriesJsonError::InvalidUid { .. })),
            "{err:?}"
        );
    }

    fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                black_box(f());
                start.elapsed()
            })
            .min()
            .unwrap_or_default()
    }

    fn rate(n: usize, d: Duration) -> f64 {
        n as f64 / d.as_secs_f64()
    }

    #[test]
    #[ignore = "timing harness: cargo test --release --lib -- --ignored --nocapture"]
    fn throughput_against_dicom_json() {
        const N: usize = 500;
        let dir = tempfile::tempdir().expect("tempdir");
        let sops: Vec<String> = (0..N).map(|i| format!("2.25.{}", 1_000_000 + i)).collect();
        let paths: Vec<PathBuf> = sops
            .iter()
            .enumerate()
            .map(|(i, sop)| {
                // Shuffled numbering, so the sort has work to do.
                let number = i32::try_from((i * 7919) % N).expect("small");
                write_fixture(dir.path(), &ct(sop, Some(number)))
            })
            .collect();
        measure("64x64 CT fixture", &paths);

        // A real file gives a truer figure: set SERIES_BENCH_FILE to one.
        if let Some(real) = std::env::var_os("SERIES_BENCH_FILE") {
            let copies: Vec<PathBuf> = (0..N)
                .map(|i| {
                    let path = dir.path().join(format!("real-{i}.dcm"));
                    std::fs::copy(&real, &path).expect("copy SERIES_BENCH_FILE");
                    path
                })
                .collect();
            measure(&Path::new(&real).display().to_string(), &copies);
        }
    }

    fn measure(label: &str, paths: &[PathBuf]) {
        let n = paths.len();
        let options = opts(Some(BASE));

        let ours = |paths: &[PathBuf]| -> Vec<InstanceJson> {
            paths
                .iter()
                .map(|p| convert_with(&read_instance(p).expect("read"), &options))
                .collect()
        };
        let theirs = |paths: &[PathBuf]| -> Vec<Vec<u8>> {
            paths
                .iter()
                .map(|p| dicom_json::to_vec(&*read_instance(p).expect("read")).expect("to_vec"))
                .collect()
        };
        let join = |parts: Vec<Vec<u8>>| -> Vec<u8> {
            let mut out = vec![b'['];
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(part);
            }
            out.push(b']');
            out
        };

        let ours_doc = series_document(ours(paths));
        let theirs_doc = join(theirs(paths));
        let ours_1 = best_of(10, || series_document(ours(paths)));
        let theirs_1 = best_of(10, || join(theirs(paths)));
        let (left, right) = paths.split_at(n / 2);
        let ours_2 = best_of(10, || {
            let (mut a, b) = std::thread::scope(|s| {
                let b = s.spawn(|| ours(right));
                (ours(left), b.join().expect("thread"))
            });
            a.extend(b);
            series_document(a)
        });
        let theirs_2 = best_of(10, || {
            let (mut a, b) = std::thread::scope(|s| {
                let b = s.spawn(|| theirs(right));
                (theirs(left), b.join().expect("thread"))
            });
            a.extend(b);
            join(a)
        });

        let files: Vec<DefaultDicomObject> = paths
            .iter()
            .map(|p| read_instance(p).expect("read"))
            .collect();
        let read_only = best_of(10, || {
            paths
                .iter()
                .map(|p| read_instance(p).expect("read"))
                .collect::<Vec<_>>()
        });
        let serialize = |files: &[DefaultDicomObject]| {
            let ours = best_of(10, || {
                files
                    .iter()
                    .map(|f| convert_with(f, &options).as_bytes().len())
                    .sum::<usize>()
            });
            let theirs = best_of(10, || {
                files
                    .iter()
                    .map(|f| dicom_json::to_vec(&**f).expect("to_vec").len())
                    .sum::<usize>()
            });
            (ours, theirs)
        };
        let (ours_ser, theirs_ser) = serialize(&files);
        // dicom-json inlines the 4 KiB private OB as base64, which we send by reference:
        // without it, both write the same attributes.
        let mut small = files.clone();
        for file in &mut small {
            file.remove_element(fixtures::PRIVATE_LONG_OB_TAG);
        }
        let (ours_small, theirs_small) = serialize(&small);

        println!("{n} instances of {label}, read up to the pixel data (instances/s)");
        println!("read_instance alone:        {:>8.0}", rate(n, read_only));
        println!(
            "ours, end to end:           {:>8.0} on 1 thread, {:>8.0} on 2; {} B/instance",
            rate(n, ours_1),
            rate(n, ours_2),
            ours_doc.len() / n
        );
        println!(
            "dicom_json, end to end:     {:>8.0} on 1 thread, {:>8.0} on 2; {} B/instance",
            rate(n, theirs_1),
            rate(n, theirs_2),
            theirs_doc.len() / n
        );
        println!(
            "serialization alone:        {:>8.0} ours, {:>8.0} dicom_json ({:.1}x)",
            rate(n, ours_ser),
            rate(n, theirs_ser),
            theirs_ser.as_secs_f64() / ours_ser.as_secs_f64()
        );
        println!(
            "  without (0009,1002):      {:>8.0} ours, {:>8.0} dicom_json ({:.1}x)",
            rate(n, ours_small),
            rate(n, theirs_small),
            theirs_small.as_secs_f64() / ours_small.as_secs_f64()
        );
    }

    fn convert_with(file: &DefaultDicomObject, options: &DocumentOptions) -> InstanceJson {
        let pixels = PixelEncoding::from_transfer_syntax(file.meta().transfer_syntax());
        instance_json(file, STUDY, SERIES, pixels, options).expect("instance_json")
    }
}
