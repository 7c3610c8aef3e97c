//! A short-lived, authenticated connection to one local instance, on top of the `redis`
//! crate. Every call has a timeout, and every error names the address; a password is
//! never part of an error.

use crate::spec::Secret;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How the agent reaches one of its instances, and which process it expects there.
#[derive(Debug, Clone)]
pub struct Target {
    /// An address the instance listens on (a wildcard is reached over loopback).
    pub addr: SocketAddr,
    pub password: Option<Secret>,
    /// Limit for connecting and for each reply.
    pub timeout: Duration,
    /// The pid the agent started or adopted: whatever answers on the address must be
    /// this process, or the agent is talking to a stranger.
    pub pid: u32,
}

impl Target {
    /// The address to reach an instance listening on `bind:port`.
    pub fn address(bind: IpAddr, port: u16) -> SocketAddr {
        let ip = match bind {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            other => other,
        };
        SocketAddr::new(ip, port)
    }
}

/// A failed call to an instance.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{addr} did not answer {command} within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        command: &'static str,
        timeout: Duration,
    },
    #[error("{addr} answered {command} with an error: {reason}")]
    Server {
        addr: SocketAddr,
        command: &'static str,
        reason: String,
    },
    #[error("connection to {addr} failed during {command}: {reason}")]
    Io {
        addr: SocketAddr,
        command: &'static str,
        reason: String,
    },
    #[error("{addr} is answered by pid {found}, not by pid {expected}: another process holds the port")]
    Stranger {
        addr: SocketAddr,
        expected: u32,
        found: String,
    },
}

impl ClientError {
    /// The server is up but loading its dataset (`-LOADING`).
    pub fn is_loading(&self) -> bool {
        self.server_reason().is_some_and(|r| r.contains("LOADING"))
    }

    /// The server wants (other) credentials: `NOAUTH`, `WRONGPASS`, or an `AUTH`
    /// without a configured password. Pika prefixes these with `ERR`, so the text is
    /// searched, not only its first word.
    pub fn is_auth(&self) -> bool {
        self.server_reason().is_some_and(|r| {
            r.contains("NOAUTH") || r.contains("WRONGPASS") || r.contains("without any password configured")
        })
    }

    fn server_reason(&self) -> Option<&str> {
        match self {
            ClientError::Server { reason, .. } | ClientError::Connect { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// An open connection.
pub struct Connection {
    inner: MultiplexedConnection,
    addr: SocketAddr,
    timeout: Duration,
}

impl Connection {
    /// Connects to the target's address and authenticates when it has a password.
    pub async fn open(target: &Target) -> Result<Connection, ClientError> {
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(password) = &target.password {
            settings = settings.set_password(password.expose());
        }
        let addr = target.addr;
        let connect_error = |reason: String| ClientError::Connect { addr, reason };
        let info = ConnectionAddr::Tcp(addr.ip().to_string(), addr.port())
            .into_connection_info()
            .map_err(|e| connect_error(e.to_string()))?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(|e| connect_error(e.to_string()))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(target.timeout))
            .set_response_timeout(Some(target.timeout));
        // The outer timeout also bounds the AUTH exchange.
        let inner = tokio::time::timeout(
            target.timeout * 2,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            addr,
            command: "connect",
            timeout: target.timeout,
        })?
        .map_err(|e| connect_error(describe(&e)))?;
        Ok(Connection {
            inner,
            addr,
            timeout: target.timeout,
        })
    }

    /// Checks that the server is the expected process (`INFO server` → `process_id`).
    pub async fn verify_pid(&mut self, expected: u32) -> Result<(), ClientError> {
        let reply = self.call("INFO", &["server"]).await?;
        check_process_id(self.addr, &reply, expected)
    }

    /// Sends one command and returns the reply.
    pub async fn call(&mut self, command: &'static str, args: &[&str]) -> Result<Value, ClientError> {
        let mut cmd = redis::cmd(command.split(' ').next().unwrap_or(command));
        for word in command.split(' ').skip(1) {
            cmd.arg(word);
        }
        for arg in args {
            cmd.arg(*arg);
        }
        let addr = self.addr;
        match tokio::time::timeout(self.timeout, cmd.query_async::<Value>(&mut self.inner)).await {
            Err(_) => Err(ClientError::Timeout {
                addr,
                command,
                timeout: self.timeout,
            }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
                Err(ClientError::Io {
                    addr,
                    command,
                    reason: describe(&e),
                })
            }
            Ok(Err(e)) => Err(ClientError::Server {
                addr,
                command,
                reason: describe(&e),
            }),
        }
    }

    /// `CONFIG GET key` → the value, or `None` when the server does not know the key.
    pub async fn config_get(&mut self, key: &str) -> Result<Option<String>, ClientError> {
        let reply = self.call("CONFIG GET", &[key]).await?;
        Ok(match reply {
            Value::Array(items) => items.get(1).and_then(as_text),
            Value::Map(pairs) => pairs.first().and_then(|(_, v)| as_text(v)),
            _ => None,
        })
    }
}

/// Whether an `INFO server` reply at `addr` comes from process `expected`.
pub fn check_process_id(addr: SocketAddr, info_server: &Value, expected: u32) -> Result<(), ClientError> {
    let text = as_text(info_server).unwrap_or_default();
    let found = info_field(&text, "process_id").unwrap_or("none");
    if found == expected.to_string() {
        Ok(())
    } else {
        Err(ClientError::Stranger {
            addr,
            expected,
            found: found.to_string(),
        })
    }
}

/// The value of `key` in an `INFO` reply (`key:value` lines).
pub fn info_field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then_some(v.trim_end())
    })
}

