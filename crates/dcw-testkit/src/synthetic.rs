//! Deterministic synthetic studies and their ingest events, for the demo, the tests and
//! the benchmark: rows into `dicom_state_meta`, one event per instance into the stream.

use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::ConnectionLike;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::fixtures::{self, CtInstance, FixtureError};
use dicom_cache_warmer::DicomStateMeta;

/// Rows per INSERT: 29 binds each stays under PostgreSQL's 65,535 parameters.
const INSERT_CHUNK: usize = 1_000;
/// Events per XADD pipeline.
const PUBLISH_CHUNK: usize = 1_000;

/// The shape of a dataset.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// Tenant ids are `{tenant_prefix}{n}`.
    pub tenant_prefix: String,
    /// How many tenants the studies are spread over.
    pub tenants: usize,
    /// How many studies.
    pub studies: usize,
    /// Series per study: 1 to this many.
    pub max_series: usize,
    /// Instances per series: at least this many.
    pub min_instances: usize,
    /// Instances per series: at most this many.
    pub max_instances: usize,
    /// The same seed gives the same dataset.
    pub seed: u64,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            tenant_prefix: "demo".into(),
            tenants: 2,
            studies: 5,
            max_series: 3,
            min_instances: 10,
            max_instances: 20,
            seed: 7,
        }
    }
}

/// One instance's ingest event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEvent {
    /// Tenant id.
    pub tenant_id: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// SOP Instance UID.
    pub sop_uid: String,
}

impl InstanceEvent {
    /// The `XADD` that publishes this event to `stream_key`, as the ingest pipeline does.
    pub fn xadd(&self, stream_key: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream_key)
            .arg("*")
            .arg("tenant_id")
            .arg(&self.tenant_id)
            .arg("study_uid")
            .arg(&self.study_uid)
            .arg("series_uid")
            .arg(&self.series_uid)
            .arg("sop_uid")
            .arg(&self.sop_uid);
        cmd
    }
}

/// Rows and events of a generated dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// One row per series, sorted by tenant, study and series.
    pub rows: Vec<DicomStateMeta>,
    /// One event per instance, studies interleaved as concurrent ingest does.
    pub events: Vec<InstanceEvent>,
}

impl Dataset {
    /// Generates the dataset `spec` describes.
    pub fn generate(spec: &DatasetSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut rows = Vec::new();
        let mut queues: Vec<Vec<InstanceEvent>> = Vec::with_capacity(spec.studies);
        for s in 0..spec.studies {
            let tenant_id = format!("{}{}", spec.tenant_prefix, s % spec.tenants.max(1));
            let study_uid = format!("1.2.826.0.1.3680043.10.543.{}.{}", spec.seed, s + 1);
            let mut queue = Vec::new();
            for n in 1..=rng.random_range(1..=spec.max_series.max(1)) {
                let series_uid = format!("{study_uid}.{n}");
                let instances = rng
                    .random_range(spec.min_instances..=spec.max_instances.max(spec.min_instances));
                rows.push(series_row(
                    &mut rng,
                    &tenant_id,
                    &study_uid,
                    &series_uid,
                    s,
                    n,
                    instances,
                ));
                queue.extend((1..=instances).map(|i| InstanceEvent {
                    tenant_id: tenant_id.clone(),
                    study_uid: study_uid.clone(),
                    series_uid: series_uid.clone(),
                    sop_uid: format!("{series_uid}.{i}"),
                }));
            }
            queue.reverse(); // popped from the back: instances arrive in order
            queues.push(queue);
        }
        let mut events = Vec::with_capacity(queues.iter().map(Vec::len).sum());
        while !queues.is_empty() {
            let pick = rng.random_range(0..queues.len());
            match queues[pick].pop() {
                Some(event) => events.push(event),
                None => {
                    queues.swap_remove(pick);
                }
            }
        }
        rows.sort_by(|a, b| {
            (&a.tenant_id, &a.study_uid, &a.series_uid).cmp(&(
                &b.tenant_id,
                &b.study_uid,
                &b.series_uid,
            ))
        });
        Self { rows, events }
    }

