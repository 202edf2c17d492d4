//! The dmuc master: a complete, persistent XEP-0045 service, run as an
//! external component (XEP-0114) of its domain's XMPP server, that
//! replicates its rooms to the peerhosts of other domains.
//!
//! # Layout
//! - [`config`]: the TOML configuration (`dmuc-master --config FILE`).
//! - [`store`]: SQLite storage with group commit.
//! - `dmuc_stanza` (its own crate, shared with the peerhost): the XML edge,
//!   stanza to room input and room output to stanza.
//! - [`service`]: routes stanzas to rooms, creates rooms, answers for the
//!   service domain, looks up joiners' domains' peerhosts.
//! - [`room_task`]: one task per room, driving the pure `dmuc_room::Room`
//!   and holding stanzas (and events for slaves) back until what they
//!   announce is durable.
//! - [`fanout`]: per room, which domains a slave serves, and what the
//!   master still owes a domain whose slave has not acknowledged (pure).
//! - [`tree`]: per room, the shape of the slaves' spanning tree: who
//!   relays events to whom, by fan-out and link health (pure).
//! - [`peering`]: discovery of peerhosts, and one task per peerhost keeping
//!   its gRPC stream (mutual TLS) open.
//!
//! ```text
//!  XMPP server ⇄ component link ─▶ Service ─▶ room task ─▶ Room::handle
//!        ▲                            │           │  Persist ─▶ Store writer (group commit)
//!        │                 discovery ─┘           │  split: own/other domains │ slave domains
//!        └──────────── stanzas, once durable ◀────┤                           ▼
//!                                                 └─ events, once durable ─▶ peer task ══gRPC══▶ peerhost
//! ```
//!
//! # What peerhosts send up
//! A peerhost speaks for its own domain's users only: it forwards stanzas
//! it intercepted (`Forward`) and submits parsed inputs (`Submit`); the
//! peer task checks the sender's domain and hands them to the service,
//! which routes them like stanzas from the server. After a split, the
//! peerhost submits what its users did meanwhile as merges
//! (`dmuc_room::Merge`, index 0, 1, ... of the split): the peer task also
//! checks that the split is the peerhost's own domain's and did not begin
//! in the future, and clamps its times; a merge never creates a room nor
//! waits for discovery. The room takes each merge once, in order
//! (`dmuc_room::merge`), and its task answers the peerhost with
//! `SplitMerged` once the merge is durable, duplicates and refused gaps
//! included; the service answers at once for a room that does not exist.

pub mod config;
pub mod fanout;
pub mod peering;
pub mod room_task;
pub mod service;
pub mod store;
pub mod tree;

use std::sync::Arc;
use std::time::Duration;

use dmuc_component::metrics::{LinkMetrics, Metrics};
use dmuc_room::{ConfigBounds, RateLimit, RoomConfig, RoomSettings};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
use config::Multicast;
use dmuc_protocol::pb::uplink_server::UplinkServer;
use peering::listen::UplinkService;
use service::{PeeringOptions, Service, ServiceConfig, Uplinks};
use store::{Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Errors of the master.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Link(#[from] dmuc_component::Error),
}

/// Runs the master until `shutdown` is cancelled: opens the database,
/// restores persistent rooms, connects to the server and serves. On
/// shutdown, occupants are told (332) and every change is made durable
/// before this returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let store = Store::open(
        &config.storage.path,
        StoreOptions {
            durability: config.storage.durability,
            ..StoreOptions::default()
        },
    )
    .await?;
    let epoch = store.next_epoch().await?;
    let salt = store.salt().await?;
    let limits = &config.limits;
    let settings = RoomSettings {
        epoch,
        salt: Arc::from(&salt[..]),
        bounds: ConfigBounds {
            max_users: limits.max_occupants,
            max_history: limits.max_history,
        },
        lock_new_rooms: config.rooms.lock_new_rooms,
        default_config: RoomConfig {
            persistent: config.rooms.persistent_by_default,
            max_users: limits.default_max_occupants,
            history_length: limits.default_history,
            ..RoomConfig::default()
        },
        rate_limit: (limits.rate_per_second > 0).then_some(RateLimit {
            burst: limits.rate_burst,
            per_second: limits.rate_per_second,
        }),
    };
    let rooms = store.load_rooms(limits.max_history as usize).await?;
    let metrics = Metrics::new();
    let metrics_endpoint = config.metrics.serve(&metrics, &shutdown).await?;
    let mut link_config = config.component.to_link_config()?;
    link_config.metrics = LinkMetrics::register(&metrics);
    let domain = link_config.jid.clone();
    info!(%domain, epoch, rooms = rooms.len(), "starting");

    let multicast_from = match config.delivery.multicast {
        Multicast::Auto => link_config.parent_domain(),
        Multicast::Off => None,
    };
    let home = link_config.parent_domain();
    let tls = match config.peering.tls()? {
        Some(files) => Some(
            files
                .load()
                .map_err(|e| Error::Config(format!("peering: {e}")))?,
        ),
        None => None,
    };
    let link_shutdown = CancellationToken::new();
    let link = dmuc_component::spawn(link_config, link_shutdown.clone())?;
    let (welcomed, uplinks) = mpsc::unbounded_channel();
    let uplink_server = match config.peering.listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Config(format!("peering.listen {addr}: cannot listen: {e}")))?;
            info!(%addr, "listening for peerhosts");
            let service = UplinkService::new(domain.clone(), tls.is_some(), welcomed);
            let mut builder = Server::builder();
            if let Some(tls) = &tls {
                builder = builder
                    .tls_config(dmuc_protocol::tls::server_config(tls))
                    .map_err(|e| Error::Config(format!("peering: {e}")))?;
            }
            let serve = builder
                .add_service(UplinkServer::new(service))
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.clone().cancelled_owned(),
                );
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let tls = tls.map(Arc::new);
    let service = Service::new(
        ServiceConfig {
            domain,
            settings,
            max_message_bytes: limits.max_message_bytes,
            max_rooms_per_user: limits.max_rooms_per_user,
            multicast_from,
            epoch,
            metrics: metrics.clone(),
            peering: PeeringOptions {
                home,
                discovery: config.peering.discovery,
                found_ttl: Duration::from_secs(config.peering.found_ttl_secs),
                missing_ttl: Duration::from_secs(config.peering.missing_ttl_secs),
                timeout: Duration::from_millis(config.peering.discovery_timeout_ms),
                slave_grace: Duration::from_secs(config.peering.slave_grace_secs),
                static_peers: config.peering.targets()?,
                tls,
                allow_plaintext: config.peering.allow_plaintext,
                keepalive: Duration::from_secs(config.peering.keepalive_secs),
                trees: Some(Arc::new(tree::TreeSetup {
                    max_fanout: config.peering.max_fanout,
                    signer: dmuc_protocol::signing::Signer::generate(),
                    report_keys: dmuc_protocol::signing::ReportKeys::generate(),
                    metrics: metrics.clone(),
                })),
            },
        },
        link.handle,
        store.writer(),
        rooms,
        Uplinks(uplinks),
    );
    service.run(link.inbound, shutdown).await;
    if let Some(server) = uplink_server {
        let _ = server.await;
    }
    // Every room has flushed; now the link may flush and close.
    link_shutdown.cancel();
    let _ = link.task.await;
    if let Some(endpoint) = metrics_endpoint {
        let _ = endpoint.await;
    }
    store.close().await;
    info!("stopped");
    Ok(())
}
