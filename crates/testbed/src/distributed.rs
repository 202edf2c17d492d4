//! The whole system on loopback: `a.test` with `dmuc-master` as
//! `conference.a.test`, and other domains each with a `dmuc-peerhost` as
//! `muc-peer.<domain>`, found by the master through service discovery over
//! real s2s and reached over real gRPC.
//!
//! ```text
//!  a.test ── conference.a.test (dmuc-master) ══gRPC══▶ muc-peer.b.test (dmuc-peerhost) ── b.test
//!     ╲                                        ══gRPC══▶ muc-peer.c.test (dmuc-peerhost) ── c.test
//!      ╲──────────────── s2s (joins, messages from remote users, disco) ──────────────────╱
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::pki::{IssuedCert, TestCa};
use crate::process::{MasterConfig, MasterProcess};
use crate::prosody::{DomainOptions, ExternalComponent, Testbed, TestbedOptions};
use crate::relay::{Relay, Traffic};
use crate::scenarios::{DMUC_SERVICE, MasterSetup, start_dmuc_testbed};

/// The component secret of every peerhost.
pub const PEERHOST_SECRET: &str = "dmuc-peerhost-secret";
/// The gRPC port of each peerhost, on its domain's loopback address.
pub const PEERING_PORT: u16 = 7400;
/// How long a peerhost may take to connect its component.
const PEERHOST_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `dmuc-peerhost` binary built next to `master_binary` (the tests of
/// one package only know their own package's binaries; `cargo test
/// --workspace` builds every binary before it runs any test).
pub fn peerhost_binary(master_binary: &str) -> Result<PathBuf> {
    let path = Path::new(master_binary).with_file_name("dmuc-peerhost");
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Check(format!(
            "{} is not built: run `cargo build -p dmuc-peerhost` first \
             (`cargo test --workspace` does)",
            path.display()
        )))
    }
}

/// The peerhost JID of `domain`.
pub fn peerhost_jid(domain: &str) -> String {
    format!("muc-peer.{domain}")
}

/// How the peerhosts run.
#[derive(Debug, Clone)]
pub struct PeerhostSetup {
    /// Their tracing filter.
    pub log_filter: String,
    /// Raw TOML appended to each configuration.
    pub extra_toml: String,
    /// More lines of each `[peering]` section.
    pub peering_toml: String,
    /// The peerhosts dial the master (`[[peering.uplink]]` to the master's
    /// `[peering] listen`) and advertise no endpoint of their own.
    pub dial_in: bool,
    /// Their servers hand their users' stanzas for the master's service to
    /// them (`mod_dmuc_intercept`, `[[shadow]]`); implies `dial_in`.
    pub intercept: bool,
}

impl Default for PeerhostSetup {
    fn default() -> Self {
        Self {
            log_filter: crate::process::test_log_filter("DMUC_TESTBED_PEERHOST_LOG"),
            extra_toml: String::new(),
            peering_toml: String::new(),
            dial_in: false,
            intercept: false,
        }
    }
}

/// The `[peering]` lines naming `cert`'s files.
pub fn tls_toml(cert: &IssuedCert) -> String {
    let path = |p: &Path| format!("{:?}", p.to_string_lossy());
    format!(
        "tls_cert = {}\ntls_key = {}\ntls_ca = {}\n",
        path(&cert.cert),
        path(&cert.key),
        path(&cert.ca)
    )
}

/// A running system: the servers, the master, and one peerhost per peer
/// domain (in the order given). Processes stop before the servers.
#[derive(Debug)]
pub struct Distributed {
    pub peerhosts: Vec<Peerhost>,
    pub master: MasterProcess,
    pub testbed: Testbed,
    /// The test PKI: one CA, a certificate for the master and one for each
    /// peerhost; the peering link is mutual TLS.
    pub ca: TestCa,
    pub pki: tempfile::TempDir,
}

/// One domain's peerhost process.
#[derive(Debug)]
pub struct Peerhost {
    pub domain: String,
    pub process: MasterProcess,
    /// The counting relay in front of its gRPC port, if the testbed counts.
    pub relay: Option<Relay>,
    /// The counting relay on its way to the master's `[peering] listen`, if
    /// it dials in and the testbed counts (cut it to split the domain off).
    pub uplink_relay: Option<Relay>,
    /// The counting relays it dials other peerhosts through when they are
    /// its parents in a room's tree (`[peering] routes`), by their domain,
    /// if the testbed counts.
    pub links: Vec<(String, Relay)>,
}

/// What crossed between domains, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crossing {
    pub s2s: Traffic,
    pub grpc: Traffic,
}

