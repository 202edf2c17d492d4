//! The gRPC side: [`PeeringService`] serves `dmuc.peering.v1.Peering`, one
//! task per `Replicate` stream, holding that stream's slaves.
//!
//! ```text
//!  master ══ MasterFrame ══▶ stream task ── Hello ─▶ negotiate ─▶ Refused + end
//!                               │   └─▶ supersede the master's older stream; take back its split
//!                               │       slaves (they heal), load its stored slaves (Dormant)
//!                               │       ─▶ Welcome{resumable: room, seq each} ─▶ Submit(merge…) of the splits
//!                               │ CreateSlave ─▶ Slave::create (replaces the room's slave or dormant state)
//!                               │ Resume      ─▶ Slave::resume (dormant) | resume_here (stalled) | Resync{0}
//!                               │ EventBatch  ─▶ each event to its room's slave, in order
//!                               │ DestroySlave ─▶ Slave::discard, and the stored state deleted
//!                               │ SplitMerged ─▶ the split's stored log deleted, once all of it is merged
//!                               │ Keepalive   ─▶ echoed (if agreed)
//!  master ◀═ PeerFrame ═══ frames ◀── Ack / Resync from the slaves
//! ```
//!
//! A malformed frame ends the stream with the [`ProtocolError`]'s status.
//! When the stream ends (the master closed it, the connection broke, or the
//! peerhost shuts down) its slaves finish what they were given, save their
//! state and stop: the master's next stream resumes them. Except when this
//! domain's traffic to the master is intercepted and the peerhost is not
//! shutting down: then the slaves go on, split, under the master's
//! [`Shadow`] router until its next stream takes them back.
//!
//! One stream per master: the rooms of a master are stored under its
//! domain, and a new stream of the same master (say after a connection
//! broke without the peerhost noticing) first ends the older one and waits
//! for its slaves to save, so that two slaves never write the same room.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dmuc_component::LinkHandle;
use dmuc_protocol::pb::peering_server::Peering;
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::tls;
use dmuc_protocol::{ProtocolError, RoomEvent, SUPPORTED_VERSIONS, SlaveStart, feature, negotiate};
use dmuc_room::{Input, Merge, Timestamp};
use jid::BareJid;
use minidom::Element;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::relay::{Hub, Relayed, Returned, Unsent};
use crate::shadow::{Shadow, SplitMetrics};
use crate::slave::{Dormant, HealedSplit, Outlets, Slave};
use crate::store::Store;
use dmuc_component::metrics::Metrics;

/// Frames waiting for the master to read them.
const OUTBOUND: usize = 256;

type Frames = Pin<Box<dyn Stream<Item = Result<pb::PeerFrame, Status>> + Send>>;

/// The `Peering` service of one peerhost.
#[derive(Debug, Clone)]
pub struct PeeringService {
    /// The peerhost's component JID, announced in `Welcome`.
    peer_jid: BareJid,
    /// The domain whose users the slaves serve.
    domain: BareJid,
    link: LinkHandle,
    store: Store,
    shutdown: CancellationToken,
    streams: TaskTracker,
    masters: Masters,
    policy: Arc<MasterPolicy>,
    /// The routers of the masters whose service this domain's traffic is
    /// intercepted for.
    shadows: Arc<HashMap<BareJid, Shadow>>,
    /// The local server, when it expands XEP-0033 multicasts for slaves.
    multicast: watch::Receiver<Option<BareJid>>,
    /// The slaves' places in their rooms' spanning trees.
    relay: Hub,
}

/// Which masters the peerhost serves.
#[derive(Debug, Clone, Default)]
pub struct MasterPolicy {
    /// Streams come over mutual TLS: a master may only say, in `Hello`, a
    /// JID its certificate is valid for.
    pub tls: bool,
    /// The masters served; empty: any (with TLS: any with a valid
    /// certificate).
    pub allowed: Vec<BareJid>,
}

impl MasterPolicy {
    /// Why `master` (whose certificate holds `names`, with TLS) is not
    /// served, if it is not.
    pub fn refuses(&self, master: &BareJid, names: Option<&[String]>) -> Option<&'static str> {
        if self.tls && !names.is_some_and(|n| tls::cert_matches_jid(n, master.as_str())) {
            return Some("hello.master_jid: not a name of the master's certificate");
        }
        if !self.allowed.is_empty() && !self.allowed.contains(master) {
            return Some("hello.master_jid: not a master this peerhost serves");
        }
        None
    }
}

