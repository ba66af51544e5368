//! `warm`: the real binary fills exactly the selected studies and prints a summary.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use dicom_cache_warmer::synthetic::{Dataset, DatasetSpec};
use tokio::process::Command;

use crate::helpers::TestEnv;

async fn warm(env: &TestEnv, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"))
        .envs(env.daemon_env())
        .env("DCW__LOG__LEVEL", "warn")
        .arg("warm")
        .args(args)
        .output()
        .await
        .expect("run warm");
    assert!(
        output.status.success(),
        "warm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 summary")
}

async fn cached_studies(env: &TestEnv, dataset: &Dataset) -> BTreeSet<(String, String)> {
    let mut cached = BTreeSet::new();
    for row in &dataset.rows {
        let key = keys::study_metadata(
            &TenantId::parse(&row.tenant_id).expect("tenant"),
            &Uid::parse(&row.study_uid).expect("uid"),
        );
        if env.get(&key).await.is_some() {
            cached.insert((row.tenant_id.clone(), row.study_uid.clone()));
        }
    }
    cached
}

#[tokio::test]
async fn warm_fills_exactly_the_selected_studies() {
    let env = TestEnv::new().await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 2,
        studies: 24,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    let tenant = format!("{}0", env.tenant_prefix);
    let (from, to) = (
        NaiveDate::from_ymd_opt(2025, 3, 1).expect("date"),
        NaiveDate::from_ymd_opt(2025, 8, 31).expect("date"),
    );
    let expected: BTreeSet<(String, String)> = dataset
        .rows
        .iter()
        .filter(|r| r.tenant_id == tenant && r.study_date >= from && r.study_date <= to)
        .map(|r| (r.tenant_id.clone(), r.study_uid.clone()))
        .collect();
    assert!(
        expected.len() >= 2,
        "the selection is neither empty nor everything"
    );
    let selection = [
        "--tenant",
        &tenant,
        "--from",
        "2025-03-01",
        "--to",
        "2025-08-31",
        "--page-size",
        "2",
    ];

    let counted = warm(&env, &[&selection[..], &["--dry-run"]].concat()).await;
    assert!(
        counted.contains(&format!("{} studies selected", expected.len())),
        "{counted}"
    );
    assert!(
        cached_studies(&env, &dataset).await.is_empty(),
        "a dry run writes nothing"
    );

    let summary = warm(&env, &selection).await;
    assert!(
        summary.contains(&format!("{n} selected, {n} filled", n = expected.len())),
        "{summary}"
    );
    assert_eq!(cached_studies(&env, &dataset).await, expected);

    // Safe to re-run: the same snapshot again, nothing else touched.
    let again = warm(&env, &selection).await;
    assert!(
        again.contains(&format!("{n} selected, {n} filled", n = expected.len())),
        "{again}"
    );
    assert_eq!(cached_studies(&env, &dataset).await, expected);
}

#[tokio::test]
async fn warm_without_a_selection_refuses_to_run() {
    let env = TestEnv::new().await;
    let output = Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"))
        .envs(env.daemon_env())
        .arg("warm")
        .output()
        .await
        .expect("run warm");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--all"));
}

#[tokio::test]
async fn warm_with_series_schedules_every_series_of_the_warmed_studies() {
    let env = TestEnv::new().await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 1,
        studies: 3,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    let roots = tempfile::tempdir().expect("roots");
    let output = Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"))
        .envs(env.daemon_env())
        .env("DCW__SERIES__DICOM_ROOT", roots.path())
        .env("DCW__SERIES__JSON_ROOT", roots.path())
        .env("DCW__LOG__LEVEL", "warn")
        .args(["warm", "--all", "--series"])
        .output()
        .await
        .expect("run warm");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let scheduled: BTreeSet<String> = redis::cmd("ZRANGE")
        .arg(keys::series_schedule(&env.settings.stream.group))
        .arg(0)
        .arg(-1)
        .query_async(&mut env.redis.clone())
        .await
        .expect("ZRANGE");
    let expected: BTreeSet<String> = dataset
        .rows
        .iter()
        .map(|r| format!("{}/{}/{}", r.tenant_id, r.study_uid, r.series_uid))
        .collect();
    assert_eq!(scheduled, expected);
}
