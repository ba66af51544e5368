//! A redis-server of this run only (no persistence, loopback, a free port), so that the
//! Redis figures of a measurement (slow log, command statistics, CPU, the probe's waits)
//! are the daemon's alone, not those of whatever else shares the configured Redis.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The time the server gets to answer.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The server, killed when dropped.
pub(crate) struct PrivateRedis {
    child: Child,
    /// Its URL.
    pub(crate) url: String,
}

impl PrivateRedis {
    /// Starts `redis-server` (from PATH) and returns once it answers PING.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("start redis-server (install it, or leave out --private-redis)")?;
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let client = redis::Client::open(redis.url.as_str())?;
        let started = Instant::now();
        loop {
            if let Ok(mut con) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
            {
                return Ok(redis);
            }
            if started.elapsed() > START_DEADLINE {
                bail!("the private redis-server did not answer within {START_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
