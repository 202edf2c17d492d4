//! `dmuc-master --config FILE`: the TOML configuration.
//!
//! ```toml
//! [component]
//! jid = "conference.a.test"
//! server = "127.0.0.1:5347"      # the XMPP server's component port
//! secret = "..."                 # or set DMUC_COMPONENT_SECRET
//!
//! [storage]
//! path = "/var/lib/dmuc-master/master.sqlite"
//! durability = "normal"          # "full" | "normal"
//!
//! [log]
//! filter = "info"                # RUST_LOG overrides it
//!
//! [metrics]                      # optional; without it, no endpoint
//! listen = "127.0.0.1:9464"      # Prometheus: GET /metrics
//!
//! [limits]                       # every key optional
//! max_message_bytes = 16384
//! max_occupants = 1000           # upper bound of muc#roomconfig_maxusers
//! default_max_occupants = 200
//! max_history = 100              # upper bound of the history kept per room
//! default_history = 20
//! max_rooms_per_user = 50        # rooms one bare JID may create
//! rate_burst = 30                # per-occupant flood control
//! rate_per_second = 10
//!
//! [rooms]
//! lock_new_rooms = true          # XEP-0045 §10.1: configure before use
//! persistent_by_default = false
//!
//! [delivery]
//! multicast = "auto"             # XEP-0033 through the server if offered; "off"
//!
//! [peering]                      # every key optional
//! discovery = true               # find other domains' peerhosts by disco over s2s
//! found_ttl_secs = 3600          # how long a found peerhost is trusted before asking again
//! missing_ttl_secs = 300         # how long "no peerhost" is believed
//! discovery_timeout_ms = 5000    # a joiner waits at most this (twice) the first time
//! slave_grace_secs = 30          # a slave outlives its domain's last occupant
//! keepalive_secs = 10            # probe peer streams; a dead one is noticed within twice this
//! max_fanout = 0                 # children per node of rooms' spanning trees (the master
//!                                #   included); 0: no limit (a star, but a slave cut off
//!                                #   from the master still goes on through another)
//! tls_cert = "/etc/dmuc/master.crt"   # mutual TLS towards peerhosts: this
//! tls_key = "/etc/dmuc/master.key"    #   service's certificate (valid for its JID)
//! tls_ca = "/etc/dmuc/peers-ca.crt"   #   and the peerhosts' roots (default: system)
//! allow_plaintext = false        # also dial http:// endpoints (trusted networks only)
//! listen = "0.0.0.0:7444"        # where peerhosts that dial out reach the master
//!
//! [[peering.peer]]               # static peerhosts: no discovery for their domain
//! domain = "b.test"
//! jid = "muc-peer.b.test"
//! endpoint = "http://10.0.0.2:7443"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use dmuc_component::settings::{
    ComponentSection, LogSection, MetricsSection, SECRET_ENV, SettingsError, domain_jid,
    endpoint_url,
};

use dmuc_protocol::tls::TlsFiles;

use crate::Error;
use crate::peering::PeerTarget;
use crate::store::Durability;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub component: ComponentSection,
    pub storage: StorageSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub rooms: RoomsSection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub peering: PeeringSection,
}

/// `[peering]`: the peerhosts of other domains.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeeringSection {
    pub discovery: bool,
    pub found_ttl_secs: u64,
    pub missing_ttl_secs: u64,
    pub discovery_timeout_ms: u64,
    pub slave_grace_secs: u64,
    pub keepalive_secs: u64,
    /// Children per node of a room's spanning tree; 0: no limit (a star
    /// that still routes around a broken link).
    pub max_fanout: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub allow_plaintext: bool,
    /// Where peerhosts that dial out reach the master (`Uplink`), if anywhere.
    pub listen: Option<std::net::SocketAddr>,
    pub peer: Vec<StaticPeer>,
}

impl Default for PeeringSection {
    fn default() -> Self {
        PeeringSection {
            discovery: true,
            found_ttl_secs: 3600,
            missing_ttl_secs: 300,
            discovery_timeout_ms: 5000,
            slave_grace_secs: 30,
            keepalive_secs: 10,
            max_fanout: 0,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            allow_plaintext: false,
            listen: None,
            peer: Vec::new(),
        }
    }
}

/// `[[peering.peer]]`: a peerhost named by configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticPeer {
    pub domain: String,
    pub jid: String,
    /// Where to dial it; absent for a peerhost that dials in (`listen`).
    pub endpoint: Option<String>,
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

    /// The static peerhosts, checked.
    pub fn targets(&self) -> Result<Vec<PeerTarget>, Error> {
        self.peer
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = |field: &str| format!("peering.peer[{i}].{field}");
                Ok(PeerTarget {
                    domain: domain_jid(&p.domain, &key("domain")).map_err(Error::Config)?,
                    jid: domain_jid(&p.jid, &key("jid")).map_err(Error::Config)?,
                    endpoint: p
                        .endpoint
                        .as_deref()
                        .map(|url| endpoint_url(url, &key("endpoint")))
                        .transpose()
                        .map_err(Error::Config)?,
                })
            })
            .collect()
    }
}

/// `[delivery]`: how stanzas reach occupants.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Whether to send one stanza per room event through the server's
    /// XEP-0033 multicast (deploy/prosody/mod_dmuc_multicast.lua) when it
    /// offers it, instead of one stanza per recipient.
    pub multicast: Multicast,
}