impl Crossing {
    pub fn since(&self, earlier: &Crossing) -> Crossing {
        Crossing {
            s2s: self.s2s.since(&earlier.s2s),
            grpc: self.grpc.since(&earlier.grpc),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.s2s.bytes() + self.grpc.bytes()
    }
}

impl Distributed {
    /// The peerhost of `domain`.
    pub fn peerhost(&mut self, domain: &str) -> Result<&mut MasterProcess> {
        self.peerhosts
            .iter_mut()
            .find(|p| p.domain == domain)
            .map(|p| &mut p.process)
            .ok_or_else(|| Error::UnknownDomain(domain.into()))
    }

    /// Everything that crossed between domains so far: s2s into every
    /// server, gRPC into every peerhost (the testbed must count).
    pub fn crossing(&self) -> Result<Crossing> {
        let mut total = Crossing::default();
        for domain in self.testbed.domains() {
            total.s2s = total.s2s + self.testbed.s2s_traffic(domain)?;
        }
        for peerhost in &self.peerhosts {
            let relay = peerhost
                .relay
                .as_ref()
                .ok_or_else(|| Error::Check("gRPC is not counted".into()))?;
            total.grpc = total.grpc + relay.traffic();
            if let Some(uplink) = &peerhost.uplink_relay {
                total.grpc = total.grpc + uplink.traffic();
            }
            for (_, link) in &peerhost.links {
                total.grpc = total.grpc + link.traffic();
            }
        }
        Ok(total)
    }

    /// The counting relay `child`'s peerhost dials `parent`'s through (the
    /// testbed must count).
    pub fn link(&self, child: &str, parent: &str) -> Result<&Relay> {
        self.peerhosts
            .iter()
            .find(|p| p.domain == child)
            .and_then(|p| p.links.iter().find(|(d, _)| d == parent))
            .map(|(_, relay)| relay)
            .ok_or_else(|| Error::Check(format!("no counted link from {child} to {parent}")))
    }

    /// The gRPC the master sent to each peerhost it dialled so far, by
    /// domain (bytes towards the peerhost; the testbed must count).
    pub fn master_sent(&self) -> Result<Vec<(String, u64)>> {
        self.peerhosts
            .iter()
            .map(|p| {
                let relay = p
                    .relay
                    .as_ref()
                    .ok_or_else(|| Error::Check("gRPC is not counted".into()))?;
                Ok((p.domain.clone(), relay.traffic().bytes_in))
            })
            .collect()
    }

