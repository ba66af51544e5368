//! Bad entries go to the dead-letter stream with their reason, are acknowledged, and
//! never produce a key.

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::Field;
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;

use crate::helpers::TestEnv;

/// Fields an oversize entry's dead letter keeps, and bytes of each name and value.
const MAX_FIELDS: usize = 64;
const KEEP_BYTES: usize = 1024;

#[tokio::test]
async fn every_bad_entry_is_dead_lettered_with_its_reason_and_acknowledged() {
    let env = TestEnv::new().await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 1,
        studies: 1,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    // A study that exists: any of these entries, if accepted, would fill its key.
    let tenant = dataset.rows[0].tenant_id.as_str();
    let study = dataset.rows[0].study_uid.as_str();
    let big = "1".repeat(5_000);
    let many: Vec<(String, String)> = (0..70).map(|i| (format!("f{i}"), "v".into())).collect();
    let t = |v: &str| v.as_bytes().to_vec();
    let cases: Vec<(Vec<Field>, &str)> = vec![
        (vec![(t("study_uid"), t(study))], "missing field tenant_id"),
        (vec![(t("tenant_id"), t(tenant))], "missing field study_uid"),
        (
            vec![
                (t("tenant_id"), t(&format!("{tenant}/.."))),
                (t("study_uid"), t(study)),
            ],
            "tenant_id: holds `/`, `\\` or a control character",
        ),
        (
            vec![
                (t("tenant_id"), t(&format!("{tenant}\\x"))),
                (t("study_uid"), t(study)),
            ],
            "tenant_id: holds `/`, `\\` or a control character",
        ),
        (
            vec![(t("tenant_id"), t("..")), (t("study_uid"), t(study))],
            "tenant_id: is `.` or `..`",
        ),
        (
            vec![
                (t("tenant_id"), t(&format!("{tenant}\r\n"))),
                (t("study_uid"), t(study)),
            ],
            "tenant_id: holds `/`, `\\` or a control character",
        ),
        (
            vec![
                (t("tenant_id"), t(&format!("{tenant}\u{85}"))),
                (t("study_uid"), t(study)),
            ],
            "tenant_id: holds `/`, `\\` or a control character",
        ),
        (
            vec![
                (t("tenant_id"), [tenant.as_bytes(), &[0xff]].concat()),
                (t("study_uid"), t(study)),
            ],
            "tenant_id is not UTF-8",
        ),
        (
            vec![
                (t("tenant_id"), t(tenant)),
                (t("study_uid"), t(&format!("{study}."))),
            ],
            "study_uid: has an empty",
        ),
        (
            vec![
                (t("tenant_id"), t(tenant)),
                (t("study_uid"), t(&format!("{study}:*"))),
            ],
            "study_uid: holds a character",
        ),
        (
            vec![
                (t("tenant_id"), t(tenant)),
                (
                    t("study_uid"),
                    t(&format!("{study}1234567890123456789012345678901234567890")),
                ),
            ],
            "study_uid: is longer",
        ),
        (
            vec![
                (t("tenant_id"), t(tenant)),
                (t("study_uid"), t(study)),
                (t("series_uid"), t("1.2 3")),
            ],
            "series_uid: holds a character",
        ),
        (
            vec![
                (t("tenant_id"), t(tenant)),
                (t("study_uid"), t(study)),
                (t("sop_uid"), t("../1")),
            ],
            "sop_uid: holds a character",
        ),
        (
            vec![
                (t("tenant_id"), t(tenant)),
                (t("study_uid"), t(study)),
                (t("event"), t("updated")),
            ],
            "event: must be",
        ),
        (
            vec![(t("tenant_id"), t(tenant)), (t("study_uid"), t(&big))],
            "field study_uid: value is larger",
        ),
        (
            many.iter()
                .map(|(k, v)| (t(k), t(v)))
                .chain([(t("tenant_id"), t(tenant)), (t("study_uid"), t(study))])
                .collect(),
            "fields, more than 64",
        ),
        (
            vec![
                (t("tenant_id"), t(tenant)),
                (t("tenant_id"), t(tenant)),
                (t("study_uid"), t(study)),
            ],
            "field tenant_id appears more",
        ),
        (vec![(t("payload"), t("{\"tenant_id\":"))], "payload: "),
        (
            vec![(t("payload"), t(&format!("[\"{tenant}\",\"{study}\"]")))],
            "payload: ",
        ),
        (
            vec![(
                t("payload"),
                t(&format!("{{\"tenant_id\":\"{tenant}\",\"study_uid\":1}}")),
            )],
            "payload: ",
        ),
        (
            vec![(
                t("payload"),
                t(&format!(
                    "{{\"tenant_id\":\"{tenant}/*\",\"study_uid\":\"{study}\"}}"
                )),
            )],
            "tenant_id: holds `/`, `\\` or a control character",
        ),
    ];
    let mut con = env.redis.clone();
    let mut expected = Vec::new();
    for (fields, reason) in &cases {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&env.settings.stream.key).arg("*");
        for (name, value) in fields {
            xadd.arg(name).arg(value);
        }
        let id: String = xadd.query_async(&mut con).await.expect("XADD");
        expected.push((id, *reason, fields));
    }

    env.drain().await;

    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    for (id, reason, fields) in expected {
        let entry = dead
            .iter()
            .find(|fields| {
                fields
                    .iter()
                    .any(|(k, v)| k == "dead_source_id" && v == id.as_bytes())
            })
            .unwrap_or_else(|| panic!("entry {id} ({reason}) is dead-lettered"));
        let get = |name: &str| {
            entry
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let got = get("dead_reason").expect("dead_reason");
        assert!(
            got.contains(reason),
            "entry {id}: wanted {reason:?}, got {got:?}"
        );
        assert_eq!(get("dead_deliveries").as_deref(), Some("1"));
        assert_eq!(
            get("dead_consumer").as_deref(),
            Some(env.settings.stream.consumer.as_str())
        );
        // An oversize entry keeps its first 64 fields, each name and value cut to 1 KiB.
        let oversize = reason.contains("is larger") || reason.contains("more than 64");
        let kept = if oversize { MAX_FIELDS } else { fields.len() };
        let cut = |bytes: &[u8]| bytes[..bytes.len().min(KEEP_BYTES)].to_vec();
        for (name, value) in fields.iter().take(kept) {
            let name = String::from_utf8_lossy(&cut(name)).into_owned();
            assert!(
                entry.iter().any(|(k, v)| *k == name && *v == cut(value)),
                "entry {id} keeps its field {name}"
            );
        }
        assert_eq!(
            get("dead_original_fields"),
            oversize.then(|| fields.len().to_string()),
            "entry {id}: the original size is kept exactly when the entry was cut"
        );
    }
    let (t, s) = (
        TenantId::parse(tenant).expect("tenant"),
        Uid::parse(study).expect("uid"),
    );
    assert_eq!(
        env.get(&keys::study_metadata(&t, &s)).await,
        None,
        "no bad entry fills a key"
    );
}
