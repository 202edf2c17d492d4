//! Real Prosody servers, one process per domain, each on its own loopback
//! address with the standard ports, joined by real s2s (dialback).

use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientOptions};
use crate::error::{Error, Result};
use crate::process::{ManagedProcess, read_log, spawn_process, tail};
use crate::relay::{Relay, Traffic};

/// Client-to-server port on every domain's address.
pub const C2S_PORT: u16 = 5222;
/// Server-to-server port on every domain's address.
pub const S2S_PORT: u16 = 5269;
/// XEP-0114 component port on every domain's address.
pub const COMPONENT_PORT: u16 = 5347;

/// How long a Prosody process may take to open its ports.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of the readiness probe.
const READY_POLL: Duration = Duration::from_millis(10);
/// How many random loopback blocks to try before giving up.
const BLOCK_ATTEMPTS: usize = 64;
/// Lines of log shown in start errors.
const LOG_TAIL: usize = 40;

/// An external (XEP-0114) component declared on a domain's server.
#[derive(Debug, Clone)]
pub struct ExternalComponent {
    /// Its JID, e.g. `conference.a.test`.
    pub jid: String,
    /// The shared secret.
    pub secret: String,
    /// `false` lets the component send from foreign domains
    /// (`validate_from_addresses = false`).
    pub validate_from_addresses: bool,
}

/// Prosody's own `mod_muc`, configured as a plain XEP-0045 reference.
#[derive(Debug, Clone)]
pub struct InternalMuc {
    /// Its JID, e.g. `muc.a.test`.
    pub jid: String,
    /// Extra Lua lines for the component section (overrides come last).
    pub extra_lua: Vec<String>,
}

/// One domain (VirtualHost) and what its server hosts.
#[derive(Debug, Clone)]
pub struct DomainOptions {
    /// The domain, e.g. `a.test`.
    pub name: String,
    /// External components on this server.
    pub components: Vec<ExternalComponent>,
    /// Internal MUC components on this server.
    pub mucs: Vec<InternalMuc>,
    /// Components allowed to multicast through `deploy/prosody/mod_dmuc_multicast.lua`
    /// (XEP-0033); the module is loaded when this is not empty.
    pub multicast_senders: Vec<String>,
    /// Remote services whose traffic from this domain's users goes to a
    /// local component instead (`deploy/prosody/mod_dmuc_intercept.lua`):
    /// `(service, component)`; the module is loaded when this is not empty.
    pub intercept: Vec<(String, String)>,
}

impl DomainOptions {
    /// A bare domain with no components.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            components: Vec::new(),
            mucs: Vec::new(),
            multicast_senders: Vec::new(),
            intercept: Vec::new(),
        }
    }

    /// Adds Prosody's `mod_muc` as `muc.<domain>`.
    pub fn with_prosody_muc(mut self) -> Self {
        self.mucs.push(InternalMuc {
            jid: format!("muc.{}", self.name),
            extra_lua: Vec::new(),
        });
        self
    }

    /// Adds an external component `jid` with `secret`, from-addresses
    /// validated (Prosody's default).
    pub fn with_component(mut self, jid: impl Into<String>, secret: impl Into<String>) -> Self {
        self.components.push(ExternalComponent {
            jid: jid.into(),
            secret: secret.into(),
            validate_from_addresses: true,
        });
        self
    }

    /// Adds an external component that may send from any domain.
    pub fn with_unvalidated_component(
        mut self,
        jid: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.components.push(ExternalComponent {
            jid: jid.into(),
            secret: secret.into(),
            validate_from_addresses: false,
        });
        self
    }

    /// Every JID this server answers for (domain and components), for the
    /// hosts file.
    fn served_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str())
            .chain(self.components.iter().map(|c| c.jid.as_str()))
            .chain(self.mucs.iter().map(|m| m.jid.as_str()))
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// The domains, one Prosody each.
    pub domains: Vec<DomainOptions>,
    /// Prosody's log level (`debug` unless `DMUC_TESTBED_PROSODY_LOG` says
    /// otherwise).
    pub log_level: String,
    /// Routes s2s through a counting relay in front of each server (see
    /// [`crate::relay`]): every domain name resolves to the relay.
    pub counted: bool,
}

impl Default for TestbedOptions {
    /// `a.test` and `b.test`, each with Prosody's MUC at `muc.<domain>`.
    fn default() -> Self {
        Self::new()
            .with_domain(DomainOptions::new("a.test").with_prosody_muc())
            .with_domain(DomainOptions::new("b.test").with_prosody_muc())
    }
}

impl TestbedOptions {
    /// No domains yet.
    pub fn new() -> Self {
        Self {
            domains: Vec::new(),
            log_level: std::env::var("DMUC_TESTBED_PROSODY_LOG").unwrap_or_else(|_| "debug".into()),
            counted: false,
        }
    }

