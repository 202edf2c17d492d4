//! The crate's one error type.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything that can go wrong on the component link.
///
/// Most variants are *reasons for a disconnect*: the link reports them in
/// [`Inbound::Disconnected`](crate::Inbound::Disconnected) and then retries
/// with backoff. Only [`Error::Config`] (from [`spawn`](crate::spawn)) and
/// [`Error::Closed`] (from [`LinkHandle`](crate::LinkHandle)) are returned to
/// the caller directly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work; retrying would not help.
    #[error("invalid link configuration: {0}")]
    Config(String),

    /// Name resolution of the server failed or returned no address.
    #[error("cannot resolve {server}: {source}")]
    Resolve {
        /// The `host:port` that was looked up.
        server: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },

    /// No address of the server accepted a TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Why it failed (refused, timed out, ...).
        #[source]
        source: io::Error,
    },

    /// Stream header and handshake did not complete in time.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),

    /// The server rejected the handshake: wrong secret, or a JID the server
    /// does not know as a component.
    #[error("server rejected the component handshake: {0}")]
    Auth(String),

    /// The server sent a stream error and closed the stream.
    #[error("stream error from server: {condition}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Stream {
        /// The defined condition, e.g. `invalid-from` or `conflict`.
        condition: String,
        /// The optional human-readable text.
        text: Option<String>,
    },

    /// The server closed the stream (`</stream:stream>` or EOF) without an error.
    #[error("server closed the stream")]
    StreamClosed,

    /// Nothing arrived from the server for the idle time plus the keepalive
    /// timeout, although a ping was sent: the TCP link is presumed dead.
    #[error("no data from server for {0:?} despite a keepalive ping")]
    KeepaliveTimeout(Duration),

    /// The server broke the component protocol (e.g. no stream id).
    #[error("protocol violation by server: {0}")]
    Protocol(String),

    /// Socket-level failure on an established stream, or malformed XML
    /// (which is fatal to an XML stream).
    #[error("i/o error on the component stream: {0}")]
    Io(#[from] io::Error),

    /// The link has shut down; the stanza was not queued.
    #[error("component link is closed")]
    Closed,
}