/// `[delivery] multicast`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Multicast {
    /// Use it if the server's disco#info lists XEP-0033.
    #[default]
    Auto,
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub path: PathBuf,
    #[serde(default)]
    pub durability: Durability,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_occupants: u32,
    pub default_max_occupants: u32,
    pub max_history: u32,
    pub default_history: u32,
    pub max_rooms_per_user: usize,
    pub rate_burst: u32,
    /// 0 disables flood control.
    pub rate_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 * 1024,
            max_occupants: 1000,
            default_max_occupants: 200,
            max_history: 100,
            default_history: 20,
            max_rooms_per_user: 50,
            rate_burst: 30,
            rate_per_second: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsSection {
    pub lock_new_rooms: bool,
    pub persistent_by_default: bool,
}

impl Default for RoomsSection {
    fn default() -> Self {
        RoomsSection {
            lock_new_rooms: true,
            persistent_by_default: false,
        }
    }
}

impl From<SettingsError> for Error {
    fn from(e: SettingsError) -> Self {
        Error::Config(e.to_string())
    }
}

impl Config {
    /// Reads and checks a configuration file; the secret may come from the
    /// environment instead of the file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let env_secret = std::env::var(SECRET_ENV).ok();
        Config::parse(&text, env_secret)
    }

    /// Parses configuration text; errors name the offending key.
    pub fn parse(text: &str, env_secret: Option<String>) -> Result<Config, Error> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| Error::Config(e.to_string().trim().to_owned()))?;
        config.component = config.component.with_env_secret(env_secret);
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |key: &str, why: &str| Err(Error::Config(format!("{key}: {why}")));
        self.component.check()?;
        self.log.check()?;
        if self.storage.path.as_os_str().is_empty() {
            return bad("storage.path", "must not be empty");
        }
        let l = &self.limits;
        if l.max_occupants == 0 || l.default_max_occupants == 0 {
            return bad("limits.max_occupants", "must be at least 1");
        }
        if l.default_max_occupants > l.max_occupants {
            return bad(
                "limits.default_max_occupants",
                "exceeds limits.max_occupants",
            );
        }
        if l.default_history > l.max_history {
            return bad("limits.default_history", "exceeds limits.max_history");
        }
        if l.max_message_bytes < 512 {
            return bad("limits.max_message_bytes", "must be at least 512");
        }
        if self.peering.keepalive_secs == 0 {
            return bad("peering.keepalive_secs", "must be positive");
        }
        if self.peering.discovery_timeout_ms == 0 {
            return bad("peering.discovery_timeout_ms", "must be positive");
        }
        self.peering.targets()?;
        if self.peering.listen.is_some()
            && self.peering.tls_cert.is_none()
            && !self.peering.allow_plaintext
        {
            return bad(
                "peering.listen",
                "needs tls_cert and tls_key (or allow_plaintext, on trusted networks)",
            );
        }
        self.peering.tls()?;
        if l.rate_per_second > 0 && l.rate_burst == 0 {
            return bad(
                "limits.rate_burst",
                "must be at least 1 when rate_per_second is set",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [component]
        jid = "conference.a.test"
        server = "127.0.0.1:5347"
        secret = "s"
        [storage]
        path = "/tmp/x.sqlite"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, None).unwrap();
        assert_eq!(c.log.filter, "info");
        assert_eq!(c.limits.default_history, 20);
        assert!(c.rooms.lock_new_rooms);
        assert_eq!(c.storage.durability, Durability::Normal);
        assert_eq!(c.metrics.listen, None);
        let c = Config::parse(
            &format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        let err = Config::parse(&format!("{MINIMAL}\n[metrics]\nlisten = \"9464\"\n"), None);
        assert!(err.unwrap_err().to_string().contains("listen"));
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| Config::parse(text, None).unwrap_err().to_string();
        assert!(
            err(&MINIMAL.replace("jid = \"conference.a.test\"", "jid = \"a@b\""))
                .contains("component.jid")
        );
        assert!(err(&MINIMAL.replace("secret = \"s\"", "")).contains("component.secret"));
        assert!(
            err(&MINIMAL.replace("[storage]", "[storage]\ndurability = \"maybe\""))
                .contains("durability")
        );
        assert!(
            err(&format!("{MINIMAL}\n[limits]\nmax_history = 1\n"))
                .contains("limits.default_history")
        );
        assert!(err(&format!("{MINIMAL}\n[bogus]\n")).contains("bogus"));
        let peer = "[[peering.peer]]\ndomain = \"b.test\"\njid = \"muc-peer.b.test\"\n";
        assert!(
            err(&format!("{MINIMAL}\n{peer}endpoint = \"b.test:7000\"\n"))
                .contains("peering.peer[0].endpoint")
        );
        let good = format!("{MINIMAL}\n{peer}endpoint = \"http://127.0.0.1:7000\"\n");
        let targets = Config::parse(&good, None)
            .unwrap()
            .peering
            .targets()
            .unwrap();
        assert_eq!(targets[0].jid.as_str(), "muc-peer.b.test");
    }

    #[test]
    fn the_deployed_example_is_valid() {
        let c = Config::parse(include_str!("../../../deploy/master.example.toml"), None).unwrap();
        assert_eq!(c.component.jid, "conference.example.org");
        assert!(c.metrics.listen.is_some_and(|a| a.ip().is_loopback()));
    }

    #[test]
    fn environment_supplies_the_secret() {
        let c = Config::parse(&MINIMAL.replace("secret = \"s\"", ""), Some("env".into())).unwrap();
        assert_eq!(c.component.secret, "env");
    }
}
