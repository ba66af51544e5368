//! Ingest events parsed and validated from a stream entry's raw fields (no I/O).

use serde::Deserialize;

use crate::ids::{IdError, TenantId, Uid};

/// Largest accepted field value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4 * 1024;
/// Most fields accepted in one entry.
pub const MAX_FIELDS: usize = 64;
/// Largest accepted entry (names and values), in bytes.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// A stream entry's field name and value, as raw bytes.
pub type Field = (Vec<u8>, Vec<u8>);

/// What happened to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The instance was stored and committed to the database.
    Stored,
    /// The study was deleted.
    Deleted,
}

/// One validated ingest event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestEvent {
    /// The tenant the study belongs to.
    pub tenant: TenantId,
    /// Study Instance UID.
    pub study: Uid,
    /// Series Instance UID, when the producer sent it.
    pub series: Option<Uid>,
    /// SOP Instance UID, when the producer sent it.
    pub sop: Option<Uid>,
    /// Stored or deleted.
    pub kind: EventKind,
}

/// Why an entry is not a valid event; its `Display` is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The entry has no fields at all (it was deleted from the stream).
    #[error("entry has no fields")]
    Empty,
    /// More fields than [`MAX_FIELDS`].
    #[error("entry has {0} fields, more than {MAX_FIELDS}")]
    TooManyFields(usize),
    /// Names and values larger than [`MAX_ENTRY_BYTES`].
    #[error("entry is {0} bytes, more than {MAX_ENTRY_BYTES}")]
    EntryTooLarge(usize),
    /// A value larger than [`MAX_VALUE_BYTES`].
    #[error("field {0}: value is larger than {MAX_VALUE_BYTES} bytes")]
    ValueTooLarge(&'static str),
    /// A field name or a known field's value is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A known field appears twice.
    #[error("field {0} appears more than once")]
    DuplicateField(&'static str),
    /// A required field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A tenant id or UID that fails validation.
    #[error("{field}: {reason}")]
    InvalidId {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: IdError,
    },
    /// An `event` other than `stored` or `deleted`.
    #[error("event: must be `stored` or `deleted`")]
    UnknownKind,
    /// A `payload` that is not a JSON object of strings.
    #[error("payload: {0}")]
    BadPayload(String),
}

impl EventError {
    /// Every [`kind`](Self::kind), for metrics that exist before the first bad entry.
    pub const KINDS: [&'static str; 8] = [
        "empty",
        "oversize",
        "not_utf8",
        "duplicate_field",
        "missing_field",
        "invalid_id",
        "unknown_event",
        "bad_payload",
    ];

    /// A short, fixed name for the kind of problem (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooManyFields(_) | Self::EntryTooLarge(_) | Self::ValueTooLarge(_) => "oversize",
            Self::NotUtf8(_) => "not_utf8",
            Self::DuplicateField(_) => "duplicate_field",
            Self::MissingField(_) => "missing_field",
            Self::InvalidId { .. } => "invalid_id",
            Self::UnknownKind => "unknown_event",
            Self::BadPayload(_) => "bad_payload",
        }
    }
}

/// The fields an event is made of, as text, before validation.
#[derive(Debug, Default, Deserialize)]
struct RawEvent {
    tenant_id: Option<String>,
    study_uid: Option<String>,
    series_uid: Option<String>,
    sop_uid: Option<String>,
    event: Option<String>,
}

const KNOWN_FIELDS: [&str; 6] = [
    "tenant_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "event",
    "payload",
];

/// Parses a stream entry's fields, flat or as one JSON `payload` field, into an event.
pub fn parse(fields: &[Field]) -> Result<IngestEvent, EventError> {
    check_size(fields)?;
    let mut raw = RawEvent::default();
    let mut payload = None;
    for (name, value) in fields {
        let name = std::str::from_utf8(name).map_err(|_| EventError::NotUtf8("a field name"))?;
        // Unknown fields are the producer's business: they are ignored, not validated.
        let Some(&field) = KNOWN_FIELDS.iter().find(|known| **known == name) else {
            continue;
        };
        let value = std::str::from_utf8(value).map_err(|_| EventError::NotUtf8(field))?;
        let slot = match field {
            "tenant_id" => &mut raw.tenant_id,
            "study_uid" => &mut raw.study_uid,
            "series_uid" => &mut raw.series_uid,
            "sop_uid" => &mut raw.sop_uid,
            "event" => &mut raw.event,
            _ => &mut payload,
        };
        if slot.replace(value.to_owned()).is_some() {
            return Err(EventError::DuplicateField(field));
        }
    }
    if let Some(payload) = payload {
        // Through a map first: serde would otherwise accept an array as the struct's fields.
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&payload).map_err(|e| EventError::BadPayload(e.to_string()))?;
        raw = serde_json::from_value(object.into())
            .map_err(|e| EventError::BadPayload(e.to_string()))?;
    }
    validate(raw)
}

