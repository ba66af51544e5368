//! PostgreSQL: the pool and one function per query.

use std::str::FromStr;

use chrono::NaiveDate;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::DatabaseSettings;
use crate::ids::{TenantId, Uid};
use crate::study::DicomStateMeta;

/// The `WHERE` conditions of a [`StudyFilter`], bound as `$1` to `$3` (constant text: no
/// value is ever formatted into SQL).
const FILTER: &str = "(cardinality($1::text[]) = 0 OR tenant_id = ANY($1))
    AND ($2::date IS NULL OR study_date >= $2)
    AND ($3::date IS NULL OR study_date <= $3)";

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options from the settings, with the server-side statement timeout.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose())?
        .application_name("dicom-cache-warmer")
        .options([(
            "statement_timeout",
            format!("{}ms", settings.statement_timeout_ms),
        )]);
    Ok(match &settings.password {
        Some(password) => options.password(password.expose()),
        None => options,
    })
}

/// A pool that connects on first use, so an unreachable database never stops start-up.
pub fn lazy_pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout())
        .connect_lazy_with(connect_options(settings)?))
}

/// The rows of the given studies as one consistent snapshot.
#[derive(Debug, Default)]
pub struct StudySnapshot {
    /// Rows sorted by tenant, study and series.
    pub rows: Vec<DicomStateMeta>,
    /// When the snapshot was read (PostgreSQL's `statement_timestamp()`, in microseconds
    /// since the epoch): a later read never has a smaller version.
    pub version: i64,
}

#[derive(sqlx::FromRow)]
struct VersionedRow {
    #[sqlx(flatten)]
    meta: DicomStateMeta,
    version: i64,
}

/// Reads every series row of the given studies in one query.
///
/// Rows lacking `created_time` or `updated_time` (which the server always sets) are left
/// out, so the cache never holds a value the server's type cannot read.
pub async fn fetch_studies(
    pool: &PgPool,
    studies: &[(&TenantId, &Uid)],
) -> Result<StudySnapshot, sqlx::Error> {
    let (tenants, uids): (Vec<&str>, Vec<&str>) = studies
        .iter()
        .map(|(tenant, study)| (tenant.as_str(), study.as_str()))
        .unzip();
    let rows: Vec<VersionedRow> = sqlx::query_as(
        "SELECT s.tenant_id, s.patient_id, s.study_uid, s.series_uid, s.study_uid_hash,
                s.series_uid_hash, s.study_date_origin, s.patient_name, s.patient_sex,
                s.patient_birth_date, s.patient_birth_time, s.patient_age, s.patient_size,
                s.patient_weight, s.study_date, s.study_time, s.accession_number, s.study_id,
                s.study_description, s.modality, s.series_number, s.series_date, s.series_time,
                s.series_description, s.body_part_examined, s.protocol_name,
                s.series_related_instances, s.created_time, s.updated_time,
                (extract(epoch FROM statement_timestamp()) * 1000000)::int8 AS version
         FROM UNNEST($1::text[], $2::text[]) AS k(tenant_id, study_uid)
         JOIN dicom_state_meta s ON s.tenant_id = k.tenant_id AND s.study_uid = k.study_uid
         WHERE s.created_time IS NOT NULL AND s.updated_time IS NOT NULL
         ORDER BY s.tenant_id, s.study_uid, s.series_uid",
    )
    .bind(&tenants)
    .bind(&uids)
    .fetch_all(pool)
    .await?;
    let version = match rows.first() {
        Some(row) => row.version,
        // No row carries the version: ask for it after the read, so that it is never older
        // than the snapshot that found nothing.
        None => {
            sqlx::query_scalar("SELECT (extract(epoch FROM statement_timestamp()) * 1000000)::int8")
                .fetch_one(pool)
                .await?
        }
    };
    Ok(StudySnapshot {
        rows: rows.into_iter().map(|r| r.meta).collect(),
        version,
    })
}

/// Which studies `warm` selects: all of them when every field is empty.
#[derive(Debug, Clone, Default)]
pub struct StudyFilter {
    /// Only these tenants (all when empty).
    pub tenants: Vec<String>,
    /// Only studies on or after this date.
    pub from: Option<NaiveDate>,
    /// Only studies on or before this date.
    pub to: Option<NaiveDate>,
}

