//! The study queries: every series row of a round's studies in one snapshot, and the
//! keyset-paginated study list of the `warm` backfill.

use chrono::NaiveDate;
use sqlx::PgConnection;

use crate::fill::study::DicomStateMeta;
use crate::ids::{TenantId, Uid};

/// The `WHERE` conditions of a [`StudyFilter`], bound as `$1` to `$3` (constant text: no
/// value is ever formatted into SQL).
const FILTER: &str = "(cardinality($1::text[]) = 0 OR tenant_id = ANY($1))
    AND ($2::date IS NULL OR study_date >= $2)
    AND ($3::date IS NULL OR study_date <= $3)";

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
    con: &mut PgConnection,
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
    .persistent(false)
    .fetch_all(&mut *con)
    .await?;
    let version = match rows.first() {
        Some(row) => row.version,
        // No row carries the version: ask for it after the read, so that it is never older
        // than the snapshot that found nothing.
        None => {
            sqlx::query_scalar("SELECT (extract(epoch FROM statement_timestamp()) * 1000000)::int8")
                .persistent(false)
                .fetch_one(con)
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
pub async fn count_studies(
    con: &mut PgConnection,
    filter: &StudyFilter,
) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "SELECT count(*) FROM (SELECT DISTINCT tenant_id, study_uid FROM dicom_state_meta WHERE {FILTER}) s"
    );
    sqlx::query_scalar(&sql)
        .bind(&filter.tenants)
        .bind(filter.from)
        .bind(filter.to)
        .persistent(false)
        .fetch_one(con)
        .await
}

/// The next `limit` (tenant, study) pairs the filter selects after `after`, in key order
/// (keyset pagination on the primary key).
pub async fn list_studies(
    con: &mut PgConnection,
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
        .persistent(false)
        .fetch_all(con)
        .await
}
