//! The relay's queries on `dcw_ingest_outbox`, and the rows it takes as stream events.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::observe::metrics;

/// The channel the triggers notify once per statement.
pub const CHANNEL: &str = "dcw_ingest_outbox";

/// One outbox row: a series (or a study) changed by a committed write.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRow {
    /// The row's id, in commit-ish order.
    pub id: i64,
    /// The tenant, as the server stored it.
    pub tenant_id: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: Option<String>,
    /// `stored` or `deleted`.
    pub event: String,
}

impl OutboxRow {
    /// The XADD that publishes this row to `stream_key` in the ingest event format.
    pub fn xadd(&self, stream_key: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream_key)
            .arg("*")
            .arg("tenant_id")
            .arg(&self.tenant_id)
            .arg("study_uid")
            .arg(&self.study_uid);
        if let Some(series_uid) = &self.series_uid {
            cmd.arg("series_uid").arg(series_uid);
        }
        cmd.arg("event").arg(&self.event);
        cmd
    }
}

/// The rows of a batch worth an event each: the last row of each (tenant, study, series)
/// only, in the order of those last rows. An event asks the daemon to read the study again,
/// so one per series says all that the batch says, and a series stored then deleted within
/// the batch is not announced as stored after its row is gone.
pub fn coalesce(rows: &[OutboxRow]) -> Vec<&OutboxRow> {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<&OutboxRow> = rows
        .iter()
        .rev()
        .filter(|row| seen.insert((&row.tenant_id, &row.study_uid, &row.series_uid)))
        .collect();
    kept.reverse();
    kept
}

/// Locks and returns the oldest `limit` rows no other transaction holds.
pub async fn take_batch(
    con: &mut PgConnection,
    limit: usize,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let started = Instant::now();
    let rows = sqlx::query_as(
        "SELECT id, tenant_id, study_uid, series_uid, event FROM dcw_ingest_outbox
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .persistent(false)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(con)
    .await?;
    metrics::db_query(started.elapsed());
    Ok(rows)
}

/// Deletes the rows of a batch (in the transaction that took them).
pub async fn delete(con: &mut PgConnection, rows: &[OutboxRow]) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let started = Instant::now();
    sqlx::query("DELETE FROM dcw_ingest_outbox WHERE id = ANY($1)")
        .persistent(false)
        .bind(&ids)
        .execute(con)
        .await?;
    metrics::db_query(started.elapsed());
    Ok(())
}

/// The rows waiting and the age of the oldest (zero when none waits).
pub async fn measure(con: &mut PgConnection) -> Result<(u64, Duration), sqlx::Error> {
    let started = Instant::now();
    let (rows, oldest_secs): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
         FROM dcw_ingest_outbox",
    )
    .persistent(false)
    .fetch_one(con)
    .await?;
    metrics::db_query(started.elapsed());
    Ok((
        u64::try_from(rows).unwrap_or(0),
        Duration::try_from_secs_f64(oldest_secs).unwrap_or_default(),
    ))
}

/// Checks that the outbox exists and that the role may relay it; the error names the
/// command or grant that is missing and the setting that turns the relay off.
pub async fn check_relay_grant(con: &mut PgConnection) -> anyhow::Result<()> {
    let (role, present, allowed): (String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, to_regclass('dcw_ingest_outbox') IS NOT NULL,
                COALESCE(has_table_privilege(to_regclass('dcw_ingest_outbox'), 'SELECT')
                     AND has_any_column_privilege(to_regclass('dcw_ingest_outbox'), 'UPDATE')
                     AND has_table_privilege(to_regclass('dcw_ingest_outbox'), 'DELETE'), false)",
    )
    .persistent(false)
    .fetch_one(con)
    .await?;
    anyhow::ensure!(
        present,
        "outbox.enabled: there is no table dcw_ingest_outbox: run `dicom-cache-warmer outbox \
         install` as the owner of the server's tables, or set outbox.enabled = false \
         (DCW__OUTBOX__ENABLED=false)"
    );
    anyhow::ensure!(
        allowed,
        "outbox.enabled: role {role} may not relay dcw_ingest_outbox: GRANT SELECT, DELETE, \
         UPDATE (id) ON dcw_ingest_outbox TO {role} (UPDATE for the row locks of SELECT … FOR \
         UPDATE; nothing is updated), or set outbox.enabled = false (DCW__OUTBOX__ENABLED=false)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, study: &str, series: Option<&str>, event: &str) -> OutboxRow {
        OutboxRow {
            id,
            tenant_id: "t".into(),
            study_uid: study.into(),
            series_uid: series.map(Into::into),
            event: event.into(),
        }
    }

    #[test]
    fn a_batch_keeps_the_last_row_of_each_series_in_order() {
        let rows = [
            row(1, "1.2", Some("1.2.1"), "stored"),
            row(2, "1.2", Some("1.2.2"), "stored"),
            row(3, "1.2", Some("1.2.1"), "stored"),
            row(4, "1.3", None, "stored"),
            row(5, "1.2", Some("1.2.2"), "deleted"),
            row(6, "1.3", Some("1.3.1"), "stored"),
        ];
        let ids: Vec<i64> = coalesce(&rows).iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 4, 5, 6]);
        assert!(coalesce(&[]).is_empty());
    }

    #[test]
    fn an_event_has_the_ingest_fields_and_no_series_when_unset() {
        let args = |cmd: redis::Cmd| -> Vec<String> {
            cmd.args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => "<not simple>".into(),
                })
                .collect()
        };
        assert_eq!(
            args(row(1, "1.2", Some("1.2.1"), "stored").xadd("s")),
            [
                "XADD",
                "s",
                "*",
                "tenant_id",
                "t",
                "study_uid",
                "1.2",
                "series_uid",
                "1.2.1",
                "event",
                "stored"
            ]
        );
        assert_eq!(
            args(row(1, "1.2", None, "deleted").xadd("s")),
            [
                "XADD",
                "s",
                "*",
                "tenant_id",
                "t",
                "study_uid",
                "1.2",
                "event",
                "deleted"
            ]
        );
    }
}
