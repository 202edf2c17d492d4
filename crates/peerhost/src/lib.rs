//! The dmuc peerhost: runs next to one XMPP domain's server (e.g. `b.test`)
//! as an external component, and holds *slaves* of remote dmuc rooms. A
//! master replicates a room here over gRPC; each room event then crosses to
//! this domain once, and the slave fans it out to the domain's own users,
//! speaking as the room (`from='room@conference.a.test/nick'`).
//!
//! # Layout
//! - [`config`]: the TOML configuration (`dmuc-peerhost --config FILE`);
//!   `[component]` and `[log]` are shared with the master
//!   (`dmuc_component::settings`).
//! - [`stream`]: the `dmuc.peering.v1.Peering` gRPC service; one task per
//!   `Replicate` stream: handshake, resume of the master's stored slaves,
//!   then frames routed to slaves.
//! - [`slave`]: one task per slave, owning the room's
//!   `dmuc_room::replica::Replica`, delivering its stanzas through the
//!   component link and keeping its state in the store.
//! - [`store`]: SQLite (`[storage] path`): each slave's last snapshot and
//!   the events applied since, written by one group-commit task; schema in
//!   `crates/peerhost/migrations/`.
//! - [`uplink`]: masters the peerhost dials itself (`[[peering.uplink]]`),
//!   served like streams they opened.
//! - [`relay`]: spanning trees: this peerhost's slaves relaying the
//!   master's (signed) events to other peerhosts' slaves, following a
//!   parent peerhost when the master assigns one, and measuring the links
//!   to the other peerhosts of the trees (pings, reported to the masters).
//! - [`shadow`]: interception (`[[shadow]]`): routes this domain's users'
//!   stanzas for a remote service up its master's stream, or, while the
//!   stream is down, to the room's split slave.
//! - [`disco`]: what the peerhost answers at its own JID: disco#info with
//!   the dmuc feature, its endpoint and served domain, and pings.
//!
//! ```text
//!  master ══gRPC══▶ stream task ─RoomEvent─▶ slave task ─▶ Replica::apply
//!         ◀═══════  Ack / Resync ◀────────────┘   │   │ stanzas for b.test users only
//!                     ▲ stored slaves, loaded     │   ▼
//!                     │ at the master's Hello     │  component link (muc-peer.b.test) ─▶ b.test's server ─▶ bob, carol…
//!                     │                           │ snapshots, event log
//!                  store (SQLite) ◀─ writer task ◀┘
//! ```
//!
//! A slave's state outlives its stream: when the master's next stream
//! starts (after a reconnect, or a restart of the peerhost), the peerhost
//! lists each stored room of that master in `Welcome.resumable`, and the
//! master answers with `Resume` and the missing events, or a new
//! `CreateSlave`, or `DestroySlave`.
//!
//! # Interception and split mode
//! With `[[shadow]]` and `deploy/prosody/mod_dmuc_intercept.lua` on its
//! server, the domain's users' stanzas for a remote service arrive here
//! instead of going over s2s; they go up the master's stream as `Forward`
//! frames, and the peerhost dials that master itself ([`uplink`]).
//!
//! When that stream ends (the link is cut, or the master died), the
//! master's slaves *split*: each goes on serving the local users of its
//! room alone, under the room's split policy (`dmuc_room::split`), and
//! stores what they do (the split's log) before they see it. A peerhost
//! restarted meanwhile restores its splits from the store. When the
//! master's next stream starts, each split ends ("whole again"), and its
//! log goes to the master as `Submit`s of merge inputs, before anything
//! else the domain's users send; the master merges them into the room and
//! confirms with `SplitMerged`, and only then is the split's log deleted
//! (a split submitted but not confirmed is submitted again; the master
//! ignores what it already merged).
//!
//! ```text
//!  stream ends ─▶ slaves split ─▶ local stanza ─▶ Split::handle ─▶ split log (SQLite) ─▶ local users
//!  next stream ─▶ Split::end ─▶ "whole again" ─▶ Submit(merge 0..n) ─▶ master ─▶ SplitMerged ─▶ log deleted
//! ```
//!
//! # Trust
//! With `[peering] tls_cert` the listener requires mutual TLS: a master's
//! certificate must chain to `tls_ca` (or the system's roots) and be valid
//! for the `master_jid` of its `Hello`; `[peering] masters` narrows who is
//! served. Without TLS (plaintext, trusted networks only) the claimed JID
//! is all there is to check.
//!
//! # Limits
//! - Slaves deliver one stanza per recipient (no XEP-0033 multicast through
//!   the local server, which the master uses).
//! - Acks mean "handed to the component link", not "flushed to the server"
//!   (nor stored: the store may lag a little behind them). A crash between
//!   a delivery and its ack makes the master deliver that event again.

