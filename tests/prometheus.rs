//! The shipped dashboards and alerting rules against a real Prometheus (Debian's
//! `prometheus`) scraping a real agent: a controlled agent with a master (with a
//! backup) and its replica. Every dashboard query and variable must parse and return
//! series; every alerting rule must evaluate without error, and every metric it reads
//! must exist.

mod common;

use common::controller::{controlled, document, Controller, NODE, TOKEN};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus scraping the agent every second, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, agent_port: u16) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} not found: install it (apt-get install -y prometheus)"
        );
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("operator/prometheus/alerts.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: ker-agent\n    static_configs: [{{ targets: [\"127.0.0.1:{agent_port}\"] }}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, log }
    }

    /// `GET /api/v1/<path>` as JSON (status success), or the error with the log.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (code, _, body) = http_bytes(([127, 0, 0, 1].into(), self.port), &format!("/api/v1/{path}"), &[])
            .map_err(|e| format!("prometheus on {}: {e}", self.port))?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("{code}: {e}"))?;
        if code != 200 || value["status"] != "success" {
            return Err(format!("{path}: {code} {value}"));
        }
        Ok(value["data"].clone())
    }

    /// The series an instant query returns.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("query?query={}", encode(expr)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Percent-encoding of a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of a Grafana dashboard: its panels' targets and its variables'.
fn dashboard_queries(file: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("operator/grafana")
        .join(file);
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(<selector>, label): the selector's series.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(s, _)| s.to_string())
                .unwrap_or_else(|| query.to_string());
            out.push((format!("variable {}", variable["name"]), selector));
        }
    }
    out
}

#[test]
fn every_dashboard_query_and_alert_rule_works_against_a_real_prometheus() {
    let controller = Controller::start(TOKEN);
    let mut h = controlled(&controller);
    let (pm, pr) = (free_port(), free_port());
    controller.set_document(
        NODE,
        document(
            1,
            &[
                ("m", pm, json!({"backup_epoch": 1, "maxmemory": "64mb"})),
                ("r", pr, json!({"replica_of": format!("127.0.0.1:{pm}")})),
            ],
        ),
    );
    h.start_agent();
    h.wait_ready("m");
    h.wait_ready("r");
    fill_keys(&mut redis(pm, None).unwrap(), 100, "v-");
    wait_backup(&h, "m", 1, Duration::from_secs(30));
    h.wait_for("r replicating", Duration::from_secs(30), |h| {
        h.instance("r")["health"]["replication"]["link_up"] == true
    });

    let prometheus = Prometheus::start(h.path(), h.api_port);
    let node = format!("127.0.0.1:{}", h.api_port);
    h.wait_for("prometheus scraping the agent", Duration::from_secs(60), |_| {
        prometheus
            .query("count(redis_up{job=\"ker-agent\"}) == 2")
            .is_ok_and(|r| !r.is_empty())
    });
    // Enough samples for every rate over a minute, and the rules evaluated.
    std::thread::sleep(Duration::from_secs(6));

    // Preflight findings exist only where the host has some.
    let findings = h.status()["host"]["findings"].as_array().map_or(0, Vec::len);
    let mut failures = Vec::new();
    let mut tried = 0;
    for file in ["ker-agent-node.json", "ker-agent-instance.json"] {
        for (title, expr) in dashboard_queries(file) {
            if expr.contains("ker_host_preflight_finding") && findings == 0 {
                continue;
            }
            let expr = expr.replace("$__rate_interval", "1m").replace("$node", &node);
            // The instance view is for one instance; each of its queries must answer for
            // the master or the replica (a replica has no replicas' lag).
            let candidates: Vec<String> = if expr.contains("$name") {
                ["m", "r"].iter().map(|n| expr.replace("$name", n)).collect()
            } else {
                vec![expr.clone()]
            };
            tried += 1;
            let answers: Vec<Result<Vec<Value>, String>> = candidates.iter().map(|e| prometheus.query(e)).collect();
            if let Some(Err(error)) = answers.iter().find(|a| a.is_err()) {
                failures.push(format!("{file}: {title}: {expr}: {error}"));
            } else if answers.iter().all(|a| a.as_ref().is_ok_and(Vec::is_empty)) {
                failures.push(format!("{file}: {title}: {expr}: no series"));
            }
        }
    }

    // The rules: loaded, every one evaluated without error.
    let groups = prometheus.api("rules").unwrap();
    let rules: Vec<Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(rules.len(), 18, "{groups:#}\n{}", prometheus.log());
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        let expr = rule["query"].as_str().unwrap();
        tried += 1;
        if rule["health"] != "ok" {
            failures.push(format!("rule {name}: {} {}", rule["health"], rule["lastError"]));
        }
        // Every metric it reads exists (preflight findings only when the host has some).
        for metric in metrics_in(expr) {
            if metric == "ker_host_preflight_finding" && findings == 0 {
                continue;
            }
            match prometheus.query(&format!("{metric}{{job=\"ker-agent\"}}")) {
                Ok(series) if series.is_empty() => failures.push(format!("rule {name}: {metric} has no series")),
                Ok(_) => {}
                Err(error) => failures.push(format!("rule {name}: {metric}: {error}")),
            }
        }
    }
    println!("{tried} dashboard queries and rules tried, {} failures", failures.len());
    assert!(
        failures.is_empty(),
        "{failures:#?}\n--- prometheus log:\n{}",
        prometheus.log()
    );
}

/// The metric names a PromQL expression reads (functions and keywords are not
/// followed by `{` or are known words).
fn metrics_in(expr: &str) -> Vec<String> {
    let words = [
        "by",
        "on",
        "and",
        "or",
        "unless",
        "time",
        "increase",
        "predict_linear",
        "vector",
        "ignoring",
    ];
    let mut out: Vec<String> = Vec::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_lowercase()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == '"'))
        {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let next = bytes.get(i).copied();
            let is_metric = (word.starts_with("redis_") || word.starts_with("ker_") || word == "up")
                && next != Some('(')
                && !words.contains(&word.as_str());
            if is_metric && !out.contains(&word) {
                out.push(word);
            }
        } else {
            i += 1;
        }
    }
    out
}
