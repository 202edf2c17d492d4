//! Hostile peers, against the real master with real Prosody domains: a
//! peerhost that speaks for another domain's users (or another domain's
//! split), one whose certificate is not for the JID it is supposed to be,
//! and one that its domain does not list; and a peerhost resubmitting its
//! split's merges. The peers are fakes in this test process (a tonic
//! server over mutual TLS, an XMPP component answering disco), since a
//! real peerhost does none of this.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dmuc_component::{Inbound, LinkConfig};
use dmuc_peerhost::disco::{self, Advertised};
use dmuc_protocol::pb::peering_server::{Peering, PeeringServer};
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::tls::{self, TlsFiles};
use dmuc_room::event::JoinRequest;
use dmuc_room::{Input, Merge, Nick, Payload, Seq, StanzaId, Timestamp};
use dmuc_testbed::distributed::tls_toml;
use dmuc_testbed::pki::{IssuedCert, TestCa};
use dmuc_testbed::scenarios::{MasterSetup, start_dmuc_testbed};
use dmuc_testbed::{DomainOptions, MasterProcess, Testbed, TestbedOptions, stanza};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

const MASTER: &str = env!("CARGO_BIN_EXE_dmuc-master");
const ROOM: &str = "hostile@conference.a.test";
const WAIT: Duration = Duration::from_secs(15);

type Frames = Pin<Box<dyn Stream<Item = Result<pb::PeerFrame, Status>> + Send>>;

/// A fake peerhost for b.test: welcomes the master, then, when told, sends
/// the submissions it was given, and passes on the master's `SplitMerged`.
struct FakePeer {
    streams: Arc<AtomicUsize>,
    submit: watch::Receiver<Vec<pb::Submit>>,
    merged: mpsc::UnboundedSender<pb::SplitMerged>,
}

