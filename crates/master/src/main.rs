//! `dmuc-master --config FILE`: reads the configuration, sets up logging
//! and runs the service until SIGINT or SIGTERM.

use std::process::ExitCode;

use dmuc_master::Config;

fn main() -> ExitCode {
    dmuc_component::settings::main(
        "dmuc-master",
        Config::load,
        |c| &c.log,
        async |config, shutdown| {
            dmuc_master::run(config, shutdown)
                .await
                .map_err(|e| e.to_string())
        },
    )
}
