//! Text in the character sets that Specific Character Set (0008,0005) declares (PS3.3
//! C.12.1.1.2, PS3.5 6.1): where a value, a person name group or a component ends in the
//! raw bytes, and each one decoded on its own, with ISO 2022 escape sequences switching
//! the G0 and G1 sets (PS3.5 6.1.2.5). The tables are encoding_rs' (WHATWG); only the
//! escape switching is written here. Bytes a set cannot decode become U+FFFD where they
//! stand, so they never add or split a value.

use std::borrow::Cow;

use encoding_rs::Encoding;

const ESC: u8 = 0x1B;

/// What decodes a run of bytes in which G0 is ASCII: the G1 set, or a whole encoding
/// without code extensions. Every one reads ASCII as ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    /// ISO 8859-1 byte for byte; also how the default repertoire is read when a byte is
    /// above 0x7F (as pydicom and dicom-rs do).
    Latin1,
    /// Another single-byte set; bytes 0x80-0x9F are the C1 controls, as in ISO 8859.
    SingleByte(&'static Encoding),
    /// UTF-8 (ISO_IR 192).
    Utf8,
    /// A multi-byte encoding: Shift_JIS (ISO_IR 13, whose single bytes are JIS X 0201),
    /// EUC-KR (ISO 2022 IR 149), GBK (ISO 2022 IR 58, GBK) or GB18030.
    MultiByte(&'static Encoding),
}

impl Code {
    /// Whether `byte` starts a two-byte character, whose second byte may look like a
    /// delimiter (a backslash is a valid second byte in Shift_JIS, GBK and GB18030).
    fn is_lead(self, byte: u8) -> bool {
        match self {
            Code::MultiByte(encoding) if encoding == encoding_rs::SHIFT_JIS => {
                matches!(byte, 0x81..=0x9F | 0xE0..=0xFC)
            }
            Code::MultiByte(_) => matches!(byte, 0x81..=0xFE),
            _ => false,
        }
    }

    /// Appends the decoded bytes to `out`.
    fn decode_into(self, bytes: &[u8], out: &mut String) {
        match self {
            Code::Latin1 => out.extend(bytes.iter().map(|&b| char::from(b))),
            Code::Utf8 => out.push_str(&String::from_utf8_lossy(bytes)),
            Code::SingleByte(encoding) => {
                // A single-byte decoder gives exactly one character per byte.
                let (text, _) = encoding.decode_without_bom_handling(bytes);
                out.extend(text.chars().zip(bytes).map(|(c, &b)| {
                    if (0x80..0xA0).contains(&b) {
                        char::from(b)
                    } else {
                        c
                    }
                }));
            }
            Code::MultiByte(encoding) => {
                out.push_str(&encoding.decode_without_bom_handling(bytes).0);
            }
        }
    }
}

/// What bytes 0x21-0x7E mean: the G0 set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    /// ASCII (ISO-IR 6), or JIS X 0201 Romaji (ISO-IR 14), read as ASCII.
    Ascii,
    /// JIS X 0208 (ISO-IR 87): two bytes a character.
    Jis0208,
    /// JIS X 0212 (ISO-IR 159): two bytes a character.
    Jis0212,
}

/// The sets in force at a point of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sets {
    g0: G0,
    g1: Code,
}

/// What an escape sequence switches to.
enum Switch {
    G0(G0),
    G1(Code),
}

/// A data set's declared character sets, as they decode text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Charset {
    /// The sets at the start of each value, group, component and line: value 1's.
    initial: Sets,
    /// Code extensions: escape sequences switch sets.
    extensions: bool,
}

impl Default for Charset {
    /// The default repertoire (ISO-IR 6).
    fn default() -> Self {
        Self {
            initial: Sets {
                g0: G0::Ascii,
                g1: Code::Latin1,
            },
            extensions: false,
        }
    }
}

impl Charset {
    /// Text that needs no decoding (see [`Charset::as_text`]): UTF-8, no code extensions.
    pub(super) const TEXT: Charset = Charset {
        initial: Sets {
            g0: G0::Ascii,
            g1: Code::Utf8,
        },
        extensions: false,
    };

