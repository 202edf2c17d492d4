//! The peerhost as a master sees it, end to end: real Prosody for a.test
//! and b.test, the peerhost in-process as `muc-peer.b.test` (declared with
//! `validate_from_addresses = false`), and this test as the master, over a
//! real gRPC stream on TCP. The test keeps its own `Room` in step with the
//! events it sends, as the master would. Bob (b.test) receives everything
//! from the slave through b.test alone: no master, no s2s.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dmuc_peerhost::Config;
use dmuc_protocol::pb::peering_client::PeeringClient;
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::{RoomEvent, SlaveStart};
use dmuc_room::event::JoinRequest;
use dmuc_room::{
    Action, ConfigBounds, Input, Nick, Outgoing, Payload, Room, RoomConfig, RoomSettings, Timestamp,
};
use dmuc_testbed::stanza::{self, NS_SID};
use dmuc_testbed::{Client, DomainOptions, Element, Testbed, TestbedOptions};
use jid::BareJid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

const ROOM: &str = "room@conference.a.test";
const ALICE: &str = "alice@a.test/phone";
const PEER: &str = "muc-peer.b.test";
const WAIT: Duration = Duration::from_secs(5);

/// The master's side of one stream: its own room, the frames it sends and
/// the frames it receives.
struct Master {
    room: Room,
    seq: u64,
    now: i64,
    frames: mpsc::Sender<pb::MasterFrame>,
    replies: Streaming<pb::PeerFrame>,
}

fn settings() -> RoomSettings {
    // As dmuc-master's defaults, but unlocked: no owner configures it here.
    RoomSettings {
        epoch: 1,
        salt: Arc::from(&b"peerhost-test"[..]),
        bounds: ConfigBounds {
            max_users: 1000,
            max_history: 100,
        },
        lock_new_rooms: false,
        default_config: RoomConfig {
            max_users: 200,
            history_length: 20,
            ..RoomConfig::default()
        },
        rate_limit: None,
    }
}

fn join(from: &str, nick: &str) -> Input {
    Input::Presence {
        from: from.parse().unwrap(),
        nick: Nick::new(nick).unwrap(),
        join: Some(JoinRequest::default()),
        payload: Payload::default(),
    }
}

fn say(from: &str, body: &str) -> Input {
    let payload = Payload::from_xml(&format!("<body xmlns='jabber:client'>{body}</body>")).unwrap();
    Input::Groupchat {
        from: from.parse().unwrap(),
        id: None,
        subject: None,
        has_body: true,
        payload,
        size: body.len() + 100,
    }
}

fn frame(frame: master_frame::Frame) -> pb::MasterFrame {
    pb::MasterFrame { frame: Some(frame) }
}

async fn open(
    addr: std::net::SocketAddr,
    hello: pb::Hello,
) -> Result<(mpsc::Sender<pb::MasterFrame>, Streaming<pb::PeerFrame>)> {
    let mut client = PeeringClient::connect(format!("http://{addr}")).await?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(frame(master_frame::Frame::Hello(hello))).await?;
    let replies = client
        .replicate(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, replies))
}

impl Master {
    /// Opens a stream, is welcomed, and replicates a room where alice
    /// (a.test) is alone.
    async fn connect(addr: std::net::SocketAddr) -> Result<Master> {
        let (frames, mut replies) = open(addr, dmuc_protocol::hello("conference.a.test")).await?;
        match next(&mut replies).await? {
            peer_frame::Frame::Welcome(w) => {
                assert_eq!(w.domain, "b.test");
                assert_eq!(w.peer_jid, PEER);
                assert_eq!(w.features, dmuc_protocol::feature::ALL);
            }
            other => bail!("expected welcome, got {other:?}"),
        }
        let mut master = Master {
            room: Room::new(ROOM.parse::<BareJid>()?, settings()),
            seq: 0,
            now: 1_700_000_000_000,
            frames,
            replies,
        };
        master.handle(join(ALICE, "alice"));
        let start = SlaveStart {
            snapshot: master.room.snapshot(),
            seq: master.seq,
            deliver_after: master.seq,
        };
        master
            .send(master_frame::Frame::Create(pb::CreateSlave::from(&start)))
            .await?;
        Ok(master)
    }

    /// Feeds the master's own room; returns the event as replicated.
    fn handle(&mut self, input: Input) -> (RoomEvent, Vec<Action>) {
        self.seq += 1;
        self.now += 1000;
        let event = RoomEvent {
            room: self.room.jid().clone(),
            seq: self.seq,
            now: Timestamp(self.now),
            input: input.clone(),
        };
        (event, self.room.handle(input, Timestamp(self.now)))
    }

