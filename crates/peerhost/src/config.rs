//! `dmuc-peerhost --config FILE`: the TOML configuration.
//!
//! ```toml
//! [component]
//! jid = "muc-peer.b.test"        # served domain = its parent (b.test)
//! server = "127.0.0.1:5347"      # b.test's component port
//! secret = "..."                 # or set DMUC_COMPONENT_SECRET
//!
//! [peering]
//! listen = "0.0.0.0:7443"        # gRPC; plaintext without tls_cert
//! endpoint = "https://peer.b.test:7443"  # advertised in disco#info (optional)
//! tls_cert = "/etc/dmuc/peerhost.crt"    # mutual TLS: this peerhost's certificate,
//! tls_key = "/etc/dmuc/peerhost.key"     #   valid for its JID, and the roots masters'
//! tls_ca = "/etc/dmuc/masters-ca.crt"    #   certificates chain to (default: system)
//! masters = ["conference.a.test"]        # masters served (default: any)
//! keepalive_secs = 10            # HTTP/2 pings; a dead stream is noticed within twice this
//!
//! [[peering.uplink]]             # a master this peerhost dials itself
//! master = "conference.a.test"
//! endpoint = "https://master.a.test:7444"   # the master's [peering] listen
//!
//! [storage]
//! path = "/var/lib/dmuc-peerhost/peerhost.sqlite"   # the slaves' state (SQLite)
//!
//! [[shadow]]                     # intercept this domain's traffic to a remote service
//! service = "conference.a.test"  # (see deploy/prosody/mod_dmuc_intercept.lua)
//! master = "https://master.a.test:7444"   # its master's [peering] listen, dialled
//!
//! [log]
//! filter = "info"                # RUST_LOG overrides it
//!
//! [metrics]                      # optional; without it, no endpoint
//! listen = "127.0.0.1:9465"      # Prometheus: GET /metrics
//! ```
//!
//! The component must be declared on the domain's server with
//! `validate_from_addresses = false` (Prosody) or `check_from: false`
//! (ejabberd): the peerhost speaks as the remote rooms to local users.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dmuc_component::settings::{
    ComponentSection, LogSection, MetricsSection, SECRET_ENV, SettingsError, domain_jid,
    endpoint_url,
};
use jid::BareJid;
use serde::Deserialize;

use dmuc_protocol::tls::TlsFiles;

use crate::Error;
use crate::uplink::UplinkTarget;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub component: ComponentSection,
    pub peering: PeeringSection,
    pub storage: StorageSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Remote MUC services whose traffic from this domain's users the
    /// peerhost intercepts (`[[shadow]]`).
    #[serde(default)]
    pub shadow: Vec<ShadowSection>,
}

/// `[[shadow]]`: a remote MUC service this domain's server hands its
/// users' stanzas for to the peerhost (deploy/prosody/mod_dmuc_intercept.lua),
/// and whose master the peerhost dials.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    /// The service's JID (its master's), e.g. `conference.a.test`.
    pub service: String,
    /// The master's `[peering] listen`, as a URL.
    pub master: String,
}

/// `[peering]`: where masters reach this peerhost.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringSection {
    /// The gRPC listen address, `ip:port`.
    pub listen: SocketAddr,
    /// The URL masters use to reach `listen` (e.g. `http://peer.b.test:7443`),
    /// advertised in disco#info; without it masters need it in their own
    /// configuration.
    pub endpoint: Option<String>,
    /// This peerhost's certificate (valid for its JID), its key, and the
    /// roots masters' certificates must chain to (default: the system's).
    /// Without them the listener speaks plaintext gRPC.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    /// The masters (MUC service JIDs) served; empty: any (with TLS, any
    /// with a valid certificate).
    #[serde(default)]
    pub masters: Vec<String>,
    /// Masters this peerhost dials itself (`[[peering.uplink]]`).
    #[serde(default)]
    pub uplink: Vec<UplinkSection>,
    /// HTTP/2 pings on every stream this often; a dead stream (its master
    /// gone, or the link silently cut) is noticed within twice this.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// Where to dial other peerhosts when they are this one's parent in a
    /// room's tree, by their JID, instead of the endpoint the master gives
    /// (e.g. `{ "muc-peer.b.test" = "https://10.0.0.2:7443" }`).
    #[serde(default)]
    pub routes: std::collections::HashMap<String, String>,
}

fn default_keepalive_secs() -> u64 {
    10
}

/// `[[peering.uplink]]`: a master to dial.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// The master's MUC service JID, e.g. `conference.a.test`.
    pub master: String,
    /// Its `[peering] listen`, as a URL, e.g. `https://master.a.test:7444`.
    pub endpoint: String,
}

impl PeeringSection {
    /// The TLS files, if TLS is configured.
    pub fn tls(&self) -> Result<Option<TlsFiles>, Error> {
        TlsFiles::from_keys(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
        )
        .map_err(Error::Config)
    }

    /// The masters to dial, checked.
    pub fn uplinks(&self) -> Result<Vec<UplinkTarget>, Error> {
        self.uplink
            .iter()
            .enumerate()
            .map(|(i, u)| {
                uplink_target(
                    &u.master,
                    &u.endpoint,
                    &format!("peering.uplink[{i}].master"),
                    &format!("peering.uplink[{i}].endpoint"),
                )
            })
            .collect()
    }

    /// The allow-list of masters, checked.
    pub fn masters(&self) -> Result<Vec<BareJid>, Error> {
        self.masters
            .iter()
            .enumerate()
            .map(|(i, m)| domain_jid(m, &format!("peering.masters[{i}]")).map_err(Error::Config))
            .collect()
    }
}

