//! Entries in hand stay this replica's while their window takes longer than
//! `stream.claim_idle_ms`: another replica does not claim them, and their delivery counts do
//! not grow.

use std::time::{Duration, Instant};

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::ensure_group;

use crate::helpers::{TestEnv, wait_for};

/// One pending entry as `XPENDING` shows it.
struct Pending {
    consumer: String,
    idle_ms: i64,
    deliveries: i64,
}

async fn pending(env: &TestEnv) -> Vec<Pending> {
    let reply: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(&env.settings.stream.key)
        .arg(&env.settings.stream.group)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query_async(&mut env.redis.clone())
        .await
        .expect("XPENDING");
    reply
        .into_iter()
        .map(|(_, consumer, idle_ms, deliveries)| Pending {
            consumer,
            idle_ms,
            deliveries,
        })
        .collect()
}

#[tokio::test]
async fn a_window_longer_than_the_claim_time_stays_with_its_replica() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 1,
        studies: 3,
        ..DatasetSpec::default()
    });
    ensure_group(&mut env.redis.clone(), &env.settings.stream)
        .await
        .expect("group");
    env.load(&dataset).await;
    let events = dataset.events.len();

    // The window cannot be done while the table is locked: its queries time out and are
    // retried, and between the tries its entries are claimed again.
    let lock = env.lock_state_table().await;
    let holder = env.start_daemon();
    wait_for("the window in hand", || async {
        let pending = pending(&env).await;
        pending.len() == events && env.backlog().await.lag == Some(0)
    })
    .await;
    let mut other = env.settings.clone();
    other.stream.consumer = format!("{}-other", env.settings.stream.consumer);
    let other = env.start_daemon_with(other);

    // Six claim times, long enough for the retries' backoff to pass a claim time: without
    // the claims, the other replica would take the entries.
    let claim_idle = Duration::from_millis(env.settings.stream.claim_idle_ms);
    let held = Instant::now();
    while held.elapsed() < 6 * claim_idle {
        for entry in pending(&env).await {
            assert_eq!(
                (entry.consumer.as_str(), entry.deliveries),
                (env.settings.stream.consumer.as_str(), 1),
                "an entry in hand moved to another replica or was delivered again"
            );
        }
        tokio::time::sleep(claim_idle / 10).await;
    }
    lock.rollback().await.expect("unlock");
    env.wait_until_drained().await;
    other.stop().await;
    holder.stop().await;
    assert_eq!(env.dead_letters().await.len(), 0);
}

#[tokio::test]
async fn a_stop_with_a_window_of_100_000_entries_in_hand_ends_within_the_grace_period() {
    let mut env = TestEnv::new().await;
    env.reclaim_quickly();
    env.settings.shutdown.grace_secs = 3;
    env.settings.validate().expect("valid");
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 4,
        studies: 5_000,
        max_series: 1,
        min_instances: 20,
        max_instances: 20,
        ..DatasetSpec::default()
    });
    ensure_group(&mut env.redis.clone(), &env.settings.stream)
        .await
        .expect("group");
    env.load(&dataset).await;
    let events = dataset.events.len();
    assert_eq!(events, 100_000);

    // The whole backlog is read into one window while the table is locked (the default
    // window holds up to 1,000,000 entries); the stop comes as it is being processed.
    let lock = env.lock_state_table().await;
    let daemon = env.start_daemon();
    // Every entry delivered (no lag), and none acknowledged while the table is locked.
    wait_for("the whole backlog in hand", || async {
        env.backlog().await.lag == Some(0)
    })
    .await;
    assert_eq!(env.backlog().await.pending, events);
    lock.rollback().await.expect("unlock");
    let stopping = Instant::now();
    daemon.stop().await;

    let grace = Duration::from_secs(env.settings.shutdown.grace_secs);
    assert!(
        stopping.elapsed() < grace,
        "the stop took {:?}, more than shutdown.grace_secs",
        stopping.elapsed()
    );
    // Nothing lost: each entry is acknowledged or still pending for another replica.
    let backlog = env.backlog().await;
    assert_eq!(backlog.lag, Some(0));
    assert!(backlog.pending <= events);
    assert_eq!(env.dead_letters().await.len(), 0);
    // What was left is claimed by the next consumer once idle past the claim time.
    let claim_idle = i64::try_from(env.settings.stream.claim_idle_ms).expect("small");
    wait_for("the entries left to be claimable", || async {
        pending(&env)
            .await
            .iter()
            .all(|entry| entry.idle_ms > claim_idle)
    })
    .await;
    env.drain().await;
}
