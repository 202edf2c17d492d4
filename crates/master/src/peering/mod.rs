//! The master's side of peering: finding the peerhost of a domain, keeping
//! a stream open to each, and the messages between those streams and the
//! rooms that replicate over them.
//!
//! ```text
//!  join from bob@b.test ─▶ Service: b.test known? ──no──▶ discovery::discover (disco over s2s)
//!                              │ yes                           │ found: conn::spawn, wait for Up
//!                              ▼                               ▼
//!                          room task ── Register ──▶ conn task (one per peerhost) ══gRPC══▶ peerhost
//!                              ▲ ◀── Up / Down / Ack / Resync / Links ──┘
//! ```
//!
//! - [`discovery`]: disco#items of the domain, then disco#info of each item,
//!   looking for the dmuc feature and the endpoint in its form; and the
//!   cache of what was found.
//! - [`iq`]: IQ requests the service sends and the answers it awaits.
//! - [`conn`]: the task per peerhost, on a stream it dialled or one the
//!   peerhost dialled in on.
//! - [`listen`]: the `Uplink` service for peerhosts that dial the master.
//!
//! Rooms decide which of their domains a slave serves (`crate::fanout`).
//!
//! Up the stream come the stanzas of the peerhost's users ([`conn::Submitted`]),
//! among them, on heal, the inputs of a split to merge: `Submit(Merge)`,
//! checked here (the merge's domain is the peerhost's, its split did not
//! begin in the future, its time is clamped into `[began, now]`), then
//! routed to the room like any input; the room task answers
//! [`Directory::confirm_merge`] once the merge is durable, and the service
//! does so at once for a room that does not exist.

pub mod conn;
pub mod discovery;
pub mod iq;
pub mod listen;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use dmuc_protocol::pb;
use dmuc_room::Timestamp;
use jid::BareJid;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

pub use conn::LinkState;

/// Where a domain's peerhost is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTarget {
    /// The domain whose users it serves, e.g. `b.test`.
    pub domain: BareJid,
    /// Its JID (its component), e.g. `muc-peer.b.test`.
    pub jid: BareJid,
    /// Its gRPC endpoint, e.g. `https://peer.b.test:7443`; `None` for a
    /// peerhost that dials the master instead (see `listen`).
    pub endpoint: Option<String>,
}

/// A room's way to its domain's peerhost.
#[derive(Clone, Debug)]
pub struct PeerHandle {
    pub target: Arc<PeerTarget>,
    tx: mpsc::Sender<ToPeer>,
    state: watch::Receiver<LinkState>,
    /// Streams the peerhost opened to us (`Uplink.Attach`), for its task.
    adopt: mpsc::Sender<conn::Transport>,
    /// Whether, on its current or last stream, the peerhost said it
    /// intercepts its users' traffic to us (`Welcome.intercepts`).
    intercepts: Arc<AtomicBool>,
    /// The last keepalive round trip on its stream, in ms (0: none yet).
    rtt_ms: Arc<AtomicU32>,
}