/// Counts the studies the filter selects.
pub async fn count_studies(pool: &PgPool, filter: &StudyFilter) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "SELECT count(*) FROM (SELECT DISTINCT tenant_id, study_uid FROM dicom_state_meta WHERE {FILTER}) s"
    );
    sqlx::query_scalar(&sql)
        .bind(&filter.tenants)
        .bind(filter.from)
        .bind(filter.to)
        .fetch_one(pool)
        .await
}

/// The next `limit` (tenant, study) pairs the filter selects after `after`, in key order
/// (keyset pagination on the primary key).
pub async fn list_studies(
    pool: &PgPool,
    filter: &StudyFilter,
    after: &(String, String),
    limit: usize,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let sql = format!(
        "SELECT DISTINCT tenant_id, study_uid FROM dicom_state_meta
         WHERE {FILTER} AND (tenant_id, study_uid) > ($4, $5)
         ORDER BY tenant_id, study_uid LIMIT $6"
    );
    sqlx::query_as(&sql)
        .bind(&filter.tenants)
        .bind(filter.from)
        .bind(filter.to)
        .bind(&after.0)
        .bind(&after.1)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
}

/// What a series build needs from the series' `dicom_state_meta` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SeriesRow {
    /// The raw `YYYYMMDD` study date, a segment of the server's storage paths.
    pub study_date_origin: String,
    /// The server's hash of the study UID.
    pub study_uid_hash: String,
    /// The server's hash of the series UID.
    pub series_uid_hash: String,
    /// When the row last changed; recorded as `dicom_json_meta.flag_time`.
    pub updated_time: Option<chrono::NaiveDateTime>,
}

/// The series' row, `None` when the series is not (or no longer) in the database.
pub async fn series_row(
    pool: &PgPool,
    tenant: &TenantId,
    study: &Uid,
    series: &Uid,
) -> Result<Option<SeriesRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT study_date_origin, study_uid_hash, series_uid_hash, updated_time
         FROM dicom_state_meta WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = $3",
    )
    .bind(tenant.as_str())
    .bind(study.as_str())
    .bind(series.as_str())
    .fetch_optional(pool)
    .await
}

/// The SOP Instance UIDs the database lists for the series.
pub async fn series_instances(
    pool: &PgPool,
    tenant: &TenantId,
    study: &Uid,
    series: &Uid,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT sop_uid FROM dicom_image_meta WHERE tenant_id = $1 AND study_uid = $2 AND series_uid = $3",
    )
    .bind(tenant.as_str())
    .bind(study.as_str())
    .bind(series.as_str())
    .fetch_all(pool)
    .await
}

/// `dicom_json_meta.json_status` of a built series.
pub const JSON_STATUS_BUILT: i32 = 1;
/// `dicom_json_meta.json_status` of a series whose build failed.
pub const JSON_STATUS_FAILED: i32 = 2;

/// Upserts the server's `dicom_json_meta` row, with `flag_time` = the series row's
/// `updated_time`, so that the server's own poller skips the series.
pub async fn record_json_status(
    pool: &PgPool,
    tenant: &TenantId,
    study: &Uid,
    series: &Uid,
    row: &SeriesRow,
    status: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dicom_json_meta (tenant_id, study_uid, series_uid, study_uid_hash, series_uid_hash,
             study_date_origin, flag_time, json_status, retry_times)
         VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, localtimestamp), $8, 1)
         ON CONFLICT (tenant_id, study_uid, series_uid) DO UPDATE SET
             flag_time = EXCLUDED.flag_time, json_status = EXCLUDED.json_status,
             retry_times = dicom_json_meta.retry_times + 1",
    )
    .bind(tenant.as_str())
    .bind(study.as_str())
    .bind(series.as_str())
    .bind(&row.study_uid_hash)
    .bind(&row.series_uid_hash)
    .bind(&row.study_date_origin)
    .bind(row.updated_time)
    .bind(status)
    .execute(pool)
    .await?;
    Ok(())
}
