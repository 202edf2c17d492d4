//! Metrics for operators: a registry of counters and gauges, rendered in the
//! Prometheus text format (0.0.4), and a minimal HTTP/1.1 endpoint serving
//! it at `GET /metrics`. Shared by both binaries; no dependency beyond tokio.
//!
//! ```text
//!  hot path ──inc()/set()──▶ Counter / Gauge (an atomic, shared with the registry)
//!                                      │ read at scrape time
//!  Prometheus ──GET /metrics──▶ serve ─▶ Metrics::render ─▶ text format 0.0.4
//! ```
//!
//! A part that counts something registers its handles once, at start-up,
//! from the [`Metrics`] it is given (no global registry), keeps them, and
//! bumps them where things happen:
//!
//! ```
//! use dmuc_component::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! let rooms = metrics.gauge("dmuc_rooms_active", "Rooms with a running task");
//! let up = metrics.gauge_with("dmuc_peer_up", "Whether the stream is up", &[("domain", "b.test")]);
//! rooms.set(3);
//! up.set(1);
//! assert!(metrics.render().contains("dmuc_peer_up{domain=\"b.test\"} 1\n"));
//! ```
//!
//! Registering the same name and labels again returns the same series, so a
//! task that restarts keeps counting where it left off. Names and label
//! names are fixed in code: an invalid one, or one name registered as both
//! a counter and a gauge, is a bug and panics at registration.
//! [`Counter::default`] and [`Gauge::default`] are handles that belong to no
//! registry, for code run without metrics (tests, tools).
//!
//! # Metrics of dmuc
//!
//! | name | type | labels | binary | what |
//! |------|------|--------|--------|------|
//! | `dmuc_stanzas_in_total` | counter | | both | top-level elements read from the XMPP server on the component link (keepalive replies included) |
//! | `dmuc_stanzas_out_total` | counter | | both | stanzas written to the XMPP server and flushed (keepalive pings included) |
//! | `dmuc_rooms_active` | gauge | | master | rooms with a running room task |
//! | `dmuc_peer_up` | gauge | `domain` | master | 1 while the gRPC stream to that domain's peerhost is up, else 0 |
//! | `dmuc_peer_down_total` | counter | `domain` | master | streams to that domain's peerhost that went down after being up (splits) |
//! | `dmuc_tree_depth` | gauge | `room` | master | hops from the master to the deepest slave of the room's spanning tree (1: a star) |
//! | `dmuc_tree_fanout` | gauge | `room` | master | the most slaves any node of the room's tree feeds, the master included |
//! | `dmuc_reparents_total` | counter | `room` | master | slaves moved to another parent in the room's tree |
//! | `dmuc_relay_duplicates_total` | counter | `room` | peerhost | events dropped by the relay because this node had them already (from the master and a parent, or twice from a parent) |
//! | `dmuc_relay_caught_up_total` | counter | `room` | peerhost | events a parent sent a child from its window when the child (re)subscribed |
//! | `dmuc_relay_reparents_total` | counter | `room` | peerhost | times the room's slave here was given another parent |
//! | `dmuc_relay_carried_up_total` | counter | `room` | peerhost | frames of the room's children (acknowledgements, their users' stanzas) carried up to the master |
//! | `dmuc_slaves` | gauge | | peerhost | slaves held in the peerhost's store (running, or waiting for their master), sampled every few seconds |
//!
//! # The endpoint
//!
//! [`serve`] answers `GET /metrics` (a query string is ignored) with `200`
//! and the rendered registry, any other path with `404`, any other method
//! with `405`, a request it cannot parse with `400` (`431` if its head is too long). One request per
//! connection (`Connection: close`). A client gets [`REQUEST_TIMEOUT`] to
//! send its request head (at most [`MAX_HEAD_BYTES`]), and as long again to
//! take the answer; at most [`MAX_CONNECTIONS`] are served at once, others
//! are closed at once. Nothing a client does reaches the service: the
//! endpoint only reads atomics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client has to send its request head, and again to read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 32;

/// A monotonically increasing count. Cheap to clone; clones share the value.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cheap to clone; clones share the value.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The registry: named families of counters and gauges, each series
/// identified by its labels. Cheap to clone; clones share the registry.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    /// Keyed by the label pairs, sorted by label name.
    series: BTreeMap<Vec<(String, String)>, Series>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

