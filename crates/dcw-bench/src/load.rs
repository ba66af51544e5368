//! `load`: the flags that describe a synthetic dataset, shared with `drain` and `latency`,
//! and the demo loader that inserts its studies, publishes their events and, when asked,
//! writes their instance files where the server stores them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use clap::Args;
use dcw_testkit::synthetic::{self, Dataset, DatasetSpec};
use dicom_cache_warmer::{Settings, blocking_connection, lazy_pool};

/// The flags of `load`: the dataset, and where its instance files go.
#[derive(Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Also write every loaded instance as a CT Part-10 file under DIR, in the server's
    /// layout `{DIR}/{tenant}/{study_date_origin}/{study}/{series}/{sop}.dcm` (point
    /// series.dicom_root at DIR for series documents). Existing files are overwritten.
    #[arg(long, value_name = "DIR")]
    series_root: Option<PathBuf>,
}

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

/// Inserts the studies into the configured database, writes their instance files when
/// `--series-root` is given, and publishes their events to the configured stream.
pub(crate) async fn run(settings: &Settings, load: &LoadArgs) -> anyhow::Result<()> {
    let args = &load.dataset;
    ensure!(
        load.series_root.is_none() || !args.tenant_prefix.contains(['/', '\\', '\0']),
        "--tenant-prefix must be usable as a folder name with --series-root"
    );
    let dataset = Dataset::generate(&args.spec(&args.tenant_prefix));
    let pool = lazy_pool(&settings.database)?;
    dataset.insert(&pool).await.context("insert the studies")?;
    // The files exist before their events are published, as the server stores an
    // instance before the ingest pipeline announces it.
    if let Some(root) = &load.series_root {
        let written = write_instance_files(&dataset, root)?;
        println!("wrote {written} CT instance files under {}", root.display());
    }
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

/// Writes one CT file per instance of every series row, in the server's storage layout
/// under `root`; returns how many.
fn write_instance_files(dataset: &Dataset, root: &Path) -> anyhow::Result<usize> {
    let mut written = 0;
    for row in &dataset.rows {
        let folder = root
            .join(&row.tenant_id)
            .join(&row.study_date_origin)
            .join(&row.study_uid)
            .join(&row.series_uid);
        std::fs::create_dir_all(&folder).with_context(|| format!("create {}", folder.display()))?;
        let instances = usize::try_from(row.series_related_instances.unwrap_or(0)).unwrap_or(0);
        let paths = synthetic::write_ct_series(&folder, &row.study_uid, &row.series_uid, instances)
            .with_context(|| format!("write the instance files in {}", folder.display()))?;
        written += paths.len();
    }
    Ok(written)
}
