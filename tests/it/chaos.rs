//! Never lose an event, never serve a stale one: daemons killed mid-batch, a replica
//! killed and restarted again and again, Redis restarted and PostgreSQL cut off, all under
//! load. Afterwards every study key equals its rows, every entry was acknowledged exactly
//! once as first acknowledgement, and nothing was dead-lettered.
//!
//! Each test prints one line of figures (`cargo test --test it chaos -- --nocapture`).
//! They come from the replicas' own logs: an entry counts as acknowledged when an XACK
//! returned it as still pending (so each entry counts once over all replicas); entries
//! lost are those published and never so acknowledged; duplicates are entries of finished
//! batches that an earlier XACK had already acknowledged (work a killed batch did before it
//! could acknowledge is not seen). When Redis itself goes down, an XACK it applied may lose
//! its reply: the batch is retried and its entries count as duplicates instead, so there
//! the check is that acknowledged and duplicates together cover every entry.

use std::time::Duration;

use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use tokio::time::Instant;

use crate::chaos_support::{
    CacheCheck, CuttableProxy, IngestLoad, LogFigures, PrivateRedis, Replica, backlog, check_cache,
    consumer_pending, consumers, database_address, database_url_via, kill_holding_entries,
    redis_address, redis_url_via, stream_length,
};
use crate::endpoint;
use crate::helpers::{TestEnv, wait_for};
use crate::outbox;

fn dataset(env: &TestEnv, studies: usize, seed: u64) -> Dataset {
    Dataset::generate(&DatasetSpec {
        tenant_prefix: env.tenant_prefix.clone(),
        tenants: 3,
        studies,
        max_series: 4,
        min_instances: 10,
        max_instances: 60,
        seed,
    })
}

/// Small batches, read one at a time (no coalescing over reads), so that a fault finds
/// work in hand.
fn small_batches(entries: usize) -> [(&'static str, String); 2] {
    [
        ("DCW__STREAM__BATCH_SIZE", entries.to_string()),
        ("DCW__STREAM__COALESCE_ENTRIES", entries.to_string()),
    ]
}

/// The end state of a chaos test and how it got there.
struct Outcome<'a> {
    test: &'a str,
    published: usize,
    cache: CacheCheck,
    replicas: Vec<LogFigures>,
    pending_at_end: usize,
    undelivered_at_end: usize,
    dead_lettered: usize,
    /// Whether Redis went down (so that an XACK's reply could be lost).
    redis_faulted: bool,
    fault: String,
    recovery: String,
}

