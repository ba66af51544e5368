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

use crate::helpers::{TestEnv, wait_for};

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

/// An instance file replaced by a FIFO: a build reading it blocks until the test feeds it
/// the file's bytes, or for good (a read stuck on storage). When dropped, passed or failed,
/// it gives every reader still blocked on it an end of file, so that no thread of a build
/// outlives the test (the test's runtime waits for them).
struct Fifo {
    path: PathBuf,
    bytes: Vec<u8>,
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
        Self { path, bytes }
    }

    /// Writes the file's bytes into it, once a build opens it.
    async fn feed(&self) {
        let (path, bytes) = (self.path.clone(), self.bytes.clone());
        tokio::task::spawn_blocking(move || std::fs::write(&path, bytes))
            .await
            .expect("writer")
            .expect("write the pipe");
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK on Linux: opening for writing fails at once (ENXIO) when nobody reads.
        const O_NONBLOCK: i32 = 0o4000;
        let deadline = std::time::Instant::now() + crate::helpers::DEADLINE;
        while std::time::Instant::now() < deadline {
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(&self.path);
            if opened.is_err() {
                return;
            }
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

fn read_document(path: &Path) -> Vec<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).expect("document")).expect("a JSON array")
}

#[tokio::test]
async fn a_burst_of_instance_events_builds_one_conformant_document_where_the_server_reads_it() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 12).await;
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the series document", || async {
        series.document().exists()
    })
    .await;
    env.wait_until_drained().await;
    wait_for("the status row", || async {
        series.builds(&env).await == 1
    })
    .await;
    daemon.stop().await;

    let document = read_document(&series.document());
    assert_eq!(document.len(), 12);
    let numbers: Vec<i64> = document
        .iter()
        .map(|i| i["00200013"]["Value"][0].as_i64().expect("IS as a number"))
        .collect();
    assert_eq!(
        numbers,
        (1..=12).collect::<Vec<i64>>(),
        "sorted by Instance Number"
    );
    let first = &document[0];
    assert_eq!(first["00100010"]["Value"][0]["Ideographic"], "山田^太郎");
    assert_eq!(first["00280010"]["Value"][0], 64, "US as a number");
    assert!(first.get("00020010").is_none(), "no file meta group");
    assert!(
        first.get("7FE00010").is_none(),
        "pixel data left out without a bulk data URL"
    );
    let parsed: Vec<DicomJson<InMemDicomObject>> =
        serde_json::from_slice(&std::fs::read(series.document()).expect("read"))
            .expect("dicom-json reads it back");
    assert_eq!(parsed.len(), 12);

    let copy = env
        .get(&keys::series_metadata(&series.tenant, &series.series))
        .await
        .expect("Redis copy");
    assert_eq!(
        copy.as_bytes(),
        std::fs::read(series.document()).expect("read")
    );
    let (status, flag_time_matches): (i32, bool) = sqlx::query_as(
        "SELECT j.json_status, j.flag_time = s.updated_time FROM dicom_json_meta j
         JOIN dicom_state_meta s USING (tenant_id, study_uid, series_uid) WHERE j.series_uid = $1",
    )
    .bind(series.series.as_str())
    .fetch_one(&env.db)
    .await
    .expect("status row");
    assert_eq!((status, flag_time_matches), (1, true));
    assert_eq!(
        webworker_selects(&env).await,
        Vec::<String>::new(),
        "the server's webworker leaves a built series alone"
    );
    assert_eq!(
        env.get(&keys::series_lock(&series.tenant, &series.series))
            .await,
        None,
        "lock released"
    );
}

#[tokio::test]
async fn a_tenant_with_spaces_colons_and_accents_is_warmed_under_the_servers_key_and_path() {
    let mut env = TestEnv::new().await;
    let prefix = format!("{} Hôpital: Zürich 病院 ", env.tenant_prefix);
    let series = SeriesFixture::with_tenant_prefix(&mut env, 3, prefix.clone()).await;
    let tenant = format!("{prefix}0");
    assert_eq!(series.tenant.as_str(), tenant);
    series.publish(&env, &series.sops).await;
    // Spelled out, not through the daemon's own key and path functions.
    let key = format!("wado:{tenant}:study:{}:metadata", series.study);
    let path = series
        .json_root
        .join(&tenant)
        .join("metadata")
        .join(&series.date)
        .join(series.study.as_str())
        .join(format!("{}.json", series.series));
    let daemon = env.start_daemon();
    wait_for("the series document", || async { path.exists() }).await;
    env.wait_until_drained().await;
    daemon.stop().await;

    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&env.get(&key).await.expect("the study key")).expect("JSON");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["tenant_id"], tenant.as_str());
    assert_eq!(read_document(&path).len(), 3);
}

