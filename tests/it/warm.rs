//! `warm`: the real binary fills exactly the selected studies and prints a summary, keeps to
//! `--rate`, and stops on Ctrl-C with a summary; a re-run fills the rest.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::DicomStateMeta;
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::chaos_support::{check_cache, send_signal};
use crate::helpers::{
    DEADLINE, TestEnv, daemon_command, exit_within, output_of, output_within, wait_for,
    wait_for_log_line,
};

async fn warm(env: &TestEnv, args: &[&str]) -> String {
    let output = output_of(
        daemon_command(env)
            .env("DCW__LOG__LEVEL", "warn")
            .arg("warm")
            .args(args),
    )
    .await;
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
    let output = output_of(daemon_command(&env).arg("warm")).await;
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
    let output = output_of(
        daemon_command(&env)
            .env("DCW__SERIES__DICOM_ROOT", roots.path())
            .env("DCW__SERIES__JSON_ROOT", roots.path())
            .env("DCW__LOG__LEVEL", "warn")
            .args(["warm", "--all", "--series"]),
    )
    .await;
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

/// `warm` as a child process on `env`'s slice, its output captured.
fn spawn_warm(env: &TestEnv, args: &[&str]) -> tokio::process::Child {
    spawn_warm_logging(env, "warn", args)
}

fn spawn_warm_logging(env: &TestEnv, level: &str, args: &[&str]) -> tokio::process::Child {
    daemon_command(env)
        .env("DCW__LOG__LEVEL", level)
        .arg("warm")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warm")
}

#[tokio::test]
async fn warm_keeps_to_its_rate() {
    let env = TestEnv::new().await;
    const STUDIES: usize = 50;
    const PAGE: usize = 5;
    const RATE: f64 = 20.0;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 1,
        studies: STUDIES,
        max_series: 1,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    let tenant = format!("{}0", env.tenant_prefix);

    let started = Instant::now();
    let args = [
        "--tenant",
        &tenant,
        "--page-size",
        &PAGE.to_string(),
        "--rate",
        &RATE.to_string(),
    ];
    let output = output_within(spawn_warm(&env, &args), "warm").await;
    let elapsed = started.elapsed();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        summary.contains(&format!("warm done: {STUDIES} selected, {STUDIES} filled")),
        "{summary}"
    );
    // Pages start no sooner than the rate allows for every study listed so far: only the
    // last page's studies can be ahead of the rate, so the run lasts at least this long
    // (src/warm.rs even waits for a page's own studies: STUDIES / RATE, 2.5 s). A lower
    // bound only: a loaded machine makes the run longer, never shorter.
    let at_least = Duration::from_secs_f64((STUDIES - PAGE) as f64 / RATE);
    assert!(
        elapsed >= at_least,
        "{STUDIES} studies at {RATE}/s took {elapsed:?}, less than {at_least:?}: {summary}"
    );
    let cache = check_cache(&env.redis, &dataset.rows).await;
    assert_eq!(cache.correct, STUDIES, "{:?}", cache.wrong);
}