    /// Inserts the rows (replacing rows with the same key).
    pub async fn insert(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        for chunk in self.rows.chunks(INSERT_CHUNK) {
            insert_rows(pool, chunk).await?;
        }
        Ok(())
    }

    /// Publishes every event to `stream_key`, in order.
    pub async fn publish<C: ConnectionLike>(
        &self,
        con: &mut C,
        stream_key: &str,
    ) -> redis::RedisResult<()> {
        for chunk in self.events.chunks(PUBLISH_CHUNK) {
            let mut pipe = redis::pipe();
            for event in chunk {
                pipe.add_command(event.xadd(stream_key)).ignore();
            }
            pipe.query_async::<()>(con).await?;
        }
        Ok(())
    }
}

/// Inserts `rows` into `dicom_state_meta` in one statement, replacing existing ones.
pub async fn insert_rows(pool: &PgPool, rows: &[DicomStateMeta]) -> Result<(), sqlx::Error> {
    let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
        "INSERT INTO dicom_state_meta (tenant_id, patient_id, study_uid, series_uid, \
         study_uid_hash, series_uid_hash, study_date_origin, patient_name, patient_sex, \
         patient_birth_date, patient_birth_time, patient_age, patient_size, patient_weight, \
         study_date, study_time, accession_number, study_id, study_description, modality, \
         series_number, series_date, series_time, series_description, body_part_examined, \
         protocol_name, series_related_instances, created_time, updated_time) ",
    );
    insert.push_values(rows, |mut b, r| {
        b.push_bind(&r.tenant_id)
            .push_bind(&r.patient_id)
            .push_bind(&r.study_uid)
            .push_bind(&r.series_uid)
            .push_bind(&r.study_uid_hash)
            .push_bind(&r.series_uid_hash)
            .push_bind(&r.study_date_origin)
            .push_bind(&r.patient_name)
            .push_bind(&r.patient_sex)
            .push_bind(r.patient_birth_date)
            .push_bind(r.patient_birth_time)
            .push_bind(&r.patient_age)
            .push_bind(r.patient_size)
            .push_bind(r.patient_weight)
            .push_bind(r.study_date)
            .push_bind(r.study_time)
            .push_bind(&r.accession_number)
            .push_bind(&r.study_id)
            .push_bind(&r.study_description)
            .push_bind(&r.modality)
            .push_bind(r.series_number)
            .push_bind(r.series_date)
            .push_bind(r.series_time)
            .push_bind(&r.series_description)
            .push_bind(&r.body_part_examined)
            .push_bind(&r.protocol_name)
            .push_bind(r.series_related_instances)
            .push_bind(r.created_time)
            .push_bind(r.updated_time);
    });
    insert.push(
        " ON CONFLICT (tenant_id, study_uid, series_uid) DO UPDATE SET \
         series_related_instances = EXCLUDED.series_related_instances, \
         updated_time = EXCLUDED.updated_time",
    );
    insert.build().execute(pool).await?;
    Ok(())
}

/// Writes a CT series of `count` instance files, `{sop}.dcm` with SOP Instance UIDs
/// `{series_uid}.1` to `{series_uid}.{count}` and Instance Numbers 1 to `count`, into `dir`;
/// returns their paths in instance order.
pub fn write_ct_series(
    dir: &Path,
    study_uid: &str,
    series_uid: &str,
    count: usize,
) -> Result<Vec<PathBuf>, FixtureError> {
    (1..=count)
        .map(|n| {
            let sop_uid = format!("{series_uid}.{n}");
            let path = dir.join(format!("{sop_uid}.dcm"));
            let ct = CtInstance {
                study_uid,
                series_uid,
                sop_uid: &sop_uid,
                instance_number: i32::try_from(n).ok(),
                patient_name: fixtures::PATIENT_NAME,
            };
            fixtures::write_ct_instance(&path, &ct)?;
            Ok(path)
        })
        .collect()
}