    /// Adds a domain.
    pub fn with_domain(mut self, domain: DomainOptions) -> Self {
        self.domains.push(domain);
        self
    }

    /// With s2s counted (see [`Self::counted`]).
    pub fn counted(mut self) -> Self {
        self.counted = true;
        self
    }

    /// The options of `name`, to add components to a default domain.
    pub fn domain_mut(&mut self, name: &str) -> Option<&mut DomainOptions> {
        self.domains.iter_mut().find(|d| d.name == name)
    }
}

/// One running domain.
#[derive(Debug)]
struct Domain {
    options: DomainOptions,
    ip: Ipv4Addr,
    /// The counting relay in front of its s2s port, if the testbed counts.
    relay: Option<Relay>,
    config_path: PathBuf,
    log_path: PathBuf,
    process: Option<ManagedProcess>,
}

/// Running Prosody servers for a set of domains, in a temporary directory
/// that is removed (and servers stopped) on drop.
///
/// Set `DMUC_TESTBED_KEEP=1` to keep the directory (configs, logs, data)
/// after the test for inspection.
#[derive(Debug)]
pub struct Testbed {
    // Declared before `dir`: servers stop before their directory goes.
    domains: Vec<Domain>,
    dir: tempfile::TempDir,
}

impl Testbed {
    /// Writes configurations and starts one Prosody per domain, returning
    /// when every server listens on all its ports.
    #[tracing::instrument(skip_all)]
    pub async fn start(options: TestbedOptions) -> Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("dmuc-testbed-")
            .tempdir()
            .map_err(Error::io("creating the testbed directory"))?;
        if std::env::var_os("DMUC_TESTBED_KEEP").is_some() {
            dir.disable_cleanup(true);
        }
        let ips = allocate_block(options.domains.len())?;
        let hosts_path = dir.path().join("hosts");
        let mut hosts = String::new();
        let mut relays = Vec::new();
        for (domain, ip) in options.domains.iter().zip(&ips) {
            let names: Vec<&str> = domain.served_names().collect();
            let listed = if options.counted {
                let relay_ip = relay_ip(*ip);
                let relay = Relay::start(
                    SocketAddr::new(relay_ip.into(), S2S_PORT),
                    SocketAddr::new((*ip).into(), S2S_PORT),
                )
                .await?;
                relays.push(Some(relay));
                relay_ip
            } else {
                relays.push(None);
                *ip
            };
            let _ = writeln!(hosts, "{listed} {}", names.join(" "));
        }
        std::fs::write(&hosts_path, hosts).map_err(Error::io("writing the hosts file"))?;

