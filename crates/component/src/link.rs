//! The link task: connect, run a session, reconnect with backoff, until
//! shutdown.
//!
//! A session is two concurrent halves over one tokio-xmpp `XmlStream`:
//! a reader task (parse, classify, hand to the caller) and the writer (this
//! task: collect a batch from the outbound queue, serialise, flush once).
//! `XmlStream` cannot be split, so both halves share it behind a mutex that
//! is only held inside a single `poll_*` call, never across an `.await`:
//! a reader waiting for the caller never stops the writer, and vice versa.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, ready};
use std::time::Duration;

use futures::{Sink, Stream};
use minidom::Element;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::ping::Ping;
use tokio_xmpp::xmlstream::ReadError;
use tracing::{Instrument, debug, error, info, trace, warn};

use crate::Inbound;
use crate::config::{Backoff, KeepaliveConfig, LinkConfig};
use crate::connect::{self, Xs};
use crate::error::Error;
use crate::incoming::{Incoming, InvalidStanza};
use crate::metrics::Counter;

/// Ids of our keepalive pings; replies carrying them are consumed here.
const KEEPALIVE_ID_PREFIX: &str = "dmuc-keepalive-";

/// Stanzas serialised per lock acquisition: long enough to amortise the lock,
/// short enough that the reader is not starved while a big batch is encoded.
const ENCODE_CHUNK: usize = 64;

/// Entry point of the spawned task.
pub(crate) async fn run(
    config: LinkConfig,
    mut outbound: mpsc::Receiver<Element>,
    inbound: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.backoff.clone());
    // A batch a broken session could not flush, to be written first next time.
    let mut carry: Vec<Element> = Vec::new();
    loop {
        let attempt = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = connect::establish(&config) => r,
        };
        let reason = match attempt {
            Ok(conn) => {
                let since = Instant::now();
                info!(stream_id = %conn.stream_id, peer = %conn.peer_addr, local = %conn.local_addr, "component connected");
                let connected = Inbound::Connected {
                    stream_id: conn.stream_id.clone(),
                    local_addr: conn.local_addr,
                    peer_addr: conn.peer_addr,
                };
                deliver(&inbound, connected, &shutdown).await;
                let end = Session::new(conn.stream, &config)
                    .run(&mut outbound, &inbound, &mut carry, &shutdown)
                    .await;
                backoff.connected_for(since.elapsed());
                match end {
                    End::Closed => break,
                    End::Lost(reason) => reason,
                }
            }
            Err(reason) => reason,
        };
        let retry_in = backoff.next_delay();
        match &reason {
            // Wrong secret or unknown component: needs an operator.
            Error::Auth(_) => error!(error = %reason, ?retry_in, "component handshake rejected"),
            _ => warn!(error = %reason, ?retry_in, "component link down"),
        }
        deliver(
            &inbound,
            Inbound::Disconnected { reason, retry_in },
            &shutdown,
        )
        .await;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep(retry_in) => {}
        }
    }
    let stranded = outbound.len() + carry.len();
    if stranded > 0 {
        warn!(
            stranded,
            "link shut down while disconnected: queued stanzas dropped"
        );
    }
    debug!("component link finished");
}

/// Hand an event to the caller, unless it has gone away or we are shutting
/// down (a caller that stopped reading must not block shutdown).
async fn deliver(inbound: &mpsc::Sender<Inbound>, event: Inbound, shutdown: &CancellationToken) {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        _ = inbound.send(event) => {}
    }
}

/// How a session ended.
enum End {
    /// Shutdown requested, or every `LinkHandle` dropped: stream closed cleanly.
    Closed,
    /// The stream broke; reconnect.
    Lost(Error),
}

/// The XML stream shared by the reader task and the writer.
#[derive(Clone)]
struct Shared(Arc<Mutex<Xs>>);

