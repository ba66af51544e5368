//! `series`: series documents built through the daemon's code from a series of CT instance
//! files written to a temporary folder; instances per second on one thread and on all,
//! with the page cache warm and (where the files can be evicted) cold.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::ensure;
use clap::Args;
use dcw_testkit::synthetic;
use dicom_cache_warmer::{DocumentOptions, InstanceJson, read_instance};
use serde_json::json;

use crate::sampling::{format_load, load_average};

/// The flags of `series`.
#[derive(Args)]
pub(crate) struct SeriesArgs {
    /// Instances in the series.
    #[arg(long, default_value_t = 500)]
    instances: usize,
    /// Threads converting files; the daemon uses one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Timed rounds per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const SERIES_STUDY_UID: &str = "1.2.826.0.1.3680043.10.543.9";
const SERIES_UID: &str = "1.2.826.0.1.3680043.10.543.9.1";

/// Runs the series benchmark in a temporary folder, removed afterwards, and prints its
/// report.
pub(crate) fn run(args: &SeriesArgs) -> anyhow::Result<()> {
    ensure!(
        args.instances > 0 && args.rounds > 0,
        "--instances and --rounds must be at least 1"
    );
    let dir = std::env::temp_dir().join(format!("dcw-bench-series-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outcome = series_in(&dir, args);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn series_in(dir: &Path, args: &SeriesArgs) -> anyhow::Result<()> {
    let paths = synthetic::write_ct_series(dir, SERIES_STUDY_UID, SERIES_UID, args.instances)?;
    // Written pages are dirty until written back, and dirty pages cannot be evicted.
    let synced = std::process::Command::new("sync")
        .args(&paths)
        .status()
        .is_ok_and(|s| s.success());
    let can_evict = synced && evict(&paths);
    let document = build_series_document(&paths, 1)?;
    let file_bytes = std::fs::metadata(&paths[0])?.len();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let mut thread_counts = vec![1, threads];
    thread_counts.dedup();

    println!(
        "dcw-bench series: {} CT instances of {file_bytes} bytes (pixel data {} bytes) read up to the pixel data; median of {} rounds",
        args.instances,
        2 * usize::from(dcw_testkit::fixtures::IMAGE_SIZE).pow(2),
        args.rounds
    );
    println!(
        "document         {} bytes, {} bytes per instance",
        document.len(),
        document.len() / args.instances
    );
    println!(
        "{:<8} {:<6} {:>12} {:>10}  load (1 5 15 min)",
        "threads", "cache", "instances/s", "ms/series"
    );
    let mut results = Vec::new();
    for cold in [false, true] {
        if cold && !can_evict {
            println!("cold runs skipped: the files cannot be evicted from the page cache here");
            continue;
        }
        for &threads in &thread_counts {
            if !cold {
                build_series_document(&paths, threads)?;
            }
            let mut times = Vec::with_capacity(args.rounds);
            for _ in 0..args.rounds {
                if cold {
                    evict(&paths);
                }
                let started = Instant::now();
                std::hint::black_box(build_series_document(&paths, threads)?);
                times.push(started.elapsed());
            }
            times.sort_unstable();
            let median = times[times.len() / 2];
            let rate = args.instances as f64 / median.as_secs_f64();
            let cache = if cold { "cold" } else { "warm" };
            let load = load_average();
            println!(
                "{threads:<8} {cache:<6} {rate:>12.0} {:>10.1}  {}",
                median.as_secs_f64() * 1e3,
                format_load(load)
            );
            results.push(json!({
                "threads": threads, "cache": cache, "instances_per_sec": rate,
                "ms_per_series": median.as_secs_f64() * 1e3, "load": load,
            }));
        }
    }
    println!(
        "plain dicom-object + dicom-json per file, same files: cargo bench --bench series_files"
    );
    println!(
        "{}",
        json!({
            "command": "series",
            "instances": args.instances,
            "file_bytes": file_bytes,
            "document_bytes": document.len(),
            "json_bytes_per_instance": document.len() / args.instances,
            "results": results,
        })
    );
    Ok(())
}

/// The series document through the daemon's code: each file read up to its pixel data and
/// converted on `threads` threads (taking the next file as they go, as the daemon's
/// blocking tasks do), then joined.
fn build_series_document(paths: &[PathBuf], threads: usize) -> anyhow::Result<Vec<u8>> {
    let convert = |path: &Path| -> anyhow::Result<InstanceJson> {
        Ok(read_instance(
            path,
            SERIES_STUDY_UID,
            SERIES_UID,
            &DocumentOptions::default(),
        )?)
    };
    let next = AtomicUsize::new(0);
    let instances: Vec<InstanceJson> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
                        done.push(convert(path)?);
                    }
                    anyhow::Ok(done)
                })
            })
            .collect();
        let mut instances = Vec::with_capacity(paths.len());
        for worker in workers {
            let done = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a conversion thread panicked"))??;
            instances.extend(done);
        }
        anyhow::Ok(instances)
    })?;
    Ok(dicom_cache_warmer::series_document(instances))
}

/// Drops the files from the page cache (POSIX_FADV_DONTNEED through GNU dd), leaving the
/// rest of the machine's cache alone; false when that is not possible here.
fn evict(paths: &[PathBuf]) -> bool {
    paths.iter().all(|path| {
        std::process::Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .is_ok_and(|s| s.success())
    })
}
