//! The Redis engine against a real `redis-server` that the agent did not start: the
//! engine must never take a stranger for its own process.

mod common;

use common::*;
use ker_agent::engine::{self, EngineKind, Readiness, StopRequest, Target};
use std::time::Duration;

#[tokio::test]
async fn a_server_with_another_pid_is_never_ready_and_never_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = foreign_redis(dir.path(), port, None);
    let engine = engine::for_kind(EngineKind::Redis).unwrap();
    let wrong = Target {
        addr: Target::address("127.0.0.1".parse().unwrap(), port),
        password: None,
        timeout: Duration::from_secs(2),
        pid: server.id() + 1,
    };
    match engine.probe(&wrong).await {
        Readiness::Unreachable(why) => assert!(why.contains(&format!("answered by pid {}", server.id())), "{why}"),
        other => panic!("a stranger was taken for ready: {other:?}"),
    }
    match engine.request_stop(&wrong).await {
        StopRequest::Signal { reason } => assert!(reason.contains("another process holds the port"), "{reason}"),
        other => panic!("a stop was sent to a stranger: {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.try_wait().unwrap().is_none(), "the stranger was shut down");
    assert!(pong(port, None));

    // The same server, with its own pid, is ready and is shut down.
    let right = Target {
        pid: server.id(),
        ..wrong
    };
    assert_eq!(engine.probe(&right).await, Readiness::Ready);
    assert_eq!(
        engine.request_stop(&right).await,
        StopRequest::Sent {
            command: "SHUTDOWN NOSAVE".into()
        }
    );
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn without_the_password_the_stop_falls_back_to_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = foreign_redis(dir.path(), port, Some("pw"));
    let engine = engine::for_kind(EngineKind::Redis).unwrap();
    let target = Target {
        addr: Target::address("0.0.0.0".parse().unwrap(), port),
        password: None,
        timeout: Duration::from_secs(2),
        pid: server.id(),
    };
    match engine.request_stop(&target).await {
        StopRequest::Signal { reason } => assert!(reason.contains("NOAUTH"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let with_password = Target {
        password: Some(ker_agent::spec::Secret::new("pw")),
        ..target
    };
    assert_eq!(engine.probe(&with_password).await, Readiness::Ready);
    let _ = server.kill();
    let _ = server.wait();
}