    /// The character sets that the values of (0008,0005) declare, padding removed; an
    /// unknown or empty value 1 means the default repertoire, as pydicom reads it.
    pub(super) fn declared<'a>(terms: impl IntoIterator<Item = &'a str>) -> Self {
        let mut terms = terms.into_iter();
        let first = terms.next().unwrap_or_default().trim();
        let extensions = first.starts_with("ISO 2022") || terms.next().is_some();
        Self {
            initial: Sets {
                g0: G0::Ascii,
                g1: code_of(first).unwrap_or(Code::Latin1),
            },
            extensions,
        }
    }

    /// Whether the declared set is UTF-8, so that valid UTF-8 is the text itself.
    pub(super) fn is_utf8(&self) -> bool {
        self.initial.g1 == Code::Utf8
    }

    /// The parts of `bytes` between the `delimiter` bytes that stand for themselves (not
    /// inside a two-byte character); `bytes` with no delimiter is one part.
    pub(super) fn split<'a>(&self, bytes: &'a [u8], delimiter: u8) -> Split<'a> {
        Split {
            rest: Some(bytes),
            charset: *self,
            delimiter,
        }
    }

    /// The bytes as the text they are, when they need no decoding: ASCII, or valid UTF-8 in
    /// a UTF-8 data set, without escape sequences. Every delimiter in them stands for itself.
    pub(super) fn as_text<'a>(&self, bytes: &'a [u8]) -> Option<&'a str> {
        if self.extensions && bytes.contains(&ESC) {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        (text.is_ascii() || self.is_utf8()).then_some(text)
    }

    /// Decodes one value, name group or component, in which the bytes of `resets` bring
    /// back the initial sets (PS3.5 6.1.2.5.3): borrowed when the bytes are the text.
    pub(super) fn decode<'a>(&self, bytes: &'a [u8], resets: &[u8]) -> Cow<'a, str> {
        if let Some(text) = self.as_text(bytes) {
            return Cow::Borrowed(text);
        }
        if self.extensions && bytes.contains(&ESC) {
            return Cow::Owned(self.decode_escaped(bytes, resets));
        }
        let mut out = String::with_capacity(bytes.len() * 2);
        self.initial.g1.decode_into(bytes, &mut out);
        Cow::Owned(out)
    }

    /// Decodes a value with escape sequences: runs of one set at a time.
    fn decode_escaped(&self, bytes: &[u8], resets: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len() * 2);
        let mut sets = self.initial;
        let (mut i, mut run) = (0, 0);
        while i < bytes.len() {
            let byte = bytes[i];
            if byte == ESC
                && let Some((len, switch)) = escape(&bytes[i..])
            {
                sets.g1.decode_into(&bytes[run..i], &mut out);
                match switch {
                    Switch::G0(g0) => sets.g0 = g0,
                    Switch::G1(g1) => sets.g1 = g1,
                }
                i += len;
                run = i;
                continue;
            }
            if sets.g0 != G0::Ascii {
                if is_graphic(byte) {
                    sets.g1.decode_into(&bytes[run..i], &mut out);
                    let end = bytes[i..]
                        .iter()
                        .position(|&b| !is_graphic(b))
                        .map_or(bytes.len(), |n| i + n);
                    decode_jis(sets.g0, &bytes[i..end], &mut out);
                    i = end;
                    run = i;
                    continue;
                }
                if byte < 0x21 {
                    // A control character ends the two-byte set.
                    sets.g0 = G0::Ascii;
                }
            }
            if resets.contains(&byte) && sets != self.initial {
                sets.g1.decode_into(&bytes[run..i], &mut out);
                sets = self.initial;
                run = i;
            }
            i += if sets.g1.is_lead(byte) { 2 } else { 1 };
        }
        sets.g1.decode_into(&bytes[run..bytes.len()], &mut out);
        out
    }
}

/// Parts of a value between delimiters (see [`Charset::split`]).
#[derive(Clone)]
pub(super) struct Split<'a> {
    rest: Option<&'a [u8]>,
    charset: Charset,
    delimiter: u8,
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match self.delimiter_at(rest) {
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

impl Split<'_> {
    /// Where the next delimiter that stands for itself is; each part starts in the
    /// initial sets.
    fn delimiter_at(&self, bytes: &[u8]) -> Option<usize> {
        let mut sets = self.charset.initial;
        let simple = !self.charset.extensions && !matches!(sets.g1, Code::MultiByte(_));
        if simple {
            return bytes.iter().position(|&b| b == self.delimiter);
        }
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            if byte == ESC
                && self.charset.extensions
                && let Some((len, switch)) = escape(&bytes[i..])
            {
                match switch {
                    Switch::G0(g0) => sets.g0 = g0,
                    Switch::G1(g1) => sets.g1 = g1,
                }
                i += len;
                continue;
            }
            if sets.g0 != G0::Ascii {
                if is_graphic(byte) {
                    i += 2;
                    continue;
                }
                if byte < 0x21 {
                    sets.g0 = G0::Ascii;
                }
            }
            if byte == self.delimiter {
                return Some(i);
            }
            i += if sets.g1.is_lead(byte) { 2 } else { 1 };
        }
        None
    }
}

