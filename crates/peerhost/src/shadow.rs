//! Interception (`[[shadow]]`): this domain's users' stanzas for a remote
//! MUC service, which the local server hands to the peerhost instead of
//! sending them over s2s (`deploy/prosody/mod_dmuc_intercept.lua`). One
//! [`Shadow`] task per intercepted master routes them, in the order they
//! came, and holds the master's slaves while its stream is down: they are
//! *split* and serve local users alone (`dmuc_room::split`).
//!
//! ```text
//!                       stream up:    ─Forward─▶ master's stream ─▶ master
//!  local server ─stanza─▶ Shadow ──▶  stream down: ─▶ the room's split slave ─▶ local users
//!                         │  ▲                      no slave: remote-server-timeout
//!   stream ends ─ Down{slaves}  Take ◀─ next stream (heals them, submits their splits) ─ Up{up}
//! ```
//!
//! Metrics, per master: `dmuc_split_rooms`, `dmuc_splits_total`,
//! `dmuc_heals_total`, `dmuc_split_submissions_total` ([`SplitMetrics`]).
//!
//! Between `Take` and `Up` (while the new stream submits what the splits
//! did) stanzas wait in a queue, so that a user's stanzas reach the master
//! in the order the user sent them.
//!
//! A room whose slave can follow a parent in the room's tree when the
//! stream ends (a `crate::relay` orphan) does not split: its stanzas go up
//! through that parent (a `Forward` on `TreeRelay.Report`, which the parent
//! carries up to the master as a `RelayedFrame`). If no parent accepts the
//! slave in time, the relay gives it back (`Shadow::lost`) and it splits.

use std::collections::HashMap;

use dmuc_component::LinkHandle;
use dmuc_component::metrics::{Counter, Gauge, Metrics};
use dmuc_protocol::pb::{self, peer_frame};
use dmuc_room::Condition;
use dmuc_room::split::Split;
use dmuc_stanza::outbound;
use jid::{BareJid, Jid};
use minidom::Element;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::relay::{Returned, Unsent};
use crate::slave::{Dormant, Outlets, Slave};
use crate::store::Store;
use crate::stream::Upstream;

/// Intercepted stanzas that may wait for the router.
const QUEUE: usize = 1024;

/// The router of one intercepted master's traffic; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shadow {
    tx: mpsc::Sender<Msg>,
    /// Where the relay gives up slaves that could follow no parent.
    lost: mpsc::UnboundedSender<Returned>,
    metrics: SplitMetrics,
}

/// Splits and heals of one master's rooms, for operators.
#[derive(Debug, Clone)]
pub struct SplitMetrics {
    /// Rooms split now.
    rooms: Gauge,
    /// Times the master's stream went down with rooms here.
    splits: Counter,
    /// Times a new stream of the master ended the splits.
    heals: Counter,
    /// Split-era inputs submitted to the master on heal.
    submitted: Counter,
}

impl SplitMetrics {
    pub fn register(metrics: &Metrics, master: &BareJid) -> SplitMetrics {
        let label = [("master", master.as_str())];
        SplitMetrics {
            rooms: metrics.gauge_with(
                "dmuc_split_rooms",
                "Rooms whose slave is split from its master now",
                &label,
            ),
            splits: metrics.counter_with(
                "dmuc_splits_total",
                "Times the master's stream went down while it had slaves here (they split)",
                &label,
            ),
            heals: metrics.counter_with(
                "dmuc_heals_total",
                "Times a new stream of the master ended its slaves' splits",
                &label,
            ),
            submitted: metrics.counter_with(
                "dmuc_split_submissions_total",
                "Split-era inputs submitted to the master on heal",
                &label,
            ),
        }
    }
}

#[derive(Debug)]
enum Msg {
    Stanza(Element),
    /// The master's stream ended: its slaves split; the rooms whose
    /// slaves follow a parent in their trees (orphans) do not, and their
    /// stanzas go up through it.
    Down {
        slaves: HashMap<BareJid, Slave>,
        orphans: HashMap<BareJid, Unsent>,
    },
    /// A new stream of the master takes the split slaves.
    Take(oneshot::Sender<HashMap<BareJid, Slave>>),
    /// The new stream is ready for forwarded stanzas.
    Up(Upstream),
}