#[tokio::test]
async fn three_hundred_events_over_time_lead_to_one_build_and_a_busy_series_is_built_by_max_delay()
{
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 300).await;
    let daemon = env.start_daemon();
    // Events keep coming faster than the quiet period for longer than the max delay.
    let started = tokio::time::Instant::now();
    for chunk in series.sops.chunks(10) {
        series.publish(&env, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publishing = started.elapsed();
    assert!(
        publishing > Duration::from_millis(2_500),
        "the burst outlasts max_delay_ms"
    );
    env.wait_until_drained().await;
    // Every build reads all 300 files (the database lists them from the start): wait for the
    // schedule to empty, i.e. for the build after the last event too.
    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    assert_eq!(read_document(&series.document()).len(), 300);
    let builds = series.builds(&env).await;
    // At least one build by max delay during the burst and one after it; at most one per
    // max delay while it lasts, plus the last: never one per event.
    let at_most = (publishing.as_millis() / 2_000) as i64 + 2;
    assert!(
        (2..=at_most).contains(&builds),
        "{builds} builds for 300 events over {publishing:?} (at most {at_most})"
    );
}

#[tokio::test]
async fn a_series_scheduled_by_a_daemon_killed_before_the_build_is_built_by_another() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    series.publish(&env, &series.sops).await;
    // The first daemon (the real binary) acknowledges the events, so the series is durably
    // scheduled, and is killed long before the series is due.
    let roots = |root: &Option<PathBuf>| root.as_ref().expect("root").display().to_string();
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"))
        .envs(env.daemon_env())
        .env(
            "DCW__SERIES__DICOM_ROOT",
            roots(&env.settings.series.dicom_root),
        )
        .env(
            "DCW__SERIES__JSON_ROOT",
            roots(&env.settings.series.json_root),
        )
        .env("DCW__SERIES__QUIET_MS", "60000")
        .env("DCW__SERIES__MAX_DELAY_MS", "60000")
        .env("DCW__LOG__LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start the daemon");
    env.wait_until_drained().await;
    first.kill().await.expect("kill -9");
    assert!(!series.document().exists());

    // Another daemon, sharing the schedule, builds it once it is due (made due now rather
    // than waiting the minute out).
    let member = format!("{}/{}/{}", series.tenant, series.study, series.series);
    let made_due: i64 = redis::cmd("ZADD")
        .arg(keys::series_schedule(&env.settings.stream.group))
        .arg("XX")
        .arg("CH")
        .arg(0)
        .arg(&member)
        .query_async(&mut env.redis.clone())
        .await
        .expect("make it due");
    assert_eq!(made_due, 1, "the dead daemon's schedule entry survived");
    let second = env.start_daemon();
    wait_for("the document from the second daemon", || async {
        series.document().exists()
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn concurrent_builders_never_overlap_and_the_lock_obeys_its_owner() {
    let env = TestEnv::new().await;
    let tenant = TenantId::parse(&format!("{}0", env.tenant_prefix)).expect("tenant");
    let series = Uid::parse("1.2.3.4").expect("uid");
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (tenant, series, inside, entered) = (
            tenant.clone(),
            series.clone(),
            inside.clone(),
            entered.clone(),
        );
        let mut con = env.redis.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..20 {
                if let Some(lock) = SeriesLock::acquire(&mut con, &tenant, &series)
                    .await
                    .expect("acquire")
                {
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    entered.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert!(lock.release(&mut con).await.expect("release"));
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    assert!(
        entered.load(Ordering::SeqCst) > 1,
        "the lock was taken in turns"
    );

    let mut con = env.redis.clone();
    let holder = SeriesLock::acquire(&mut con, &tenant, &series)
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(
        env.get(&keys::series_lock(&tenant, &series))
            .await
            .as_deref(),
        Some("1"),
        "readers test for \"1\""
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys::series_lock(&tenant, &series))
        .query_async(&mut con)
        .await
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl <= 600_000,
        "lease {ttl} ms within the server's 600 s"
    );
    assert!(
        SeriesLock::acquire(&mut con, &tenant, &series)
            .await
            .expect("acquire")
            .is_none(),
        "held"
    );
    assert!(
        holder.renew(&mut con).await.expect("renew"),
        "the owner renews"
    );

    // The lease runs out (as after a crash or a long pause): the next worker takes it over,
    // and the first holder can neither renew nor release the new holder's lock.
    let _: () = redis::cmd("PEXPIRE")
        .arg(keys::series_lock(&tenant, &series))
        .arg(1)
        .query_async(&mut con)
        .await
        .expect("expire");
    wait_for("the lease to run out", || async {
        env.get(&keys::series_lock(&tenant, &series))
            .await
            .is_none()
    })
    .await;
    let next = SeriesLock::acquire(&mut con, &tenant, &series)
        .await
        .expect("acquire")
        .expect("taken over");
    assert!(
        !holder.renew(&mut con).await.expect("renew"),
        "a lost lock is not renewed"
    );
    assert!(
        !holder.release(&mut con).await.expect("release"),
        "a non-owner cannot release"
    );
    assert_eq!(
        env.get(&keys::series_lock(&tenant, &series))
            .await
            .as_deref(),
        Some("1"),
        "the new holder keeps it"
    );
    assert!(next.release(&mut con).await.expect("release"));
}

#[tokio::test]
async fn a_build_whose_lock_is_held_elsewhere_waits_without_publishing() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    // The server's own webworker holds the flag (SET EX 600, no owner).
    let mut con = env.redis.clone();
    let _: () = redis::cmd("SET")
        .arg(keys::series_lock(&series.tenant, &series.series))
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut con)
        .await
        .expect("SET");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    env.wait_until_drained().await;
    // Due 300 ms after the events; found busy, it is moved 2 s on and stays scheduled.
    let schedule_score = || async {
        let score: Option<i64> = redis::cmd("ZSCORE")
            .arg(keys::series_schedule(&env.settings.stream.group))
            .arg(format!(
                "{}/{}/{}",
                series.tenant, series.study, series.series
            ))
            .query_async(&mut env.redis.clone())
            .await
            .expect("ZSCORE");
        score
    };
    let due = schedule_score().await.expect("scheduled");
    wait_for("a busy attempt to move the series on", || async {
        schedule_score()
            .await
            .is_some_and(|score| score >= due + 1_500)
    })
    .await;
    assert!(
        !series.document().exists(),
        "nothing published while another holds the lock"
    );
    let _: () = redis::cmd("DEL")
        .arg(keys::series_lock(&series.tenant, &series.series))
        .query_async(&mut con)
        .await
        .expect("DEL");
    // Put off for up to a lock lease (30 s) by the busy attempt: made due now instead.
    series.make_due(&env).await;
    wait_for("the build once the lock is free", || async {
        series.document().exists()
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_missing_instance_file_is_recorded_as_failed_and_nothing_is_published() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    let dicom_root = env.settings.series.dicom_root.clone().expect("root");
    let victim = dicom_root
        .join(series.tenant.as_str())
        .join(&series.date)
        .join(series.study.as_str())
        .join(series.series.as_str())
        .join(format!("{}.dcm", series.sops[1]));
    std::fs::remove_file(victim).expect("remove one file");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the failed status", || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT json_status FROM dicom_json_meta WHERE series_uid = $1",
        )
        .bind(series.series.as_str())
        .fetch_optional(&env.db)
        .await
        .expect("status")
            == Some(2)
    })
    .await;
    daemon.stop().await;
    assert!(!series.document().exists(), "no half-built document");
    assert_eq!(
        webworker_selects(&env).await,
        vec![series.series.to_string()],
        "a series the daemon could not build is left to the server's webworker"
    );
    assert_eq!(
        env.get(&keys::series_lock(&series.tenant, &series.series))
            .await,
        None,
        "lock released"
    );
}

#[tokio::test]
async fn a_reader_never_sees_a_partial_document_during_rebuilds() {
    let mut env = TestEnv::new().await;
    env.settings.series.quiet_ms = 50;
    let series = SeriesFixture::new(&mut env, 40).await;
    env.settings.series.quiet_ms = 50;
    env.settings.series.max_delay_ms = 100;
    let daemon = env.start_daemon();
    series.publish(&env, &series.sops).await;
    wait_for("the first document", || async {
        series.document().exists()
    })
    .await;
    let path = series.document();
    let reader = tokio::task::spawn_blocking(move || {
        let mut reads = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let bytes = std::fs::read(&path).expect("the document is always there");
            let parsed: Vec<serde_json::Value> =
                serde_json::from_slice(&bytes).expect("never a partial file");
            assert_eq!(parsed.len(), 40);
            reads += 1;
        }
        reads
    });
    // Rebuild repeatedly while the reader polls.
    for _ in 0..10 {
        series.publish(&env, &series.sops[..1]).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reads = reader.await.expect("reader");
    daemon.stop().await;
    assert!(reads > 10, "{reads} reads");
    assert!(series.builds(&env).await >= 3, "rebuilt while being read");
}

#[tokio::test]
async fn a_burst_within_the_quiet_period_is_built_exactly_once() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 300).await;
    env.settings.series.quiet_ms = 1_000;
    env.settings.series.max_delay_ms = 30_000;
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the document", || async { series.builds(&env).await == 1 }).await;
    env.wait_until_drained().await;
    // Nothing else is due: the schedule is empty once the build completed.
    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    assert_eq!(series.builds(&env).await, 1, "one build for 300 events");
    assert_eq!(read_document(&series.document()).len(), 300);
}

