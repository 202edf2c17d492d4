//! A counting TCP relay: what crosses between domains, measured on the
//! wire. Put in front of a server's s2s port (or a peerhost's gRPC port),
//! it forwards every connection to the real address and counts the bytes
//! each way and, for XMPP streams, the stanzas (top-level `message`,
//! `presence` and `iq` elements).
//!
//! ```text
//!  a.test ── s2s ──▶ relay 127.x.y.102:5269 ──▶ b.test 127.x.y.2:5269
//!                     counts: bytes ▶ / ◀, stanzas ▶ / ◀
//! ```
//!
//! A test may cut the link, stall it silently, or make it slow (a fixed
//! delay each way, as a distant link).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Bytes and stanzas that crossed a relay, each way. "In" is towards the
/// relayed server (from whoever connected), "out" back from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub connections: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub stanzas_in: u64,
    pub stanzas_out: u64,
}

impl Traffic {
    /// What crossed since `earlier`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            connections: self.connections - earlier.connections,
            bytes_in: self.bytes_in - earlier.bytes_in,
            bytes_out: self.bytes_out - earlier.bytes_out,
            stanzas_in: self.stanzas_in - earlier.stanzas_in,
            stanzas_out: self.stanzas_out - earlier.stanzas_out,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes_in + self.bytes_out
    }

    pub fn stanzas(&self) -> u64 {
        self.stanzas_in + self.stanzas_out
    }
}

impl std::ops::Add for Traffic {
    type Output = Traffic;

    fn add(self, o: Traffic) -> Traffic {
        Traffic {
            connections: self.connections + o.connections,
            bytes_in: self.bytes_in + o.bytes_in,
            bytes_out: self.bytes_out + o.bytes_out,
            stanzas_in: self.stanzas_in + o.stanzas_in,
            stanzas_out: self.stanzas_out + o.stanzas_out,
        }
    }
}

/// The state of a relayed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
    Stalled,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    bytes: [AtomicU64; 2],
    stanzas: [AtomicU64; 2],
    /// What crosses is held this long each way, in µs.
    delay_us: AtomicU64,
}