pub mod config;
pub mod disco;
pub mod relay;
pub mod shadow;
pub mod slave;
pub mod store;
pub mod stream;
pub mod uplink;

use std::sync::Arc;
use std::time::Duration;

use dmuc_component::metrics::{Gauge, LinkMetrics, Metrics};
use dmuc_component::settings::SettingsError;
use dmuc_component::{Inbound, LinkHandle};
use dmuc_protocol::pb::peering_server::PeeringServer;
use dmuc_protocol::pb::tree_relay_server::TreeRelayServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

use dmuc_stanza::outbound;
use jid::BareJid;
use minidom::Element;

use crate::disco::Advertised;
use crate::store::Store;

pub use config::Config;
pub use stream::{MasterPolicy, PeeringService};

/// Largest frame accepted from a master. A `CreateSlave` carries the room's
/// whole history with payloads: 100 messages of up to 64 KiB, with room to
/// spare. tonic's default (4 MiB) would refuse big rooms.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// How long open streams get to end after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often `dmuc_slaves` is read from the store.
const SLAVES_SAMPLE: Duration = Duration::from_secs(5);

/// Errors of the peerhost.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Link(#[from] dmuc_component::Error),
    #[error("peering server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The database cannot be opened (no such directory, permissions, ...).
    #[error("storage.path {}: cannot open: {source}", path.display())]
    StorageOpen {
        path: std::path::PathBuf,
        source: Arc<sqlx::Error>,
    },
    /// SQLite or the driver failed (I/O, disk full, ...).
    #[error("storage: {0}")]
    Storage(#[source] Arc<sqlx::Error>),
    /// The schema could not be brought up to date.
    #[error("storage schema migration: {0}")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
    /// A stored value cannot be read back (or a value cannot be stored).
    #[error("invalid stored data: {0}")]
    StoredData(String),
    /// The store has shut down; nothing more is written.
    #[error("storage is shut down")]
    StorageClosed,
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Storage(Arc::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate(Arc::new(e))
    }
}

impl From<SettingsError> for Error {
    fn from(e: SettingsError) -> Self {
        Error::Config(e.to_string())
    }
}

/// Runs the peerhost until `shutdown` is cancelled: opens the store,
/// connects to the server as a component and serves masters on `listener`.
/// On shutdown, streams end (their slaves deliver what they were given and
/// save their state, within a grace period), the store writes what is
/// queued and closes, then the component link flushes and closes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let domain = config.domain()?;
    let metrics = Metrics::new();
    let metrics_endpoint = config.metrics.serve(&metrics, &shutdown).await?;
    let mut link_config = config.component.to_link_config()?;
    link_config.metrics = LinkMetrics::register(&metrics);
    let peer_jid = link_config.jid.clone();
    let listen = listener.local_addr().ok();
    info!(%peer_jid, %domain, ?listen, storage = %config.storage.path.display(), "starting");

    let store = Store::open(&config.storage.path).await?;
    let stored = store.rooms().await?;
    let masters: std::collections::BTreeSet<_> = stored.iter().map(|r| &r.master).collect();
    info!(
        rooms = stored.len(),
        masters = masters.len(),
        "stored slaves, resumed when their masters connect"
    );

    // Counted from the store, so that the stream and slave tasks need not
    // know about metrics; only worth the queries when someone scrapes.
    let slaves_sampler = metrics_endpoint.is_some().then(|| {
        let slaves = metrics.gauge(
            "dmuc_slaves",
            "Slaves stored on this peerhost (running, or waiting for their master)",
        );
        tokio::spawn(sample_slaves(store.clone(), slaves, shutdown.clone()))
    });

    let link_shutdown = CancellationToken::new();
    let link = dmuc_component::spawn(link_config, link_shutdown.clone())?;
    let advertised = Advertised {
        peer_jid: peer_jid.clone(),
        domain: domain.clone(),
        endpoint: config.peering.endpoint.clone(),
    };
    let (link_inbound, link_handle) = (link.inbound, link.handle.clone());

    let tls = match config.peering.tls()? {
        Some(files) => Some(
            files
                .load()
                .map_err(|e| Error::Config(format!("peering: {e}")))?,
        ),
        None => {
            warn!("no [peering] tls_cert: plaintext gRPC, keep it on a trusted network");
            None
        }
    };
    let policy = MasterPolicy {
        tls: tls.is_some(),
        allowed: config.peering.masters()?,
    };
    let service = PeeringService::new(
        peer_jid.clone(),
        domain,
        link.handle,
        store.clone(),
        policy,
        shutdown.clone(),
    );
    let shadowed = config.shadowed()?;
    let (multicast, multicast_rx) = watch::channel(None);
    let service = service.with_multicast(multicast_rx).with_intercepts(
        shadowed.iter().map(|t| t.master.clone()).collect(),
        &metrics,
    );
    let tls = tls.map(Arc::new);
    let hub = relay::Hub::new(peer_jid, tls.clone(), config.peering.routes.clone())
        .with_metrics(&metrics);
    let service = service.with_relay(hub.clone());
    tokio::spawn(hub.clone().probe_links(shutdown.clone()));
    let streams = service.streams();
    let mut uplinks = config.peering.uplinks()?;
    for target in &shadowed {
        if !uplinks.iter().any(|u| u.master == target.master) {
            uplinks.push(target.clone());
        }
    }
    let keepalive = Duration::from_secs(config.peering.keepalive_secs);
    for target in uplinks {
        uplink::spawn(
            service.clone(),
            target,
            tls.clone(),
            keepalive,
            shutdown.clone(),
        );
    }
    let inbound = tokio::spawn(answer_inbound(
        link_inbound,
        link_handle,
        advertised,
        service.clone(),
        shadowed.into_iter().map(|t| t.master).collect(),
        multicast,
    ));
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive));
    if let Some(tls) = &tls {
        builder = builder.tls_config(dmuc_protocol::tls::server_config(tls))?;
    }
    let server = builder
        .add_service(PeeringServer::new(service).max_decoding_message_size(MAX_FRAME_BYTES))
        .add_service(TreeRelayServer::new(hub))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        served = server => served,
        () = grace => {
            warn!("streams still open after the grace period: closing");
            Ok(())
        }
    };
    streams.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, streams.wait())
        .await
        .is_err()
    {
        warn!("slaves still busy after the grace period");
    }
    if let Some(sampler) = slaves_sampler {
        let _ = sampler.await;
    }
    // What the slaves saved is queued: write it before going.
    store.close().await;
    // Every slave has handed over its stanzas; now the link may flush.
    link_shutdown.cancel();
    let _ = link.task.await;
    let _ = inbound.await;
    if let Some(endpoint) = metrics_endpoint {
        let _ = endpoint.await;
    }
    info!("stopped");
    served.map_err(Error::from)
}