#[tokio::test]
async fn a_renewed_lease_outlives_the_original_one() {
    let env = TestEnv::new().await;
    let tenant = TenantId::parse(&format!("{}0", env.tenant_prefix)).expect("tenant");
    let series = Uid::parse("1.2.3.5").expect("uid");
    let mut con = env.redis.clone();
    let lock = SeriesLock::acquire(&mut con, &tenant, &series)
        .await
        .expect("acquire")
        .expect("free");
    // Nearly run out, as it would be late in a long build, then renewed.
    let _: () = redis::cmd("PEXPIRE")
        .arg(keys::series_lock(&tenant, &series))
        .arg(300)
        .query_async(&mut con)
        .await
        .expect("PEXPIRE");
    assert!(lock.renew(&mut con).await.expect("renew"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys::series_lock(&tenant, &series))
        .query_async(&mut con)
        .await
        .expect("PTTL");
    assert!(ttl > 20_000, "renewed to the full lease, {ttl} ms left");
    assert!(lock.release(&mut con).await.expect("release"));
}

#[tokio::test]
async fn a_build_that_lost_its_lock_publishes_nothing() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    // One instance is a pipe: its read blocks until the test writes the file's bytes, which
    // holds the build in the middle while the lock is taken away.
    let dicom_root = env.settings.series.dicom_root.clone().expect("root");
    let file = dicom_root
        .join(series.tenant.as_str())
        .join(&series.date)
        .join(series.study.as_str())
        .join(series.series.as_str())
        .join(format!("{}.dcm", series.sops[0]));
    let bytes = std::fs::read(&file).expect("fixture bytes");
    std::fs::remove_file(&file).expect("remove");
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&lock_key).await.is_some()
    })
    .await;

    // The lease "runs out" and another worker takes the lock.
    let mut con = env.redis.clone();
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(&lock_key)
        .arg("1")
        .arg("EX")
        .arg(60)
        .cmd("SET")
        .arg(&owner_key)
        .arg("another-worker")
        .arg("EX")
        .arg(60)
        .query_async(&mut con)
        .await
        .expect("steal");
    tokio::task::spawn_blocking(move || std::fs::write(&file, bytes))
        .await
        .expect("writer")
        .expect("write the pipe");

    wait_for("the build to give up", || async {
        // The series stays scheduled for a later build, and no temporary file is left behind.
        let folder = series
            .document()
            .parent()
            .map(Path::to_path_buf)
            .expect("folder");
        let leftovers = std::fs::read_dir(&folder).map(|d| d.count()).unwrap_or(0);
        leftovers == 0 && env.get(&owner_key).await.as_deref() == Some("another-worker")
    })
    .await;
    daemon.stop().await;
    assert!(
        !series.document().exists(),
        "nothing published without the lock"
    );
    assert_eq!(
        env.get(&owner_key).await.as_deref(),
        Some("another-worker"),
        "the new holder keeps its lock"
    );
    assert_eq!(
        series.builds(&env).await,
        0,
        "no status recorded for a lost build"
    );
}

