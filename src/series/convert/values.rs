//! Each VR's value as DICOM JSON (PS3.18 F.2): numbers, strings and multi-values, person
//! names, tags, and binary values inline or by reference, read from the value's bytes in the
//! data set's byte order and character set. The walk writes an attribute's key and `vr`; this
//! writes what follows them inside the attribute's object.
//!
//! Policies where F.2 leaves a choice:
//! - a non-finite FL/FD/OF/OD number (NaN, ±infinity) is written as `null`;
//! - an IS or DS value that does not parse as a number stays a (trimmed) string, as F.2.3
//!   allows, and so do SV/UV values beyond ±(2^53 − 1), which a JSON reader would round;
//! - an attribute whose only value is empty after removing padding (including a PN whose
//!   groups are all empty or hold only `^`) is written like a zero-length one, `{"vr":…}`;
//!   inside a multi-value such a value is `null`.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use dicom_core::{Tag, VR};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec as _};

use super::document::{SeriesJsonError, WriteResult};

// Integers beyond this lose precision in a JSON reader that uses doubles (JavaScript).
const MAX_EXACT_JSON_INT: u64 = (1 << 53) - 1;

/// Stands for the BulkDataURI prefix until the SOP Instance UID is known: a NUL byte, which
/// JSON text never holds unescaped.
pub(super) const URI_PREFIX: u8 = 0;

/// Writes values as JSON, read in the data set's byte order and declared character set.
pub(super) struct Encoder {
    big_endian: bool,
    charset: SpecificCharacterSet,
    /// The declared character set is UTF-8, so valid UTF-8 needs no decoding.
    utf8: bool,
    /// Little-endian value bytes and their base64.
    scratch: Vec<u8>,
    base64: String,
}

impl Encoder {
    /// An encoder for values in this byte order, in the default character set.
    pub(super) fn new(big_endian: bool) -> Self {
        Self {
            big_endian,
            charset: SpecificCharacterSet::default(),
            utf8: false,
            scratch: Vec::new(),
            base64: String::new(),
        }
    }

    /// The first value of a US value.
    pub(super) fn first_u16(&self, bytes: &[u8]) -> Option<u16> {
        words(bytes, self.big_endian).next().map(u16::from_le_bytes)
    }

    /// Switches the character set as dicom-rs does: to the first value of Specific Character
    /// Set (0008,0005), when known.
    pub(super) fn set_charset(&mut self, tag: Tag, bytes: &[u8]) -> WriteResult {
        let text = self.text(tag, VR::CS, bytes)?;
        let first = text.split('\\').next().unwrap_or_default();
        if let Some(charset) = SpecificCharacterSet::from_code(first) {
            self.utf8 = charset == SpecificCharacterSet::ISO_IR_192;
            self.charset = charset;
        }
        Ok(())
    }