impl Outcome<'_> {
    /// Prints the figures, then asserts that nothing was lost, stale or dead-lettered.
    fn report_and_check(&self) {
        let first_acks: usize = self.replicas.iter().map(LogFigures::first_acks).sum();
        let duplicates: usize = self.replicas.iter().map(|r| r.ack_shortfall).sum();
        let lost = if self.redis_faulted {
            self.published.saturating_sub(first_acks + duplicates)
        } else {
            self.published.saturating_sub(first_acks)
        };
        eprintln!(
            "{}: events published {}, studies expected {}, studies correct {}, entries lost {} \
             (acknowledged {}, pending {}, undelivered {}), dead-lettered {}, duplicates \
             processed {}, {}, recovery: {}",
            self.test,
            self.published,
            self.cache.expected,
            self.cache.correct,
            lost,
            first_acks,
            self.pending_at_end,
            self.undelivered_at_end,
            self.dead_lettered,
            duplicates,
            self.fault,
            self.recovery,
        );
        // What the replicas warned about, to explain a failure.
        let warnings: Vec<&String> = self.replicas.iter().flat_map(|r| &r.warnings).collect();
        let warnings = &warnings[warnings.len().saturating_sub(20)..];
        assert!(self.published > 0, "a load was published");
        assert_eq!(
            self.cache.correct, self.cache.expected,
            "study keys that do not equal their rows: {:#?}\nlast warnings: {warnings:#?}",
            self.cache.wrong
        );
        assert_eq!(self.pending_at_end, 0, "entries left pending");
        assert_eq!(self.undelivered_at_end, 0, "entries never delivered");
        assert_eq!(
            lost, 0,
            "every published entry was acknowledged; last warnings: {warnings:#?}"
        );
        assert!(
            first_acks <= self.published,
            "no entry is acknowledged twice as first acknowledgement"
        );
        assert_eq!(self.dead_lettered, 0, "a fault never dead-letters");
        let logged_dead: usize = self.replicas.iter().map(|r| r.dead_lettered).sum();
        assert_eq!(logged_dead, 0, "no replica logged a dead letter");
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_daemon_mid_batch_loses_nothing() {
    let env = TestEnv::new().await;
    let dataset = dataset(&env, 30, 11);
    let stream = &env.settings.stream;
    let load = IngestLoad {
        chunk: 40,
        pace: Duration::from_millis(40),
    }
    .spawn(
        &dataset,
        env.db.clone(),
        env.redis.clone(),
        stream.key.clone(),
    );

    let first = Replica::start(&env, &small_batches(20)).await;
    let dead_consumer = first.consumer.clone();
    let (orphaned, first) = kill_holding_entries(first, &env.redis, stream).await;
    let killed = Instant::now();
    assert!(!load.is_finished(), "the daemon was killed under load");
    assert!(orphaned > 0, "the killed daemon left a batch pending");

    let second = Replica::start(&env, &small_batches(20)).await;
    assert_ne!(
        second.consumer, dead_consumer,
        "a new process, a new consumer"
    );
    wait_for("the dead consumer's entries to be reclaimed", || async {
        consumer_pending(&env.redis, stream, &dead_consumer).await == 0
    })
    .await;
    let taken_over = killed.elapsed();
    let published = load.finish().await;
    env.wait_until_drained().await;
    let drained = killed.elapsed();
    wait_for("the dead consumer to be deleted", || async {
        !env.consumers().await.contains(&dead_consumer)
    })
    .await;
    let second = second.stop().await;
    assert!(
        second.reclaimed >= orphaned,
        "the second daemon reclaimed the {orphaned} entries the first left ({} reclaimed)",
        second.reclaimed
    );

    let end = env.backlog().await;
    Outcome {
        test: "killing_a_daemon_mid_batch_loses_nothing",
        published,
        cache: check_cache(&env.redis, &dataset.rows).await,
        replicas: vec![first, second.clone()],
        pending_at_end: end.pending,
        undelivered_at_end: end.lag.unwrap_or(usize::MAX),
        dead_lettered: env.dead_letters().await.len(),
        redis_faulted: false,
        fault: format!(
            "kill -9 with {orphaned} entries in hand, {} reclaimed by the second daemon",
            second.reclaimed
        ),
        recovery: format!(
            "orphaned entries acknowledged {} after the kill, stream drained {} after",
            seconds(taken_over),
            seconds(drained)
        ),
    }
    .report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_survive_one_being_killed_and_restarted_repeatedly() {
    const REPLICAS: usize = 3;
    const KILLS: usize = 4;
    let env = TestEnv::new().await;
    let dataset = dataset(&env, 60, 12);
    let stream = &env.settings.stream;
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(Replica::start(&env, &small_batches(20)).await);
    }
    let load = IngestLoad {
        chunk: 50,
        pace: Duration::from_millis(40),
    }
    .spawn(
        &dataset,
        env.db.clone(),
        env.redis.clone(),
        stream.key.clone(),
    );

    let mut figures = Vec::new();
    let mut orphaned = Vec::new();
    let mut slowest_takeover = Duration::ZERO;
    let mut most_consumers = 0;
    for _ in 0..KILLS {
        let victim = replicas.pop().expect("a replica to kill");
        let dead_consumer = victim.consumer.clone();
        let (held, killed) = kill_holding_entries(victim, &env.redis, stream).await;
        let killed_at = Instant::now();
        assert!(!load.is_finished(), "killed under load");
        orphaned.push(held);
        figures.push(killed);
        let restarted = Replica::start(&env, &small_batches(20)).await;
        wait_for("the restarted replica to join the group", || async {
            env.consumers().await.contains(&restarted.consumer)
        })
        .await;
        most_consumers = most_consumers.max(consumers(&env.redis, stream).await.len());
        replicas.push(restarted);
        wait_for("the dead consumer's entries to be reclaimed", || async {
            consumer_pending(&env.redis, stream, &dead_consumer).await == 0
        })
        .await;
        slowest_takeover = slowest_takeover.max(killed_at.elapsed());
    }
    let published = load.finish().await;
    env.wait_until_drained().await;
    let live: std::collections::BTreeSet<String> =
        replicas.iter().map(|r| r.consumer.clone()).collect();
    wait_for("the dead consumers to be deleted", || async {
        let names: std::collections::BTreeSet<String> = env.consumers().await.into_iter().collect();
        names == live
    })
    .await;
    for replica in replicas {
        assert_eq!(
            consumer_pending(&env.redis, stream, &replica.consumer).await,
            0
        );
        figures.push(replica.stop().await);
    }
    assert!(
        most_consumers > REPLICAS,
        "a killed replica stays a consumer until deleted"
    );

    let end = env.backlog().await;
    let reclaimed: usize = figures.iter().map(|f| f.reclaimed).sum();
    Outcome {
        test: "three_replicas_survive_one_being_killed_and_restarted_repeatedly",
        published,
        cache: check_cache(&env.redis, &dataset.rows).await,
        replicas: figures,
        pending_at_end: end.pending,
        undelivered_at_end: end.lag.unwrap_or(usize::MAX),
        dead_lettered: env.dead_letters().await.len(),
        redis_faulted: false,
        fault: format!(
            "{KILLS} kill -9 under load leaving {orphaned:?} entries in hand, \
             {reclaimed} reclaimed, consumers up to {most_consumers} then back to {REPLICAS}"
        ),
        recovery: format!(
            "slowest takeover of a dead replica's entries {}",
            seconds(slowest_takeover)
        ),
    }
    .report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_drain_loses_nothing() {
    let env = TestEnv::new().await;
    let mut redis = PrivateRedis::start().await;
    let dataset = dataset(&env, 40, 13);
    dataset.insert(&env.db).await.expect("insert rows");
    let stream = &env.settings.stream;
    dataset
        .publish(&mut redis.connection().await, &stream.key)
        .await
        .expect("publish");
    let published = dataset.events.len();

    let mut vars = vec![("DCW__REDIS__URL", redis.url())];
    vars.extend(small_batches(10));
    let mut replica = Replica::start(&env, &vars).await;
    wait_for(
        "the daemon to have acknowledged a few hundred entries",
        || {
            let done = replica.figures().entries_done;
            async move { done >= 300 }
        },
    )
    .await;
    let before = backlog(&redis.connection().await, stream).await;
    assert!(!before.is_drained(), "stopped mid-drain: {before:?}");
    let stopped = Instant::now();
    redis.stop().await;
    wait_for("the daemon to notice the outage", || {
        let noticed = replica.figures().saw_outage_of("redis", stopped);
        async move { noticed }
    })
    .await;
    // Down a while longer, through the daemon's retries.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed())).await;
    let outage = stopped.elapsed();
    assert!(replica.is_running(), "the daemon outlives the outage");
    redis.restart().await;
    let restarted = Instant::now();
    let con = redis.connection().await;
    wait_for("the group to drain after the restart", || async {
        backlog(&con, stream).await.is_drained()
    })
    .await;
    let drained = restarted.elapsed();
    let figures = replica.stop().await;
    let reconnected = figures.back_after("redis", restarted);

    assert_eq!(
        stream_length(&con, &stream.key).await,
        published,
        "the append-only file kept every entry"
    );
    let end = backlog(&con, stream).await;
    Outcome {
        test: "a_redis_restart_mid_drain_loses_nothing",
        published,
        cache: check_cache(&con, &dataset.rows).await,
        replicas: vec![figures],
        pending_at_end: end.pending,
        undelivered_at_end: end.lag.unwrap_or(usize::MAX),
        dead_lettered: stream_length(&con, &stream.dead_letter_key).await,
        redis_faulted: true,
        fault: format!(
            "redis down {} with {} pending and {} undelivered",
            seconds(outage),
            before.pending,
            before.lag.unwrap_or(0)
        ),
        recovery: format!(
            "reconnected {} after the restart, drained {} after",
            reconnected.map_or("(not logged)".into(), seconds),
            seconds(drained)
        ),
    }
    .report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_for_ten_seconds_loses_nothing() {
    let env = TestEnv::new().await;
    let proxy = CuttableProxy::start(database_address(&env.settings)).await;
    let dataset = dataset(&env, 40, 14);
    let stream = &env.settings.stream;
    let http_port = endpoint::free_port();
    let mut vars = vec![
        (
            "DCW__DATABASE__URL",
            database_url_via(&env.settings, proxy.port),
        ),
        ("DCW__HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
    ];
    vars.extend(small_batches(20));
    let mut replica = Replica::start(&env, &vars).await;
    let readiness = || async {
        endpoint::get(http_port, "/readyz")
            .await
            .map(|(status, _)| status)
    };
    wait_for("readiness before the outage", || async {
        readiness().await == Some(200)
    })
    .await;
    // The load commits rows straight to PostgreSQL: only the daemon is cut off.
    let load = IngestLoad {
        chunk: 40,
        pace: Duration::from_millis(60),
    }
    .spawn(
        &dataset,
        env.db.clone(),
        env.redis.clone(),
        stream.key.clone(),
    );
    wait_for("the daemon to have acknowledged some entries", || {
        let done = replica.figures().entries_done;
        async move { done >= 100 }
    })
    .await;

    proxy.cut();
    let cut = Instant::now();
    let outage = Duration::from_secs(10);
    wait_for("readiness to fall during the outage", || async {
        readiness().await == Some(503)
    })
    .await;
    let alive = endpoint::get(http_port, "/healthz")
        .await
        .map(|(status, _)| status);
    assert_eq!(alive, Some(200), "liveness does not depend on PostgreSQL");
    wait_for("the daemon to notice the outage", || {
        let noticed = replica.figures().saw_outage_of("postgres", cut);
        async move { noticed }
    })
    .await;
    // The load goes on (its last chunk held): work piles up.
    wait_for("work to pile up during the outage", || async {
        !env.backlog().await.is_drained()
    })
    .await;
    tokio::time::sleep(outage.saturating_sub(cut.elapsed())).await;
    assert!(replica.is_running(), "the daemon outlives the outage");
    let during = env.backlog().await;
    let cut_for = cut.elapsed();
    proxy.restore();
    let restored = Instant::now();
    let published = load.finish().await;
    env.wait_until_drained().await;
    let drained = restored.elapsed();
    wait_for("readiness after the outage", || async {
        readiness().await == Some(200)
    })
    .await;
    let figures = replica.stop().await;
    let reconnected = figures.back_after("postgres", restored);

    let end = env.backlog().await;
    Outcome {
        test: "postgres_cut_off_for_ten_seconds_loses_nothing",
        published,
        cache: check_cache(&env.redis, &dataset.rows).await,
        replicas: vec![figures],
        pending_at_end: end.pending,
        undelivered_at_end: end.lag.unwrap_or(usize::MAX),
        dead_lettered: env.dead_letters().await.len(),
        redis_faulted: false,
        fault: format!(
            "postgres cut off {} with {} pending and {} undelivered at its end (load still \
             running)",
            seconds(cut_for),
            during.pending,
            during.lag.unwrap_or(0),
        ),
        recovery: format!(
            "postgres reachable again {} after the restore, drained {} after",
            reconnected.map_or("(not logged)".into(), seconds),
            seconds(drained)
        ),
    }
    .report_and_check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_that_stops_answering_without_closing_is_an_outage_not_a_hang() {
    postgres_black_hole(CuttableProxy::restore).await;
}

/// The connections caught in the black hole stay silent for good (a NAT or firewall forgot
/// them, or a failover): each is given up within the query deadline, not held until the kernel
/// gives up on it a quarter of an hour later, and new connections carry the work on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stranded_in_a_black_hole_are_given_up_and_new_ones_carry_on() {
    postgres_black_hole(CuttableProxy::strand).await;
}

/// A query lost in a black hole fails the work without hanging the loop; once `lift` has
/// changed the proxy, the daemon drains.
async fn postgres_black_hole(lift: fn(&CuttableProxy)) {
    let env = TestEnv::new().await;
    let proxy = CuttableProxy::start(database_address(&env.settings)).await;
    let http_port = endpoint::free_port();
    let vars = [
        (
            "DCW__DATABASE__URL",
            database_url_via(&env.settings, proxy.port),
        ),
        ("DCW__HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
        ("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "3000".to_owned()),
        ("DCW__DATABASE__CONNECT_TIMEOUT_MS", "1000".to_owned()),
        // One connection: one held in the black hole and never given back shows at once.
        ("DCW__DATABASE__MAX_CONNECTIONS", "1".to_owned()),
        ("DCW__STREAM__CLAIM_IDLE_MS", "10000".to_owned()),
        ("DCW__STREAM__STALE_CONSUMER_MS", "20000".to_owned()),
    ];
    let replica = Replica::start(&env, &vars).await;
    let status = |path: &'static str| async move {
        endpoint::get(http_port, path)
            .await
            .map(|(status, _)| status)
    };
    wait_for("readiness before the black hole", || async {
        status("/readyz").await == Some(200)
    })
    .await;

    // A query in flight (held by a lock), then packets dropped with the connections left
    // open: the answer never comes back, only the daemon's own deadline ends the query.
    let dataset = dataset(&env, 3, 15);
    dataset.insert(&env.db).await.expect("insert rows");
    let lock = env.lock_state_table().await;
    dataset
        .publish(&mut env.redis.clone(), &env.settings.stream.key)
        .await
        .expect("publish");
    env.wait_for_a_query_waiting_on_a_lock().await;
    proxy.freeze();
    lock.rollback().await.expect("release the lock");
    wait_for("the lost query to fail the work, not hang it", || async {
        endpoint::get(http_port, "/readyz")
            .await
            .is_some_and(|(s, body)| s == 503 && body.contains("the work in hand fails: postgres"))
    })
    .await;
    assert_eq!(status("/healthz").await, Some(200), "the loop is not stuck");
    assert!(
        !env.backlog().await.is_drained(),
        "nothing acknowledged without the rows"
    );

    lift(&proxy);
    env.wait_until_drained().await;
    wait_for("readiness again", || async {
        status("/readyz").await == Some(200)
    })
    .await;
    replica.stop().await;
    let cache = check_cache(&env.redis, &dataset.rows).await;
    assert_eq!(
        (cache.correct, cache.wrong.len()),
        (cache.expected, 0),
        "{:?}",
        cache.wrong
    );
}

/// The daemon's database through `proxy`, with deadlines of a second and claim times that fit
/// them, then `more`.
fn through(
    env: &TestEnv,
    proxy: &CuttableProxy,
    more: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        (
            "DCW__DATABASE__URL",
            database_url_via(&env.settings, proxy.port),
        ),
        ("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "1000".to_owned()),
        ("DCW__DATABASE__CONNECT_TIMEOUT_MS", "1000".to_owned()),
        ("DCW__STREAM__CLAIM_IDLE_MS", "10000".to_owned()),
        ("DCW__STREAM__STALE_CONSUMER_MS", "20000".to_owned()),
    ];
    vars.extend(more.iter().map(|&(name, value)| (name, value.to_owned())));
    vars
}

/// The relay's listening connection, stranded in a black hole, never fails by itself: its
/// check (every 5 s) gets no answer within the query deadline, and notifications are heard
/// again on a new connection. With polling off, only a working listener wakes the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_listener_stranded_in_a_black_hole_is_given_up_and_listens_again() {
    let env = TestEnv::new().await;
    outbox::install(&env).await;
    let proxy = CuttableProxy::start(database_address(&env.settings)).await;
    let vars = through(
        &env,
        &proxy,
        &[
            ("DCW__OUTBOX__ENABLED", "true"),
            ("DCW__OUTBOX__POLL_MS", "600000"),
        ],
    );
    let replica = Replica::start(&env, &vars).await;
    let first = outbox::write_studies(&env, 2, 21).await;
    wait_for("warmed through a notification", || async {
        outbox::all_warm(&env, &first).await
    })
    .await;

    proxy.strand();
    let later = outbox::write_studies(&env, 2, 22).await;
    // Each look writes a row more: its notification wakes the relay once a listener hears.
    let mut seed = 100;
    wait_for("warmed once a new listener hears", || {
        seed += 1;
        let (env, later) = (&env, &later);
        async move {
            outbox::write_studies(env, 1, seed).await;
            outbox::all_warm(env, later).await
        }
    })
    .await;
    replica.stop().await;
}

/// A relay step lost in a black hole while it holds a batch of outbox rows (taken, their
/// publishing in hand) is given up at the step's deadline; the server, which never hears of
/// it, ends the transaction once it has waited that long on the client, and the rows go to
/// the other replica. Without the server-side limit they stayed locked (`SKIP LOCKED` passes
/// them by) until the server's TCP keepalive gave up, over two hours later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_held_by_a_relay_lost_in_a_black_hole_go_to_another_replica() {
    let env = TestEnv::new().await;
    outbox::install(&env).await;
    let postgres = CuttableProxy::start(database_address(&env.settings)).await;
    let redis = CuttableProxy::start(redis_address(&env.settings)).await;
    let relaying = [
        ("DCW__OUTBOX__ENABLED", "true".to_owned()),
        ("DCW__OUTBOX__POLL_MS", "200".to_owned()),
        ("DCW__DATABASE__STATEMENT_TIMEOUT_MS", "1000".to_owned()),
        ("DCW__DATABASE__CONNECT_TIMEOUT_MS", "1000".to_owned()),
        ("DCW__STREAM__CLAIM_IDLE_MS", "30000".to_owned()),
        ("DCW__STREAM__STALE_CONSUMER_MS", "60000".to_owned()),
    ];
    let mut lost_vars = relaying.to_vec();
    lost_vars.extend([
        (
            "DCW__DATABASE__URL",
            database_url_via(&env.settings, postgres.port),
        ),
        ("DCW__REDIS__URL", redis_url_via(&env.settings, redis.port)),
        // Time to strand the database while the rows wait on the publishing.
        ("DCW__REDIS__COMMAND_TIMEOUT_MS", "5000".to_owned()),
    ]);
    let lost = Replica::start(&env, &lost_vars).await;
    let first = outbox::write_studies(&env, 2, 31).await;
    wait_for("warmed through both proxies", || async {
        outbox::all_warm(&env, &first).await
    })
    .await;

    redis.freeze();
    let held = outbox::write_studies(&env, 2, 32).await;
    env.wait_for_rows_held_by_the_relay().await;
    // Frozen, not stranded: the stranded replica cannot take the rows back on a new
    // connection either.
    postgres.freeze();

    let other = Replica::start(&env, &relaying).await;
    wait_for("the held rows relayed by the other replica", || async {
        outbox::all_warm(&env, &held).await
    })
    .await;
    other.stop().await;
    redis.restore();
    lost.kill_hard().await;
}

/// A NAT or firewall forgets an idle connection without a word, and sqlx sends no keepalive
/// that would keep it known. The pool closes connections idle for `database.idle_timeout_ms`
/// before that can happen, so after a quiet spell the next fill opens a new connection rather
/// than waiting on a dead one (kept for sqlx's default of 10 minutes, the silenced
/// connection failed the fill at the acquire timeout: an outage of PostgreSQL in the logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_closed_before_a_quiet_spell_lets_a_nat_forget_them() {
    let env = TestEnv::new().await;
    let proxy = CuttableProxy::start(database_address(&env.settings)).await;
    let vars = through(&env, &proxy, &[("DCW__DATABASE__IDLE_TIMEOUT_MS", "500")]);
    let replica = Replica::start(&env, &vars).await;
    let before = dataset(&env, 2, 41);
    env.load(&before).await;
    env.wait_until_drained().await;
    wait_for("the pool to close its idle connections", || async {
        env.daemon_backends("true").await == 0
    })
    .await;

    // The quiet spell's end: every connection open now is forgotten on the way.
    let since = Instant::now();
    proxy.strand();
    let after = dataset(&env, 2, 42);
    env.load(&after).await;
    env.wait_until_drained().await;
    let figures = replica.stop().await;
    assert!(
        !figures.saw_outage_of("postgres", since),
        "a fill met a forgotten connection: {:?}",
        figures.warnings
    );
    let cache = check_cache(&env.redis, &after.rows).await;
    assert_eq!(
        cache.correct, cache.expected,
        "every study warm: {:?}",
        cache.wrong
    );
}