#[tokio::test]
async fn a_deleted_study_loses_its_series_documents_and_their_copies() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the document", || async { series.document().exists() }).await;
    let copy = keys::series_metadata(&series.tenant, &series.series);
    // The copy is written just after the file is renamed into place.
    wait_for("its Redis copy", || async {
        env.get(&copy).await.is_some()
    })
    .await;

    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(series.tenant.as_str())
        .bind(series.study.as_str())
        .execute(&env.db)
        .await
        .expect("delete rows");
    let _: String = redis::cmd("XADD")
        .arg(&env.settings.stream.key)
        .arg("*")
        .arg("tenant_id")
        .arg(series.tenant.as_str())
        .arg("study_uid")
        .arg(series.study.as_str())
        .arg("event")
        .arg("deleted")
        .query_async(&mut env.redis.clone())
        .await
        .expect("XADD");
    env.wait_until_drained().await;
    daemon.stop().await;
    assert!(!series.document().exists(), "the document is removed");
    assert_eq!(env.get(&copy).await, None, "the Redis copy is removed");
    assert_eq!(
        env.get(&keys::study_metadata(&series.tenant, &series.study))
            .await,
        None
    );
}

#[tokio::test]
async fn a_deleted_event_stays_pending_until_every_document_of_the_study_is_removed() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    env.reclaim_quickly();
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the document", || async { series.document().exists() }).await;
    let copy = keys::series_metadata(&series.tenant, &series.series);
    wait_for("its Redis copy", || async {
        env.get(&copy).await.is_some()
    })
    .await;
    // A document path that cannot be removed (a folder stands where a file would).
    let blocker = series
        .document()
        .with_file_name(format!("{}.9.json", series.series));
    std::fs::create_dir_all(blocker.join("inside")).expect("blocker");

    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(series.tenant.as_str())
        .bind(series.study.as_str())
        .execute(&env.db)
        .await
        .expect("delete rows");
    let _: String = redis::cmd("XADD")
        .arg(&env.settings.stream.key)
        .arg("*")
        .arg("tenant_id")
        .arg(series.tenant.as_str())
        .arg("study_uid")
        .arg(series.study.as_str())
        .arg("event")
        .arg("deleted")
        .query_async(&mut env.redis.clone())
        .await
        .expect("XADD");
    let study_key = keys::study_metadata(&series.tenant, &series.study);
    wait_for("the study key removed", || async {
        env.get(&study_key).await.is_none()
    })
    .await;
    // Claimed back and tried again (reclaim_quickly: after 1 s) while the blocker stays.
    wait_for("the deleted event delivered again", || async {
        pending_deliveries(&env).await.is_some_and(|n| n >= 2)
    })
    .await;
    assert_eq!(
        series.document().exists(),
        env.get(&copy).await.is_some(),
        "a removed document's Redis copy goes with it, even when another one failed"
    );
    std::fs::remove_dir_all(&blocker).expect("remove the blocker");
    env.wait_until_drained().await;
    daemon.stop().await;
    assert!(!series.document().exists(), "the document is removed");
    assert_eq!(env.get(&copy).await, None, "the Redis copy is removed");
    assert!(env.dead_letters().await.is_empty());
}

