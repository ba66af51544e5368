//! Each VR's value as DICOM JSON (PS3.18 F.2): numbers, strings and multi-values, person
//! names, tags, and binary values inline or by reference, read from the value's bytes in the
//! data set's byte order and character set. The walk writes an attribute's key and `vr`; this
//! writes what follows them inside the attribute's object.
//!
//! Policies where F.2 leaves a choice:
//! - a non-finite FL/FD/OF/OD number (NaN, ±infinity) is written as `null`;
//! - an IS or DS value that does not parse as a number stays a (trimmed) string, as F.2.3
//!   allows, and so do integral IS, DS, SV and UV values beyond ±(2^53 − 1), which a JSON
//!   reader would round;
//! - an attribute whose only value is empty after removing padding (including a PN whose
//!   groups are all empty or hold only `^`) is written like a zero-length one, `{"vr":…}`;
//!   inside a multi-value such a value is `null`.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use dicom_core::{Tag, VR};

use super::WriteResult;
use super::charset::{Charset, Split};

/// The control characters that end a line of text and bring back the initial character
/// sets (PS3.5 6.1.2.5.3).
const TEXT_RESETS: &[u8] = b"\r\n\t\x0C";
/// What brings back the initial character sets inside a person name group.
const PN_RESETS: &[u8] = b"^";

// Integers beyond this lose precision in a JSON reader that uses doubles (JavaScript).
const MAX_EXACT_JSON_INT: u64 = (1 << 53) - 1;

/// Stands for the BulkDataURI prefix until the SOP Instance UID is known: a NUL byte, which
/// JSON text never holds unescaped.
pub(super) const URI_PREFIX: u8 = 0;

/// Writes values as JSON, read in the data set's byte order and declared character set.
pub(super) struct Encoder {
    big_endian: bool,
    charset: Charset,
    /// Little-endian value bytes and their base64.
    scratch: Vec<u8>,
    base64: String,
}

impl Encoder {
    /// An encoder for values in this byte order, in the default character set.
    pub(super) fn new(big_endian: bool) -> Self {
        Self {
            big_endian,
            charset: Charset::default(),
            scratch: Vec::new(),
            base64: String::new(),
        }
    }

    /// Reads words in this byte order from now on.
    pub(super) fn set_big_endian(&mut self, big_endian: bool) {
        self.big_endian = big_endian;
    }

    /// The first value of a US value.
    pub(super) fn first_u16(&self, bytes: &[u8]) -> Option<u16> {
        words(bytes, self.big_endian).next().map(u16::from_le_bytes)
    }

    /// The character sets that text is decoded in.
    pub(super) fn charset(&self) -> Charset {
        self.charset
    }

    /// Decodes text in `charset` from now on.
    pub(super) fn use_charset(&mut self, charset: Charset) {
        self.charset = charset;
    }

    /// Decodes text in the sets that a Specific Character Set (0008,0005) value declares.
    pub(super) fn declare_charset(&mut self, bytes: &[u8]) {
        let terms = String::from_utf8_lossy(bytes);
        self.charset = Charset::declared(terms.split('\\').map(trim_padding));
    }

    /// The values of a textual attribute, split on the backslashes that separate them and
    /// each decoded on its own (AE AS CS UR in the default repertoire); borrowed when the
    /// bytes are the text.
    pub(super) fn values<'a>(&self, vr: VR, bytes: &'a [u8]) -> Values<'a> {
        let charset = self.charset_of(vr);
        match charset.as_text(bytes) {
            Some(text) => Values::Text(text.split('\\')),
            None => Values::Decoded {
                parts: charset.split(bytes, b'\\'),
                charset,
            },
        }
    }

    /// The set that decodes values of `vr`.
    fn charset_of(&self, vr: VR) -> Charset {
        if matches!(vr, VR::AE | VR::AS | VR::CS | VR::UR) {
            Charset::default()
        } else {
            self.charset
        }
    }

    /// Writes the value's field (`,"Value":[…]` or `,"InlineBinary":…`), or nothing when it
    /// is empty.
    pub(super) fn write(&mut self, out: &mut Vec<u8>, vr: VR, bytes: &[u8]) -> WriteResult {
        match vr {
            VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
                self.inline_binary(out, vr, bytes);
                Ok(())
            }
            VR::SQ => Ok(()),
            VR::PN => person_names(out, &self.charset, bytes),
            VR::IS => text_numbers(out, self.values(vr, bytes), Number::Int),
            VR::DS => text_numbers(out, self.values(vr, bytes), Number::Float),
            VR::US | VR::SS | VR::UL | VR::SL | VR::SV | VR::UV | VR::FL | VR::FD => {
                self.binary_numbers(out, vr, bytes)
            }
            VR::AT => {
                self.tags(out, bytes);
                Ok(())
            }
            VR::LT | VR::ST | VR::UT | VR::UR => {
                single_text(out, &self.charset_of(vr).decode(bytes, TEXT_RESETS))
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
            | VR::UI => multi_text(out, self.values(vr, bytes)),
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

/// The values of a textual attribute, each decoded on its own (see [`Encoder::values`]).
#[derive(Clone)]
pub(super) enum Values<'a> {
    /// Bytes that are their text, split on their backslashes.
    Text(std::str::Split<'a, char>),
    /// Parts split in the bytes, then decoded.
    Decoded { parts: Split<'a>, charset: Charset },
}

impl<'a> Iterator for Values<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        match self {
            Values::Text(parts) => parts.next().map(Cow::Borrowed),
            Values::Decoded { parts, charset } => {
                let part = parts.next()?;
                Some(charset.decode(part, TEXT_RESETS))
            }
        }
    }
}

