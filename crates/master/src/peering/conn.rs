//! One task per peerhost: it keeps the `Replicate` stream to that peerhost
//! open, multiplexes the frames of every room replicated there onto it, and
//! routes what the peerhost answers back to the rooms.
//!
//! ```text
//!  room tasks ─ToPeer─▶ conn task ─(batched) MasterFrame─▶ peerhost
//!       ▲                   │      ◀─ PeerFrame (Welcome, Ack, Resync, Keepalive, LinkHealth) ─┘
//!       └──── PeerNews ─────┘  Up / Down / Ack / Resync, per registered room; Links, to every room
//! ```
//!
//! Each stream is a *session*, numbered from 1. A room's frames name the
//! session they were meant for; frames for an earlier session are dropped,
//! since the room has been told (`Down`) that its slave there is gone and
//! will attach anew on the next `Up`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use dmuc_component::metrics::{Counter, Gauge, Metrics};
use dmuc_component::{Backoff, BackoffConfig};
use dmuc_protocol::pb::peering_client::PeeringClient;
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::tls::{self, LoadedTls};
use dmuc_room::Input;
use jid::BareJid;
use minidom::Element;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ChildFrame, News, PeerHandle, PeerNews, PeerTarget, Seal, ToPeer};
use crate::tree::Measured;

/// Frames queued for the stream before rooms wait.
const QUEUE: usize = 4096;
/// Events per `EventBatch` at most.
const MAX_BATCH: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stream may take to close on shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Largest frame accepted from a peerhost (they are small: acks, resyncs).
const MAX_INBOUND_FRAME: usize = 1024 * 1024;

/// What every peer task shares.
#[derive(Debug)]
pub struct PeerContext {
    /// The master's JID, said in `Hello`.
    pub master_jid: BareJid,
    /// Mutual TLS, for `https://` endpoints.
    pub tls: Option<Arc<LoadedTls>>,
    /// Whether `http://` endpoints may be dialled (no TLS at all).
    pub allow_plaintext: bool,
    /// Where accepted submissions go (to the service).
    pub submissions: mpsc::UnboundedSender<Submitted>,
    /// A stream gets a keepalive this often; one unanswered by the next
    /// ends it (a split is noticed within twice this).
    pub keepalive: Duration,
    /// Where each peer task registers `dmuc_peer_up` and `dmuc_peer_down_total`.
    pub metrics: Metrics,
}

/// What a peerhost submitted for one of its domain's users, checked: the
/// sender is a user of the peerhost's domain.
#[derive(Debug)]
pub enum Submitted {
    /// An input for a room.
    Input { room: BareJid, input: Input },
    /// A stanza it intercepted, to handle as if it had come over s2s.
    Stanza(Element),
}

/// Starts the task that keeps the stream to `target` open.
pub fn spawn(
    target: PeerTarget,
    context: Arc<PeerContext>,
    shutdown: CancellationToken,
) -> PeerHandle {
    let (tx, rx) = mpsc::channel(QUEUE);
    // A peerhost that dials in is down until it does.
    let first = if target.endpoint.is_some() {
        LinkState::Connecting
    } else {
        LinkState::Down
    };
    let (state_tx, state) = watch::channel(first);
    let (adopt_tx, adopt) = mpsc::channel(4);
    let span = info_span!("peer", domain = %target.domain, peer = %target.jid);
    let intercepts = Arc::new(AtomicBool::new(false));
    let rtt_ms = Arc::new(AtomicU32::new(0));
    let domain = [("domain", target.domain.as_str())];
    let up = context.metrics.gauge_with(
        "dmuc_peer_up",
        "Whether the stream to the domain's peerhost is up",
        &domain,
    );
    let downs = context.metrics.counter_with(
        "dmuc_peer_down_total",
        "Streams to the domain's peerhost that went down after being up",
        &domain,
    );
    let handle = PeerHandle {
        target: Arc::new(target.clone()),
        tx,
        state,
        adopt: adopt_tx,
        intercepts: intercepts.clone(),
        rtt_ms: rtt_ms.clone(),
    };
    let conn = Conn {
        target,
        intercepts,
        rtt_ms,
        context,
        rooms: HashMap::new(),
        state: state_tx,
        session: 0,
        up,
        downs,
    };
    tokio::spawn(conn.run(rx, adopt, shutdown).instrument(span));
    handle
}