impl Shadow {
    /// Starts the router of `master`'s service. Its first act is to bring
    /// back the splits the peerhost was in when it stopped.
    pub fn spawn(
        master: BareJid,
        domain: BareJid,
        store: Store,
        outlets: Outlets,
        metrics: SplitMetrics,
        shutdown: CancellationToken,
    ) -> Shadow {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let span = info_span!("shadow", master = %master);
        let router = Router {
            master,
            domain,
            link: outlets.link.clone(),
            outlets,
            store,
            up: None,
            waiting: None,
            split: HashMap::new(),
            orphans: HashMap::new(),
            metrics: metrics.clone(),
        };
        tokio::spawn(router.run(rx, lost_rx, shutdown).instrument(span));
        Shadow { tx, lost, metrics }
    }

    /// Where the relay hands the slaves of rooms that go on through their
    /// trees (orphans) once no parent accepts them: they split.
    pub fn lost(&self) -> mpsc::UnboundedSender<Returned> {
        self.lost.clone()
    }

    /// Counts split-era inputs submitted to the master.
    pub fn submitted(&self, count: usize) {
        self.metrics.submitted.inc_by(count as u64);
    }

    /// Routes one intercepted stanza.
    pub async fn stanza(&self, stanza: Element) {
        let _ = self.tx.send(Msg::Stanza(stanza)).await;
    }

    /// Hands over the slaves of a stream that ended: they split. The
    /// stanzas for `orphans`' rooms go up their way (through a parent in
    /// the room's tree) instead.
    pub async fn down(&self, slaves: HashMap<BareJid, Slave>, orphans: HashMap<BareJid, Unsent>) {
        if let Err(e) = self.tx.send(Msg::Down { slaves, orphans }).await
            && let Msg::Down { slaves, .. } = e.0
        {
            // Shutting down: the router is gone.
            for (_, slave) in slaves {
                slave.stop().await;
            }
        }
    }

    /// Takes the split slaves, for a new stream; stanzas wait until [`Self::up`].
    pub async fn take(&self) -> HashMap<BareJid, Slave> {
        let (reply, taken) = oneshot::channel();
        if self.tx.send(Msg::Take(reply)).await.is_err() {
            return HashMap::new();
        }
        taken.await.unwrap_or_default()
    }

    /// Stanzas go up `up` from now on, starting with those that waited.
    pub async fn up(&self, up: Upstream) {
        let _ = self.tx.send(Msg::Up(up)).await;
    }
}

struct Router {
    master: BareJid,
    domain: BareJid,
    link: LinkHandle,
    /// For slaves restored split at start.
    outlets: Outlets,
    store: Store,
    /// The master's stream, when it is up.
    up: Option<Upstream>,
    /// Stanzas waiting while a new stream submits the splits.
    waiting: Option<Vec<Element>>,
    /// The master's slaves while its stream is down.
    split: HashMap<BareJid, Slave>,
    /// While the master's stream is down, the way up of the rooms whose
    /// slaves follow a parent (`crate::relay` orphans).
    orphans: HashMap<BareJid, Unsent>,
    metrics: SplitMetrics,
}