fn check_size(fields: &[Field]) -> Result<(), EventError> {
    if fields.is_empty() {
        return Err(EventError::Empty);
    }
    if fields.len() > MAX_FIELDS {
        return Err(EventError::TooManyFields(fields.len()));
    }
    let total: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_ENTRY_BYTES {
        return Err(EventError::EntryTooLarge(total));
    }
    match fields
        .iter()
        .find(|(_, value)| value.len() > MAX_VALUE_BYTES)
    {
        Some((name, _)) => Err(EventError::ValueTooLarge(known_name(name))),
        None => Ok(()),
    }
}

/// A known field's name, or `(unknown)`.
fn known_name(name: &[u8]) -> &'static str {
    KNOWN_FIELDS
        .iter()
        .find(|known| known.as_bytes() == name)
        .copied()
        .unwrap_or("(unknown)")
}

/// The original size of an entry that was cut down when read (by the bounded reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    /// Its names and values, in bytes.
    pub bytes: usize,
    /// Its fields.
    pub fields: usize,
    /// The index of its first value over [`MAX_VALUE_BYTES`], if any.
    pub large_value: Option<usize>,
}

impl Oversize {
    /// Why the entry is refused: the same reason as if it had been read whole; `kept` are
    /// its fields as cut down.
    pub fn error(&self, kept: &[Field]) -> EventError {
        if self.fields > MAX_FIELDS {
            EventError::TooManyFields(self.fields)
        } else if self.bytes > MAX_ENTRY_BYTES {
            EventError::EntryTooLarge(self.bytes)
        } else {
            let name = self
                .large_value
                .and_then(|index| kept.get(index))
                .map_or("(unknown)", |(name, _)| known_name(name));
            EventError::ValueTooLarge(name)
        }
    }
}

/// True when the entry is refused for its size (too many fields, too many bytes, or a
/// value too large).
pub fn is_oversize(fields: &[Field]) -> bool {
    check_size(fields).is_err_and(|error| error.kind() == "oversize")
}

