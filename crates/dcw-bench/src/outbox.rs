//! `outbox`: on a scratch database, what the outbox's triggers cost the server's writes
//! (wado-consumer batches timed with and without them, in interleaved rounds), then how
//! fast the daemon relays the outbox: studies written by one `COPY` with the daemon
//! running, timed until the outbox is empty (rows/s) and until every study key is warm
//! (events/s, end to end).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use dcw_testkit::server_writes::{copy_series, upsert_instances, upsert_series};
use dcw_testkit::synthetic::{Dataset, DatasetSpec, InstanceEvent};
use dicom_cache_warmer::{
    DicomStateMeta, Settings, backlog, ensure_group, install_outbox, uninstall_outbox,
};
use serde_json::json;
use sqlx::PgPool;

use crate::daemon::{Daemon, DaemonArgs};
use crate::sampling::{format_load, load_average, machine};
use crate::scratch::{Scratch, analyze, with_scratch};
use crate::verify::wrong_study_keys;

/// Batches of one mode timed back to back before switching to the other.
const ROUND: usize = 10;
/// How often the relay phase looks at the outbox and the group.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A relay phase that takes longer than this is reported as failed.
const RELAY_DEADLINE: Duration = Duration::from_secs(300);

/// The flags of `outbox`.
#[derive(Args)]
pub(crate) struct OutboxArgs {
    /// wado-consumer batches timed per mode (without and with the triggers), in rounds of
    /// 10 that alternate the modes.
    #[arg(long, default_value_t = 100)]
    batches: usize,
    /// Instance rows per batch.
    #[arg(long, default_value_t = 1_000)]
    instances: usize,
    /// Series per batch (one state row each, upserted before the instance rows).
    #[arg(long, default_value_t = 4)]
    series: usize,
    /// Studies written by one COPY for the relay figures (1 to 6 series each).
    #[arg(long, default_value_t = 500)]
    studies: usize,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// The wado-consumer batches of one mode.
#[derive(Default)]
struct Timings {
    batches: Vec<Duration>,
}

impl Timings {
    fn sorted_ms(&self) -> Vec<f64> {
        let mut ms: Vec<f64> = self.batches.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        ms
    }

    fn median_ms(&self) -> f64 {
        median(self.sorted_ms())
    }

    /// The median of the batches from `from` on.
    fn median_since_ms(&self, from: usize) -> f64 {
        let mut ms: Vec<f64> = self.batches[from..]
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        median(ms)
    }

    fn p90_ms(&self) -> f64 {
        let ms = self.sorted_ms();
        ms.get(ms.len() * 9 / 10).copied().unwrap_or(f64::NAN)
    }

