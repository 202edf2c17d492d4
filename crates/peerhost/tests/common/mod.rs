//! The harness of the peerhost's end-to-end tests: real Prosody for a.test
//! and b.test, the peerhost as `muc-peer.b.test` (declared with
//! `validate_from_addresses = false`), in-process ([`Peerhost`]) or as the
//! real binary ([`PeerhostProcess`]), and the test as the master
//! ([`Master`]) over a real gRPC stream on TCP. The master keeps its own
//! `Room` in step with the events it sends, as a real master would.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dmuc_peerhost::Config;
use dmuc_peerhost::store::{Store, StoredRoom};
use dmuc_protocol::pb::peering_client::PeeringClient;
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_protocol::{RoomEvent, SlaveStart};
use dmuc_room::event::JoinRequest;
use dmuc_room::{
    Action, ConfigBounds, Input, Nick, Outgoing, Payload, Room, RoomConfig, RoomSettings, Timestamp,
};
use dmuc_testbed::stanza::{self, NS_SID};
use dmuc_testbed::{DomainOptions, Element, ManagedProcess, Testbed, TestbedOptions};
use jid::BareJid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

pub const MASTER: &str = "conference.a.test";
pub const ROOM: &str = "room@conference.a.test";
pub const ALICE: &str = "alice@a.test/phone";
pub const PEER: &str = "muc-peer.b.test";
pub const WAIT: Duration = Duration::from_secs(5);
/// Between two looks at a database another process writes.
const STORE_POLL: Duration = Duration::from_millis(20);

/// One stream, as the master holds it: what it sends and what it receives.
pub type Stream = (mpsc::Sender<pb::MasterFrame>, Streaming<pb::PeerFrame>);

