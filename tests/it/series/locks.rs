//! The series lock: one holder at a time, renewed during a long build, lost to the
//! server's plain SET or DEL without a fight, and a busy series put off until the lease ends.

use super::*;

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
async fn a_build_that_outlasts_a_lock_renewal_keeps_its_lock_and_lease_and_is_built_once() {
    let mut env = TestEnv::new().await;
    let series = SeriesFixture::new(&mut env, 3).await;
    // Renewals every 50 ms rather than 10 s: the build below outlasts several.
    env.settings.series.lock_renew_ms = 50;
    let (fifo, daemon) = series.start_held_build(&env).await;
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    let leased = series.schedule_score(&env).await.expect("leased");
    wait_for("the schedule lease to be renewed", || async {
        series
            .schedule_score(&env)
            .await
            .is_some_and(|score| score != leased)
    })
    .await;
    // Late in a long build: the lock and its owner token have 2 s left (still within our
    // lease, so still ours); the renewal gives both a full lease again.
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
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
    let _: () = redis::pipe()
        .cmd("PEXPIRE")
        .arg(&lock_key)
        .arg(2_000)
        .cmd("PEXPIRE")
        .arg(&owner_key)
        .arg(2_000)
        .query_async(&mut env.redis.clone())
        .await
        .expect("PEXPIRE");
    wait_for("the lock and its owner token to be renewed", || async {
        pttl(lock_key.clone()).await > 2_000 && pttl(owner_key.clone()).await > 2_000
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
    let (fifo, daemon) = series.start_held_build(&env).await;
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
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
    let (fifo, daemon) = series.start_held_build(&env).await;
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    let owner_key = keys::series_lock_owner(&series.tenant, &series.series);
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
    // Skipped until the holder's lease ends (what is left of it when this test looks, by
    // Redis' clock), not asked again every 2 s, and not the 60 s of a claim's own lease.
    let lock_key = keys::series_lock(&series.tenant, &series.series);
    wait_for("the busy series to be put off", || async {
        let lease_left: i64 = redis::cmd("PTTL")
            .arg(&lock_key)
            .query_async(&mut env.redis.clone())
            .await
            .expect("PTTL");
        series
            .scheduled_in(&env)
            .await
            .is_some_and(|ahead| ahead > 2_000 && (ahead - lease_left).abs() < 1_000)
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
