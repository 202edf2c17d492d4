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
//! What a relay gets is only what the master signed: a child checks every
//! event against the master's key (which it got on its own stream from the
//! master), so a parent can delay or drop events but not forge them. Its
//! slave drops duplicates (by sequence number) and asks the master for a
//! resync on a gap, as it does for the master's own stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dmuc_component::metrics::{Counter, Metrics};
use dmuc_protocol::pb::tree_relay_client::TreeRelayClient;
use dmuc_protocol::pb::tree_relay_server::TreeRelay;
use dmuc_protocol::pb::{self};
use dmuc_protocol::signing::Verifier;
use dmuc_protocol::tls::{self, LoadedTls};
use dmuc_protocol::{ProtocolError, RoomEvent};
use jid::BareJid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

/// Events a parent keeps per room for its children's (re)subscriptions.
const WINDOW: usize = 1024;
/// Batches queued for a child before it is dropped (it subscribes again).
const CHILD_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait before following a parent again.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
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
    metrics: HubMetrics,
}

/// What the relay counts.
#[derive(Debug, Clone, Default)]
struct HubMetrics {
    duplicates: Counter,
    caught_up: Counter,
    reparents: Counter,
}

/// One room's place in its tree.
#[derive(Debug, Default)]
struct Place {
    /// The master the room belongs to (its stream's).
    master: Option<BareJid>,
    /// The peerhosts the master named as this node's children.
    children: HashSet<String>,
    /// The parent followed, if it is a peerhost, and the task doing it.
    parent: Option<(String, Follow)>,
    /// The last event this node has (from any path).
    last: Arc<AtomicU64>,
    /// Recent events, in the order published.
    window: VecDeque<(u64, Arc<pb::SignedEvent>)>,
    /// The children subscribed now.
    subscribers: HashMap<String, mpsc::Sender<Result<pb::RelayBatch, Status>>>,
    /// Events dropped as already had.
    duplicates: u64,
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
            metrics: HubMetrics::default(),
        }
    }

    /// Counts in `metrics` (`dmuc_relay_*`).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Hub {
        self.metrics = HubMetrics {
            duplicates: metrics.counter(
                "dmuc_relay_duplicates_total",
                "Events dropped by the relay as already had",
            ),
            caught_up: metrics.counter(
                "dmuc_relay_caught_up_total",
                "Events sent to children from the window when they subscribed",
            ),
            reparents: metrics.counter(
                "dmuc_relay_reparents_total",
                "Times a slave was given another parent",
            ),
        };
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
        place.children = assign.children.into_iter().collect();
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
            self.metrics.reparents.inc();
            info!(room = %room, "tree: reparented");
        }
        place.parent = parent.map(|parent_jid| {
            let endpoint = self
                .routes
                .get(&parent_jid)
                .cloned()
                .unwrap_or(assign.parent_endpoint);
            let follow = Following {
                hub: self.clone(),
                room: room.clone(),
                parent: parent_jid.clone(),
                endpoint,
                verifier,
                last: place.last.clone(),
                feed,
            };
            let span = info_span!("follow", room = %room, parent = %parent_jid);
            (
                parent_jid,
                Follow(tokio::spawn(follow.run().instrument(span))),
            )
        });
        Ok(())
    }

    /// `room`'s slave starts after event `seq` (a snapshot).
    pub fn started(&self, room: &BareJid, seq: u64) {
        let mut rooms = self.lock();
        let place = rooms.entry(room.clone()).or_default();
        place.last.fetch_max(seq, Ordering::Relaxed);
    }

    /// This node has event `seq` of `room`, signed by the master: keep it
    /// for children that subscribe later and send it to those subscribed.
    /// Returns whether it is new (not had already by any path).
    pub fn publish(&self, room: &BareJid, seq: u64, signed: Arc<pb::SignedEvent>) -> bool {
        let mut rooms = self.lock();
        let Some(place) = rooms.get_mut(room) else {
            return true;
        };
        let newest = place.window.back().map_or(0, |(s, _)| *s);
        if seq <= newest {
            place.duplicates += 1;
            self.metrics.duplicates.inc();
            debug!(room = %room, seq, duplicates = place.duplicates, "tree: duplicate dropped");
            return false;
        }
        place.last.fetch_max(seq, Ordering::Relaxed);
        place.window.push_back((seq, signed.clone()));
        if place.window.len() > WINDOW {
            place.window.pop_front();
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
    /// assigns them again).
    pub fn end_stream(&self, master: &BareJid) {
        self.lock()
            .retain(|_, place| place.master.as_ref() != Some(master));
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
        let events: Vec<pb::SignedEvent> = place
            .window
            .iter()
            .filter(|(seq, _)| *seq > request.after)
            .map(|(_, e)| (**e).clone())
            .collect();
        if !events.is_empty() {
            self.metrics.caught_up.inc_by(events.len() as u64);
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
}

/// A child's task: follows its parent in one room until replaced.
struct Following {
    hub: Hub,
    room: BareJid,
    parent: String,
    endpoint: String,
    verifier: Verifier,
    last: Arc<AtomicU64>,
    feed: mpsc::Sender<Relayed>,
}

impl Following {
    async fn run(self) {
        let mut wait = RETRY_MIN;
        loop {
            match self.once().await {
                Ok(got) => {
                    if got {
                        wait = RETRY_MIN;
                    }
                    info!("tree: parent's stream ended");
                }
                Err(reason) => debug!(%reason, "tree: cannot follow the parent"),
            }
            if self.feed.is_closed() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// One subscription; whether it got any event.
    async fn once(&self) -> Result<bool, String> {
        if self.endpoint.is_empty() {
            return Err("no endpoint for the parent".into());
        }
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if self.endpoint.starts_with("https://") {
            let Some(tls) = &self.hub.tls else {
                return Err("https parent, but no [peering] tls_cert".into());
            };
            let config = tls::client_config(tls, &self.parent).map_err(|e| e.to_string())?;
            endpoint = endpoint.tls_config(config).map_err(|e| e.to_string())?;
        } else if self.hub.tls.is_some() {
            return Err("plaintext parent refused: this peerhost uses TLS".into());
        }
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut client = TreeRelayClient::new(channel).max_decoding_message_size(MAX_BATCH_BYTES);
        let after = self.last.load(Ordering::Relaxed);
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                room: self.room.to_string(),
                after,
                child_jid: self.hub.me.to_string(),
            })
            .await
            .map_err(|s| s.to_string())?
            .into_inner();
        info!(after, "tree: following the parent");
        let mut got = false;
        while let Some(batch) = stream.message().await.map_err(|s| s.to_string())? {
            for signed in batch.events {
                let event = self.verifier.open(&signed).map_err(|e| e.to_string())?;
                let encoded = signed.event.clone();
                let event = RoomEvent::try_from(event).map_err(|e| e.to_string())?;
                if event.room != self.room {
                    return Err(format!("an event of {} from the parent", event.room));
                }
                got = true;
                if event.seq <= self.last.load(Ordering::Relaxed) {
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