    /// The value's text: borrowed when it needs no decoding, else decoded like dicom-rs
    /// does (each backslash-separated part on its own; AE AS CS UR in the default set).
    pub(super) fn text<'a>(
        &self,
        tag: Tag,
        vr: VR,
        bytes: &'a [u8],
    ) -> Result<Cow<'a, str>, SeriesJsonError> {
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

    /// Writes the value's field (`,"Value":[…]` or `,"InlineBinary":…`), or nothing when it
    /// is empty.
    pub(super) fn write(
        &mut self,
        out: &mut Vec<u8>,
        tag: Tag,
        vr: VR,
        bytes: &[u8],
    ) -> WriteResult {
        match vr {
            VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
                self.inline_binary(out, vr, bytes);
                Ok(())
            }
            VR::SQ => Ok(()),
            VR::PN => {
                let text = self.text(tag, vr, bytes)?;
                person_names(out, &text)
            }
            VR::IS => {
                let text = self.text(tag, vr, bytes)?;
                text_numbers(out, &text, Number::Int)
            }
            VR::DS => {
                let text = self.text(tag, vr, bytes)?;
                text_numbers(out, &text, Number::Float)
            }
            VR::US | VR::SS | VR::UL | VR::SL | VR::SV | VR::UV | VR::FL | VR::FD => {
                self.binary_numbers(out, vr, bytes)
            }
            VR::AT => {
                self.tags(out, bytes);
                Ok(())
            }
            VR::LT | VR::ST | VR::UT | VR::UR => {
                let text = self.text(tag, vr, bytes)?;
                single_text(out, &text)
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
                multi_text(out, &text)
            }
        }
    }

    /// Writes a short binary value as base64 (little-endian words), or nothing when empty.
    fn inline_binary(&mut self, out: &mut Vec<u8>, vr: VR, bytes: &[u8]) {
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
            out.extend_from_slice(b",\"InlineBinary\":\"");
            // The base64 alphabet needs no JSON escaping.
            out.extend_from_slice(self.base64.as_bytes());
            out.push(b'"');
        }
    }

    /// Writes US SS UL SL SV UV FL or FD values, read in the transfer syntax's byte order.
    fn binary_numbers(&self, out: &mut Vec<u8>, vr: VR, bytes: &[u8]) -> WriteResult {
        if bytes.len() >= word_size(vr) {
            let be = self.big_endian;
            out.extend_from_slice(b",\"Value\":[");
            match vr {
                VR::US => ints(out, words(bytes, be).map(|w| u16::from_le_bytes(w).into()))?,
                VR::SS => ints(out, words(bytes, be).map(|w| i16::from_le_bytes(w).into()))?,
                VR::UL => ints(out, words(bytes, be).map(|w| u32::from_le_bytes(w).into()))?,
                VR::SL => ints(out, words(bytes, be).map(|w| i32::from_le_bytes(w).into()))?,
                VR::SV => ints(out, words(bytes, be).map(|w| i64::from_le_bytes(w).into()))?,
                VR::UV => ints(out, words(bytes, be).map(|w| u64::from_le_bytes(w).into()))?,
                VR::FL => {
                    for (i, x) in words(bytes, be).map(f32::from_le_bytes).enumerate() {
                        comma_unless_first(out, i);
                        f32(out, x)?;
                    }
                }
                _ => {
                    for (i, x) in words(bytes, be).map(f64::from_le_bytes).enumerate() {
                        comma_unless_first(out, i);
                        f64(out, x)?;
                    }
                }
            }
            out.push(b']');
        }
        Ok(())
    }

    /// Writes AT values: (group, element) pairs as 8 hex digits.
    fn tags(&self, out: &mut Vec<u8>, bytes: &[u8]) {
        if bytes.len() >= 4 {
            out.extend_from_slice(b",\"Value\":[");
            for (i, pair) in bytes.chunks_exact(4).enumerate() {
                let mut halves = words::<2>(pair, self.big_endian).map(u16::from_le_bytes);
                let (group, element) = (halves.next(), halves.next());
                let (group, element) = (group.unwrap_or_default(), element.unwrap_or_default());
                comma_unless_first(out, i);
                out.push(b'"');
                out.extend_from_slice(&hex_tag(Tag(group, element)));
                out.push(b'"');
            }
            out.push(b']');
        }
    }
}

/// Writes the BulkDataURI field: the prefix placeholder, then the path of the attribute
/// through its enclosing sequences. The prefix goes in when the object is finished, once
/// the SOP Instance UID is known.
pub(super) fn bulk_data_uri(out: &mut Vec<u8>, path: &[(Tag, usize)], tag: Tag) {
    out.extend_from_slice(b",\"BulkDataURI\":\"");
    out.push(URI_PREFIX);
    for (seq, item) in path {
        out.push(b'/');
        out.extend_from_slice(&hex_tag(*seq));
        out.push(b'/');
        out.extend_from_slice(itoa::Buffer::new().format(*item).as_bytes());
    }
    out.push(b'/');
    out.extend_from_slice(&hex_tag(tag));
    out.push(b'"');
}

fn person_names(out: &mut Vec<u8>, text: &str) -> WriteResult {
    let values = || text.split('\\').map(trim_padding);
    if !only_empty(values(), pn_is_empty) {
        out.extend_from_slice(b",\"Value\":[");
        for (i, name) in values().enumerate() {
            comma_unless_first(out, i);
            person_name(out, name)?;
        }
        out.push(b']');
    }
    Ok(())
}

