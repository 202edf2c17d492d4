//! A fresh deployment of one system under test: a Prosody per domain and,
//! for dmuc, the master as `conference.a.test` on `a.test`, with or without
//! a `dmuc-peerhost` on every other domain.
//!
//! Every run gets its own testbed: Prosody slows down with each join/leave
//! cycle it serves (PERF.md), so sharing one would favour the first system.
//!
//! When cross-domain traffic is counted, the testbed's counting relays
//! (s2s into every server, gRPC into every peerhost) are tasks of this
//! process. They run on their own runtime, [`Relays`], on a thread of their
//! own: off the load generator's thread, and with a CPU time of their own
//! (`/proc/self/task/TID/stat`), reported apart from the servers'.

use std::net::SocketAddr;
use std::path::Path;

use dmuc_testbed::distributed::{self, Crossing, Peerhost, PeerhostSetup};
use dmuc_testbed::relay::Traffic;
use dmuc_testbed::scenarios::{DMUC_SERVICE, MasterSetup, start_dmuc_testbed};
use dmuc_testbed::{DomainOptions, InternalMuc, MasterProcess, Testbed, TestbedOptions};

use crate::error::{Error, Result};
use crate::options::{Options, System};
use crate::procfs;

/// Prosody's MUC when it is the system under test.
const PROSODY_SERVICE: &str = "muc.a.test";
/// Log levels low enough that logging costs nothing measurable.
const PROSODY_LOG: &str = "warn";
/// The master's, with the outcome of peerhost discovery (a line per domain).
const MASTER_LOG: &str = "warn,dmuc_master::service=info";
const PEERHOST_LOG: &str = "warn";
/// The name of the relays' threads (at most 15 bytes: `/proc` cuts it).
pub const RELAY_THREAD: &str = "bench-relays";

/// A server process whose CPU and memory count.
#[derive(Debug, Clone)]
pub struct ServerProcess {
    /// `prosody a.test`, `dmuc-master`, `peerhost b.test`...
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// The runtime the testbeds start on, so that their counting relays run
/// on a thread of their own; shut down in the background when dropped
/// (dropping a runtime inside another one would panic).
#[derive(Debug)]
pub struct Relays(Option<tokio::runtime::Runtime>);

impl Relays {
    /// One worker thread named [`RELAY_THREAD`].
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(RELAY_THREAD)
            .enable_all()
            .build()
            .map_err(Error::io("starting the relays' runtime"))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Running servers of one system under test, stopped on drop.
#[derive(Debug)]
pub struct Deployment {
    // Dropped before the testbed (they are clients of its servers), the
    // master first: it ends its streams, so the peerhosts have none to
    // drain when their turn comes.
    master: Option<MasterProcess>,
    peerhosts: Vec<Peerhost>,
    testbed: Testbed,
    counted: bool,
    /// Which system this is.
    pub system: System,
    /// Its name in reports: `prosody`, `dmuc` or `dmuc+peers`.
    pub label: &'static str,
    /// What runs where, in one line.
    pub layout: String,
    /// The MUC service's JID.
    pub service: String,
    /// The domains, the service's first.
    pub domains: Vec<String>,
    /// The processes that serve the load.
    pub processes: Vec<ServerProcess>,
}

/// What [`start_servers`] hands back from the relays' runtime.
type Servers = (Testbed, Option<MasterProcess>, Vec<Peerhost>);

impl Deployment {
    /// Starts `system` as `options` ask (on `relays`' runtime, where the
    /// testbed's relays then run), and waits until it serves.
    pub async fn start(system: System, options: &Options, relays: &Relays) -> Result<Self> {
        let (testbed, master, peerhosts) = relays
            .handle()
            .spawn(start_servers(system, options.clone()))
            .await
            .expect("starting the servers does not panic")?;
        let domains = options.domains.clone();
        let mut processes = Vec::new();
        for domain in &domains {
            // The testbed's layout: <dir>/<domain>/prosody.cfg.lua.
            let config = testbed.dir().join(domain).join("prosody.cfg.lua");
            let name = format!("prosody {domain}");
            processes.push(ServerProcess {
                pid: server_pid(&config, &name)?,
                name,
            });
        }
        if let Some(master) = &master {
            processes.push(ServerProcess {
                name: "dmuc-master".into(),
                pid: server_pid(master.config_path(), "dmuc-master")?,
            });
        }
        for peerhost in &peerhosts {
            let name = format!("peerhost {}", peerhost.domain);
            processes.push(ServerProcess {
                pid: server_pid(peerhost.process.config_path(), &name)?,
                name,
            });
        }
        let (label, service, layout) = match system {
            System::Prosody => (
                "prosody",
                PROSODY_SERVICE,
                format!("Prosody mod_muc ({PROSODY_SERVICE}) on {}", domains[0]),
            ),
            System::Dmuc if peerhosts.is_empty() => (
                "dmuc",
                DMUC_SERVICE,
                format!(
                    "dmuc-master ({DMUC_SERVICE}) on {}, no peerhosts",
                    domains[0]
                ),
            ),
            System::Dmuc => (
                "dmuc+peers",
                DMUC_SERVICE,
                format!(
                    "dmuc-master ({DMUC_SERVICE}) on {}, dmuc-peerhost on {}",
                    domains[0],
                    domains[1..].join(", ")
                ),
            ),
        };
        Ok(Self {
            master,
            peerhosts,
            testbed,
            counted: options.count_crossing,
            system,
            label,
            layout,
            service: service.to_owned(),
            domains,
            processes,
        })
    }

