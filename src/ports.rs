//! Is a TCP port free, and if not, which process holds it?
//!
//! The common answer ("free") must be cheap: reading `/proc/net/tcp` walks the kernel's
//! whole connection hash table (about 10 ms per read on a host with a lot of memory,
//! even with no sockets), which would serialize the start of a hundred instances. So a
//! port is first probed with a bind; only when that fails are the socket tables read
//! to find the listener and its process.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

/// A process found holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub port: u16,
    /// The holding process, when it could be found (another user's process may not be
    /// visible to an unprivileged agent).
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => write!(f, "port {} is held by pid {pid} ({comm})", self.port),
            (Some(pid), None) => write!(f, "port {} is held by pid {pid}", self.port),
            _ => write!(f, "port {} is held by another process", self.port),
        }
    }
}

/// Finds a TCP listener on `port` (any address, IPv4 or IPv6) and, if it can, the
/// process that holds it. `None` when nothing listens there. Can take long when the
/// port is taken (see [`holder`]).
pub fn find_listener(port: u16) -> Option<PortHolder> {
    if is_free(port) {
        return None;
    }
    holder(port)
}

/// Cheap: whether nothing listens on `port`. A wildcard bind fails if anything listens
/// on the port on any IPv4 address (or on a dual-stack IPv6 wildcard). Sockets in
/// TIME_WAIT do not make it fail: the standard library sets SO_REUSEADDR.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() && !listens_on_ipv6(port)
}

/// Expensive (reads the socket tables and every process's descriptors): the listener
/// on `port` and its process. `None` when no socket listens there after all (a bind
/// can also fail for a connected socket that uses the port).
pub fn holder(port: u16) -> Option<PortHolder> {
    let inode = listening_inodes(port).into_iter().next()?;
    let pid = pid_of_socket(inode);
    Some(PortHolder {
        port,
        pid,
        comm: pid.and_then(crate::procfs::read_comm),
    })
}

/// An IPv6-only listener does not stop an IPv4 bind; probe the IPv6 wildcard too when
/// the host has IPv6.
fn listens_on_ipv6(port: u16) -> bool {
    match TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port)) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::AddrInUse,
    }
}

fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(parse_tcp_listeners(&text, port));
        }
    }
    inodes
}

/// Socket inodes listening on TCP `port` on any address, from the text of
/// `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn parse_tcp_listeners(text: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?;
            let (_, local_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(local_port, 16).ok()?;
            (local_port == port && *state == LISTEN)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// Scans `/proc/*/fd` for the process that has socket `inode` open. Only used when a
/// conflict is found, so its cost does not matter.
fn pid_of_socket(inode: u64) -> Option<u32> {
    let wanted = PathBuf::from(format!("socket:[{inode}]"));
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|target| target == wanted) {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_found_by_port_and_state() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:18EB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:18EC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_tcp_listeners(text, 0x18EB), vec![111]);
        assert_eq!(parse_tcp_listeners(text, 0x18EC), vec![333]);
        assert!(parse_tcp_listeners(text, 1).is_empty());
        assert!(parse_tcp_listeners("garbage\nmore garbage", 1).is_empty());
    }

    #[test]
    fn a_real_listener_is_found_with_its_pid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = find_listener(port).expect("listener not found");
        assert_eq!(holder.pid, Some(std::process::id()));
        drop(listener);
        assert_eq!(find_listener(port), None);
    }

    #[test]
    fn an_ipv6_only_listener_is_found() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this host: nothing to find
        };
        let port = listener.local_addr().unwrap().port();
        assert_eq!(find_listener(port).and_then(|h| h.pid), Some(std::process::id()));
    }

    #[test]
    fn a_port_with_only_a_connected_socket_is_free() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();
        assert_eq!(find_listener(client_port), None);
    }
}
