//! Series documents end to end: scheduled once per burst, built under the lock from real
//! DICOM files in the server's layout, published atomically where the server reads them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dcw_testkit::fixtures::{self, CtInstance};
use dcw_testkit::synthetic::{self, Dataset, DatasetSpec};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::keys;
use dicom_cache_warmer::{SeriesLock, document_path};
use dicom_json::DicomJson;
use dicom_object::InMemDicomObject;

use crate::helpers::{DEADLINE, Daemon, TestEnv, daemon_command, terminate, wait_for};

mod build;
mod locks;
mod publication;
mod storage;

/// One series on disk and in the database.
pub(crate) struct SeriesFixture {
    pub(crate) tenant: TenantId,
    pub(crate) study: Uid,
    pub(crate) series: Uid,
    date: String,
    pub(crate) sops: Vec<String>,
    _roots: tempfile::TempDir,
    json_root: PathBuf,
}

impl SeriesFixture {
    /// Writes `instances` CT files (instance numbers shuffled) and their rows, and turns
    /// series documents on in `env`'s settings.
    pub(crate) async fn new(env: &mut TestEnv, instances: usize) -> Self {
        let tenant_prefix = env.tenant_prefix.clone();
        Self::with_tenant_prefix(env, instances, tenant_prefix).await
    }

    /// As [`new`](Self::new), for a tenant id `{tenant_prefix}0`.
    async fn with_tenant_prefix(
        env: &mut TestEnv,
        instances: usize,
        tenant_prefix: String,
    ) -> Self {
        let roots = tempfile::tempdir().expect("temp dir");
        let (dicom_root, json_root) = (roots.path().join("dicom"), roots.path().join("json"));
        env.settings.series.dicom_root = Some(dicom_root.clone());
        env.settings.series.json_root = Some(json_root.clone());
        env.settings.series.quiet_ms = 300;
        env.settings.series.max_delay_ms = 2_000;
        env.settings.series.redis_copy = true;
        let dataset = Dataset::generate(&DatasetSpec {
            tenant_prefix,
            tenants: 1,
            studies: 1,
            max_series: 1,
            min_instances: instances,
            max_instances: instances,
            seed: 5,
        });
        let row = dataset.rows[0].clone();
        synthetic::insert_rows(&env.db, std::slice::from_ref(&row))
            .await
            .expect("series row");
        let folder = dicom_root
            .join(&row.tenant_id)
            .join(&row.study_date_origin)
            .join(&row.study_uid)
            .join(&row.series_uid);
        std::fs::create_dir_all(&folder).expect("series folder");
        let mut sops = Vec::new();
        for n in 0..instances {
            // Written in an order unlike the instance numbers, as a directory lists them.
            let number = ((n * 7) % instances) as i32 + 1;
            let sop = format!("{}.{number}", row.series_uid);
            fixtures::write_ct_instance(
                &folder.join(format!("{sop}.dcm")),
                &CtInstance {
                    study_uid: &row.study_uid,
                    series_uid: &row.series_uid,
                    sop_uid: &sop,
                    instance_number: Some(number),
                    patient_name: fixtures::PATIENT_NAME,
                },
            )
            .expect("write instance");
            sqlx::query(
                "INSERT INTO dicom_image_meta (tenant_id, patient_id, study_uid, series_uid, sop_uid,
                     study_uid_hash, series_uid_hash, transfer_syntax_uid, sop_class_uid)
                 VALUES ($1, $2, $3, $4, $5, '1', '2', '1.2.840.10008.1.2.1', '1.2.840.10008.5.1.4.1.1.2')",
            )
            .bind(&row.tenant_id)
            .bind(&row.patient_id)
            .bind(&row.study_uid)
            .bind(&row.series_uid)
            .bind(&sop)
            .execute(&env.db)
            .await
            .expect("image row");
            sops.push(sop);
        }
        Self {
            tenant: TenantId::parse(&row.tenant_id).expect("tenant"),
            study: Uid::parse(&row.study_uid).expect("study"),
            series: Uid::parse(&row.series_uid).expect("series"),
            date: row.study_date_origin,
            sops,
            _roots: roots,
            json_root,
        }
    }

    pub(crate) fn document(&self) -> PathBuf {
        document_path(
            &self.json_root,
            &self.tenant,
            &self.date,
            &self.study,
            &self.series,
        )
    }

    /// Publishes one stored event per instance.
    pub(crate) async fn publish(&self, env: &TestEnv, sops: &[String]) {
        let mut con = env.redis.clone();
        let mut pipe = redis::pipe();
        for sop in sops {
            pipe.cmd("XADD")
                .arg(&env.settings.stream.key)
                .arg("*")
                .arg("tenant_id")
                .arg(self.tenant.as_str())
                .arg("study_uid")
                .arg(self.study.as_str())
                .arg("series_uid")
                .arg(self.series.as_str())
                .arg("sop_uid")
                .arg(sop)
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await.expect("publish");
    }

    /// The file of instance `index` in the server's storage layout.
    pub(crate) fn instance_file(&self, env: &TestEnv, index: usize) -> PathBuf {
        env.settings
            .series
            .dicom_root
            .clone()
            .expect("root")
            .join(self.tenant.as_str())
            .join(&self.date)
            .join(self.study.as_str())
            .join(self.series.as_str())
            .join(format!("{}.dcm", self.sops[index]))
    }

    /// The series' score in the build schedule (its due time or lease, ms), if scheduled.
    async fn schedule_score(&self, env: &TestEnv) -> Option<i64> {
        redis::cmd("ZSCORE")
            .arg(keys::series_schedule(&env.settings.stream.group))
            .arg(format!("{}/{}/{}", self.tenant, self.study, self.series))
            .query_async(&mut env.redis.clone())
            .await
            .expect("ZSCORE")
    }

    /// How far ahead of Redis' clock the series is scheduled, in ms (negative: due).
    async fn scheduled_in(&self, env: &TestEnv) -> Option<i64> {
        let score = self.schedule_score(env).await?;
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut env.redis.clone())
            .await
            .expect("TIME");
        Some(score - (secs * 1_000 + micros / 1_000))
    }

    /// Makes the series due now (rather than waiting out a deferral).
    async fn make_due(&self, env: &TestEnv) {
        let _: i64 = redis::cmd("ZADD")
            .arg(keys::series_schedule(&env.settings.stream.group))
            .arg("XX")
            .arg(0)
            .arg(format!("{}/{}/{}", self.tenant, self.study, self.series))
            .query_async(&mut env.redis.clone())
            .await
            .expect("ZADD");
    }

    async fn builds(&self, env: &TestEnv) -> i64 {
        sqlx::query_scalar(
            "SELECT COALESCE(max(retry_times), 0)::int8 FROM dicom_json_meta WHERE series_uid = $1",
        )
        .bind(self.series.as_str())
        .fetch_one(&env.db)
        .await
        .expect("dicom_json_meta")
    }
}