/// A byte of a two-byte G0 character.
fn is_graphic(byte: u8) -> bool {
    (0x21..=0x7E).contains(&byte)
}

/// Decodes JIS X 0208 or 0212 byte pairs, as EUC-JP writes them (each byte with its high
/// bit set, 0212 after 0x8F), with encoding_rs' EUC-JP tables.
fn decode_jis(g0: G0, pairs: &[u8], out: &mut String) {
    let mut euc = Vec::with_capacity(pairs.len() * 3 / 2 + 1);
    for pair in pairs.chunks(2) {
        if g0 == G0::Jis0212 {
            euc.push(0x8F);
        }
        euc.extend(pair.iter().map(|b| b | 0x80));
    }
    out.push_str(&encoding_rs::EUC_JP.decode_without_bom_handling(&euc).0);
}

/// The escape sequence at the start of `bytes` (PS3.3 tables C.12-3 and C.12-4): its
/// length and what it switches to.
fn escape(bytes: &[u8]) -> Option<(usize, Switch)> {
    use encoding_rs::{
        EUC_KR, GBK, ISO_8859_2, ISO_8859_3, ISO_8859_4, ISO_8859_5, ISO_8859_6, ISO_8859_7,
        ISO_8859_8, ISO_8859_15, SHIFT_JIS, WINDOWS_874, WINDOWS_1254,
    };
    let found = match bytes.get(1..)? {
        [b'(', b'B' | b'J', ..] => (3, Switch::G0(G0::Ascii)),
        [b'$', b'B', ..] => (3, Switch::G0(G0::Jis0208)),
        [b'$', b'(', b'D', ..] => (4, Switch::G0(G0::Jis0212)),
        [b')', b'I', ..] => (3, Switch::G1(Code::MultiByte(SHIFT_JIS))),
        [b'$', b')', b'C', ..] => (4, Switch::G1(Code::MultiByte(EUC_KR))),
        [b'$', b')', b'A', ..] => (4, Switch::G1(Code::MultiByte(GBK))),
        [b'-', last, ..] => {
            let code = match last {
                b'A' => Code::Latin1,
                b'B' => Code::SingleByte(ISO_8859_2),
                b'C' => Code::SingleByte(ISO_8859_3),
                b'D' => Code::SingleByte(ISO_8859_4),
                b'F' => Code::SingleByte(ISO_8859_7),
                b'G' => Code::SingleByte(ISO_8859_6),
                b'H' => Code::SingleByte(ISO_8859_8),
                b'L' => Code::SingleByte(ISO_8859_5),
                b'M' => Code::SingleByte(WINDOWS_1254),
                b'T' => Code::SingleByte(WINDOWS_874),
                b'b' => Code::SingleByte(ISO_8859_15),
                _ => return None,
            };
            (3, Switch::G1(code))
        }
        _ => return None,
    };
    Some(found)
}

/// The set that a defined term (PS3.3 tables C.12-2 to C.12-5) puts in G1, or that
/// decodes everything when it has no code extensions.
fn code_of(term: &str) -> Option<Code> {
    use encoding_rs::{
        EUC_KR, GB18030, GBK, ISO_8859_2, ISO_8859_3, ISO_8859_4, ISO_8859_5, ISO_8859_6,
        ISO_8859_7, ISO_8859_8, ISO_8859_15, SHIFT_JIS, WINDOWS_874, WINDOWS_1254,
    };
    let ir = term
        .strip_prefix("ISO_IR ")
        .or_else(|| term.strip_prefix("ISO 2022 IR "));
    let code = match (ir, term) {
        (None, "") | (Some("6" | "87" | "159" | "100"), _) => Code::Latin1,
        (Some("101"), _) => Code::SingleByte(ISO_8859_2),
        (Some("109"), _) => Code::SingleByte(ISO_8859_3),
        (Some("110"), _) => Code::SingleByte(ISO_8859_4),
        (Some("144"), _) => Code::SingleByte(ISO_8859_5),
        (Some("127"), _) => Code::SingleByte(ISO_8859_6),
        (Some("126"), _) => Code::SingleByte(ISO_8859_7),
        (Some("138"), _) => Code::SingleByte(ISO_8859_8),
        // ISO 8859-9 and TIS 620-2533 as their Windows supersets, which differ only in
        // 0x80-0x9F, read as C1 controls here.
        (Some("148"), _) => Code::SingleByte(WINDOWS_1254),
        (Some("166"), _) => Code::SingleByte(WINDOWS_874),
        (Some("203"), _) => Code::SingleByte(ISO_8859_15),
        (Some("13"), _) => Code::MultiByte(SHIFT_JIS),
        (Some("149"), _) => Code::MultiByte(EUC_KR),
        (Some("58"), _) | (None, "GBK" | "GB2312" | "ISO 2022 GBK" | "ISO 2022 58") => {
            Code::MultiByte(GBK)
        }
        (None, "GB18030") => Code::MultiByte(GB18030),
        (Some("192"), _) => Code::Utf8,
        _ => return None,
    };
    Some(code)
}