    async fn send(&self, f: master_frame::Frame) -> Result<()> {
        Ok(self.frames.send(frame(f)).await?)
    }

    async fn events(&self, events: &[&RoomEvent]) -> Result<()> {
        let batch = pb::EventBatch {
            events: events.iter().map(|e| pb::Event::from(*e)).collect(),
        };
        self.send(master_frame::Frame::Events(batch)).await
    }

    /// Waits for the (cumulative) ack of `seq`.
    async fn acked(&mut self, seq: u64) -> Result<()> {
        loop {
            match next(&mut self.replies).await? {
                peer_frame::Frame::Ack(ack) if ack.room == ROOM && ack.seq >= seq => {
                    assert_eq!(ack.seq, seq, "acked beyond what was sent");
                    return Ok(());
                }
                peer_frame::Frame::Ack(_) => {}
                other => bail!("expected ack {seq}, got {other:?}"),
            }
        }
    }
}

async fn next(replies: &mut Streaming<pb::PeerFrame>) -> Result<peer_frame::Frame> {
    tokio::time::timeout(WAIT, replies.message())
        .await
        .context("no frame from the peerhost")??
        .and_then(|f| f.frame)
        .context("stream ended")
}

/// The stanza id the master's room gave a groupchat.
fn stanza_id(actions: &[Action]) -> String {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send {
                stanza: Outgoing::Groupchat(m),
                ..
            } => Some(m.stanza_id.to_string()),
            _ => None,
        })
        .expect("a groupchat")
}

fn has_stanza_id(el: &Element, id: &str) -> bool {
    stanza::is_message(el)
        && el
            .get_child("stanza-id", NS_SID)
            .is_some_and(|s| s.attr("id") == Some(id) && s.attr("by") == Some(ROOM))
}

