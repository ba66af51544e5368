//! The study keys a dataset must leave in Redis, each with the JSON it must hold, and a
//! count of those that do not hold it.

use dcw_testkit::synthetic::Dataset;
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::{by_study, encode_study, keys};
use redis::aio::MultiplexedConnection;

/// The study keys of the dataset, each with the JSON it must hold.
pub(crate) fn expected_study_keys(
    dataset: &Dataset,
) -> anyhow::Result<Vec<(String, String, String)>> {
    by_study(&dataset.rows)
        .map(|rows| {
            let tenant = TenantId::parse(&rows[0].tenant_id)?;
            let uid = Uid::parse(&rows[0].study_uid)?;
            Ok((
                keys::study_metadata(&tenant, &uid),
                keys::study_version(&tenant, &uid),
                encode_study(rows),
            ))
        })
        .collect()
}

/// How many of the dataset's study keys do not hold exactly the study's JSON.
pub(crate) async fn wrong_study_keys(
    con: &mut MultiplexedConnection,
    dataset: &Dataset,
) -> anyhow::Result<usize> {
    let expected = expected_study_keys(dataset)?;
    let mut wrong = 0;
    for chunk in expected.chunks(500) {
        let mut pipe = redis::pipe();
        for (key, _, _) in chunk {
            pipe.cmd("GET").arg(key);
        }
        let cached: Vec<Option<String>> = pipe.query_async(con).await?;
        wrong += chunk
            .iter()
            .zip(&cached)
            .filter(|((_, _, json), cached)| cached.as_deref() != Some(json.as_str()))
            .count();
    }
    Ok(wrong)
}
