//! What every dmuc binary (each one an external component of its server)
//! reads and does the same way: the `[component]`, `[log]` and `[metrics]`
//! sections of its TOML configuration, the `EX_USAGE` exit code, tracing
//! set-up and the SIGINT/SIGTERM shutdown signal.
//!
//! ```toml
//! [component]
//! jid = "conference.a.test"      # this component's domain
//! server = "127.0.0.1:5347"      # the XMPP server's component port
//! secret = "..."                 # or set DMUC_COMPONENT_SECRET
//!
//! [log]
//! filter = "info"                # RUST_LOG overrides it
//!
//! [metrics]                      # optional; without it, no endpoint
//! listen = "127.0.0.1:9464"      # Prometheus: GET /metrics
//! ```
//!
//! A binary embeds [`ComponentSection`], [`LogSection`] and
//! [`MetricsSection`] in its own
//! `Config`, applies [`ComponentSection::with_env_secret`] after parsing and
//! calls their `check()`; errors are [`SettingsError`]s naming the key.

use std::io::IsTerminal;
use std::net::SocketAddr;

use jid::BareJid;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::LinkConfig;
use crate::metrics::{self, Metrics};

/// Environment variable that overrides `[component] secret`.
pub const SECRET_ENV: &str = "DMUC_COMPONENT_SECRET";

/// BSD sysexits: the command was used incorrectly (bad arguments or
/// configuration).
pub const EX_USAGE: u8 = 64;

/// A configuration value that cannot work, named by its key
/// (`component.jid`, `log.filter`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingsError {
    pub key: &'static str,
    pub reason: String,
}

impl SettingsError {
    pub fn new(key: &'static str, reason: impl Into<String>) -> Self {
        SettingsError {
            key,
            reason: reason.into(),
        }
    }
}

/// A domain (a JID without node or resource, e.g. `b.test`) given at
/// configuration key `key`; the error names the key.
pub fn domain_jid(value: &str, key: &str) -> Result<BareJid, String> {
    value
        .parse::<BareJid>()
        .ok()
        .filter(|j| j.node().is_none())
        .ok_or_else(|| format!("{key}: must be a domain"))
}

/// An `http://` or `https://` URL given at configuration key `key`.
pub fn endpoint_url(value: &str, key: &str) -> Result<String, String> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value.to_owned())
    } else {
        Err(format!("{key}: must be an http:// or https:// URL"))
    }
}

/// `[component]`: how to reach the XMPP server as an external component.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSection {
    /// The component's domain, e.g. `conference.a.test` or `muc-peer.b.test`.
    pub jid: String,
    /// `host:port` of the XMPP server's component listener.
    pub server: String,
    /// The shared secret; [`SECRET_ENV`] overrides it.
    #[serde(default)]
    pub secret: String,
}

impl ComponentSection {
    /// The secret from the environment (if set and not empty) replaces the
    /// file's.
    pub fn with_env_secret(mut self, env_secret: Option<String>) -> Self {
        if let Some(secret) = env_secret.filter(|s| !s.is_empty()) {
            self.secret = secret;
        }
        self
    }

    /// Checks every key; returns the component's domain.
    pub fn check(&self) -> Result<BareJid, SettingsError> {
        let domain = match self.jid.parse::<BareJid>() {
            Ok(j) if j.node().is_none() => j,
            _ => {
                return Err(SettingsError::new(
                    "component.jid",
                    "must be a domain, e.g. conference.example.org",
                ));
            }
        };
        if !self.server.contains(':') {
            return Err(SettingsError::new("component.server", "must be host:port"));
        }
        if self.secret.is_empty() {
            return Err(SettingsError::new(
                "component.secret",
                format!("missing (set it in the file or in {SECRET_ENV})"),
            ));
        }
        Ok(domain)
    }

    /// The link to [`crate::spawn`], with default keepalive, backoff and
    /// queue sizes.
    pub fn to_link_config(&self) -> Result<LinkConfig, SettingsError> {
        let domain = self.check()?;
        Ok(LinkConfig::new(
            domain,
            self.server.clone(),
            self.secret.clone(),
        ))
    }
}

/// `[log]`: the tracing filter (`RUST_LOG` overrides it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    #[serde(default = "default_filter")]
    pub filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            filter: default_filter(),
        }
    }
}

fn default_filter() -> String {
    "info".into()
}

impl LogSection {
    pub fn check(&self) -> Result<(), SettingsError> {
        tracing_subscriber::EnvFilter::try_new(&self.filter)
            .map(drop)
            .map_err(|_| SettingsError::new("log.filter", "is not a valid tracing filter"))
    }

    /// Installs the global subscriber: `RUST_LOG` if set, else this filter;
    /// colours only on a terminal.
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&self.filter));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    }
}