/// Keeps `slaves` (`dmuc_slaves`) at the number of stored slaves until `shutdown`.
async fn sample_slaves(store: Store, slaves: Gauge, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SLAVES_SAMPLE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        match store.count_slaves().await {
            Ok(n) => slaves.set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => debug!(error = %e, "cannot count the stored slaves"),
        }
    }
}

/// The intercepted service `el` is addressed to, if any.
fn shadowed_service<'a>(el: &Element, shadowed: &'a [BareJid]) -> Option<&'a BareJid> {
    let to = el.attr("to")?.parse::<jid::Jid>().ok()?;
    shadowed.iter().find(|s| s.domain() == to.domain())
}

/// Stanzas addressed to the peerhost itself: service discovery and pings
/// (see [`disco`]).
async fn answer_inbound(
    mut inbound: mpsc::Receiver<Inbound>,
    link: LinkHandle,
    advertised: Advertised,
    service: PeeringService,
    shadowed: Vec<BareJid>,
    multicast: watch::Sender<Option<BareJid>>,
) {
    while let Some(event) = inbound.recv().await {
        match event {
            Inbound::Connected { stream_id, .. } => {
                info!(%stream_id, "component connected");
                // Does our server fan out XEP-0033 multicasts for us?
                let probe = outbound::multicast_probe(&advertised.peer_jid, &advertised.domain);
                if link.send(probe).await.is_err() {
                    break;
                }
            }
            Inbound::Disconnected { reason, retry_in } => {
                warn!(error = %reason, ?retry_in, "component disconnected");
                // The server may come back without the module.
                multicast.send_replace(None);
            }
            Inbound::Stanza(el) if outbound::multicast_offered(&el).is_some() => {
                let via = outbound::multicast_offered(&el)
                    .unwrap_or(false)
                    .then(|| advertised.domain.clone());
                info!(via = ?via.as_ref().map(|j| j.to_string()), "XEP-0033 multicast");
                multicast.send_replace(via);
            }
            Inbound::Stanza(el) => {
                if let Some(master) = shadowed_service(&el, &shadowed) {
                    // A local user's stanza to a remote service, handed to
                    // us by our server (see `shadow`).
                    service.intercepted(master, el).await;
                    continue;
                }
                debug!(
                    name = el.name(),
                    from = el.attr("from"),
                    "stanza to the peerhost"
                );
                if let Some(reply) = disco::answer(&el, &advertised)
                    && link.send(reply).await.is_err()
                {
                    break;
                }
            }
            Inbound::Invalid(bad) => debug!(?bad, "invalid stanza to the peerhost"),
        }
    }
}
