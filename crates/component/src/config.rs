//! Link configuration and the (pure) reconnect backoff schedule.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use jid::BareJid;

use crate::metrics::LinkMetrics;

/// How to reach and authenticate to the XMPP server, and how the link behaves.
///
/// [`LinkConfig::new`] fills in defaults suited to a component on the same
/// host or LAN as its server; every field is public to override them.
#[derive(Clone)]
pub struct LinkConfig {
    /// The component's JID, a bare domain such as `conference.a.test`.
    pub jid: BareJid,
    /// The server's component port as `host:port`; `host` is an IP literal or
    /// a name resolved with the system resolver.
    pub server: String,
    /// The shared secret (`component_secret` in Prosody). Never logged.
    pub secret: String,
    /// Dead-link detection while connected.
    pub keepalive: KeepaliveConfig,
    /// Delay between connection attempts.
    pub backoff: BackoffConfig,
    /// Timeout for one TCP connect attempt (per resolved address).
    pub connect_timeout: Duration,
    /// Timeout for stream header plus handshake once TCP is up.
    pub handshake_timeout: Duration,
    /// Outbound stanzas that can wait in the link (while connected, between
    /// batches; while disconnected, until the next connection). When full,
    /// [`LinkHandle::send`](crate::LinkHandle::send) waits: backpressure, never
    /// silent loss.
    pub outbound_capacity: usize,
    /// Inbound events not yet taken by the caller. When full, the link stops
    /// reading the socket until the caller catches up (TCP backpressure
    /// towards the server; the server buffers).
    pub inbound_capacity: usize,
    /// Most stanzas serialised before one flush of the socket.
    pub max_batch: usize,
    /// On shutdown, how long to keep writing queued stanzas before sending
    /// `</stream:stream>` anyway.
    pub shutdown_grace: Duration,
    /// Stanzas in and out, counted; by default in no registry.
    pub metrics: LinkMetrics,
}

impl LinkConfig {
    /// A configuration with defaults for everything but identity and address.
    pub fn new(jid: BareJid, server: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            jid,
            server: server.into(),
            secret: secret.into(),
            keepalive: KeepaliveConfig::default(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            outbound_capacity: 16 * 1024,
            inbound_capacity: 4 * 1024,
            max_batch: 512,
            shutdown_grace: Duration::from_secs(5),
            metrics: LinkMetrics::default(),
        }
    }

    /// The JID keepalive pings are addressed to: [`KeepaliveConfig::ping_to`]
    /// or, by default, the parent domain of the component (`a.test` for
    /// `conference.a.test`), which the server answers itself.
    pub(crate) fn ping_target(&self) -> BareJid {
        if let Some(to) = &self.keepalive.ping_to {
            return to.clone();
        }
        self.parent_domain().unwrap_or_else(|| self.jid.clone())
    }