#[derive(Debug)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name` without labels, registered if new.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_with(name, help, &[])
    }

    /// The counter `name{labels}`, registered if new.
    pub fn counter_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.register(name, help, Kind::Counter, labels) {
            Series::Counter(c) => c,
            Series::Gauge(_) => unreachable!("kind checked at registration"),
        }
    }

    /// The gauge `name` without labels, registered if new.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_with(name, help, &[])
    }

    /// The gauge `name{labels}`, registered if new.
    pub fn gauge_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register(name, help, Kind::Gauge, labels) {
            Series::Gauge(g) => g,
            Series::Counter(_) => unreachable!("kind checked at registration"),
        }
    }

    fn register(&self, name: &str, help: &str, kind: Kind, labels: &[(&str, &str)]) -> Series {
        assert!(is_metric_name(name), "invalid metric name {name:?}");
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|&(k, v)| {
                assert!(is_label_name(k), "{name}: invalid label name {k:?}");
                (k.to_owned(), v.to_owned())
            })
            .collect();
        key.sort();
        assert!(
            key.windows(2).all(|w| w[0].0 != w[1].0),
            "{name}: a label name is repeated"
        );
        let mut families = self.lock();
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: BTreeMap::new(),
        });
        assert!(
            family.kind == kind,
            "{name} is registered as a {}, not a {}",
            family.kind.as_str(),
            kind.as_str()
        );
        let series = family.series.entry(key).or_insert_with(|| match kind {
            Kind::Counter => Series::Counter(Counter::default()),
            Kind::Gauge => Series::Gauge(Gauge::default()),
        });
        match series {
            Series::Counter(c) => Series::Counter(c.clone()),
            Series::Gauge(g) => Series::Gauge(g.clone()),
        }
    }

    /// Every family in the Prometheus text format 0.0.4: `# HELP` and
    /// `# TYPE` lines, then one line per series; families sorted by name,
    /// series by their labels.
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::with_capacity(families.len() * 128);
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, series) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = match series {
                    Series::Counter(c) => writeln!(out, " {}", c.get()),
                    Series::Gauge(g) => writeln!(out, " {}", g.get()),
                };
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Family>> {
        // Registration panics before it changes anything, so the map is
        // consistent even if a holder panicked.
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The component link's counters (see [`LinkConfig::metrics`](crate::LinkConfig::metrics)).
#[derive(Clone, Debug, Default)]
pub struct LinkMetrics {
    /// `dmuc_stanzas_in_total`
    pub stanzas_in: Counter,
    /// `dmuc_stanzas_out_total`
    pub stanzas_out: Counter,
}

impl LinkMetrics {
    /// Registers the link's counters in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        LinkMetrics {
            stanzas_in: metrics.counter(
                "dmuc_stanzas_in_total",
                "Top-level elements read from the XMPP server on the component link",
            ),
            stanzas_out: metrics.counter(
                "dmuc_stanzas_out_total",
                "Stanzas written to the XMPP server on the component link and flushed",
            ),
        }
    }
}

