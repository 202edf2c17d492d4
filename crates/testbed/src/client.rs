//! A real XMPP client over plain TCP: SASL PLAIN, resource binding, raw and
//! typed stanza output, and predicate-based waiting on input.
//!
//! A reader task turns the socket into [`Element`]s on a channel, so waiting
//! with a timeout never loses a half-read stanza. Stanzas skipped by
//! [`Client::expect`] are kept in a backlog and seen again by later calls,
//! in arrival order.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use minidom::Element;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::stanza::{self, NS_DISCO_INFO, escape};
use crate::stream::{Frame, XmlReader};

/// Default wait for an expected stanza.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many received stanzas are kept for error dumps.
const SEEN_KEEP: usize = 50;
/// Interval of [`Client::wait_for_service`] probes.
/// How long one disco#info of [`Client::wait_for_service`] may go unanswered.
const SERVICE_ATTEMPT: Duration = Duration::from_secs(2);
const SERVICE_POLL: Duration = Duration::from_millis(50);

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// How to log in.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Password (any is accepted by the testbed's insecure auth).
    pub password: String,
    /// Resource to bind; random when `None`.
    pub resource: Option<String>,
    /// Send `<presence/>` after binding.
    pub initial_presence: bool,
    /// Default timeout of [`Client::recv`] and [`Client::expect`].
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            password: "password".into(),
            resource: None,
            initial_presence: true,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What the reader task delivers.
#[derive(Debug)]
enum Incoming {
    Stanza(Element),
    Closed(String),
}

/// A connected, authenticated and bound client.
#[derive(Debug)]
pub struct Client {
    jid: String,
    writer: OwnedWriteHalf,
    rx: mpsc::UnboundedReceiver<Incoming>,
    reader: JoinHandle<()>,
    pending: VecDeque<Element>,
    seen: VecDeque<String>,
    closed: Option<String>,
    next_id: u64,
    timeout: Duration,
}

const STREAM_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
     xmlns:stream='http://etherx.jabber.org/streams' version='1.0' to='";

impl Client {
    /// Connects to `addr`, logs in as `user@domain` and binds a resource.
    #[tracing::instrument(skip(options), fields(user = %user, domain = %domain))]
    pub async fn connect(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        options: ClientOptions,
    ) -> Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(Error::io(format!("connecting to {addr}")))?;
        tcp.set_nodelay(true)
            .map_err(Error::io("setting TCP_NODELAY"))?;
        let (read, mut writer) = tcp.into_split();

        let mut reader = open_stream(XmlReader::new(read), &mut writer, domain).await?;
        let creds = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0{}", options.password));
        write(
            &mut writer,
            &format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{creds}</auth>"),
        )
        .await?;
        let answer = next_stanza(&mut reader).await?;
        if !answer.is("success", NS_SASL) {
            return Err(Error::Negotiation(format!(
                "sasl: {}",
                stanza::show(&answer)
            )));
        }
        let mut reader =
            open_stream(XmlReader::new(reader.into_inner()), &mut writer, domain).await?;

