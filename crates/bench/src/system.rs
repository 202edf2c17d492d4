//! A fresh deployment of one system under test: two Prosody domains and,
//! for dmuc, the master as `conference.a.test` on `a.test`.
//!
//! Every run gets its own testbed: Prosody slows down with each join/leave
//! cycle it serves (PERF.md), so sharing one would favour the first system.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dmuc_testbed::scenarios::{DMUC_SECRET, DMUC_SERVICE};
use dmuc_testbed::{
    DomainOptions, InternalMuc, MasterConfig, MasterProcess, Testbed, TestbedOptions,
};

use crate::error::{Error, Result};
use crate::options::{Options, System};
use crate::procfs;

/// The two domains; occupant `i` lives on `DOMAINS[i % 2]`.
pub const DOMAINS: [&str; 2] = ["a.test", "b.test"];
/// Prosody's MUC when it is the system under test.
const PROSODY_SERVICE: &str = "muc.a.test";
/// Log levels low enough that logging costs nothing measurable.
const PROSODY_LOG: &str = "warn";
const MASTER_LOG: &str = "warn";
/// How long the master may take to connect its component.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A server process whose CPU and memory count.
#[derive(Debug, Clone)]
pub struct ServerProcess {
    /// `prosody a.test`, `prosody b.test` or `dmuc-master`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// Running servers of one system under test, stopped on drop.
#[derive(Debug)]
pub struct Deployment {
    // Dropped before the testbed: the master is a client of its server.
    master: Option<MasterProcess>,
    testbed: Testbed,
    /// Which system this is.
    pub system: System,
    /// The MUC service's JID.
    pub service: String,
    /// The processes that serve the load.
    pub processes: Vec<ServerProcess>,
}

impl Deployment {
    /// Starts `system` as `options` ask, and waits until it serves.
    pub async fn start(system: System, options: &Options) -> Result<Self> {
        let mut a = DomainOptions::new(DOMAINS[0]);
        match system {
            System::Prosody => a.mucs.push(InternalMuc {
                jid: PROSODY_SERVICE.into(),
                extra_lua: vec![format!("muc_log_by_default = {}", options.prosody_archive)],
            }),
            System::Dmuc => {
                a = a.with_component(DMUC_SERVICE, DMUC_SECRET);
                // As deployed: one stanza per room event, fanned out by the server.
                a.multicast_senders.push(DMUC_SERVICE.into());
            }
        }
        let mut testbed_options = TestbedOptions::new()
            .with_domain(a)
            .with_domain(DomainOptions::new(DOMAINS[1]));
        testbed_options.log_level = PROSODY_LOG.into();
        let testbed = Testbed::start(testbed_options).await?;

        let mut processes = Vec::new();
        for domain in DOMAINS {
            // The testbed's layout: <dir>/<domain>/prosody.cfg.lua.
            let config = testbed.dir().join(domain).join("prosody.cfg.lua");
            processes.push(ServerProcess {
                name: format!("prosody {domain}"),
                pid: server_pid(&config, &format!("prosody {domain}"))?,
            });
        }
        let (master, service) = match system {
            System::Prosody => (None, PROSODY_SERVICE.to_owned()),
            System::Dmuc => {
                let binary = options.master.as_deref().expect("options checked --master");
                let master = start_master(&testbed, binary, options.occupants).await?;
                processes.push(ServerProcess {
                    name: "dmuc-master".into(),
                    pid: server_pid(master.config_path(), "dmuc-master")?,
                });
                (Some(master), DMUC_SERVICE.to_owned())
            }
        };
        Ok(Self {
            master,
            testbed,
            system,
            service,
            processes,
        })
    }

    /// Client-to-server address of `domain`.
    pub fn c2s_addr(&self, domain: &str) -> Result<SocketAddr> {
        Ok(self.testbed.c2s_addr(domain)?)
    }

    /// `Some(status)` if the master exited on its own (crashed) meanwhile.
    pub fn master_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.master.as_mut()?.try_exit_status()
    }

    /// The testbed directory (configurations and logs).
    pub fn dir(&self) -> &Path {
        self.testbed.dir()
    }
}

/// Spawns the master for `conference.a.test` with room limits that admit
/// `occupants` and no flood control, and waits until it answers.
async fn start_master(testbed: &Testbed, binary: &Path, occupants: usize) -> Result<MasterProcess> {
    let max = occupants.max(1000);
    let config = MasterConfig {
        component_jid: DMUC_SERVICE.into(),
        server: testbed.component_addr(DOMAINS[0])?,
        secret: DMUC_SECRET.into(),
        storage_path: testbed.dir().join("dmuc.sqlite"),
        log_filter: MASTER_LOG.into(),
        extra_toml: format!(
            "[limits]\nmax_occupants = {max}\ndefault_max_occupants = {max}\nrate_per_second = 0\n"
        ),
    };
    let master = MasterProcess::spawn(binary, &config, testbed.dir())?;
    let mut probe = testbed.client(DOMAINS[0], "bench-probe").await?;
    probe
        .wait_for_service(DMUC_SERVICE, SERVICE_START_TIMEOUT)
        .await?;
    Ok(master)
}

fn server_pid(config: &Path, name: &str) -> Result<u32> {
    procfs::find_pid_by_arg(config).ok_or_else(|| Error::NoProcess(name.to_owned()))
}
