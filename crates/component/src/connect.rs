//! Getting a stream up: TCP (with `TCP_NODELAY`), stream header, handshake.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use minidom::Element;
use tokio::io::BufStream;
use tokio::net::{TcpStream, lookup_host};
use tokio::time::timeout;
use tokio_xmpp::parsers::component::Handshake;
use tokio_xmpp::parsers::ns;
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, XmlStream, initiate_stream};

use crate::config::LinkConfig;
use crate::error::Error;
use crate::incoming::Incoming;

/// The XML stream type of one connection. `BufStream` matters for
/// throughput: tokio-xmpp hands the socket ≤ 2 KiB at a time, the buffer
/// turns a batch of stanzas into few large `write` calls.
pub(crate) type Xs = XmlStream<BufStream<TcpStream>, Incoming>;

const READ_BUFFER: usize = 64 * 1024;
const WRITE_BUFFER: usize = 64 * 1024;

/// An authenticated component stream.
pub(crate) struct Connection {
    pub stream: Xs,
    pub stream_id: String,
    pub local_addr: SocketAddr,
    pub peer_addr: SocketAddr,
}

/// Connect, open the stream and authenticate.
pub(crate) async fn establish(config: &LinkConfig) -> Result<Connection, Error> {
    let tcp = connect_tcp(&config.server, config.connect_timeout).await?;
    let local_addr = tcp.local_addr()?;
    let peer_addr = tcp.peer_addr()?;
    let (stream, stream_id) = timeout(config.handshake_timeout, handshake(tcp, config))
        .await
        .map_err(|_| Error::HandshakeTimeout(config.handshake_timeout))??;
    Ok(Connection {
        stream,
        stream_id,
        local_addr,
        peer_addr,
    })
}

/// Resolve `host:port` and connect to the first address that answers, with
/// Nagle disabled: stanzas are small and latency-sensitive (a join round trip
/// measured 46 ms with Nagle, 2.4 ms without), and we batch writes ourselves.
pub(crate) async fn connect_tcp(server: &str, per_addr: Duration) -> Result<TcpStream, Error> {
    let resolve_err = |source| Error::Resolve {
        server: server.to_owned(),
        source,
    };
    // The system resolver can stall; bound it like a connect attempt.
    let addrs = match timeout(per_addr, lookup_host(server)).await {
        Ok(addrs) => addrs.map_err(resolve_err)?,
        Err(_) => {
            return Err(resolve_err(io::Error::new(
                io::ErrorKind::TimedOut,
                "name resolution timed out",
            )));
        }
    };
    let mut last = None;
    for addr in addrs {
        let result = match timeout(per_addr, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp.set_nodelay(true).map(|()| tcp),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        match result {
            Ok(tcp) => return Ok(tcp),
            Err(source) => {
                tracing::debug!(%addr, error = %source, "connect attempt failed");
                last = Some(Error::Connect { addr, source });
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        resolve_err(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses found",
        ))
    }))
}

/// XEP-0114: send our header (`to` = component JID) in
/// `jabber:component:accept`, take the stream id from the server's header,
/// send `<handshake>hex(sha1(id + secret))</handshake>`, expect an empty
/// `<handshake/>` back.
async fn handshake(tcp: TcpStream, config: &LinkConfig) -> Result<(Xs, String), Error> {
    let io = BufStream::with_capacity(READ_BUFFER, WRITE_BUFFER, tcp);
    // tokio-xmpp's soft read timeout is our idle time: it surfaces as
    // `ReadError::SoftTimeout` (we send a ping), and only silence for
    // `timeout` more becomes a hard `TimedOut` error.
    let timeouts = Timeouts {
        read_timeout: config.keepalive.idle,
        response_timeout: config.keepalive.timeout,
    };
    let header = StreamHeader {
        to: Some(Cow::Owned(config.jid.to_string())),
        from: None,
        id: None,
    };
    let mut pending = initiate_stream(io, ns::COMPONENT, header, timeouts).await?;
    let stream_id = pending
        .take_header()
        .id
        .ok_or_else(|| Error::Protocol("stream header without id".into()))?
        .into_owned();
    // XEP-0114 streams have no stream features.
    let mut stream: Xs = pending.skip_features();
    let digest = Handshake::from_stream_id_and_password(stream_id.clone(), &config.secret);
    stream.send(&digest).await?;
    loop {
        match stream.next().await {
            Some(Ok(Incoming::Element(el))) if el.is("handshake", ns::COMPONENT) => {
                return Ok((stream, stream_id));
            }
            Some(Ok(Incoming::Element(el))) if el.is("error", ns::STREAM) => {
                return Err(match stream_error(&el) {
                    Error::Stream { condition, text } if condition == "not-authorized" => {
                        Error::Auth(text.unwrap_or(condition))
                    }
                    other => other,
                });
            }
            Some(Ok(Incoming::Element(el))) => {
                return Err(Error::Protocol(format!(
                    "expected <handshake/>, got <{}/>",
                    el.name()
                )));
            }
            Some(Ok(Incoming::Invalid(inv))) => {
                return Err(Error::Protocol(format!(
                    "expected <handshake/>, got unreadable <{}/>: {}",
                    inv.name, inv.reason
                )));
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(ReadError::HardError(e))) => return Err(Error::Io(e)),
            Some(Err(ReadError::ParseError(e))) => return Err(Error::Protocol(e.to_string())),
            // Servers that do not bother with a stream error reject this way.
            Some(Err(ReadError::StreamFooterReceived)) | None => {
                return Err(Error::Auth(
                    "server closed the stream in reply to the handshake".into(),
                ));
            }
        }
    }
}

/// Turn a `<stream:error/>` into [`Error::Stream`].
pub(crate) fn stream_error(el: &Element) -> Error {
    let condition = el
        .children()
        .find(|c| c.ns() == ns::XMPP_STREAMS && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "undefined-condition".to_owned());
    let text = el
        .get_child("text", ns::XMPP_STREAMS)
        .map(Element::text)
        .filter(|t| !t.is_empty());
    Error::Stream { condition, text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn tcp_nodelay_is_set_and_names_resolve() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A name, not an IP literal: goes through lookup_host.
        let tcp = connect_tcp(&format!("localhost:{port}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(tcp.nodelay().unwrap());
        let tcp = connect_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(tcp.nodelay().unwrap());
    }

    #[tokio::test]
    async fn connection_refused_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect_tcp(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }

    #[test]
    fn stream_error_condition_and_text() {
        let el: Element = "<error xmlns='http://etherx.jabber.org/streams'>\
            <invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>nope</text></error>"
            .parse()
            .unwrap();
        let Error::Stream { condition, text } = stream_error(&el) else {
            panic!()
        };
        assert_eq!(condition, "invalid-from");
        assert_eq!(text.as_deref(), Some("nope"));
    }
}