/// The delivery count of the group's one pending entry, if there is one.
async fn pending_deliveries(env: &TestEnv) -> Option<u64> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&env.settings.stream.key)
        .arg(&env.settings.stream.group)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut env.redis.clone())
        .await
        .expect("XPENDING");
    match pending.as_slice() {
        [(_, _, _, deliveries)] => Some(*deliveries),
        _ => None,
    }
}

#[tokio::test]
async fn a_build_that_outlasts_a_lock_renewal_is_taken_off_the_schedule_and_built_once() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    // Renewals every 50 ms rather than 10 s: the build below outlasts several.
    env.settings.series.lock_renew_ms = 50;
    let fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&lock_key).await.is_some()
    })
    .await;
    let leased = series.schedule_score(&env).await.expect("leased");
    wait_for("the schedule lease to be renewed", || async {
        series
            .schedule_score(&env)
            .await
            .is_some_and(|score| score != leased)
    })
    .await;
    fifo.feed().await;

    // Completed with the renewed lease: off the schedule, not built again a minute later.
    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    assert_eq!(series.builds(&env).await, 1, "built exactly once");
    assert_eq!(read_document(&series.document()).len(), 3);
}

#[tokio::test]
async fn the_servers_plain_set_during_a_build_takes_the_lock_and_is_left_alone() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&owner_key).await.is_some()
    })
    .await;
    // The server's webworker, as it does it: SET "1" EX 600, no NX, no owner.
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut env.redis.clone())
        .await
        .expect("SET");
    fifo.feed().await;

    wait_for("the build to give up its owner token", || async {
        env.get(&owner_key).await.is_none()
    })
    .await;
    daemon.stop().await;
    assert!(
        !series.document().exists(),
        "nothing published under the server's lock"
    );
    assert_eq!(series.builds(&env).await, 0);
    assert_eq!(
        env.get(&lock_key).await.as_deref(),
        Some("1"),
        "the server's key is not deleted"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&lock_key)
        .query_async(&mut env.redis.clone())
        .await
        .expect("PTTL");
    assert!(
        ttl > 500_000,
        "the server's 600 s are not shortened: {ttl} ms"
    );
}