impl PeerHandle {
    /// The last keepalive round trip measured on its stream, if any.
    pub fn rtt_ms(&self) -> Option<u32> {
        Some(self.rtt_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// As if a keepalive had taken `ms` to come back, for tests.
    #[cfg(test)]
    pub fn set_rtt_ms(&self, ms: u32) {
        self.rtt_ms.store(ms.max(1), Ordering::Relaxed);
    }

    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    /// Whether the peerhost is its domain's users' only way to us: then
    /// their events wait for it while it is unreachable.
    pub fn intercepts(&self) -> bool {
        self.intercepts.load(Ordering::Relaxed)
    }

    /// Waits until the first connection attempt has finished.
    pub async fn settled(&mut self) -> LinkState {
        let state = self
            .state
            .wait_for(|s| *s != LinkState::Connecting)
            .await
            .map(|s| *s);
        state.unwrap_or(LinkState::Down)
    }

    /// A handle without a task behind it, for tests: what rooms send comes
    /// out of the receiver; the state is set through the sender.
    #[cfg(test)]
    pub fn detached(
        target: PeerTarget,
    ) -> (Self, mpsc::Receiver<ToPeer>, watch::Sender<LinkState>) {
        let (tx, rx) = mpsc::channel(64);
        let (state_tx, state) = watch::channel(LinkState::Connecting);
        let handle = PeerHandle {
            target: Arc::new(target),
            tx,
            state,
            adopt: mpsc::channel(1).0,
            intercepts: Arc::default(),
            rtt_ms: Arc::default(),
        };
        (handle, rx, state_tx)
    }

    /// As if its stream said `Welcome.intercepts`, for tests.
    #[cfg(test)]
    pub fn set_intercepts(&self, intercepts: bool) {
        self.intercepts.store(intercepts, Ordering::Relaxed);
    }

    /// Hands a stream the peerhost dialled in on to its task.
    pub async fn adopt(&self, transport: conn::Transport) {
        let _ = self.adopt.send(transport).await;
    }

    /// Hands a message to the peer's task; `false` if it has stopped.
    pub async fn send(&self, msg: ToPeer) -> bool {
        self.tx.send(msg).await.is_ok()
    }
}

/// What a room tells a peer's task.
#[derive(Debug)]
pub enum ToPeer {
    /// The room wants a slave there: send it news (at once, the current
    /// state: `Up` or `Down`).
    Register {
        room: BareJid,
        news: mpsc::UnboundedSender<News>,
    },
    Deregister {
        room: BareJid,
    },
    /// A frame for the stream of `session` (dropped if that has ended).
    Frame {
        session: u64,
        frame: Box<pb::master_frame::Frame>,
    },
    /// An event, batched with others for the stream of `session`.
    Event {
        session: u64,
        event: Arc<pb::Event>,
    },
    /// An event signed by the master (its room runs a spanning tree),
    /// batched likewise.
    Signed {
        session: u64,
        event: Arc<pb::SignedEvent>,
    },
    /// How far the peerhost's split of a room is merged: for whichever
    /// stream is up (dropped if none: the peerhost resubmits, and learns
    /// it then).
    Merged(pb::SplitMerged),
}

/// News from the peerhost of `domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct News {
    pub domain: BareJid,
    pub news: PeerNews,
}

/// What a peer's task tells a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerNews {
    /// Session `session` is open; the peerhost kept a slave of the room at
    /// `resume_from`, if any.
    Up {
        session: u64,
        resume_from: Option<u64>,
    },
    /// The stream broke (or was never up): the room delivers itself.
    Down { session: u64 },
    /// The peerhost is not running (its endpoint refused the master): its
    /// slave cannot be reached through a parent either.
    NotRunning { session: u64 },
    /// The slave applied the room's events up to `seq`.
    Ack { session: u64, seq: u64 },
    /// The slave is stuck at `have` and needs the rest or a snapshot.
    Resync { session: u64, have: u64 },
    /// A frame `child` handed this peerhost (its parent in the room's
    /// tree, which the room checks; any peerhost of the tree for a
    /// `Report`) while its own stream is down, carried up; `seal` shows
    /// that the child made it.
    Relayed {
        child: BareJid,
        frame: ChildFrame,
        seal: Seal,
    },
    /// How the peerhost's links to other peerhosts are (its `LinkHealth`),
    /// by the other end's peerhost JID: it is an end of each.
    Links {
        links: Vec<(BareJid, crate::tree::Measured)>,
    },
    /// The slave cannot use `parent`, its parent in the room's tree
    /// (`refused`: it refused the slave; else it cannot be reached); it
    /// has every event up to `have`.
    Report {
        session: u64,
        parent: BareJid,
        refused: bool,
        have: u64,
    },
}

/// What a child's parent carried up for it, that the room acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildFrame {
    /// The child's slave applied the room's events up to this one.
    Ack(u64),
    /// A stanza the child intercepted (the room checks that its sender is
    /// of the child's domain).
    Forward(Box<minidom::Element>),
    /// The child, whose own stream is down, cannot use `parent` (`refused`:
    /// it refused the child; else it cannot be reached); it has every event
    /// up to `have`. Carried up by any peerhost of the room's tree.
    Report {
        parent: BareJid,
        refused: bool,
        have: u64,
    },
}

/// How a child sealed a frame for its parent to carry up: the frame as
/// encoded, its counter and MAC (`dmuc_protocol::signing::Sealed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    pub frame: Vec<u8>,
    pub counter: u64,
    pub mac: Vec<u8>,
}

impl Seal {
    pub fn sealed(&self) -> dmuc_protocol::signing::Sealed<'_> {
        dmuc_protocol::signing::Sealed {
            frame: &self.frame,
            counter: self.counter,
            mac: &self.mac,
        }
    }
}

/// The peerhosts known to serve domains, shared by the service (which
/// fills it) and the rooms (which look up a joiner's domain).
#[derive(Clone, Debug, Default)]
pub struct Directory(Arc<RwLock<HashMap<BareJid, PeerHandle>>>);

impl Directory {
    pub fn get(&self, domain: &BareJid) -> Option<PeerHandle> {
        self.0.read().expect("directory lock").get(domain).cloned()
    }

    pub fn remove(&self, domain: &BareJid) {
        self.0.write().expect("directory lock").remove(domain);
    }

    pub fn insert(&self, handle: PeerHandle) {
        let domain = handle.target.domain.clone();
        self.0
            .write()
            .expect("directory lock")
            .insert(domain, handle);
    }

    /// Tells `domain`'s peerhost that its split of `room` since `began` is
    /// merged below `next_index` (`SplitMerged`).
    pub async fn confirm_merge(
        &self,
        room: &BareJid,
        domain: &str,
        began: Timestamp,
        next_index: u64,
    ) {
        let Some(peer) = BareJid::new(domain).ok().and_then(|d| self.get(&d)) else {
            return warn!(%room, domain, "merge confirmation for a domain without a peerhost");
        };
        debug!(%room, domain, began = began.millis(), next_index, "split merged");
        let frame = pb::SplitMerged {
            room: room.to_string(),
            began_ms: began.millis(),
            next_index,
        };
        if !peer.send(ToPeer::Merged(frame)).await {
            warn!(domain, "peer task gone");
        }
    }
}