#[cfg(test)]
mod tests {
    use dicom_core::{Tag, VR};
    use dicom_dictionary_std::tags;
    use serde_json::json;

    use super::*;
    use crate::series::convert::test_support::{
        ITEM, ITEM_END, SEQUENCE_END, element, explicit, explicit_le_with, from_bytes, in_memory,
        parse, undefined,
    };

    /// Resets of text values and of person name components.
    const TEXT: &[u8] = b"\r\n\t\x0C";
    const PN: &[u8] = b"^";

    fn charset(terms: &str) -> Charset {
        Charset::declared(terms.split('\\'))
    }

    fn values(charset: &Charset, bytes: &[u8], delimiter: u8, resets: &[u8]) -> Vec<String> {
        charset
            .split(bytes, delimiter)
            .map(|part| charset.decode(part, resets).into_owned())
            .collect()
    }

    #[test]
    fn undecodable_bytes_stay_inside_their_value() {
        let utf8 = charset("ISO_IR 192");
        assert_eq!(
            values(&utf8, b"M\xFCller\\Zo\xC3\xAB", b'\\', TEXT),
            ["M\u{FFFD}ller", "Zoë"]
        );
        let gb = charset("GB18030");
        assert_eq!(values(&gb, b"\xFF\\a", b'\\', TEXT), ["\u{FFFD}", "a"]);
    }

    #[test]
    fn ascii_and_valid_utf8_are_borrowed() {
        let text = b"Doe^John";
        assert!(matches!(
            Charset::default().decode(text, PN),
            Cow::Borrowed("Doe^John")
        ));
        let utf8 = "Müller".as_bytes();
        assert!(matches!(
            charset("ISO_IR 192").decode(utf8, TEXT),
            Cow::Borrowed("Müller")
        ));
        assert!(matches!(
            charset("ISO_IR 100").decode(utf8, TEXT),
            Cow::Owned(_)
        ));
    }

    #[test]
    fn single_byte_sets_without_extensions() {
        let cases: [(&str, &[u8], &str); 7] = [
            ("ISO_IR 100", b"Buc^J\xe9r\xf4me", "Buc^Jérôme"),
            ("ISO_IR 127", b"\xe2\xc8\xc7\xe6\xea", "قباني"),
            ("ISO_IR 126", b"\xc4\xe9\xef\xed", "Διον"),
            ("ISO_IR 138", b"\xf9\xf8\xe5\xef", "שרון"),
            ("ISO_IR 144", b"\xbb\xee\xda", "Люк"),
            ("", b"Gen\xe8ve", "Genève"),
            ("ISO_IR 148", b"\x80\xd0", "\u{80}Ğ"),
        ];
        for (terms, bytes, text) in cases {
            assert_eq!(charset(terms).decode(bytes, TEXT), text, "{terms}");
        }
    }

    #[test]
    fn japanese_escapes_per_name_group() {
        // pydicom's chrH31 and chrH32 (PS3.5 H.3.1 and H.3.2).
        let h31 = charset("\\ISO 2022 IR 87");
        let name =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(
            values(&h31, name, b'=', PN),
            ["Yamada^Tarou", "山田^太郎", "やまだ^たろう"]
        );
        let h32 = charset("ISO 2022 IR 13\\ISO 2022 IR 87");
        let name = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        assert_eq!(
            values(&h32, name, b'=', PN),
            ["ﾔﾏﾀﾞ^ﾀﾛｳ", "山田^太郎", "やまだ^たろう"]
        );
    }