#[tokio::test]
async fn the_servers_blind_delete_during_a_build_loses_the_lock() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&owner_key).await.is_some()
    })
    .await;
    // The server's webworker ends its own build with a DEL of the flag, whoever holds it.
    let _: () = redis::cmd("DEL")
        .arg(&lock_key)
        .query_async(&mut env.redis.clone())
        .await
        .expect("DEL");
    fifo.feed().await;

    wait_for("the build to give up its owner token", || async {
        env.get(&owner_key).await.is_none()
    })
    .await;
    daemon.stop().await;
    assert!(!series.document().exists(), "nothing published");
    assert_eq!(series.builds(&env).await, 0);
    assert!(
        series.schedule_score(&env).await.is_some(),
        "the series stays scheduled"
    );
}

#[tokio::test]
async fn a_lock_evicted_or_set_again_by_the_server_is_lost_and_left_alone() {
    let env = TestEnv::new().await;
    let tenant = TenantId::parse(&format!("{}0", env.tenant_prefix)).expect("tenant");
    let series = Uid::parse("1.2.3.6").expect("uid");
    let (lock_key, owner_key) = (
        keys::series_lock(&tenant, &series),
        keys::series_lock_owner(&tenant, &series),
    );
    let copy = keys::series_metadata(&tenant, &series);
    let mut con = env.redis.clone();
    let pttl = |key: String| {
        let mut con = env.redis.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut con)
                .await
                .expect("PTTL")
        }
    };

    // Memory pressure evicts the lock key alone; the owner key stays.
    let lock = SeriesLock::acquire(&mut con, &tenant, &series)
        .await
        .expect("acquire")
        .expect("free");
    let _: () = redis::cmd("DEL")
        .arg(&lock_key)
        .query_async(&mut con)
        .await
        .expect("evict");
    assert!(!lock.renew(&mut con).await.expect("renew"), "lost");
    assert!(
        !lock
            .set_if_held(&mut con, &copy, b"[]", 60)
            .await
            .expect("set"),
        "nothing written without the lock"
    );
    assert_eq!(env.get(&copy).await, None);
    assert!(!lock.release(&mut con).await.expect("release"), "lost");
    assert_eq!(env.get(&owner_key).await, None, "our token is cleared");

    // The server's plain SET over our lock: its 600 s, its value, and ours no more.
    let lock = SeriesLock::acquire(&mut con, &tenant, &series)
        .await
        .expect("acquire")
        .expect("free again");
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut con)
        .await
        .expect("SET");
    assert!(!lock.renew(&mut con).await.expect("renew"), "lost");
    assert!(pttl(lock_key.clone()).await > 500_000, "not shortened");
    assert!(
        !lock
            .set_if_held(&mut con, &copy, b"[]", 60)
            .await
            .expect("set"),
        "nothing written under the server's lock"
    );
    assert!(!lock.release(&mut con).await.expect("release"), "lost");
    assert_eq!(env.get(&lock_key).await.as_deref(), Some("1"), "left alone");
    assert!(pttl(lock_key.clone()).await > 500_000, "left alone");
    assert_eq!(env.get(&owner_key).await, None, "our token is cleared");
}

