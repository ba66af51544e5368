//! The event parser on arbitrary stream entries: it never panics, every refusal has a
//! reason, and nothing it accepts can leave the key namespace.

use std::sync::atomic::{AtomicUsize, Ordering};

use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use dicom_cache_warmer::{Field, IngestEvent, parse_event};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};

const CASES: u32 = 2_000;
const KNOWN_NAMES: [&str; 6] = [
    "tenant_id",
    "study_uid",
    "series_uid",
    "sop_uid",
    "event",
    "payload",
];

/// Characters that would let a value escape a key or a path, or be read as a pattern.
const HOSTILE: [&str; 14] = [
    ":", "*", "{", "}", "/", " ", "..", "\n", "\0", "\u{7f}", "?", "[", "é", "\\",
];

fn valid_uid() -> impl Strategy<Value = String> {
    "[1-9][0-9]{0,4}(\\.(0|[1-9][0-9]{0,4})){0,10}"
}

fn valid_tenant() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:é病 -][A-Za-z0-9._:é病 *{}-]{0,20}".prop_filter("not `..`", |t| t != "..")
}

/// A valid value with one hostile piece spliced in somewhere.
fn spliced(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        valid,
        prop::sample::select(HOSTILE.to_vec()),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(value, bad, at)| {
            let boundaries: Vec<usize> = value
                .char_indices()
                .map(|(i, _)| i)
                .chain([value.len()])
                .collect();
            let at = boundaries[at.index(boundaries.len())];
            format!("{}{bad}{}", &value[..at], &value[at..])
        })
}

/// Text close to what a field should hold: valid, almost valid, or at the edges.
fn near_valid_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => valid_uid(),
        3 => valid_tenant(),
        2 => spliced(valid_uid()),
        2 => spliced(valid_tenant()),
        1 => "[0-9.]{0,70}",
        1 => "[A-Za-z0-9._-]{60,70}",
        1 => Just(String::new()),
        1 => Just(".".to_owned()),
        1 => prop::sample::select(vec!["stored", "deleted", "Stored", "stored ", "", "updated"])
            .prop_map(str::to_owned),
        1 => ".{0,20}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        near_valid_text().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object using the known keys (with near-valid or arbitrary values) and others.
fn json_payload() -> impl Strategy<Value = String> {
    let known = prop::collection::btree_map(
        prop::sample::select(KNOWN_NAMES[..5].to_vec()),
        prop_oneof![3 => near_valid_text().prop_map(Value::String), 1 => json_value()],
        0..6,
    );
    let others = prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..3);
    let object = (known, others).prop_map(|(known, others)| {
        let mut object: Map<String, Value> = others.into_iter().collect();
        object.extend(known.into_iter().map(|(k, v)| (k.to_owned(), v)));
        Value::Object(object).to_string()
    });
    prop_oneof![
        6 => object,
        1 => json_value().prop_map(|v| v.to_string()),
        1 => ".{0,40}",
    ]
}

fn field_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(KNOWN_NAMES.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
        1 => "[a-z_]{0,12}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => near_valid_text().prop_map(String::into_bytes),
        3 => json_payload().prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..80),
    ]
}

/// A valid event as flat fields.
fn valid_flat_entry() -> impl Strategy<Value = Vec<Field>> {
    (
        valid_tenant(),
        valid_uid(),
        prop::option::of(valid_uid()),
        prop::option::of(valid_uid()),
        prop::option::of(prop::sample::select(vec!["stored", "deleted"])),
    )
        .prop_map(|(tenant, study, series, sop, kind)| {
            let mut fields = vec![
                (b"tenant_id".to_vec(), tenant.into_bytes()),
                (b"study_uid".to_vec(), study.into_bytes()),
            ];
            fields.extend(series.map(|s| (b"series_uid".to_vec(), s.into_bytes())));
            fields.extend(sop.map(|s| (b"sop_uid".to_vec(), s.into_bytes())));
            fields.extend(kind.map(|k| (b"event".to_vec(), k.as_bytes().to_vec())));
            fields
        })
}

