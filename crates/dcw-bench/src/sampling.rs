//! What the figures ran on and beside: the machine (cores, processor, memory, server
//! versions), its load average, a process's peak resident memory (VmHWM), and the CPU time
//! of the client, Redis and PostgreSQL during a measurement, from /proc and the servers.

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

/// The load average (1, 5, 15 minutes) from /proc/loadavg.
pub(crate) fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|()| fields.next().unwrap_or(0.0))
}

/// The load average as the reports print it.
pub(crate) fn format_load(load: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", load[0], load[1], load[2])
}

/// Cores, processor, memory, and the Redis and PostgreSQL versions.
pub(crate) async fn machine(con: &mut MultiplexedConnection, pool: &PgPool) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown processor", |(_, model)| model.trim());
    let memory_gib = proc_kib("/proc/meminfo", "MemTotal").unwrap_or(0) as f64 / 1_048_576.0;
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(con)
        .await
        .unwrap_or_default();
    let redis_version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let pg_version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|_| "?".into());
    format!(
        "{cores} cores ({model}), {memory_gib:.1} GiB; Redis {redis_version}; PostgreSQL {pg_version}; all on this machine"
    )
}

/// A `kB` field of /proc/{pid}/status, such as VmHWM (peak resident set).
pub(crate) fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), field)
}

/// A `Field: N kB` line of a /proc file such as /proc/meminfo.
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) spent during a measurement.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CpuUse {
    /// The daemon's process, or this process for the in-process daemon and the reference.
    pub(crate) client: Option<f64>,
    /// The whole Redis server (other clients' commands included), from INFO cpu.
    pub(crate) redis: Option<f64>,
    /// The PostgreSQL backends of the scratch database that started during the measurement.
    pub(crate) postgres: Option<f64>,
}

/// Where a CPU measurement starts.
pub(crate) struct CpuMark {
    own: Option<f64>,
    redis: Option<f64>,
    pg_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl CpuMark {
    /// Marks the start of a measurement.
    pub(crate) async fn now(con: &mut MultiplexedConnection, pool: &PgPool) -> Self {
        Self {
            own: process_cpu_secs("self"),
            redis: redis_cpu_secs(con).await,
            pg_since: sqlx::query_scalar("SELECT clock_timestamp()")
                .fetch_one(pool)
                .await
                .ok(),
        }
    }

    /// The CPU used since the mark; `client_pid` is the daemon's process (`None`: this one).
    pub(crate) async fn used(
        &self,
        con: &mut MultiplexedConnection,
        pool: &PgPool,
        client_pid: Option<u32>,
    ) -> CpuUse {
        let client = match client_pid {
            Some(pid) => process_cpu_secs(&pid.to_string()),
            None => process_cpu_secs("self")
                .zip(self.own)
                .map(|(now, then)| now - then),
        };
        let redis = redis_cpu_secs(con)
            .await
            .zip(self.redis)
            .map(|(now, then)| now - then);
        let mut postgres = None;
        if let Some(since) = self.pg_since {
            let backends: Result<Vec<i32>, _> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND backend_start >= $1",
            )
            .bind(since)
            .fetch_all(pool)
            .await;
            postgres = backends.ok().and_then(|pids| {
                pids.iter()
                    .map(|pid| process_cpu_secs(&pid.to_string()))
                    .sum::<Option<f64>>()
            });
        }
        CpuUse {
            client,
            redis,
            postgres,
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc/{pid}/stat.
pub(crate) fn process_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count the fields after its ')'. utime and
    // stime are fields 14 and 15, so the 12th and 13th after the name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_sec())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 almost everywhere).
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The Redis server's CPU seconds so far (user + system), from INFO cpu.
async fn redis_cpu_secs(con: &mut MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(con).await.ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user")? + field("used_cpu_sys")?)
}