#[tokio::test]
async fn a_read_that_never_returns_times_out_and_the_series_is_retried_later() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    env.settings.series.build_timeout_ms = 1_000;
    // A FIFO nobody writes: its read blocks for good, as on a stuck NFS mount.
    let _fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    let timed_out_before = builds_counted("timed_out");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&lock_key).await.is_some()
    })
    .await;
    // Abandoned: the lock released, the series moved a few seconds on (its backoff), not to
    // the end of a claim's lease (60 s) and not off the schedule.
    wait_for("the build to be abandoned and retried later", || async {
        env.get(&lock_key).await.is_none()
            && series
                .scheduled_in(&env)
                .await
                .is_some_and(|ahead| (1_000..30_000).contains(&ahead))
    })
    .await;
    assert!(builds_counted("timed_out") > timed_out_before, "counted");
    assert_eq!(series.builds(&env).await, 0, "not recorded as failed");
    assert!(!series.document().exists());
    daemon.stop().await;
}

#[tokio::test]
async fn sigterm_during_a_build_stuck_in_a_read_exits_within_the_grace_period() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let _fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops).await;
    let grace_secs = 2;
    let root = |root: &Option<PathBuf>| root.as_ref().expect("root").display().to_string();
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_dicom-cache-warmer"))
        .envs(env.daemon_env())
        .env(
            "DCW__SERIES__DICOM_ROOT",
            root(&env.settings.series.dicom_root),
        )
        .env(
            "DCW__SERIES__JSON_ROOT",
            root(&env.settings.series.json_root),
        )
        .env("DCW__SERIES__QUIET_MS", "300")
        .env("DCW__SHUTDOWN__GRACE_SECS", grace_secs.to_string())
        .env("DCW__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the daemon");
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&lock_key).await.is_some()
    })
    .await;

    let pid = daemon.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(grace_secs + 2), daemon.wait())
        .await
        .expect("exits within the grace period, its reader still blocked")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(env.get(&lock_key).await, None, "lock released");
    assert!(
        series.schedule_score(&env).await.is_some(),
        "the series stays scheduled"
    );
    assert_eq!(series.builds(&env).await, 0, "not recorded as failed");
}

#[tokio::test]
async fn an_instance_file_failing_with_eio_is_retried_and_not_recorded_as_failed() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    // Reading this process' own memory at offset 0 fails with EIO, for root too: the
    // daemon runs in this process.
    let victim = series.instance_file(&env, 1);
    let bytes = std::fs::read(&victim).expect("fixture bytes");
    std::fs::remove_file(&victim).expect("remove");
    std::os::unix::fs::symlink("/proc/self/mem", &victim).expect("symlink");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the build to be put off", || async {
        env.get(&lock_key).await.is_none()
            && series
                .scheduled_in(&env)
                .await
                .is_some_and(|ahead| (1_000..30_000).contains(&ahead))
    })
    .await;
    assert_eq!(series.builds(&env).await, 0, "not recorded as failed");
    assert!(!series.document().exists());

    // The storage recovers: the retry builds it.
    std::fs::remove_file(&victim).expect("remove the symlink");
    std::fs::write(&victim, bytes).expect("restore the file");
    wait_for("the retry", || async { series.builds(&env).await == 1 }).await;
    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    let status: i32 =
        sqlx::query_scalar("SELECT json_status FROM dicom_json_meta WHERE series_uid = $1")
            .bind(series.series.as_str())
            .fetch_one(&env.db)
            .await
            .expect("status");
    assert_eq!(status, 1, "built");
    assert_eq!(read_document(&series.document()).len(), 3);
}

