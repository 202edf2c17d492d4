//! `dmuc-master --config FILE`: reads the configuration, sets up logging
//! and runs the service until SIGINT or SIGTERM.

use std::process::ExitCode;

use dmuc_component::settings::{EX_USAGE, cancel_on_signal, config_arg};
use dmuc_master::Config;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let path = match config_arg("dmuc-master", std::env::args().skip(1)) {
        Ok(path) => path,
        Err(usage) => {
            eprintln!("{usage}");
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
    config.log.init_tracing();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dmuc-master: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
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