        let resource = options
            .resource
            .clone()
            .unwrap_or_else(|| format!("tb{}", random_u64() % 1_000_000));
        write(
            &mut writer,
            &format!(
                "<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
                escape(&resource)
            ),
        )
        .await?;
        let bound = next_stanza(&mut reader).await?;
        let jid = bound
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("jid", NS_BIND))
            .map(Element::text)
            .filter(|_| stanza::stanza_type(&bound) == "result")
            .ok_or_else(|| Error::Negotiation(format!("bind: {}", stanza::show(&bound))))?;

        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(reader, tx, jid.clone()));
        let mut client = Self {
            jid,
            writer,
            rx,
            reader,
            pending: VecDeque::new(),
            seen: VecDeque::new(),
            closed: None,
            next_id: 0,
            timeout: options.timeout,
        };
        if options.initial_presence {
            client.send_raw("<presence/>").await?;
        }
        tracing::debug!(jid = %client.jid, "client online");
        Ok(client)
    }

    /// The bound full JID.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// The bare JID.
    pub fn bare_jid(&self) -> &str {
        stanza::bare(&self.jid)
    }

    /// Why the stream ended, once it has (seen by a receive call).
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// A fresh stanza id, unique for this client.
    pub fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("tb-{}-{}", random_u64() % 10_000, self.next_id)
    }

    /// Sends a string as is, malformed or not.
    pub async fn send_raw(&mut self, xml: &str) -> Result<()> {
        tracing::trace!(jid = %self.jid, out = %xml, "send");
        write(&mut self.writer, xml).await
    }

    /// Sends an element (or anything that converts into one, such as
    /// xmpp-parsers stanzas).
    pub async fn send(&mut self, el: impl Into<Element>) -> Result<()> {
        let el: Element = el.into();
        self.send_raw(&String::from(&el)).await
    }

    /// The next stanza (backlog first), within the default timeout.
    pub async fn recv(&mut self) -> Result<Element> {
        self.expect("any stanza", |_| true).await
    }

    /// The first stanza matching `pred` (backlog first), within the default
    /// timeout; stanzas that do not match stay in the backlog.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Result<Element> {
        let timeout = self.timeout;
        self.expect_within(what, timeout, pred).await
    }

    /// [`Self::expect`] with an explicit timeout.
    pub async fn expect_within(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Element) -> bool,
    ) -> Result<Element> {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return Ok(self.pending.remove(pos).expect("position is in range"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_incoming(deadline).await {
                Some(el) if pred(&el) => return Ok(el),
                Some(el) => self.pending.push_back(el),
                None => {
                    return Err(Error::Timeout {
                        what: what.to_owned(),
                        timeout,
                        received: self.dump(),
                    });
                }
            }
        }
    }

    /// Proves a negative: fails if a stanza matching `pred` is in the
    /// backlog or arrives within `wait`. Only for cases where no event can
    /// mark "it would have arrived by now"; prefer a barrier such as an IQ
    /// round trip through the same sender.
    pub async fn expect_none_within(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Element) -> bool,
    ) -> Result<()> {
        match self.expect_within(what, wait, pred).await {
            Ok(el) => Err(Error::unexpected(format!("did not expect {what}"), &el)),
            Err(Error::Timeout { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Fails if the backlog holds a stanza matching `pred` (use after a
    /// barrier, see [`Self::barrier`]).
    pub fn expect_none_pending(&self, what: &str, pred: impl Fn(&Element) -> bool) -> Result<()> {
        match self.pending.iter().find(|e| pred(e)) {
            Some(el) => Err(Error::unexpected(format!("did not expect {what}"), el)),
            None => Ok(()),
        }
    }

    /// Drops the backlog.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// Moves everything that has already arrived into the backlog.
    fn drain_channel(&mut self) {
        while let Ok(incoming) = self.rx.try_recv() {
            if let Some(el) = self.accept(incoming) {
                self.pending.push_back(el);
            }
        }
    }

    /// An ordering barrier towards `jid`: a disco#info round trip. Entities
    /// handle a sender's stanzas in order and a link delivers in order, so
    /// whatever `jid` sent this client before answering is in the backlog
    /// when this returns.
    pub async fn barrier(&mut self, jid: &str) -> Result<()> {
        self.iq("get", jid, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
            .await?;
        self.drain_channel();
        Ok(())
    }

    /// Sends an IQ of `kind` (`get`/`set`) with `payload` to `to` and waits
    /// for the `result` or `error` with the same id; returns either.
    pub async fn iq(&mut self, kind: &str, to: &str, payload: &str) -> Result<Element> {
        let id = self.next_id();
        self.send_raw(&format!(
            "<iq type='{kind}' to='{}' id='{}'>{payload}</iq>",
            escape(to),
            escape(&id)
        ))
        .await?;
        let what = format!("iq response id={id} from {to}");
        self.expect(&what, |el| {
            stanza::is_iq(el)
                && stanza::attr(el, "id") == id
                && matches!(stanza::stanza_type(el), "result" | "error")
        })
        .await
    }

    /// Like [`Self::iq`] but an `error` response is an [`Error::Unexpected`].
    pub async fn iq_ok(&mut self, kind: &str, to: &str, payload: &str) -> Result<Element> {
        let response = self.iq(kind, to, payload).await?;
        if stanza::stanza_type(&response) == "result" {
            Ok(response)
        } else {
            Err(Error::unexpected(
                format!("iq {kind} to {to} failed"),
                &response,
            ))
        }
    }

    /// Polls `jid` with disco#info until it answers with a result, e.g.
    /// until an external component has connected to its server.
    pub async fn wait_for_service(&mut self, jid: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // A query routed to a component session that just died is lost:
            // ask again rather than wait for it.
            let id = self.next_id();
            self.send_raw(&format!(
                "<iq type='get' to='{}' id='{}'><query xmlns='{NS_DISCO_INFO}'/></iq>",
                escape(jid),
                escape(&id)
            ))
            .await?;
            let attempt = SERVICE_ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
            let answer = self
                .expect_within(&format!("disco#info of {jid}"), attempt, |el| {
                    stanza::is_iq(el)
                        && stanza::attr(el, "id") == id
                        && matches!(stanza::stanza_type(el), "result" | "error")
                })
                .await;
            let response = match answer {
                Ok(response) => response,
                Err(Error::Timeout { .. }) if Instant::now() < deadline => continue,
                Err(e) => return Err(e),
            };
            if stanza::stanza_type(&response) == "result" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("service {jid} to answer disco#info"),
                    timeout,
                    received: stanza::show(&response),
                });
            }
            tokio::time::sleep(SERVICE_POLL).await;
        }
    }

    /// Ends the stream politely and waits for the server to close it.
    pub async fn disconnect(mut self) -> Result<()> {
        self.send_raw("</stream:stream>").await?;
        let deadline = Instant::now() + self.timeout;
        while self.closed.is_none() {
            if self.next_incoming(deadline).await.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The next stanza from the channel before `deadline`; `None` on
    /// timeout or once the stream is closed.
    async fn next_incoming(&mut self, deadline: Instant) -> Option<Element> {
        if self.closed.is_some() {
            return None;
        }
        let incoming = tokio::time::timeout_at(deadline, self.rx.recv())
            .await
            .ok()?
            .unwrap_or(Incoming::Closed("reader stopped".into()));
        self.accept(incoming)
    }

    fn accept(&mut self, incoming: Incoming) -> Option<Element> {
        match incoming {
            Incoming::Stanza(el) => {
                if self.seen.len() == SEEN_KEEP {
                    self.seen.pop_front();
                }
                self.seen.push_back(stanza::show(&el));
                Some(el)
            }
            Incoming::Closed(why) => {
                self.closed = Some(why);
                None
            }
        }
    }

    /// The recent stanzas and the backlog, for error messages.
    fn dump(&self) -> String {
        let mut out = format!("[{}] last {} received:\n", self.jid, self.seen.len());
        for s in &self.seen {
            let _ = writeln!(out, "  {s}");
        }
        let _ = writeln!(out, "backlog: {} stanza(s)", self.pending.len());
        if let Some(why) = &self.closed {
            let _ = writeln!(out, "stream closed: {why}");
        }
        out
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Sends the stream header and reads the peer's header and features.
async fn open_stream(
    mut reader: XmlReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    domain: &str,
) -> Result<XmlReader<OwnedReadHalf>> {
    write(writer, &format!("{STREAM_HEADER}{}'>", escape(domain))).await?;
    match reader.next().await? {
        Frame::StreamOpen => {}
        other => {
            return Err(Error::Negotiation(format!(
                "expected stream header, got {other:?}"
            )));
        }
    }
    let features = next_stanza(&mut reader).await?;
    if features.name() != "features" {
        return Err(Error::Negotiation(format!(
            "expected features: {}",
            stanza::show(&features)
        )));
    }
    Ok(reader)
}

/// The next stanza during negotiation, bounded by [`DEFAULT_TIMEOUT`].
async fn next_stanza(reader: &mut XmlReader<OwnedReadHalf>) -> Result<Element> {
    let frame = tokio::time::timeout(DEFAULT_TIMEOUT, reader.next())
        .await
        .map_err(|_| Error::Negotiation("server did not answer".into()))??;
    match frame {
        Frame::Stanza(el) => Ok(el),
        other => Err(Error::Negotiation(format!(
            "expected a stanza, got {other:?}"
        ))),
    }
}

async fn write(writer: &mut OwnedWriteHalf, xml: &str) -> Result<()> {
    writer
        .write_all(xml.as_bytes())
        .await
        .map_err(Error::io("writing to the server"))
}

/// The reader task: stanzas to the channel until the stream ends.
async fn read_loop(
    mut reader: XmlReader<OwnedReadHalf>,
    tx: mpsc::UnboundedSender<Incoming>,
    jid: String,
) {
    let why = loop {
        match reader.next().await {
            Ok(Frame::Stanza(el)) if el.name() == "error" => break stanza::show(&el),
            Ok(Frame::Stanza(el)) => {
                tracing::trace!(jid = %jid, stanza = %stanza::show(&el), "recv");
                if tx.send(Incoming::Stanza(el)).is_err() {
                    return;
                }
            }
            Ok(Frame::StreamOpen) => break "unexpected stream restart".into(),
            Ok(Frame::StreamEnd) => break "stream ended".into(),
            Err(e) => break e.to_string(),
        }
    };
    tracing::debug!(jid = %jid, why = %why, "stream closed");
    let _ = tx.send(Incoming::Closed(why));
}

/// A random number from the standard library's per-process hash keys.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