    /// Client-to-server address of `domain`.
    pub fn c2s_addr(&self, domain: &str) -> Result<SocketAddr> {
        Ok(self.testbed.c2s_addr(domain)?)
    }

    /// Everything that crossed between domains so far (s2s into every
    /// server, gRPC into every peerhost), if the testbed counts.
    pub fn crossing(&self) -> Result<Option<Crossing>> {
        if !self.counted {
            return Ok(None);
        }
        let mut s2s = Traffic::default();
        for domain in &self.domains {
            s2s = s2s + self.testbed.s2s_traffic(domain)?;
        }
        let grpc = self
            .peerhosts
            .iter()
            .filter_map(|p| p.relay.as_ref())
            .fold(Traffic::default(), |sum, relay| sum + relay.traffic());
        Ok(Some(Crossing { s2s, grpc }))
    }

    /// gRPC traffic into each peerhost so far, by its domain (empty without
    /// peerhosts or counting).
    pub fn grpc_by_domain(&self) -> Vec<(String, Traffic)> {
        self.peerhosts
            .iter()
            .filter_map(|p| Some((p.domain.clone(), p.relay.as_ref()?.traffic())))
            .collect()
    }

    /// `Some(status)` if the master or a peerhost exited on its own
    /// (crashed) meanwhile, with its name.
    pub fn crashed(&mut self) -> Option<(String, std::process::ExitStatus)> {
        if let Some(status) = self.master.as_mut().and_then(|m| m.try_exit_status()) {
            return Some(("dmuc-master".into(), status));
        }
        self.peerhosts.iter_mut().find_map(|p| {
            let status = p.process.try_exit_status()?;
            Some((format!("dmuc-peerhost of {}", p.domain), status))
        })
    }

    /// The testbed directory (configurations and logs).
    pub fn dir(&self) -> &Path {
        self.testbed.dir()
    }
}

/// Starts the servers of `system`: a Prosody per domain (with `muc.a.test`
/// for Prosody), and for dmuc the master on a.test, with a peerhost on
/// each other domain if `options` ask.
async fn start_servers(system: System, options: Options) -> Result<Servers> {
    let mut testbed_options = TestbedOptions::new();
    for domain in &options.domains {
        testbed_options = testbed_options.with_domain(DomainOptions::new(domain));
    }
    testbed_options.log_level = PROSODY_LOG.into();
    testbed_options.counted = options.count_crossing;
    let first = options.domains[0].clone();
    match system {
        System::Prosody => {
            let a = testbed_options
                .domain_mut(&first)
                .expect("the first domain is there");
            a.mucs.push(InternalMuc {
                jid: PROSODY_SERVICE.into(),
                extra_lua: vec![format!("muc_log_by_default = {}", options.prosody_archive)],
            });
            Ok((Testbed::start(testbed_options).await?, None, Vec::new()))
        }
        System::Dmuc => {
            let binary = options.master.as_deref().expect("options checked --master");
            let master = MasterSetup {
                log_filter: MASTER_LOG.into(),
                extra_toml: master_limits(options.occupants),
                // As deployed: one stanza per room event, fanned out by the server.
                multicast: true,
                ..MasterSetup::default()
            };
            let Some(peerhost) = options.peerhost.as_deref() else {
                let (testbed, master) =
                    start_dmuc_testbed(binary, testbed_options, &master).await?;
                return Ok((testbed, Some(master), Vec::new()));
            };
            let peers = PeerhostSetup {
                log_filter: PEERHOST_LOG.into(),
                ..PeerhostSetup::default()
            };
            let peer_domains: Vec<&str> = options.domains[1..].iter().map(String::as_str).collect();
            let system = distributed::start_distributed(
                binary,
                peerhost,
                testbed_options,
                &master,
                &peer_domains,
                &peers,
            )
            .await?;
            // The processes read their certificates at start: the test PKI
            // (system.pki) can go with the rest of `system`.
            Ok((system.testbed, Some(system.master), system.peerhosts))
        }
    }
}

/// The master's `[limits]`: rooms that admit `occupants`, no flood control.
fn master_limits(occupants: usize) -> String {
    let max = occupants.max(1000);
    format!("[limits]\nmax_occupants = {max}\ndefault_max_occupants = {max}\nrate_per_second = 0\n")
}

fn server_pid(config: &Path, name: &str) -> Result<u32> {
    procfs::find_pid_by_arg(config).ok_or_else(|| Error::NoProcess(name.to_owned()))
}
