//! The lean load client: one TCP connection per occupant, SASL PLAIN, bind,
//! join, and then a receive loop that only looks for benchmark bodies.
//!
//! Unlike the testbed's [`dmuc_testbed::Client`], it keeps nothing it
//! receives: at N = 1,000 a room sends each joiner up to 1,000 presences,
//! half a million in all, which the benchmark must drain, not store.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::frame::{self, Frame, Framer};
use crate::record::Recorder;

/// Bound on connecting, authenticating and binding.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a join (a loaded server at N = 1,000 takes a while).
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Socket read size.
const READ_CHUNK: usize = 64 * 1024;

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

/// How long a join took, from sending the join presence.
#[derive(Debug, Clone, Copy)]
pub struct JoinTimes {
    /// Until the self-presence (status 110), after every other occupant's.
    pub self_presence: Duration,
    /// Until the subject, the end of the join sequence.
    pub subject: Duration,
}

/// A logged-in client on its own TCP connection.
#[derive(Debug)]
pub struct Connection {
    jid: String,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    framer: Framer,
    chunk: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`, logs in as `user@domain` (any password: the
    /// testbed's servers accept all), binds a resource and sends initial
    /// presence.
    pub async fn login(addr: SocketAddr, domain: &str, user: &str) -> Result<Self> {
        let who = format!("{user}@{domain}");
        let login = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(Error::io(format!("{who}: connecting to {addr}")))?;
            tcp.set_nodelay(true)
                .map_err(Error::io("setting TCP_NODELAY"))?;
            let (read, write) = tcp.into_split();
            let mut conn = Self {
                jid: who.clone(),
                read,
                write,
                framer: Framer::new(),
                chunk: vec![0; READ_CHUNK],
            };
            conn.open_stream(domain).await?;
            let creds =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0bench"));
            conn.send(&format!(
                "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{creds}</auth>"
            ))
            .await?;
            conn.wait("sasl outcome", |s| match frame::name(s) {
                b"success" => Some(Ok(())),
                b"failure" => Some(Err(lossy(s))),
                _ => None,
            })
            .await?
            .map_err(|what| conn.protocol(format!("authentication failed: {what}")))?;
            conn.framer.restart();
            conn.open_stream(domain).await?;
            conn.send(&format!(
                "<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>bench</resource></bind></iq>"
            ))
            .await?;
            let jid = conn
                .wait("bind result", |s| {
                    (frame::name(s) == b"iq" && frame::attr(s, "id") == Some(b"bind")).then(|| {
                        frame::child_text(s, "jid")
                            .map(lossy)
                            .ok_or_else(|| lossy(s))
                    })
                })
                .await?
                .map_err(|what| conn.protocol(format!("bind failed: {what}")))?;
            conn.jid = jid;
            conn.send("<presence/>").await?;
            Ok(conn)
        };
        tokio::time::timeout(LOGIN_TIMEOUT, login)
            .await
            .map_err(|_| Error::Timeout {
                who,
                what: "login".into(),
                timeout: LOGIN_TIMEOUT,
            })?
    }

    /// Joins `room` as `nick` and waits for the whole join sequence. With
    /// `create`, the room must be new: it is then configured as an instant
    /// room (XEP-0045 §10.1.2) so that others may enter.
    pub async fn join(&mut self, room: &str, nick: &str, create: bool) -> Result<JoinTimes> {
        let who = self.jid.clone();
        tokio::time::timeout(JOIN_TIMEOUT, self.join_sequence(room, nick, create))
            .await
            .map_err(|_| Error::Timeout {
                who,
                what: format!("join of {room}"),
                timeout: JOIN_TIMEOUT,
            })?
    }

    async fn join_sequence(&mut self, room: &str, nick: &str, create: bool) -> Result<JoinTimes> {
        let occupant = format!("{room}/{nick}");
        let start = Instant::now();
        self.send(&format!(
            "<presence to='{occupant}'><x xmlns='{NS_MUC}'/></presence>"
        ))
        .await?;
        let created = self
            .wait("self-presence", |s| {
                (frame::name(s) == b"presence"
                    && frame::attr(s, "from") == Some(occupant.as_bytes()))
                .then(|| match frame::attr(s, "type") {
                    Some(b"error") => Err(lossy(s)),
                    _ => Ok(frame::has_status(s, 201)),
                })
            })
            .await?
            .map_err(|what| self.protocol(format!("join refused: {what}")))?;
        let self_presence = start.elapsed();
        self.wait("subject", |s| {
            (frame::name(s) == b"message"
                && frame::attr(s, "from") == Some(room.as_bytes())
                && frame::contains(s, b"<subject"))
            .then_some(())
        })
        .await?;
        let subject = start.elapsed();
        match (create, created) {
            (true, true) => self.configure_instant(room).await?,
            (true, false) => return Err(self.protocol(format!("{room} existed already"))),
            (false, _) => {}
        }
        Ok(JoinTimes {
            self_presence,
            subject,
        })
    }

    /// Accepts the default configuration of a new room.
    async fn configure_instant(&mut self, room: &str) -> Result<()> {
        self.send(&format!(
            "<iq type='set' to='{room}' id='create'><query xmlns='{NS_MUC_OWNER}'>\
             <x xmlns='jabber:x:data' type='submit'/></query></iq>"
        ))
        .await?;
        self.wait("room configuration result", |s| {
            (frame::name(s) == b"iq" && frame::attr(s, "id") == Some(b"create")).then(|| {
                match frame::attr(s, "type") {
                    Some(b"result") => Ok(()),
                    _ => Err(lossy(s)),
                }
            })
        })
        .await?
        .map_err(|what| self.protocol(format!("room configuration failed: {what}")))
    }

    /// Splits into the receive loop (run it as a task) and the write half
    /// (keep it: dropping it shuts the connection down).
    /// `domain` indexes the occupant's domain in the per-domain figures.
    pub fn into_receiver(
        self,
        recorder: std::sync::Arc<Recorder>,
        domain: usize,
    ) -> (Receiver, OwnedWriteHalf) {
        let receiver = Receiver {
            domain,
            read: self.read,
            framer: self.framer,
            chunk: self.chunk,
            recorder,
        };
        (receiver, self.write)
    }

    async fn open_stream(&mut self, domain: &str) -> Result<()> {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0' to='{domain}'>"
        ))
        .await?;
        self.wait("stream features", |s| {
            (frame::name(s) == b"stream:features").then_some(())
        })
        .await
    }

    async fn send(&mut self, xml: &str) -> Result<()> {
        self.write
            .write_all(xml.as_bytes())
            .await
            .map_err(Error::io(format!("{}: writing", self.jid)))
    }

    /// Reads until `pick` returns `Some` for a stanza; skips other frames.
    async fn wait<T>(&mut self, what: &str, mut pick: impl FnMut(&[u8]) -> Option<T>) -> Result<T> {
        loop {
            while let Some(frame) = self.framer.next_frame() {
                match frame {
                    Frame::StreamOpen => {}
                    Frame::Stanza(s) if frame::name(s) == b"stream:error" => {
                        let why = lossy(s);
                        return Err(
                            self.protocol(format!("stream error while awaiting {what}: {why}"))
                        );
                    }
                    Frame::Stanza(s) => {
                        if let Some(found) = pick(s) {
                            return Ok(found);
                        }
                    }
                    Frame::StreamEnd => {
                        return Err(self.protocol(format!("stream closed while awaiting {what}")));
                    }
                }
            }
            let n = read_some(&mut self.read, &mut self.chunk)
                .await
                .map_err(Error::io(format!("{}: reading", self.jid)))?;
            if n == 0 {
                return Err(self.protocol(format!("connection closed while awaiting {what}")));
            }
            self.framer.push(&self.chunk[..n]);
        }
    }

    fn protocol(&self, what: String) -> Error {
        Error::Protocol {
            who: self.jid.clone(),
            what,
        }
    }
}

/// The receive side of a joined occupant: drains the socket, records the
/// benchmark bodies it sees.
#[derive(Debug)]
pub struct Receiver {
    domain: usize,
    read: OwnedReadHalf,
    framer: Framer,
    chunk: Vec<u8>,
    recorder: std::sync::Arc<Recorder>,
}

impl Receiver {
    /// Runs until the connection closes (or the task is aborted).
    pub async fn run(mut self) {
        loop {
            // Frames already buffered (read during the join) come first.
            let now = Instant::now();
            while let Some(frame) = self.framer.next_frame() {
                match frame {
                    Frame::Stanza(s) => self.recorder.stanza(self.domain, s, now),
                    Frame::StreamOpen => {}
                    Frame::StreamEnd => {
                        self.recorder.disconnected();
                        return;
                    }
                }
            }
            match read_some(&mut self.read, &mut self.chunk).await {
                Ok(n) if n > 0 => self.framer.push(&self.chunk[..n]),
                _ => {
                    self.recorder.disconnected();
                    return;
                }
            }
        }
    }
}

/// One read, then TCP_QUICKACK again: Linux clears it on its own, and a
/// delayed ACK towards a server that keeps Nagle on delays its next
/// segment by up to 40 ms (PERF.md).
async fn read_some(read: &mut OwnedReadHalf, chunk: &mut [u8]) -> std::io::Result<usize> {
    let n = read.read(chunk).await?;
    let _ = socket2::SockRef::from(read.as_ref()).set_tcp_quickack(true);
    Ok(n)
}

/// A stanza as text, for error messages.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