/// A person name's component groups, each decoded on its own, padding removed.
fn name_groups<'a>(charset: &Charset, name: &'a [u8]) -> impl Iterator<Item = Cow<'a, str>> {
    charset
        .split(name, b'=')
        .map(|group| match charset.decode(group, PN_RESETS) {
            Cow::Borrowed(text) => Cow::Borrowed(trim_padding(text)),
            Cow::Owned(text) => Cow::Owned(trim_padding(&text).to_owned()),
        })
}

fn person_names(out: &mut Vec<u8>, charset: &Charset, bytes: &[u8]) -> WriteResult {
    let charset = if charset.as_text(bytes).is_some() {
        &Charset::TEXT
    } else {
        charset
    };
    let names = || charset.split(bytes, b'\\');
    let empty = |name: &[u8]| name_groups(charset, name).all(|g| pn_group_is_empty(&g));
    if !only_empty(names(), empty) {
        out.extend_from_slice(b",\"Value\":[");
        for (i, name) in names().enumerate() {
            comma_unless_first(out, i);
            person_name(out, name_groups(charset, name))?;
        }
        out.push(b']');
    }
    Ok(())
}

/// Writes `{"Alphabetic":…,"Ideographic":…,"Phonetic":…}` without empty groups, or `null`
/// when every group is empty.
fn person_name<'a>(out: &mut Vec<u8>, groups: impl Iterator<Item = Cow<'a, str>>) -> WriteResult {
    let start = out.len();
    out.push(b'{');
    for (group, key) in groups.zip(["Alphabetic", "Ideographic", "Phonetic"]) {
        if pn_group_is_empty(&group) {
            continue;
        }
        if out.len() > start + 1 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *out, &*group)?;
    }
    if out.len() == start + 1 {
        out.truncate(start);
        out.extend_from_slice(b"null");
    } else {
        out.push(b'}');
    }
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
fn text_numbers(out: &mut Vec<u8>, values: Values<'_>, kind: Number) -> WriteResult {
    if !only_empty(values.clone(), |v| v.trim().is_empty()) {
        out.extend_from_slice(b",\"Value\":[");
        for (i, value) in values.enumerate() {
            comma_unless_first(out, i);
            number_text(out, value.trim(), kind)?;
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
            // An integral value beyond the exact range stays text, so no digit is lost.
            if let Ok(x) = text.parse::<f64>()
                && x.is_finite()
                && (x.fract() != 0.0 || x.abs() <= MAX_EXACT_JSON_INT as f64)
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

fn multi_text(out: &mut Vec<u8>, values: Values<'_>) -> WriteResult {
    if !only_empty(values.clone(), |v| trim_padding(&v).is_empty()) {
        out.extend_from_slice(b",\"Value\":[");
        for (i, value) in values.enumerate() {
            let value = trim_padding(&value);
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
fn only_empty<T>(mut values: impl Iterator<Item = T>, is_empty: impl Fn(T) -> bool) -> bool {
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(one), None) => is_empty(one),
        _ => false,
    }
}

/// A component group with no name in it: empty, or only `^` separators and spaces.
fn pn_group_is_empty(group: &str) -> bool {
    group.bytes().all(|b| b == b'^' || b == b' ')
}

#[cfg(test)]
mod tests {
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, Tag, VR, dicom_value};
    use dicom_dictionary_std::tags;
    use serde_json::json;

    use crate::series::convert::test_support::{
        SOP, assert_structure, element, explicit, explicit_le, explicit_le_with, fixture_json,
        from_bytes, in_memory, memory_json, parse, part10,
    };

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
                element(
                    tags::SLICE_LOCATION,
                    VR::DS,
                    "9007199254740993\\9007199254740991\\-12345678901234567890.0\\1e300",
                ),
                element(tags::NUMBER_OF_FRAMES, VR::IS, "   "),
            ],
            None,
        );
        assert_eq!(
            json["00201041"]["Value"],
            json!([
                "9007199254740993",
                9_007_199_254_740_991_i64,
                "-12345678901234567890.0",
                "1e300"
            ]),
            "integral DS beyond 2^53 keeps its digits"
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
    fn each_text_value_is_decoded_on_its_own_and_never_split_again() {
        // Latin-1 bytes labelled UTF-8, common in the field: U+FFFD inside the value.
        let obj = in_memory(vec![element(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            "ISO_IR 192",
        )]);
        let bytes = explicit_le_with(
            &obj,
            &[
                &explicit(tags::INSTITUTION_NAME, b"LO", b"M\xFCller\\Zo\xC3\xAB"),
                &explicit(tags::PATIENT_NAME, b"PN", b"M\xFCller^Hans\\Doe "),
            ],
        );
        let json = parse(from_bytes(&bytes, None).expect("converts").as_bytes());
        assert_eq!(json["00080080"]["Value"], json!(["M\u{FFFD}ller", "Zoë"]));
        assert_eq!(
            json["00100010"]["Value"],
            json!([{"Alphabetic": "M\u{FFFD}ller^Hans"}, {"Alphabetic": "Doe"}])
        );
    }

    #[test]
    fn iso_2022_names_are_decoded_per_group() {
        // pydicom's chrH31 (PS3.5 H.3.1): JIS X 0208 after ESC $ B, ASCII after ESC ( B.
        let obj = in_memory(vec![element(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            "\\ISO 2022 IR 87",
        )]);
        let name: &[u8] =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        let bytes = explicit_le_with(&obj, &[&explicit(tags::PATIENT_NAME, b"PN", name)]);
        let json = parse(from_bytes(&bytes, None).expect("converts").as_bytes());
        assert_eq!(
            json["00100010"]["Value"],
            json!([{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}])
        );
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
}
