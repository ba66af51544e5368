//! What the daemon asks of Redis stays bounded: oversize entries are never held (or
//! dead-lettered) whole, scripts lost by Redis are loaded again, and
//! `stream.max_events_per_sec` paces the reads.

use std::time::Instant;

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::ids::{TenantId, Uid};
use dicom_cache_warmer::{ReadMode, ServiceUrl, by_study, ensure_group, keys, read_new};

use crate::chaos_support::PrivateRedis;
use crate::helpers::TestEnv;

/// Bytes an oversize entry keeps of each name and value.
const KEEP_BYTES: usize = 1024;
/// A value of an oversize entry: far over the 4 KiB a value may have.
const BIG_VALUE: usize = 200_000;

fn one_study(env: &TestEnv, seed: u64) -> Dataset {
    Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 1,
        studies: 1,
        seed,
        ..DatasetSpec::default()
    })
}

/// Whether every study of `dataset` has its key.
async fn all_warm(env: &TestEnv, dataset: &Dataset) -> bool {
    for rows in by_study(&dataset.rows) {
        let tenant = TenantId::parse(&rows[0].tenant_id).expect("tenant");
        let study = Uid::parse(&rows[0].study_uid).expect("uid");
        if env
            .get(&keys::study_metadata(&tenant, &study))
            .await
            .is_none()
        {
            return false;
        }
    }
    true
}

/// Adds `count` entries naming `dataset`'s study with a value of [`BIG_VALUE`] bytes;
/// returns the size of one (names and values).
async fn publish_oversize(env: &TestEnv, dataset: &Dataset, count: usize) -> usize {
    let row = &dataset.rows[0];
    let fields: [(&str, Vec<u8>); 3] = [
        ("tenant_id", row.tenant_id.as_bytes().to_vec()),
        ("study_uid", row.study_uid.as_bytes().to_vec()),
        ("blob", vec![b'x'; BIG_VALUE]),
    ];
    let mut pipe = redis::pipe();
    for _ in 0..count {
        let xadd = pipe.cmd("XADD").arg(&env.settings.stream.key).arg("*");
        for (name, value) in &fields {
            xadd.arg(name).arg(value);
        }
        xadd.ignore();
    }
    let () = pipe
        .query_async(&mut env.redis.clone())
        .await
        .expect("XADD");
    fields
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum()
}

#[tokio::test]
async fn oversize_entries_are_dead_lettered_cut_down_with_their_size() {
    let env = TestEnv::new().await;
    let dataset = one_study(&env, 1);
    // More oversize entries than one read takes, between valid events.
    env.load(&dataset).await;
    let size = publish_oversize(&env, &dataset, 3 * env.settings.stream.batch_size / 2).await;
    env.load(&one_study(&env, 2)).await;

    env.drain().await;

    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 3 * env.settings.stream.batch_size / 2);
    for letter in &dead {
        let field = |name: &str| {
            letter
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert!(
            letter.iter().all(|(_, value)| value.len() <= KEEP_BYTES),
            "no value is copied whole"
        );
        assert_eq!(field("blob").map(|v| v.len()), Some(KEEP_BYTES));
        assert_eq!(field("dead_original_bytes"), Some(size.to_string()));
        assert_eq!(field("dead_original_fields").as_deref(), Some("3"));
        let reason = field("dead_reason").unwrap_or_default();
        // The reason a whole read would give.
        assert_eq!(reason, format!("entry is {size} bytes, more than 65536"));
    }
    assert!(all_warm(&env, &dataset).await && all_warm(&env, &one_study(&env, 2)).await);
}

#[tokio::test]
async fn every_read_hands_over_oversize_entries_cut_down() {
    let env = TestEnv::new().await;
    let dataset = one_study(&env, 1);
    let mut con = env.redis.clone();
    ensure_group(&mut con, &env.settings.stream)
        .await
        .expect("group");
    let size = publish_oversize(&env, &dataset, 2).await;
    env.load(&dataset).await;
    let valid = dataset.events.len();

    for mode in [ReadMode::Wait, ReadMode::Bounded] {
        let entries = read_new(&mut con, &env.settings.stream, mode)
            .await
            .expect("read");
        let cut: Vec<_> = entries.iter().filter(|e| e.oversize.is_some()).collect();
        assert_eq!(cut.len(), 2, "{mode:?}");
        for entry in cut {
            let oversize = entry.oversize.expect("cut");
            assert_eq!((oversize.bytes, oversize.fields), (size, 3), "{mode:?}");
            assert_eq!(oversize.large_value, Some(2), "{mode:?}");
            assert!(
                entry.fields.iter().all(|(_, v)| v.len() <= KEEP_BYTES),
                "{mode:?}"
            );
        }
        assert_eq!(
            entries.len(),
            2 + valid.min(env.settings.stream.batch_size - 2)
        );
        // The same again for the next mode.
        publish_oversize(&env, &dataset, 2).await;
        env.load(&dataset).await;
    }
}

#[tokio::test]
async fn scripts_that_redis_lost_are_loaded_again() {
    let mut env = TestEnv::new().await;
    let redis = PrivateRedis::start().await;
    env.redis = redis.connection().await;
    env.settings.redis.url = ServiceUrl::from(redis.url().as_str());
    let first = one_study(&env, 1);
    env.load(&first).await;
    env.drain().await;
    assert!(all_warm(&env, &first).await);

    // As after a restart or a failover: Redis no longer knows the daemon's scripts.
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut env.redis.clone())
        .await
        .expect("SCRIPT FLUSH");
    let second = one_study(&env, 2);
    env.load(&second).await;
    env.drain().await;

    assert!(all_warm(&env, &second).await);
    assert_eq!(env.dead_letters().await, Vec::<Vec<_>>::new());
}

#[tokio::test]
async fn a_ceiling_on_events_per_second_paces_the_reads() {
    let mut env = TestEnv::new().await;
    env.settings.stream.batch_size = 100;
    env.settings.stream.max_events_per_sec = Some(1_000);
    env.settings.validate().expect("valid");
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 1,
        studies: 10,
        min_instances: 30,
        max_instances: 30,
        ..DatasetSpec::default()
    });
    env.load(&dataset).await;
    let events = dataset.events.len();
    assert!(events >= 600, "{events} events");

    let started = Instant::now();
    env.drain().await;

    // The first read goes at once; each later one waits for the share of a second of the
    // reads before it. A lower bound: a loaded machine only makes the drain slower.
    let floor_ms = (events - env.settings.stream.batch_size) as u128;
    assert!(
        started.elapsed().as_millis() >= floor_ms,
        "{events} events drained in {:?}, faster than 1,000 a second",
        started.elapsed()
    );
    assert!(all_warm(&env, &dataset).await);
}
