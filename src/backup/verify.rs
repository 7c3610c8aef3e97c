//! Checking an RDB before it counts as a backup: Redis's own `redis-check-rdb`
//! (Debian's redis-tools) reads every key of it. It prints `[info] N keys read` and
//! exits 0 on a sound file, and exits 1 with `--- RDB ERROR DETECTED ---` on a corrupt
//! or truncated one.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What the checker read from a sound RDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdbFacts {
    pub keys: Option<u64>,
    /// The `ctime` the server wrote into it: when the snapshot was taken.
    pub created_at: Option<u64>,
}

/// Runs `checker` on `rdb`; on success returns what it read.
pub async fn check_rdb(checker: &Path, rdb: &Path, timeout: Duration) -> Result<RdbFacts, String> {
    let mut command = tokio::process::Command::new(checker);
    command
        .arg(rdb)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| {
        format!(
            "cannot run {} ([backup] check_rdb; Debian's redis-tools package has it): {e}",
            checker.display()
        )
    })?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("{} on {} failed: {e}", checker.display(), rdb.display())),
        Err(_) => {
            return Err(format!(
                "{} did not finish checking {} within {}s",
                checker.display(),
                rdb.display(),
                timeout.as_secs()
            ))
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && !text.contains("RDB ERROR DETECTED") {
        return Ok(RdbFacts {
            keys: keys_read(&text),
            created_at: aux_ctime(&text),
        });
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why = text
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("[offset") || l.contains("error") || l.contains("ERROR") || l.contains("Unexpected"))
        .map(str::trim)
        .take(3)
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!(
        "{} finds {} unsound ({}): {}",
        checker.display(),
        rdb.display(),
        output.status,
        if why.is_empty() { "no reason given" } else { &why }
    ))
}

/// `[info] N keys read` of the checker's output.
fn keys_read(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.split("[info] ").nth(1)?;
        rest.strip_suffix(" keys read")?.trim().parse().ok()
    })
}

/// `AUX FIELD ctime = '1795973080'` of the checker's output.
fn aux_ctime(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.split("AUX FIELD ctime = '").nth(1)?;
        rest.strip_suffix('\'')?.parse().ok()
    })
}

/// How long checking `bytes` may take: a minute, and a minute more per GiB (the
/// checker reads 100–300 MB/s).
pub fn timeout_for(bytes: u64) -> Duration {
    Duration::from_secs(60 + 60 * (bytes >> 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_count_is_read_from_the_checkers_output() {
        let ok = "[offset 0] Checking RDB file dump.rdb\n[offset 26] AUX FIELD redis-ver = '7.0.15'\n[info] 2 keys read\n[info] 0 expires\n[info] 0 already expired\n";
        assert_eq!(keys_read(ok), Some(2));
        let aux = "[offset 53] AUX FIELD ctime = '1795973080'\n";
        assert_eq!(aux_ctime(aux), Some(1_795_973_080));
        assert_eq!(aux_ctime(ok), None);
        assert_eq!(keys_read("nothing"), None);
    }
}