impl PeeringService {
    pub fn new(
        peer_jid: BareJid,
        domain: BareJid,
        link: LinkHandle,
        store: Store,
        policy: MasterPolicy,
        shutdown: CancellationToken,
    ) -> Self {
        PeeringService {
            relay: Hub::new(peer_jid.clone(), None, HashMap::new()),
            shadows: Arc::new(HashMap::new()),
            multicast: watch::channel(None).1,
            policy: Arc::new(policy),
            peer_jid,
            domain,
            link,
            store,
            shutdown,
            streams: TaskTracker::new(),
            masters: Masters::default(),
        }
    }

    /// Lets slaves multicast through the server `multicast` names.
    pub fn with_multicast(mut self, multicast: watch::Receiver<Option<BareJid>>) -> Self {
        self.multicast = multicast;
        self
    }

    /// Lets slaves relay to each other through `hub` (spanning trees).
    pub fn with_relay(mut self, hub: Hub) -> Self {
        self.relay = hub;
        self
    }

    /// Intercepts this domain's traffic for these masters' services
    /// (`[[shadow]]`): says so in `Welcome`, and starts their routers
    /// (which bring back the splits stored for them). Call after
    /// [`Self::with_multicast`].
    pub fn with_intercepts(mut self, masters: Vec<BareJid>, metrics: &Metrics) -> Self {
        let shadows = masters
            .into_iter()
            .map(|master| {
                let shadow = Shadow::spawn(
                    master.clone(),
                    self.domain.clone(),
                    self.store.clone(),
                    self.outlets(Upstream::detached()),
                    SplitMetrics::register(metrics, &master),
                    self.shutdown.clone(),
                );
                (master, shadow)
            })
            .collect();
        self.shadows = Arc::new(shadows);
        self
    }

    /// Routes a stanza one of this domain's users addressed to `master`'s
    /// service (intercepted): up the master's stream, or to the room's
    /// split slave while the stream is down.
    pub async fn intercepted(&self, master: &BareJid, stanza: Element) {
        if let Some(shadow) = self.shadows.get(master) {
            shadow.stanza(stanza).await;
        }
    }

    /// Where a slave sends its stanzas, frames and state.
    fn outlets(&self, up: Upstream) -> Outlets {
        Outlets {
            link: self.link.clone(),
            up,
            store: self.store.writer().clone(),
            multicast: self.multicast.clone(),
        }
    }

    /// The stream tasks, to wait for on shutdown.
    pub fn streams(&self) -> TaskTracker {
        self.streams.clone()
    }
}