/// A welcomed stream to a peerhost, whichever side dialled.
#[derive(Debug)]
pub struct Transport {
    pub frames: mpsc::Sender<pb::MasterFrame>,
    pub inbound: Streaming<pb::PeerFrame>,
    pub welcome: pb::Welcome,
}

/// Says `Hello` on `frames` and waits for the peerhost's `Welcome`.
pub async fn handshake(
    master_jid: &BareJid,
    frames: mpsc::Sender<pb::MasterFrame>,
    mut inbound: Streaming<pb::PeerFrame>,
) -> Result<Transport, String> {
    let hello = master_frame::Frame::Hello(dmuc_protocol::hello(master_jid.as_str()));
    frames
        .send(pb::MasterFrame { frame: Some(hello) })
        .await
        .map_err(|_| "stream closed before hello".to_owned())?;
    let welcome = match tokio::time::timeout(CONNECT_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(pb::PeerFrame {
            frame: Some(peer_frame::Frame::Welcome(w)),
        }))) => w,
        Ok(Ok(Some(pb::PeerFrame {
            frame: Some(peer_frame::Frame::Refused(r)),
        }))) => return Err(format!("refused: {}", r.reason)),
        Ok(Ok(_)) => return Err("no welcome".into()),
        Ok(Err(status)) => return Err(error_chain(&status)),
        Err(_) => return Err("no welcome in time".into()),
    };
    Ok(Transport {
        frames,
        inbound,
        welcome,
    })
}

/// Whether the stream to a peerhost is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// The first attempt has not finished yet.
    Connecting,
    /// Session `n` is open.
    Up(u64),
    /// Down; retrying with backoff.
    Down,
}

struct Conn {
    target: PeerTarget,
    /// Shared with the handles: `Welcome.intercepts` of the last stream.
    intercepts: Arc<AtomicBool>,
    /// Shared with the handles: the keepalive round trip, in ms, smoothed
    /// ([`smoothed_rtt`]).
    rtt_ms: Arc<AtomicU32>,
    context: Arc<PeerContext>,
    /// The rooms with a slave (or wanting one) on this peerhost.
    rooms: HashMap<BareJid, mpsc::UnboundedSender<News>>,
    state: watch::Sender<LinkState>,
    session: u64,
    /// `dmuc_peer_up{domain}`: 1 while `state` is `Up`.
    up: Gauge,
    /// `dmuc_peer_down_total{domain}`: `Up` to `Down`.
    downs: Counter,
}

/// Why a stream ended.
enum Ended {
    Shutdown,
    /// The rooms' side of the channel is gone: the master is stopping.
    Orphaned,
    Failed(String),
    /// Nothing listens at the peerhost's endpoint: it is not running (its
    /// slaves cannot be following parents either).
    Refused(String),
    /// The peerhost dialled in again: the new stream replaces this one.
    Replaced(Box<Transport>),
}