impl Shared {
    fn lock(&self) -> io::Result<MutexGuard<'_, Xs>> {
        // A poisoned lock means a poll panicked mid-way: the stream state is
        // unknown, so treat it as broken.
        self.0
            .lock()
            .map_err(|_| io::Error::other("component stream state poisoned"))
    }

    async fn next(&self) -> Option<Result<Incoming, ReadError>> {
        poll_fn(|cx| match self.lock() {
            Ok(mut s) => Pin::new(&mut *s).poll_next(cx),
            Err(e) => Poll::Ready(Some(Err(ReadError::HardError(e)))),
        })
        .await
    }

    /// Serialise `batch` and flush once.
    async fn write_batch(&self, batch: &[Element]) -> io::Result<()> {
        for chunk in batch.chunks(ENCODE_CHUNK) {
            let mut sent = 0;
            poll_fn(|cx| {
                let mut s = self.lock()?;
                while let Some(el) = chunk.get(sent) {
                    ready!(Sink::<&Element>::poll_ready(Pin::new(&mut *s), cx))?;
                    Pin::new(&mut *s).start_send(el)?;
                    sent += 1;
                }
                Poll::Ready(Ok::<_, io::Error>(()))
            })
            .await?;
        }
        poll_fn(|cx| Sink::<&Element>::poll_flush(Pin::new(&mut *self.lock()?), cx)).await
    }

    /// Send `</stream:stream>`, flush, and shut down our sending side.
    async fn close(&self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut *self.lock()?).poll_shutdown(cx)).await
    }
}

struct Session<'c> {
    stream: Shared,
    config: &'c LinkConfig,
}

impl<'c> Session<'c> {
    fn new(stream: Xs, config: &'c LinkConfig) -> Self {
        Self {
            stream: Shared(Arc::new(Mutex::new(stream))),
            config,
        }
    }

    async fn run(
        self,
        outbound: &mut mpsc::Receiver<Element>,
        inbound: &mpsc::Sender<Inbound>,
        carry: &mut Vec<Element>,
        shutdown: &CancellationToken,
    ) -> End {
        let (ping_tx, mut ping_rx) = mpsc::channel(1);
        let mut reader = tokio::spawn(
            read_loop(
                self.stream.clone(),
                inbound.clone(),
                ping_tx,
                self.config.keepalive.clone(),
                self.config.metrics.stanzas_in.clone(),
            )
            .in_current_span(),
        );
        let mut pinger = Pinger::new(self.config);
        let max_batch = self.config.max_batch;

        // What the last session failed to flush goes first, once: a stanza
        // that makes the server drop us must not do so forever.
        let mut batch = std::mem::take(carry);
        let mut is_retry = !batch.is_empty();
        if is_retry {
            info!(
                count = batch.len(),
                "resending stanzas left unflushed by the last session"
            );
        }
        loop {
            if !batch.is_empty() {
                let written = tokio::select! {
                    r = self.stream.write_batch(&batch) => r.map_err(Error::Io),
                    r = &mut reader => Err(reader_outcome(r)),
                };
                if let Err(reason) = written {
                    reader.abort();
                    if is_retry {
                        error!(
                            dropped = batch.len(),
                            "stanzas failed to send in two sessions: dropped"
                        );
                    } else {
                        *carry = batch;
                    }
                    return End::Lost(reason);
                }
                trace!(count = batch.len(), "batch flushed");
                self.config.metrics.stanzas_out.inc_by(batch.len() as u64);
                batch.clear();
                is_retry = false;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.close(outbound, &mut batch, reader).await;
                    return End::Closed;
                }
                r = &mut reader => return End::Lost(reader_outcome(r)),
                Some(()) = ping_rx.recv() => batch.push(pinger.next()),
                n = outbound.recv_many(&mut batch, max_batch) => {
                    if n == 0 {
                        debug!("all link handles dropped: closing");
                        self.close(outbound, &mut batch, reader).await;
                        return End::Closed;
                    }
                }
            }
        }
    }

    /// Graceful close, bounded by the grace period: refuse new stanzas,
    /// write what is queued, send the stream footer, give the server a
    /// moment to answer with its own.
    async fn close(
        &self,
        outbound: &mut mpsc::Receiver<Element>,
        batch: &mut Vec<Element>,
        mut reader: JoinHandle<Error>,
    ) {
        outbound.close();
        let grace = self.config.shutdown_grace;
        let drain = async {
            loop {
                batch.clear();
                if outbound.recv_many(batch, self.config.max_batch).await == 0 {
                    break;
                }
                self.stream.write_batch(batch).await?;
                self.config.metrics.stanzas_out.inc_by(batch.len() as u64);
            }
            self.stream.close().await
        };
        match timeout(grace, drain).await {
            Ok(Ok(())) => debug!("stream closed"),
            Ok(Err(e)) => warn!(error = %e, "error while closing the stream"),
            Err(_) => warn!(
                ?grace,
                stranded = outbound.len() + batch.len(),
                "shutdown grace elapsed before the queue was flushed"
            ),
        }
        let _ = timeout(grace.min(Duration::from_secs(1)), &mut reader).await;
        reader.abort();
    }
}

