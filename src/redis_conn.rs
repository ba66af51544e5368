//! Redis connections: the command pool and the stream reader's own connection.

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, RedisResult, TlsCertificates,
};

use crate::config::RedisSettings;

/// The connection details, with `redis.password` applied over the URL's and, for TLS,
/// `redis.ca_file` as the only trusted certificate authority.
pub fn connection_info(settings: &RedisSettings) -> RedisResult<ConnectionInfo> {
    let info = settings.url.expose().into_connection_info()?;
    let info = match &settings.password {
        Some(password) => {
            let redis = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info.set_redis_settings(redis)
        }
        None => info,
    };
    let Some(ca_file) = &settings.ca_file else {
        return Ok(info);
    };
    let root_cert = std::fs::read(ca_file).map_err(|error| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "redis.ca_file cannot be read",
            format!("{}: {error}", ca_file.display()),
        ))
    })?;
    let tls = TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    Ok(Client::build_with_tls(info, tls)?
        .get_connection_info()
        .clone())
}

fn connection_config(
    settings: &RedisSettings,
    response_timeout: Duration,
) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.command_timeout()))
        .set_response_timeout(Some(response_timeout))
}

/// A pool of multiplexed connections for commands; it connects on first use.
pub fn command_pool(settings: &RedisSettings) -> anyhow::Result<Pool> {
    let manager = Manager::new_with_config(
        connection_info(settings)?,
        connection_config(settings, settings.command_timeout()),
    )?;
    let timeout = Some(settings.command_timeout());
    Ok(Pool::builder(manager)
        .max_size(settings.pool_size)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(Runtime::Tokio1)
        .build()?)
}

/// Opens a connection for blocking reads: its response timeout covers the block time,
/// and it carries nothing else, so no command queues behind a blocked read.
pub async fn blocking_connection(
    settings: &RedisSettings,
    block: Duration,
) -> RedisResult<MultiplexedConnection> {
    let info = connection_info(settings).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "bad redis settings",
            format!("{e:#}"),
        ))
    })?;
    let client = Client::open(info)?;
    client
        .get_multiplexed_async_connection_with_config(&connection_config(
            settings,
            block + settings.command_timeout(),
        ))
        .await
}