    /// Waits until `domain`'s peerhost answers disco#info (after a start or
    /// a restart).
    pub async fn wait_for_peerhost(&self, domain: &str) -> Result<()> {
        wait_for_peerhost(&self.testbed, domain).await
    }
}

/// Starts the servers of `options` (which must include `a.test` and every
/// domain of `peer_domains`), the master on `a.test` as `master` says, and
/// a peerhost for each of `peer_domains`; returns once every peerhost
/// answers on its domain.
pub async fn start_distributed(
    master_binary: impl Into<PathBuf>,
    peerhost_binary: impl AsRef<Path>,
    mut options: TestbedOptions,
    master: &MasterSetup,
    peer_domains: &[&str],
    peers: &PeerhostSetup,
) -> Result<Distributed> {
    for domain in peer_domains {
        let d = options
            .domain_mut(domain)
            .ok_or_else(|| Error::UnknownDomain((*domain).into()))?;
        d.components.push(ExternalComponent {
            jid: peerhost_jid(domain),
            secret: PEERHOST_SECRET.into(),
            validate_from_addresses: false,
        });
        if peers.intercept {
            d.intercept
                .push((DMUC_SERVICE.into(), peerhost_jid(domain)));
        }
        // As deployed: slaves multicast through their server (XEP-0033).
        d.multicast_senders.push(peerhost_jid(domain));
    }
    let counted = options.counted;
    let pki = tempfile::Builder::new()
        .prefix("dmuc-pki-")
        .tempdir()
        .map_err(Error::io("creating the PKI directory"))?;
    let ca = TestCa::new()?;
    let master_cert = ca.issue(pki.path(), "master", &[DMUC_SERVICE])?;
    // Where peerhosts that dial in reach the master.
    let uplink = if peers.dial_in || peers.intercept {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::io("choosing the master's peering port"))?
            .port();
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    } else {
        None
    };
    let listen_line = uplink.map_or(String::new(), |a| format!("listen = \"{a}\"\n"));
    let master = MasterSetup {
        peering_toml: format!(
            "{}{listen_line}{}",
            tls_toml(&master_cert),
            master.peering_toml
        ),
        ..master.clone()
    };
    let (testbed, master) = start_dmuc_testbed(master_binary, options, &master).await?;
    let mut peerhosts = Vec::new();
    for domain in peer_domains {
        let ip = testbed.ip(domain)?;
        let listen = SocketAddr::new(ip.into(), PEERING_PORT);
        // Masters reach it through the relay when the testbed counts.
        let (endpoint, relay) = if counted {
            let front = SocketAddr::new(testbed.relay_ip(domain)?.into(), PEERING_PORT);
            (front, Some(Relay::start(front, listen).await?))
        } else {
            (listen, None)
        };
        // It dials the master through a relay of its own when the testbed counts.
        let (uplink, uplink_relay) = match uplink {
            Some(master) if counted => {
                let front = SocketAddr::new(testbed.relay_ip(domain)?.into(), PEERING_PORT + 1);
                (Some(front), Some(Relay::start(front, master).await?))
            }
            other => (other, None),
        };
        // Its links to the other peerhosts, each through its own relay
        // (its address, a port per parent) when the testbed counts.
        let mut links = Vec::new();
        let mut routes = String::new();
        if counted {
            for (j, parent) in peer_domains.iter().enumerate() {
                if parent == domain {
                    continue;
                }
                let front = SocketAddr::new(
                    testbed.relay_ip(domain)?.into(),
                    PEERING_PORT + 10 + j as u16,
                );
                let target = SocketAddr::new(testbed.ip(parent)?.into(), PEERING_PORT);
                links.push(((*parent).to_owned(), Relay::start(front, target).await?));
                let _ = write!(routes, "{:?} = \"https://{front}\", ", peerhost_jid(parent));
            }
        }
        let routes = format!("routes = {{ {} }}\n", routes.trim_end_matches(", "));
        let cert = ca.issue(pki.path(), &peerhost_jid(domain), &[&peerhost_jid(domain)])?;
        let config = MasterConfig {
            component_jid: peerhost_jid(domain),
            server: testbed.component_addr(domain)?,
            secret: PEERHOST_SECRET.into(),
            storage_path: testbed
                .dir()
                .join(format!("{}.sqlite", peerhost_jid(domain))),
            log_filter: peers.log_filter.clone(),
            extra_toml: format!(
                "[peering]\nlisten = \"{listen}\"\n{}{}{routes}{}\n{}\n\n{}",
                match uplink {
                    Some(_) => String::new(),
                    None => format!("endpoint = \"https://{endpoint}\"\n"),
                },
                tls_toml(&cert),
                peers.peering_toml,
                uplink.map_or(String::new(), |a| if peers.intercept {
                    format!("[[shadow]]\nservice = \"{DMUC_SERVICE}\"\nmaster = \"https://{a}\"\n")
                } else {
                    format!("[[peering.uplink]]\nmaster = \"{DMUC_SERVICE}\"\nendpoint = \"https://{a}\"\n")
                }),
                peers.extra_toml
            ),
        };
        let process = MasterProcess::spawn(peerhost_binary.as_ref(), &config, testbed.dir())?;
        peerhosts.push(Peerhost {
            domain: (*domain).into(),
            process,
            relay,
            uplink_relay,
            links,
        });
    }
    for peerhost in &peerhosts {
        if let Err(e) = wait_for_peerhost(&testbed, &peerhost.domain).await {
            // What the peerhost itself said is what explains it.
            return Err(match e {
                Error::Timeout {
                    what,
                    timeout,
                    received,
                } => Error::Timeout {
                    what,
                    timeout,
                    received: format!(
                        "{received}\n--- {} log:\n{}",
                        peerhost_jid(&peerhost.domain),
                        crate::process::tail(&peerhost.process.log(), 30)
                    ),
                },
                e => e,
            });
        }
    }
    Ok(Distributed {
        peerhosts,
        master,
        testbed,
        ca,
        pki,
    })
}

/// The usual system of an end-to-end test: `a.test` with the master
/// (`master_binary`), a peerhost (the binary built next to it) on each of
/// `peer_domains`, every s2s and gRPC link counted.
pub async fn start_counted(
    master_binary: &str,
    master: &MasterSetup,
    peer_domains: &[&str],
    peers: &PeerhostSetup,
) -> Result<Distributed> {
    start(master_binary, master, peer_domains, peers, true).await
}

/// As [`start_counted`], with the links counted (each through a relay
/// that can also cut, stall or delay it) only if `counted`: else the
/// master dials the peerhosts, and they each other, directly.
pub async fn start(
    master_binary: &str,
    master: &MasterSetup,
    peer_domains: &[&str],
    peers: &PeerhostSetup,
    counted: bool,
) -> Result<Distributed> {
    let options = peer_domains.iter().fold(
        TestbedOptions::new().with_domain(DomainOptions::new("a.test")),
        |options, domain| options.with_domain(DomainOptions::new(*domain)),
    );
    start_distributed(
        master_binary,
        peerhost_binary(master_binary)?,
        if counted { options.counted() } else { options },
        master,
        peer_domains,
        peers,
    )
    .await
}

async fn wait_for_peerhost(testbed: &Testbed, domain: &str) -> Result<()> {
    let mut probe = testbed.client(domain, "probe").await?;
    probe
        .wait_for_service(&peerhost_jid(domain), PEERHOST_START_TIMEOUT)
        .await
}