impl Conn {
    async fn run(
        mut self,
        mut from_rooms: mpsc::Receiver<ToPeer>,
        mut adopt: mpsc::Receiver<Transport>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let mut next_dial = self.target.endpoint.is_some().then(Instant::now);
        let mut next: Option<Transport> = None;
        loop {
            // A stream: one that dialled in, or one we dial when it is time.
            let opened = match next.take() {
                Some(transport) => Ok(transport),
                None => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    Some(transport) = adopt.recv() => Ok(transport),
                    () = sleep_until(next_dial), if next_dial.is_some() => self.dial().await,
                    msg = from_rooms.recv() => {
                        match msg {
                            Some(msg) => self.offline(msg),
                            None => break,
                        }
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let ended = match opened {
                Ok(transport) => {
                    self.session(transport, &mut from_rooms, &mut adopt, &shutdown)
                        .await
                }
                Err(Dial::Refused(reason)) => Ended::Refused(reason),
                Err(Dial::Failed(reason)) => Ended::Failed(reason),
            };
            if self.state.borrow().ne(&LinkState::Down) {
                let was = self.state.send_replace(LinkState::Down);
                if matches!(was, LinkState::Up(_)) {
                    self.up.set(0);
                    self.downs.inc();
                }
            }
            self.tell_all(|session| PeerNews::Down { session });
            if let Ended::Refused(reason) = &ended {
                info!(%reason, "peerhost not running (its endpoint refused the connection)");
                self.tell_all(|session| PeerNews::NotRunning { session });
            }
            match ended {
                Ended::Shutdown | Ended::Orphaned => break,
                Ended::Replaced(transport) => {
                    info!("peerhost dialled in again: new stream");
                    next = Some(*transport);
                }
                Ended::Failed(reason) | Ended::Refused(reason) => {
                    backoff.connected_for(started.elapsed());
                    if self.target.endpoint.is_some() {
                        let delay = backoff.next_delay();
                        warn!(%reason, retry_in = ?delay, "peerhost stream down");
                        next_dial = Some(Instant::now() + delay);
                    } else {
                        warn!(%reason, "peerhost stream down; waiting for it to dial in");
                    }
                }
            }
        }
        debug!("peer task stopped");
    }

    /// Dials the peerhost and says hello.
    async fn dial(&self) -> Result<Transport, Dial> {
        let (frames, rx) = mpsc::channel::<pb::MasterFrame>(QUEUE);
        let inbound = self.open(rx).await?;
        Ok(handshake(&self.context.master_jid, frames, inbound).await?)
    }

    /// Serves one welcomed stream until it ends.
    async fn session(
        &mut self,
        transport: Transport,
        from_rooms: &mut mpsc::Receiver<ToPeer>,
        adopt: &mut mpsc::Receiver<Transport>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let Transport {
            frames,
            mut inbound,
            welcome,
        } = transport;
        if welcome.domain != self.target.domain.as_str()
            || welcome.peer_jid != self.target.jid.as_str()
        {
            return Ended::Failed(format!(
                "peerhost says it is {:?} serving {:?}, not {} serving {}",
                welcome.peer_jid, welcome.domain, self.target.jid, self.target.domain
            ));
        }
        self.session += 1;
        let session = self.session;
        let mut resumable: HashMap<BareJid, u64> = welcome
            .resumable
            .iter()
            .filter_map(|r| Some((r.room.parse().ok()?, r.seq)))
            .collect();
        info!(
            session,
            version = welcome.version,
            resumable = resumable.len(),
            "peerhost stream up"
        );
        self.intercepts.store(welcome.intercepts, Ordering::Relaxed);
        self.state.send_replace(LinkState::Up(session));
        self.up.set(1);
        for (room, news) in &self.rooms {
            let resume_from = resumable.remove(room);
            let _ = news.send(self.news(PeerNews::Up {
                session,
                resume_from,
            }));
        }
        // Slaves kept for rooms that no longer want one here.
        for room in resumable.into_keys() {
            debug!(%room, "forgetting a kept slave");
            let destroy = master_frame::Frame::Destroy(pb::DestroySlave {
                room: room.to_string(),
            });
            let _ = frames
                .send(pb::MasterFrame {
                    frame: Some(destroy),
                })
                .await;
        }

        let every = self.context.keepalive;
        let mut keepalive = tokio::time::interval_at(Instant::now() + every, every);
        let mut outstanding: Option<(u64, Instant)> = None;
        let mut batch = Batch::default();
        loop {
            tokio::select! {
                biased;
                // The rooms have finished (the service cancels us only
                // then): what they queued last still goes out.
                _ = shutdown.cancelled() => {
                    while let Ok(msg) = from_rooms.try_recv() {
                        if let Some(frame) = self.on_room_msg(session, msg, &mut batch) {
                            flush(&frames, &mut batch).await;
                            let _ = frames.send(frame).await;
                        }
                    }
                    flush(&frames, &mut batch).await;
                    drop(frames);
                    // The peerhost ends its side once it has read ours.
                    let _ = tokio::time::timeout(CLOSE_GRACE, async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    return Ended::Shutdown;
                }
                frame = inbound.message() => match frame {
                    Ok(Some(frame)) => {
                        if let Some(peer_frame::Frame::Keepalive(k)) = &frame.frame
                            && let Some((nonce, sent)) = outstanding
                            && nonce == k.nonce
                        {
                            outstanding = None;
                            // The link's health, for rooms' trees.
                            let rtt = sent.elapsed().as_millis().clamp(1, u128::from(u32::MAX));
                            let smoothed = smoothed_rtt(self.rtt_ms.load(Ordering::Relaxed), rtt as u32);
                            self.rtt_ms.store(smoothed, Ordering::Relaxed);
                        }
                        self.on_peer_frame(session, frame);
                    }
                    Ok(None) => return Ended::Failed("peerhost closed the stream".into()),
                    Err(status) => return Ended::Failed(status.to_string()),
                },
                msg = from_rooms.recv() => {
                    let Some(msg) = msg else { return Ended::Orphaned };
                    let mut next = Some(msg);
                    while let Some(msg) = next.take() {
                        if let Some(frame) = self.on_room_msg(session, msg, &mut batch) {
                            flush(&frames, &mut batch).await;
                            if frames.send(frame).await.is_err() {
                                return Ended::Failed("stream closed".into());
                            }
                        }
                        if batch.len() < MAX_BATCH {
                            next = from_rooms.try_recv().ok();
                        }
                    }
                    if !flush(&frames, &mut batch).await {
                        return Ended::Failed("stream closed".into());
                    }
                }
                Some(transport) = adopt.recv() => return Ended::Replaced(Box::new(transport)),
                _ = keepalive.tick() => {
                    if outstanding.is_some() {
                        return Ended::Failed("keepalive unanswered".into());
                    }
                    let nonce = rand::random();
                    outstanding = Some((nonce, Instant::now()));
                    let ping = master_frame::Frame::Keepalive(pb::Keepalive { nonce });
                    if frames.send(pb::MasterFrame { frame: Some(ping) }).await.is_err() {
                        return Ended::Failed("stream closed".into());
                    }
                }
            }
        }
    }

    async fn open(
        &self,
        outbound: mpsc::Receiver<pb::MasterFrame>,
    ) -> Result<Streaming<pb::PeerFrame>, Dial> {
        let Some(url) = &self.target.endpoint else {
            return Err("this peerhost dials in; it has no endpoint".into());
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| format!("endpoint {url:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.context.keepalive)
            .keep_alive_timeout(self.context.keepalive);
        if url.starts_with("https://") {
            let Some(tls) = &self.context.tls else {
                return Err("https endpoint, but no [peering] tls_cert configured".into());
            };
            // The peerhost must prove it is the JID its domain listed.
            let config =
                tls::client_config(tls, self.target.jid.as_str()).map_err(|e| e.to_string())?;
            endpoint = endpoint.tls_config(config).map_err(|e| e.to_string())?;
        } else if !self.context.allow_plaintext {
            return Err(format!(
                "plaintext endpoint {url:?} refused (set [peering] allow_plaintext to dial it)"
            )
            .into());
        }
        let channel: Channel = endpoint.connect().await.map_err(|e| Dial::of(&e))?;
        let mut client = PeeringClient::new(channel).max_decoding_message_size(MAX_INBOUND_FRAME);
        client
            .replicate(ReceiverStream::new(outbound))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| error_chain(&s).into())
    }

    /// A frame from the peerhost, for the room it names.
    fn on_peer_frame(&mut self, session: u64, frame: pb::PeerFrame) {
        let (room, news) = match frame.frame {
            Some(peer_frame::Frame::Ack(a)) => (
                a.room,
                PeerNews::Ack {
                    session,
                    seq: a.seq,
                },
            ),
            Some(peer_frame::Frame::Resync(r)) => (
                r.room,
                PeerNews::Resync {
                    session,
                    have: r.have_seq,
                },
            ),
            Some(peer_frame::Frame::Keepalive(_)) => return,
            Some(peer_frame::Frame::Report(r)) => {
                let Ok(parent) = r.parent_jid.parse() else {
                    return warn!(parent = %r.parent_jid, "tree report of a malformed parent jid");
                };
                (
                    r.room,
                    PeerNews::Report {
                        session,
                        parent,
                        refused: r.why == pb::Unusable::Refused as i32,
                        have: r.have,
                    },
                )
            }
            Some(peer_frame::Frame::Relayed(relayed)) => {
                let Ok(child) = relayed.from.parse::<BareJid>() else {
                    return warn!(from = %relayed.from, "relayed frame from a malformed jid");
                };
                let Some((room, frame)) = self.child_frame(&relayed) else {
                    return debug!(%child, "relayed frame ignored");
                };
                let seal = Seal {
                    frame: relayed.frame,
                    counter: relayed.counter,
                    mac: relayed.mac,
                };
                (room, PeerNews::Relayed { child, frame, seal })
            }
            Some(peer_frame::Frame::LinkHealth(health)) => return self.on_link_health(health),
            Some(peer_frame::Frame::Submit(submit)) => return self.on_submit(submit),
            Some(peer_frame::Frame::Forward(forward)) => return self.on_forward(forward),
            other => {
                warn!(frame = ?other, "unexpected frame from peerhost");
                return;
            }
        };
        let Ok(room) = room.parse::<BareJid>() else {
            warn!(%room, "frame for a malformed room jid");
            return;
        };
        match self.rooms.get(&room) {
            Some(tx) => {
                let _ = tx.send(self.news(news));
            }
            None => debug!(%room, "frame for a room without a slave here"),
        }
    }

    /// How the peerhost's links to other peerhosts are: for every room
    /// here (each takes the links between its own slaves). The peerhost
    /// is one end of each link (the stream says who it is); a link to
    /// itself or of a malformed JID is dropped.
    fn on_link_health(&self, health: pb::LinkHealth) {
        let links: Vec<(BareJid, Measured)> = health
            .links
            .into_iter()
            .filter_map(|l| {
                let peer = l.peer_jid.parse::<BareJid>().ok()?;
                (peer != self.target.jid).then_some((
                    peer,
                    Measured {
                        rtt_ms: l.rtt_ms,
                        loss_permille: l.loss_permille.min(1000) as u16,
                        reachable: l.reachable,
                    },
                ))
            })
            .collect();
        debug!(links = links.len(), "link health");
        if links.is_empty() {
            return;
        }
        for tx in self.rooms.values() {
            let _ = tx.send(self.news(PeerNews::Links {
                links: links.clone(),
            }));
        }
    }

    /// A stanza a peerhost submits: accepted only from its own domain's
    /// users; a merge, only of its own domain's split, which did not begin
    /// in the future (its time is clamped into `[began, now]`).
    fn on_submit(&self, submit: pb::Submit) {
        let room = submit
            .room
            .parse::<BareJid>()
            .ok()
            .filter(|r| r.node().is_some());
        let input = submit.input.map(Input::try_from);
        let (Some(room), Some(Ok(mut input))) = (room, input) else {
            warn!(room = %submit.room, "malformed submission rejected");
            return;
        };
        let sender = input.sender().map(|from| from.domain().as_str().to_owned());
        if sender.as_deref() != Some(self.target.domain.as_str()) {
            warn!(
                %room,
                sender = ?input.sender().map(|j| j.to_string()),
                "submission for a user of another domain rejected"
            );
            return;
        }
        if let Input::Merge(merge) = &mut input {
            if merge.domain != self.target.domain.as_str() {
                return warn!(%room, domain = %merge.domain, "merge of another domain's split rejected");
            }
            let now = crate::room_task::now();
            if merge.began > now {
                return warn!(%room, began = merge.began.millis(), "merge of a split from the future rejected");
            }
            merge.at = merge.at.clamp(merge.began, now);
        }
        let _ = self
            .context
            .submissions
            .send(Submitted::Input { room, input });
    }

    /// A stanza the peerhost intercepted: accepted only from its own
    /// domain's users, and only to our service.
    fn on_forward(&self, forward: pb::Forward) {
        let Ok(el) = forward.stanza.parse::<Element>() else {
            return warn!("malformed forwarded stanza rejected");
        };
        let domain_of = |attr: &str| {
            el.attr(attr)
                .and_then(|j| j.parse::<jid::Jid>().ok())
                .map(|j| j.domain().as_str().to_owned())
        };
        let from_ours = domain_of("from").as_deref() == Some(self.target.domain.as_str());
        let to_master = domain_of("to").as_deref() == Some(self.context.master_jid.as_str());
        if !(from_ours && to_master) {
            return warn!(
                from = ?el.attr("from"),
                to = ?el.attr("to"),
                "forwarded stanza rejected: not from this peerhost's domain to this service"
            );
        }
        let _ = self.context.submissions.send(Submitted::Stanza(el));
    }

    /// The room and meaning of a child's `Ack`, `Forward` or `TreeReport`
    /// a peerhost carried up (other relayed frames are not acted on: a
    /// child's `Resync` waits for its own stream). A `Forward` is for the room (with
    /// a node) of this service it is sent to; who may send it is the
    /// room's to check: it knows the tree.
    fn child_frame(&self, relayed: &pb::RelayedFrame) -> Option<(String, ChildFrame)> {
        use prost::Message;
        match pb::PeerFrame::decode(relayed.frame.as_slice())
            .ok()?
            .frame?
        {
            peer_frame::Frame::Ack(a) => Some((a.room, ChildFrame::Ack(a.seq))),
            peer_frame::Frame::Report(r) => Some((
                r.room,
                ChildFrame::Report {
                    parent: r.parent_jid.parse().ok()?,
                    refused: r.why == pb::Unusable::Refused as i32,
                    have: r.have,
                },
            )),
            peer_frame::Frame::Forward(f) => {
                let stanza: Element = f.stanza.parse().ok()?;
                let room = stanza.attr("to")?.parse::<jid::Jid>().ok()?.to_bare();
                (room.node().is_some() && room.domain() == self.context.master_jid.domain())
                    .then(|| (room.to_string(), ChildFrame::Forward(Box::new(stanza))))
            }
            _ => None,
        }
    }

    /// A message from a room while a session is up: the frame to send, if
    /// it is one and not an event (events join `batch`).
    fn on_room_msg(
        &mut self,
        session: u64,
        msg: ToPeer,
        batch: &mut Batch,
    ) -> Option<pb::MasterFrame> {
        match msg {
            ToPeer::Event { session: s, event } => {
                if s == session {
                    batch.events.push(Arc::unwrap_or_clone(event));
                }
                None
            }
            ToPeer::Signed { session: s, event } => {
                if s == session {
                    batch.signed.push(Arc::unwrap_or_clone(event));
                }
                None
            }
            ToPeer::Frame { session: s, frame } => (s == session).then_some(pb::MasterFrame {
                frame: Some(*frame),
            }),
            ToPeer::Merged(merged) => Some(pb::MasterFrame {
                frame: Some(master_frame::Frame::Merged(merged)),
            }),
            msg => {
                self.register(msg, LinkState::Up(session));
                None
            }
        }
    }

    /// A message from a room while no session is up.
    fn offline(&mut self, msg: ToPeer) {
        let state = *self.state.borrow();
        self.register(msg, state);
    }

    fn register(&mut self, msg: ToPeer, state: LinkState) {
        match msg {
            ToPeer::Register { room, news } => {
                let first = match state {
                    LinkState::Up(session) => PeerNews::Up {
                        session,
                        resume_from: None,
                    },
                    _ => PeerNews::Down { session: 0 },
                };
                let _ = news.send(self.news(first));
                self.rooms.insert(room, news);
            }
            ToPeer::Deregister { room } => {
                self.rooms.remove(&room);
            }
            ToPeer::Event { .. } | ToPeer::Signed { .. } | ToPeer::Frame { .. } => {}
            ToPeer::Merged(merged) => {
                debug!(room = %merged.room, "no stream: merge confirmation dropped");
            }
        }
    }

    fn tell_all(&self, news: impl Fn(u64) -> PeerNews) {
        for tx in self.rooms.values() {
            let _ = tx.send(self.news(news(self.session)));
        }
    }

    fn news(&self, news: PeerNews) -> News {
        News {
            domain: self.target.domain.clone(),
            news,
        }
    }
}

/// The round trip after a new `sample`, from the smoothed one so far
/// (0: none yet): a quarter of the way to the sample, so that trees are
/// not replanned on one slow keepalive of a busy machine.
fn smoothed_rtt(smoothed: u32, sample: u32) -> u32 {
    if smoothed == 0 {
        return sample;
    }
    let next = (u64::from(smoothed) * 3 + u64::from(sample)) / 4;
    u32::try_from(next).unwrap_or(u32::MAX).max(1)
}

/// Sleeps until `at` (forever if `None`).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An error with its sources (TLS refusals are only in the sources).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Why dialling a peerhost failed.
#[derive(Debug)]
enum Dial {
    /// Its endpoint refused the connection: nothing listens there.
    Refused(String),
    Failed(String),
}

impl<T: Into<String>> From<T> for Dial {
    fn from(reason: T) -> Dial {
        Dial::Failed(reason.into())
    }
}

impl Dial {
    fn of(e: &(dyn std::error::Error + 'static)) -> Dial {
        let mut source = Some(e);
        while let Some(s) = source {
            if s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
            {
                return Dial::Refused(error_chain(e));
            }
            source = s.source();
        }
        Dial::Failed(error_chain(e))
    }
}

/// Events waiting to go out as one frame: plain, and signed (rooms that
/// run spanning trees). A room's events are all of one kind.
#[derive(Debug, Default)]
struct Batch {
    events: Vec<pb::Event>,
    signed: Vec<pb::SignedEvent>,
}

impl Batch {
    fn len(&self) -> usize {
        self.events.len() + self.signed.len()
    }
}

/// Sends the pending events as batches; `false` once the stream is gone.
async fn flush(frames: &mpsc::Sender<pb::MasterFrame>, batch: &mut Batch) -> bool {
    if !batch.events.is_empty() {
        let events = std::mem::take(&mut batch.events);
        let frame = master_frame::Frame::Events(pb::EventBatch { events });
        if frames
            .send(pb::MasterFrame { frame: Some(frame) })
            .await
            .is_err()
        {
            return false;
        }
    }
    if !batch.signed.is_empty() {
        let events = std::mem::take(&mut batch.signed);
        let frame = master_frame::Frame::Signed(pb::SignedBatch { events });
        if frames
            .send(pb::MasterFrame { frame: Some(frame) })
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::smoothed_rtt;

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_told_apart_from_other_failures() {
        use super::Dial;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let refused = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(Dial::of(&refused), Dial::Refused(_)),
            "{refused:?}"
        );
        let other = std::io::Error::other("the handshake failed");
        assert!(matches!(Dial::of(&other), Dial::Failed(_)));
    }

    #[test]
    fn one_slow_keepalive_moves_the_round_trip_a_quarter_of_the_way() {
        assert_eq!(smoothed_rtt(0, 40), 40);
        assert_eq!(smoothed_rtt(2, 150), 39);
        // A link that stays slow gets there.
        let slow = (0..12).fold(2, |rtt, _| smoothed_rtt(rtt, 150));
        assert!(slow > 140, "{slow}");
        assert_eq!(smoothed_rtt(1, 1), 1);
    }
}