        let mut domains = Vec::with_capacity(ips.len());
        for ((options_d, ip), relay) in options.domains.iter().cloned().zip(ips).zip(relays) {
            let root = dir.path().join(&options_d.name);
            let data = root.join("data");
            std::fs::create_dir_all(&data).map_err(Error::io("creating a data directory"))?;
            std::fs::create_dir_all(root.join("certs")).map_err(Error::io("creating certs"))?;
            let config_path = root.join("prosody.cfg.lua");
            let log_path = root.join("prosody.log");
            let config = render_config(&options_d, ip, &root, &hosts_path, &options.log_level);
            std::fs::write(&config_path, config).map_err(Error::io("writing a prosody config"))?;
            domains.push(Domain {
                options: options_d,
                ip,
                relay,
                config_path,
                log_path,
                process: None,
            });
        }
        let mut testbed = Self { domains, dir };
        for i in 0..testbed.domains.len() {
            testbed.domains[i].spawn()?;
        }
        for domain in &mut testbed.domains {
            domain.wait_ready().await?;
        }
        tracing::info!(dir = %testbed.dir.path().display(), "testbed up");
        Ok(testbed)
    }

    /// The testbed's temporary directory (put other processes' files here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The served domains, in start order.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(|d| d.options.name.as_str())
    }

    fn domain(&self, name: &str) -> Result<&Domain> {
        self.domains
            .iter()
            .find(|d| d.options.name == name || d.options.served_names().any(|n| n == name))
            .ok_or_else(|| Error::UnknownDomain(name.to_owned()))
    }

    /// The loopback address of the server of `domain` (or of a component
    /// it hosts).
    pub fn ip(&self, domain: &str) -> Result<Ipv4Addr> {
        Ok(self.domain(domain)?.ip)
    }

    /// What crossed into and out of `domain`'s s2s port, if the testbed
    /// counts (see [`TestbedOptions::counted`]).
    pub fn s2s_traffic(&self, domain: &str) -> Result<Traffic> {
        self.domain(domain)?
            .relay
            .as_ref()
            .map(Relay::traffic)
            .ok_or_else(|| Error::Check(format!("s2s of {domain} is not counted")))
    }

    /// The address in front of `domain` where relays listen, if the
    /// testbed counts: same block, last octet + 100.
    pub fn relay_ip(&self, domain: &str) -> Result<Ipv4Addr> {
        Ok(relay_ip(self.ip(domain)?))
    }

    /// Client-to-server address of `domain`.
    pub fn c2s_addr(&self, domain: &str) -> Result<SocketAddr> {
        Ok(SocketAddr::new(self.ip(domain)?.into(), C2S_PORT))
    }

    /// Component address of the server of `domain`, where an external
    /// component (e.g. `dmuc-master` as `conference.a.test`) connects.
    pub fn component_addr(&self, domain: &str) -> Result<SocketAddr> {
        Ok(SocketAddr::new(self.ip(domain)?.into(), COMPONENT_PORT))
    }

    /// The secret of the external component `jid`.
    pub fn component_secret(&self, jid: &str) -> Result<&str> {
        self.domains
            .iter()
            .flat_map(|d| &d.options.components)
            .find(|c| c.jid == jid)
            .map(|c| c.secret.as_str())
            .ok_or_else(|| Error::UnknownDomain(jid.to_owned()))
    }

    /// Everything the server of `domain` logged so far.
    pub fn log(&self, domain: &str) -> Result<String> {
        Ok(read_log(&self.domain(domain)?.log_path))
    }

    /// The last `lines` lines of every server's log and of every `*.log`
    /// in the testbed directory (e.g. a [`crate::MasterProcess`]'s), for
    /// failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut paths: Vec<PathBuf> = self.domains.iter().map(|d| d.log_path.clone()).collect();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            paths.extend(
                entries
                    .filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log")),
            );
        }
        let mut out = String::new();
        for path in paths {
            let _ = writeln!(
                out,
                "--- {} ---\n{}",
                path.display(),
                tail(&read_log(&path), lines)
            );
        }
        out
    }

    /// Stops the server of `domain` gracefully and starts it again with
    /// the same configuration and data; returns when it listens again.
    /// Clients of that domain are disconnected and must reconnect.
    pub async fn restart(&mut self, domain: &str) -> Result<()> {
        let idx = self
            .domains
            .iter()
            .position(|d| d.options.name == domain)
            .ok_or_else(|| Error::UnknownDomain(domain.to_owned()))?;
        let d = &mut self.domains[idx];
        if let Some(mut p) = d.process.take() {
            p.terminate();
        }
        d.spawn()?;
        d.wait_ready().await
    }

    /// Connects, authenticates and binds a client `user@domain` with a
    /// random resource and sends initial presence.
    pub async fn client(&self, domain: &str, user: &str) -> Result<Client> {
        self.client_with(domain, user, ClientOptions::default())
            .await
    }

    /// Like [`Self::client`] with explicit options.
    pub async fn client_with(
        &self,
        domain: &str,
        user: &str,
        options: ClientOptions,
    ) -> Result<Client> {
        let d = self.domain(domain)?;
        Client::connect(
            SocketAddr::new(d.ip.into(), C2S_PORT),
            &d.options.name,
            user,
            options,
        )
        .await
    }
}

impl Domain {
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path.with_extension("stdout"))
            .map_err(Error::io("opening prosody's console log"))?;
        let log2 = log.try_clone().map_err(Error::io("duplicating a handle"))?;
        let mut cmd = Command::new("prosody");
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("-F")
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        self.process = Some(spawn_process(
            format!("prosody {}", self.options.name),
            cmd,
        )?);
        Ok(())
    }

    /// Polls until every port accepts connections (a listener is the event
    /// Prosody gives; it opens them all once its config is loaded).
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut ports = vec![C2S_PORT, S2S_PORT];
        if !self.options.components.is_empty() {
            ports.push(COMPONENT_PORT);
        }
        for port in ports {
            let addr = SocketAddr::new(self.ip.into(), port);
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                let exited = self
                    .process
                    .as_mut()
                    .and_then(ManagedProcess::try_exit_status);
                let reason = match exited {
                    Some(status) => format!("exited with {status}"),
                    None if Instant::now() >= deadline => format!("{addr} not open in time"),
                    None => {
                        tokio::time::sleep(READY_POLL).await;
                        continue;
                    }
                };
                let log = format!(
                    "{}\n{}",
                    tail(&read_log(&self.log_path.with_extension("stdout")), LOG_TAIL),
                    tail(&read_log(&self.log_path), LOG_TAIL)
                );
                return Err(Error::ProsodyStart {
                    domain: self.options.name.clone(),
                    reason,
                    log,
                });
            }
        }
        tracing::debug!(domain = %self.options.name, ip = %self.ip, "prosody ready");
        Ok(())
    }
}

