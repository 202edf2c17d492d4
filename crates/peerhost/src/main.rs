//! `dmuc-peerhost --config FILE`: reads the configuration, sets up logging,
//! binds the peering listener and runs the peerhost until SIGINT or SIGTERM.

use std::process::ExitCode;

use dmuc_peerhost::Config;

fn main() -> ExitCode {
    dmuc_component::settings::main(
        "dmuc-peerhost",
        Config::load,
        |c| &c.log,
        async |config, shutdown| {
            let listen = config.peering.listen;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("peering.listen {listen}: cannot listen: {e}"))?;
            dmuc_peerhost::run(config, listener, shutdown)
                .await
                .map_err(|e| e.to_string())
        },
    )
}
