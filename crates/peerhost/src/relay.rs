//! Spanning trees on the peerhost: this peerhost's slaves relay the
//! master's events to other peerhosts' slaves of the same room, and take
//! them from a parent peerhost instead of the master when the master says
//! so (`Assign`, see `proto/dmuc/peering/v1/relay.proto`).
//!
//! ```text
//!  master stream ── Assign{parent, children, key} ──▶ Hub::assign ─┬─ parent is a peerhost: follow task
//!                ── SignedBatch ─▶ stream ─▶ slave                 │    dials it (mutual TLS, its JID),
//!                                    └─▶ Hub::publish ─▶ window     │    TreeRelay.Subscribe(room, after),
//!                                                 └─▶ each child    │    checks each event's signature ─▶
//!  child ── TreeRelay.Subscribe ─▶ Hub (a child the master named,  │    Relayed ─▶ stream ─▶ slave
//!           its certificate valid for it) ◀─ window after `after`, │               └─▶ Hub::publish
//!           then every event published                             └─ parent is the master: nothing to dial
//! ```
//!
//! The master signs only the events it sends a slave with children (the
//! others, leaves of a star most often, get them plain, as without a tree);
//! a slave that gains children is sent, signed, the events they have not
//! acknowledged, and [`Hub::publish`] keeps them in the window in order.
//!
//! A slave that cannot follow its parent peerhost for `REPORT_AFTER` (1 s)
//! while its own stream works tells the master on that stream
//! (`TreeReport`, once per parent); the master assigns it another.
//!
//! What a relay gets is only what the master signed: a child checks every
//! event against the master's key (which it got on its own stream from the
//! master), so a parent can delay or drop events but not forge them. Its
//! slave drops duplicates (by sequence number) and asks the master for a
//! resync on a gap, as it does for the master's own stream.
//!
//! # Detours: a slave whose stream to the master breaks
//! When the master's stream ends (and the peerhost is not shutting down),
//! a slave of a room running a tree does not stop: it becomes an *orphan*
//! held here. It keeps following its parent if it has one, or else tries
//! the `Assign.fallbacks` the master gave it, which accept it once the
//! master (which saw the same stream end) has named it as their child. Its
//! acknowledgements go up through that parent (`TreeRelay.Report`, carried
//! to the master as a `RelayedFrame`), so the master knows it still
//! delivers and delivers nothing directly; if the peerhost intercepts its
//! users' traffic, their stanzas go up the same way (`crate::shadow`), and
//! the room splits only if no parent accepts the orphan for
//! `ORPHAN_PATIENCE` (3 s). The master's next stream takes the orphan back
//! (it offers to resume from the slave's last event, as after a split) and
//! the master puts it back where the tree prefers it.
//!
//! Everything an orphan hands a parent for the master is sealed with the
//! orphan's own key (`Assign.report_key`, which no other peerhost has) and
//! a growing counter (`Sealer`): the master takes it once, only if the
//! orphan sealed it, so a parent can drop an orphan's frames but not make
//! up, alter or replay its acknowledgements or its users' stanzas. An
//! orphan that cannot reach the parent it followed for `REPORT_AFTER` says
//! so through any other peerhost of the room's tree that answers (its
//! sealed `TreeReport`, which any node of the room carries up), and the
//! master moves it. Its users' stanzas that no parent had carried up when
//! it is given back ([`Returned`]) are not lost: a new stream of the
//! master sends them up first, as they were sealed (so the master takes
//! each once, even if a parent carried it up after all), and a split says
//! them in the split.
//!
//! ```text
//!  stream ends ─▶ Hub::orphan: slave.reattach(upstream to the parent) ─▶ follow parent | fallbacks
//!                 Relayed ─▶ orphan feed ─▶ Hub::publish + slave          │ accepted by b
//!                 slave's Ack, users' Forwards ─▶ reporter (sealed)
//!                     ── TreeRelay.Report ──▶ b ── RelayedFrame ──▶ master
//!                 b unreachable ─▶ sealed TreeReport ── TreeRelay.Report ──▶ d ──▶ master
//!  next stream ─▶ Hub::adopt: the slaves come back, offered for resume
//! ```
//!
//! # Link health: [`links`], `probe`
//! Every few seconds the node pings the peerhosts its places name (parent
//! and fallbacks, `TreeRelay.Ping`), smooths what it measures per peer
//! ([`links::Estimator`], pure), and tells each master on its own stream
//! (`LinkHealth`) when its links to that master's rooms' peers changed
//! enough; the master's trees prefer parents by it.
//!
//! # Sequence numbers: [`window`]
//! What a node decides with sequence numbers is the pure
//! [`window::Window`], one per room's place: which events from a parent
//! are worth handing on (`wants`: the follow task), which are new, held
//! in order for later subscribers or dropped as duplicates (`publish`:
//! [`Hub::publish`], for the stream and an orphan's feeder alike), and
//! what a child subscribing after some event is sent (`catch_up`), with a
//! gap when the window no longer holds what follows the child's last
//! event. The window does not hold back what is ahead of a gap; the slave
//! does (its replica applies only the next event and, on a gap, stalls
//! and asks the master for a resync), and the master resumes it from its
//! history, on this stream or on the next one. What the node got from its
//! parent while its slave was stalled is in the window but not in the
//! slave (which dropped it), and the master's `Resume` may end before it:
//! the stream hands the slave what the window holds after the master's
//! first event (`Window::resume`, `Window::resumed`), or after a new
//! slave's snapshot (`Window::started`). A parent whose resync is answered
//! with a new slave (`CreateSlave`) is sent, signed, what its children have
//! not acknowledged, as a new parent is (the master's `Fanout`), since its
//! window may hold nothing they lack. That is the logic the property test
//! `crates/peerhost/tests/window.rs` runs over a simulated tree (links cut,
//! events lost, delayed, reordered and duplicated, slaves moved, windows
//! exceeded, master streams cut, the master's history short): every slave
//! delivers the master's events exactly once, in order, with no gaps, and
//! once links heal every slave has them all, with no later event needed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dmuc_component::metrics::{Counter, Metrics};
use dmuc_protocol::pb::tree_relay_client::TreeRelayClient;
use dmuc_protocol::pb::tree_relay_server::TreeRelay;
use dmuc_protocol::pb::{self};
use dmuc_protocol::signing::{ReportKey, Verifier};
use dmuc_protocol::tls::{self, LoadedTls};
use dmuc_protocol::{ProtocolError, RoomEvent};
use jid::BareJid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::slave::{Slave, SlaveSender};
use crate::stream::Upstream;

pub mod links;
mod probe;
pub mod window;

use links::Estimate;
use window::{Publish, Window};

