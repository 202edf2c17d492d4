//! An in-process fake XMPP server speaking the server side of XEP-0114,
//! written independently of the code under test (rxml events, raw writes,
//! its own digest check) so that it checks the link, not itself.

#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use dmuc_component::minidom::Element;
use dmuc_component::{BackoffConfig, KeepaliveConfig, LinkConfig};
use rxml::{AsyncReader, Event};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use xso::{Context, FromEventsBuilder, FromXml};

pub const JID: &str = "conference.a.test";
pub const STREAM_NS: &str = "http://etherx.jabber.org/streams";
pub const COMPONENT_NS: &str = "jabber:component:accept";

/// A link config pointing at `addr`, with test-sized timings.
pub fn config(addr: SocketAddr, secret: &str) -> LinkConfig {
    let mut c = LinkConfig::new(JID.parse().unwrap(), addr.to_string(), secret);
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
        multiplier: 2.0,
        jitter: 0.5,
    };
    c.keepalive = KeepaliveConfig {
        idle: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        ping_to: None,
    };
    c.shutdown_grace = Duration::from_secs(10);
    c
}

pub struct FakeServer {
    listener: TcpListener,
    secret: String,
    next_id: u32,
}

/// What became of one incoming connection.
pub enum Accepted {
    Ok(Box<ServerConn>),
    /// The digest did not match; the server sent `<not-authorized/>` and closed.
    Rejected,
}

impl FakeServer {
    pub async fn bind(secret: &str) -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            secret: secret.to_owned(),
            next_id: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Accept one connection and run the handshake; panics on protocol
    /// violations by the client.
    pub async fn accept(&mut self) -> Accepted {
        let (tcp, _) = self.listener.accept().await.unwrap();
        self.next_id += 1;
        let stream_id = format!("fake-{}", self.next_id);
        let mut conn = ServerConn::new(tcp);

        // Client header: <stream:stream xmlns='jabber:component:accept' to=JID>
        loop {
            match conn
                .reader
                .read()
                .await
                .unwrap()
                .expect("eof before header")
            {
                Event::XmlDeclaration(..) => continue,
                Event::StartElement(_, (ns, name), attrs) => {
                    assert_eq!((ns.as_str(), name.as_str()), (STREAM_NS, "stream"));
                    let to = attrs.get(rxml::Namespace::none(), "to").cloned();
                    assert_eq!(to.as_deref(), Some(JID));
                    break;
                }
                other => panic!("unexpected before header: {other:?}"),
            }
        }
        conn.send_raw(&format!(
            "<?xml version='1.0'?><stream:stream xmlns:stream='{STREAM_NS}' \
             xmlns='{COMPONENT_NS}' id='{stream_id}' from='{JID}'>"
        ))
        .await;

        let handshake = conn.recv().await.expect("no handshake");
        assert!(handshake.is("handshake", COMPONENT_NS), "{handshake:?}");
        let expected = hex::encode(Sha1::digest(format!("{stream_id}{}", self.secret)));
        if handshake.text().eq_ignore_ascii_case(&expected) {
            conn.send_raw("<handshake/>").await;
            conn.stream_id = stream_id;
            Accepted::Ok(Box::new(conn))
        } else {
            // What Prosody's mod_component does.
            conn.send_raw(
                "<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
                 <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Given token does not match calculated token</text>\
                 </stream:error></stream:stream>",
            )
            .await;
            let _ = conn.writer.shutdown().await;
            Accepted::Rejected
        }
    }

    pub async fn accept_ok(&mut self) -> ServerConn {
        match self.accept().await {
            Accepted::Ok(c) => *c,
            Accepted::Rejected => panic!("handshake unexpectedly rejected"),
        }
    }
}

pub struct ServerConn {
    reader: AsyncReader<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    pub stream_id: String,
}

impl ServerConn {
    fn new(tcp: TcpStream) -> Self {
        let (r, w) = tcp.into_split();
        Self {
            reader: AsyncReader::new(BufReader::with_capacity(64 * 1024, r)),
            writer: w,
            stream_id: String::new(),
        }
    }

    pub async fn send_raw(&mut self, xml: &str) {
        self.writer.write_all(xml.as_bytes()).await.unwrap();
    }

    /// Next top-level element from the client; `None` on `</stream:stream>`
    /// or EOF.
    pub async fn recv(&mut self) -> Option<Element> {
        self.try_recv().await.unwrap()
    }

    pub async fn try_recv(&mut self) -> io::Result<Option<Element>> {
        let ctx = Context::empty();
        let (qname, attrs) = loop {
            match self.reader.read().await? {
                None | Some(Event::EndElement(_)) => return Ok(None),
                Some(Event::Text(..)) | Some(Event::XmlDeclaration(..)) => continue,
                Some(Event::StartElement(_, qname, attrs)) => break (qname, attrs),
            }
        };
        let mut builder = Element::from_events(qname, attrs, &ctx).unwrap();
        loop {
            let ev = self.reader.read().await?.expect("eof inside element");
            if let Some(el) = builder.feed(ev, &ctx).unwrap() {
                return Ok(Some(el));
            }
        }
    }

    /// Send `</stream:stream>` and close our side.
    pub async fn close(mut self) {
        self.send_raw("</stream:stream>").await;
        let _ = self.writer.shutdown().await;
    }
}

/// A message stanza with a sequence number in its id.
pub fn message(n: usize) -> Element {
    format!(
        "<message xmlns='{COMPONENT_NS}' from='room@{JID}/nick' to='user@a.test/r' \
         id='m{n}' type='groupchat'><body>message number {n}</body></message>"
    )
    .parse()
    .unwrap()
}
