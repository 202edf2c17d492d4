//! The generated client and server talk over real TCP (HTTP/2): an echo
//! peerhost on `127.0.0.1:0` answers `Hello` with `Welcome` and every event
//! with an `Ack`, and a malformed frame with the `ProtocolError`'s status.
//! TLS comes with the peerhost; its features are compiled in already.

use std::net::SocketAddr;
use std::pin::Pin;

use dmuc_protocol::pb::peering_client::PeeringClient;
use dmuc_protocol::pb::peering_server::{Peering, PeeringServer};
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::{ProtocolError, RoomEvent, feature, negotiate};
use dmuc_room::{Input, Timestamp};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

type Frames = Pin<Box<dyn Stream<Item = Result<pb::PeerFrame, Status>> + Send>>;

/// A peerhost that validates what it receives and acknowledges it.
struct EchoPeer;

#[tonic::async_trait]
impl Peering for EchoPeer {
    type ReplicateStream = Frames;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::MasterFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                let replies = answer(frame);
                for reply in replies {
                    let failed = reply.is_err();
                    if tx.send(reply).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn answer(frame: pb::MasterFrame) -> Vec<Result<pb::PeerFrame, Status>> {
    let reply = |frame| Ok(pb::PeerFrame { frame: Some(frame) });
    match frame.frame {
        Some(master_frame::Frame::Hello(hello)) => {
            match negotiate(&hello, dmuc_protocol::SUPPORTED_VERSIONS, feature::ALL) {
                Ok(agreed) => vec![reply(peer_frame::Frame::Welcome(
                    agreed.welcome("peer.b.test", "b.test"),
                ))],
                Err(e) => vec![reply(peer_frame::Frame::Refused(pb::Refused {
                    reason: e.to_string(),
                }))],
            }
        }
        Some(master_frame::Frame::Events(batch)) => batch
            .events
            .into_iter()
            .map(|e| {
                let event = RoomEvent::try_from(e)?;
                reply(peer_frame::Frame::Ack(pb::Ack {
                    room: event.room.to_string(),
                    seq: event.seq,
                }))
            })
            .collect(),
        Some(master_frame::Frame::Keepalive(k)) => vec![reply(peer_frame::Frame::Keepalive(k))],
        Some(_) => Vec::new(),
        None => vec![Err(ProtocolError::Missing {
            field: "frame".into(),
        }
        .into())],
    }
}

/// Serves [`EchoPeer`] on an ephemeral port until the returned sender fires.
async fn serve() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        Server::builder()
            .add_service(PeeringServer::new(EchoPeer))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            }),
    );
    (addr, stop)
}

fn event(seq: u64) -> pb::Event {
    pb::Event::from(&RoomEvent {
        room: "r@conference.a.test".parse().unwrap(),
        seq,
        now: Timestamp(1_000 + seq as i64),
        input: Input::Bounced {
            from: "bob@b.test/x".parse().unwrap(),
        },
    })
}

fn master_frame(frame: master_frame::Frame) -> pb::MasterFrame {
    pb::MasterFrame { frame: Some(frame) }
}

#[tokio::test]
async fn hello_and_a_batch_are_welcomed_and_acknowledged() {
    let (addr, stop) = serve().await;
    let mut client = PeeringClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let outbound = tokio_stream::iter(vec![
        master_frame(master_frame::Frame::Hello(dmuc_protocol::hello(
            "conference.a.test",
        ))),
        master_frame(master_frame::Frame::Events(pb::EventBatch {
            events: (1..=3).map(event).collect(),
        })),
        master_frame(master_frame::Frame::Keepalive(pb::Keepalive { nonce: 77 })),
    ]);
    let mut inbound = client.replicate(outbound).await.unwrap().into_inner();

    let mut received = Vec::new();
    while let Some(frame) = inbound.message().await.unwrap() {
        received.push(frame.frame.unwrap());
    }
    let welcome = pb::Welcome {
        version: dmuc_protocol::PROTOCOL_VERSION,
        features: feature::ALL.iter().map(|f| (*f).to_owned()).collect(),
        peer_jid: "peer.b.test".into(),
        domain: "b.test".into(),
        resumable: Vec::new(),
        intercepts: false,
    };
    let ack = |seq| {
        peer_frame::Frame::Ack(pb::Ack {
            room: "r@conference.a.test".into(),
            seq,
        })
    };
    assert_eq!(
        received,
        [
            peer_frame::Frame::Welcome(welcome),
            ack(1),
            ack(2),
            ack(3),
            peer_frame::Frame::Keepalive(pb::Keepalive { nonce: 77 }),
        ]
    );
    let _ = stop.send(());
}

#[tokio::test]
async fn a_malformed_frame_ends_the_stream_with_its_status() {
    let (addr, stop) = serve().await;
    let mut client = PeeringClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut bad_event = event(1);
    bad_event.input = Some(pb::Input { kind: None });
    let outbound = tokio_stream::iter(vec![master_frame(master_frame::Frame::Events(
        pb::EventBatch {
            events: vec![bad_event],
        },
    ))]);
    let mut inbound = client.replicate(outbound).await.unwrap().into_inner();
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "event.input.kind: missing");
    let _ = stop.send(());
}