fn validate(raw: RawEvent) -> Result<IngestEvent, EventError> {
    let invalid = |field| move |reason| EventError::InvalidId { field, reason };
    let tenant = raw.tenant_id.ok_or(EventError::MissingField("tenant_id"))?;
    let study = raw.study_uid.ok_or(EventError::MissingField("study_uid"))?;
    let kind = match raw.event.as_deref() {
        None | Some("stored") => EventKind::Stored,
        Some("deleted") => EventKind::Deleted,
        Some(_) => return Err(EventError::UnknownKind),
    };
    let optional_uid = |value: Option<String>, field| {
        value
            .map(|v| Uid::parse(&v).map_err(invalid(field)))
            .transpose()
    };
    Ok(IngestEvent {
        tenant: TenantId::parse(&tenant).map_err(invalid("tenant_id"))?,
        study: Uid::parse(&study).map_err(invalid("study_uid"))?,
        series: optional_uid(raw.series_uid, "series_uid")?,
        sop: optional_uid(raw.sop_uid, "sop_uid")?,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed() {
        let errors = [
            EventError::Empty,
            EventError::TooManyFields(65),
            EventError::EntryTooLarge(1),
            EventError::ValueTooLarge("f"),
            EventError::NotUtf8("f"),
            EventError::DuplicateField("f"),
            EventError::MissingField("f"),
            EventError::InvalidId {
                field: "f",
                reason: IdError::Empty,
            },
            EventError::UnknownKind,
            EventError::BadPayload(String::new()),
        ];
        for error in errors {
            assert!(EventError::KINDS.contains(&error.kind()), "{error:?}");
        }
    }

    fn entry(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn flat_entry_with_every_field() {
        let event = parse(&entry(&[
            ("tenant_id", "t1"),
            ("study_uid", "1.2.3"),
            ("series_uid", "1.2.3.4"),
            ("sop_uid", "1.2.3.4.5"),
            ("event", "stored"),
            ("producer", "ignored"),
        ]))
        .expect("valid");
        assert_eq!(event.tenant.as_str(), "t1");
        assert_eq!(event.study.as_str(), "1.2.3");
        assert_eq!(event.series.as_ref().map(Uid::as_str), Some("1.2.3.4"));
        assert_eq!(event.sop.as_ref().map(Uid::as_str), Some("1.2.3.4.5"));
        assert_eq!(event.kind, EventKind::Stored);
    }

    #[test]
    fn event_defaults_to_stored_and_accepts_deleted() {
        let minimal = parse(&entry(&[("tenant_id", "t"), ("study_uid", "1")])).expect("valid");
        assert_eq!(minimal.kind, EventKind::Stored);
        assert_eq!(minimal.series, None);
        let deleted = parse(&entry(&[
            ("tenant_id", "t"),
            ("study_uid", "1"),
            ("event", "deleted"),
        ]))
        .expect("valid");
        assert_eq!(deleted.kind, EventKind::Deleted);
    }

    #[test]
    fn payload_entry_ignores_other_keys() {
        let event = parse(&entry(&[(
            "payload",
            r#"{"tenant_id":"t","study_uid":"1.2","series_uid":"1.2.3","sop_uid":null,"file_size":17,"extra":{"a":1}}"#,
        )]))
        .expect("valid");
        assert_eq!(event.study.as_str(), "1.2");
        assert_eq!(event.series.as_ref().map(Uid::as_str), Some("1.2.3"));
        assert_eq!(event.sop, None);
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let big = "1".repeat(MAX_VALUE_BYTES + 1);
        let many: Vec<(String, String)> = (0..=MAX_FIELDS)
            .map(|i| (format!("f{i}"), "v".to_owned()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let cases: Vec<(Vec<Field>, &str)> = vec![
            (vec![], "entry has no fields"),
            (entry(&[("study_uid", "1")]), "missing field tenant_id"),
            (entry(&[("tenant_id", "t")]), "missing field study_uid"),
            (
                entry(&[("tenant_id", "a/b"), ("study_uid", "1")]),
                "tenant_id: holds `/`, `\\` or a control character",
            ),
            (
                entry(&[("tenant_id", "a\\b"), ("study_uid", "1")]),
                "tenant_id: holds `/`",
            ),
            (
                entry(&[("tenant_id", "a\tb"), ("study_uid", "1")]),
                "tenant_id: holds `/`",
            ),
            (
                entry(&[("tenant_id", ".."), ("study_uid", "1")]),
                "tenant_id: is `.` or `..`",
            ),
            (
                entry(&[("tenant_id", "."), ("study_uid", "1")]),
                "tenant_id: is `.` or `..`",
            ),
            (
                entry(&[("tenant_id", "t\n"), ("study_uid", "1")]),
                "tenant_id: holds `/`, `\\` or a control character",
            ),
            (
                entry(&[("tenant_id", "t\0"), ("study_uid", "1")]),
                "tenant_id: holds `/`, `\\` or a control character",
            ),
            (
                entry(&[("tenant_id", ""), ("study_uid", "1")]),
                "tenant_id: is empty",
            ),
            (
                entry(&[("tenant_id", &"t".repeat(65)), ("study_uid", "1")]),
                "tenant_id: is longer",
            ),
            (
                entry(&[("tenant_id", "t"), ("study_uid", "1.2.x")]),
                "study_uid: holds a character",
            ),
            (
                entry(&[("tenant_id", "t"), ("study_uid", "1..2")]),
                "study_uid: has an empty",
            ),
            (
                entry(&[("tenant_id", "t"), ("study_uid", "1.2.")]),
                "study_uid: has an empty",
            ),
            (
                entry(&[("tenant_id", "t"), ("study_uid", &"1".repeat(65))]),
                "study_uid: is longer",
            ),
            (
                entry(&[
                    ("tenant_id", "t"),
                    ("study_uid", "1"),
                    ("series_uid", "1:2"),
                ]),
                "series_uid: holds",
            ),
            (
                entry(&[("tenant_id", "t"), ("study_uid", "1"), ("sop_uid", "")]),
                "sop_uid: is empty",
            ),
            (
                entry(&[("tenant_id", "t"), ("study_uid", "1"), ("event", "updated")]),
                "event: must be",
            ),
            (
                entry(&[("tenant_id", "t"), ("study_uid", &big)]),
                "field study_uid: value is larger",
            ),
            (entry(&many), "fields, more than 64"),
            (
                entry(&[("tenant_id", "t"), ("tenant_id", "u"), ("study_uid", "1")]),
                "field tenant_id appears more",
            ),
            (entry(&[("payload", "{not json")]), "payload: "),
            (entry(&[("payload", r#"["t","1"]"#)]), "payload: "),
            (
                entry(&[("payload", r#"["t","1",null,null,null]"#)]),
                "payload: ",
            ),
            (
                entry(&[("payload", r#"{"tenant_id":7,"study_uid":"1"}"#)]),
                "payload: ",
            ),
            (
                entry(&[("payload", r#"{"study_uid":"1"}"#)]),
                "missing field tenant_id",
            ),
            (
                entry(&[("payload", r#"{"tenant_id":"t","study_uid":"1/2"}"#)]),
                "study_uid: holds",
            ),
            (
                vec![
                    (b"tenant_id".to_vec(), vec![0xff, 0xfe]),
                    (b"study_uid".to_vec(), b"1".to_vec()),
                ],
                "tenant_id is not UTF-8",
            ),
            (
                vec![(vec![0xc3, 0x28], b"x".to_vec())],
                "a field name is not UTF-8",
            ),
        ];
        for (fields, want) in cases {
            let err = parse(&fields).expect_err(want);
            assert!(
                err.to_string().starts_with(want) || err.to_string().contains(want),
                "{want:?} but got {err}"
            );
        }
    }

    #[test]
    fn an_oversized_entry_is_refused() {
        let fields: Vec<Field> = (0..20)
            .map(|i| (format!("f{i}").into_bytes(), vec![b'x'; 4000]))
            .collect();
        assert!(matches!(parse(&fields), Err(EventError::EntryTooLarge(_))));
    }
}
