//! File and `/proc` work off the runtime's threads, with a time limit: a hung disk
//! costs the caller an error that says what could not be done, never a runtime thread
//! or a task that waits forever.

use std::time::Duration;

/// Limit for file work (directories, config, records, descriptions, /proc scans).
pub const DISK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `work` on the blocking pool within [`DISK_TIMEOUT`]; the error says `what`
/// could not be done.
pub async fn run<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    match tokio::time::timeout(DISK_TIMEOUT, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) => Err(format!("cannot {what}: {join}")),
        Err(_) => Err(format!(
            "cannot {what}: no answer within {}s (hung disk?)",
            DISK_TIMEOUT.as_secs()
        )),
    }
}