#[tonic::async_trait]
impl Peering for FakePeer {
    type ReplicateStream = Frames;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::MasterFrame>>,
    ) -> Result<Response<Frames>, Status> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut submit = self.submit.clone();
        let merged = self.merged.clone();
        tokio::spawn(async move {
            let frame = |f| Ok(pb::PeerFrame { frame: Some(f) });
            let welcome = peer_frame::Frame::Welcome(pb::Welcome {
                version: dmuc_protocol::PROTOCOL_VERSION,
                features: vec![],
                peer_jid: "muc-peer.b.test".into(),
                domain: "b.test".into(),
                resumable: vec![],
                intercepts: false,
            });
            let _ = tx.send(frame(welcome)).await;
            let batch = submit.wait_for(|s| !s.is_empty()).await.map(|s| s.clone());
            for s in batch.unwrap_or_default() {
                let _ = tx.send(frame(peer_frame::Frame::Submit(s))).await;
            }
            // Stay connected, reading what the master sends.
            while let Ok(Some(frame)) = inbound.message().await {
                if let Some(master_frame::Frame::Merged(m)) = frame.frame {
                    let _ = merged.send(m);
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A served [`FakePeer`] (until the test ends).
struct Fake {
    addr: SocketAddr,
    /// How many streams the master opened.
    streams: Arc<AtomicUsize>,
    /// Sends these submissions on the (first) stream.
    trigger: watch::Sender<Vec<pb::Submit>>,
    /// The master's merge confirmations, in order.
    merged: mpsc::UnboundedReceiver<pb::SplitMerged>,
}

/// Serves a [`FakePeer`] over mutual TLS with `cert`.
async fn fake_peer(cert: &IssuedCert) -> Fake {
    let files = TlsFiles {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
        ca: Some(cert.ca.clone()),
    };
    let loaded = files.load().expect("test certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let (trigger, submit) = watch::channel(Vec::new());
    let (merged_tx, merged) = mpsc::unbounded_channel();
    let server = Server::builder()
        .tls_config(tls::server_config(&loaded))
        .unwrap()
        .add_service(PeeringServer::new(FakePeer {
            streams: streams.clone(),
            submit,
            merged: merged_tx,
        }))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    Fake {
        addr,
        streams,
        trigger,
        merged,
    }
}

/// The master on a.test over TLS with certificates of `ca`, with
/// `peering` lines in its `[peering]` section.
async fn master(
    options: TestbedOptions,
    ca: &TestCa,
    dir: &std::path::Path,
    peering: &str,
) -> (Testbed, MasterProcess) {
    let cert = ca.issue(dir, "master", &["conference.a.test"]).unwrap();
    let setup = MasterSetup {
        peering_toml: format!("{}{peering}", tls_toml(&cert)),
        ..MasterSetup::default()
    };
    start_dmuc_testbed(MASTER, options, &setup).await.unwrap()
}

fn static_peer(addr: SocketAddr) -> String {
    format!(
        "\n[[peering.peer]]\ndomain = \"b.test\"\njid = \"muc-peer.b.test\"\nendpoint = \"https://{addr}\"\n"
    )
}

fn join(from: &str, nick: &str) -> pb::Submit {
    let input = Input::Presence {
        from: from.parse().unwrap(),
        nick: Nick::new(nick).unwrap(),
        join: Some(JoinRequest::default()),
        payload: Payload::default(),
    };
    pb::Submit {
        room: ROOM.into(),
        input: Some(pb::Input::from(&input)),
    }
}

/// Submission `index` of `domain`'s split since `began`: `bob@b.test/x`
/// said `body`, as split message `index + 1`.
fn merge(room: &str, domain: &str, began: Timestamp, index: u64, body: &str) -> pb::Submit {
    let said = Input::Groupchat {
        from: "bob@b.test/x".parse().unwrap(),
        id: None,
        subject: None,
        has_body: true,
        payload: Payload::from_xml(&format!("<body xmlns='jabber:client'>{body}</body>")).unwrap(),
        size: body.len(),
    };
    let merge = Input::Merge(Box::new(Merge {
        domain: domain.into(),
        began,
        index,
        at: Timestamp(began.0 + 1000 * index as i64),
        local_id: Some(StanzaId::provisional(domain, began, Seq(index + 1))),
        input: said,
    }));
    pb::Submit {
        room: room.into(),
        input: Some(pb::Input::from(&merge)),
    }
}

fn two_domains() -> TestbedOptions {
    TestbedOptions::new()
        .with_domain(DomainOptions::new("a.test"))
        .with_domain(DomainOptions::new("b.test"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peerhost_speaks_only_for_its_own_domain() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let peer_cert = ca.issue(pki.path(), "peer", &["muc-peer.b.test"]).unwrap();
    let peer = fake_peer(&peer_cert).await;
    let (testbed, master) = master(two_domains(), &ca, pki.path(), &static_peer(peer.addr)).await;
    master
        .wait_for_log("peerhost stream up", WAIT)
        .await
        .unwrap();
    assert_eq!(peer.streams.load(Ordering::SeqCst), 1);

    let mut alice = testbed.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    // b.test's peerhost submits a join for a c.test user, then one for its own.
    peer.trigger
        .send(vec![
            join("carol@c.test/x", "carol"),
            join("bob@b.test/x", "bob"),
        ])
        .unwrap();
    alice
        .expect_presence_from(ROOM, "bob", |p| stanza::stanza_type(p).is_empty())
        .await
        .unwrap();
    // Carol's would have come first: she never joined.
    alice
        .expect_none_pending("carol in the room", |p| {
            stanza::from(p) == format!("{ROOM}/carol")
        })
        .unwrap();
    master
        .wait_for_log("submission for a user of another domain rejected", WAIT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peerhost_with_a_certificate_for_another_jid_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    // Listed as muc-peer.b.test, but its certificate is for muc-peer.c.test.
    let wrong = ca.issue(pki.path(), "peer", &["muc-peer.c.test"]).unwrap();
    let peer = fake_peer(&wrong).await;
    let (testbed, master) = master(two_domains(), &ca, pki.path(), &static_peer(peer.addr)).await;
    master
        .wait_for_log("not valid for name \"muc-peer.b.test\"", WAIT)
        .await
        .unwrap();

    // b.test's users are served by the master itself.
    let mut alice = testbed.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut bob = testbed.client("b.test", "bob").await.unwrap();
    let joined = bob.join(ROOM, "bob").await.unwrap();
    assert_eq!(joined.occupants.len(), 1);
    alice.say(ROOM, "hello bob").await.unwrap();
    bob.expect_groupchat_body(ROOM, "hello bob").await.unwrap();
    assert_eq!(
        peer.streams.load(Ordering::SeqCst),
        0,
        "no stream was ever opened"
    );
    assert!(!master.log().contains("peerhost stream up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peerhost_its_domain_does_not_list_is_not_used() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let cert = ca
        .issue(pki.path(), "rogue", &["muc-rogue.c.test"])
        .unwrap();
    let peer = fake_peer(&cert).await;
    // c.test lists a component that claims to serve b.test's users; b.test
    // lists nothing.
    let options = two_domains().with_domain(
        DomainOptions::new("c.test").with_component("muc-rogue.c.test", "rogue-secret"),
    );
    let (testbed, master) = master(options, &ca, pki.path(), "").await;
    let rogue = rogue_component(
        &testbed,
        Advertised {
            peer_jid: "muc-rogue.c.test".parse().unwrap(),
            domain: "b.test".parse().unwrap(),
            endpoint: Some(format!("https://{}", peer.addr)),
        },
    );
    let mut probe = testbed.client("c.test", "probe").await.unwrap();
    probe
        .wait_for_service("muc-rogue.c.test", Duration::from_secs(15))
        .await
        .unwrap();

    let mut alice = testbed.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut carol = testbed.client("c.test", "carol").await.unwrap();
    carol.join(ROOM, "carol").await.unwrap();
    let mut bob = testbed.client("b.test", "bob").await.unwrap();
    bob.join(ROOM, "bob").await.unwrap();
    alice.say(ROOM, "hello both").await.unwrap();
    bob.expect_groupchat_body(ROOM, "hello both").await.unwrap();
    carol
        .expect_groupchat_body(ROOM, "hello both")
        .await
        .unwrap();

    let log = master.log();
    assert!(
        log.contains("discovery domain=c.test peerhost=None"),
        "{log}"
    );
    assert!(
        log.contains("discovery domain=b.test peerhost=None"),
        "{log}"
    );
    assert_eq!(
        peer.streams.load(Ordering::SeqCst),
        0,
        "the rogue was never dialled"
    );
    rogue.cancel();
}

/// An XMPP component on c.test answering disco as a peerhost would, with
/// `advertised`.
fn rogue_component(testbed: &Testbed, advertised: Advertised) -> CancellationToken {
    let config = LinkConfig::new(
        "muc-rogue.c.test".parse().unwrap(),
        testbed.component_addr("c.test").unwrap().to_string(),
        "rogue-secret",
    );
    let stop = CancellationToken::new();
    let link = dmuc_component::spawn(config, stop.clone()).unwrap();
    let mut inbound = link.inbound;
    let handle = link.handle;
    tokio::spawn(async move {
        while let Some(item) = inbound.recv().await {
            if let Inbound::Stanza(el) = item
                && let Some(answer) = disco::answer(&el, &advertised)
            {
                let _ = handle.send(answer).await;
            }
        }
    });
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peerhost_dialling_in_for_a_domain_that_does_not_list_it_is_refused() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("listen = \"127.0.0.1:{port}\"\n");
    let (testbed, master) = master(two_domains(), &ca, pki.path(), &listen).await;

    // A valid certificate, for a JID b.test does not list.
    let rogue = ca
        .issue(pki.path(), "rogue", &["muc-rogue.b.test"])
        .unwrap();
    let files = TlsFiles {
        cert: rogue.cert.clone(),
        key: rogue.key.clone(),
        ca: Some(rogue.ca.clone()),
    };
    let loaded = files.load().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls::client_config(&loaded, "conference.a.test").unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (frames, rx) = mpsc::channel(4);
    let mut inbound = dmuc_protocol::pb::uplink_client::UplinkClient::new(channel)
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let hello = inbound.message().await.unwrap().and_then(|f| f.frame);
    assert!(matches!(hello, Some(pb::master_frame::Frame::Hello(_))));
    let welcome = peer_frame::Frame::Welcome(pb::Welcome {
        version: dmuc_protocol::PROTOCOL_VERSION,
        features: vec![],
        peer_jid: "muc-rogue.b.test".into(),
        domain: "b.test".into(),
        resumable: vec![],
        intercepts: false,
    });
    frames
        .send(pb::PeerFrame {
            frame: Some(welcome),
        })
        .await
        .unwrap();
    // The master asks b.test, which does not list it: the stream ends.
    let next = tokio::time::timeout(WAIT, inbound.message()).await.unwrap();
    assert!(matches!(next, Ok(None) | Err(_)), "{next:?}");
    master
        .wait_for_log("peerhost refused: its domain does not list it", WAIT)
        .await
        .unwrap();

    // b.test's users are served directly.
    let mut alice = testbed.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut bob = testbed.client("b.test", "bob").await.unwrap();
    bob.join(ROOM, "bob").await.unwrap();
    alice.say(ROOM, "hello bob").await.unwrap();
    bob.expect_groupchat_body(ROOM, "hello bob").await.unwrap();
    assert!(!master.log().contains("creating slave"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_is_merged_once_and_confirmed() {
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let peer_cert = ca.issue(pki.path(), "peer", &["muc-peer.b.test"]).unwrap();
    let mut peer = fake_peer(&peer_cert).await;
    let (testbed, master) = master(two_domains(), &ca, pki.path(), &static_peer(peer.addr)).await;
    master
        .wait_for_log("peerhost stream up", WAIT)
        .await
        .unwrap();
    let mut alice = testbed.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();

    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let began = Timestamp(since_epoch.as_millis() as i64 - 60_000);
    let nowhere = "nowhere@conference.a.test";
    peer.trigger
        .send(vec![
            merge(ROOM, "b.test", began, 0, "one"),
            merge(ROOM, "b.test", began, 1, "two"),
            // Resubmitted (as after a lost confirmation): merged already.
            merge(ROOM, "b.test", began, 0, "one"),
            // Not b.test's split: rejected.
            merge(ROOM, "c.test", began, 2, "forged"),
            merge(ROOM, "b.test", began, 2, "three"),
            // A room that does not exist: nothing to merge into.
            merge(nowhere, "b.test", began, 0, "lost"),
        ])
        .unwrap();

    // Alice sees bob's split-era messages once, with their split ids and times.
    for (index, body) in ["one", "two", "three"].into_iter().enumerate() {
        let el = alice.expect_groupchat_body(ROOM, body).await.unwrap();
        assert_eq!(stanza::from(&el), format!("{ROOM}/bob"));
        let id = StanzaId::provisional("b.test", began, Seq(index as u64 + 1));
        assert_eq!(stanza::stanza_ids(&el, ROOM), [id.as_str()]);
        let delay = stanza::delay(&el).expect("a delay");
        let at = Timestamp(began.0 + 1000 * index as i64);
        assert_eq!(
            stanza::attr(delay, "stamp"),
            dmuc_stanza::outbound::stamp(at)
        );
    }
    alice
        .expect_none_pending("a message twice, or a forged one", |el| {
            stanza::body(el).is_some_and(|b| b == "one" || b == "forged")
        })
        .unwrap();
    master
        .wait_for_log("merge of another domain's split rejected", WAIT)
        .await
        .unwrap();

    // Every accepted submission is confirmed, the duplicate too.
    let mut confirmed = Vec::new();
    for _ in 0..5 {
        let m = tokio::time::timeout(WAIT, peer.merged.recv())
            .await
            .expect("a confirmation")
            .unwrap();
        assert_eq!(m.began_ms, began.0);
        confirmed.push((m.room, m.next_index));
    }
    let room = |next: u64| (ROOM.to_owned(), next);
    // The nonexistent room's answer needs no commit: it may come first.
    let missing = confirmed
        .iter()
        .position(|(r, _)| r == nowhere)
        .expect("the missing room confirmed");
    assert_eq!(confirmed.remove(missing), (nowhere.to_owned(), 1));
    assert_eq!(confirmed, [room(1), room(2), room(2), room(3)]);
}
