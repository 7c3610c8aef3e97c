//! Several hosts (network namespaces with their own addresses): a test controller on
//! one, an agent on each of two others, and Redis replication across them, over HTTPS;
//! and a backup taken on one host seeding an instance on another through the agents'
//! APIs.

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

/// A password-protected connection to an instance on a network host (a server bound
/// to a host address accepts others only with a password).
fn connect(ip: std::net::Ipv4Addr, port: u16, password: &str) -> redis::Connection {
    let client = redis::Client::open(format!("redis://:{password}@{ip}:{port}/")).unwrap();
    client.get_connection_with_timeout(Duration::from_secs(2)).unwrap()
}

#[test]
fn host_b_seeds_an_instance_from_a_backup_served_by_host_a() {
    const PW: &str = "seed-pw-51c0";
    const WAIT: Duration = Duration::from_secs(30);
    let mut net = Network::new(2);
    net.attach_test_process();
    let mut hosts: Vec<Harness> = (0..2).map(|_| Harness::new()).collect();
    for (i, h) in hosts.iter_mut().enumerate() {
        h.place_in(&net, i, &format!("host-{i}"));
        // Both agents share one API token here: B sends it to A from its own copy.
        h.use_api_token();
        h.append_agent_toml("[backup]\nfetch_token_file = \"api.token\"\n");
    }
    let port = 6379; // every host has its own port space
    let (ip_a, ip_b) = (net.host_ip(0), net.host_ip(1));
    hosts[0].manifest("main", port, &format!("password = \"{PW}\"\n"));
    hosts[0].start_agent();
    hosts[0].wait_ready("main");
    fill_keys(&mut connect(ip_a, port, PW), 300, "from-a-");
    hosts[0].manifest("main", port, &format!("password = \"{PW}\"\nbackup_epoch = 1\n"));
    hosts[0].signal_agent(SIGHUP);
    let backup = wait_backup(&hosts[0], "main", 1, WAIT);
    assert_eq!(backup["keys"], 300, "{backup}");
    let (id, sha) = (backup["id"].as_str().unwrap(), backup["sha256"].as_str().unwrap());
    let url = format!("http://{ip_a}:{}/v1/instances/main/backups/{id}", hosts[0].api_port);

    // A wrong checksum: B refuses, says so, and starts nothing.
    let wrong = "f".repeat(64);
    let seed = |sha: &str| format!("password = \"{PW}\"\nrestore_from = {{ url = \"{url}\", sha256 = \"{sha}\" }}\n");
    hosts[1].manifest("copy", port, &seed(&wrong));
    hosts[1].start_agent();
    let failed = hosts[1].wait_for_value("host B's restore to fail", WAIT, |h| {
        h.instance("copy")["restore"]["error"].as_str().map(str::to_string)
    });
    assert!(failed.contains(sha) && failed.contains("refused"), "{failed}");
    assert!(
        failed.contains(&ip_a.to_string()),
        "the error names the source: {failed}"
    );
    let copy = hosts[1].instance("copy");
    assert_eq!(copy["pid"], serde_json::Value::Null, "{copy}");
    assert!(count_events(&hosts[1], "copy", "restore-failed") >= 1);
    assert!(!hosts[1].instance_dir("copy").join("data/dump.rdb").exists());
    assert!(
        !net.can_connect(1, std::net::SocketAddrV4::new(ip_b, port)),
        "nothing listens on host B's port"
    );

    // The right one: B fetches A's backup across the link and answers with A's keys.
    hosts[1].manifest("copy", port, &seed(sha));
    hosts[1].signal_agent(SIGHUP);
    hosts[1].wait_ready("copy");
    let mut replica = connect(ip_b, port, PW);
    assert_eq!(redis::cmd("DBSIZE").query::<u64>(&mut replica).unwrap(), 300);
    assert_eq!(
        redis::cmd("GET").arg("key:299").query::<String>(&mut replica).unwrap(),
        "from-a-299"
    );
    let restored = hosts[1].instance("copy")["restore"].clone();
    assert_eq!(restored["sha256"], sha, "{restored}");
    assert_eq!(restored["error"], serde_json::Value::Null, "{restored}");
    assert_eq!(count_events(&hosts[1], "copy", "restored"), 1);
    for h in &hosts {
        assert_secrets_hidden(h, &[PW, API_TOKEN], &[]);
    }
}

#[test]
#[cfg_attr(not(pika), ignore = "needs a pika binary: none in PIKA_BIN or on PATH")]
fn host_b_seeds_a_pika_instance_from_a_dump_served_by_host_a() {
    use common::pika::*;
    const WAIT: Duration = Duration::from_secs(60);
    let mut net = Network::new(2);
    net.attach_test_process();
    let mut hosts: Vec<Harness> = (0..2).map(|_| harness()).collect();
    for (i, h) in hosts.iter_mut().enumerate() {
        h.place_in(&net, i, &format!("host-{i}"));
        h.use_api_token();
        h.append_agent_toml("[backup]\nfetch_token_file = \"api.token\"\n");
    }
    let port = 9221; // every host has its own port space
    let (ip_a, ip_b) = (net.host_ip(0), net.host_ip(1));
    pika_manifest(&hosts[0], "main", port, "", "");
    hosts[0].start_agent();
    wait_pika_ready(&hosts[0], "main");
    let client = |ip| redis::Client::open(format!("redis://{ip}:{port}/")).unwrap();
    let mut conn = client(ip_a)
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    fill_keys(&mut conn, 300, "from-a-");
    pika_manifest(&hosts[0], "main", port, "backup_epoch = 1", "");
    hosts[0].signal_agent(SIGHUP);
    let backup = wait_backup(&hosts[0], "main", 1, WAIT);
    let (id, sha) = (backup["id"].as_str().unwrap(), backup["sha256"].as_str().unwrap());
    let url = format!("http://{ip_a}:{}/v1/instances/main/backups/{id}", hosts[0].api_port);

    pika_manifest(
        &hosts[1],
        "copy",
        port,
        &format!("restore_from = {{ url = \"{url}\", sha256 = \"{}\" }}", "e".repeat(64)),
        "",
    );
    hosts[1].start_agent();
    let failed = hosts[1].wait_for_value("host B's restore to fail", WAIT, |h| {
        h.instance("copy")["restore"]["error"].as_str().map(str::to_string)
    });
    assert!(failed.contains(sha) && failed.contains("refused"), "{failed}");
    assert_eq!(hosts[1].instance("copy")["pid"], serde_json::Value::Null);

    pika_manifest(
        &hosts[1],
        "copy",
        port,
        &format!("restore_from = {{ url = \"{url}\", sha256 = \"{sha}\" }}"),
        "",
    );
    hosts[1].signal_agent(SIGHUP);
    wait_pika_ready(&hosts[1], "copy");
    let mut copy = client(ip_b)
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut copy).unwrap();
    assert_eq!(keys.len(), 300);
    assert_eq!(
        redis::cmd("GET").arg("key:299").query::<String>(&mut copy).unwrap(),
        "from-a-299"
    );
    assert_eq!(hosts[1].instance("copy")["restore"]["sha256"], sha);
}