async fn start() -> Result<(
    Testbed,
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), dmuc_peerhost::Error>>,
)> {
    let testbed = Testbed::start(
        TestbedOptions::new()
            .with_domain(DomainOptions::new("a.test"))
            .with_domain(
                DomainOptions::new("b.test").with_unvalidated_component(PEER, "peer-secret"),
            ),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = Config::parse(
        &format!(
            "[component]\njid = '{PEER}'\nserver = '{}'\nsecret = '{}'\n\
             [peering]\nlisten = '{addr}'\nendpoint = 'http://{addr}'\n",
            testbed.component_addr("b.test")?,
            testbed.component_secret(PEER)?,
        ),
        None,
    )?;
    let shutdown = CancellationToken::new();
    let peerhost = tokio::spawn(dmuc_peerhost::run(config, listener, shutdown.clone()));
    Ok((testbed, addr, shutdown, peerhost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_delivers_the_masters_events_to_its_domain() -> Result<()> {
    let (testbed, addr, shutdown, peerhost) = start().await?;
    let mut bob: Client = testbed.client("b.test", "bob").await?;
    let mut master = Master::connect(addr).await?;

    // Bob joins (the master got his presence over s2s, say): the slave
    // renders his whole join sequence.
    let (bob_joins, _) = master.handle(join(bob.jid(), "bob"));
    let (hello, actions) = master.handle(say(ALICE, "hello from a.test"));
    let id = stanza_id(&actions);
    assert!(id.starts_with("1-"), "epoch 1: {id}");
    master.events(&[&bob_joins, &hello]).await?;

    let alice = bob
        .expect("alice's presence", |e| {
            stanza::is_presence(e) && stanza::from(e) == format!("{ROOM}/alice")
        })
        .await?;
    assert!(!stanza::has_status(&alice, 110));
    let own = bob
        .expect("own presence", |e| {
            stanza::is_presence(e) && stanza::from(e) == format!("{ROOM}/bob")
        })
        .await?;
    assert!(stanza::has_status(&own, 110), "{own:?}");
    bob.expect("the subject", |e| {
        stanza::is_message(e) && e.get_child("subject", stanza::NS_CLIENT).is_some()
    })
    .await?;
    let message = bob
        .expect("alice's message", |e| has_stanza_id(e, &id))
        .await?;
    assert_eq!(stanza::from(&message), format!("{ROOM}/alice"));
    assert_eq!(stanza::stanza_type(&message), "groupchat");
    master.acked(hello.seq).await?;

    // The same event again (say, resent after a reconnect) is dropped; the
    // next one is delivered, once.
    let (again, actions) = master.handle(say(ALICE, "second"));
    let second = stanza_id(&actions);
    master.events(&[&hello, &again]).await?;
    bob.expect("the second message", |e| has_stanza_id(e, &second))
        .await?;
    bob.expect_none_pending("the first message twice", |e| has_stanza_id(e, &id))?;
    master.acked(again.seq).await?;

    // A gap: the slave asks for a resync from what it has.
    let (_lost, _) = master.handle(say(ALICE, "lost"));
    let (after_gap, _) = master.handle(say(ALICE, "after the gap"));
    master.events(&[&after_gap]).await?;
    match next(&mut master.replies).await? {
        peer_frame::Frame::Resync(r) => {
            assert_eq!((r.room.as_str(), r.have_seq), (ROOM, again.seq));
        }
        other => bail!("expected resync, got {other:?}"),
    }

    // Events for a room without a slave: a resync from nothing.
    let mut stray = after_gap.clone();
    stray.room = "other@conference.a.test".parse()?;
    master.events(&[&stray]).await?;
    match next(&mut master.replies).await? {
        peer_frame::Frame::Resync(r) => {
            assert_eq!(
                (r.room.as_str(), r.have_seq),
                ("other@conference.a.test", 0)
            );
        }
        other => bail!("expected resync, got {other:?}"),
    }

    // Keepalives are echoed.
    master
        .send(master_frame::Frame::Keepalive(pb::Keepalive { nonce: 42 }))
        .await?;
    assert_eq!(
        next(&mut master.replies).await?,
        peer_frame::Frame::Keepalive(pb::Keepalive { nonce: 42 })
    );

    drop(master);
    shutdown.cancel();
    tokio::time::timeout(WAIT, peerhost).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_version_is_refused() -> Result<()> {
    let (_testbed, addr, shutdown, peerhost) = start().await?;
    let hello = pb::Hello {
        min_version: 2,
        max_version: 3,
        ..dmuc_protocol::hello("conference.a.test")
    };
    let (_frames, mut replies) = open(addr, hello).await?;
    match next(&mut replies).await? {
        peer_frame::Frame::Refused(r) => {
            assert!(
                r.reason.contains("no common protocol version"),
                "{}",
                r.reason
            )
        }
        other => bail!("expected refused, got {other:?}"),
    }
    // Then the peerhost ends the stream.
    let end = tokio::time::timeout(WAIT, replies.message()).await??;
    assert!(end.is_none());

    // A stream that does not start with hello is refused too.
    let mut client = PeeringClient::connect(format!("http://{addr}")).await?;
    let first = frame(master_frame::Frame::Keepalive(pb::Keepalive { nonce: 1 }));
    let mut replies = client
        .replicate(tokio_stream::iter(vec![first]))
        .await?
        .into_inner();
    match next(&mut replies).await? {
        peer_frame::Frame::Refused(r) => assert_eq!(r.reason, "the first frame must be hello"),
        other => bail!("expected refused, got {other:?}"),
    }

    shutdown.cancel();
    tokio::time::timeout(WAIT, peerhost).await???;
    Ok(())
}

/// How a master finds b.test's peerhost, over real s2s: b.test's server
/// lists the component in its disco#items, and the peerhost's disco#info
/// has the dmuc feature, the endpoint and the domain it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_find_the_peerhost_through_service_discovery() -> Result<()> {
    let (testbed, addr, shutdown, peerhost) = start().await?;
    let mut alice: Client = testbed.client("a.test", "alice").await?;
    alice.wait_for_service(PEER, WAIT).await?;

    let items = alice
        .iq_ok(
            "get",
            "b.test",
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await?;
    let listed: Vec<String> = items
        .children()
        .flat_map(|q| q.children())
        .filter_map(|i| i.attr("jid").map(str::to_owned))
        .collect();
    assert!(listed.iter().any(|j| j == PEER), "b.test lists {listed:?}");

    let info = alice
        .iq_ok(
            "get",
            PEER,
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await?;
    assert!(
        stanza::disco_features(&info)
            .iter()
            .any(|f| f == dmuc_protocol::disco::FEATURE)
    );
    let form = stanza::find_form(&info).context("an XEP-0128 form")?;
    assert_eq!(
        stanza::form_values(form, "FORM_TYPE"),
        Some(vec![dmuc_protocol::disco::FORM_TYPE.to_owned()])
    );
    assert_eq!(
        stanza::form_values(form, dmuc_protocol::disco::ENDPOINT),
        Some(vec![format!("http://{addr}")])
    );
    assert_eq!(
        stanza::form_values(form, dmuc_protocol::disco::DOMAIN),
        Some(vec!["b.test".to_owned()])
    );

    shutdown.cancel();
    peerhost.await??;
    Ok(())
}