#[tokio::test]
async fn a_redis_failure_before_the_rename_leaves_no_temporary_file() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
    wait_for("the build to hold the lock", || async {
        env.get(&owner_key).await.is_some()
    })
    .await;
    // The owner key turns into a hash: the lock check before the rename fails with
    // WRONGTYPE, a Redis error like any other.
    let _: () = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(&owner_key)
        .cmd("HSET")
        .arg(&owner_key)
        .arg("not")
        .arg("a token")
        .query_async(&mut env.redis.clone())
        .await
        .expect("owner key of the wrong type");
    // The table held, so the build waits between writing its temporary file and the checks.
    let mut hold = env.db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE dicom_state_meta IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .expect("lock the table");
    fifo.feed().await;
    let folder = series
        .document()
        .parent()
        .map(Path::to_path_buf)
        .expect("folder");
    let temporaries = || {
        std::fs::read_dir(&folder)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for("the temporary file", || async { temporaries() == 1 }).await;
    hold.rollback().await.expect("release the table");

    wait_for("the temporary file to be removed", || async {
        temporaries() == 0
    })
    .await;
    daemon.stop().await;
    assert!(!series.document().exists(), "nothing published");
}

#[tokio::test]
async fn a_series_deleted_during_its_build_is_not_published() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    let fifo = Fifo::in_place_of(series.instance_file(&env, 0));
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    wait_for("the build to hold the lock", || async {
        env.get(&keys::series_lock(&series.tenant, &series.series))
            .await
            .is_some()
    })
    .await;
    sqlx::query("DELETE FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2")
        .bind(series.tenant.as_str())
        .bind(series.study.as_str())
        .execute(&env.db)
        .await
        .expect("delete the study");
    fifo.feed().await;

    wait_for_empty_schedule(&env).await;
    daemon.stop().await;
    assert!(
        !series.document().exists(),
        "no document for a deleted study"
    );
    assert_eq!(series.builds(&env).await, 0);
}

#[tokio::test]
async fn stale_temporary_documents_are_swept_at_start_and_nothing_else() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 1).await;
    let folder = series
        .document()
        .parent()
        .map(Path::to_path_buf)
        .expect("folder");
    std::fs::create_dir_all(&folder).expect("study folder");
    let hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3_600);
    let file = |name: String, old: bool| {
        let path = folder.join(name);
        let file = std::fs::File::create(&path).expect("create");
        if old {
            file.set_modified(hours_ago).expect("age it");
        }
        path
    };
    let stale = file(
        format!(".{}.json.00000000deadbeef.tmp", series.series),
        true,
    );
    let fresh = file(
        format!(".{}.json.00000000feedf00d.tmp", series.series),
        false,
    );
    let foreign = file(".backup.00000000deadbeef.tmp".to_owned(), true);
    let document = file(format!("{}.9.json", series.series), true);
    let daemon = env.start_daemon();
    wait_for("the stale temporary file to be swept", || async {
        !stale.exists()
    })
    .await;
    daemon.stop().await;
    for kept in [&fresh, &foreign, &document] {
        assert!(kept.exists(), "{} kept", kept.display());
    }
}

#[tokio::test]
async fn a_series_whose_lock_another_build_holds_is_put_off_until_that_lease_ends() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 2).await;
    // Another worker's build holds the lock (a 30 s lease).
    let mut con = env.redis.clone();
    let other = SeriesLock::acquire(&mut con, &series.tenant, &series.series)
        .await
        .expect("acquire")
        .expect("free");
    series.publish(&env, &series.sops).await;
    let daemon = env.start_daemon();
    // Skipped until about when the holder's lease ends, not asked again every 2 s (and not
    // the 60 s of a claim's own lease).
    wait_for("the busy series to be put off", || async {
        series
            .scheduled_in(&env)
            .await
            .is_some_and(|ahead| (15_000..=31_000).contains(&ahead))
    })
    .await;
    assert!(!series.document().exists());
    assert!(other.release(&mut con).await.expect("release"));
    series.make_due(&env).await;
    wait_for("the build once the lock is free", || async {
        series.document().exists()
    })
    .await;
    daemon.stop().await;
}