#[tonic::async_trait]
impl Peering for PeeringService {
    type ReplicateStream = Frames;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::MasterFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let remote = request.remote_addr();
        let names = if self.policy.tls {
            match tls::client_names(&request) {
                Ok(names) => Some(names),
                Err(e) => {
                    warn!(remote = ?remote, error = %e, "stream refused: no usable client certificate");
                    return Err(Status::unauthenticated("a client certificate is required"));
                }
            }
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let span = info_span!("stream", remote = ?remote, master = tracing::field::Empty);
        self.streams
            .spawn(serve(self.clone(), request.into_inner(), names, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What a slave may tell the master, on its stream.
#[derive(Debug, Clone)]
pub struct Upstream {
    frames: mpsc::Sender<Result<pb::PeerFrame, Status>>,
    /// Whether the "resync" feature was agreed.
    resync: bool,
    /// Whether the "keepalive-echo" feature was agreed.
    keepalive_echo: bool,
    /// Whether the "link-health" feature was agreed.
    link_health: bool,
    /// Ends the whole stream (a gap without "resync"); cancelled too once
    /// the stream is ending.
    end: CancellationToken,
}

impl Upstream {
    /// An upstream of no stream: every send fails (a slave restored split).
    pub fn detached() -> Upstream {
        let end = CancellationToken::new();
        end.cancel();
        Upstream {
            frames: mpsc::channel(1).0,
            resync: false,
            keepalive_echo: false,
            link_health: false,
            end,
        }
    }

    /// An upstream that hands frames to `frames` (an orphan's, carried up
    /// through its parent in the room's tree, see `crate::relay`).
    pub fn to_parent(frames: mpsc::Sender<Result<pb::PeerFrame, Status>>) -> Upstream {
        Upstream {
            frames,
            resync: true,
            keepalive_echo: false,
            link_health: false,
            end: CancellationToken::new(),
        }
    }

    /// Whether the master takes `LinkHealth` frames.
    pub fn link_health(&self) -> bool {
        self.link_health
    }

    /// Sends a frame; `false` once the stream is gone or ending. A master
    /// that has stopped reading cannot hold up a slave that is stopping.
    pub async fn send(&self, frame: peer_frame::Frame) -> bool {
        let frame = Ok(pb::PeerFrame { frame: Some(frame) });
        tokio::select! {
            biased;
            sent = self.frames.send(frame) => sent.is_ok(),
            () = self.end.cancelled() => false,
        }
    }

    /// Asks for a fresh `CreateSlave` of `room`, or a `Resume` from
    /// `have_seq`; without the "resync" feature, ends the stream as the
    /// protocol says.
    pub async fn resync(&self, room: &BareJid, have_seq: u64) {
        if self.resync {
            let frame = peer_frame::Frame::Resync(pb::Resync {
                room: room.to_string(),
                have_seq,
            });
            self.send(frame).await;
        } else {
            let status =
                Status::failed_precondition("a slave cannot continue and resync was not agreed");
            let _ = self.frames.send(Err(status)).await;
            self.end.cancel();
        }
    }
}

/// The stream serving each master, so that a newer stream of the same
/// master ends it first (see the module docs). The lock is held only to
/// swap an entry, never across an await.
#[derive(Debug, Clone, Default)]
struct Masters {
    serving: Arc<Mutex<HashMap<BareJid, Lease>>>,
    next_id: Arc<AtomicU64>,
}

#[derive(Debug, Clone)]
struct Lease {
    id: u64,
    /// Ends the stream holding the lease.
    end: CancellationToken,
    /// Cancelled once that stream's slaves have stopped (and queued their state).
    released: CancellationToken,
}

impl Masters {
    /// Makes the stream ending on `end` the one serving `master`: ends the
    /// stream that served it before and waits until its slaves have stopped.
    async fn take(&self, master: &BareJid, end: &CancellationToken) -> Held {
        let lease = Lease {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            end: end.clone(),
            released: CancellationToken::new(),
        };
        let previous = self
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(master.clone(), lease.clone());
        // A stream that supersedes this one while it waits waits in turn
        // for this hold, so streams of a master follow one another.
        let held = Held {
            masters: self.clone(),
            master: master.clone(),
            lease,
        };
        if let Some(previous) = previous {
            info!("a newer stream of the master: ending the older one");
            previous.end.cancel();
            previous.released.cancelled().await;
        }
        held
    }
}

/// A stream's hold on its master; dropped once its slaves have stopped.
#[derive(Debug)]
struct Held {
    masters: Masters,
    master: BareJid,
    lease: Lease,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut serving = self
            .masters
            .serving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if serving
            .get(&self.master)
            .is_some_and(|l| l.id == self.lease.id)
        {
            serving.remove(&self.master);
        }
        drop(serving);
        self.lease.released.cancel();
    }
}

/// Runs one stream to its end: a `Replicate` stream the master opened, or
/// an `Attach` stream this peerhost opened to the master (see
/// [`crate::uplink`]). `names`: what the master's certificate is valid for.
pub(crate) async fn serve(
    service: PeeringService,
    mut inbound: Streaming<pb::MasterFrame>,
    names: Option<Vec<String>>,
    frames: mpsc::Sender<Result<pb::PeerFrame, Status>>,
) {
    let end = service.shutdown.child_token();
    let Some((up, master, held, mut welcome)) =
        welcome(&service, &mut inbound, names.as_deref(), &frames, &end).await
    else {
        return;
    };
    // Events this peerhost's parents relay, in rooms' trees.
    let (relayed, mut from_parents) = mpsc::channel::<Relayed>(OUTBOUND);
    let shadow = service.shadows.get(&master).cloned();
    let mut stream = StreamState {
        relayed,
        service: &service,
        up,
        master,
        slaves: HashMap::new(),
        dormant: HashMap::new(),
        resync_asked: HashSet::new(),
        submitted: HashMap::new(),
    };
    // Slaves that were split (the master's traffic is intercepted) come
    // back first: they end their splits, which go to the master next.
    let mut healed = Vec::new();
    if let Some(shadow) = &shadow {
        healed = stream.stored_splits().await;
        let mut split = shadow.take().await;
        for (room, slave) in split.drain() {
            if let Some((seq, split)) = slave.reattach(stream.up.clone()).await {
                welcome.resumable.push(pb::Resumable {
                    room: room.to_string(),
                    seq,
                });
                healed.extend(split);
                stream.slaves.insert(room, slave);
            }
        }
    }
    // Slaves that went on through their rooms' trees while the stream was
    // down come back too.
    let mut unsent = Vec::new();
    for Returned {
        room,
        slave,
        unsent: stanzas,
    } in service.relay.adopt(&stream.master)
    {
        unsent.extend(stanzas);
        if let Some((seq, _)) = slave.reattach(stream.up.clone()).await {
            welcome.resumable.push(pb::Resumable {
                room: room.to_string(),
                seq,
            });
            stream.slaves.insert(room, slave);
        }
    }
    let stored = stream.resume_stored().await;
    welcome.resumable.extend(stored);
    welcome.intercepts = shadow.is_some();
    if !stream.up.send(peer_frame::Frame::Welcome(welcome)).await {
        stream.end(shadow, HashMap::new()).await;
        drop(held);
        return;
    }
    if let Some(shadow) = &shadow {
        shadow.submitted(healed.iter().map(|h| h.submissions.len()).sum());
    }
    stream.submit(healed).await;
    // What those slaves' users said that no parent carried up goes before
    // anything they say now; sealed, so that the master takes each once,
    // whichever way it reaches it.
    for request in unsent {
        let relayed = pb::RelayedFrame {
            from: request.child_jid,
            frame: request.frame,
            counter: request.counter,
            mac: request.mac,
        };
        stream.up.send(peer_frame::Frame::Relayed(relayed)).await;
    }
    if let Some(shadow) = &shadow {
        shadow.up(stream.up.clone()).await;
    }
    service.relay.stream_up(&stream.master, stream.up.clone());
    loop {
        let message = tokio::select! {
            biased;
            _ = end.cancelled() => break,
            m = inbound.message() => m,
            Some(r) = from_parents.recv() => {
                stream.relayed(r).await;
                continue;
            }
        };
        let frame = match message {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                info!("master closed the stream");
                break;
            }
            Err(status) => {
                info!(status = %status, "stream broken");
                break;
            }
        };
        if let Err(status) = stream.handle(frame).await {
            warn!(status = %status, "protocol error: ending the stream");
            let _ = frames.send(Err(status)).await;
            break;
        }
    }
    // Nothing more goes to the master.
    end.cancel();
    // Slaves that can follow a parent go on through their rooms' trees
    // (an intercepting peerhost's users' stanzas go up that way too); the
    // others split, if the master's traffic is intercepted.
    let orphans = if service.shutdown.is_cancelled() {
        HashMap::new()
    } else {
        service
            .relay
            .orphan(
                &stream.master,
                &mut stream.slaves,
                shadow.as_ref().map(Shadow::lost),
            )
            .await
    };
    service.relay.end_stream(&stream.master);
    stream.end(shadow, orphans).await;
    // Only now may a newer stream of the master load what they stored.
    drop(held);
    debug!("stream ended");
}

/// Reads the `Hello`: the stream's terms, its master, its hold on the
/// master and the `Welcome` to send, or `None` once it has been refused
/// (or has ended).
async fn welcome(
    service: &PeeringService,
    inbound: &mut Streaming<pb::MasterFrame>,
    names: Option<&[String]>,
    frames: &mpsc::Sender<Result<pb::PeerFrame, Status>>,
    end: &CancellationToken,
) -> Option<(Upstream, BareJid, Held, pb::Welcome)> {
    let first = tokio::select! {
        _ = end.cancelled() => return None,
        m = inbound.message() => m,
    };
    let refuse = |reason: String| async move {
        warn!(reason = %reason, "stream refused");
        let refused = peer_frame::Frame::Refused(pb::Refused { reason });
        let _ = frames
            .send(Ok(pb::PeerFrame {
                frame: Some(refused),
            }))
            .await;
    };
    let hello = match first {
        Ok(Some(pb::MasterFrame {
            frame: Some(master_frame::Frame::Hello(hello)),
        })) => hello,
        Ok(Some(_)) => {
            refuse("the first frame must be hello".into()).await;
            return None;
        }
        Ok(None) | Err(_) => return None,
    };
    let master = match hello.master_jid.parse::<BareJid>() {
        Ok(master) if master.node().is_none() => master,
        _ => {
            refuse("hello.master_jid: must be a domain".into()).await;
            return None;
        }
    };
    tracing::Span::current().record("master", hello.master_jid.as_str());
    if let Some(why) = service.policy.refuses(&master, names) {
        refuse(why.into()).await;
        return None;
    }
    let agreed = match negotiate(&hello, SUPPORTED_VERSIONS, feature::ALL) {
        Ok(agreed) => agreed,
        Err(e) => {
            refuse(e.to_string()).await;
            return None;
        }
    };
    let held = service.masters.take(&master, end).await;
    if end.is_cancelled() {
        return None;
    }
    info!(version = agreed.version, features = ?agreed.features, "stream accepted");
    let welcome = agreed.welcome(service.peer_jid.as_str(), service.domain.as_str());
    let up = Upstream {
        frames: frames.clone(),
        resync: agreed.features.iter().any(|f| f == feature::RESYNC),
        keepalive_echo: agreed.features.iter().any(|f| f == feature::KEEPALIVE_ECHO),
        link_health: agreed.features.iter().any(|f| f == feature::LINK_HEALTH),
        end: end.clone(),
    };
    Some((up, master, held, welcome))
}

/// One accepted stream: its terms, its master and its slaves.
struct StreamState<'a> {
    service: &'a PeeringService,
    /// Where this stream's rooms' parents relay events (see [`Hub::assign`]).
    relayed: mpsc::Sender<Relayed>,
    up: Upstream,
    /// The master's domain: its rooms are `name@master`.
    master: BareJid,
    slaves: HashMap<BareJid, Slave>,
    /// Stored slaves of this master, each waiting for the answer to its `Resync`.
    dormant: HashMap<BareJid, Dormant>,
    /// Rooms without a slave whose events already drew a `Resync`: asked
    /// once until the master creates the slave.
    resync_asked: HashSet<BareJid>,
    /// Splits submitted on this stream and not yet confirmed merged, with
    /// how many submissions each.
    submitted: HashMap<(BareJid, Timestamp), u64>,
}

impl StreamState<'_> {
    /// The stream has ended: its slaves split if the master's traffic is
    /// intercepted (unless the peerhost is shutting down); otherwise they
    /// finish and save. The rooms of `orphans` (slaves gone on through
    /// their trees) do not split: their stanzas go up through the parent.
    async fn end(&mut self, shadow: Option<Shadow>, orphans: HashMap<BareJid, Unsent>) {
        let slaves = std::mem::take(&mut self.slaves);
        match shadow {
            Some(shadow) if !self.service.shutdown.is_cancelled() => {
                shadow.down(slaves, orphans).await;
            }
            _ => {
                for (_, slave) in slaves {
                    slave.stop().await;
                }
            }
        }
    }

