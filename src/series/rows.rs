//! The series queries of a build: the series' row, its instances, and the server's
//! `dicom_json_meta` bookkeeping.

use sqlx::PgConnection;

use crate::ids::{TenantId, Uid};

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
    con: &mut PgConnection,
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
    .persistent(false)
    .fetch_optional(con)
    .await
}

/// The SOP Instance UIDs the database lists for the series.
pub async fn series_instances(
    con: &mut PgConnection,
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
    .persistent(false)
    .fetch_all(con)
    .await
}

/// Checks that the role may record builds (`series.record_status`); the error names the
/// missing grant and the setting that turns recording off.
pub async fn check_record_grant(con: &mut PgConnection) -> anyhow::Result<()> {
    let (allowed, role): (bool, String) = sqlx::query_as(
        "SELECT has_table_privilege('dicom_json_meta', 'INSERT')
                AND has_table_privilege('dicom_json_meta', 'UPDATE'), current_user::text",
    )
    .persistent(false)
    .fetch_one(con)
    .await?;
    anyhow::ensure!(
        allowed,
        "series.record_status: role {role} may not INSERT and UPDATE dicom_json_meta: \
         GRANT INSERT, UPDATE ON dicom_json_meta TO {role}, or set series.record_status = false \
         (DCW__SERIES__RECORD_STATUS=false) and let the server's webworker rebuild every document"
    );
    Ok(())
}

/// What a build came to, as recorded in the server's `dicom_json_meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonStatus {
    /// Published: `json_status` 1 and `flag_time` = the series row's `updated_time`, so the
    /// server's webworker skips the series.
    Built,
    /// Not built: `json_status` 2 and a `flag_time` that is not the row's `updated_time`
    /// (the epoch), so the webworker's query selects the series and builds it its own way.
    Failed,
}

/// Upserts the server's `dicom_json_meta` row of the series.
pub async fn record_json_status(
    con: &mut PgConnection,
    tenant: &TenantId,
    study: &Uid,
    series: &Uid,
    row: &SeriesRow,
    status: JsonStatus,
) -> Result<(), sqlx::Error> {
    let (code, flag_time) = match status {
        JsonStatus::Built => (1, row.updated_time),
        JsonStatus::Failed => (2, Some(chrono::DateTime::UNIX_EPOCH.naive_utc())),
    };
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
    .bind(flag_time)
    .bind(code)
    .persistent(false)
    .execute(con)
    .await?;
    Ok(())
}