    #[test]
    fn a_delimiter_byte_inside_a_two_byte_character_does_not_split() {
        // 0x5C21 is 棔 in JIS X 0208, 0x955C is 表 in Shift_JIS and 0x815C is 乗 in GBK (as
        // Python decodes them): each holds a backslash byte.
        let jis = charset("\\ISO 2022 IR 87");
        assert_eq!(
            values(&jis, b"\x1b$B\x5c\x21\x1b(B\\b", b'\\', TEXT),
            ["棔", "b"]
        );
        let sjis = charset("ISO_IR 13");
        assert_eq!(values(&sjis, b"\x95\x5c\\b", b'\\', TEXT), ["表", "b"]);
        let gbk = charset("GBK");
        assert_eq!(values(&gbk, b"\x81\x5c\\b", b'\\', TEXT), ["乗", "b"]);
    }

    #[test]
    fn korean_chinese_and_supplementary_japanese_sets() {
        // pydicom's chrI2 (PS3.5 I.2) and chrKoreanMulti.
        let korean = charset("\\ISO 2022 IR 149");
        let name = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(
            values(&korean, name, b'=', PN),
            ["Hong^Gildong", "洪^吉洞", "홍^길동"]
        );
        // GB 2312 in G1 (PS3.5 K.2): 王 is 0xCDF5.
        let chinese = charset("\\ISO 2022 IR 58");
        assert_eq!(chinese.decode(b"\x1b$)A\xcd\xf5^Wang", PN), "王^Wang");
        // JIS X 0212 0x3021 is 丂 (U+4E02), as Python's iso2022_jp_2 decodes it.
        let supplementary = charset("\\ISO 2022 IR 159");
        assert_eq!(supplementary.decode(b"\x1b$(D\x30\x21\x1b(B", PN), "丂");
    }

    #[test]
    fn single_byte_escapes_and_resets_at_delimiters() {
        let latin = charset("ISO 2022 IR 6\\ISO 2022 IR 100\\ISO 2022 IR 144");
        // Cyrillic in G1 until the line ends, then value 1's sets again (PS3.5 6.1.2.5.3).
        assert_eq!(latin.decode(b"\x1b-L\xbb\xee\r\n\xe9", TEXT), "Лю\r\né");
        assert_eq!(latin.decode(b"\x1b-L\xbb^\xe9", PN), "Л^é");
        // An unknown escape is kept as the control character it is.
        assert_eq!(latin.decode(b"\x1b%Gx", TEXT), "\u{1b}%Gx");
    }

    #[test]
    fn an_item_character_set_ends_with_its_item() {
        let obj = in_memory(vec![element(
            tags::SPECIFIC_CHARACTER_SET,
            VR::CS,
            "ISO_IR 192",
        )]);
        let bytes = explicit_le_with(
            &obj,
            &[
                &undefined(tags::REFERENCED_SERIES_SEQUENCE, Some(b"SQ"), false),
                &undefined(ITEM, None, false),
                &explicit(tags::SPECIFIC_CHARACTER_SET, b"CS", b"ISO_IR 100"),
                &explicit(tags::PATIENT_NAME, b"PN", b"J\xe9r\xf4me "),
                &undefined(ITEM_END, None, false),
                &undefined(SEQUENCE_END, None, false),
                &explicit(Tag(0x0010, 0x0010), b"PN", "Müller ".as_bytes()),
            ],
        );
        let json = parse(from_bytes(&bytes, None).expect("converts").as_bytes());
        let item = &json["00081115"]["Value"][0];
        assert_eq!(item["00100010"]["Value"], json!([{"Alphabetic": "Jérôme"}]));
        assert_eq!(
            json["00100010"]["Value"],
            json!([{"Alphabetic": "Müller"}]),
            "UTF-8 again after the item"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_split_and_decode_without_panicking(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"\x1b$()BDCAIJ-\\^=\r!~\x80\xa1\xfe".to_vec()),
                    proptest::prelude::any::<u8>(),
                ],
                0..48,
            ),
            terms in proptest::sample::select(vec![
                "ISO_IR 192",
                "\\ISO 2022 IR 87\\ISO 2022 IR 159",
                "ISO 2022 IR 13\\ISO 2022 IR 87",
                "\\ISO 2022 IR 149\\ISO 2022 IR 58",
                "GB18030",
                "ISO_IR 13",
            ]),
        ) {
            let charset = charset(terms);
            let parts: Vec<&[u8]> = charset.split(&bytes, b'\\').collect();
            let joined: usize = parts.iter().map(|p| p.len() + 1).sum();
            proptest::prop_assert_eq!(joined, bytes.len() + 1, "parts and delimiters are the bytes");
            for part in parts {
                let _ = charset.decode(part, PN);
            }
        }
    }
}