/// `[metrics]`: where to serve the Prometheus endpoint (see
/// [`crate::metrics`]); absent (or without `listen`): nowhere.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `ip:port` to listen on, e.g. `127.0.0.1:9464`.
    pub listen: Option<SocketAddr>,
}

impl MetricsSection {
    /// Binds `listen`, if set, and serves `metrics` there until `shutdown`;
    /// returns the serving task. A failed bind names the key.
    pub async fn serve(
        &self,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, SettingsError> {
        let Some(addr) = self.listen else {
            return Ok(None);
        };
        let (_, task) = metrics::spawn_endpoint(addr, metrics.clone(), shutdown.clone())
            .await
            .map_err(|e| {
                SettingsError::new("metrics.listen", format!("cannot listen on {addr}: {e}"))
            })?;
        Ok(Some(task))
    }
}

/// The `FILE` of `NAME --config FILE`, or the usage message to print
/// (then exit with [`EX_USAGE`]).
pub fn config_arg(
    name: &str,
    mut args: impl Iterator<Item = String>,
) -> Result<std::path::PathBuf, String> {
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--config"), Some(path), None) => Ok(path.into()),
        _ => Err(format!(
            "{name}: expected --config FILE\nusage: {name} --config FILE"
        )),
    }
}

/// The whole `main` of a dmuc binary: `NAME --config FILE`, the
/// configuration loaded by `load` (any error: a message and [`EX_USAGE`]),
/// tracing from its `[log]`, a runtime, and `run` until it returns; SIGINT
/// or SIGTERM cancel the token `run` gets. `run`'s error is logged and
/// exits with failure.
pub fn main<C, E, Fut>(
    name: &str,
    load: impl FnOnce(&std::path::Path) -> Result<C, E>,
    log: impl FnOnce(&C) -> &LogSection,
    run: impl FnOnce(C, CancellationToken) -> Fut,
) -> std::process::ExitCode
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<(), String>>,
{
    use std::process::ExitCode;
    let path = match config_arg(name, std::env::args().skip(1)) {
        Ok(path) => path,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let config = match load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {}: {e}", path.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    log(&config).init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "{name} failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: shutting down");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(jid: &str, server: &str, secret: &str) -> ComponentSection {
        ComponentSection {
            jid: jid.into(),
            server: server.into(),
            secret: secret.into(),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let key = |s: ComponentSection| s.check().unwrap_err().key;
        assert_eq!(key(section("a@b", "h:1", "s")), "component.jid");
        assert_eq!(key(section("b.test", "h", "s")), "component.server");
        assert_eq!(key(section("b.test", "h:1", "")), "component.secret");
        let log = LogSection {
            filter: "info,[".into(),
        };
        assert_eq!(log.check().unwrap_err().key, "log.filter");
    }

    #[test]
    fn environment_supplies_the_secret() {
        let s = section("muc-peer.b.test", "h:1", "").with_env_secret(Some("env".into()));
        assert_eq!(s.secret, "env");
        let s = section("muc-peer.b.test", "h:1", "file").with_env_secret(Some(String::new()));
        assert_eq!(s.secret, "file");
        let link = s.to_link_config().unwrap();
        assert_eq!(link.jid.to_string(), "muc-peer.b.test");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WithMetrics {
        #[serde(default)]
        metrics: MetricsSection,
    }

    #[test]
    fn metrics_section_is_optional() {
        let parse = |text: &str| toml::from_str::<WithMetrics>(text).map(|c| c.metrics.listen);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("[metrics]\n").unwrap(), None);
        assert_eq!(
            parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"[::1]:9464\"\n").unwrap(),
            Some("[::1]:9464".parse().unwrap())
        );
        assert!(parse("[metrics]\nlisten = \"localhost\"\n").is_err());
        assert!(parse("[metrics]\nport = 9464\n").is_err());
    }

    #[tokio::test]
    async fn metrics_bind_errors_name_the_key() {
        let shutdown = CancellationToken::new();
        let none = MetricsSection::default();
        assert!(
            none.serve(&Metrics::new(), &shutdown)
                .await
                .unwrap()
                .is_none()
        );
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let section = MetricsSection {
            listen: Some(taken.local_addr().unwrap()),
        };
        let err = section.serve(&Metrics::new(), &shutdown).await.unwrap_err();
        assert_eq!(err.key, "metrics.listen");
    }

    #[test]
    fn config_arg_wants_exactly_one_flag() {
        let args = |a: &[&str]| {
            a.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert_eq!(
            config_arg("x", args(&["--config", "f.toml"])).unwrap(),
            std::path::PathBuf::from("f.toml")
        );
        assert!(config_arg("x", args(&["--config"])).is_err());
        assert!(config_arg("x", args(&["f.toml"])).is_err());
    }
}