/// Events a parent keeps per room for its children's (re)subscriptions.
const WINDOW: usize = 1024;
/// Batches queued for a child before it is dropped (it subscribes again).
const CHILD_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait before following a parent again.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a parent may fail before the master is told (on this node's
/// own stream, while it works).
const REPORT_AFTER: Duration = Duration::from_secs(1);
/// How long an intercepting peerhost's orphan may follow no parent before
/// it is given up (it splits).
const ORPHAN_PATIENCE: Duration = Duration::from_secs(3);
/// An orphan's intercepted stanzas that may wait for its parent.
const FORWARD_QUEUE: usize = 1024;
/// How long a parent may take to carry one of an orphan's frames up.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest relayed batch accepted.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// An event a parent relayed, checked: for the stream to hand to the slave
/// and to publish to this node's own children.
#[derive(Debug)]
pub struct Relayed {
    pub event: RoomEvent,
    /// Its `pb::Event` encoding, for the slave's log.
    pub encoded: Vec<u8>,
    pub signed: Arc<pb::SignedEvent>,
}

/// This peerhost's places in rooms' trees; also the `TreeRelay` service
/// its children call.
#[derive(Debug, Clone)]
pub struct Hub {
    /// This peerhost's JID (what its certificate is valid for).
    me: BareJid,
    /// Mutual TLS towards parents; `None`: plaintext (trusted networks).
    tls: Option<Arc<LoadedTls>>,
    /// Where to dial a parent instead of the endpoint the master gave, by
    /// the parent's JID (`[peering] routes`).
    routes: Arc<HashMap<String, String>>,
    rooms: Arc<Mutex<HashMap<BareJid, Place>>>,
    /// The stream of each master, for children's frames carried up.
    upstreams: Arc<Mutex<HashMap<BareJid, Upstream>>>,
    /// What each master was last told of this node's link to each peer
    /// (see [`probe`]), by master and peer JID.
    told: Arc<Mutex<HashMap<(BareJid, String), Estimate>>>,
    metrics: HubMetrics,
}

/// Where the relay counts, per room (`dmuc_relay_*{room}`; a registry of
/// its own when the peerhost has no metrics endpoint).
#[derive(Debug, Clone, Default)]
struct HubMetrics(Metrics);

impl HubMetrics {
    fn counter(&self, name: &str, help: &str, room: &BareJid) -> Counter {
        self.0.counter_with(name, help, &[("room", room.as_str())])
    }

    /// Relayed events `room`'s node dropped as already had.
    fn duplicates(&self, room: &BareJid) -> Counter {
        self.counter(
            "dmuc_relay_duplicates_total",
            "Events of the room dropped by the relay as already had",
            room,
        )
    }

    /// Events sent to `room`'s children from the window.
    fn caught_up(&self, room: &BareJid) -> Counter {
        self.counter(
            "dmuc_relay_caught_up_total",
            "Events of the room sent to children from the window when they subscribed",
            room,
        )
    }

    /// Times `room`'s slave here was given another parent.
    fn reparents(&self, room: &BareJid) -> Counter {
        self.counter(
            "dmuc_relay_reparents_total",
            "Times the room's slave was given another parent",
            room,
        )
    }

    /// Frames of `room`'s children carried up to the master.
    fn carried_up(&self, room: &BareJid) -> Counter {
        self.counter(
            "dmuc_relay_carried_up_total",
            "Frames of the room's children (acknowledgements, their users' stanzas) carried up to the master",
            room,
        )
    }
}

/// One room's place in its tree.
#[derive(Debug)]
struct Place {
    /// The master the room belongs to (its stream's).
    master: Option<BareJid>,
    /// The peerhosts the master named as this node's children.
    children: HashSet<String>,
    /// The parent followed, if it is a peerhost, and the task doing it.
    parent: Option<(String, Follow)>,
    /// The parent's endpoint, as the master gave it (for link probes).
    parent_endpoint: String,
    /// The last event this node has (from any path) and the recent ones,
    /// for children's subscriptions.
    window: Window<Arc<pb::SignedEvent>>,
    /// The children subscribed now.
    subscribers: HashMap<String, mpsc::Sender<Result<pb::RelayBatch, Status>>>,
    /// The master's key, from its last `Assign`.
    verifier: Option<Verifier>,
    /// This peerhost's key for the master, from the same `Assign`.
    report_key: Option<ReportKey>,
    /// Where to go if the master's stream ends (`Assign.fallbacks`).
    fallbacks: Vec<(String, String)>,
    /// The slave, while the master's stream is down (a detour).
    orphan: Option<Orphan>,
}

impl Default for Place {
    fn default() -> Place {
        Place {
            master: None,
            children: HashSet::new(),
            parent: None,
            parent_endpoint: String::new(),
            window: Window::new(WINDOW),
            subscribers: HashMap::new(),
            verifier: None,
            report_key: None,
            fallbacks: Vec::new(),
            orphan: None,
        }
    }
}

/// A slave whose master's stream ended, fed by its parent.
#[derive(Debug)]
struct Orphan {
    slave: Slave,
    /// Carries its acknowledgements up to its parent; stops when dropped.
    reporter: Follow,
    /// Its users' stanzas, sealed, that no parent has carried up yet.
    unsent: Unsent,
    /// Hands it what the parent relays; stops when dropped.
    _feeder: Follow,
}

/// The stanzas an orphan's users send, on their way up: sealed as they
/// come (so their counters are in the users' order) and queued for the
/// orphan's reporter, which carries them up through its parent. A slow
/// parent never holds the sender, and what is left when the orphan is
/// given back goes to whoever takes it ([`Returned`]).
#[derive(Debug, Clone)]
pub struct Unsent {
    /// `None` once the orphan is given back.
    queue: Arc<Mutex<Option<VecDeque<pb::ReportRequest>>>>,
    sealer: Arc<Mutex<Sealer>>,
    /// Wakes the reporter.
    more: Arc<tokio::sync::Notify>,
}

impl Unsent {
    fn new(sealer: Sealer) -> Unsent {
        Unsent {
            queue: Arc::new(Mutex::new(Some(VecDeque::new()))),
            sealer: Arc::new(Mutex::new(sealer)),
            more: Arc::default(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Option<VecDeque<pb::ReportRequest>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `stanza`, one of the room's users'; false once the orphan is
    /// given back (it is not queued).
    pub fn forward(&self, stanza: &minidom::Element) -> bool {
        let frame = pb::PeerFrame {
            frame: Some(pb::peer_frame::Frame::Forward(pb::Forward {
                stanza: String::from(stanza),
            })),
        };
        let mut queue = self.queue();
        let Some(queue) = queue.as_mut() else {
            return false;
        };
        if queue.len() >= FORWARD_QUEUE {
            warn!("tree: the parent does not carry stanzas up: the oldest is dropped");
            queue.pop_front();
        }
        queue.push_back(self.seal(&frame));
        self.more.notify_one();
        true
    }

    /// `frame` sealed for the master, with the next counter (the orphan's
    /// acknowledgements and reports; its stanzas as they are queued).
    fn seal(&self, frame: &pb::PeerFrame) -> pb::ReportRequest {
        self.sealer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seal(frame)
    }

    /// The oldest stanza not carried up yet.
    fn front(&self) -> Option<pb::ReportRequest> {
        self.queue().as_ref()?.front().cloned()
    }

    /// The stanza sealed with `counter` was carried up.
    fn carried(&self, counter: u64) {
        if let Some(queue) = self.queue().as_mut()
            && queue.front().is_some_and(|f| f.counter == counter)
        {
            queue.pop_front();
        }
    }

    /// What is left; nothing is queued after.
    fn take(&self) -> Vec<pb::ReportRequest> {
        self.queue().take().map(Vec::from).unwrap_or_default()
    }
}

/// An orphan's slave, given back to a new stream of the master or to
/// split, with the stanzas its users sent that no parent has carried up
/// yet (sealed, in order).
#[derive(Debug)]
pub struct Returned {
    pub room: BareJid,
    pub slave: Slave,
    pub unsent: Vec<pb::ReportRequest>,
}

impl Orphan {
    fn returned(self, room: BareJid) -> Returned {
        // No more tries to carry them up: what is left is the caller's.
        drop(self.reporter);
        Returned {
            room,
            slave: self.slave,
            unsent: self.unsent.take(),
        }
    }
}

impl Returned {
    /// The unsent stanzas themselves.
    pub fn stanzas(&self) -> Vec<minidom::Element> {
        forwarded(&self.unsent)
    }
}

/// The stanzas of sealed `Forward`s.
fn forwarded(sealed: &[pb::ReportRequest]) -> Vec<minidom::Element> {
    use prost::Message;
    sealed
        .iter()
        .filter_map(
            |r| match pb::PeerFrame::decode(r.frame.as_slice()).ok()?.frame? {
                pb::peer_frame::Frame::Forward(f) => f.stanza.parse().ok(),
                _ => None,
            },
        )
        .collect()
}

/// What a task following a parent for an orphan needs.
struct Orphaned {
    /// Where to leave the parent that accepted it (for its frames).
    reporter: Arc<Mutex<Option<Reporter>>>,
    /// Its users' stanzas on their way up, and the seal of its frames
    /// (shared with its reporter task).
    unsent: Unsent,
    /// Where to hand the slave if no parent accepts it in time.
    lost: Option<mpsc::UnboundedSender<Returned>>,
}

/// A task following a parent; stops when dropped.
#[derive(Debug)]
struct Follow(JoinHandle<()>);

impl Drop for Follow {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Hub {
    pub fn new(me: BareJid, tls: Option<Arc<LoadedTls>>, routes: HashMap<String, String>) -> Hub {
        Hub {
            me,
            tls,
            routes: Arc::new(routes),
            rooms: Arc::default(),
            upstreams: Arc::default(),
            told: Arc::default(),
            metrics: HubMetrics::default(),
        }
    }

    /// Counts in `metrics` (`dmuc_relay_*`).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Hub {
        self.metrics = HubMetrics(metrics.clone());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, Place>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The master (of the stream) assigns this node its place in `room`'s
    /// tree; relayed events go to `feed`.
    pub fn assign(
        &self,
        master: &BareJid,
        assign: pb::Assign,
        feed: mpsc::Sender<Relayed>,
    ) -> Result<(), ProtocolError> {
        let room = match assign.room.parse::<BareJid>() {
            Ok(room) if room.node().is_some() && room.domain() == master.domain() => room,
            _ => {
                return Err(ProtocolError::Jid {
                    field: "assign.room".into(),
                    reason: "must be a room of the master".into(),
                });
            }
        };
        let verifier = Verifier::new(assign.master_key)?;
        let report_key = ReportKey::new(&assign.report_key)?;
        let me = self.me.as_str();
        if assign.parent_jid == me
            || assign.path.iter().any(|p| p == me)
            || assign.children.iter().any(|c| c == &assign.parent_jid)
        {
            // The master never makes a loop; refuse one all the same.
            warn!(room = %room, parent = %assign.parent_jid, "tree: declining a parent that would make a loop");
            return Ok(());
        }
        let mut rooms = self.lock();
        let place = rooms.entry(room.clone()).or_default();
        place.master = Some(master.clone());
        place.verifier = Some(verifier.clone());
        place.report_key = Some(report_key);
        place.fallbacks = assign
            .fallbacks
            .into_iter()
            .map(|f| (f.jid, f.endpoint))
            .collect();
        place.children = assign.children.into_iter().collect();
        place.parent_endpoint = assign.parent_endpoint.clone();
        let children = &place.children;
        place.subscribers.retain(|c, _| children.contains(c));
        let parent = (!assign.parent_jid.is_empty()).then_some(assign.parent_jid);
        let same = place.parent.as_ref().map(|(p, _)| p) == parent.as_ref();
        info!(
            room = %room,
            parent = parent.as_deref().unwrap_or("master"),
            depth = assign.path.len() + 1,
            children = place.children.len(),
            "tree: place assigned"
        );
        if same {
            return Ok(());
        }
        if place.parent.is_some() {
            self.metrics.reparents(&room).inc();
            info!(room = %room, "tree: reparented");
        }
        place.parent = parent.map(|parent_jid| {
            let follow = self.following(
                &room,
                vec![(parent_jid.clone(), assign.parent_endpoint)],
                verifier,
                feed,
                None,
            );
            (parent_jid, follow)
        });
        Ok(())
    }

    /// A task following the first of `candidates` that accepts this node.
    fn following(
        &self,
        room: &BareJid,
        candidates: Vec<(String, String)>,
        verifier: Verifier,
        feed: mpsc::Sender<Relayed>,
        orphaned: Option<Orphaned>,
    ) -> Follow {
        let candidates: Vec<(String, String)> = candidates
            .into_iter()
            .map(|(jid, endpoint)| {
                let endpoint = self.routes.get(&jid).cloned().unwrap_or(endpoint);
                (jid, endpoint)
            })
            .collect();
        let span = info_span!("follow", room = %room, parent = %candidates.first().map_or("", |c| c.0.as_str()));
        let follow = Following {
            hub: self.clone(),
            room: room.clone(),
            candidates,
            verifier,
            feed,
            orphaned,
            subscribed: AtomicBool::new(false),
        };
        Follow(tokio::spawn(follow.run().instrument(span)))
    }

    /// `master`'s stream is up: children's frames for it go there, and it
    /// is told every link again.
    pub fn stream_up(&self, master: &BareJid, up: Upstream) {
        self.told
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(m, _), _| m != master);
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(master.clone(), up);
    }

    /// How to dial the peerhost `jid` at `url`: with mutual TLS, checking
    /// that its certificate is valid for `jid` (plaintext only if this
    /// peerhost has no TLS either).
    fn endpoint(&self, jid: &str, url: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let Some(tls) = &self.tls else {
                return Err("https peer, but no [peering] tls_cert".into());
            };
            let config = tls::client_config(tls, jid).map_err(|e| e.to_string())?;
            endpoint.tls_config(config).map_err(|e| e.to_string())
        } else if self.tls.is_some() {
            Err("plaintext peer refused: this peerhost uses TLS".into())
        } else {
            Ok(endpoint)
        }
    }

    /// `master`'s stream ended: the slaves of rooms whose tree can still
    /// reach this node become orphans here (taken out of `slaves`), fed by
    /// their parent or a fallback (see the module docs). Returns each
    /// orphan's way up (through the parent that accepts it), for the
    /// stanzas its room's users send (`crate::shadow`).
    ///
    /// With `lost` (the master's traffic is intercepted), an orphan that
    /// follows no parent for `ORPHAN_PATIENCE` is given up and sent there,
    /// to split.
    pub async fn orphan(
        &self,
        master: &BareJid,
        slaves: &mut HashMap<BareJid, Slave>,
        lost: Option<mpsc::UnboundedSender<Returned>>,
    ) -> HashMap<BareJid, Unsent> {
        let mut ups = HashMap::new();
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(master);
        let rooms: Vec<BareJid> = self
            .lock()
            .iter()
            .filter(|(room, place)| {
                place.master.as_ref() == Some(master)
                    && place.verifier.is_some()
                    && (place.parent.is_some() || !place.fallbacks.is_empty())
                    && slaves.contains_key(*room)
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in rooms {
            let slave = slaves.remove(&room).expect("listed");
            let (frames, reports) = mpsc::channel(64);
            let up = Upstream::to_parent(frames);
            let Some(_) = slave.reattach(up.clone()).await else {
                continue;
            };
            let (feed, fed) = mpsc::channel::<Relayed>(CHILD_QUEUE);
            let mut rooms = self.lock();
            let Some(place) = rooms.get_mut(&room) else {
                continue;
            };
            let mut candidates: Vec<(String, String)> = Vec::new();
            if let Some((parent, _)) = &place.parent {
                // Its parent still works, most likely: keep it first.
                if let Some(f) = place.fallbacks.iter().find(|(jid, _)| jid == parent) {
                    candidates.push(f.clone());
                } else {
                    candidates.push((parent.clone(), String::new()));
                }
            }
            for f in &place.fallbacks {
                if !candidates.iter().any(|(jid, _)| *jid == f.0) && !place.children.contains(&f.0)
                {
                    candidates.push(f.clone());
                }
            }
            info!(room = %room, candidates = candidates.len(), "tree: stream down, the slave goes on through the tree");
            let reporter = Arc::new(Mutex::new(None));
            let unsent = Unsent::new(Sealer::new(
                self.me.clone(),
                place.report_key.clone().expect("set with the verifier"),
            ));
            let follow = self.following(
                &room,
                candidates,
                place.verifier.clone().expect("checked"),
                feed,
                Some(Orphaned {
                    reporter: reporter.clone(),
                    unsent: unsent.clone(),
                    lost: lost.clone(),
                }),
            );
            place.parent = Some((String::new(), follow));
            let span = info_span!("orphan", room = %room);
            let feeder = Feeder {
                hub: self.clone(),
                room: room.clone(),
                slave: slave.sender(),
            };
            place.orphan = Some(Orphan {
                slave,
                reporter: Follow(tokio::spawn(
                    report(unsent.clone(), reports, reporter).instrument(span.clone()),
                )),
                unsent: unsent.clone(),
                _feeder: Follow(tokio::spawn(feeder.run(fed).instrument(span))),
            });
            ups.insert(room, unsent);
        }
        ups
    }

    /// A new stream of `master`: its orphaned slaves come back to it (the
    /// stream offers to resume them, and sends up first what their users
    /// said that no parent carried up); their places wait for new
    /// `Assign`s.
    pub fn adopt(&self, master: &BareJid) -> Vec<Returned> {
        let mut rooms = self.lock();
        let mut back = Vec::new();
        for (room, place) in rooms.iter_mut() {
            if place.master.as_ref() != Some(master) {
                continue;
            }
            if let Some(orphan) = place.orphan.take() {
                place.parent = None;
                info!(room = %room, "tree: the master's stream is back: the slave returns to it");
                back.push(orphan.returned(room.clone()));
            }
        }
        back
    }

    /// `room`'s slave starts after event `seq` (a snapshot). Returns what
    /// the window holds after it, for the new slave (see
    /// [`Window::started`]).
    pub fn started(&self, room: &BareJid, seq: u64) -> Vec<(RoomEvent, Vec<u8>)> {
        let mut rooms = self.lock();
        let place = rooms.entry(room.clone()).or_default();
        for_slave(place.window.started(seq))
    }

    /// The master resumes `room`'s slave (see [`Window::resume`]).
    pub fn resume(&self, room: &BareJid) {
        if let Some(place) = self.lock().get_mut(room) {
            place.window.resume();
        }
    }

    /// The master handed `room`'s slave event `seq`: what to hand it next
    /// from the window (see [`Window::resumed`]).
    pub fn resumed(&self, room: &BareJid, seq: u64) -> Vec<(RoomEvent, Vec<u8>)> {
        let mut rooms = self.lock();
        let Some(place) = rooms.get_mut(room) else {
            return Vec::new();
        };
        let events = place.window.resumed(seq);
        if !events.is_empty() {
            debug!(room = %room, seq, events = events.len(), "tree: window events for the resumed slave");
        }
        for_slave(events)
    }

    /// This node has event `seq` of `room`, signed by the master: keep it
    /// for children that subscribe later and send it to those subscribed.
    /// Returns whether it is new (not had already by any path).
    pub fn publish(&self, room: &BareJid, seq: u64, signed: Arc<pb::SignedEvent>) -> bool {
        let mut rooms = self.lock();
        let Some(place) = rooms.get_mut(room) else {
            return true;
        };
        match place.window.publish(seq, signed.clone()) {
            Publish::New => {}
            // An older event the master sends a new parent for the
            // children it gains (it came unsigned before): kept for their
            // subscriptions, not sent to children already here.
            Publish::Backfilled => return false,
            Publish::Duplicate => {
                self.metrics.duplicates(room).inc();
                let duplicates = place.window.duplicates();
                debug!(room = %room, seq, duplicates, "tree: duplicate dropped");
                return false;
            }
        }
        place.subscribers.retain(|child, tx| {
            let batch = pb::RelayBatch {
                events: vec![(*signed).clone()],
            };
            match tx.try_send(Ok(batch)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(room = %room, %child, "tree: child too slow, dropped (it subscribes again)");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        true
    }

    /// `room`'s slave is gone: its place too.
    pub fn forget(&self, room: &BareJid) {
        self.lock().remove(room);
    }

    /// `master`'s stream ended: its rooms' places go (the next stream
    /// assigns them again), but those of orphans.
    pub fn end_stream(&self, master: &BareJid) {
        // The stream's frames must not outlive it: its response ends only
        // once every sender is gone (a shutdown waits for that).
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(master);
        self.lock()
            .retain(|_, place| place.master.as_ref() != Some(master) || place.orphan.is_some());
    }

    /// A child's frame for the master, carried up on the room's master's
    /// stream.
    async fn carry_up(
        &self,
        request: &pb::ReportRequest,
        names: Option<&[String]>,
    ) -> Result<(), Status> {
        let child = request.child_jid.as_str();
        if self.tls.is_some() && !names.is_some_and(|n| tls::cert_matches_jid(n, child)) {
            return Err(Status::permission_denied(
                "child_jid: not a name of the client's certificate",
            ));
        }
        use prost::Message;
        let frame = pb::PeerFrame::decode(request.frame.as_slice())
            .map_err(|_| Status::invalid_argument("frame: malformed"))?;
        let room = match &frame.frame {
            Some(pb::peer_frame::Frame::Ack(a)) => a.room.parse::<BareJid>(),
            Some(pb::peer_frame::Frame::Resync(r)) => r.room.parse::<BareJid>(),
            Some(pb::peer_frame::Frame::Report(r)) => r.room.parse::<BareJid>(),
            // A stanza the child intercepted while its own stream is down:
            // for the room it is sent to (the master checks its sender).
            Some(pb::peer_frame::Frame::Forward(f)) => forward_room(&f.stanza)
                .ok_or_else(|| Status::invalid_argument("frame: a stanza not to a room"))?
                .parse::<BareJid>(),
            _ => {
                return Err(Status::invalid_argument(
                    "frame: only an ack, a resync, a report or a forward",
                ));
            }
        }
        .map_err(|_| Status::invalid_argument("room: malformed"))?;
        // A child's frames go up through its parent; an orphan's report
        // that it cannot use its parent, through any node of the room's
        // tree (the master checks the child's seal on either).
        let report = matches!(frame.frame, Some(pb::peer_frame::Frame::Report(_)));
        let master = self
            .lock()
            .get(&room)
            .filter(|p| report || p.children.contains(child))
            .and_then(|p| p.master.clone())
            .ok_or_else(|| Status::failed_precondition("not a child of this node in that room"))?;
        let up = self
            .upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&master)
            .cloned()
            .ok_or_else(|| Status::unavailable("no stream to the master"))?;
        debug!(room = %room, %child, "tree: carrying a child's frame up");
        let relayed = pb::peer_frame::Frame::Relayed(pb::RelayedFrame {
            from: child.to_owned(),
            frame: request.frame.clone(),
            counter: request.counter,
            mac: request.mac.clone(),
        });
        if up.send(relayed).await {
            self.metrics.carried_up(&room).inc();
            Ok(())
        } else {
            Err(Status::unavailable("no stream to the master"))
        }
    }

    /// A child subscribes: checked, then what it misses from the window.
    fn subscribe(
        &self,
        request: &pb::SubscribeRequest,
        names: Option<&[String]>,
    ) -> Result<mpsc::Receiver<Result<pb::RelayBatch, Status>>, Status> {
        let child = request.child_jid.as_str();
        if self.tls.is_some() && !names.is_some_and(|n| tls::cert_matches_jid(n, child)) {
            warn!(%child, "tree: subscription refused: certificate not valid for the child");
            return Err(Status::permission_denied(
                "child_jid: not a name of the client's certificate",
            ));
        }
        let room = request
            .room
            .parse::<BareJid>()
            .map_err(|_| Status::invalid_argument("room: malformed"))?;
        let mut rooms = self.lock();
        let place = rooms
            .get_mut(&room)
            .filter(|p| p.children.contains(child))
            .ok_or_else(|| Status::failed_precondition("not a child of this node in that room"))?;
        let (tx, rx) = mpsc::channel(CHILD_QUEUE);
        let catch_up = place.window.catch_up(request.after);
        if catch_up.gap {
            // Its slave finds the gap and asks the master for a resync.
            info!(room = %room, %child, after = request.after, "tree: the window no longer holds what the child misses");
        }
        let events: Vec<pb::SignedEvent> = catch_up.events.iter().map(|e| (**e).clone()).collect();
        if !events.is_empty() {
            self.metrics.caught_up(&room).inc_by(events.len() as u64);
            let _ = tx.try_send(Ok(pb::RelayBatch { events }));
        }
        info!(room = %room, %child, after = request.after, "tree: child subscribed");
        place.subscribers.insert(child.to_owned(), tx);
        Ok(rx)
    }
}

#[tonic::async_trait]
impl TreeRelay for Hub {
    type SubscribeStream = ReceiverStream<Result<pb::RelayBatch, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let names = match &self.tls {
            Some(_) => Some(tls::client_names(&request).map_err(|e| {
                warn!(error = %e, "tree: subscription without a usable client certificate");
                Status::unauthenticated("a client certificate is required")
            })?),
            None => None,
        };
        let rx = Hub::subscribe(self, request.get_ref(), names.as_deref())?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportReply>, Status> {
        let names = match &self.tls {
            Some(_) => Some(
                tls::client_names(&request)
                    .map_err(|_| Status::unauthenticated("a client certificate is required"))?,
            ),
            None => None,
        };
        self.carry_up(request.get_ref(), names.as_deref()).await?;
        Ok(Response::new(pb::ReportReply {}))
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingReply>, Status> {
        let names = match &self.tls {
            Some(_) => Some(
                tls::client_names(&request)
                    .map_err(|_| Status::unauthenticated("a client certificate is required"))?,
            ),
            None => None,
        };
        Ok(Response::new(
            self.pong(request.get_ref(), names.as_deref())?,
        ))
    }
}

/// The parent an orphan's frames go to: the one that accepted it.
type Reporter = TreeRelayClient<tonic::transport::Channel>;

/// Carries an orphan's frames up to the parent that accepted it: in order,
/// the stanzas its room's users sent ([`Unsent`]), then its latest
/// acknowledgement (only the latest matters).
async fn report(
    unsent: Unsent,
    mut frames: mpsc::Receiver<Result<pb::PeerFrame, Status>>,
    parent: Arc<Mutex<Option<Reporter>>>,
) {
    let mut pending: Option<pb::PeerFrame> = None;
    let mut tick = tokio::time::interval(RETRY_MIN * 2);
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => pending = Some(frame),
                _ => return,
            },
            () = unsent.more.notified() => {}
            _ = tick.tick() => {}
        }
        let client = parent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(mut client) = client else {
            continue;
        };
        // Stanzas first, in the order the users sent them; a failure
        // leaves the rest, and the acknowledgement (sealed after them), for
        // the next try.
        let mut carried = true;
        while let Some(request) = unsent.front() {
            let counter = request.counter;
            match tokio::time::timeout(REPORT_TIMEOUT, client.report(request)).await {
                Ok(Ok(_)) => unsent.carried(counter),
                failed => {
                    debug!(?failed, "tree: the parent did not carry a stanza up");
                    carried = false;
                    break;
                }
            }
        }
        if !carried {
            continue;
        }
        let Some(frame) = pending.take() else {
            continue;
        };
        let request = unsent.seal(&frame);
        match tokio::time::timeout(REPORT_TIMEOUT, client.report(request)).await {
            Ok(Ok(_)) => {}
            failed => {
                debug!(?failed, "tree: the parent did not carry a frame up");
                pending = Some(frame);
            }
        }
    }
}

/// Seals an orphan's frames for the master (`dmuc_protocol::signing`),
/// with counters that grow across restarts too (the clock's microseconds,
/// or one more than the last). One counter for all its frames; the master
/// orders its `TreeReport`s (which may go another way) apart from the rest.
#[derive(Debug)]
struct Sealer {
    me: BareJid,
    key: ReportKey,
    counter: u64,
}

impl Sealer {
    fn new(me: BareJid, key: ReportKey) -> Sealer {
        Sealer {
            me,
            key,
            counter: 0,
        }
    }

    fn seal(&mut self, frame: &pb::PeerFrame) -> pb::ReportRequest {
        use prost::Message;
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.counter = (self.counter + 1).max(micros);
        let frame = frame.encode_to_vec();
        pb::ReportRequest {
            child_jid: self.me.to_string(),
            mac: self.key.seal(self.counter, &frame),
            counter: self.counter,
            frame,
        }
    }
}

/// The room (bare `to`) of a forwarded stanza, if it names one.
fn forward_room(stanza: &str) -> Option<String> {
    let el = stanza.parse::<minidom::Element>().ok()?;
    let to = el.attr("to")?.parse::<jid::Jid>().ok()?.to_bare();
    to.node().is_some().then(|| to.to_string())
}

/// Window events (checked when they came) as the slave takes them.
fn for_slave(events: Vec<Arc<pb::SignedEvent>>) -> Vec<(RoomEvent, Vec<u8>)> {
    events
        .into_iter()
        .filter_map(|signed| {
            let event = dmuc_protocol::signing::decode(&signed).ok()?;
            Some((RoomEvent::try_from(event).ok()?, signed.event.clone()))
        })
        .collect()
}

/// Hands an orphan what its parent relays, after publishing it to this
/// node's own children.
struct Feeder {
    hub: Hub,
    room: BareJid,
    slave: SlaveSender,
}

impl Feeder {
    async fn run(self, mut fed: mpsc::Receiver<Relayed>) {
        while let Some(relayed) = fed.recv().await {
            if !self
                .hub
                .publish(&self.room, relayed.event.seq, relayed.signed.clone())
            {
                continue;
            }
            if !self.slave.send(relayed.event, relayed.encoded).await {
                return;
            }
        }
    }
}

/// A child's task: follows its parent in one room until replaced.
struct Following {
    hub: Hub,
    room: BareJid,
    /// Parents to try, in order: JID and endpoint.
    candidates: Vec<(String, String)>,
    verifier: Verifier,
    feed: mpsc::Sender<Relayed>,
    /// An orphan's: where to leave the parent that accepted it, and where
    /// to give it up.
    orphaned: Option<Orphaned>,
    /// The last subscription was accepted (whatever ended it).
    subscribed: AtomicBool,
}

/// Why a subscription to a parent failed.
struct Failed {
    /// The parent answered, and refused this node as its child.
    refused: bool,
    reason: String,
}

impl<T: Into<String>> From<T> for Failed {
    fn from(reason: T) -> Failed {
        Failed {
            refused: false,
            reason: reason.into(),
        }
    }
}

impl Following {
    /// The last event this node has in the room.
    fn last(&self) -> u64 {
        self.hub
            .lock()
            .get(&self.room)
            .map_or(0, |p| p.window.last())
    }

    /// Whether an event the parent relays is not had yet.
    fn wants(&self, seq: u64) -> bool {
        self.hub
            .lock()
            .get(&self.room)
            .is_none_or(|p| p.window.wants(seq))
    }

    async fn run(self) {
        let mut wait = RETRY_MIN;
        // Since when the parent has given nothing, and whether the master
        // was told (once per parent: it assigns another, or this one again).
        let mut failing: Option<tokio::time::Instant> = None;
        let mut reported = false;
        // The last parent that accepted this node (an orphan is not told
        // which the master chose: it is the one that accepts it).
        let mut followed: Option<&str> = None;
        loop {
            for (parent, endpoint) in &self.candidates {
                let mut refused = false;
                let result = self.once(parent, endpoint).await;
                if self.subscribed.swap(false, Ordering::Relaxed) {
                    // It worked for a while: a new failure starts now.
                    failing = None;
                    reported = false;
                    followed = Some(parent);
                }
                match result {
                    Ok(got) => {
                        if got {
                            wait = RETRY_MIN;
                        }
                        info!(%parent, "tree: parent's stream ended");
                    }
                    Err(failed) => {
                        refused = failed.refused;
                        debug!(%parent, reason = %failed.reason, "tree: cannot follow the parent");
                    }
                }
                let since = *failing.get_or_insert_with(tokio::time::Instant::now);
                if !reported && since.elapsed() >= REPORT_AFTER {
                    // The master assigns another parent. It hears it on
                    // this node's own stream, or, for an orphan, through
                    // any other peerhost of the room's tree.
                    reported = match (&self.orphaned, followed) {
                        (None, _) => self.report(parent, refused).await,
                        (Some(orphaned), Some(followed)) => {
                            let went = self.report_elsewhere(orphaned, followed).await;
                            if went {
                                // The master moves it: try again soon, and
                                // give the new parent its time.
                                wait = RETRY_MIN;
                                failing = Some(tokio::time::Instant::now());
                            }
                            went
                        }
                        (Some(_), None) => false,
                    };
                }
                if let Some(orphaned) = &self.orphaned {
                    *orphaned
                        .reporter
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                    if let Some(lost) = &orphaned.lost
                        && since.elapsed() >= ORPHAN_PATIENCE
                    {
                        // No parent, no master: the slave splits.
                        let orphan = self
                            .hub
                            .lock()
                            .get_mut(&self.room)
                            .and_then(|p| p.orphan.take());
                        if let Some(orphan) = orphan {
                            info!("tree: no parent accepts the slave: it is given up");
                            let _ = lost.send(orphan.returned(self.room.clone()));
                        }
                        return;
                    }
                }
                if self.feed.is_closed() {
                    return;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// Tells the master, on this node's own stream, that it cannot use
    /// `parent` (`TreeReport`); whether it went.
    async fn report(&self, parent: &str, refused: bool) -> bool {
        let master = self
            .hub
            .lock()
            .get(&self.room)
            .and_then(|p| p.master.clone());
        let up = master.and_then(|m| {
            self.hub
                .upstreams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&m)
                .cloned()
        });
        let Some(up) = up else { return false };
        info!(%parent, refused, "tree: cannot use the parent: telling the master");
        up.send(self.unusable(parent, refused)).await
    }

    /// An orphan tells the master that it cannot use `parent`: sealed, so
    /// that any other peerhost of the room's tree that answers may carry
    /// it up (`TreeRelay.Report`); whether one did.
    async fn report_elsewhere(&self, orphaned: &Orphaned, parent: &str) -> bool {
        let frame = pb::PeerFrame {
            frame: Some(self.unusable(parent, false)),
        };
        let request = orphaned.unsent.seal(&frame);
        for (other, endpoint) in self.candidates.iter().filter(|(jid, _)| jid != parent) {
            let carried = match self.connect(other, endpoint).await {
                Ok(mut client) => client
                    .report(request.clone())
                    .await
                    .map_err(|s| s.to_string()),
                Err(failed) => Err(failed.reason),
            };
            match carried {
                Ok(_) => {
                    info!(%parent, via = %other, "tree: cannot reach the parent: told the master through another peerhost");
                    return true;
                }
                Err(reason) => {
                    debug!(via = %other, %reason, "tree: the peerhost did not carry the report up")
                }
            }
        }
        false
    }

    /// This node cannot use `parent` (`TreeReport`).
    fn unusable(&self, parent: &str, refused: bool) -> pb::peer_frame::Frame {
        let why = if refused {
            pb::Unusable::Refused
        } else {
            pb::Unusable::Unreachable
        };
        pb::peer_frame::Frame::Report(pb::TreeReport {
            room: self.room.to_string(),
            parent_jid: parent.to_owned(),
            why: why as i32,
            have: self.last(),
        })
    }

    /// A client of `peer`'s `TreeRelay` at `endpoint` (mutual TLS, unless
    /// this peerhost runs without).
    async fn connect(&self, peer: &str, endpoint: &str) -> Result<Reporter, Failed> {
        if endpoint.is_empty() {
            return Err("no endpoint for the peerhost".into());
        }
        let endpoint = self.hub.endpoint(peer, endpoint)?;
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        Ok(TreeRelayClient::new(channel).max_decoding_message_size(MAX_BATCH_BYTES))
    }

    /// One subscription; whether it got any event.
    async fn once(&self, parent: &str, endpoint: &str) -> Result<bool, Failed> {
        let mut client = self.connect(parent, endpoint).await?;
        let after = self.last();
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                room: self.room.to_string(),
                after,
                child_jid: self.hub.me.to_string(),
            })
            .await
            .map_err(|s| Failed {
                refused: matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::FailedPrecondition
                ),
                reason: s.to_string(),
            })?
            .into_inner();
        info!(after, %parent, "tree: following the parent");
        self.subscribed.store(true, Ordering::Relaxed);
        if let Some(orphaned) = &self.orphaned {
            *orphaned
                .reporter
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(client.clone());
            self.hub.metrics.reparents(&self.room).inc();
        }
        let mut got = false;
        while let Some(batch) = stream.message().await.map_err(|s| s.to_string())? {
            for signed in batch.events {
                let event = self.verifier.open(&signed).map_err(|e| e.to_string())?;
                let encoded = signed.event.clone();
                let event = RoomEvent::try_from(event).map_err(|e| e.to_string())?;
                if event.room != self.room {
                    return Err(format!("an event of {} from the parent", event.room).into());
                }
                got = true;
                if !self.wants(event.seq) {
                    continue;
                }
                let relayed = Relayed {
                    event,
                    encoded,
                    signed: Arc::new(signed),
                };
                if self.feed.send(relayed).await.is_err() {
                    return Ok(got);
                }
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a signed event (the window does not check signatures).
    fn signed(seq: u64) -> Arc<pb::SignedEvent> {
        Arc::new(pb::SignedEvent {
            event: vec![seq as u8],
            signature: Vec::new(),
        })
    }

    #[test]
    fn older_events_sent_for_new_children_are_kept_in_order() {
        let hub = Hub::new("muc-peer.b.test".parse().unwrap(), None, HashMap::new());
        let room: BareJid = "r@conference.a.test".parse().unwrap();
        hub.started(&room, 4);
        assert!(hub.publish(&room, 5, signed(5)));
        assert!(hub.publish(&room, 6, signed(6)));
        // The master gives this node a child that has events up to 2 only,
        // and sends what follows, signed: 3 and 4 are new to the window,
        // 5 and 6 are duplicates.
        for seq in 3..=6 {
            assert!(!hub.publish(&room, seq, signed(seq)), "{seq}");
        }
        assert_eq!(hub.lock()[&room].window.duplicates(), 2);
        let child = "muc-peer.c.test";
        hub.lock()
            .get_mut(&room)
            .unwrap()
            .children
            .insert(child.into());
        let request = pb::SubscribeRequest {
            room: room.to_string(),
            after: 2,
            child_jid: child.into(),
        };
        let mut rx = hub.subscribe(&request, None).unwrap();
        let batch = rx.try_recv().unwrap().unwrap();
        let seqs: Vec<u8> = batch.events.iter().map(|e| e.event[0]).collect();
        assert_eq!(seqs, [3, 4, 5, 6]);
    }

    #[test]
    fn an_orphans_stanzas_wait_in_order_and_go_to_whoever_takes_it_back() {
        use dmuc_protocol::signing::{ReportKeys, Sealed};
        let master = ReportKeys::generate();
        let me = "muc-peer.c.test";
        let key = ReportKey::new(&master.for_peer(me)).unwrap();
        let unsent = Unsent::new(Sealer::new(me.parse().unwrap(), key));
        let said = |body: &str| -> minidom::Element {
            format!(
                "<message xmlns='jabber:client' type='groupchat' from='carol@c.test/1' \
                 to='r@conference.a.test'><body>{body}</body></message>"
            )
            .parse()
            .unwrap()
        };
        for body in ["one", "two", "three"] {
            assert!(unsent.forward(&said(body)));
        }
        // The parent carried the first up.
        let first = unsent.front().unwrap();
        unsent.carried(first.counter);
        // Given back: the rest, in order, sealed as they came.
        let left = unsent.take();
        let bodies: Vec<_> = forwarded(&left)
            .iter()
            .map(|s| s.get_child("body", "jabber:client").unwrap().text())
            .collect();
        assert_eq!(bodies, ["two", "three"]);
        assert!(first.counter < left[0].counter && left[0].counter < left[1].counter);
        for request in &left {
            let sealed = Sealed {
                frame: &request.frame,
                counter: request.counter,
                mac: &request.mac,
            };
            master.check(me, &sealed).unwrap();
        }
        // Nothing is queued after, and nothing is handed over twice.
        assert!(!unsent.forward(&said("four")));
        assert!(unsent.take().is_empty());
    }

    #[test]
    fn an_orphans_frames_are_sealed_for_the_master_with_growing_counters() {
        use dmuc_protocol::signing::{ReportKeys, Sealed};
        let master = ReportKeys::generate();
        let me = "muc-peer.c.test";
        let key = ReportKey::new(&master.for_peer(me)).unwrap();
        let mut sealer = Sealer::new(me.parse().unwrap(), key);
        let ack = |seq| pb::PeerFrame {
            frame: Some(pb::peer_frame::Frame::Ack(pb::Ack {
                room: "r@conference.a.test".into(),
                seq,
            })),
        };
        let sealed: Vec<pb::ReportRequest> = (1..=3).map(|seq| sealer.seal(&ack(seq))).collect();
        assert!(sealed.windows(2).all(|w| w[0].counter < w[1].counter));
        for request in &sealed {
            assert_eq!(request.child_jid, me);
            let sealed = Sealed {
                frame: &request.frame,
                counter: request.counter,
                mac: &request.mac,
            };
            master.check(me, &sealed).unwrap();
            // Not as another peerhost's.
            assert!(master.check("muc-peer.b.test", &sealed).is_err());
        }
    }

    #[tokio::test]
    async fn a_childs_forward_is_carried_up_for_its_room_only() {
        use prost::Message;
        let metrics = Metrics::new();
        let hub = Hub::new("muc-peer.b.test".parse().unwrap(), None, HashMap::new())
            .with_metrics(&metrics);
        let master: BareJid = "conference.a.test".parse().unwrap();
        let room: BareJid = "r@conference.a.test".parse().unwrap();
        let child = "muc-peer.c.test";
        {
            let mut rooms = hub.lock();
            let place = rooms.entry(room.clone()).or_default();
            place.master = Some(master.clone());
            place.children.insert(child.into());
        }
        let (frames, mut up) = mpsc::channel(4);
        hub.stream_up(&master, Upstream::to_parent(frames));
        let forward = |to: &str| pb::ReportRequest {
            child_jid: child.into(),
            frame: pb::PeerFrame {
                frame: Some(pb::peer_frame::Frame::Forward(pb::Forward {
                    stanza: format!(
                        "<message xmlns='jabber:client' from='carol@c.test/1' to='{to}'/>"
                    ),
                })),
            }
            .encode_to_vec(),
            counter: 7,
            mac: vec![1; 32],
        };
        let request = forward("r@conference.a.test");
        hub.carry_up(&request, None).await.unwrap();
        let Some(Ok(pb::PeerFrame {
            frame: Some(pb::peer_frame::Frame::Relayed(relayed)),
        })) = up.recv().await
        else {
            panic!("not carried up as a relayed frame");
        };
        assert_eq!(relayed.from, child);
        // As the child sealed it: only the master can check that.
        assert_eq!(relayed.frame, request.frame);
        assert_eq!((relayed.counter, relayed.mac), (7, vec![1; 32]));
        // Not to a room of which the child is a child here; not to a room.
        let elsewhere = forward("s@conference.a.test");
        assert!(hub.carry_up(&elsewhere, None).await.is_err());
        let service = forward("conference.a.test");
        assert!(hub.carry_up(&service, None).await.is_err());
        assert!(up.try_recv().is_err());
        // Counted for the room, once.
        let carried = "dmuc_relay_carried_up_total{room=\"r@conference.a.test\"} 1";
        assert!(metrics.render().lines().any(|l| l == carried));
    }

    /// Event `seq` of `room`, encoded as the master signs it (unsigned:
    /// the window does not check signatures).
    fn encoded(room: &BareJid, seq: u64) -> Arc<pb::SignedEvent> {
        use prost::Message;
        let event = RoomEvent {
            room: room.clone(),
            seq,
            now: dmuc_room::Timestamp(seq as i64),
            input: dmuc_room::testing::join("alice@a.test/1", "alice"),
        };
        Arc::new(pb::SignedEvent {
            event: pb::Event::from(&event).encode_to_vec(),
            signature: Vec::new(),
        })
    }

    #[test]
    fn a_resumed_slave_is_handed_what_the_node_got_while_it_was_stalled() {
        let hub = Hub::new("muc-peer.b.test".parse().unwrap(), None, HashMap::new());
        let room: BareJid = "r@conference.a.test".parse().unwrap();
        assert!(hub.started(&room, 1).is_empty());
        // The slave stalls at 1 (3 came first); the parent relays 4 too.
        for seq in [3, 4] {
            assert!(hub.publish(&room, seq, encoded(&room, seq)));
        }
        assert!(hub.resumed(&room, 2).is_empty());
        // The master resumes it with 2 only: 3 and 4 follow from the window.
        hub.resume(&room);
        assert!(!hub.publish(&room, 2, encoded(&room, 2)), "backfilled");
        let handed: Vec<u64> = hub.resumed(&room, 2).iter().map(|(e, _)| e.seq).collect();
        assert_eq!(handed, [3, 4]);
        assert!(hub.resumed(&room, 3).is_empty());
        // A new slave after 3 is handed 4.
        let handed: Vec<u64> = hub.started(&room, 3).iter().map(|(e, _)| e.seq).collect();
        assert_eq!(handed, [4]);
    }
}
