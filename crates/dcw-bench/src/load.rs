//! `load`: the flags that describe a synthetic dataset, shared with `drain` and `latency`,
//! and the demo loader that inserts its studies and publishes their events.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dcw_testkit::synthetic::{Dataset, DatasetSpec};
use dicom_cache_warmer::{Settings, blocking_connection, lazy_pool};

/// The synthetic dataset: its size, its shape and its seed.
#[derive(Args)]
pub(crate) struct DatasetArgs {
    /// Number of studies.
    #[arg(long, default_value_t = 50)]
    studies: usize,
    /// Number of tenants the studies are spread over.
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Series per study: 1 to this many.
    #[arg(long, default_value_t = 6)]
    max_series: usize,
    /// Instances per series: at least this many.
    #[arg(long, default_value_t = 10)]
    min_instances: usize,
    /// Instances per series: at most this many.
    #[arg(long, default_value_t = 200)]
    max_instances: usize,
    /// The same seed gives the same dataset.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Tenant ids start with this (`load` only; the benchmarks use a scratch prefix).
    #[arg(long, default_value = "demo")]
    tenant_prefix: String,
}

impl DatasetArgs {
    /// The dataset's specification, its tenant ids starting with `tenant_prefix`.
    pub(crate) fn spec(&self, tenant_prefix: &str) -> DatasetSpec {
        DatasetSpec {
            tenant_prefix: tenant_prefix.to_owned(),
            tenants: self.tenants,
            studies: self.studies,
            max_series: self.max_series,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            seed: self.seed,
        }
    }

    /// The flags in words, for the head of a report.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} studies, {} tenants, 1-{} series per study, {}-{} instances per series, seed {}",
            self.studies,
            self.tenants,
            self.max_series,
            self.min_instances,
            self.max_instances,
            self.seed
        )
    }
}

/// Inserts the studies into the configured database and publishes their events to the
/// configured stream.
pub(crate) async fn run(settings: &Settings, args: &DatasetArgs) -> anyhow::Result<()> {
    let dataset = Dataset::generate(&args.spec(&args.tenant_prefix));
    let pool = lazy_pool(&settings.database)?;
    dataset.insert(&pool).await.context("insert the studies")?;
    let mut con = blocking_connection(&settings.redis, Duration::ZERO).await?;
    dataset
        .publish(&mut con, &settings.stream.key)
        .await
        .context("publish the events")?;
    println!(
        "loaded {} studies ({} series rows) and published {} events to {}",
        args.studies,
        dataset.rows.len(),
        dataset.events.len(),
        settings.stream.key
    );
    Ok(())
}
