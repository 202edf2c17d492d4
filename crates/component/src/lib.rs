//! A robust XEP-0114 external component link.
//!
//! Both dmuc binaries talk to their XMPP server as an external component
//! (`jabber:component:accept`). This crate keeps that link up and moves raw
//! stanzas across it; it knows nothing about MUC.
//!
//! * **Raw elements, nothing dropped silently.** Every inbound top-level
//!   stanza is delivered as a [`minidom::Element`], however odd its
//!   attributes or payload: strict parsing, and the error reply to anything
//!   odd, are the caller's business. A stanza that cannot even become an
//!   element (too large, too deeply nested) arrives as
//!   [`Inbound::Invalid`] with its raw `from`/`to`/`id`/`type`, so the caller
//!   can still bounce an error.
//! * **Reconnects forever** with exponential, capped, jittered backoff, and
//!   says so: [`Inbound::Connected`] / [`Inbound::Disconnected`]. A wrong
//!   secret is [`Error::Auth`], logged at error level, and retried.
//! * **Keepalive.** After [`KeepaliveConfig::idle`] of silence the link
//!   pings the server (XEP-0199); silence for [`KeepaliveConfig::timeout`]
//!   more is a disconnect. Silence alone never is.
//! * **Throughput.** Outbound stanzas are batched (up to
//!   [`LinkConfig::max_batch`] serialised, then one flush), the socket has
//!   `TCP_NODELAY`, and reading runs in its own task so neither direction
//!   waits for the other.
//! * **Backpressure, not loss.** Outbound stanzas wait in a bounded queue
//!   ([`LinkConfig::outbound_capacity`]), also while disconnected;
//!   [`LinkHandle::send`] waits when it is full.
//! * **Shutdown** via a [`CancellationToken`]: queued stanzas are flushed
//!   within [`LinkConfig::shutdown_grace`], then `</stream:stream>`.
//!
//! # Usage
//!
//! ```no_run
//! use dmuc_component::{Inbound, LinkConfig, spawn};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), dmuc_component::Error> {
//! let config = LinkConfig::new(
//!     "conference.a.test".parse().expect("valid jid"),
//!     "127.0.0.1:5347",
//!     "secret",
//! );
//! let shutdown = CancellationToken::new();
//! let mut link = spawn(config, shutdown.clone())?;
//! while let Some(event) = link.inbound.recv().await {
//!     match event {
//!         Inbound::Stanza(stanza) => {
//!             // Parse strictly (xmpp-parsers), handle, reply:
//!             link.handle.send(stanza).await?;
//!         }
//!         Inbound::Invalid(bad) => { /* bounce an error to bad.from */ }
//!         Inbound::Connected { .. } | Inbound::Disconnected { .. } => {}
//!     }
//! }
//! // `inbound` yields None once the link task has finished (after shutdown).
//! link.task.await.ok();
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! XEP-0114 has no stream management. A stanza is *flushed* once the kernel
//! took it; stanzas flushed just before the TCP link died are lost with it.
//! A batch whose flush *failed* is written again first on the next
//! connection (at-least-once for that window; it may duplicate), but only
//! once, so that a stanza which makes the server drop the stream cannot
//! keep the link down. Stanzas still queued when the link shuts down while
//! disconnected are dropped and counted in a warning.
//!
//! Outbound elements must already be in the `jabber:component:accept`
//! namespace (xmpp-parsers with its `component` feature, as in this
//! workspace, produces them so).
//!
//! # Layout
//!
//! ```text
//!  caller ──LinkHandle::send──▶ [outbound queue] ──▶ writer ─┐ batch, flush
//!                                                   (link task)│
//!                                                             ▼
//!                                          XmlStream (tokio-xmpp) ⇄ TCP ⇄ server
//!                                                             │
//!  caller ◀──Receiver<Inbound>── [inbound queue] ◀── reader task (per session)
//! ```
//!
//! * [`config`]: [`LinkConfig`], keepalive and backoff settings, and the pure
//!   backoff schedule.
//! * `connect`: resolve, TCP connect with `TCP_NODELAY`, stream header and
//!   handshake, using tokio-xmpp's low-level `xmlstream` API.
//! * `incoming`: the element type the stream builds: a raw `Element`, or
//!   [`InvalidStanza`] when size/depth limits are exceeded.
//! * `link`: the task: reconnect loop, one session per connection (reader
//!   task + batching writer), keepalive pings, graceful close.
//! * [`error`]: the crate's [`Error`].
//! * [`settings`]: what both dmuc binaries read and do alike: the
//!   `[component]`, `[log]` and `[metrics]` TOML sections, `EX_USAGE`,
//!   tracing set-up, the `--config FILE` argument and the SIGINT/SIGTERM
//!   shutdown signal.
//! * [`metrics`]: counters and gauges for operators, and the Prometheus
//!   endpoint (`GET /metrics`) both binaries serve; the link counts its
//!   stanzas in [`LinkConfig::metrics`].

