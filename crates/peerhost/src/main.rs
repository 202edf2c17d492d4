//! `dmuc-peerhost --config FILE`: reads the configuration, sets up logging,
//! binds the peering listener and runs the peerhost until SIGINT or SIGTERM.

use std::process::ExitCode;

use dmuc_component::settings::{EX_USAGE, cancel_on_signal, config_arg};
use dmuc_peerhost::Config;
use tokio_util::sync::CancellationToken;

const NAME: &str = "dmuc-peerhost";

fn main() -> ExitCode {
    let path = match config_arg(NAME, std::env::args().skip(1)) {
        Ok(path) => path,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {}: {e}", path.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    config.log.init_tracing();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{NAME}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listen = config.peering.listen;
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, %listen, "peering.listen: cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match dmuc_peerhost::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "{NAME} failed");
                ExitCode::FAILURE
            }
        }
    })
}