/// An entry built around a valid event (flat or as a payload) with one field changed.
fn near_valid_entry() -> impl Strategy<Value = Vec<Field>> {
    let as_payload = valid_flat_entry().prop_map(|fields| {
        let object: Map<String, Value> = fields
            .into_iter()
            .map(|(name, value)| {
                (
                    String::from_utf8(name).expect("ASCII"),
                    Value::String(String::from_utf8(value).expect("ASCII")),
                )
            })
            .collect();
        vec![(
            b"payload".to_vec(),
            Value::Object(object).to_string().into_bytes(),
        )]
    });
    let entry = prop_oneof![valid_flat_entry(), as_payload];
    (
        entry,
        prop::option::of((any::<prop::sample::Index>(), field_value())),
        prop::option::of((field_name(), field_value())),
    )
        .prop_map(|(mut fields, replaced, added)| {
            if let Some((at, value)) = replaced {
                let at = at.index(fields.len());
                fields[at].1 = value;
            }
            fields.extend(added);
            fields
        })
}

/// A valid event with one value grown to around the 4 KiB limit.
fn oversized_entry() -> impl Strategy<Value = Vec<Field>> {
    (
        valid_flat_entry(),
        any::<prop::sample::Index>(),
        4_090..4_100_usize,
    )
        .prop_map(|(mut fields, at, len)| {
            let at = at.index(fields.len());
            fields[at].1 = b"1".repeat(len);
            fields
        })
}

/// Around the 64-field limit, small names and values.
fn crowded_entry() -> impl Strategy<Value = Vec<Field>> {
    (
        valid_flat_entry(),
        prop::collection::vec(("[a-z]{1,6}", "[a-z0-9]{0,4}"), 55..66),
    )
        .prop_map(|(mut fields, extra)| {
            fields.extend(
                extra
                    .into_iter()
                    .map(|(name, value)| (name.into_bytes(), value.into_bytes())),
            );
            fields
        })
}

fn any_entry() -> impl Strategy<Value = Vec<Field>> {
    prop_oneof![
        8 => near_valid_entry(),
        6 => prop::collection::vec((field_name(), field_value()), 0..8),
        1 => oversized_entry(),
        1 => crowded_entry(),
    ]
}

/// What is safe as one path component: the server's tenants, less separators, control
/// characters and the two dot names.
fn is_tenant_safe(value: &str) -> bool {
    (1..=TenantId::MAX_LEN).contains(&value.chars().count())
        && !value
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
        && value != "."
        && value != ".."
}

fn is_uid_safe(value: &str) -> bool {
    (1..=Uid::MAX_LEN).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && value.split('.').all(|part| !part.is_empty())
}

fn check_accepted(event: &IngestEvent) -> Result<(), TestCaseError> {
    let tenant = event.tenant.as_str();
    prop_assert!(is_tenant_safe(tenant), "tenant {tenant:?} accepted");
    for uid in [
        Some(&event.study),
        event.series.as_ref(),
        event.sop.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        prop_assert!(is_uid_safe(uid.as_str()), "UID {:?} accepted", uid.as_str());
    }
    let key = keys::study_metadata(&event.tenant, &event.study);
    prop_assert_eq!(
        key,
        format!("wado:{tenant}:study:{}:metadata", event.study),
        "the server's key, the tenant as stored"
    );
    Ok(())
}

#[test]
fn the_parser_never_panics_explains_every_refusal_and_accepts_only_key_safe_ids() {
    let accepted = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&any_entry(), |fields| {
            match parse_event(&fields) {
                Ok(event) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    check_accepted(&event)?;
                }
                Err(error) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    prop_assert!(!error.to_string().trim().is_empty(), "{error:?}");
                    prop_assert!(!error.kind().is_empty(), "{error:?}");
                }
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    let (accepted, refused) = (accepted.into_inner(), refused.into_inner());
    eprintln!("parser properties: {accepted} entries accepted, {refused} refused");
    // Both sides were exercised, or the properties proved little.
    assert!(accepted >= CASES as usize / 10, "only {accepted} accepted");
    assert!(refused >= CASES as usize / 10, "only {refused} refused");
}