/// Binds `addr` and spawns [`serve`] on it until `shutdown`; returns the
/// bound address (useful with port 0) and the task.
pub async fn spawn_endpoint(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(addr = %local, "metrics endpoint listening");
    let span = tracing::info_span!("metrics", addr = %local);
    let task = tokio::spawn(serve(listener, metrics, shutdown).instrument(span));
    Ok((local, task))
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled (see
/// the module docs for what it answers). Connections still open then are
/// closed.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    serve_with(listener, metrics, shutdown, REQUEST_TIMEOUT).await;
}

async fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
    timeout: Duration,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        debug!(%peer, "too many metrics connections: closed");
                        continue;
                    }
                    let metrics = metrics.clone();
                    connections.spawn(
                        answer(stream, metrics, timeout)
                            .instrument(tracing::debug_span!("scrape", %peer)),
                    );
                }
                Err(e) => {
                    // Out of file descriptors, typically: do not spin.
                    warn!(error = %e, "metrics endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    connections.shutdown().await;
    debug!("metrics endpoint stopped");
}

/// One connection: read the head, answer, close.
async fn answer(mut stream: TcpStream, metrics: Metrics, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let response = match timeout_at(deadline, read_head(&mut stream)).await {
        Ok(Ok(Head::Complete(head))) => respond(&head, &metrics),
        // Closed without a byte (a port probe), or broken: nothing to say.
        Ok(Ok(Head::Cut(head))) if head.is_empty() => return,
        Ok(Err(_)) => return,
        Ok(Ok(Head::Cut(_))) => plain(400, "Bad Request", "incomplete request\n"),
        Ok(Ok(Head::TooLarge)) => plain(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
        Err(_) => {
            debug!("metrics client too slow");
            plain(408, "Request Timeout", "request timeout\n")
        }
    };
    let deadline = Instant::now() + timeout;
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Read what the client still sends (a body we ignored) until it
        // closes: closing with unread data would reset the connection and
        // could destroy the answer before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    if let Err(e) = timeout_at(deadline, write).await.unwrap_or(Ok(())) {
        debug!(error = %e, "metrics answer not delivered");
    }
}

/// What a client sent before the blank line ending its request head.
enum Head {
    /// The head, terminator excluded.
    Complete(Vec<u8>),
    /// The client closed its side before finishing the head (or before
    /// sending anything at all: `Cut(empty)`).
    Cut(Vec<u8>),
    /// More than [`MAX_HEAD_BYTES`] without the end of the head.
    TooLarge,
}

/// Reads up to the blank line ending the request head.
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Head::Cut(head));
        }
        // Search only where the new bytes could complete the terminator.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_head_end(&head[from..]) {
            head.truncate(from + end);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or a bare `\n\n`), just past the terminator.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        if bytes[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if bytes[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct RequestLine<'a> {
    method: &'a str,
    /// The path, without query string.
    path: &'a str,
}

/// Parses `METHOD SP origin-form-target SP HTTP/1.x` from the head's first line.
fn parse_request_line(head: &[u8]) -> Option<RequestLine<'_>> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(is_tchar)
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(RequestLine { method, path })
}

/// RFC 9110 `tchar`: what a method (a token) is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The whole response to a request head.
fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    match parse_request_line(head) {
        None => plain(400, "Bad Request", "bad request\n"),
        Some(r) if r.method != "GET" => {
            let mut response = plain(405, "Method Not Allowed", "only GET\n");
            // Insert `Allow` right after the status line.
            let at = response
                .iter()
                .position(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            response.splice(at..at, b"Allow: GET\r\n".iter().copied());
            response
        }
        Some(r) if r.path == "/metrics" => {
            response(200, "OK", CONTENT_TYPE, metrics.render().as_bytes())
        }
        Some(_) => plain(404, "Not Found", "not found: try /metrics\n"),
    }
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(status, reason, "text/plain; charset=utf-8", body.as_bytes())
}

fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_sorted_typed_and_escaped() {
        let m = Metrics::new();
        m.gauge("dmuc_rooms_active", "Rooms").set(2);
        let c = m.counter("dmuc_stanzas_in_total", "In");
        c.inc();
        c.inc_by(4);
        m.gauge_with("dmuc_peer_up", "Up", &[("domain", "c.test")])
            .set(0);
        m.gauge_with("dmuc_peer_up", "Up", &[("domain", "b.test")])
            .set(1);
        m.counter_with(
            "dmuc_odd_total",
            "Back\\slash\nand newline",
            &[("z", "last"), ("a", "q\"uote\\back\nline")],
        )
        .inc();
        assert_eq!(
            m.render(),
            "# HELP dmuc_odd_total Back\\\\slash\\nand newline\n\
             # TYPE dmuc_odd_total counter\n\
             dmuc_odd_total{a=\"q\\\"uote\\\\back\\nline\",z=\"last\"} 1\n\
             # HELP dmuc_peer_up Up\n\
             # TYPE dmuc_peer_up gauge\n\
             dmuc_peer_up{domain=\"b.test\"} 1\n\
             dmuc_peer_up{domain=\"c.test\"} 0\n\
             # HELP dmuc_rooms_active Rooms\n\
             # TYPE dmuc_rooms_active gauge\n\
             dmuc_rooms_active 2\n\
             # HELP dmuc_stanzas_in_total In\n\
             # TYPE dmuc_stanzas_in_total counter\n\
             dmuc_stanzas_in_total 5\n"
        );
        assert_eq!(Metrics::new().render(), "");
    }

    #[test]
    fn registering_again_shares_the_series() {
        let m = Metrics::new();
        let a = m.gauge_with("g", "h", &[("x", "1"), ("y", "2")]);
        let b = m.gauge_with("g", "other help is ignored", &[("y", "2"), ("x", "1")]);
        a.set(7);
        b.dec();
        assert_eq!(a.get(), 6);
        assert!(m.render().contains("# HELP g h\n"));
        // Clones of the registry are the same registry.
        m.clone().counter("c_total", "c").inc();
        assert!(m.render().contains("c_total 1\n"));
        // Detached handles count without a registry.
        let detached = Counter::default();
        detached.inc();
        assert_eq!(detached.get(), 1);
    }

    #[test]
    #[should_panic(expected = "registered as a counter")]
    fn one_name_one_kind() {
        let m = Metrics::new();
        m.counter("x_total", "x");
        m.gauge("x_total", "x");
    }

    #[test]
    fn names_are_checked() {
        assert!(is_metric_name("dmuc_a:b_1"));
        assert!(!is_metric_name("1abc"));
        assert!(!is_metric_name("a-b"));
        assert!(!is_metric_name(""));
        assert!(is_label_name("domain"));
        assert!(!is_label_name("__name__"));
        assert!(!is_label_name("a:b"));
        let bad = std::panic::catch_unwind(|| Metrics::new().gauge("bad name", "x"));
        assert!(bad.is_err());
        let bad = std::panic::catch_unwind(|| {
            Metrics::new().gauge_with("g", "x", &[("a", "1"), ("a", "2")])
        });
        assert!(bad.is_err());
    }

    #[test]
    fn request_lines() {
        fn parse(s: &str) -> Option<RequestLine<'_>> {
            parse_request_line(s.as_bytes())
        }
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(RequestLine {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(parse("POST / HTTP/1.0\n\n").unwrap().method, "POST");
        for bad in [
            "",
            "GET /metrics",
            "GET /metrics HTTP/1.1",
            "GET  /metrics HTTP/1.1\r\n",
            "GET /metrics HTTP/2\r\n",
            "GET metrics HTTP/1.1\r\n",
            "GET /me trics HTTP/1.1\r\n",
            "G(T /metrics HTTP/1.1\r\n",
            "GET /metrics HTTP/1.1 extra\r\n",
            "\u{1}\u{2}\r\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_request_line(b"GET /\xff HTTP/1.1\r\n"), None);
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    /// A served registry on a real socket, with `timeout` for slow clients.
    async fn server(timeout: Duration) -> (SocketAddr, Metrics, CancellationToken, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        metrics.gauge("dmuc_rooms_active", "Rooms").set(1);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_with(
            listener,
            metrics.clone(),
            shutdown.clone(),
            timeout,
        ));
        (addr, metrics, shutdown, task)
    }

    /// Sends `request`, then reads the whole answer (the server closes).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let (addr, metrics, shutdown, task) = server(REQUEST_TIMEOUT).await;
        metrics.counter("dmuc_stanzas_in_total", "In").inc_by(3);

        let ok = exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(head.contains("Connection: close"));
        assert_eq!(body, metrics.render());
        assert!(body.contains("dmuc_rooms_active 1\n"));
        assert!(body.contains("dmuc_stanzas_in_total 3\n"));

        let missing = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET\r\n"), "{post}");
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"hello\r\n\r\n",
            b"GET /metrics\r\n\r\n",
        ] {
            let bad = exchange(addr, garbage).await;
            assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        }
        // Endless headers: cut off, refused.
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'x', MAX_HEAD_BYTES + 10));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&huge).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // Half-closed before the blank line: refused, still answered.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

        shutdown.cancel();
        task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn a_silent_client_is_timed_out_and_others_are_served() {
        let (addr, _metrics, shutdown, task) = server(Duration::from_millis(200)).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Served meanwhile.
        let ok = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
        let mut answer = String::new();
        silent.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // A slow one that never finishes its head fares the same.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost:")
            .await
            .unwrap();
        let mut answer = String::new();
        slow.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_open_connections() {
        let (addr, _metrics, shutdown, task) = server(Duration::from_secs(60)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        // Let the server accept it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve ends promptly")
            .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut answer))
            .await
            .expect("connection closed");
        assert!(read.is_err() || answer.is_empty());
    }

    #[tokio::test]
    async fn spawn_endpoint_binds_and_stops() {
        let shutdown = CancellationToken::new();
        let (addr, task) = spawn_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            Metrics::new(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_ne!(addr.port(), 0);
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
        assert!(ok.ends_with("\r\n\r\n"), "empty registry, empty body");
        shutdown.cancel();
        task.await.unwrap();
    }
}