/// The master's side: its own room, and the stream it has open.
pub struct Master {
    pub room: Room,
    pub seq: u64,
    now: i64,
    frames: mpsc::Sender<pb::MasterFrame>,
    pub replies: Streaming<pb::PeerFrame>,
    /// What the last `Welcome` offered to resume.
    offered: Vec<(String, u64)>,
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

pub fn join(from: &str, nick: &str) -> Input {
    Input::Presence {
        from: from.parse().unwrap(),
        nick: Nick::new(nick).unwrap(),
        join: Some(JoinRequest::default()),
        payload: Payload::default(),
    }
}

pub fn say(from: &str, body: &str) -> Input {
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

pub fn frame(frame: master_frame::Frame) -> pb::MasterFrame {
    pb::MasterFrame { frame: Some(frame) }
}

pub async fn open(
    addr: SocketAddr,
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

/// Opens a stream with `hello` and checks the peerhost's `Welcome`; also
/// returns the slaves it offers to resume.
async fn welcomed(addr: SocketAddr, hello: pb::Hello) -> Result<(Stream, Vec<(String, u64)>)> {
    let features = hello.features.clone();
    let (frames, mut replies) = open(addr, hello).await?;
    let offered = match next(&mut replies).await? {
        peer_frame::Frame::Welcome(w) => {
            assert_eq!(w.domain, "b.test");
            assert_eq!(w.peer_jid, PEER);
            assert_eq!(w.features, features);
            w.resumable.into_iter().map(|r| (r.room, r.seq)).collect()
        }
        other => bail!("expected welcome, got {other:?}"),
    };
    Ok(((frames, replies), offered))
}

impl Master {
    /// Opens a stream, is welcomed, and replicates a room where alice
    /// (a.test) is alone.
    pub async fn connect(addr: SocketAddr) -> Result<Master> {
        let ((frames, replies), offered) = welcomed(addr, dmuc_protocol::hello(MASTER)).await?;
        let mut master = Master {
            offered,
            room: Room::new(ROOM.parse::<BareJid>()?, settings()),
            seq: 0,
            now: 1_700_000_000_000,
            frames,
            replies,
        };
        master.handle(join(ALICE, "alice"));
        master.create().await?;
        Ok(master)
    }

    /// Opens a new stream, welcomed with `hello`, and uses it from now on;
    /// returns the old one (dropping it closes it).
    pub async fn reconnect_with(&mut self, addr: SocketAddr, hello: pb::Hello) -> Result<Stream> {
        let (new, offered) = welcomed(addr, hello).await?;
        self.offered = offered;
        let frames = std::mem::replace(&mut self.frames, new.0);
        let replies = std::mem::replace(&mut self.replies, new.1);
        Ok((frames, replies))
    }

    /// [`Self::reconnect_with`] the `Hello` of this build.
    pub async fn reconnect(&mut self, addr: SocketAddr) -> Result<Stream> {
        self.reconnect_with(addr, dmuc_protocol::hello(MASTER))
            .await
    }

    /// Sends `CreateSlave` with the room as it is now.
    pub async fn create(&self) -> Result<()> {
        let start = SlaveStart {
            snapshot: self.room.snapshot(),
            seq: self.seq,
            deliver_after: self.seq,
        };
        self.send(master_frame::Frame::Create(pb::CreateSlave::from(&start)))
            .await
    }

    /// Feeds the master's own room; returns the event as replicated.
    pub fn handle(&mut self, input: Input) -> (RoomEvent, Vec<Action>) {
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

    pub async fn send(&self, f: master_frame::Frame) -> Result<()> {
        Ok(self.frames.send(frame(f)).await?)
    }

    pub async fn events(&self, events: &[&RoomEvent]) -> Result<()> {
        let batch = pb::EventBatch {
            events: events.iter().map(|e| pb::Event::from(*e)).collect(),
        };
        self.send(master_frame::Frame::Events(batch)).await
    }

    /// Answers a `Resync` of `room` with `Resume`.
    pub async fn resume(&self, room: &str, deliver_after: u64) -> Result<()> {
        let resume = pb::Resume {
            room: room.to_owned(),
            deliver_after,
        };
        self.send(master_frame::Frame::Resume(resume)).await
    }

    /// The next frame from the peerhost.
    pub async fn next(&mut self) -> Result<peer_frame::Frame> {
        next(&mut self.replies).await
    }

    /// The slaves the peerhost offered to resume in its last `Welcome`.
    pub fn offered(&self) -> &[(String, u64)] {
        &self.offered
    }

    /// The next frame, which must be a `Resync`: its room and `have_seq`.
    pub async fn resync(&mut self) -> Result<(String, u64)> {
        match self.next().await? {
            peer_frame::Frame::Resync(r) => Ok((r.room, r.have_seq)),
            other => bail!("expected resync, got {other:?}"),
        }
    }

    /// Sends a keepalive; the next frame must be its echo (so nothing else
    /// was sent before it on this stream).
    pub async fn echoed(&mut self, nonce: u64) -> Result<()> {
        self.send(master_frame::Frame::Keepalive(pb::Keepalive { nonce }))
            .await?;
        match self.next().await? {
            peer_frame::Frame::Keepalive(k) if k.nonce == nonce => Ok(()),
            other => bail!("expected the echo of keepalive {nonce}, got {other:?}"),
        }
    }

    /// Waits for the (cumulative) ack of `seq`.
    pub async fn acked(&mut self, seq: u64) -> Result<()> {
        loop {
            match self.next().await? {
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

/// Reads `replies` to their end, which must come without an error.
pub async fn ended(replies: &mut Streaming<pb::PeerFrame>) -> Result<()> {
    while tokio::time::timeout(WAIT, replies.message())
        .await
        .context("the stream did not end")??
        .is_some()
    {}
    Ok(())
}

pub async fn next(replies: &mut Streaming<pb::PeerFrame>) -> Result<peer_frame::Frame> {
    tokio::time::timeout(WAIT, replies.message())
        .await
        .context("no frame from the peerhost")??
        .and_then(|f| f.frame)
        .context("stream ended")
}

/// The stanza id the master's room gave a groupchat.
pub fn stanza_id(actions: &[Action]) -> String {
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

pub fn has_stanza_id(el: &Element, id: &str) -> bool {
    stanza::is_message(el)
        && el
            .get_child("stanza-id", NS_SID)
            .is_some_and(|s| s.attr("id") == Some(id) && s.attr("by") == Some(ROOM))
}

/// Prosody for a.test, and for b.test with the peerhost's component.
pub async fn testbed() -> Result<Testbed> {
    Ok(Testbed::start(
        TestbedOptions::new()
            .with_domain(DomainOptions::new("a.test"))
            .with_domain(
                DomainOptions::new("b.test").with_unvalidated_component(PEER, "peer-secret"),
            ),
    )
    .await?)
}

/// The peerhost's configuration: listening on `addr`, storing in `db`.
pub fn config_toml(testbed: &Testbed, addr: SocketAddr, db: &Path) -> Result<String> {
    Ok(format!(
        "[component]\njid = '{PEER}'\nserver = '{}'\nsecret = '{}'\n\
         [peering]\nlisten = '{addr}'\nendpoint = 'http://{addr}'\n\
         [storage]\npath = '{}'\n",
        testbed.component_addr("b.test")?,
        testbed.component_secret(PEER)?,
        db.display(),
    ))
}

/// The peerhost running in-process, on a listener of its own.
pub struct Peerhost {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dmuc_peerhost::Error>>,
}

impl Peerhost {
    /// Starts the peerhost of b.test with its database at `db`.
    pub async fn start(testbed: &Testbed, db: &Path) -> Result<Peerhost> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = Config::parse(&config_toml(testbed, addr, db)?, None)?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dmuc_peerhost::run(config, listener, shutdown.clone()));
        Ok(Peerhost {
            addr,
            shutdown,
            task,
        })
    }

    /// Shuts it down cleanly and waits until it has stopped.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task).await???;
        Ok(())
    }
}

/// The real `dmuc-peerhost` binary, to be killed.
pub struct PeerhostProcess {
    pub addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    process: ManagedProcess,
}

impl PeerhostProcess {
    /// Starts the binary with a configuration in `dir` and its database at `db`.
    pub async fn spawn(testbed: &Testbed, dir: &Path, db: &Path) -> Result<PeerhostProcess> {
        // A free port, released for the process to bind.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.join("peerhost.toml");
        std::fs::write(&config, config_toml(testbed, addr, db)?)?;
        let log = dir.join("peerhost.log");
        let process = spawn_binary(&config, &log)?;
        Ok(PeerhostProcess {
            addr,
            config,
            log,
            process,
        })
    }

    /// SIGKILL: a crash, as far as the peerhost can tell.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the binary again, with the same configuration and database.
    pub fn restart(&mut self) -> Result<()> {
        self.process = spawn_binary(&self.config, &self.log)?;
        Ok(())
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn spawn_binary(config: &Path, log: &Path) -> Result<ManagedProcess> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dmuc-peerhost"));
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(dmuc_testbed::spawn_process("dmuc-peerhost", cmd)?)
}

/// Waits until the database at `db` (which another process writes) holds
/// what `done` looks for in its stored rooms.
pub async fn wait_for_store(
    db: &Path,
    what: &str,
    done: impl Fn(&[StoredRoom]) -> bool,
) -> Result<Vec<StoredRoom>> {
    let store = Store::open(db).await?;
    let deadline = Instant::now() + WAIT;
    let rooms = loop {
        let rooms = store.rooms().await?;
        if done(&rooms) {
            break rooms;
        }
        if Instant::now() >= deadline {
            bail!("storage never showed {what}: {rooms:?}");
        }
        tokio::time::sleep(STORE_POLL).await;
    };
    store.close().await;
    Ok(rooms)
}

/// What is stored in `db` (no other process writing it).
pub async fn stored(db: &Path) -> Result<Vec<StoredRoom>> {
    let store = Store::open(db).await?;
    let rooms = store.rooms().await?;
    store.close().await;
    Ok(rooms)
}