/// Waits until no series is scheduled: every build, the one after the last event included, is done.
async fn wait_for_empty_schedule(env: &TestEnv) {
    wait_for("the schedule to empty", || async {
        let due: i64 = redis::cmd("ZCARD")
            .arg(keys::series_schedule(&env.settings.stream.group))
            .query_async(&mut env.redis.clone())
            .await
            .expect("ZCARD");
        due == 0
    })
    .await;
}

/// The server's webworker query (database/src/dicom_pg.rs, `get_json_metaes`, verbatim),
/// with `$1` an hour ahead so that fresh rows count as quiet: the series it would rebuild.
async fn webworker_selects(env: &TestEnv) -> Vec<String> {
    sqlx::query(
        " Select tenant_id,
                patient_id,
                study_uid,
                series_uid,
                study_uid_hash,
                series_uid_hash,
                study_date_origin,
                patient_name,
                patient_sex,
                patient_birth_date,
                patient_birth_time,
                patient_age,
                patient_size,
                patient_weight,
                study_date,
                study_time,
                accession_number,
                study_id,
                study_description,
                modality,
                series_number,
                series_date,
                series_time,
                series_description,
                body_part_examined,
                protocol_name,
                series_related_instances,
                created_time,
                updated_time
                From (SELECT dsm.*
                      FROM dicom_state_meta dsm
                               LEFT JOIN dicom_json_meta djm
                                         ON dsm.tenant_id = djm.tenant_id
                                             AND dsm.study_uid = djm.study_uid
                                             AND dsm.series_uid = djm.series_uid
                      WHERE djm.tenant_id IS NULL AND dsm.updated_time <  $1
                      UNION ALL
                      SELECT dsm.*
                      FROM dicom_state_meta dsm
                               INNER JOIN dicom_json_meta djm
                                          ON dsm.tenant_id = djm.tenant_id
                                              AND dsm.study_uid = djm.study_uid
                                              AND dsm.series_uid = djm.series_uid
                      WHERE dsm.updated_time != djm.flag_time AND dsm.updated_time <  $1
                      ) AS t
                order by t.updated_time asc limit 10;",
    )
    .bind(chrono::Local::now().naive_local() + chrono::Duration::hours(1))
    .fetch_all(&env.db)
    .await
    .expect("the webworker's query")
    .iter()
    .map(|row| sqlx::Row::get(row, "series_uid"))
    .collect()
}

