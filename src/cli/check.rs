//! `ker-agent check`: agent.toml, the files `run` reads before it starts anything, and
//! every manifest; plus the open-files limit the agent would get.

use super::{load_config, print_problems, EXIT_USAGE};
use crate::config::AgentConfig;
use std::process::ExitCode;
use std::time::Duration;

/// `ker-agent check`.
pub fn check(config_path: &std::path::Path) -> ExitCode {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let missing = config.missing_binaries();
    if !missing.is_empty() {
        print_problems(&missing);
        return ExitCode::from(EXIT_USAGE);
    }
    // The files `run` reads before it starts anything: a token readable by others,
    // an empty token or a broken certificate is found here, not at the next restart.
    let secrets = [
        config
            .controller
            .as_ref()
            .map(|c| crate::controller::Client::new(c, &config.node_id).map(drop)),
        config
            .api
            .token_file
            .as_ref()
            .map(|path| crate::api::Token::read(path).map(drop)),
        // The store's CA, read as the fetches will read it (its keys were parsed
        // with agent.toml).
        config.artifacts.as_ref().map(|store| {
            crate::artifacts::fetch::StoreClient::new(store)
                .map(drop)
                .map_err(anyhow::Error::from)
        }),
    ];
    let secret_errors: Vec<anyhow::Error> = secrets.into_iter().flatten().filter_map(Result::err).collect();
    if !secret_errors.is_empty() {
        for error in &secret_errors {
            eprintln!("{}: {error:#}", config_path.display());
        }
        return ExitCode::from(EXIT_USAGE);
    }
    let Some(dir) = &config.manifest_dir else {
        println!("{}: ok (no manifest_dir)", config_path.display());
        warn_files_limit(&config, 0);
        return ExitCode::SUCCESS;
    };
    match crate::desired::load_manifests(dir, &config) {
        Ok(manifests) => {
            println!(
                "{}: ok; {}: {} instance(s) ok",
                config_path.display(),
                dir.display(),
                manifests.len()
            );
            warn_files_limit(&config, manifests.len());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print_problems(&problems);
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The unit `check` compares the open-files limit of, under systemd.
const UNIT: &str = "ker-agent.service";

/// Warns (on stderr; the configuration is still valid) when the agent would run with
/// fewer open files than it needs for the declared instances: those of the manifests
/// and of the last accepted document in `desired.json`. Under systemd the limit is the
/// unit's `LimitNOFILE=`, anywhere else the hard limit of this process (the agent
/// raises its soft limit to the hard one).
fn warn_files_limit(config: &AgentConfig, manifests: usize) {
    let documented = match crate::desired::load_persisted(&config.desired_state_path(), config) {
        Ok(Some((inputs, _))) => inputs.document.map_or(0, |d| d.instances.len()),
        _ => 0,
    };
    let instances = manifests + documented;
    let need = crate::monitoring::host::agent_nofile_need(instances);
    let (limit, source) = match unit_files_limit() {
        Some(limit) => (limit, format!("{UNIT} runs the agent with LimitNOFILE={limit}")),
        None => match crate::sys::nofile_limits() {
            Ok((_, hard)) => (hard, format!("the hard open-files limit here is {hard} (ulimit -Hn)")),
            Err(_) => return,
        },
    };
    if limit < need {
        eprintln!(
            "warning: {source}, and the agent needs about {need} open files for {instances} instance(s) \
             ({} per instance, plus {}): raise LimitNOFILE= in {UNIT} (systemctl edit {UNIT}) to at least {need}",
            crate::monitoring::host::AGENT_FILES_PER_INSTANCE,
            crate::monitoring::host::AGENT_FILES_BASE,
        );
    }
}

/// The `LimitNOFILE=` of [`UNIT`] when systemd runs this host and knows the unit.
fn unit_files_limit() -> Option<u64> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let mut child = std::process::Command::new("systemctl")
        .args(["show", "--property=LoadState,LimitNOFILE", UNIT])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // systemctl answers at once; a hung bus must not hang `check`.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut text).ok()?;
    unit_limit_from_show(&text)
}

/// `LimitNOFILE` from `systemctl show` output, when the unit is loaded (for a unit it
/// does not know, systemctl shows the defaults).
fn unit_limit_from_show(text: &str) -> Option<u64> {
    let property = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
    };
    if property("LoadState")? != "loaded" {
        return None;
    }
    match property("LimitNOFILE")? {
        "infinity" => Some(u64::MAX),
        value => value.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_limit_is_read_only_when_systemd_knows_the_unit() {
        assert_eq!(
            unit_limit_from_show("LoadState=loaded\nLimitNOFILE=1048576\n"),
            Some(1_048_576)
        );
        assert_eq!(
            unit_limit_from_show("LimitNOFILE=infinity\nLoadState=loaded\n"),
            Some(u64::MAX)
        );
        assert_eq!(unit_limit_from_show("LoadState=not-found\nLimitNOFILE=524288\n"), None);
        assert_eq!(unit_limit_from_show("LoadState=loaded\nLimitNOFILE=lots\n"), None);
        assert_eq!(unit_limit_from_show(""), None);
    }
}