/// Writes `{"Alphabetic":…,"Ideographic":…,"Phonetic":…}` without empty groups, or `null`.
fn person_name(out: &mut Vec<u8>, name: &str) -> WriteResult {
    if pn_is_empty(name) {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    out.push(b'{');
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
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *out, group)?;
    }
    out.push(b'}');
    Ok(())
}

fn ints(out: &mut Vec<u8>, values: impl Iterator<Item = i128>) -> WriteResult {
    for (i, x) in values.enumerate() {
        comma_unless_first(out, i);
        int(out, x)?;
    }
    Ok(())
}

/// Writes the comma that separates a JSON array's or object's entries.
pub(super) fn comma_unless_first(out: &mut Vec<u8>, index: usize) {
    if index > 0 {
        out.push(b',');
    }
}

/// Writes an integer, as a string when a double cannot hold it exactly.
fn int(out: &mut Vec<u8>, x: i128) -> WriteResult {
    if let Ok(small) = i64::try_from(x)
        && small.unsigned_abs() <= MAX_EXACT_JSON_INT
    {
        out.extend_from_slice(itoa::Buffer::new().format(small).as_bytes());
    } else {
        serde_json::to_writer(&mut *out, &x.to_string())?;
    }
    Ok(())
}

/// Writes a double in its shortest form, integral values without `.0`, non-finite as `null`.
fn f64(out: &mut Vec<u8>, x: f64) -> WriteResult {
    if x.fract() == 0.0 && x.abs() <= MAX_EXACT_JSON_INT as f64 {
        // Exact: the value is integral and within ±2^53.
        int(out, i128::from(x as i64))
    } else {
        serde_json::to_writer(&mut *out, &x)?;
        Ok(())
    }
}

/// Writes a float in its shortest single-precision form, like [`f64()`].
fn f32(out: &mut Vec<u8>, x: f32) -> WriteResult {
    if x.fract() == 0.0 && f64::from(x).abs() <= MAX_EXACT_JSON_INT as f64 {
        int(out, i128::from(x as i64))
    } else {
        serde_json::to_writer(&mut *out, &x)?;
        Ok(())
    }
}

/// Writes IS or DS values: numbers, `null` when empty, the text itself when unparsable.
fn text_numbers(out: &mut Vec<u8>, text: &str, kind: Number) -> WriteResult {
    let values = || text.split('\\').map(str::trim);
    if !only_empty(values(), str::is_empty) {
        out.extend_from_slice(b",\"Value\":[");
        for (i, value) in values().enumerate() {
            comma_unless_first(out, i);
            number_text(out, value, kind)?;
        }
        out.push(b']');
    }
    Ok(())
}

/// Writes one trimmed textual number, `null` when empty, the text itself when unparsable.
fn number_text(out: &mut Vec<u8>, text: &str, kind: Number) -> WriteResult {
    if text.is_empty() {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    match kind {
        Number::Int => {
            if let Ok(x) = text.parse::<i128>() {
                return int(out, x);
            }
        }
        Number::Float => {
            if let Ok(x) = text.parse::<f64>()
                && x.is_finite()
            {
                return f64(out, x);
            }
        }
    }
    serde_json::to_writer(&mut *out, text)?;
    Ok(())
}

/// Writes LT, ST, UT or UR: one value, backslashes kept.
fn single_text(out: &mut Vec<u8>, text: &str) -> WriteResult {
    let text = trim_padding(text);
    if !text.is_empty() {
        out.extend_from_slice(b",\"Value\":[");
        serde_json::to_writer(&mut *out, text)?;
        out.push(b']');
    }
    Ok(())
}

fn multi_text(out: &mut Vec<u8>, text: &str) -> WriteResult {
    let values = || text.split('\\').map(trim_padding);
    if !only_empty(values(), str::is_empty) {
        out.extend_from_slice(b",\"Value\":[");
        for (i, value) in values().enumerate() {
            comma_unless_first(out, i);
            if value.is_empty() {
                out.extend_from_slice(b"null");
            } else {
                serde_json::to_writer(&mut *out, value)?;
            }
        }
        out.push(b']');
    }
    Ok(())
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

#[derive(Debug, Clone, Copy)]
enum Number {
    Int,
    Float,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The tag as 8 uppercase hex digits.
pub(super) fn hex_tag(tag: Tag) -> [u8; 8] {
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
