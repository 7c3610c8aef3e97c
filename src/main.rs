//! `ker-agent`: parses the command line, sets up logging, and runs the chosen command.
//! The daemon itself is `ker_agent::run`; shutdown is an input to it (a token that
//! SIGTERM and SIGINT cancel).

use ker_agent::cli::{self, Command, EXIT_FAILURE};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // HTTPS (the controller, the status command) uses rustls with the ring provider.
    // Installing fails only if a provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Version => {
            println!("ker-agent {}", ker_agent::VERSION);
            ExitCode::SUCCESS
        }
        Command::Check { config } => cli::check(&config),
        Command::Generate { what } => match cli::generate(what, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ker-agent: error: cannot write to stdout: {error}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Status(args) => match runtime(1) {
            Ok(rt) => rt.block_on(cli::status(&args)),
            Err(code) => code,
        },
        Command::Events(args) => match runtime(1) {
            Ok(rt) => rt.block_on(cli::events(&args)),
            Err(code) => code,
        },
        Command::Run { config } => {
            cli::init_logging();
            let config = match cli::load_config(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let rt = match runtime(2) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let result = rt.block_on(async {
                let shutdown = CancellationToken::new();
                let signals = match watch_signals(shutdown.clone()) {
                    Ok(handle) => handle,
                    Err(e) => return Err(e),
                };
                let result = ker_agent::run(config, shutdown).await;
                signals.abort();
                result
            });
            // Do not wait for stray blocking work: instances are independent processes.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("ker-agent: error: {error:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
    }
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    // Before the runtime's threads exist. A refusal only costs memory.
    let _ = ker_agent::sys::limit_malloc_arenas(2);
    let _ = ker_agent::sys::fix_malloc_mmap_threshold(256 * 1024);
    // A refusal leaves the soft limit, which the preflight compares with the need.
    let _ = ker_agent::sys::raise_nofile_soft_limit();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("ker-agent: error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILURE)
        })
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "Stopping the agent.");
        shutdown.cancel();
    }))
}