pub mod config;
mod connect;
pub mod error;
mod incoming;
mod link;
pub mod metrics;
pub mod settings;

use std::net::SocketAddr;
use std::time::Duration;

use minidom::Element;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::config::{Backoff, BackoffConfig, KeepaliveConfig, LinkConfig};
pub use crate::error::Error;
pub use crate::incoming::{InvalidStanza, MAX_STANZA_BYTES, MAX_STANZA_DEPTH};
pub use minidom;

/// What the link reports to its caller, in order.
#[derive(Debug)]
pub enum Inbound {
    /// A session is up: handshake accepted. Queued stanzas are being sent.
    Connected {
        /// The stream id the server chose.
        stream_id: String,
        /// Our end of the TCP connection.
        local_addr: SocketAddr,
        /// The server's end.
        peer_addr: SocketAddr,
    },
    /// A top-level stanza from the server, unvalidated.
    Stanza(Element),
    /// A top-level element that could not be delivered as an [`Element`];
    /// the stream continues.
    Invalid(InvalidStanza),
    /// A connection attempt failed or a session ended. The link retries
    /// after `retry_in`; stanzas sent meanwhile are queued.
    Disconnected {
        /// Why; [`Error::Auth`] for a rejected secret.
        reason: Error,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// Sends stanzas over the link. Cheap to clone; the link closes its stream
/// once every handle is dropped (or on shutdown).
#[derive(Debug, Clone)]
pub struct LinkHandle {
    outbound: mpsc::Sender<Element>,
}

impl LinkHandle {
    /// Queue a stanza. Waits while the outbound queue is full (backpressure,
    /// also while disconnected); fails with [`Error::Closed`] once the link
    /// has shut down.
    pub async fn send(&self, stanza: Element) -> Result<(), Error> {
        self.outbound.send(stanza).await.map_err(|_| Error::Closed)
    }

    /// Queue a stanza without waiting; gives it back if the queue is full or
    /// the link has shut down.
    pub fn try_send(&self, stanza: Element) -> Result<(), mpsc::error::TrySendError<Element>> {
        self.outbound.try_send(stanza)
    }

    /// Free places in the outbound queue right now.
    pub fn capacity(&self) -> usize {
        self.outbound.capacity()
    }

    /// Whether the link has shut down.
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed()
    }
}

/// A running link: send with `handle`, receive from `inbound`; `task`
/// finishes after shutdown (or once every handle is dropped).
#[derive(Debug)]
pub struct Link {
    /// Outbound side.
    pub handle: LinkHandle,
    /// Inbound stanzas and connection events. Yields `None` after the task
    /// has finished.
    pub inbound: mpsc::Receiver<Inbound>,
    /// The link task.
    pub task: JoinHandle<()>,
}

/// Start the link task on the current tokio runtime. It connects in the
/// background and keeps reconnecting until `shutdown` is cancelled.
///
/// Fails only on a configuration that can never work ([`Error::Config`]).
pub fn spawn(config: LinkConfig, shutdown: CancellationToken) -> Result<Link, Error> {
    config.validate()?;
    let (out_tx, out_rx) = mpsc::channel(config.outbound_capacity);
    let (in_tx, in_rx) = mpsc::channel(config.inbound_capacity);
    let span = tracing::info_span!("component_link", jid = %config.jid, server = %config.server);
    let task = tokio::spawn(link::run(config, out_rx, in_tx, shutdown).instrument(span));
    Ok(Link {
        handle: LinkHandle { outbound: out_tx },
        inbound: in_rx,
        task,
    })
}