fn reader_outcome(r: Result<Error, tokio::task::JoinError>) -> Error {
    r.unwrap_or_else(|e| Error::Io(io::Error::other(format!("reader task failed: {e}"))))
}

/// Builds keepalive pings.
struct Pinger {
    from: jid::Jid,
    to: jid::Jid,
    seq: u64,
}

impl Pinger {
    fn new(config: &LinkConfig) -> Self {
        Self {
            from: config.jid.clone().into(),
            to: config.ping_target().into(),
            seq: 0,
        }
    }

    fn next(&mut self) -> Element {
        self.seq += 1;
        let id = format!("{KEEPALIVE_ID_PREFIX}{}", self.seq);
        trace!(%id, to = %self.to, "keepalive ping");
        Iq::from_get(id, Ping)
            .with_from(self.from.clone())
            .with_to(self.to.clone())
            .into()
    }
}

fn is_keepalive_reply(el: &Element) -> bool {
    el.name() == "iq"
        && matches!(el.attr("type"), Some("result" | "error"))
        && el
            .attr("id")
            .is_some_and(|id| id.starts_with(KEEPALIVE_ID_PREFIX))
}

/// Read until the stream ends; return why it ended.
async fn read_loop(
    stream: Shared,
    inbound: mpsc::Sender<Inbound>,
    ping: mpsc::Sender<()>,
    keepalive: KeepaliveConfig,
    stanzas_in: Counter,
) -> Error {
    let mut caller_gone = false;
    loop {
        let event = match stream.next().await {
            Some(Ok(Incoming::Element(el))) => {
                if el.ns() == ns::STREAM {
                    if el.name() == "error" {
                        return connect::stream_error(&el);
                    }
                    debug!(name = el.name(), "ignoring stream-level element");
                    continue;
                }
                stanzas_in.inc();
                if is_keepalive_reply(&el) {
                    trace!(id = el.attr("id"), "keepalive reply");
                    continue;
                }
                Inbound::Stanza(el)
            }
            Some(Ok(Incoming::Invalid(inv))) => {
                stanzas_in.inc();
                warn!(name = %inv.name, from = ?inv.from, id = ?inv.id, reason = %inv.reason, "undeliverable inbound stanza");
                Inbound::Invalid(inv)
            }
            // Silence is not a disconnect: provoke traffic. The writer may be
            // busy; one pending ping is enough.
            Some(Err(ReadError::SoftTimeout)) => {
                debug!(idle = ?keepalive.idle, "link idle: sending keepalive ping");
                let _ = ping.try_send(());
                continue;
            }
            Some(Err(ReadError::HardError(e))) if e.kind() == io::ErrorKind::TimedOut => {
                return Error::KeepaliveTimeout(keepalive.idle + keepalive.timeout);
            }
            Some(Err(ReadError::HardError(e))) => return Error::Io(e),
            // Not produced by our element builder; kept non-fatal all the same.
            Some(Err(ReadError::ParseError(e))) => Inbound::Invalid(InvalidStanza {
                name: String::new(),
                ns: String::new(),
                from: None,
                to: None,
                id: None,
                type_: None,
                reason: e.to_string(),
            }),
            Some(Err(ReadError::StreamFooterReceived)) | None => return Error::StreamClosed,
        };
        if !caller_gone && inbound.send(event).await.is_err() {
            // Keep reading so the stream stays healthy for the writer.
            warn!("inbound receiver dropped: discarding inbound stanzas");
            caller_gone = true;
        }
    }
}