#[tokio::test]
async fn warm_stops_on_ctrl_c_and_a_rerun_fills_the_rest() {
    let env = TestEnv::new().await;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 2,
        studies: 40,
        ..DatasetSpec::default()
    });
    dataset.insert(&env.db).await.expect("insert rows");
    let tenant = format!("{}0", env.tenant_prefix);
    let (selected, outside): (Vec<DicomStateMeta>, Vec<DicomStateMeta>) = dataset
        .rows
        .iter()
        .cloned()
        .partition(|r| r.tenant_id == tenant);
    let selected_studies = Dataset {
        rows: selected.clone(),
        events: Vec::new(),
    };
    let selected_ids: BTreeSet<&str> = selected.iter().map(|r| r.study_uid.as_str()).collect();
    assert_eq!(selected_ids.len(), 20, "half of the studies are selected");
    // The server's negative flag on every study outside the selection: a fill would clear it.
    let mut con = env.redis.clone();
    for row in &outside {
        let flag = keys::study_negative_flag(
            &TenantId::parse(&row.tenant_id).expect("tenant"),
            &Uid::parse(&row.study_uid).expect("uid"),
        );
        let () = redis::cmd("SET")
            .arg(&flag)
            .arg("1")
            .arg("EX")
            .arg(300)
            .query_async(&mut con)
            .await
            .expect("SET");
    }
    let untouched = || async {
        let outside_studies = Dataset {
            rows: outside.clone(),
            events: Vec::new(),
        };
        assert!(
            cached_studies(&env, &outside_studies).await.is_empty(),
            "no study outside the selection is cached"
        );
        for row in &outside {
            let (t, s) = (
                TenantId::parse(&row.tenant_id).expect("tenant"),
                Uid::parse(&row.study_uid).expect("uid"),
            );
            assert!(env.get(&keys::study_version(&t, &s)).await.is_none());
            assert!(
                env.get(&keys::study_negative_flag(&t, &s)).await.is_some(),
                "the negative flag of {} outside the selection is kept",
                row.study_uid
            );
        }
    };

    // One study per page, 4 a second: the whole selection would take 5 s.
    let warm_args = ["--tenant", tenant.as_str(), "--page-size", "1"];
    let child = spawn_warm(&env, &[&warm_args[..], &["--rate", "4"]].concat());
    let pid = child.id().expect("warm is running");
    wait_for("warm to fill its first studies", || async {
        cached_studies(&env, &selected_studies).await.len() >= 2
    })
    .await;
    // The table held, warm's next page waits until Ctrl-C is sent, however slowly this test
    // runs: it cannot reach the end of the selection first.
    let hold = env.lock_state_table().await;
    send_signal("-INT", pid).await;
    hold.rollback().await.expect("release the table");
    let output = output_within(child, "warm to exit after Ctrl-C").await;
    let summary = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "an interrupted warm exits 0 (README): {summary} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let filled_before = cached_studies(&env, &selected_studies).await.len();
    assert!(
        summary.contains(&format!(
            "warm interrupted: 20 selected, {filled_before} filled"
        )),
        "the summary counts exactly the keys written: {filled_before} cached; {summary}"
    );
    assert!(
        (2..20).contains(&filled_before),
        "some but not all: {filled_before}"
    );
    let cache = check_cache(&env.redis, &selected).await;
    assert_eq!(
        cache.correct + cache.wrong.len(),
        20,
        "every selected study checked"
    );
    assert_eq!(cache.correct, filled_before, "{:?}", cache.wrong);
    untouched().await;

    // The same command again fills every selected study.
    let rerun = output_within(spawn_warm(&env, &warm_args), "warm to run again").await;
    let summary = String::from_utf8_lossy(&rerun.stdout);
    assert!(rerun.status.success(), "{summary}");
    assert!(
        summary.contains("warm done: 20 selected, 20 filled"),
        "{summary}"
    );
    let cache = check_cache(&env.redis, &selected).await;
    assert_eq!(cache.correct, 20, "{:?}", cache.wrong);
    untouched().await;
}

#[tokio::test]
async fn a_second_ctrl_c_ends_warm_at_once_even_with_a_query_in_hand() {
    let env = TestEnv::new().await;
    // Hold a lock that makes warm's first query wait: it cannot finish on its own.
    let blocker = env.lock_state_table().await;
    let mut child = spawn_warm_logging(&env, "info", &["--all"]);
    wait_for("warm's query to wait for the lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&env.db)
        .await
        .expect("pg_locks");
        waiting > 0
    })
    .await;
    let pid = child.id().expect("warm is running");
    send_signal("-INT", pid).await;
    // The second signal only after the first was seen, so the two are not merged.
    let mut log = BufReader::new(child.stderr.take().expect("stderr")).lines();
    wait_for_log_line(&mut log, "stopping: finishing the work in hand").await;
    send_signal("-INT", pid).await;
    // 130 is only the forced exit's: a warm that waited for its query would exit 0 or 1.
    let status = exit_within(&mut child, DEADLINE, "warm to exit at the second Ctrl-C").await;
    assert_eq!(status.code(), Some(130));
    blocker.rollback().await.expect("release the lock");
}
