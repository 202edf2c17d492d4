//! `dmuc-master --config FILE`: reads the configuration, sets up logging
//! and runs the service until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use dmuc_master::Config;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// BSD sysexits: the command was used incorrectly (bad arguments or configuration).
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let path = match parse_args() {
        Ok(path) => path,
        Err(message) => {
            eprintln!("{message}\nusage: dmuc-master --config FILE");
            return ExitCode::from(EX_USAGE);
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmuc-master: {}: {e}", path.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dmuc-master: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signal(shutdown.clone()));
        dmuc_master::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dmuc-master failed");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--config"), Some(path), None) => Ok(PathBuf::from(path)),
        _ => Err("dmuc-master: expected --config FILE".into()),
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}
