//! Micro-benchmarks of the daemon's hot pure code: event parsing and validation (per entry),
//! study JSON encoding (per row) and series document building (per instance).
//!
//! `cargo bench --bench hot_paths`; per-item times are the iteration time divided by the
//! elements criterion reports (its `thrpt` line is items per second).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dcw_testkit::synthetic::{self, Dataset, DatasetSpec};
use dicom_cache_warmer::{
    DicomStateMeta, DocumentOptions, Field, InstanceJson, by_study, encode_study, instance_json,
    parse_event, read_instance,
};

/// Entries parsed per iteration.
const ENTRIES: usize = 1_000;
/// Instances joined into one series document.
const SERIES_INSTANCES: usize = 500;

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// The benchmark's dataset: 500 studies as in the drain benchmark.
fn dataset() -> Dataset {
    Dataset::generate(&DatasetSpec {
        tenant_prefix: "bench".into(),
        tenants: 2,
        studies: 500,
        max_series: 6,
        min_instances: 10,
        max_instances: 200,
        seed: 1,
    })
}

fn event_parse(c: &mut Criterion) {
    let dataset = dataset();
    let events = &dataset.events[..ENTRIES];
    let flat: Vec<Vec<Field>> = events
        .iter()
        .map(|e| {
            [
                ("tenant_id", &e.tenant_id),
                ("study_uid", &e.study_uid),
                ("series_uid", &e.series_uid),
                ("sop_uid", &e.sop_uid),
            ]
            .into_iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect()
        })
        .collect();
    let payload: Vec<Vec<Field>> = events
        .iter()
        .map(|e| {
            let json = serde_json::json!({
                "tenant_id": e.tenant_id, "study_uid": e.study_uid,
                "series_uid": e.series_uid, "sop_uid": e.sop_uid, "file_size": 525_312,
            });
            vec![(b"payload".to_vec(), json.to_string().into_bytes())]
        })
        .collect();
    let mut group = c.benchmark_group("event_parse");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    for (name, entries) in [("flat_fields", &flat), ("json_payload", &payload)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for fields in entries {
                    let parsed = parse_event(black_box(fields));
                    black_box(parsed.is_ok());
                }
            });
        });
    }
    group.finish();
}

fn study_json(c: &mut Criterion) {
    let dataset = dataset();
    let studies: Vec<&[DicomStateMeta]> = by_study(&dataset.rows).collect();
    let mut group = c.benchmark_group("study_json");
    group.throughput(Throughput::Elements(dataset.rows.len() as u64));
    group.bench_function("encode_500_studies", |b| {
        b.iter(|| {
            for rows in &studies {
                black_box(encode_study(black_box(rows)));
            }
        });
    });
    group.finish();
}

fn series_document(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (study_uid, series_uid) = (
        "1.2.826.0.1.3680043.10.543.9",
        "1.2.826.0.1.3680043.10.543.9.1",
    );
    let paths = synthetic::write_ct_series(dir.path(), study_uid, series_uid, SERIES_INSTANCES)
        .expect("write the CT series");
    // The file's bytes in memory: conversion alone, without the file system.
    let file = std::fs::read(&paths[0]).expect("read the CT instance");
    let with_bulk = DocumentOptions {
        bulkdata_base_url: Some("https://pacs.example/dicomweb".into()),
        ..DocumentOptions::default()
    };
    let without_bulk = DocumentOptions::default();

    let mut group = c.benchmark_group("series_document");
    group.throughput(Throughput::Elements(1));
    for (name, options) in [
        ("instance_json", &without_bulk),
        ("instance_json_bulkdata_uris", &with_bulk),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                instance_json(black_box(&file[..]), study_uid, series_uid, options)
                    .expect("the fixture converts")
            });
        });
    }
    // Reversed, so that the join sorts by Instance Number as it would for files listed in
    // any order.
    let instances: Vec<InstanceJson> = paths
        .iter()
        .rev()
        .map(|path| {
            read_instance(path, study_uid, series_uid, &without_bulk).expect("the fixture converts")
        })
        .collect();
    group.throughput(Throughput::Elements(SERIES_INSTANCES as u64));
    group.bench_function("join_500_instances", |b| {
        b.iter_batched(
            || instances.clone(),
            dicom_cache_warmer::series_document,
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = event_parse, study_json, series_document
}
criterion_main!(benches);