    /// The domain the component is a subdomain of (`a.test` for
    /// `conference.a.test`): usually the server it is attached to, and the
    /// domain whose users it serves.
    pub fn parent_domain(&self) -> Option<BareJid> {
        let (_, parent) = self.jid.domain().as_str().split_once('.')?;
        BareJid::new(parent).ok()
    }

    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error::Config;
        if self.jid.node().is_some() {
            return Err(Config(format!(
                "component jid must be a bare domain, got {}",
                self.jid
            )));
        }
        if !self.server.contains(':') {
            return Err(Config(format!(
                "server must be host:port, got {:?}",
                self.server
            )));
        }
        if self.outbound_capacity == 0 || self.inbound_capacity == 0 || self.max_batch == 0 {
            return Err(Config(
                "outbound_capacity, inbound_capacity and max_batch must be positive".into(),
            ));
        }
        if self.keepalive.idle.is_zero() || self.keepalive.timeout.is_zero() {
            return Err(Config("keepalive idle and timeout must be positive".into()));
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return Err(Config("backoff needs 0 < initial <= max".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for LinkConfig {
    // Hand-written so that the secret never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("jid", &self.jid)
            .field("server", &self.server)
            .field("secret", &"<redacted>")
            .field("keepalive", &self.keepalive)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("outbound_capacity", &self.outbound_capacity)
            .field("inbound_capacity", &self.inbound_capacity)
            .field("max_batch", &self.max_batch)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// Dead-link detection.
///
/// After `idle` without a single byte from the server, the link sends a
/// XEP-0199 ping; if still nothing arrives within `timeout`, the link is
/// declared dead ([`Error::KeepaliveTimeout`](crate::Error::KeepaliveTimeout))
/// and reconnects. A half-dead TCP link is therefore noticed within
/// `idle + timeout`. Silence alone is never a disconnect.
#[derive(Debug, Clone)]
pub struct KeepaliveConfig {
    /// Silence before a ping is sent.
    pub idle: Duration,
    /// Silence after the ping before the link is declared dead.
    pub timeout: Duration,
    /// Where pings go; `None` means the parent domain of the component JID.
    pub ping_to: Option<BareJid>,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(20),
            timeout: Duration::from_secs(20),
            ping_to: None,
        }
    }
}

/// Reconnect delays: exponential, capped, jittered.
///
/// Attempt *n* (from 0) waits a random time in
/// `[d·(1−jitter), d]` with `d = min(initial·multiplier^n, max)`. The
/// schedule starts over once a connection has stayed up for at least `max`,
/// so a server that accepts and immediately drops us is not hammered.
#[derive(Debug, Clone)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Growth factor per failed attempt (≥ 1).
    pub multiplier: f64,
    /// Fraction of each delay that is randomised, 0.0..=1.0.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

/// Backoff state: which attempt we are at.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// The delay before the next attempt, given a uniform random `r` in [0, 1).
    pub(crate) fn next_with(&mut self, r: f64) -> Duration {
        let c = &self.config;
        let exp = c.multiplier.max(1.0).powi(self.attempt.min(64) as i32);
        let base = c.initial.as_secs_f64() * exp;
        let capped = base.min(c.max.as_secs_f64());
        let jitter = c.jitter.clamp(0.0, 1.0);
        let delay = capped * (1.0 - jitter * r.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_secs_f64(delay)
    }

    /// The delay before the next attempt, jittered with fresh randomness.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(random_unit())
    }

    /// A connection stayed up for `uptime`: start over if that was long
    /// enough to call the server healthy.
    pub fn connected_for(&mut self, uptime: Duration) {
        if uptime >= self.config.max {
            self.attempt = 0;
        }
    }
}

/// A uniform random number in [0, 1) for jitter. Seeded per call from std's
/// hash-DoS randomness: good enough to de-synchronise reconnect storms, and no
/// extra dependency.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(cfg());
        let delays: Vec<_> = (0..6).map(|_| b.next_with(0.0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn backoff_jitter_stays_in_range() {
        let mut b = Backoff::new(cfg());
        assert_eq!(b.next_with(0.999_999).as_millis(), 50);
        for _ in 0..10 {
            b.next_with(0.0);
        }
        let delays: Vec<_> = (0..100).map(|_| b.next_delay()).collect();
        for d in &delays {
            assert!(*d >= Duration::from_millis(500) && *d <= Duration::from_secs(1));
        }
        // Actually random: reconnect storms de-synchronise.
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn backoff_resets_only_after_stable_connection() {
        let mut b = Backoff::new(cfg());
        b.next_with(0.0);
        b.next_with(0.0);
        b.connected_for(Duration::from_millis(10));
        assert_eq!(b.next_with(0.0).as_millis(), 400);
        b.connected_for(Duration::from_secs(1));
        assert_eq!(b.next_with(0.0).as_millis(), 100);
    }

    #[test]
    fn ping_target_defaults_to_parent_domain() {
        let c = LinkConfig::new("conference.a.test".parse().unwrap(), "127.0.0.1:5347", "s");
        assert_eq!(c.ping_target().to_string(), "a.test");
        let c = LinkConfig::new("localhost".parse().unwrap(), "127.0.0.1:5347", "s");
        assert_eq!(c.ping_target().to_string(), "localhost");
    }

    #[test]
    fn debug_redacts_secret() {
        let c = LinkConfig::new("c.a.test".parse().unwrap(), "h:1", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn validate_rejects_node_and_missing_port() {
        let c = LinkConfig::new("u@a.test".parse().unwrap(), "h:1", "s");
        assert!(c.validate().is_err());
        let c = LinkConfig::new("a.test".parse().unwrap(), "h", "s");
        assert!(c.validate().is_err());
    }
}