/// Picks a random `127.X.Y.0/24` block (X ≥ 1) whose first `n` addresses
/// have all three ports free, checked by binding them.
/// Where the relay in front of the server at `ip` listens.
fn relay_ip(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    Ipv4Addr::new(a, b, c, d + 100)
}

fn allocate_block(n: usize) -> Result<Vec<Ipv4Addr>> {
    let random = RandomState::new();
    for attempt in 0..BLOCK_ATTEMPTS {
        let r = random.hash_one(attempt);
        let x = 1 + (r % 254) as u8;
        let y = ((r >> 8) & 0xff) as u8;
        let ips: Vec<Ipv4Addr> = (0..n)
            .map(|i| Ipv4Addr::new(127, x, y, 1 + i as u8))
            .collect();
        let free = ips.iter().all(|ip| {
            [C2S_PORT, S2S_PORT, COMPONENT_PORT]
                .iter()
                .all(|port| TcpListener::bind((*ip, *port)).is_ok())
        });
        if free {
            return Ok(ips);
        }
    }
    Err(Error::NoAddressBlock(BLOCK_ATTEMPTS))
}

/// A Lua string literal.
fn lua_str(s: &str) -> String {
    format!("{s:?}")
}

/// Where the Prosody modules dmuc ships live.
const DMUC_PROSODY_MODULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prosody");

/// The Prosody configuration of one domain.
fn render_config(
    d: &DomainOptions,
    ip: Ipv4Addr,
    root: &Path,
    hosts: &Path,
    log_level: &str,
) -> String {
    let path = |p: PathBuf| lua_str(&p.to_string_lossy());
    let mut c = String::new();
    let _ = writeln!(
        c,
        r#"-- Generated by dmuc-testbed for {name}
run_as_root = true
pidfile = {pid}
data_path = {data}
certificates = {certs}
log = {{ {{ levels = {{ min = {level} }}, to = "file", filename = {log} }} }}
interfaces = {{ "{ip}" }}
c2s_ports = {{ {C2S_PORT} }}
s2s_ports = {{ {S2S_PORT} }}
component_ports = {{ {COMPONENT_PORT} }}
component_interfaces = {{ "{ip}" }}
http_ports = {{}}
https_ports = {{}}
c2s_direct_tls_ports = {{}}
s2s_direct_tls_ports = {{}}
network_settings = {{ nagle = false }}
unbound = {{ hoststxt = {hosts} }}
modules_enabled = {{ "saslauth", "dialback", "disco", "roster", "ping", "posix"{multicast}{intercept} }}
plugin_paths = {{ {plugins} }}
dmuc_multicast_senders = {{ {senders} }}
dmuc_intercept = {{ {intercepted} }}
modules_disabled = {{ "offline", "s2s_auth_certs" }}
authentication = "insecure"
insecure_open_authentication = "Yes please, I know what I'm doing!"
allow_unencrypted_plain_auth = true
c2s_require_encryption = false
s2s_require_encryption = false
s2s_secure_auth = false
storage = "internal"
statistics = "none"

VirtualHost "{name}"
"#,
        name = d.name,
        pid = path(root.join("prosody.pid")),
        data = path(root.join("data")),
        certs = path(root.join("certs")),
        level = lua_str(log_level),
        log = path(root.join("prosody.log")),
        hosts = path(hosts.to_path_buf()),
        multicast = if d.multicast_senders.is_empty() {
            ""
        } else {
            r#", "dmuc_multicast""#
        },
        intercept = if d.intercept.is_empty() {
            ""
        } else {
            r#", "dmuc_intercept""#
        },
        intercepted = d
            .intercept
            .iter()
            .map(|(service, component)| format!("[{}] = {}", lua_str(service), lua_str(component)))
            .collect::<Vec<_>>()
            .join(", "),
        plugins = lua_str(DMUC_PROSODY_MODULES),
        senders = d
            .multicast_senders
            .iter()
            .map(|s| lua_str(s))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for m in &d.mucs {
        let _ = writeln!(
            c,
            r#"Component "{jid}" "muc"
    modules_enabled = {{ "muc_mam" }}
    muc_room_locking = true
    muc_tombstones = false
    restrict_room_creation = false
    muc_log_by_default = true"#,
            jid = m.jid
        );
        for line in &m.extra_lua {
            let _ = writeln!(c, "    {line}");
        }
        c.push('\n');
    }
    for comp in &d.components {
        let _ = writeln!(
            c,
            "Component \"{}\"\n    component_secret = {}\n    validate_from_addresses = {}\n",
            comp.jid,
            lua_str(&comp.secret),
            comp.validate_from_addresses
        );
    }
    c
}