/// A plausible series row; optional columns vary so that nulls, fractions and floats
/// all appear.
fn series_row(
    rng: &mut StdRng,
    tenant_id: &str,
    study_uid: &str,
    series_uid: &str,
    study_index: usize,
    series_number: usize,
    instances: usize,
) -> DicomStateMeta {
    let study_date = NaiveDate::from_ymd_opt(
        2025,
        1 + (study_index % 12) as u32,
        1 + (study_index % 28) as u32,
    )
    .expect("month 1-12 and day 1-28 always exist");
    let time = |rng: &mut StdRng| {
        let micros = if rng.random_bool(0.5) {
            rng.random_range(1..1_000_000)
        } else {
            0
        };
        NaiveTime::from_hms_micro_opt(
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..60),
            micros,
        )
    };
    let stamp: NaiveDateTime = study_date.and_time(time(rng).unwrap_or_default());
    let maybe = |rng: &mut StdRng, value: String| rng.random_bool(0.8).then_some(value);
    DicomStateMeta {
        tenant_id: tenant_id.into(),
        patient_id: format!("P{:06}", study_index),
        study_uid: study_uid.into(),
        series_uid: series_uid.into(),
        study_uid_hash: format!("{:020}", rng.random::<u64>()),
        series_uid_hash: format!("{:020}", rng.random::<u64>()),
        study_date_origin: study_date.format("%Y%m%d").to_string(),
        patient_name: maybe(rng, format!("DOE^JANE{study_index}")),
        patient_sex: maybe(
            rng,
            if study_index.is_multiple_of(2) {
                "F"
            } else {
                "M"
            }
            .into(),
        ),
        patient_birth_date: NaiveDate::from_ymd_opt(1950 + (study_index % 50) as i32, 6, 15),
        patient_birth_time: None,
        patient_age: maybe(rng, format!("{:03}Y", 20 + study_index % 60)),
        patient_size: rng
            .random_bool(0.7)
            .then(|| f64::from(rng.random_range(150..200_u32)) / 100.0),
        patient_weight: rng
            .random_bool(0.7)
            .then(|| f64::from(rng.random_range(45..120_u32))),
        study_date,
        study_time: time(rng),
        accession_number: maybe(rng, format!("A{study_index:08}")),
        study_id: maybe(rng, format!("{study_index}")),
        study_description: maybe(rng, "CT CHEST W/O CONTRAST".into()),
        modality: Some(["CT", "MR", "PT"][series_number % 3].into()),
        series_number: i32::try_from(series_number).ok(),
        series_date: Some(study_date),
        series_time: time(rng),
        series_description: maybe(rng, format!("Series {series_number}  Bone+")),
        body_part_examined: maybe(rng, "CHEST".into()),
        protocol_name: maybe(rng, "7.3 Lung+PET/CT+HEAD".into()),
        series_related_instances: i32::try_from(instances).ok(),
        created_time: stamp,
        updated_time: stamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_dataset_and_one_event_per_instance() {
        let spec = DatasetSpec::default();
        let a = Dataset::generate(&spec);
        let b = Dataset::generate(&spec);
        assert_eq!(a.rows, b.rows);
        assert_eq!(a.events, b.events);
        let instances: i32 = a
            .rows
            .iter()
            .filter_map(|r| r.series_related_instances)
            .sum();
        assert_eq!(a.events.len(), instances as usize);
    }

    #[test]
    fn a_ct_series_has_one_readable_file_per_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = write_ct_series(dir.path(), "1.2.3", "1.2.3.4", 3).expect("write series");
        assert_eq!(paths.len(), 3);
        assert!(paths[2].ends_with("1.2.3.4.3.dcm"), "{:?}", paths[2]);
        let options = dicom_cache_warmer::DocumentOptions::default();
        let instance = dicom_cache_warmer::read_instance(&paths[2], "1.2.3", "1.2.3.4", &options)
            .expect("read instance");
        assert_eq!(instance.sop_instance_uid(), "1.2.3.4.3");
    }

    #[test]
    fn studies_are_interleaved() {
        let dataset = Dataset::generate(&DatasetSpec {
            studies: 4,
            ..DatasetSpec::default()
        });
        let switches = dataset
            .events
            .windows(2)
            .filter(|w| w[0].study_uid != w[1].study_uid)
            .count();
        assert!(switches > 10, "{switches} study switches");
    }
}