impl SeriesFixture {
    /// Publishes the series with its first instance file replaced by a FIFO, starts the
    /// daemon and waits until the build holds the series' lock: it stays in the middle of
    /// the build until the FIFO is fed.
    async fn start_held_build(&self, env: &TestEnv) -> (Fifo, Daemon) {
        let fifo = Fifo::in_place_of(self.instance_file(env, 0));
        self.publish(env, &self.sops).await;
        let daemon = env.start_daemon();
        let owner_key = keys::series_lock_owner(&self.tenant, &self.series);
        wait_for("the build to hold the lock", || async {
            env.get(&owner_key).await.is_some()
        })
        .await;
        (fifo, daemon)
    }
}

/// An instance file replaced by a FIFO: a build reading it blocks until the test feeds it
/// the file's bytes, or for good (a read stuck on storage). When dropped, passed or failed,
/// it gives every reader still blocked on it an end of file, so that no thread of a build
/// outlives the test (the test's runtime waits for them).
struct Fifo {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Held open from [`Fifo::wait_for_reader`] until fed: while it is, a reader never sees
    /// the end of the file.
    writer: std::sync::Mutex<Option<std::fs::File>>,
}

/// Opens `path` for writing without waiting: fails at once (ENXIO) when nobody reads.
fn open_fifo_if_read(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK on Linux.
    const O_NONBLOCK: i32 = 0o4000;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
}

impl Fifo {
    fn in_place_of(path: PathBuf) -> Self {
        let bytes = std::fs::read(&path).expect("fixture bytes");
        std::fs::remove_file(&path).expect("remove");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        Self {
            path,
            bytes,
            writer: std::sync::Mutex::new(None),
        }
    }

    /// Waits (at most [`DEADLINE`]) until a build opens the FIFO: from then on the build is in
    /// the middle of reading its files (its first queries done), held here until fed.
    async fn wait_for_reader(&self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while self.writer.lock().expect("fifo writer").is_none() {
            if let Ok(probe) = open_fifo_if_read(&self.path) {
                // A reader is there, so a blocking open returns at once; the probe is closed
                // only after it, so that the reader never sees the end of the file.
                let writer = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&self.path)
                    .expect("open the FIFO for writing");
                drop(probe);
                *self.writer.lock().expect("fifo writer") = Some(writer);
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no build opened {} to read it",
                self.path.display()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes the file's bytes into it, once a build opens it.
    async fn feed(&self) {
        use std::io::Write;
        self.wait_for_reader().await;
        let mut writer = self
            .writer
            .lock()
            .expect("fifo writer")
            .take()
            .expect("a writer");
        let bytes = self.bytes.clone();
        tokio::time::timeout(
            DEADLINE,
            tokio::task::spawn_blocking(move || writer.write_all(&bytes)),
        )
        .await
        .expect("the build reads what is written")
        .expect("writer")
        .expect("write the FIFO");
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < deadline {
            let Ok(opened) = open_fifo_if_read(&self.path) else {
                return;
            };
            // Closed again: readers that opened meanwhile read the end of the file.
            drop(opened);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `dcw_series_builds_total{result}` as this process' recorder has it.
fn builds_counted(result: &str) -> u64 {
    let text = dicom_cache_warmer::metrics_handle()
        .expect("metrics recorder")
        .render();
    let prefix = format!("dcw_series_builds_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Our temporary files beside the document at `document` (none while its folder is missing).
fn temporaries(document: &Path) -> usize {
    let folder = document.parent().expect("a document has a folder");
    std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .count()
        })
        .unwrap_or(0)
}

fn read_document(path: &Path) -> Vec<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).expect("document")).expect("a JSON array")
}