/// A running relay; stops (and drops its connections) on drop.
#[derive(Debug)]
pub struct Relay {
    listen: SocketAddr,
    counters: Arc<Counters>,
    /// Whether the link is up, cut or silently stalled.
    link: tokio::sync::watch::Sender<Link>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `listen` and forwards each connection to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(Error::io(format!("relay: binding {listen}")))?;
        let counters = Arc::new(Counters::default());
        let (link, link_rx) = tokio::sync::watch::channel(Link::Up);
        let task = tokio::spawn(accept(listener, target, counters.clone(), link_rx));
        Ok(Relay {
            listen,
            counters,
            link,
            task,
        })
    }

    /// Cuts the link: every connection through the relay is dropped (both
    /// ends see it close) and new ones are closed as soon as accepted.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Stalls the link silently, as a network that drops every packet:
    /// connections stay open, nothing passes either way (it waits).
    pub fn stall(&self) {
        self.link.send_replace(Link::Stalled);
    }

    /// Makes the link slow: what crosses from now on is held `one_way`
    /// each way (so a round trip takes twice that more); zero: no delay.
    pub fn delay(&self, one_way: Duration) {
        let us = u64::try_from(one_way.as_micros()).unwrap_or(u64::MAX);
        self.counters.delay_us.store(us, Ordering::SeqCst);
    }

    /// Heals the link: connections are relayed again.
    pub fn heal(&self) {
        self.link.send_replace(Link::Up);
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// What crossed so far.
    pub fn traffic(&self) -> Traffic {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Traffic {
            connections: get(&c.connections),
            bytes_in: get(&c.bytes[0]),
            bytes_out: get(&c.bytes[1]),
            stanzas_in: get(&c.stanzas[0]),
            stanzas_out: get(&c.stanzas[1]),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    counters: Arc<Counters>,
    mut link: tokio::sync::watch::Receiver<Link>,
) {
    let mut pipes = tokio::task::JoinSet::new();
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => break,
            },
            changed = link.changed() => {
                if changed.is_err() {
                    break;
                }
                if *link.borrow_and_update() == Link::Cut {
                    pipes.abort_all();
                }
                continue;
            }
        };
        if *link.borrow() == Link::Cut {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(target).await else {
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        counters.connections.fetch_add(1, Ordering::SeqCst);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        pipes.spawn(pipe(
            client_read,
            server_write,
            counters.clone(),
            link.clone(),
            0,
        ));
        pipes.spawn(pipe(
            server_read,
            client_write,
            counters.clone(),
            link.clone(),
            1,
        ));
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    counters: Arc<Counters>,
    mut link: tokio::sync::watch::Receiver<Link>,
    way: usize,
) {
    // What was read, and when it may be written (now, unless delayed):
    // the writer holds it while the reader goes on.
    let (read, pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = write_when_due(to, pending, link.clone());
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut scanner = StanzaScanner::default();
        loop {
            // A stalled link holds everything where it is.
            if link.wait_for(|l| *l != Link::Stalled).await.is_err() {
                break;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Count before forwarding: once the bytes are on their way, a
            // reader of the counters may already see their effect.
            counters.bytes[way].fetch_add(n as u64, Ordering::SeqCst);
            let stanzas = scanner.feed(&buf[..n]);
            counters.stanzas[way].fetch_add(stanzas, Ordering::SeqCst);
            let delay = Duration::from_micros(counters.delay_us.load(Ordering::SeqCst));
            if read
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// Writes what the reader of a pipe read, each piece once it is due.
async fn write_when_due(
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut pending: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut link: tokio::sync::watch::Receiver<Link>,
) {
    while let Some((due, bytes)) = pending.recv().await {
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        if link.wait_for(|l| *l != Link::Stalled).await.is_err() {
            break;
        }
        if to.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Counts the stanzas in an XML stream fed in arbitrary pieces: elements
/// named `message`, `presence` or `iq` (any prefix) that are children of
/// the stream's root. Good enough for a stream of well-formed XML without
/// `>` inside comments or processing instructions.
#[derive(Debug, Default)]
pub struct StanzaScanner {
    depth: u32,
    state: ScanState,
    /// The tag being read: its name so far, whether it is an end tag.
    name: Vec<u8>,
    end_tag: bool,
    name_done: bool,
    quote: Option<u8>,
    last: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    #[default]
    Text,
    /// Just read `<`.
    Open,
    /// Inside a start or end tag.
    Tag,
    /// Inside `<?...>` or `<!...>`.
    Skip,
}

impl StanzaScanner {
    /// Feeds bytes; returns how many stanzas started in them.
    pub fn feed(&mut self, bytes: &[u8]) -> u64 {
        let mut count = 0;
        for &b in bytes {
            match self.state {
                ScanState::Text => {
                    if b == b'<' {
                        self.state = ScanState::Open;
                    }
                }
                ScanState::Open => match b {
                    b'?' | b'!' => self.state = ScanState::Skip,
                    _ => {
                        self.state = ScanState::Tag;
                        self.end_tag = b == b'/';
                        self.name.clear();
                        self.name_done = false;
                        self.quote = None;
                        if !self.end_tag {
                            self.name.push(b);
                        }
                    }
                },
                ScanState::Skip => {
                    if b == b'>' {
                        self.state = ScanState::Text;
                    }
                }
                ScanState::Tag => {
                    if let Some(q) = self.quote {
                        if b == q {
                            self.quote = None;
                        }
                    } else if b == b'"' || b == b'\'' {
                        self.quote = Some(b);
                    } else if b == b'>' {
                        self.state = ScanState::Text;
                        if self.end_tag {
                            self.depth = self.depth.saturating_sub(1);
                        } else {
                            let self_closing = self.last == b'/';
                            if self.depth == 1 && self.is_stanza() {
                                count += 1;
                            }
                            if !self_closing {
                                self.depth += 1;
                            }
                        }
                    } else if !self.name_done {
                        if b.is_ascii_whitespace() || b == b'/' {
                            self.name_done = true;
                        } else {
                            self.name.push(b);
                        }
                    }
                }
            }
            self.last = b;
        }
        count
    }

    fn is_stanza(&self) -> bool {
        let local = match self.name.iter().position(|&c| c == b':') {
            Some(i) => &self.name[i + 1..],
            None => &self.name[..],
        };
        matches!(local, b"message" | b"presence" | b"iq")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' to='b.test'>\
        <db:result from='a.test' to='b.test'>key</db:result>\
        <message to='bob@b.test' type='groupchat'><body>a > b, <!-- x --></body>\
        <x xmlns='http://jabber.org/protocol/muc#user'><item/></x></message>\
        <presence from='r@c.a.test/x' to='bob@b.test'/>\
        <iq type='get' id='1'><query xmlns='q'><iq/></query></iq>";

    #[tokio::test]
    async fn a_delayed_link_holds_what_crosses_each_way() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut echo, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = echo.read(&mut buf).await {
                echo.write_all(&buf[..n]).await.unwrap();
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = front.local_addr().unwrap();
        drop(front);
        let relay = Relay::start(listen, target).await.unwrap();
        let mut client = TcpStream::connect(listen).await.unwrap();
        let mut buf = [0u8; 4];
        let mut round_trip = async |client: &mut TcpStream| {
            let sent = Instant::now();
            client.write_all(b"ping").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            sent.elapsed()
        };
        assert!(round_trip(&mut client).await < Duration::from_millis(100));
        relay.delay(Duration::from_millis(100));
        let slow = round_trip(&mut client).await;
        assert!(slow >= Duration::from_millis(200), "{slow:?}");
        relay.delay(Duration::ZERO);
        assert!(round_trip(&mut client).await < Duration::from_millis(100));
    }

    #[test]
    fn counts_the_stanzas_of_a_stream_however_it_is_cut() {
        let whole = StanzaScanner::default().feed(STREAM.as_bytes());
        assert_eq!(whole, 3);
        for cut in [1, 2, 3, 7, 64] {
            let mut scanner = StanzaScanner::default();
            let n: u64 = STREAM.as_bytes().chunks(cut).map(|c| scanner.feed(c)).sum();
            assert_eq!(n, 3, "in pieces of {cut}");
        }
    }
}
