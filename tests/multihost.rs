//! Several hosts (network namespaces with their own addresses): a test controller on
//! one, an agent on each of two others, and Redis replication across them, over HTTPS.

mod common;

use common::controller::Controller;
use common::netns::Network;
use common::tls::Ca;
use common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const TOKEN: &str = "multihost-controller-token-0123";

#[test]
fn a_master_on_host_a_replicates_to_a_replica_on_host_b() {
    const PW: &str = "multihost-pw-2b7c";
    let mut net = Network::new(2);
    let cc_ip = net.attach_test_process();
    let ca = Ca::new("multihost CA");
    let server = ca.server(&[&cc_ip.to_string()]);
    let controller = Controller::start_tls(
        std::net::SocketAddr::new(cc_ip.into(), 0),
        TOKEN,
        &server.cert_pem,
        &server.key_pem,
        None,
    );

    let mut hosts: Vec<Harness> = (0..2).map(|_| Harness::new()).collect();
    for (i, h) in hosts.iter_mut().enumerate() {
        h.place_in(&net, i, &format!("host-{i}"));
        let ca_file = ca.write(h.path(), "ca.pem");
        let token = h.path().join("controller.token");
        std::fs::write(&token, TOKEN).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut config = std::fs::read_to_string(h.config_path()).unwrap();
        config.push_str(&format!(
            "\n[controller]\nurl = \"{}\"\ntoken_file = \"controller.token\"\nca_file = \"{}\"\nreport_interval = \"300ms\"\npoll_wait = \"500ms\"\n",
            controller.url(),
            ca_file.display()
        ));
        std::fs::write(h.config_path(), config).unwrap();
    }
    let (ip_a, ip_b) = (net.host_ip(0), net.host_ip(1));
    let port = 6379; // every host has its own port space
    controller.set_document(
        "host-0",
        json!({"generation": 1, "instances": [{"name": "main", "port": port, "version": "7.0", "password": PW}]}),
    );
    controller.set_document(
        "host-1",
        json!({"generation": 1, "instances": [{"name": "copy", "port": port, "version": "7.0", "password": PW,
                "replica_of": format!("{ip_a}:{port}")}]}),
    );
    for h in hosts.iter_mut() {
        h.start_agent();
    }
    hosts[0].wait_ready("main");
    hosts[1].wait_ready("copy");

    let connect = |ip: std::net::Ipv4Addr| {
        let client = redis::Client::open(format!("redis://:{PW}@{ip}:{port}/")).unwrap();
        client.get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    };
    let mut master = connect(ip_a);
    redis::cmd("SET")
        .arg("k")
        .arg("across-hosts")
        .query::<()>(&mut master)
        .unwrap();
    hosts[1].wait_for("the key on the replica on host B", Duration::from_secs(30), |_| {
        let mut replica = connect(ip_b);
        redis::cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut replica)
            .is_ok_and(|v| v.as_deref() == Some("across-hosts"))
    });
    // The master sees its replica at host B's address: replication crossed the link.
    let info: String = redis::cmd("INFO").arg("replication").query(&mut master).unwrap();
    assert!(info.contains(&format!("ip={ip_b}")), "{info}");
    // Both agents report to the controller on its own host, with their roles.
    for (node, role) in [("host-0", "master"), ("host-1", "replica")] {
        controller.wait_for_report(node, Duration::from_secs(10), |r| {
            r["observed_generation"] == 1 && r["instances"][0]["role"] == role && r["instances"][0]["ready"] == true
        });
    }
    for (h, node) in hosts.iter().zip(["host-0", "host-1"]) {
        let reports = serde_json::to_string(&controller.reports(node)).unwrap();
        assert_secrets_hidden(h, &[PW], &[("the reports", reports)]);
    }
}
