//! Lua scripts sent by their SHA-1 (EVALSHA): a few dozen bytes a call instead of the
//! script's text. A Redis that does not know a script (restarted, failed over, SCRIPT
//! FLUSH) answers NOSCRIPT: the scripts are loaded (`SCRIPT LOAD`) and the command sent
//! again. A lone call goes through [`redis::Script::invoke_async`], which does the same.

use std::sync::Mutex;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Pipeline, RedisError, RedisResult, Script};

/// Every script added to a pipeline so far: all are loaded when Redis lacks one.
static CALLED: Mutex<Vec<&'static Script>> = Mutex::new(Vec::new());

/// Adds a call of `script` to `pipe`; add its keys count, keys and arguments after it.
pub fn call<'a>(pipe: &'a mut Pipeline, script: &'static Script) -> &'a mut Pipeline {
    let mut called = CALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !called.iter().any(|known| std::ptr::eq(*known, script)) {
        called.push(script);
    }
    drop(called);
    pipe.cmd("EVALSHA").arg(script.get_hash())
}

/// Sends `pipe`; when Redis lacks a script, loads every script called so far and sends it
/// once more. The commands before the refused one have run: those of a retried round
/// (fills checked against versions, deletions, dead letters at least once) may repeat.
pub async fn query<C: ConnectionLike, T: FromRedisValue>(
    con: &mut C,
    pipe: &Pipeline,
) -> RedisResult<T> {
    match pipe.query_async(con).await {
        Err(error) if lacks_script(&error) => {
            let scripts = CALLED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            tracing::info!(
                scripts = scripts.len(),
                "redis lost the daemon's scripts: loading them again"
            );
            for script in scripts {
                script.load_async(con).await?;
            }
            pipe.query_async(con).await
        }
        done => done,
    }
}

/// True when Redis answered NOSCRIPT, alone or to a command of a pipeline.
fn lacks_script(error: &RedisError) -> bool {
    error
        .clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, error)| error.code() == "NOSCRIPT"))
}
