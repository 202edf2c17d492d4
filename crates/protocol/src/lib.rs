//! The contract between a dmuc master and its peerhosts: the gRPC services
//! `dmuc.peering.v1.Peering` (served by peerhosts, dialled by masters) and
//! `dmuc.peering.v1.Uplink` (served by masters, for peerhosts that dial out:
//! the same stream with the call reversed), generated from `proto/` at the
//! workspace root; the conversions between their messages and `dmuc_room`
//! types; and mutual TLS for both ([`tls`]).
//!
//! The master replicates each room to the peerhosts that serve some of its
//! occupants: one [`pb::CreateSlave`] with a [`dmuc_room::RoomSnapshot`],
//! then every [`dmuc_room::Input`] the master's room handled, numbered, with
//! the time the master used. A slave feeds them to its replica and delivers
//! only the stanzas for its own domain. Up the stream go acks, resyncs, and
//! the stanzas of the peerhost's own users that it intercepted
//! ([`pb::Forward`]) or submits ([`pb::Submit`]). The `.proto` file
//! documents every frame and field; it is the reference for anyone writing
//! another peer.
//!
//! # Layout
//! - [`pb`]: the generated messages, client (`pb::peering_client`) and
//!   server (`pb::peering_server`). Wire types only: nothing outside this
//!   crate's conversions should build domain values from them by hand.
//! - [`convert`]: one file per area, `From<&domain>` into `pb` and
//!   `TryFrom<pb>` back, re-validating everything through the domain
//!   newtypes (`convert::input`, `convert::snapshot`, `convert::frames`).
//! - [`negotiate()`]: the pure choice of version and features from a
//!   [`pb::Hello`].
//! - [`ProtocolError`]: what a malformed frame is, naming the bad field; it
//!   maps to a `tonic::Status` for the remote peer.
//! - [`tls`]: mutual TLS of the link: loading the `[peering]` PEM files,
//!   the tonic client and server configurations, and the names in a peer's
//!   certificate ([`tls::cert_matches_jid`]); its own [`tls::TlsError`].
//! - [`signing`]: the master's Ed25519 signatures on events relayed
//!   down rooms' spanning trees (`relay.proto`), and their checks.
//! - here: [`PROTOCOL_VERSION`], the optional [`feature`]s, and the
//!   [`hello()`] this build sends.
//!
//! ```text
//!  master                                             peerhost
//!  Room::handle(input, now)                           Replica
//!     │ RoomEvent{room, seq, now, input}                 ▲ RoomEvent (validated)
//!     ▼ pb::Event::from(&event)                          │ RoomEvent::try_from(pb::Event)
//!  EventBatch ──── MasterFrame stream (HTTP/2, TLS) ────▶ EventBatch
//!                ◀─── PeerFrame stream: Ack / Resync ───
//! ```
//!
//! Nothing here does network I/O: the master and peerhost crates own the
//! streams; [`tls`] reads its PEM files and the system's root store.
//!
//! Frame size: tonic refuses messages over 4 MiB by default. A `CreateSlave`
//! carries the room's whole history with payloads, which can exceed that;
//! the peerhost sets `PeeringServer::max_decoding_message_size` to what its
//! history bounds allow, and the master batches events below it.

pub mod convert;
mod error;
mod negotiate;
pub mod signing;
pub mod tls;

/// The generated protobuf messages and gRPC client and server of
/// `dmuc.peering.v1`.
// prost makes each oneof a plain enum, so `MasterFrame` holds a whole
// `CreateSlave` inline; frames are built once and moved, so that is fine.
#[allow(clippy::large_enum_variant)]
pub mod pb {
    tonic::include_proto!("dmuc.peering.v1");
}

pub use convert::frames::{RoomEvent, SlaveStart};
pub use error::ProtocolError;
pub use negotiate::{Agreed, negotiate};

/// The protocol version this crate speaks: the `v1` of `dmuc.peering.v1`.
/// A new version number comes with a new package.
pub const PROTOCOL_VERSION: u32 = 1;

/// The versions this build can speak, for [`negotiate()`] and [`pb::Hello`].
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = PROTOCOL_VERSION..=PROTOCOL_VERSION;

/// Optional behaviours announced in `Hello.features` / `Welcome.features`.
///
/// Within one protocol version, a feature lets one side rely on something the
/// other may not do; only the intersection agreed in `Welcome` may be used.
pub mod feature {
    /// The peerhost answers every `Keepalive` with the same nonce. Without
    /// it the master relies on HTTP/2 pings alone to detect a dead peer.
    pub const KEEPALIVE_ECHO: &str = "keepalive-echo";
    /// The peerhost asks for a fresh snapshot with `Resync` when a slave
    /// cannot continue. Without it, a gap ends the whole stream, and the
    /// master recreates every slave on reconnect.
    pub const RESYNC: &str = "resync";
    /// The peerhost reports its links to other peerhosts (`LinkHealth`),
    /// for the master's rooms' trees.
    pub const LINK_HEALTH: &str = "link-health";
    /// Every feature this build supports.
    pub const ALL: &[&str] = &[KEEPALIVE_ECHO, RESYNC, LINK_HEALTH];
}

/// How a domain's peerhost is found (XEP-0030, XEP-0128): the domain's
/// server lists the peerhost component in its disco#items; the peerhost's
/// disco#info has [`disco::FEATURE`] and a form of [`disco::FORM_TYPE`]
/// with its gRPC endpoint and the domain it serves.
pub mod disco {
    /// The feature a peerhost advertises.
    pub const FEATURE: &str = "urn:dmuc:peering:1";
    /// The FORM_TYPE of its extended disco#info form.
    pub const FORM_TYPE: &str = "urn:dmuc:peering:1#info";
    /// Form field: where masters open `Replicate` streams (a URL).
    pub const ENDPOINT: &str = "endpoint";
    /// Form field: the domain whose users the peerhost serves.
    pub const DOMAIN: &str = "domain";
}

/// The `Hello` this build sends: every supported version and feature.
pub fn hello(master_jid: &str) -> pb::Hello {
    pb::Hello {
        min_version: *SUPPORTED_VERSIONS.start(),
        max_version: *SUPPORTED_VERSIONS.end(),
        features: feature::ALL.iter().map(|f| (*f).to_owned()).collect(),
        master_jid: master_jid.to_owned(),
    }
}
