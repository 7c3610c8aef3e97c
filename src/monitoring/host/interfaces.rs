//! Which network interface holds an address: for servers that listen on an interface
//! rather than on addresses (Pika's `network-interface`).

use std::net::IpAddr;

/// The interface a server that listens on 127.0.0.1 plus one interface should use to
/// listen on the agent's `bind` addresses: the one that holds the first non-loopback
/// IPv4 address of `bind`, or the loopback interface when `bind` has only loopback
/// ones. `Ok(None)` when `bind` includes an unspecified address (all addresses).
/// Reads the host's interfaces (blocking).
pub fn bind_interface(bind: &[IpAddr]) -> Result<Option<String>, String> {
    if bind.iter().any(IpAddr::is_unspecified) {
        return Ok(None);
    }
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let addresses: Vec<(&str, IpAddr)> = networks
        .iter()
        .flat_map(|(name, data)| data.ip_networks().iter().map(move |net| (name.as_str(), net.addr)))
        .collect();
    choose(bind, &addresses).map(Some)
}

/// [`bind_interface`] on a list of `(interface, address)` pairs.
fn choose(bind: &[IpAddr], addresses: &[(&str, IpAddr)]) -> Result<String, String> {
    let wanted = bind
        .iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .or_else(|| bind.iter().find(|ip| ip.is_ipv4()))
        .ok_or_else(|| {
            format!(
                "[instances] bind ({}) has no IPv4 address, and Pika listens on IPv4 only",
                list(bind)
            )
        })?;
    addresses
        .iter()
        .find(|(_, address)| address == wanted)
        .map(|(name, _)| (*name).to_string())
        .ok_or_else(|| format!("no network interface of this host has the address {wanted} of [instances] bind"))
}

fn list(bind: &[IpAddr]) -> String {
    bind.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn the_first_non_loopback_ipv4_address_picks_the_interface() {
        let host = [
            ("lo", "127.0.0.1".parse().unwrap()),
            ("lo", "::1".parse().unwrap()),
            ("eth0", "10.0.0.5".parse().unwrap()),
            ("eth1", "192.0.2.7".parse().unwrap()),
        ];
        assert_eq!(choose(&ips(&["127.0.0.1"]), &host).unwrap(), "lo");
        assert_eq!(choose(&ips(&["127.0.0.1", "192.0.2.7"]), &host).unwrap(), "eth1");
        assert_eq!(choose(&ips(&["::1", "10.0.0.5"]), &host).unwrap(), "eth0");
        let none = choose(&ips(&["::1"]), &host).unwrap_err();
        assert!(none.contains("no IPv4 address") && none.contains("::1"), "{none}");
        let gone = choose(&ips(&["10.9.9.9"]), &host).unwrap_err();
        assert!(gone.contains("10.9.9.9"), "{gone}");
    }

    #[test]
    fn all_addresses_need_no_interface_and_this_host_has_loopback() {
        assert_eq!(bind_interface(&ips(&["0.0.0.0"])), Ok(None));
        assert_eq!(bind_interface(&ips(&["127.0.0.1"])), Ok(Some("lo".to_string())));
    }
}
