//! The gRPC side: [`PeeringService`] serves `dmuc.peering.v1.Peering`, one
//! task per `Replicate` stream, holding that stream's slaves.
//!
//! ```text
//!  master ══ MasterFrame ══▶ stream task ── Hello ─▶ negotiate ─▶ Welcome | Refused + end
//!                               │ CreateSlave ─▶ Slave::spawn (replaces the room's slave)
//!                               │ EventBatch  ─▶ each event to its room's slave, in order
//!                               │ DestroySlave ─▶ Slave::stop
//!                               │ Keepalive   ─▶ echoed (if agreed)
//!  master ◀═ PeerFrame ═══ frames ◀── Ack / Resync from the slaves
//! ```
//!
//! A malformed frame ends the stream with the [`ProtocolError`]'s status.
//! When the stream ends (the master closed it, the connection broke, or the
//! peerhost shuts down) its slaves finish what they were given and stop.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;

use dmuc_component::LinkHandle;
use dmuc_protocol::pb::peering_server::Peering;
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::{ProtocolError, RoomEvent, SUPPORTED_VERSIONS, SlaveStart, feature, negotiate};
use jid::BareJid;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::slave::Slave;

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
    shutdown: CancellationToken,
    streams: TaskTracker,
}

impl PeeringService {
    pub fn new(
        peer_jid: BareJid,
        domain: BareJid,
        link: LinkHandle,
        shutdown: CancellationToken,
    ) -> Self {
        PeeringService {
            peer_jid,
            domain,
            link,
            shutdown,
            streams: TaskTracker::new(),
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
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let span = info_span!("stream", remote = ?remote, master = tracing::field::Empty);
        self.streams
            .spawn(serve(self.clone(), request.into_inner(), tx).instrument(span));
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
    /// Ends the whole stream (a gap without "resync").
    end: CancellationToken,
}

impl Upstream {
    /// Sends a frame; `false` once the stream is gone.
    pub async fn send(&self, frame: peer_frame::Frame) -> bool {
        self.frames
            .send(Ok(pb::PeerFrame { frame: Some(frame) }))
            .await
            .is_ok()
    }

    /// Asks for a fresh `CreateSlave` of `room`, or, without the "resync"
    /// feature, ends the stream as the protocol says.
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

/// Runs one `Replicate` stream to its end.
async fn serve(
    service: PeeringService,
    mut inbound: Streaming<pb::MasterFrame>,
    frames: mpsc::Sender<Result<pb::PeerFrame, Status>>,
) {
    let end = service.shutdown.child_token();
    let Some(up) = welcome(&service, &mut inbound, &frames, &end).await else {
        return;
    };
    let mut stream = StreamState {
        service: &service,
        up,
        slaves: HashMap::new(),
        resync_asked: HashSet::new(),
    };
    loop {
        let message = tokio::select! {
            biased;
            _ = end.cancelled() => break,
            m = inbound.message() => m,
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
    for (_, slave) in stream.slaves.drain() {
        slave.stop().await;
    }
    debug!("stream ended");
}

/// Reads the `Hello` and answers it: the stream's terms, or `None` once it
/// has been refused (or has ended).
async fn welcome(
    service: &PeeringService,
    inbound: &mut Streaming<pb::MasterFrame>,
    frames: &mpsc::Sender<Result<pb::PeerFrame, Status>>,
    end: &CancellationToken,
) -> Option<Upstream> {
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
    if !matches!(hello.master_jid.parse::<BareJid>(), Ok(j) if j.node().is_none()) {
        refuse("hello.master_jid: must be a domain".into()).await;
        return None;
    }
    tracing::Span::current().record("master", hello.master_jid.as_str());
    let agreed = match negotiate(&hello, SUPPORTED_VERSIONS, feature::ALL) {
        Ok(agreed) => agreed,
        Err(e) => {
            refuse(e.to_string()).await;
            return None;
        }
    };
    info!(version = agreed.version, features = ?agreed.features, "stream accepted");
    let welcome = agreed.welcome(service.peer_jid.as_str(), service.domain.as_str());
    let up = Upstream {
        frames: frames.clone(),
        resync: agreed.features.iter().any(|f| f == feature::RESYNC),
        keepalive_echo: agreed.features.iter().any(|f| f == feature::KEEPALIVE_ECHO),
        end: end.clone(),
    };
    up.send(peer_frame::Frame::Welcome(welcome))
        .await
        .then_some(up)
}

/// One accepted stream: its terms and its slaves.
struct StreamState<'a> {
    service: &'a PeeringService,
    up: Upstream,
    slaves: HashMap<BareJid, Slave>,
    /// Rooms without a slave whose events already drew a `Resync`: asked
    /// once until the master creates the slave.
    resync_asked: HashSet<BareJid>,
}

impl StreamState<'_> {
    /// Acts on one frame after the `Hello`; an error ends the stream.
    async fn handle(&mut self, frame: pb::MasterFrame) -> Result<(), Status> {
        match frame.frame {
            Some(master_frame::Frame::Hello(_)) => Err(Status::invalid_argument(
                "hello: only allowed as the first frame",
            )),
            Some(master_frame::Frame::Create(create)) => {
                let start = SlaveStart::try_from(create)?;
                let room = start.snapshot.jid.clone();
                if let Some(old) = self.slaves.remove(&room) {
                    // The old slave's queued events come before the new snapshot.
                    old.stop().await;
                }
                self.resync_asked.remove(&room);
                info!(room = %room, seq = start.seq, deliver_after = start.deliver_after, "slave created");
                let slave = Slave::spawn(
                    start,
                    &self.service.domain,
                    self.service.link.clone(),
                    self.up.clone(),
                );
                self.slaves.insert(room, slave);
                Ok(())
            }
            Some(master_frame::Frame::Events(batch)) => {
                for event in batch.events {
                    let event = RoomEvent::try_from(event)?;
                    self.route(event).await;
                }
                Ok(())
            }
            Some(master_frame::Frame::Destroy(destroy)) => {
                let room = frame_room(&destroy.room, "destroy.room")?;
                self.resync_asked.remove(&room);
                if let Some(slave) = self.slaves.remove(&room) {
                    slave.stop().await;
                    info!(room = %room, "slave destroyed");
                }
                Ok(())
            }
            Some(master_frame::Frame::Resume(resume)) => {
                // This peerhost keeps no state it could resume from, so it
                // never asks to; a master that resumes anyway gets a resync.
                let room = frame_room(&resume.room, "resume.room")?;
                self.up.resync(&room, 0).await;
                Ok(())
            }
            Some(master_frame::Frame::Keepalive(keepalive)) => {
                if self.up.keepalive_echo {
                    self.up.send(peer_frame::Frame::Keepalive(keepalive)).await;
                }
                Ok(())
            }
            None => Err(ProtocolError::Missing {
                field: "frame".into(),
            }
            .into()),
        }
    }

    /// Hands an event to its room's slave; an event for a room without one
    /// asks for the room (once).
    async fn route(&mut self, event: RoomEvent) {
        let room = event.room.clone();
        match self.slaves.get(&room) {
            Some(slave) => {
                if !slave.send(event).await {
                    // Its link closed: the peerhost is shutting down.
                    self.slaves.remove(&room);
                }
            }
            None => {
                if self.resync_asked.insert(room.clone()) {
                    debug!(room = %room, seq = event.seq, "event for a room without a slave");
                    self.up.resync(&room, 0).await;
                }
            }
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