    /// Splits submitted before (the peerhost stopped, or the stream broke,
    /// before the master confirmed their merge): submitted again, from the
    /// store. The master ignores what it has already merged.
    async fn stored_splits(&self) -> Vec<HealedSplit> {
        let store = &self.service.store;
        let loaded = match store.writer().flush().await {
            Ok(()) => {
                store
                    .load_splits(&self.master, self.service.domain.as_str())
                    .await
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok(splits) => splits
                .into_iter()
                .filter(|s| s.healed)
                .map(|s| HealedSplit::from_stored(s.start, s.log))
                .collect(),
            Err(e) => {
                error!(error = %e, "cannot load stored splits");
                Vec::new()
            }
        }
    }

    /// Submits what the splits did, each split in its local order.
    async fn submit(&mut self, healed: Vec<HealedSplit>) {
        let domain = self.service.domain.as_str();
        for split in healed {
            info!(room = %split.room, began = split.began.millis(),
                submissions = split.submissions.len(), "submitting a split");
            if split.submissions.is_empty() {
                self.service
                    .store
                    .writer()
                    .split_merged(&split.room, split.began)
                    .await;
                continue;
            }
            let count = split.submissions.len() as u64;
            self.submitted
                .insert((split.room.clone(), split.began), count);
            for (index, event) in split.submissions.into_iter().enumerate() {
                let merge = Merge {
                    domain: domain.to_owned(),
                    began: split.began,
                    index: index as u64,
                    at: event.now,
                    local_id: event.local_id,
                    input: event.input,
                };
                let frame = peer_frame::Frame::Submit(pb::Submit {
                    room: split.room.to_string(),
                    input: Some(pb::Input::from(&Input::Merge(Box::new(merge)))),
                });
                if !self.up.send(frame).await {
                    return;
                }
            }
        }
    }

    /// Before `Welcome`: the master's stored slaves become dormant, to be
    /// listed in `Welcome.resumable` so that the master answers each
    /// (`Resume`, `CreateSlave` or `DestroySlave`). Without "resync" agreed
    /// the master cannot resume them: their stored state is dropped.
    async fn resume_stored(&mut self) -> Vec<pb::Resumable> {
        let store = &self.service.store;
        if !self.up.resync {
            store.writer().delete_master(&self.master).await;
            return Vec::new();
        }
        // What an earlier stream of this master saved is queued: let it land.
        let loaded = match store.writer().flush().await {
            Ok(()) => store.load(&self.master).await,
            Err(e) => Err(e),
        };
        let stored = match loaded {
            Ok(stored) => stored,
            Err(e) => {
                error!(error = %e, "cannot load stored slaves: the master will recreate them");
                return Vec::new();
            }
        };
        let mut resumable = Vec::new();
        for stored in stored {
            if self.slaves.contains_key(&stored.snapshot.jid) {
                continue; // Its split slave is running.
            }
            let dormant = Dormant::load(stored, self.service.domain.as_str());
            let room = dormant.room().clone();
            info!(room = %room, seq = dormant.seq(), "stored slave: offering to resume");
            resumable.push(pb::Resumable {
                room: room.to_string(),
                seq: dormant.seq(),
            });
            self.dormant.insert(room, dormant);
        }
        resumable
    }

    /// Acts on one frame after the `Hello`; an error ends the stream.
    async fn handle(&mut self, frame: pb::MasterFrame) -> Result<(), Status> {
        match frame.frame {
            Some(master_frame::Frame::Hello(_)) => Err(Status::invalid_argument(
                "hello: only allowed as the first frame",
            )),
            Some(master_frame::Frame::Create(create)) => {
                let start = SlaveStart::try_from(create)?;
                let room = start.snapshot.jid.clone();
                if room.domain() != self.master.domain() {
                    return Err(ProtocolError::Jid {
                        field: "create.room".into(),
                        reason: "not a room of the master's domain".into(),
                    }
                    .into());
                }
                if let Some(old) = self.slaves.remove(&room) {
                    // The old slave's queued events come before the new snapshot.
                    old.discard().await;
                }
                self.dormant.remove(&room);
                self.resync_asked.remove(&room);
                info!(room = %room, seq = start.seq, deliver_after = start.deliver_after, "slave created");
                let missed = self.service.relay.started(&room, start.seq);
                let slave = Slave::create(
                    start,
                    &self.service.domain,
                    self.service.outlets(self.up.clone()),
                );
                self.slaves.insert(room, slave);
                for (event, encoded) in missed {
                    self.route(event, encoded).await;
                }
                Ok(())
            }
            Some(master_frame::Frame::Resume(resume)) => {
                let room = frame_room(&resume.room, "resume.room")?;
                self.service.relay.resume(&room);
                self.resume(room, resume.deliver_after).await;
                Ok(())
            }
            Some(master_frame::Frame::Events(batch)) => {
                for event in batch.events {
                    let encoded = event.encode_to_vec();
                    let event = RoomEvent::try_from(event)?;
                    self.master_event(event, encoded).await;
                }
                Ok(())
            }
            Some(master_frame::Frame::Destroy(destroy)) => {
                let room = frame_room(&destroy.room, "destroy.room")?;
                self.resync_asked.remove(&room);
                self.dormant.remove(&room);
                if let Some(slave) = self.slaves.remove(&room) {
                    slave.discard().await;
                }
                self.service.store.writer().delete(&room).await;
                self.service.relay.forget(&room);
                info!(room = %room, "slave destroyed");
                Ok(())
            }
            Some(master_frame::Frame::Keepalive(keepalive)) => {
                if self.up.keepalive_echo {
                    self.up.send(peer_frame::Frame::Keepalive(keepalive)).await;
                }
                Ok(())
            }
            Some(master_frame::Frame::Signed(batch)) => {
                for signed in batch.events {
                    let event = dmuc_protocol::signing::decode(&signed)?;
                    let encoded = signed.event.clone();
                    let event = RoomEvent::try_from(event)?;
                    self.service
                        .relay
                        .publish(&event.room, event.seq, Arc::new(signed));
                    self.master_event(event, encoded).await;
                }
                Ok(())
            }
            Some(master_frame::Frame::Assign(assign)) => {
                self.service
                    .relay
                    .assign(&self.master, assign, self.relayed.clone())?;
                Ok(())
            }
            Some(master_frame::Frame::Merged(merged)) => {
                let room = frame_room(&merged.room, "merged.room")?;
                self.merged(room, Timestamp(merged.began_ms), merged.next_index)
                    .await;
                Ok(())
            }
            None => Err(ProtocolError::Missing {
                field: "frame".into(),
            }
            .into()),
        }
    }

    /// An event a parent relayed (checked against the master's key): for
    /// the slave, and for this node's own children.
    async fn relayed(&mut self, relayed: Relayed) {
        let Relayed {
            event,
            encoded,
            signed,
        } = relayed;
        self.service.relay.publish(&event.room, event.seq, signed);
        self.route(event, encoded).await;
    }

    /// The master's confirmation that a split is merged below `next_index`:
    /// once that is all of it, the split is forgotten.
    async fn merged(&mut self, room: BareJid, began: Timestamp, next_index: u64) {
        let Some(&count) = self.submitted.get(&(room.clone(), began)) else {
            debug!(room = %room, began = began.millis(), "confirmation of a split not submitted here");
            return;
        };
        if next_index < count {
            return;
        }
        self.submitted.remove(&(room.clone(), began));
        info!(room = %room, began = began.millis(), "split merged by the master");
        self.service.store.writer().split_merged(&room, began).await;
        if let Some(slave) = self.slaves.get(&room) {
            slave.merged(began).await;
        }
    }

    /// The master's answer to a `Resync` from `room`'s stored or stalled
    /// state: that state goes on. A room with neither asks again from nothing.
    async fn resume(&mut self, room: BareJid, deliver_after: u64) {
        if let Some(slave) = self.slaves.get(&room) {
            if !slave.resume_here(deliver_after).await {
                self.slaves.remove(&room);
            }
        } else if let Some(dormant) = self.dormant.remove(&room) {
            info!(room = %room, seq = dormant.seq(), deliver_after, "slave resumed");
            let slave = Slave::resume(
                dormant,
                deliver_after,
                self.service.outlets(self.up.clone()),
            );
            self.slaves.insert(room, slave);
        } else {
            debug!(room = %room, "resume of a room without state");
            self.resync_asked.insert(room.clone());
            self.up.resync(&room, 0).await;
        }
    }

    /// An event from the master for its room's slave, then what the node
    /// got from its parent while a resumed slave was stalled (see
    /// [`crate::relay::window::Window::resume`]).
    async fn master_event(&mut self, event: RoomEvent, encoded: Vec<u8>) {
        let (room, seq) = (event.room.clone(), event.seq);
        self.route(event, encoded).await;
        for (event, encoded) in self.service.relay.resumed(&room, seq) {
            self.route(event, encoded).await;
        }
    }

    /// Hands an event to its room's slave; an event for a room without one
    /// asks for the room (once).
    async fn route(&mut self, event: RoomEvent, encoded: Vec<u8>) {
        let room = event.room.clone();
        if let Some(slave) = self.slaves.get(&room) {
            if !slave.send(event, encoded).await {
                // Its link closed: the peerhost is shutting down.
                self.slaves.remove(&room);
            }
        } else if self.dormant.contains_key(&room) {
            debug!(room = %room, seq = event.seq, "event for a stored slave before its resume: dropped");
        } else if self.resync_asked.insert(room.clone()) {
            debug!(room = %room, seq = event.seq, "event for a room without a slave");
            self.up.resync(&room, 0).await;
        }
    }
}

/// The room a frame names, which must be a room's bare JID.
fn frame_room(room: &str, field: &str) -> Result<BareJid, ProtocolError> {
    match room.parse::<BareJid>() {
        Ok(room) if room.node().is_some() => Ok(room),
        _ => Err(ProtocolError::Jid {
            field: field.into(),
            reason: "must be a room's bare jid".into(),
        }),
    }
}