/// A master to dial: its JID and URL, checked; errors name the keys.
fn uplink_target(
    master: &str,
    endpoint: &str,
    master_key: &str,
    endpoint_key: &str,
) -> Result<UplinkTarget, Error> {
    Ok(UplinkTarget {
        master: domain_jid(master, master_key).map_err(Error::Config)?,
        endpoint: endpoint_url(endpoint, endpoint_key).map_err(Error::Config)?,
    })
}

/// `[storage]`: where the slaves' state is kept, so that they resume after
/// a restart (see [`crate::store`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// The SQLite database file, created if missing (its directory must exist).
    pub path: PathBuf,
}

impl Config {
    /// Reads and checks a configuration file; the secret may come from the
    /// environment instead of the file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text, std::env::var(SECRET_ENV).ok())
    }

    /// Parses configuration text; errors name the offending key.
    pub fn parse(text: &str, env_secret: Option<String>) -> Result<Config, Error> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string().trim().to_owned()))?;
        config.component = config.component.with_env_secret(env_secret);
        config.domain()?;
        config.log.check()?;
        if let Some(url) = &config.peering.endpoint {
            endpoint_url(url, "peering.endpoint").map_err(Error::Config)?;
        }
        config.peering.tls()?;
        if config.peering.keepalive_secs == 0 {
            return Err(SettingsError::new("peering.keepalive_secs", "must be positive").into());
        }
        config.peering.masters()?;
        config.peering.uplinks()?;
        config.shadowed()?;
        if config.storage.path.as_os_str().is_empty() {
            return Err(SettingsError::new("storage.path", "must not be empty").into());
        }
        Ok(config)
    }

    /// The intercepted services, checked, with the uplinks they need.
    pub fn shadowed(&self) -> Result<Vec<UplinkTarget>, Error> {
        self.shadow
            .iter()
            .enumerate()
            .map(|(i, s)| {
                uplink_target(
                    &s.service,
                    &s.master,
                    &format!("shadow[{i}].service"),
                    &format!("shadow[{i}].master"),
                )
            })
            .collect()
    }

    /// The domain whose users this peerhost serves: the component's parent
    /// (`b.test` for `muc-peer.b.test`).
    pub fn domain(&self) -> Result<BareJid, SettingsError> {
        self.component
            .to_link_config()?
            .parent_domain()
            .ok_or_else(|| {
                SettingsError::new(
                    "component.jid",
                    "must be a subdomain of the served domain, e.g. muc-peer.example.org",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [component]
        jid = "muc-peer.b.test"
        server = "127.0.0.1:5347"
        secret = "s"
        [peering]
        listen = "127.0.0.1:7443"
        [storage]
        path = "/tmp/peerhost.sqlite"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, None).unwrap();
        assert_eq!(c.log.filter, "info");
        assert_eq!(c.domain().unwrap().to_string(), "b.test");
        assert_eq!(c.peering.listen.port(), 7443);
        assert_eq!(c.storage.path, Path::new("/tmp/peerhost.sqlite"));
        assert_eq!(c.metrics.listen, None);
        let with = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9465\"\n");
        let c = Config::parse(&with, None).unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9465".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| Config::parse(text, None).unwrap_err().to_string();
        assert!(err(&MINIMAL.replace("muc-peer.b.test", "test")).contains("component.jid"));
        assert!(err(&MINIMAL.replace("secret = \"s\"", "")).contains("component.secret"));
        assert!(err(&MINIMAL.replace("127.0.0.1:7443", "nowhere")).contains("listen"));
        assert!(err(&MINIMAL.replace("[peering]\n", "")).contains("listen"));
        let storage = "[storage]\n        path = \"/tmp/peerhost.sqlite\"\n";
        assert!(err(&MINIMAL.replace(storage, "")).contains("storage"));
        assert!(err(&MINIMAL.replace("path = \"/tmp/peerhost.sqlite\"", "")).contains("path"));
        assert!(err(&MINIMAL.replace("/tmp/peerhost.sqlite", "")).contains("storage.path"));
        assert!(err(&MINIMAL.replace("[storage]", "[storage]\nsize = 1")).contains("size"));
        assert!(err(&format!("{MINIMAL}\n[log]\nfilter = \"info,[\"\n")).contains("log.filter"));
        let peering =
            |lines: &str| MINIMAL.replace("[peering]\n", &format!("[peering]\n{lines}\n"));
        assert!(err(&peering("masters = [\"a@b\"]")).contains("peering.masters[0]"));
        assert!(err(&peering("tls_key = \"/k\"")).contains("peering.tls_cert"));
        let shadow = "[[shadow]]\nservice = \"conference.a.test\"\nmaster = \"nowhere\"\n";
        assert!(err(&format!("{MINIMAL}\n{shadow}")).contains("shadow[0].master"));
        let good = shadow.replace("nowhere", "https://127.0.0.1:7444");
        let config = Config::parse(&format!("{MINIMAL}\n{good}"), None).unwrap();
        assert_eq!(
            config.shadowed().unwrap()[0].master.as_str(),
            "conference.a.test"
        );
    }

    #[test]
    fn the_deployed_example_is_valid() {
        let c = Config::parse(include_str!("../../../deploy/peerhost.example.toml"), None).unwrap();
        assert_eq!(c.component.jid, "muc-peer.example.org");
        assert!(c.metrics.listen.is_some_and(|a| a.ip().is_loopback()));
    }

    #[test]
    fn environment_supplies_the_secret() {
        let c = Config::parse(&MINIMAL.replace("secret = \"s\"", ""), Some("env".into())).unwrap();
        assert_eq!(c.component.secret, "env");
    }
}
