//! Commands that Redis and Pika answer alike, on a kept [`Session`]: `CONFIG GET` and
//! `CONFIG SET` with read-back, the replication command, and reading their replies.
//! Each engine decides which of them it sends and what the answers mean.

use super::client::{as_text, ClientError};
use super::session::{encode, server_error_text, Session};
use super::SetOutcome;
use crate::spec::ReplicaOf;
use redis::Value;
use std::collections::BTreeMap;

/// `CONFIG SET key value`, then `CONFIG GET key`, pipelined.
pub async fn set_and_read_back(session: &mut Session, key: &str, value: &str) -> Result<SetOutcome, ClientError> {
    let mut set = redis::cmd("CONFIG");
    set.arg("SET").arg(key).arg(value);
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg(key);
    let replies = session.pipeline("CONFIG SET", &[set, get]).await?;
    match replies.as_slice() {
        [Value::ServerError(error), _] => Ok(SetOutcome::Refused {
            reason: server_error_text(error),
        }),
        [_, got] => Ok(SetOutcome::Applied {
            now: config_values(got).remove(key).unwrap_or_default(),
        }),
        _ => Err(session.unexpected("CONFIG SET", "not two replies".into())),
    }
}

/// `CONFIG GET key`.
fn config_get(key: &str) -> redis::Cmd {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg(key);
    get
}

/// What [`config_get_all`] read.
#[derive(Debug, Default)]
pub struct ConfigRead {
    /// The values of the keys asked for (a key the server does not know is left out).
    pub config: BTreeMap<String, String>,
    /// The values of the extra keys.
    pub extra: BTreeMap<String, String>,
    /// The replies to the other commands, in order.
    pub others: Vec<Value>,
}

/// The values of `keys` and of `extra`, each read with its own `CONFIG GET` (Redis
/// before 7.0 and Pika take one key at a time), and the replies to `others`,
/// pipelined: one round trip.
pub async fn config_get_all(
    session: &mut Session,
    keys: &[&str],
    extra: &[&str],
    others: &[redis::Cmd],
) -> Result<ConfigRead, ClientError> {
    let gets = keys.len() + extra.len();
    let commands: Vec<redis::Cmd> = keys
        .iter()
        .chain(extra)
        .map(|key| config_get(key))
        .chain(others.iter().cloned())
        .collect();
    let mut replies = session.pipeline("CONFIG GET", &commands).await?;
    if replies.len() != commands.len() {
        return Err(session.unexpected("CONFIG GET", "too few replies".into()));
    }
    if let Some(Value::ServerError(error)) = replies[..gets].iter().find(|r| matches!(r, Value::ServerError(_))) {
        return Err(session.unexpected("CONFIG GET", server_error_text(error)));
    }
    let others = replies.split_off(gets);
    let mut read = ConfigRead {
        others,
        ..ConfigRead::default()
    };
    for (i, reply) in replies.iter().enumerate() {
        if i < keys.len() {
            read.config.extend(config_values(reply));
        } else {
            read.extra.extend(config_values(reply));
        }
    }
    Ok(read)
}

/// Makes the server a replica of `master` (a master when `None`) with `command`
/// (`REPLICAOF`, or Pika's `SLAVEOF`).
pub async fn replicate(
    session: &mut Session,
    command: &'static str,
    master: Option<&ReplicaOf>,
) -> Result<(), ClientError> {
    let mut cmd = redis::cmd(command);
    match master {
        Some(master) => cmd.arg(&master.host).arg(master.port),
        None => cmd.arg("NO").arg("ONE"),
    };
    let reply = session.pipeline(command, &[cmd]).await?;
    expect_ok(session, command, reply.first())
}

/// The `key → value` pairs of a `CONFIG GET` reply (a flat array in RESP2, a map in
/// RESP3).
pub fn config_values(reply: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match reply {
        Value::Array(items) => {
            for pair in items.chunks_exact(2) {
                if let (Some(k), Some(v)) = (as_text(&pair[0]), as_text(&pair[1])) {
                    out.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (as_text(k), as_text(v)) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

/// `+OK`, or the error the server answered.
pub fn expect_ok(session: &Session, command: &'static str, reply: Option<&Value>) -> Result<(), ClientError> {
    match reply {
        Some(Value::Okay) => Ok(()),
        Some(Value::SimpleString(s)) if s.starts_with("OK") => Ok(()),
        Some(Value::ServerError(error)) => Err(session.unexpected(command, server_error_text(error))),
        other => Err(session.unexpected(command, format!("answered {other:?}"))),
    }
}

/// `PING` and `commands` in one write: how long the round trip took and the replies
/// to `commands`, once `PING` was answered with `PONG`.
pub async fn ping_and(
    session: &mut Session,
    commands: Vec<redis::Cmd>,
) -> Result<(std::time::Duration, Vec<Value>), ClientError> {
    let all: Vec<redis::Cmd> = std::iter::once(redis::cmd("PING")).chain(commands).collect();
    ping_and_encoded(session, &encode(&all), all.len()).await
}

/// [`ping_and`] of a request encoded beforehand: `PING` and `count - 1` commands.
pub async fn ping_and_encoded(
    session: &mut Session,
    request: &[u8],
    count: usize,
) -> Result<(std::time::Duration, Vec<Value>), ClientError> {
    let began = std::time::Instant::now();
    let mut replies = session.exchange("PING+INFO", request, count).await?;
    let ping = began.elapsed();
    if replies.len() != count {
        return Err(session.unexpected("PING+INFO", format!("{} replies to {count} commands", replies.len())));
    }
    let pong = replies.remove(0);
    if let Value::ServerError(error) = &pong {
        return Err(session.unexpected("PING", server_error_text(error)));
    }
    if as_text(&pong).as_deref() != Some("PONG") {
        return Err(session.unexpected("PING", format!("answered {pong:?} instead of PONG")));
    }
    Ok((ping, replies))
}

/// The text of an `INFO` reply, or the error the server answered instead.
pub fn info_text(session: &Session, reply: Option<Value>) -> Result<Vec<u8>, ClientError> {
    match reply {
        Some(Value::BulkString(bytes)) => Ok(bytes),
        Some(Value::ServerError(error)) => Err(session.unexpected("INFO", server_error_text(&error))),
        other => Err(session.unexpected("INFO", format!("answered {other:?} instead of text"))),
    }
}