/// A reply as text, when it is a string.
pub fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// An error's text with the server's code kept (`LOADING …`, `NOAUTH …`).
fn describe(error: &redis::RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error replies (`< -...` lines) that follow `> command` in a fixture file.
    fn replies_to(fixture: &str, command: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut lines = fixture.lines();
        while let Some(line) = lines.next() {
            if line.trim_start_matches('>').trim() == command {
                if let Some(reply) = lines.by_ref().find(|l| l.starts_with("< ")) {
                    out.push(
                        reply[2..]
                            .trim_start_matches('-')
                            .trim_end_matches("\\r\\n")
                            .to_string(),
                    );
                }
            }
        }
        out
    }

    fn server_error(reason: &str) -> ClientError {
        ClientError::Server {
            addr: "127.0.0.1:1".parse().unwrap(),
            command: "PING",
            reason: reason.to_string(),
        }
    }

    #[test]
    fn real_loading_and_auth_replies_are_classified() {
        let loading = include_str!("../../tests/fixtures/redis/loading-error.txt");
        let ping = replies_to(loading, "PING");
        assert_eq!(ping, ["LOADING Redis is loading the dataset in memory"]);
        assert!(server_error(&ping[0]).is_loading());
        assert!(!server_error(&ping[0]).is_auth());

        let redis_auth = include_str!("../../tests/fixtures/redis/auth-noauth.txt");
        let pika_auth = include_str!("../../tests/fixtures/pika/auth-noauth-with-userpass.txt");
        for (fixture, command) in [
            (redis_auth, "PING"),
            (redis_auth, "AUTH wrongpass"),
            (pika_auth, "PING"),
        ] {
            let replies = replies_to(fixture, command);
            assert!(!replies.is_empty(), "no reply to {command}");
            for reply in replies {
                assert!(server_error(&reply).is_auth(), "{reply:?} not seen as an auth error");
                assert!(!server_error(&reply).is_loading(), "{reply:?}");
            }
        }
        assert!(!server_error("ERR syntax error").is_auth());
    }

    #[test]
    fn process_id_is_read_from_real_info_replies() {
        let redis = include_str!("../../tests/fixtures/redis/info-master.txt");
        let pika = include_str!("../../tests/fixtures/pika/info-master.txt");
        assert_eq!(info_field(redis, "process_id"), Some("32452"));
        assert_eq!(info_field(pika, "process_id"), Some("20453"));
        assert_eq!(info_field(redis, "no_such_field"), None);
        assert_eq!(info_field("", "process_id"), None);
    }

    #[test]
    fn wildcards_are_reached_over_loopback() {
        assert_eq!(
            Target::address("0.0.0.0".parse().unwrap(), 7).to_string(),
            "127.0.0.1:7"
        );
        assert_eq!(Target::address("::".parse().unwrap(), 7).to_string(), "[::1]:7");
        assert_eq!(
            Target::address("10.1.2.3".parse().unwrap(), 7).to_string(),
            "10.1.2.3:7"
        );
    }
}