impl Router {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut lost: mpsc::UnboundedReceiver<Returned>,
        shutdown: CancellationToken,
    ) {
        self.restore().await;
        loop {
            let msg = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(returned) = lost.recv() => {
                    self.lost(returned).await;
                    continue;
                }
                msg = rx.recv() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
            };
            match msg {
                Msg::Stanza(stanza) => self.route(stanza).await,
                Msg::Down { slaves, orphans } => {
                    self.up = None;
                    if !orphans.is_empty() {
                        info!(
                            rooms = orphans.len(),
                            "the master's stream is down: these rooms go on through their trees"
                        );
                    }
                    self.orphans = orphans;
                    let waiting = self.waiting.take().unwrap_or_default();
                    if !slaves.is_empty() {
                        info!(rooms = slaves.len(), "the master's stream is down: split");
                        self.metrics.splits.inc();
                    }
                    for (room, slave) in slaves {
                        if slave.split().await {
                            self.split.insert(room, slave);
                        }
                    }
                    self.metrics.rooms.set(self.split.len() as i64);
                    // What waited for a stream that did not come up goes
                    // to the split slaves.
                    for stanza in waiting {
                        self.route(stanza).await;
                    }
                }
                Msg::Take(reply) => {
                    self.waiting = Some(Vec::new());
                    self.orphans.clear();
                    if !self.split.is_empty() {
                        self.metrics.heals.inc();
                    }
                    self.metrics.rooms.set(0);
                    let _ = reply.send(std::mem::take(&mut self.split));
                }
                Msg::Up(up) => {
                    for stanza in self.waiting.take().unwrap_or_default() {
                        self.forward(&up, stanza).await;
                    }
                    self.up = Some(up);
                }
            }
        }
        // Split slaves save their state; the next start restores them.
        for (_, slave) in self.split.drain() {
            slave.stop().await;
        }
        debug!("shadow router stopped");
    }

    /// A room's slave could follow no parent in its tree: it splits (if
    /// the master's stream is still down), and what its users said that no
    /// parent carried up is said in the split (or up the new stream).
    async fn lost(&mut self, returned: Returned) {
        let stanzas = returned.stanzas();
        let Returned { room, slave, .. } = returned;
        self.orphans.remove(&room);
        if self.up.is_some() || self.waiting.is_some() {
            // A new stream came meanwhile; it resumes the room anew.
            slave.stop().await;
        } else {
            info!(%room, "the master's stream is down and no parent in the room's tree takes the slave: split");
            self.metrics.splits.inc();
            if slave.split().await {
                self.split.insert(room, slave);
            }
            self.metrics.rooms.set(self.split.len() as i64);
        }
        // Up the new stream, or into the split.
        for stanza in stanzas {
            self.route(stanza).await;
        }
    }

    /// Splits that were going on when the peerhost stopped go on.
    async fn restore(&mut self) {
        let splits = match self
            .store
            .load_splits(&self.master, self.domain.as_str())
            .await
        {
            Ok(splits) => splits,
            Err(e) => {
                error!(error = %e, "cannot load stored splits");
                return;
            }
        };
        let live: Vec<_> = splits.into_iter().filter(|s| !s.healed).collect();
        if live.is_empty() {
            return;
        }
        let mut slaves: HashMap<BareJid, _> = match self.store.load(&self.master).await {
            Ok(slaves) => slaves
                .into_iter()
                .map(|s| (s.snapshot.jid.clone(), s))
                .collect(),
            Err(e) => {
                error!(error = %e, "cannot load the split slaves");
                return;
            }
        };
        for stored in live {
            let room = stored.start.snapshot.jid.clone();
            let Some(slave) = slaves.remove(&room) else {
                warn!(%room, "stored split without its slave: submitted on heal only");
                continue;
            };
            let dormant = Dormant::load(slave, self.domain.as_str());
            let split = Split::restore(stored.start, stored.log);
            let slave = Slave::restore_split(dormant, split, self.outlets.clone());
            self.split.insert(room, slave);
        }
        self.metrics.rooms.set(self.split.len() as i64);
    }

    async fn route(&mut self, stanza: Element) {
        if let Some(waiting) = &mut self.waiting {
            waiting.push(stanza);
            return;
        }
        if let Some(up) = &self.up {
            let up = up.clone();
            self.forward(&up, stanza).await;
            return;
        }
        let room = room_of(&stanza);
        if let Some(orphan) = room.as_ref().and_then(|room| self.orphans.get(room)) {
            // Its slave follows a parent: the stanza goes up through it.
            if orphan.forward(&stanza) {
                return;
            }
            self.orphans.remove(room.as_ref().expect("checked"));
        }
        let slave = room.and_then(|room| self.split.get(&room));
        let stanza = match slave {
            Some(slave) => match slave.local(stanza).await {
                Ok(()) => return,
                Err(stanza) => stanza,
            },
            None => stanza,
        };
        self.unreachable(&stanza).await;
    }

    /// Sends a stanza up the master's stream; if the stream has just gone,
    /// the sender is told (the slaves split once the stream hands them over).
    async fn forward(&mut self, up: &Upstream, stanza: Element) {
        let frame = peer_frame::Frame::Forward(pb::Forward {
            stanza: String::from(&stanza),
        });
        if !up.send(frame).await {
            self.up = None;
            self.unreachable(&stanza).await;
        }
    }

    async fn unreachable(&self, stanza: &Element) {
        debug!(
            to = stanza.attr("to"),
            "the room's service cannot be reached"
        );
        if let Some(reply) = unreachable(stanza) {
            let _ = self.link.send(reply).await;
        }
    }
}

/// The error that tells a local user that the room's master is out of
/// reach (for a stanza that may be answered).
pub(crate) fn unreachable(stanza: &Element) -> Option<Element> {
    outbound::error_reply(
        stanza,
        Condition::RemoteServerTimeout,
        Some("The room's service cannot be reached"),
    )
}

/// The room a stanza is addressed to, if it is to a room.
fn room_of(stanza: &Element) -> Option<BareJid> {
    let to: Jid = stanza.attr("to")?.parse().ok()?;
    let node = to.node()?;
    Some(BareJid::from_parts(Some(node), to.domain()))
}
