//! The monitor's kept connection to one instance: a plain TCP stream owned by the
//! monitor task, carrying pipelined commands. Unlike [`super::client::Connection`] (the
//! `redis` crate's multiplexed connection, with a driver task and channels) a probe
//! here is one write and usually one read, which matters when 100 instances are
//! probed every second. Commands are encoded and replies decoded by the `redis` crate;
//! this module only finds where one reply ends.

use super::client::{ClientError, Target};
use redis::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest reply a probe accepts; a full INFO is a few KiB.
const MAX_REPLY: usize = 4 * 1024 * 1024;

/// An open, authenticated connection.
pub struct Session {
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
    /// Bytes read but not yet consumed.
    buffer: Vec<u8>,
}

impl Session {
    /// Connects to the target and authenticates when it has a password.
    pub async fn open(target: &Target) -> Result<Session, ClientError> {
        let addr = target.addr;
        let stream = tokio::time::timeout(target.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr,
                command: "connect",
                timeout: target.timeout,
            })?
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        // Probes are small and latency is what they measure.
        let _ = stream.set_nodelay(true);
        let mut session = Session {
            stream,
            addr,
            timeout: target.timeout,
            buffer: Vec::new(),
        };
        if let Some(password) = &target.password {
            let mut auth = redis::cmd("AUTH");
            auth.arg(password.expose());
            let reply = session.pipeline("AUTH", &[auth]).await?;
            if let Some(Value::ServerError(error)) = reply.first() {
                // Said like the multiplexed client says it, so `is_auth` recognises it.
                return Err(ClientError::Connect {
                    addr,
                    reason: server_error_text(error),
                });
            }
        }
        Ok(session)
    }

    /// Sends `commands` in one write and reads one reply per command. An error reply
    /// is returned as `Value::ServerError` in its place; `label` names the request in
    /// errors.
    pub async fn pipeline(&mut self, label: &'static str, commands: &[redis::Cmd]) -> Result<Vec<Value>, ClientError> {
        self.exchange(label, &encode(commands), commands.len()).await
    }

    /// Sends `request` (commands already encoded, see [`encode`]) in one write and
    /// reads `count` replies, as [`Session::pipeline`] does.
    pub async fn exchange(
        &mut self,
        label: &'static str,
        request: &[u8],
        count: usize,
    ) -> Result<Vec<Value>, ClientError> {
        let (addr, timeout) = (self.addr, self.timeout);
        let io = |e: std::io::Error| ClientError::Io {
            addr,
            command: label,
            reason: e.to_string(),
        };
        let exchange = async {
            self.stream.write_all(request).await.map_err(io)?;
            let mut replies = Vec::with_capacity(count);
            while replies.len() < count {
                match frame_len(&self.buffer) {
                    Ok(Some(len)) => {
                        let value = redis::parse_redis_value(&self.buffer[..len]).map_err(|e| ClientError::Io {
                            addr,
                            command: label,
                            reason: format!("unreadable reply: {e}"),
                        })?;
                        self.buffer.drain(..len);
                        replies.push(value);
                    }
                    Ok(None) => {
                        if self.buffer.len() > MAX_REPLY {
                            return Err(ClientError::Io {
                                addr,
                                command: label,
                                reason: format!("reply larger than {MAX_REPLY} bytes"),
                            });
                        }
                        self.buffer.reserve(8 * 1024);
                        let read = self.stream.read_buf(&mut self.buffer).await.map_err(io)?;
                        if read == 0 {
                            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                    }
                    Err(reason) => {
                        return Err(ClientError::Io {
                            addr,
                            command: label,
                            reason,
                        })
                    }
                }
            }
            Ok(replies)
        };
        let replies = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                addr,
                command: label,
                timeout,
            })?;
        // An idle session keeps its socket, not its read buffer: with two sessions per
        // instance, 8 KB buffers were a third of the agent's memory at 500 instances.
        if self.buffer.is_empty() {
            self.buffer = Vec::new();
        }
        replies
    }

    /// An error for a reply the caller cannot use.
    pub fn unexpected(&self, command: &'static str, reason: String) -> ClientError {
        ClientError::Server {
            addr: self.addr,
            command,
            reason,
        }
    }

    /// Checks that the server is process `pid` (`INFO server` → `process_id`; Redis and
    /// Pika alike).
    pub async fn verify_pid(&mut self, pid: u32) -> Result<(), ClientError> {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let reply = self.pipeline("INFO", &[info]).await?;
        let reply = reply.first().unwrap_or(&Value::Nil);
        super::client::check_process_id(self.addr, reply, pid)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// One readiness probe: `PING` answers `PONG` and `INFO server` names the expected
/// process (a PONG proves only that *something* answers on the port); `-LOADING` is
/// "starting". A fresh session and one pipelined exchange: at an agent's start, a
/// thousand adopted servers are probed at once, and the multiplexed client (a driver
/// task, two round trips) took 2.5 s for them.
pub async fn ping_readiness(target: &Target) -> super::Readiness {
    use super::Readiness;
    let loading = || Readiness::Starting("loading the dataset".into());
    let mut session = match Session::open(target).await {
        Ok(session) => session,
        Err(e) if e.is_loading() => return loading(),
        Err(e) => return Readiness::Unreachable(e.to_string()),
    };
    let mut info = redis::cmd("INFO");
    info.arg("server");
    let replies = match session.pipeline("PING", &[redis::cmd("PING"), info]).await {
        Ok(replies) => replies,
        Err(e) => return Readiness::Unreachable(e.to_string()),
    };
    match replies.first() {
        Some(Value::SimpleString(pong)) if pong == "PONG" => {}
        Some(Value::ServerError(error)) => {
            let error = session.unexpected("PING", server_error_text(error));
            return if error.is_loading() {
                loading()
            } else {
                Readiness::Unreachable(error.to_string())
            };
        }
        other => return Readiness::Unreachable(format!("PING answered {other:?} instead of PONG")),
    }
    match super::client::check_process_id(target.addr, replies.get(1).unwrap_or(&Value::Nil), target.pid) {
        Ok(()) => Readiness::Ready,
        Err(e) => Readiness::Unreachable(e.to_string()),
    }
}

/// `commands` encoded for one write: a request sent every second (a probe) is encoded
/// once and kept.
pub fn encode(commands: &[redis::Cmd]) -> Vec<u8> {
    let mut request = Vec::new();
    for command in commands {
        command.write_packed_command(&mut request);
    }
    request
}

/// The text of an error reply, with its code (`LOADING …`, `NOAUTH …`).
pub fn server_error_text(error: &redis::ServerError) -> String {
    match error.details() {
        Some(details) => format!("{} {details}", error.code()),
        None => error.code().to_string(),
    }
}

/// How deep arrays may nest in a reply (`EXEC` nests the replies of a transaction).
const MAX_NESTING: usize = 8;

/// The length of the first complete RESP2 reply in `bytes`: `Ok(None)` while it is
/// incomplete. The RESP2 types are accepted (simple strings, errors, integers, bulk
/// strings, arrays nested up to [`MAX_NESTING`]); anything else is a protocol error.
fn frame_len(bytes: &[u8]) -> Result<Option<usize>, String> {
    frame_len_nested(bytes, 0)
}

fn frame_len_nested(bytes: &[u8], depth: usize) -> Result<Option<usize>, String> {
    let Some(&kind) = bytes.first() else {
        return Ok(None);
    };
    let Some(line_end) = memchr::memmem::find(bytes, b"\r\n") else {
        return Ok(None);
    };
    let header = || -> Result<i64, String> {
        let text = std::str::from_utf8(&bytes[1..line_end]).map_err(|_| "bad length".to_string())?;
        text.parse().map_err(|_| format!("bad length {text:?}"))
    };
    match kind {
        b'+' | b'-' | b':' => Ok(Some(line_end + 2)),
        b'$' => {
            let len = header()?;
            if len < 0 {
                return Ok(Some(line_end + 2));
            }
            let total = (line_end + 4).saturating_add(len as usize);
            Ok((bytes.len() >= total).then_some(total))
        }
        b'*' => {
            let count = header()?;
            if depth >= MAX_NESTING {
                return Err(format!("reply nested deeper than {MAX_NESTING} arrays"));
            }
            let mut total = line_end + 2;
            for _ in 0..count.max(0) {
                match frame_len_nested(&bytes[total..], depth + 1)? {
                    Some(len) => total += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(total))
        }
        other => Err(format!("unexpected reply type {:?}", other as char)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_end_where_the_reply_ends() {
        assert_eq!(frame_len(b""), Ok(None));
        assert_eq!(frame_len(b"+PO"), Ok(None));
        assert_eq!(frame_len(b"+PONG\r\n$3\r\nabc\r\n"), Ok(Some(7)));
        assert_eq!(frame_len(b"-ERR x\r\n"), Ok(Some(8)));
        assert_eq!(frame_len(b":12\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"$3\r\nab"), Ok(None));
        assert_eq!(frame_len(b"$3\r\nabc\r"), Ok(None));
        assert_eq!(frame_len(b"$3\r\nabc\r\n+OK\r\n"), Ok(Some(9)));
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*1\r\n"), Ok(None));
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n+OK\r\n"), Ok(Some(19)));
        assert_eq!(frame_len(b"*-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*0\r\n"), Ok(Some(4)));
        assert!(frame_len(&b"*1\r\n".repeat(20)).is_err());
        assert!(frame_len(b"%1\r\n").is_err());
        assert!(frame_len(b"$x\r\n").is_err());
    }

    #[test]
    fn a_real_info_reply_is_one_frame() {
        let info = include_str!("../../tests/fixtures/redis/info-master.txt").replace('\n', "\r\n");
        let wire = format!("+PONG\r\n${}\r\n{info}\r\n", info.len());
        let first = frame_len(wire.as_bytes()).unwrap().unwrap();
        assert_eq!(&wire[..first], "+PONG\r\n");
        let second = frame_len(&wire.as_bytes()[first..]).unwrap().unwrap();
        assert_eq!(first + second, wire.len());
        match redis::parse_redis_value(&wire.as_bytes()[first..]).unwrap() {
            Value::BulkString(bytes) => assert_eq!(bytes, info.as_bytes()),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_answer_and_never_a_length_past_the_end(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some(len)) = frame_len(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }
    }
}