    fn mean_ms(&self) -> f64 {
        let total: Duration = self.batches.iter().sum();
        total.as_secs_f64() * 1e3 / self.batches.len().max(1) as f64
    }
}

/// The middle value of sorted values.
fn median(sorted: Vec<f64>) -> f64 {
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What the triggers cost: both modes' batches, the ratio of the medians of each round
/// (the two modes of a round ran minutes apart at most: a paired comparison), and the
/// outbox rows each batch added.
struct TriggerCost {
    without: Timings,
    with: Timings,
    round_ratios: Vec<f64>,
    rows_per_batch: f64,
}

/// The relay phase's figures.
struct Relay {
    rows: usize,
    studies: usize,
    copy: Duration,
    relayed: Duration,
    warmed: Duration,
    rows_counted: f64,
}

/// Runs both phases on a scratch environment and prints the report.
pub(crate) async fn run(
    mut settings: Settings,
    config: Option<&std::path::Path>,
    args: &OutboxArgs,
) -> anyhow::Result<()> {
    ensure!(
        args.series > 0 && args.instances > 0,
        "--series and --instances must be at least 1"
    );
    settings.outbox.enabled = true;
    let load_before = load_average();
    let (machine, cost, relay) = with_scratch(settings, async |scratch| {
        let pool = scratch.pool()?;
        let machine = machine(&mut scratch.redis().await?, &pool).await;
        let cost = trigger_cost(scratch, &pool, args).await?;
        let relay = relay(scratch, &pool, config, args).await?;
        pool.close().await;
        Ok((machine, cost, relay))
    })
    .await?;
    let TriggerCost {
        without,
        with,
        round_ratios,
        rows_per_batch,
    } = cost;
    let ratio = with.median_ms() / without.median_ms();
    let mut sorted_ratios = round_ratios.clone();
    sorted_ratios.sort_by(f64::total_cmp);
    let paired = median(sorted_ratios);
    println!(
        "dcw-bench outbox: {} batches per mode of {} series rows then {} instance rows",
        args.batches, args.series, args.instances
    );
    println!("machine            {machine}");
    println!(
        "{:<22} {:>14} {:>14}",
        "per batch", "no triggers", "triggers"
    );
    for (name, pick) in [
        ("median (ms)", Timings::median_ms as fn(&Timings) -> f64),
        ("p90 (ms)", Timings::p90_ms),
        ("mean (ms)", Timings::mean_ms),
    ] {
        println!("{name:<22} {:>14.2} {:>14.2}", pick(&without), pick(&with));
    }
    println!(
        "triggers / none      {ratio:.3}x (medians); {paired:.3}x (median of the {} rounds' \
         ratios); {:+.1} µs per instance row",
        round_ratios.len(),
        (with.median_ms() - without.median_ms()) * 1e3 / args.instances as f64
    );
    println!("outbox rows/batch    {rows_per_batch:.2} (one per series per statement)");
    let relayed_rate = relay.rows as f64 / relay.relayed.as_secs_f64();
    let warm_rate = relay.rows as f64 / relay.warmed.as_secs_f64();
    println!(
        "relay                {} studies, {} series rows by one COPY ({:.1} ms)",
        relay.studies,
        relay.rows,
        relay.copy.as_secs_f64() * 1e3
    );
    println!(
        "  COPY committed to outbox empty   {:.1} ms = {relayed_rate:.0} rows/s",
        relay.relayed.as_secs_f64() * 1e3
    );
    println!(
        "  COPY start to every key warm     {:.1} ms = {warm_rate:.0} events/s, {:.0} studies/s",
        relay.warmed.as_secs_f64() * 1e3,
        relay.studies as f64 / relay.warmed.as_secs_f64()
    );
    println!("  dcw_outbox_rows_relayed_total    {}", relay.rows_counted);
    let load_after = load_average();
    println!(
        "load before / after  {} / {}",
        format_load(load_before),
        format_load(load_after)
    );
    println!(
        "{}",
        json!({
            "command": "outbox",
            "batches_per_mode": args.batches,
            "series": args.series,
            "instances": args.instances,
            "median_ms": {"without": without.median_ms(), "with": with.median_ms()},
            "p90_ms": {"without": without.p90_ms(), "with": with.p90_ms()},
            "mean_ms": {"without": without.mean_ms(), "with": with.mean_ms()},
            "ratio_of_medians": ratio,
            "median_of_round_ratios": paired,
            "outbox_rows_per_batch": rows_per_batch,
            "relay": {
                "studies": relay.studies,
                "rows": relay.rows,
                "rows_per_sec": relayed_rate,
                "events_per_sec_end_to_end": warm_rate,
                "copy_ms": relay.copy.as_secs_f64() * 1e3,
            },
            "load_before": load_before,
            "load_after": load_after,
        })
    );
    ensure!(
        relay.rows_counted == relay.rows as f64,
        "the daemon counted {} rows relayed, not {}",
        relay.rows_counted,
        relay.rows
    );
    Ok(())
}

/// Times wado-consumer batches without and with the triggers, alternating every [`ROUND`]
/// batches (and which mode goes first), each switch followed by one untimed batch; returns
/// both timings and the outbox rows each batch added.
async fn trigger_cost(
    scratch: &Scratch,
    pool: &PgPool,
    args: &OutboxArgs,
) -> anyhow::Result<TriggerCost> {
    let template = Dataset::generate(&DatasetSpec {
        tenant_prefix: scratch.tenant_prefix.clone(),
        studies: 1,
        max_series: 1,
        ..DatasetSpec::default()
    })
    .rows
    .remove(0);
    let (mut without, mut with) = (Timings::default(), Timings::default());
    let (mut outbox_rows, mut batches_with) = (0_i64, 0_usize);
    let mut round_ratios = Vec::new();
    let mut next = 0_usize;
    for round in 0..args.batches.div_ceil(ROUND) {
        let (without_from, with_from) = (without.batches.len(), with.batches.len());
        for triggers in [round % 2 == 1, round % 2 == 0] {
            if triggers {
                install_outbox(&scratch.settings).await?;
            } else {
                uninstall_outbox(&scratch.settings).await?;
            }
            // The first statements after the DDL plan again: not timed.
            write_batch(pool, &template, args, next).await?;
            next += 1;
            for _ in 0..ROUND.min(args.batches - round * ROUND) {
                let elapsed = write_batch(pool, &template, args, next).await?;
                next += 1;
                if triggers {
                    with.batches.push(elapsed);
                } else {
                    without.batches.push(elapsed);
                }
            }
            if triggers {
                batches_with += 1 + ROUND.min(args.batches - round * ROUND);
                outbox_rows +=
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dcw_ingest_outbox")
                        .fetch_one(pool)
                        .await?;
                // The next install keeps the table: count each batch's rows once.
                sqlx::query("DELETE FROM dcw_ingest_outbox")
                    .execute(pool)
                    .await?;
            }
        }
        round_ratios.push(with.median_since_ms(with_from) / without.median_since_ms(without_from));
        if round == 0 {
            analyze(pool).await?;
        }
    }
    Ok(TriggerCost {
        without,
        with,
        round_ratios,
        rows_per_batch: outbox_rows as f64 / batches_with.max(1) as f64,
    })
}

/// One wado-consumer batch of a new study: its series rows upserted, then its instance
/// rows, each its own statement; returns the time both took.
async fn write_batch(
    pool: &PgPool,
    template: &DicomStateMeta,
    args: &OutboxArgs,
    n: usize,
) -> anyhow::Result<Duration> {
    let study_uid = format!("1.2.826.0.1.3680043.10.543.999.{n}");
    let series: Vec<DicomStateMeta> = (1..=args.series)
        .map(|s| DicomStateMeta {
            study_uid: study_uid.clone(),
            series_uid: format!("{study_uid}.{s}"),
            series_number: i32::try_from(s).ok(),
            series_related_instances: i32::try_from(args.instances / args.series).ok(),
            ..template.clone()
        })
        .collect();
    let instances: Vec<InstanceEvent> = (0..args.instances)
        .map(|i| {
            let row = &series[i % series.len()];
            InstanceEvent {
                tenant_id: row.tenant_id.clone(),
                study_uid: study_uid.clone(),
                series_uid: row.series_uid.clone(),
                sop_uid: format!("{}.{i}", row.series_uid),
            }
        })
        .collect();
    let started = Instant::now();
    upsert_series(pool, &series)
        .await
        .context("upsert the series rows")?;
    upsert_instances(pool, &instances)
        .await
        .context("upsert the instance rows")?;
    Ok(started.elapsed())
}

/// With the triggers installed and the daemon running and ready, writes the studies with
/// one COPY and times it until the outbox is empty and then until the group has processed
/// every event; checks every study key.
async fn relay(
    scratch: &Scratch,
    pool: &PgPool,
    config: Option<&std::path::Path>,
    args: &OutboxArgs,
) -> anyhow::Result<Relay> {
    install_outbox(&scratch.settings).await?;
    sqlx::query("DELETE FROM dcw_ingest_outbox")
        .execute(pool)
        .await?;
    let dataset = Dataset::generate(&DatasetSpec {
        tenant_prefix: scratch.tenant_prefix.clone(),
        studies: args.studies,
        max_series: 6,
        ..DatasetSpec::default()
    });
    let mut con = scratch.redis().await?;
    ensure_group(&mut con, &scratch.settings.stream).await?;
    let mut daemon = Daemon::start(&args.daemon, &scratch.settings, config).await?;
    daemon.wait_ready().await?;

    let started = Instant::now();
    copy_series(pool, &dataset.rows)
        .await
        .context("COPY the studies")?;
    let copied = Instant::now();
    loop {
        daemon.check_running()?;
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM dcw_ingest_outbox")
            .fetch_one(pool)
            .await?;
        if waiting == 0 {
            break;
        }
        ensure!(
            started.elapsed() < RELAY_DEADLINE,
            "the outbox was not relayed in time"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let relayed = Instant::now();
    // Every event is in the stream once the outbox is empty: drained means all processed.
    while !backlog(&mut con, &scratch.settings.stream)
        .await?
        .is_some_and(|b| b.is_drained())
    {
        daemon.check_running()?;
        ensure!(
            started.elapsed() < RELAY_DEADLINE,
            "the events were not processed in time"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let warmed = started.elapsed();
    let rows_counted = daemon.counters()?.outbox_rows;
    daemon.stop().await?;
    let wrong = wrong_study_keys(&mut con, &dataset).await?;
    ensure!(wrong == 0, "{wrong} study keys are wrong after the relay");
    Ok(Relay {
        rows: dataset.rows.len(),
        studies: args.studies,
        copy: copied - started,
        relayed: relayed - copied,
        warmed,
        rows_counted,
    })
}
