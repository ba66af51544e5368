//! Series documents from instance files, 500 CT instances: the daemon's path
//! (`read_instance`, which converts while it reads up to the pixel data, then
//! `series_document`) against the plain dicom-object + dicom-json conversion of
//! each file, on one and two threads, with the files in the page cache (warm) and evicted
//! from it before every iteration (cold).
//!
//! `cargo bench --bench series_files` prints criterion's figures, then a table of instances
//! per second and the daemon's speed-up over dicom-json, measured in the same run.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use dcw_testkit::synthetic;
use dicom_cache_warmer::{DocumentOptions, InstanceJson, read_instance, series_document};
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;

/// Instances in the series.
const INSTANCES: usize = 500;
const STUDY_UID: &str = "1.2.826.0.1.3680043.10.543.9";
const SERIES_UID: &str = "1.2.826.0.1.3680043.10.543.9.1";

/// (benchmark, iterations, time measured), for the summary.
static MEASURED: Mutex<Vec<(String, u64, Duration)>> = Mutex::new(Vec::new());

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

/// How the series document is made.
#[derive(Clone, Copy)]
enum Conversion {
    /// As the daemon does.
    Daemon,
    /// dicom-object read up to the pixel data, then dicom-json, per file.
    DicomJson,
}

fn daemon_instance(path: &Path) -> InstanceJson {
    read_instance(path, STUDY_UID, SERIES_UID, &DocumentOptions::default())
        .expect("the fixture converts")
}

fn dicom_json_instance(path: &Path) -> Vec<u8> {
    let file = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .expect("read the instance");
    // The data set only: the file meta group (0002) is not part of the document.
    dicom_json::to_vec(&*file).expect("dicom-json converts")
}

/// One series document from `paths`, converting the files on `threads` threads.
fn document(how: Conversion, paths: &[PathBuf], threads: usize) -> Vec<u8> {
    match how {
        Conversion::Daemon => series_document(map_files(paths, threads, daemon_instance)),
        Conversion::DicomJson => {
            let objects = map_files(paths, threads, dicom_json_instance);
            let mut out =
                Vec::with_capacity(objects.iter().map(|o| o.len() + 1).sum::<usize>() + 1);
            out.push(b'[');
            for (i, object) in objects.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(object);
            }
            out.push(b']');
            out
        }
    }
}

/// `convert` applied to every path, on `threads` threads taking the next file as they go
/// (as the daemon's blocking tasks do); results in path order.
fn map_files<T: Send>(paths: &[PathBuf], threads: usize, convert: fn(&Path) -> T) -> Vec<T> {
    if threads <= 1 {
        return paths.iter().map(|p| convert(p)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(i) else {
                            return out;
                        };
                        out.push((i, convert(path)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a conversion thread panicked"))
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

/// Drops the files from the page cache (POSIX_FADV_DONTNEED through GNU dd), leaving the
/// rest of the machine's cache alone; false when that is not possible here.
fn evict(paths: &[PathBuf]) -> bool {
    paths.iter().all(|path| {
        Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn series_files(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let paths = synthetic::write_ct_series(dir.path(), STUDY_UID, SERIES_UID, INSTANCES)
        .expect("write the CT series");
    // Written pages are dirty until written back, and dirty pages cannot be evicted.
    let synced = Command::new("sync")
        .args(&paths)
        .status()
        .is_ok_and(|s| s.success());
    let can_evict = synced && evict(&paths);
    if !can_evict {
        eprintln!("series_files: cannot evict files from the page cache here: no cold runs");
    }
    let daemon = document(Conversion::Daemon, &paths, 1);
    let plain = document(Conversion::DicomJson, &paths, 1);
    println!(
        "series_files: {INSTANCES} instances, {} bytes each on disk; document {} bytes ({} per instance) by the daemon, {} bytes ({} per instance) by dicom-json",
        std::fs::metadata(&paths[0]).map_or(0, |m| m.len()),
        daemon.len(),
        daemon.len() / INSTANCES,
        plain.len(),
        plain.len() / INSTANCES,
    );

    let mut group = c.benchmark_group("series_files");
    group.throughput(Throughput::Elements(INSTANCES as u64));
    for cold in [false, true] {
        if cold && !can_evict {
            continue;
        }
        for threads in [1, 2] {
            for (label, how) in [
                ("daemon", Conversion::Daemon),
                ("dicom_json", Conversion::DicomJson),
            ] {
                let name = format!(
                    "{label}/{threads}_thread{}/{}",
                    if threads > 1 { "s" } else { "" },
                    if cold { "cold" } else { "warm" }
                );
                group.bench_function(&name, |b| {
                    b.iter_custom(|iterations| {
                        let mut measured = Duration::ZERO;
                        for _ in 0..iterations {
                            if cold {
                                evict(&paths);
                            }
                            let started = Instant::now();
                            black_box(document(how, &paths, threads));
                            measured += started.elapsed();
                        }
                        MEASURED
                            .lock()
                            .expect("no thread panicked holding it")
                            .push((name.clone(), iterations, measured));
                        measured
                    });
                });
            }
        }
    }
    group.finish();
}

/// Instances per second of each benchmark over all its iterations, warm-up included, and
/// the daemon's ratio to dicom-json with the same threads and cache.
fn summary() {
    let measured = MEASURED.lock().expect("no thread panicked holding it");
    let mut names: Vec<&str> = measured.iter().map(|(n, _, _)| n.as_str()).collect();
    names.dedup();
    let rate = |name: &str| {
        let (iterations, time) = measured
            .iter()
            .filter(|(n, _, _)| n == name)
            .fold((0, Duration::ZERO), |(i, t), (_, n, d)| (i + n, t + *d));
        (iterations * INSTANCES as u64) as f64 / time.as_secs_f64().max(f64::EPSILON)
    };
    println!(
        "\n{:<34} {:>12} {:>10}",
        "series_files", "instances/s", "vs dicom-json"
    );
    for name in &names {
        let ratio = name
            .strip_prefix("daemon/")
            .map(|rest| rate(name) / rate(&format!("dicom_json/{rest}")));
        println!(
            "{name:<34} {:>12.0} {:>10}",
            rate(name),
            ratio.map_or(String::new(), |r| format!("{r:.2}x"))
        );
    }
}

criterion_group! {
    name = benches;
    config = quick();
    targets = series_files
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
