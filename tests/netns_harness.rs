//! Self-tests of the multi-host harness (tests/common/netns.rs): hosts reach each
//! other over TCP, the root namespace does not reach them, dropping a Network leaves
//! nothing behind (also when the test panics), parallel Networks do not collide.

mod common;

use common::netns::{self, Network};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 6379;

/// Starts `redis-server` in host `i`, bound to `bind`, working in (and logging to) `dir`.
fn start_redis(net: &Network, i: usize, bind: &str, dir: &Path, extra: &[&str]) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::File::create(dir.join("redis.log")).unwrap();
    net.command(i, common::redis_server())
        .args([
            "--bind",
            bind,
            "--port",
            &PORT.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--protected-mode", "no"])
        .args(["--daemonize", "no", "--repl-diskless-sync-delay", "0"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn ip netns exec redis-server")
}

/// `redis-cli -h <host> -p 6379 <args>` run inside host `from`.
fn redis_cli(net: &Network, from: usize, host: Ipv4Addr, args: &[&str]) -> Output {
    net.command(from, "redis-cli")
        .args(["-h", &host.to_string(), "-p", &PORT.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip netns exec redis-cli")
}

/// Whether a PING sent from the test process (the root namespace) to `addr` gets PONG.
fn root_gets_pong(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `sleep 600` in the background from a shell in host `i` and returns its pid:
/// a process the test holds no handle to.
fn detached_sleep(net: &Network, i: usize) -> u32 {
    let out = net
        .command(i, "sh")
        .args(["-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $!"])
        .output()
        .unwrap();
    assert!(out.status.success(), "sh in host {i}: {out:?}");
    stdout(&out).parse().expect("pid")
}

fn assert_gone(names: &[String], pids: &[u32]) {
    let listed = netns::list_namespaces().unwrap();
    for name in names {
        assert!(!listed.contains(name), "namespace {name} still exists: {listed:?}");
        assert!(
            !Path::new("/var/run/netns").join(name).exists(),
            "/var/run/netns/{name} still exists"
        );
    }
    for &pid in pids {
        wait_until(&format!("pid {pid} to be gone"), Duration::from_secs(2), || {
            !common::alive(pid)
        });
    }
}

#[test]
fn hosts_reach_each_other_but_not_from_the_root_namespace() {
    let net = Network::new(2);
    let (ip0, ip1) = (net.host_ip(0), net.host_ip(1));
    assert_ne!(ip0, ip1);
    let dir = tempfile::tempdir().unwrap();

    let mut master = start_redis(&net, 0, &ip0.to_string(), &dir.path().join("master"), &[]);
    net.wait_connectable(1, SocketAddrV4::new(ip0, PORT), Duration::from_secs(10));
    let pong = redis_cli(&net, 1, ip0, &["ping"]);
    assert_eq!(stdout(&pong), "PONG", "redis-cli ping from host 1: {pong:?}");
    assert!(net.pids(0).contains(&master.id()), "redis-server runs in host 0");

    // The root namespace has no address in the hosts' subnet and does not reach the
    // server. (A connect alone proves nothing: some machines' default gateway is a
    // transparent proxy that accepts any TCP connection.)
    let root_addrs = std::process::Command::new(netns::ip())
        .args(["-o", "-4", "addr"])
        .output()
        .unwrap();
    let subnet_prefix = format!("{}.", net.subnet().to_string().trim_end_matches(".0"));
    assert!(
        !stdout(&root_addrs).contains(&format!("inet {subnet_prefix}")),
        "the root namespace has an address in {}/24:\n{}",
        net.subnet(),
        stdout(&root_addrs)
    );
    assert!(
        !root_gets_pong(SocketAddr::from((ip0, PORT))),
        "the root namespace reached {ip0}:{PORT}"
    );

    // Replication across the link: the replica in host 1 follows the master in host 0
    // and connects from its own address.
    let master_arg = format!("{ip0} {PORT}");
    let mut replica = start_redis(
        &net,
        1,
        &ip1.to_string(),
        &dir.path().join("replica"),
        &["--replicaof", &master_arg],
    );
    let set = redis_cli(&net, 1, ip0, &["set", "k", "across"]);
    assert_eq!(stdout(&set), "OK", "{set:?}");
    wait_until("the key to reach the replica", Duration::from_secs(10), || {
        stdout(&redis_cli(&net, 0, ip1, &["get", "k"])) == "across"
    });
    let info = stdout(&redis_cli(&net, 0, ip0, &["info", "replication"]));
    assert!(info.contains(&format!("slave0:ip={ip1},")), "master's view:\n{info}");

    drop(net);
    assert_eq!(master.wait().unwrap().signal(), Some(9), "killed by the Network's drop");
    assert_eq!(
        replica.wait().unwrap().signal(),
        Some(9),
        "killed by the Network's drop"
    );
}

#[test]
fn drop_kills_processes_and_deletes_namespaces() {
    let net = Network::new(2);
    let names = net.namespaces();
    assert_eq!(names.len(), 3);
    let listed = netns::list_namespaces().unwrap();
    assert!(
        names.iter().all(|n| listed.contains(n)),
        "{names:?} not all in {listed:?}"
    );

    let mut child = net.command(0, "sleep").arg("600").spawn().unwrap();
    let orphan = detached_sleep(&net, 1);
    assert!(
        net.pids(0).contains(&child.id()),
        "ip netns exec runs the program in place"
    );
    assert!(net.pids(1).contains(&orphan));

    drop(net);
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert_gone(&names, &[orphan]);
}

#[test]
fn drop_cleans_up_when_the_test_panics() {
    let mut seen = (Vec::new(), 0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Network::new(1);
        seen = (net.namespaces(), detached_sleep(&net, 0));
        panic!("deliberate panic with a live Network");
    }));
    assert!(result.is_err());
    let (names, orphan) = seen;
    assert_eq!(names.len(), 2);
    assert_gone(&names, &[orphan]);
}

#[test]
fn leftovers_of_dead_processes_are_removed() {
    // Once this returns, the once-per-process clean-up has run: no race with it below.
    netns::prepare();
    // A pid above the kernel's maximum (2^22) is never alive; our pid keeps parallel
    // runs of this test apart.
    let name = format!("{}4294967-{}-h0", netns::PREFIX, std::process::id());
    let ip = netns::ip();
    let added = std::process::Command::new(ip)
        .args(["netns", "add", &name])
        .output()
        .unwrap();
    assert!(added.status.success(), "ip netns add {name}: {added:?}");
    let out = std::process::Command::new(ip)
        .args([
            "netns",
            "exec",
            &name,
            "sh",
            "-c",
            "sleep 600 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .output()
        .unwrap();
    let orphan: u32 = stdout(&out).parse().expect("pid");

    let removed = netns::remove_leftovers();
    assert!(removed.contains(&name), "{name} not in {removed:?}");
    assert_gone(&[name], &[orphan]);
}

#[test]
fn parallel_networks_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let dir = dir.path().join(t.to_string());
            std::thread::spawn(move || {
                let net = Network::new(3);
                // The same port in every Network: each host has its own port space.
                let server = start_redis(&net, 0, "0.0.0.0", &dir, &[]);
                for from in [1, 2] {
                    net.wait_connectable(from, SocketAddrV4::new(net.host_ip(0), PORT), Duration::from_secs(10));
                }
                (net, server)
            })
        })
        .collect();
    let nets: Vec<(Network, Child)> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let mut names: Vec<String> = nets.iter().flat_map(|(n, _)| n.namespaces()).collect();
    let mut subnets: Vec<Ipv4Addr> = nets.iter().map(|(n, _)| n.subnet()).collect();
    let (names_len, subnets_len) = (names.len(), subnets.len());
    names.sort();
    names.dedup();
    subnets.sort();
    subnets.dedup();
    assert_eq!(names.len(), names_len, "namespace names collide: {names:?}");
    assert_eq!(subnets.len(), subnets_len, "subnets collide: {subnets:?}");
    // Each Network is its own segment: no host reaches another Network's hosts.
    for (a, (net_a, _)) in nets.iter().enumerate() {
        for (b, (net_b, _)) in nets.iter().enumerate() {
            if a != b {
                let target = SocketAddrV4::new(net_b.host_ip(0), PORT);
                assert!(
                    !net_a.can_connect(1, target),
                    "{} reached {target} of {}",
                    net_a.id(),
                    net_b.id()
                );
            }
        }
    }
    for (net, mut server) in nets {
        drop(net);
        assert_eq!(server.wait().unwrap().signal(), Some(9));
    }
}

#[test]
fn the_test_process_can_join_the_network() {
    let mut net = Network::new(1);
    let ip = net.attach_test_process();
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    net.wait_connectable(
        0,
        std::net::SocketAddrV4::new(ip, port),
        std::time::Duration::from_secs(5),
    );
    drop(net);
    // The root side of the link is gone with the network.
    let links = std::process::Command::new("ip").args(["-o", "addr"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&ip.to_string()));
}
