//! Who delivers a room's stanzas to each domain: the master itself, or the
//! room's slave on that domain's peerhost; and what the master still owes a
//! domain whose slave has not acknowledged.
//!
//! ```text
//!  handle time   Room::handle ─▶ split: direct part │ shares per slave domain ─┐
//!                join from b.test, peer up ─▶ Attach(Create snapshot@Q) ─────────┤ pipeline, in order,
//!                Up / Resync news ─▶ Attach(Resume | Create) ────────────────────┤ behind the commits
//!                no b.test occupant for a grace period ─▶ Destroy ───────────────┘
//!  release time  Event: to every attached slave; its share kept until acked
//!                        (or delivered directly if the domain has no slave now)
//!                Attach: CreateSlave / Resume + missing events; Destroy: DestroySlave
//!  news          Ack: drop acknowledged shares; Down: deliver every unacked share directly
//! ```
//!
//! The room's slaves form a spanning tree ([`crate::tree`]; a star unless
//! `[peering] max_fanout` limits it or a link is broken or slow): the
//! master sends each event only to its own children in the tree, tells
//! every slave its place (`Assign`: parent, children, the master's key,
//! fallbacks) whenever the tree changes, and the slaves relay to each
//! other. Only events for a slave with children are signed, so a plain
//! star's wire is that of no tree at all; a slave that gains children is
//! sent, signed, what they have not acknowledged, for its window. Every
//! slave still acknowledges on its own stream, so what a slave has not
//! acknowledged is still the master's to deliver if its stream drops.
//!
//! ```text
//!  tree news     Down, others in the tree ─▶ Detour under another slave (acks come up relayed)
//!                TreeReport on the slave's own stream ─▶ Tree::report: it, and only it, moves
//!                Up / Resume ─▶ heal: replan; keepalive round trips ─▶ Health (master links)
//!                Links (a peerhost's LinkHealth) ─▶ Health (its links to the room's other slaves)
//!                Health drifted from the last plan ─▶ replan, at most every REPLAN_EVERY
//! ```
//!
//! Every decision is taken here, without I/O: the room task carries out
//! the [`Effect`]s in order. Everything a slave is sent is released behind
//! the commits before it, so a slave, like the master, never shows anyone
//! something that a crash of the master could take back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dmuc_protocol::pb::{self, master_frame};
use dmuc_protocol::{RoomEvent, SlaveStart};
use dmuc_room::{Action, Input, Room};
use jid::BareJid;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::peering::{ChildFrame, Directory, LinkState, News, PeerHandle, PeerNews, Seal, ToPeer};
use crate::tree::{Health, Measured, NodeId, Report, Tree, TreeSetup, TreeStats, Why};

/// Events kept for slaves that come back (Resume instead of a snapshot).
const LOG_LIMIT: usize = 4096;

/// How soon to look again at a slave due to end that still owes stanzas.
const RECHECK: Duration = Duration::from_secs(1);

/// How long a slave reached only through the tree may owe shares without
/// acknowledging any before the master delivers them itself.
pub const DETOUR_PATIENCE: Duration = Duration::from_secs(5);

/// A room's tree is replanned for drifted link health at most this often
/// (the first time at once): a moving link does not make it churn.
pub const REPLAN_EVERY: Duration = Duration::from_secs(10);

/// Something the room task must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Deliver these to their recipients directly.
    Direct(Vec<Action>),
    /// Hand this to a peerhost's task.
    Peer(PeerHandle, ToPeer),
    /// A stanza a slave's users sent, intercepted and carried up the
    /// room's tree, checked: handle it as that peerhost's own `Forward`.
    Forward(Box<minidom::Element>),
}

/// A step that waits its turn in the room's pipeline (behind the commits
/// of the inputs before it).
#[derive(Debug)]
pub enum Release {
    /// An event: for every attached slave, and the shares of the slave
    /// domains' users (delivered by the slave, or directly if it has none).
    Event {
        event: RoomEvent,
        shares: Vec<(String, Vec<Action>)>,
    },
    /// Start a slave on `session`: everything before has been released.
    Attach {
        domain: String,
        session: u64,
        start: Start,
    },
    /// Forget the domain's slave.
    Destroy { domain: String, peer: PeerHandle },
}

#[derive(Debug)]
pub enum Start {
    Create(Box<SlaveStart>),
    /// The slave's state at `have` is good: resend what followed.
    Resume {
        have: u64,
        events: Vec<Arc<pb::Event>>,
    },
}

#[derive(Debug)]
struct Domain {
    peer: PeerHandle,
    mode: Mode,
    /// A slave is being attached on this session (an `Attach` is queued).
    attaching: Option<u64>,
    /// The last released event whose share the master delivered itself.
    direct_until: u64,
    /// The room has had no occupant from the domain: when to end the
    /// slave (or look again, if it still owes stanzas then).
    ends_at: Option<Instant>,
}

#[derive(Debug)]
enum Mode {
    Direct,
    Slave {
        session: u64,
        /// Shares of released events the slave has not acknowledged.
        unacked: VecDeque<(u64, Vec<Action>)>,
        /// The last event it acknowledged.
        acked: u64,
    },
    /// The slave's peerhost intercepts its users' traffic and is
    /// unreachable (a split): nobody delivers to them until it is back and
    /// resumes after `direct_until`, the last event it acknowledged.
    Cut,
    /// The slave's stream is down but, in the room's tree, it follows
    /// another slave, which relays its events down and its acknowledgements
    /// up: it still delivers its domain's share. If nothing it owes is
    /// acknowledged for [`DETOUR_PATIENCE`], or its peerhost is found not
    /// running (`PeerNews::NotRunning`), the master delivers directly.
    Detour {
        unacked: VecDeque<(u64, Vec<Action>)>,
        acked: u64,
        /// Since when it has owed shares without acknowledging any.
        waiting: Option<Instant>,
    },
}

/// One room's slaves.
#[derive(Debug)]
pub struct Fanout {
    room: BareJid,
    domains: BTreeMap<String, Domain>,
    /// Domains whose peer task knows this room (for its news).
    registered: BTreeSet<String>,
    /// Recent events, for `Resume`.
    log: VecDeque<RoomEvent>,
    /// The last event released.
    released: u64,
    grace: Duration,
    /// Where the peer tasks send this room's news.
    news: mpsc::UnboundedSender<News>,
    /// The slaves' spanning tree, with `[peering] max_fanout`.
    spanning: Option<Spanning>,
}

/// A room's spanning tree of slaves.
#[derive(Debug)]
struct Spanning {
    setup: Arc<TreeSetup>,
    tree: Tree,
    health: Health,
    /// The health the tree was last replanned with, and when.
    planned: Health,
    replanned: Option<Instant>,
    /// The place each slave domain was last told, on which session.
    told: BTreeMap<String, (u64, pb::Assign)>,
    /// The frames each slave domain sealed that were taken, apart for its
    /// reports (`Fanout::sender_of`).
    sealed: BTreeMap<(String, bool), Seen>,
    stats: TreeStats,
    /// This room's `dmuc_tree_depth`, `dmuc_tree_fanout` and
    /// `dmuc_reparents_total`.
    depth: dmuc_component::metrics::Gauge,
    fanout: dmuc_component::metrics::Gauge,
    reparents: dmuc_component::metrics::Counter,
}

/// The counters of the sealed frames taken from one child: each is taken
/// once. Frames may come by different paths (an old parent's slower
/// stream, a new parent's, the child's own), so a counter below the
/// highest is taken too if not seen, within the last `SEEN` taken.
#[derive(Debug, Default)]
struct Seen {
    /// Counters at or below this are too old: refused.
    floor: u64,
    recent: BTreeSet<u64>,
}

/// Sealed frames remembered per child.
const SEEN: usize = 1024;

impl Seen {
    /// Whether `counter` is taken now (not seen before, not too old).
    fn first_time(&mut self, counter: u64) -> bool {
        if counter <= self.floor || !self.recent.insert(counter) {
            return false;
        }
        if self.recent.len() > SEEN
            && let Some(oldest) = self.recent.pop_first()
        {
            self.floor = oldest;
        }
        true
    }
}

impl Spanning {
    /// Replans if the links drifted from the last plan and the last
    /// replan is [`REPLAN_EVERY`] before `now`; not while a slave is on a
    /// detour (it has no stream to be told a new place on). Returns the
    /// number of moves if it replanned.
    fn replan_if_due(&mut self, now: Instant, on_detour: bool) -> Option<usize> {
        if on_detour
            || !self.health.drifted(&self.planned)
            || self.replanned.is_some_and(|at| now < at + REPLAN_EVERY)
        {
            return None;
        }
        let moves = self.tree.replan(&self.health);
        self.planned = self.health.clone();
        self.replanned = Some(now);
        Some(moves.len())
    }

    /// When the links that drifted call for a replan, if they did.
    fn next_replan(&self, on_detour: bool) -> Option<Instant> {
        if on_detour || !self.health.drifted(&self.planned) {
            return None;
        }
        Some(match self.replanned {
            Some(at) => at + REPLAN_EVERY,
            None => Instant::now(),
        })
    }
}

impl Fanout {
    pub fn new(room: BareJid, grace: Duration, news: mpsc::UnboundedSender<News>) -> Self {
        Fanout {
            news,
            room,
            domains: BTreeMap::new(),
            registered: BTreeSet::new(),
            log: VecDeque::new(),
            released: 0,
            grace,
            spanning: None,
        }
    }

    /// Runs the slaves in a spanning tree, if `setup` says so.
    pub fn with_tree(mut self, setup: Option<Arc<TreeSetup>>) -> Self {
        let room = self.room.to_string();
        self.spanning = setup.map(|setup| Spanning {
            depth: setup.metrics.gauge_with(
                "dmuc_tree_depth",
                "Hops from the master to the deepest slave of the room's tree",
                &[("room", &room)],
            ),
            fanout: setup.metrics.gauge_with(
                "dmuc_tree_fanout",
                "The most slaves any node of the room's tree feeds (the master included)",
                &[("room", &room)],
            ),
            reparents: setup.metrics.counter_with(
                "dmuc_reparents_total",
                "Slaves the master moved to another parent in the room's tree",
                &[("room", &room)],
            ),
            tree: Tree::new(setup.max_fanout),
            setup,
            health: Health::default(),
            planned: Health::default(),
            replanned: None,
            told: BTreeMap::new(),
            sealed: BTreeMap::new(),
            stats: TreeStats::default(),
        });
        self
    }

    /// The tree's shape, if the room runs one.
    pub fn tree_stats(&self) -> Option<TreeStats> {
        self.spanning.as_ref().map(|s| s.tree.stats())
    }

    /// Brings the tree in line with the slaves attached now, and tells
    /// every slave whose place changed.
    fn sync_tree(&mut self, effects: &mut Vec<Effect>) {
        let Fanout {
            spanning,
            domains,
            log,
            released,
            ..
        } = self;
        let Some(sp) = spanning else { return };
        let slaves: BTreeMap<NodeId, (&String, &Domain, u64)> = domains
            .iter()
            .filter_map(|(d, e)| match e.mode {
                Mode::Slave { session, .. } => Some((NodeId::peer(d), (d, e, session))),
                _ => None,
            })
            .collect();
        // Slaves reached through the tree only stay in it (and are told
        // nothing: they have no stream).
        let members: BTreeSet<NodeId> = domains
            .iter()
            .filter(|(_, e)| matches!(e.mode, Mode::Slave { .. } | Mode::Detour { .. }))
            .map(|(d, _)| NodeId::peer(d))
            .collect();
        // The master's links as its keepalives measure them (a link
        // reported broken stays so until the slave's stream is back).
        for (d, e) in domains.iter() {
            let node = NodeId::peer(d);
            if let Some(rtt) = e.peer.rtt_ms()
                && members.contains(&node)
                && !sp.health.link(&node, &NodeId::Master).broken
            {
                sp.health.measured(&node, &NodeId::Master, rtt, 0);
            }
        }
        let gone: Vec<NodeId> = sp
            .tree
            .nodes()
            .filter(|n| !members.contains(*n))
            .cloned()
            .collect();
        for node in &gone {
            sp.tree.remove(node, &sp.health);
        }
        for node in &members {
            if !sp.tree.contains(node) {
                sp.tree.add(node.clone(), &sp.health);
            }
        }
        let detours = domains
            .values()
            .any(|e| matches!(e.mode, Mode::Detour { .. }));
        if let Some(moves) = sp.replan_if_due(Instant::now(), detours) {
            info!(room = %self.room, moves, "tree: link health drifted, replanned");
        }
        let jid = |n: &NodeId| match n {
            NodeId::Master => String::new(),
            NodeId::Peer(d) => domains
                .get(&**d)
                .map(|e| e.peer.target.jid.to_string())
                .unwrap_or_default(),
        };
        let endpoint = |n: &NodeId| match n {
            NodeId::Master => String::new(),
            NodeId::Peer(d) => domains
                .get(&**d)
                .and_then(|e| e.peer.target.endpoint.clone())
                .unwrap_or_default(),
        };
        for (node, (domain, entry, session)) in &slaves {
            let parent = sp.tree.parent(node).cloned().unwrap_or(NodeId::Master);
            let parent_endpoint = endpoint(&parent);
            // Where it may go if its stream breaks: any slave with a
            // stream outside its own subtree (one that dials in has no
            // endpoint here; the peerhost may have a route to it).
            let fallbacks = slaves
                .keys()
                .filter(|other| *other != node && !sp.tree.path(other).contains(node))
                .map(|other| pb::Fallback {
                    jid: jid(other),
                    endpoint: endpoint(other),
                })
                .collect();
            let assign = pb::Assign {
                room: self.room.to_string(),
                parent_jid: jid(&parent),
                parent_endpoint,
                path: sp
                    .tree
                    .path(&parent)
                    .iter()
                    .filter(|n| !n.is_master())
                    .map(jid)
                    .collect(),
                children: sp.tree.children(node).iter().map(jid).collect(),
                master_key: sp.setup.signer.public_key(),
                fallbacks,
                report_key: sp.setup.report_keys.for_peer(&jid(node)),
            };
            if sp.told.get(*domain) == Some(&(*session, assign.clone())) {
                continue;
            }
            debug!(%domain, parent = %parent, children = assign.children.len(), "tree: telling a slave its place");
            effects.push(Effect::Peer(
                entry.peer.clone(),
                ToPeer::Frame {
                    session: *session,
                    frame: Box::new(master_frame::Frame::Assign(assign.clone())),
                },
            ));
            // A new parent was sent its events unsigned, which it cannot
            // relay: what its new children may lack follows, signed, for
            // its window (its own slave drops them as had).
            let before: BTreeSet<&String> = match sp.told.get(*domain) {
                Some((s, told)) if s == session => told.children.iter().collect(),
                _ => BTreeSet::new(),
            };
            let from = assign
                .children
                .iter()
                .filter(|c| !before.contains(c))
                .filter_map(|c| domains.values().find(|e| e.peer.target.jid.as_str() == c))
                .filter_map(|e| match e.mode {
                    Mode::Slave { acked, .. } | Mode::Detour { acked, .. } => Some(acked),
                    _ => None,
                })
                .min();
            if let Some(from) = from {
                let backfill: Vec<&RoomEvent> = log
                    .iter()
                    .filter(|e| e.seq > from && e.seq <= *released)
                    .collect();
                if !backfill.is_empty() {
                    debug!(%domain, from, events = backfill.len(), "tree: signed events for a new parent's children");
                }
                for event in backfill {
                    effects.push(Effect::Peer(
                        entry.peer.clone(),
                        ToPeer::Signed {
                            session: *session,
                            event: Arc::new(sp.setup.signer.sign(&pb::Event::from(event))),
                        },
                    ));
                }
            }
            sp.told.insert((*domain).clone(), (*session, assign));
        }
        // A slave on a detour is told again when its stream is back.
        sp.told.retain(|d, _| slaves.contains_key(&NodeId::peer(d)));
        let stats = sp.tree.stats();
        if stats != sp.stats {
            info!(
                room = %self.room,
                nodes = stats.nodes,
                depth = stats.depth,
                master_fanout = stats.master_fanout,
                max_fanout = stats.max_fanout,
                reparents = stats.reparents,
                "tree changed"
            );
            sp.depth.set(stats.depth as i64);
            sp.fanout.set(stats.max_fanout as i64);
            sp.reparents
                .inc_by(stats.reparents.saturating_sub(sp.stats.reparents));
            sp.stats = stats;
        }
    }

    /// Whether the master sends `domain`'s slave the events itself (it has
    /// no tree, or the slave is the master's child in it).
    fn feeds(&self, domain: &str) -> bool {
        self.spanning.as_ref().is_none_or(|sp| {
            sp.tree
                .parent(&NodeId::peer(domain))
                .is_none_or(NodeId::is_master)
        })
    }

    /// Whether `domain`'s slave relays events to children of its own (the
    /// events it is sent are then signed, for them to check).
    fn relays(&self, domain: &str) -> bool {
        self.spanning
            .as_ref()
            .is_some_and(|sp| !sp.tree.children(&NodeId::peer(domain)).is_empty())
    }

    /// Whether any domain is (or may become) served by a slave.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Splits an input's actions into what the master delivers and each
    /// slave domain's share.
    pub fn split(&self, actions: Vec<Action>) -> (Vec<Action>, Vec<(String, Vec<Action>)>) {
        if self.domains.is_empty() {
            return (actions, Vec::new());
        }
        let mut direct = Vec::new();
        let mut shares: BTreeMap<&str, Vec<Action>> = BTreeMap::new();
        for action in actions {
            let Action::Send { to, stanza } = action else {
                direct.push(action);
                continue;
            };
            let mut mine = Vec::new();
            let mut theirs: BTreeMap<&str, Vec<_>> = BTreeMap::new();
            for jid in to {
                match self.domains.get_key_value(jid.domain().as_str()) {
                    Some((d, _)) => theirs.entry(d.as_str()).or_default().push(jid),
                    None => mine.push(jid),
                }
            }
            for (d, to) in theirs {
                shares.entry(d).or_default().push(Action::Send {
                    to,
                    stanza: stanza.clone(),
                });
            }
            if !mine.is_empty() {
                direct.push(Action::Send { to: mine, stanza });
            }
        }
        let shares = shares.into_iter().map(|(d, a)| (d.to_owned(), a)).collect();
        (direct, shares)
    }

    /// Keeps `event` for slaves that may come back.
    pub fn record(&mut self, event: &RoomEvent) {
        if self.domains.is_empty() {
            self.log.clear();
            return;
        }
        if self.log.len() == LOG_LIMIT {
            self.log.pop_front();
        }
        self.log.push_back(event.clone());
    }

    /// Before `input` is handled (the room is after event `seq`): a joiner
    /// from a domain with a peerhost that is up gets a slave there first,
    /// so that the slave serves the join itself.
    pub fn before(
        &mut self,
        input: &Input,
        room: &Room,
        seq: u64,
        directory: &Directory,
        effects: &mut Vec<Effect>,
    ) -> Option<Release> {
        let domain = input.joiner()?.domain().as_str();
        if self.domains.contains_key(domain) {
            return None;
        }
        let peer = directory.get(&BareJid::new(domain).ok()?)?;
        if self.registered.insert(domain.to_owned()) {
            effects.push(Effect::Peer(
                peer.clone(),
                ToPeer::Register {
                    room: self.room.clone(),
                    news: self.news.clone(),
                },
            ));
        }
        let state = peer.state();
        self.domains.insert(
            domain.to_owned(),
            Domain {
                peer,
                mode: Mode::Direct,
                attaching: None,
                direct_until: seq,
                ends_at: None,
            },
        );
        match state {
            LinkState::Up(session) => Some(self.attach(domain, session, None, room, seq)),
            _ => None,
        }
    }

    /// An `Attach` for `domain` on `session`: resumes from `have` if the log
    /// still holds every event after it, else creates from a snapshot.
    fn attach(
        &mut self,
        domain: &str,
        session: u64,
        have: Option<u64>,
        room: &Room,
        seq: u64,
    ) -> Release {
        let entry = self.domains.get_mut(domain).expect("known domain");
        entry.attaching = Some(session);
        let resumable = have.filter(|&have| {
            have == seq
                || (have < seq && self.log.front().is_some_and(|first| first.seq <= have + 1))
        });
        let start = match resumable {
            Some(have) => Start::Resume {
                have,
                events: self
                    .log
                    .iter()
                    .filter(|e| e.seq > have && e.seq <= seq)
                    .map(|e| Arc::new(pb::Event::from(e)))
                    .collect(),
            },
            None => Start::Create(Box::new(SlaveStart {
                snapshot: room.snapshot(),
                seq,
                deliver_after: seq,
            })),
        };
        Release::Attach {
            domain: domain.to_owned(),
            session,
            start,
        }
    }

    /// News from a peerhost's task (the room is after event `seq`).
    pub fn on_news(
        &mut self,
        domain: &BareJid,
        news: PeerNews,
        room: &Room,
        seq: u64,
        directory: &Directory,
        effects: &mut Vec<Effect>,
    ) -> Option<Release> {
        let key = domain.as_str();
        let Some(entry) = self.domains.get_mut(key) else {
            // No slave wanted here; a kept one is forgotten.
            if let PeerNews::Up {
                session,
                resume_from: Some(_),
            } = news
                && let Some(peer) = directory.get(domain)
            {
                effects.push(Effect::Peer(peer, self.destroy_frame(session)));
            }
            return None;
        };
        match news {
            PeerNews::NotRunning { .. } => {
                // No parent can be reaching it: no need to wait for news.
                if self.end_detour(key, "its peerhost is not running", effects) {
                    self.sync_tree(effects);
                }
                None
            }
            PeerNews::Up {
                session,
                resume_from,
            } => {
                let attached = matches!(entry.mode, Mode::Slave { session: s, .. } if s == session);
                if attached || entry.attaching == Some(session) {
                    return None;
                }
                if !has_occupant_from(room, key) {
                    // Nobody left to serve: let the grace period end it,
                    // and forget what the peerhost kept.
                    if resume_from.is_some() {
                        effects.push(Effect::Peer(
                            entry.peer.clone(),
                            self.destroy_frame(session),
                        ));
                    }
                    return None;
                }
                Some(self.attach(key, session, resume_from, room, seq))
            }
            PeerNews::Down { session } => {
                if entry.attaching.is_some_and(|s| s <= session) {
                    entry.attaching = None;
                }
                if let Mode::Slave {
                    session: s, acked, ..
                } = entry.mode
                    && s <= session
                {
                    let intercepts = entry.peer.intercepts();
                    // It may go on through another slave (its users'
                    // stanzas too, if it intercepts: carried up by its
                    // parent).
                    if self.detour(key) {
                        self.sync_tree(effects);
                        return None;
                    }
                    let entry = self.domains.get_mut(key)?;
                    if intercepts {
                        // Its users can only be reached through it: they
                        // wait, and its slave catches up when it is back.
                        info!(%domain, acked, "split: the slave's events wait for it");
                        entry.mode = Mode::Cut;
                        entry.direct_until = acked;
                        self.sync_tree(effects);
                        return None;
                    }
                    let Mode::Slave { unacked, .. } =
                        std::mem::replace(&mut entry.mode, Mode::Direct)
                    else {
                        unreachable!()
                    };
                    info!(%domain, unacked = unacked.len(), "slave lost: delivering directly");
                    entry.direct_until = self.released;
                    let owed: Vec<Action> = unacked.into_iter().flat_map(|(_, a)| a).collect();
                    if !owed.is_empty() {
                        effects.push(Effect::Direct(owed));
                    }
                }
                self.sync_tree(effects);
                None
            }
            PeerNews::Ack {
                session,
                seq: acked,
            } => {
                acknowledge(key, entry, session, acked);
                None
            }
            PeerNews::Relayed { child, frame, seal } => {
                let domain = self.sender_of(key, &child, &frame, &seal)?;
                match frame {
                    ChildFrame::Ack(seq) => self.relayed_ack(&domain, seq),
                    ChildFrame::Forward(stanza) => {
                        if Fanout::relayed_forward(&domain, &stanza, room) {
                            effects.push(Effect::Forward(stanza));
                        }
                    }
                    ChildFrame::Report {
                        parent,
                        refused,
                        have,
                    } => {
                        // Only a slave whose own stream is down speaks so.
                        if let Some(Mode::Detour { .. }) =
                            self.domains.get(&domain).map(|e| &e.mode)
                        {
                            self.move_off(&domain, &parent, refused, have, effects);
                        }
                    }
                }
                None
            }
            PeerNews::Links { links } => {
                self.links_reported(key, &links, effects);
                None
            }
            PeerNews::Report {
                session,
                parent,
                refused,
                have,
            } => {
                self.reported(key, session, &parent, refused, have, effects);
                None
            }
            PeerNews::Resync { session, have } => {
                let Mode::Slave { session: s, .. } = entry.mode else {
                    return None;
                };
                if s != session || entry.attaching == Some(session) {
                    return None;
                }
                debug!(%domain, have, "slave asks for a resync");
                // It applied (and delivered) everything up to `have`.
                acknowledge(key, entry, session, have);
                Some(self.attach(key, session, Some(have).filter(|&h| h > 0), room, seq))
            }
        }
    }

    /// Whether each slave domain still has occupants; a domain without any
    /// for the grace period loses its slave.
    pub fn occupancy(&mut self, room: &Room, now: Instant) -> Vec<Release> {
        let mut ended = Vec::new();
        for (domain, entry) in &mut self.domains {
            if has_occupant_from(room, domain) {
                entry.ends_at = None;
                continue;
            }
            let ends_at = *entry.ends_at.get_or_insert(now + self.grace);
            if now < ends_at {
                continue;
            }
            let owes = matches!(&entry.mode, Mode::Slave { unacked, .. } if !unacked.is_empty());
            if owes || entry.attaching.is_some() {
                // Not while it may still be delivering: look again soon.
                entry.ends_at = Some(now + RECHECK);
            } else {
                ended.push(domain.clone());
            }
        }
        ended
            .into_iter()
            .map(|domain| {
                let entry = self.domains.remove(&domain).expect("listed");
                Release::Destroy {
                    domain,
                    peer: entry.peer,
                }
            })
            .collect()
    }

    /// When [`Self::occupancy`] should look again.
    pub fn next_check(&self) -> Option<Instant> {
        let detours = self.domains.values().filter_map(|d| match d.mode {
            Mode::Detour {
                waiting: Some(since),
                ..
            } => Some(since + DETOUR_PATIENCE),
            _ => None,
        });
        let replan = self.spanning.as_ref().and_then(|sp| {
            let on_detour = self
                .domains
                .values()
                .any(|e| matches!(e.mode, Mode::Detour { .. }));
            sp.next_replan(on_detour)
        });
        self.domains
            .values()
            .filter_map(|d| d.ends_at)
            .chain(detours)
            .chain(replan)
            .min()
    }

    /// Replans the tree if the links drifted and the last replan is
    /// [`REPLAN_EVERY`] ago (see [`Self::next_check`]); tells the slaves
    /// that moved.
    pub fn replan_due(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let detours = self
            .domains
            .values()
            .any(|e| matches!(e.mode, Mode::Detour { .. }));
        let Some(sp) = &mut self.spanning else {
            return effects;
        };
        if let Some(moves) = sp.replan_if_due(now, detours) {
            info!(room = %self.room, moves, "tree: link health drifted, replanned");
            self.sync_tree(&mut effects);
        }
        effects
    }

    /// A peerhost's news of its links to other peerhosts: those to the
    /// room's other slave domains go into the tree's health (the peerhost
    /// is one end of each; see [`Health::reported`]), and the tree
    /// replans if they drifted enough.
    fn links_reported(
        &mut self,
        domain: &str,
        links: &[(BareJid, Measured)],
        effects: &mut Vec<Effect>,
    ) {
        let Some(sp) = &mut self.spanning else { return };
        let by = NodeId::peer(domain);
        let mut taken = 0;
        for (peer, measured) in links {
            let others = self
                .domains
                .iter()
                .filter(|(d, e)| d.as_str() != domain && e.peer.target.jid == *peer)
                .map(|(d, _)| NodeId::peer(d));
            for other in others {
                if sp.health.reported(&by, &by, &other, *measured) {
                    taken += 1;
                    debug!(%domain, to = %other, rtt_ms = measured.rtt_ms, loss_permille = measured.loss_permille, reachable = measured.reachable, "tree: link health");
                }
            }
        }
        if taken > 0 {
            self.sync_tree(effects);
        }
    }

    /// Slaves reached through the tree that have acknowledged nothing they
    /// owe for [`DETOUR_PATIENCE`]: the master delivers to their domains
    /// itself, as for a slave that is lost.
    pub fn detours(&mut self, now: Instant) -> Vec<Effect> {
        let expired: Vec<String> = self
            .domains
            .iter()
            .filter(|(_, e)| {
                matches!(e.mode, Mode::Detour { waiting: Some(since), .. } if now >= since + DETOUR_PATIENCE)
            })
            .map(|(d, _)| d.clone())
            .collect();
        let mut effects = Vec::new();
        for domain in &expired {
            self.end_detour(
                domain,
                "no news of the slave through its parent",
                &mut effects,
            );
        }
        if !expired.is_empty() {
            self.sync_tree(&mut effects);
        }
        effects
    }

    /// `domain`'s slave, on a detour, is not reached through its parent
    /// (`why`): if its users can only be reached through it (it
    /// intercepts), they wait: it splits, and its slave catches up when it
    /// is back; else the master delivers to them itself, from what the
    /// slave did not acknowledge on. Whether it was on a detour.
    fn end_detour(&mut self, domain: &str, why: &str, effects: &mut Vec<Effect>) -> bool {
        let Some(entry) = self.domains.get_mut(domain) else {
            return false;
        };
        if !matches!(entry.mode, Mode::Detour { .. }) {
            return false;
        }
        if entry.peer.intercepts() {
            let Mode::Detour { acked, .. } = std::mem::replace(&mut entry.mode, Mode::Cut) else {
                unreachable!("checked")
            };
            info!(%domain, acked, "tree: {why}; split: the slave's events wait for it");
            entry.direct_until = acked;
            return true;
        }
        let Mode::Detour { unacked, .. } = std::mem::replace(&mut entry.mode, Mode::Direct) else {
            unreachable!("checked")
        };
        info!(%domain, unacked = unacked.len(), "tree: {why}: delivering directly");
        entry.direct_until = self.released;
        let owed: Vec<Action> = unacked.into_iter().flat_map(|(_, a)| a).collect();
        if !owed.is_empty() {
            effects.push(Effect::Direct(owed));
        }
        true
    }

    /// `domain`'s stream is down: if the room runs a tree in which another
    /// slave can reach it, it stays a slave there (a detour) and the
    /// master delivers nothing directly.
    fn detour(&mut self, domain: &str) -> bool {
        let Some(sp) = &mut self.spanning else {
            return false;
        };
        let node = NodeId::peer(domain);
        let others = self.domains.iter().any(|(d, e)| {
            d != domain
                && matches!(e.mode, Mode::Slave { .. })
                && sp.tree.contains(&NodeId::peer(d))
        });
        if !others || !sp.tree.contains(&node) {
            return false;
        }
        let parent = sp.tree.parent(&node).cloned().unwrap_or(NodeId::Master);
        let report = Report {
            node: node.clone(),
            unusable: NodeId::Master,
            why: Why::Unreachable,
        };
        if parent.is_master() {
            sp.tree.report(&report, &mut sp.health);
        } else {
            // It still has its parent: only its own link to us is broken.
            sp.health.broken(&node, &NodeId::Master);
        }
        let parent = sp.tree.parent(&node).cloned().unwrap_or(NodeId::Master);
        if parent.is_master() {
            return false;
        }
        let entry = self.domains.get_mut(domain).expect("known domain");
        let Mode::Slave { unacked, acked, .. } = std::mem::replace(&mut entry.mode, Mode::Direct)
        else {
            unreachable!("a slave")
        };
        info!(%domain, %parent, acked, unacked = unacked.len(), "tree: stream down, the slave is reached through its parent");
        entry.mode = Mode::Detour {
            waiting: (!unacked.is_empty()).then(Instant::now),
            unacked,
            acked,
        };
        true
    }

    /// The domain of `child`, whose `frame` `relay`'s slave carried up
    /// (its parent, most often; any peerhost of the tree for its report
    /// that it cannot use its parent; the child itself, on its new stream,
    /// for what no parent carried up), if it is taken: the child sealed it
    /// with its own key, and it was not taken before. So a peerhost can
    /// drop a child's frames, never make, alter or replay them. Reports,
    /// which may go another way than the rest, are counted apart.
    fn sender_of(
        &mut self,
        relay: &str,
        child: &BareJid,
        frame: &ChildFrame,
        seal: &Seal,
    ) -> Option<String> {
        let sp = self.spanning.as_mut()?;
        let Some(domain) = self
            .domains
            .iter()
            .find(|(_, e)| e.peer.target.jid == *child)
            .map(|(d, _)| d.clone())
        else {
            debug!(%child, "relayed frame of a peerhost without a slave");
            return None;
        };
        if let Err(e) = sp.setup.report_keys.check(child.as_str(), &seal.sealed()) {
            warn!(%child, %relay, error = %e, "relayed frame rejected: not sealed by the child");
            return None;
        }
        let report = matches!(frame, ChildFrame::Report { .. });
        let seen = sp.sealed.entry((domain.clone(), report)).or_default();
        if !seen.first_time(seal.counter) {
            warn!(%child, %relay, counter = seal.counter, "relayed frame rejected: replayed");
            return None;
        }
        Some(domain)
    }

    /// `domain`'s acknowledgement of `seq`, carried up by its parent.
    fn relayed_ack(&mut self, domain: &str, seq: u64) {
        let Some(entry) = self.domains.get_mut(domain) else {
            return;
        };
        match &mut entry.mode {
            Mode::Detour {
                unacked,
                acked,
                waiting,
            } => {
                *acked = (*acked).max(seq);
                let before = unacked.len();
                while unacked.front().is_some_and(|(s, _)| *s <= seq) {
                    unacked.pop_front();
                }
                if unacked.is_empty() {
                    *waiting = None;
                } else if unacked.len() < before {
                    *waiting = Some(Instant::now());
                }
            }
            Mode::Slave { session, .. } => {
                let session = *session;
                acknowledge(domain, entry, session, seq);
            }
            _ => {}
        }
    }

    /// Whether a stanza one of `domain`'s users sent, carried up by its
    /// parent, is taken: it is to this room and from a user of that
    /// domain (the checks the child's own `Forward` gets).
    fn relayed_forward(domain: &str, stanza: &minidom::Element, room: &Room) -> bool {
        let jid_of = |attr: &str| stanza.attr(attr).and_then(|j| j.parse::<jid::Jid>().ok());
        let from_child = jid_of("from").is_some_and(|j| j.domain().as_str() == domain);
        let to_room = jid_of("to").is_some_and(|j| j.to_bare() == *room.jid());
        if !(from_child && to_room) {
            warn!(
                %domain,
                from = ?stanza.attr("from"),
                to = ?stanza.attr("to"),
                "relayed forward rejected: not from the child's domain to this room"
            );
        }
        from_child && to_room
    }

    /// `domain`'s slave says, on its own `session`, that it cannot use
    /// `parent`: it gets another (the master, most often). A slave speaks
    /// only for itself: it can move itself, and mark broken only a link
    /// of its own.
    fn reported(
        &mut self,
        domain: &str,
        session: u64,
        parent: &BareJid,
        refused: bool,
        have: u64,
        effects: &mut Vec<Effect>,
    ) {
        let on_stream = self
            .domains
            .get(domain)
            .is_some_and(|e| matches!(e.mode, Mode::Slave { session: s, .. } if s == session));
        if !on_stream {
            return debug!(%domain, %parent, "tree: report ignored (not a slave on its stream)");
        }
        self.move_off(domain, parent, refused, have, effects);
    }

    /// `domain`'s slave cannot use `parent`: it gets another.
    fn move_off(
        &mut self,
        domain: &str,
        parent: &BareJid,
        refused: bool,
        have: u64,
        effects: &mut Vec<Effect>,
    ) {
        let unusable = self
            .domains
            .iter()
            .find(|(_, e)| e.peer.target.jid == *parent)
            .map(|(d, _)| NodeId::peer(d));
        let (Some(unusable), Some(sp)) = (unusable, &mut self.spanning) else {
            return debug!(%domain, %parent, "tree: report ignored (no such parent)");
        };
        let report = Report {
            node: NodeId::peer(domain),
            unusable,
            why: if refused {
                Why::Refused
            } else {
                Why::Unreachable
            },
        };
        let moves = sp.tree.report(&report, &mut sp.health);
        info!(%domain, %parent, refused, have, moves = moves.len(), "tree: a slave cannot use its parent");
        self.sync_tree(effects);
    }

    /// `domain`'s own stream is back: its link to the master works, and the
    /// tree may return to its preferred shape.
    fn heal_tree(&mut self, domain: &str) {
        let Some(sp) = &mut self.spanning else { return };
        let node = NodeId::peer(domain);
        if sp.health.link(&node, &NodeId::Master).broken {
            sp.health.healed(&node, &NodeId::Master);
            let moves = sp.tree.replan(&sp.health);
            info!(%domain, moves = moves.len(), "tree: link to the master healed, replanned");
        }
    }

    /// The room closes: every slave goes.
    pub fn close(&mut self) -> Vec<Release> {
        std::mem::take(&mut self.domains)
            .into_iter()
            .map(|(domain, entry)| Release::Destroy {
                domain,
                peer: entry.peer,
            })
            .collect()
    }

    /// What the peer tasks must forget when the room task ends.
    pub fn deregister(&mut self, directory: &Directory) -> Vec<Effect> {
        std::mem::take(&mut self.registered)
            .into_iter()
            .filter_map(|d| directory.get(&BareJid::new(&d).ok()?))
            .map(|peer| {
                let room = self.room.clone();
                Effect::Peer(peer, ToPeer::Deregister { room })
            })
            .collect()
    }

    /// Carries out a step whose turn has come.
    pub fn release(&mut self, step: Release) -> Vec<Effect> {
        let mut effects = Vec::new();
        match step {
            Release::Event { event, mut shares } => {
                self.released = event.seq;
                let fed: BTreeSet<String> = self
                    .domains
                    .keys()
                    .filter(|d| self.feeds(d))
                    .cloned()
                    .collect();
                // Only a slave with children relays: only its events are signed.
                let relays: BTreeSet<String> =
                    fed.iter().filter(|d| self.relays(d)).cloned().collect();
                let signer = self.spanning.as_ref().map(|s| s.setup.clone());
                let mut wire: Option<Arc<pb::Event>> = None;
                let mut signed: Option<Arc<pb::SignedEvent>> = None;
                for (domain, entry) in &mut self.domains {
                    let share = shares
                        .iter()
                        .position(|(d, _)| d == domain)
                        .map(|i| shares.swap_remove(i).1);
                    match &mut entry.mode {
                        Mode::Slave {
                            session, unacked, ..
                        } => {
                            let event =
                                wire.get_or_insert_with(|| Arc::new(pb::Event::from(&event)));
                            // In a tree, the slave's parent relays it.
                            if fed.contains(domain) {
                                let msg = match signer.as_ref().filter(|_| relays.contains(domain))
                                {
                                    Some(setup) => ToPeer::Signed {
                                        session: *session,
                                        event: signed
                                            .get_or_insert_with(|| {
                                                Arc::new(setup.signer.sign(event))
                                            })
                                            .clone(),
                                    },
                                    None => ToPeer::Event {
                                        session: *session,
                                        event: event.clone(),
                                    },
                                };
                                effects.push(Effect::Peer(entry.peer.clone(), msg));
                            }
                            if let Some(share) = share {
                                unacked.push_back((event.seq, share));
                            }
                        }
                        Mode::Direct => {
                            entry.direct_until = event.seq;
                            if let Some(share) = share {
                                effects.push(Effect::Direct(share));
                            }
                        }
                        // In the log, for the slave's resume.
                        Mode::Cut => {}
                        // Its parent relays it.
                        Mode::Detour {
                            unacked, waiting, ..
                        } => {
                            if let Some(share) = share {
                                unacked.push_back((event.seq, share));
                                waiting.get_or_insert_with(Instant::now);
                            }
                        }
                    }
                }
                // Shares of domains whose slave went meanwhile.
                for (_, share) in shares {
                    effects.push(Effect::Direct(share));
                }
            }
            Release::Attach {
                domain,
                session,
                start,
            } => {
                let signer = self
                    .spanning
                    .as_ref()
                    .filter(|_| self.relays(&domain))
                    .map(|s| s.setup.clone());
                let Some(entry) = self.domains.get_mut(&domain) else {
                    return effects;
                };
                if entry.attaching != Some(session) || entry.peer.state() != LinkState::Up(session)
                {
                    // The stream it was meant for has ended; the next `Up` attaches again.
                    return effects;
                }
                entry.attaching = None;
                let frame = match start {
                    Start::Create(start) => {
                        // The new slave delivers nothing up to its snapshot:
                        // what the old one did not acknowledge is ours.
                        if let Mode::Slave { unacked, .. } | Mode::Detour { unacked, .. } =
                            &mut entry.mode
                        {
                            let owed: Vec<Action> =
                                unacked.drain(..).flat_map(|(_, a)| a).collect();
                            if !owed.is_empty() {
                                effects.push(Effect::Direct(owed));
                            }
                        }
                        entry.direct_until = start.seq;
                        if let Some(sp) = &mut self.spanning {
                            // Its window may hold nothing its children
                            // lack (they may be behind the snapshot): as
                            // for a new parent, what they have not
                            // acknowledged follows, signed (`sync_tree`).
                            sp.told.remove(&domain);
                        }
                        info!(%domain, seq = start.seq, "creating slave");
                        master_frame::Frame::Create(pb::CreateSlave::from(start.as_ref()))
                    }
                    Start::Resume { have, events } => {
                        info!(%domain, have, events = events.len(), "resuming slave");
                        effects.push(Effect::Peer(
                            entry.peer.clone(),
                            ToPeer::Frame {
                                session,
                                frame: Box::new(master_frame::Frame::Resume(pb::Resume {
                                    room: self.room.to_string(),
                                    deliver_after: entry.direct_until,
                                })),
                            },
                        ));
                        for event in events {
                            let msg = match &signer {
                                Some(setup) => ToPeer::Signed {
                                    session,
                                    event: Arc::new(setup.signer.sign(&event)),
                                },
                                None => ToPeer::Event { session, event },
                            };
                            effects.push(Effect::Peer(entry.peer.clone(), msg));
                        }
                        match std::mem::replace(&mut entry.mode, Mode::Direct) {
                            Mode::Slave { unacked, acked, .. }
                            | Mode::Detour { unacked, acked, .. } => {
                                // Back on its own stream (a detour ends).
                                entry.mode = Mode::Slave {
                                    session,
                                    unacked,
                                    acked: acked.max(have),
                                };
                                acknowledge(&domain, entry, session, have);
                            }
                            _ => {
                                entry.mode = Mode::Slave {
                                    session,
                                    unacked: VecDeque::new(),
                                    acked: have,
                                };
                            }
                        }
                        self.heal_tree(&domain);
                        self.sync_tree(&mut effects);
                        return effects;
                    }
                };
                effects.push(Effect::Peer(
                    entry.peer.clone(),
                    ToPeer::Frame {
                        session,
                        frame: Box::new(frame),
                    },
                ));
                entry.mode = Mode::Slave {
                    session,
                    unacked: VecDeque::new(),
                    acked: entry.direct_until,
                };
                self.heal_tree(&domain);
                self.sync_tree(&mut effects);
            }
            Release::Destroy { domain, peer } => {
                info!(%domain, "destroying slave");
                if let LinkState::Up(session) = peer.state() {
                    effects.push(Effect::Peer(peer, self.destroy_frame(session)));
                }
                self.sync_tree(&mut effects);
            }
        }
        effects
    }

    fn destroy_frame(&self, session: u64) -> ToPeer {
        ToPeer::Frame {
            session,
            frame: Box::new(master_frame::Frame::Destroy(pb::DestroySlave {
                room: self.room.to_string(),
            })),
        }
    }
}

fn acknowledge(domain: &str, entry: &mut Domain, session: u64, seq: u64) {
    if let Mode::Slave {
        session: s,
        unacked,
        acked,
    } = &mut entry.mode
        && *s == session
    {
        *acked = (*acked).max(seq);
        let acked = *acked;
        let before = unacked.len();
        while unacked.front().is_some_and(|(seq, _)| *seq <= acked) {
            unacked.pop_front();
        }
        if before > 0 && unacked.is_empty() {
            // Nothing left that the master would deliver itself if the
            // peerhost died now (tests wait for this before killing it).
            debug!(domain, seq = acked, "slave acknowledged everything");
        }
    }
}

fn has_occupant_from(room: &Room, domain: &str) -> bool {
    room.sessions().any(|jid| jid.domain().as_str() == domain)
}

#[cfg(test)]
mod tests {
    use dmuc_room::testing::{join, relaxed_settings, say};
    use dmuc_room::{Payload, Timestamp};
    use tokio::sync::watch;

    use super::*;
    use crate::peering::PeerTarget;

    const GRACE: Duration = Duration::from_secs(30);

    /// A room task without I/O: a room with alice (a.test), a fanout, and
    /// b.test's peerhost up on session 1.
    struct Bed {
        room: Room,
        seq: u64,
        fanout: Fanout,
        directory: Directory,
        state: watch::Sender<LinkState>,
        _peer: mpsc::Receiver<ToPeer>,
    }

    impl Bed {
        fn new() -> Bed {
            let jid: BareJid = "r@conference.a.test".parse().unwrap();
            let (peer, rx, state) = PeerHandle::detached(PeerTarget {
                domain: "b.test".parse().unwrap(),
                jid: "muc-peer.b.test".parse().unwrap(),
                endpoint: Some("https://127.0.0.1:1".into()),
            });
            state.send_replace(LinkState::Up(1));
            let directory = Directory::default();
            directory.insert(peer);
            let (news, _) = mpsc::unbounded_channel();
            let mut bed = Bed {
                room: Room::new(jid.clone(), relaxed_settings()),
                seq: 0,
                fanout: Fanout::new(jid, GRACE, news),
                directory,
                state,
                _peer: rx,
            };
            bed.input(join("alice@a.test/1", "alice"));
            bed
        }

        /// What the room task does with one input, releasing at once:
        /// the actions the master delivers itself, and the effects.
        fn input(&mut self, input: Input) -> (Vec<Action>, Vec<Effect>) {
            let mut effects = Vec::new();
            let attach =
                self.fanout
                    .before(&input, &self.room, self.seq, &self.directory, &mut effects);
            self.seq += 1;
            let event = RoomEvent {
                room: self.room.jid().clone(),
                seq: self.seq,
                now: Timestamp(self.seq as i64),
                input: input.clone(),
            };
            let actions = self.room.handle(input, event.now);
            self.fanout.record(&event);
            let (direct, shares) = self.fanout.split(actions);
            for step in attach.into_iter().chain([Release::Event { event, shares }]) {
                effects.extend(self.fanout.release(step));
            }
            (direct, effects)
        }

        fn news(&mut self, news: PeerNews) -> Vec<Effect> {
            let mut effects = Vec::new();
            let domain: BareJid = "b.test".parse().unwrap();
            let step = self.fanout.on_news(
                &domain,
                news,
                &self.room,
                self.seq,
                &self.directory,
                &mut effects,
            );
            if let Some(step) = step {
                effects.extend(self.fanout.release(step));
            }
            effects
        }
    }

    fn recipients(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .flat_map(|a| match a {
                Action::Send { to, .. } => to.iter().map(|j| j.to_string()).collect(),
                _ => vec![],
            })
            .collect()
    }

    /// The effects, in short: "direct:<recipients>", "register",
    /// "create@<seq>", "resume>=<deliver_after>", "event<seq>", "destroy".
    fn summary(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Direct(actions) => format!("direct:{}", recipients(actions).join(",")),
                Effect::Peer(_, ToPeer::Register { .. }) => "register".into(),
                Effect::Peer(_, ToPeer::Deregister { .. }) => "deregister".into(),
                Effect::Peer(_, ToPeer::Event { event, .. }) => format!("event{}", event.seq),
                Effect::Peer(_, ToPeer::Signed { event, .. }) => format!(
                    "signed{}",
                    dmuc_protocol::signing::decode(event).map_or(0, |e| e.seq)
                ),
                Effect::Peer(_, ToPeer::Frame { frame, .. }) => match frame.as_ref() {
                    master_frame::Frame::Create(c) => format!("create@{}", c.seq),
                    master_frame::Frame::Resume(r) => format!("resume>={}", r.deliver_after),
                    master_frame::Frame::Destroy(_) => "destroy".into(),
                    other => format!("{other:?}"),
                },
                Effect::Peer(_, ToPeer::Merged(m)) => format!("merged<{}", m.next_index),
                Effect::Forward(_) => "forward".into(),
            })
            .collect()
    }

    #[test]
    fn the_first_joiner_of_a_domain_is_served_by_a_new_slave() {
        let mut bed = Bed::new();
        let (direct, effects) = bed.input(join("bob@b.test/1", "bob"));
        // A slave from the state before the join, which then serves it.
        assert_eq!(summary(&effects), ["register", "create@1", "event2"]);
        assert_eq!(recipients(&direct), ["alice@a.test/1"]);
        // A second b.test joiner: one event, no snapshot.
        let (_, effects) = bed.input(join("bea@b.test/1", "bea"));
        assert_eq!(summary(&effects), ["event3"]);
        // Other domains are still served directly.
        let (direct, effects) = bed.input(join("carol@c.test/1", "carol"));
        assert_eq!(summary(&effects), ["event4"]);
        let direct = recipients(&direct);
        assert!(direct.contains(&"alice@a.test/1".to_owned()));
        assert!(direct.contains(&"carol@c.test/1".to_owned()));
        assert!(direct.iter().all(|to| !to.contains("b.test")), "{direct:?}");
    }

    #[test]
    fn what_a_lost_slave_did_not_acknowledge_is_delivered_directly() {
        let mut bed = Bed::new();
        bed.input(join("bob@b.test/1", "bob"));
        bed.input(say("alice@a.test/1", "hi"));
        assert!(bed.news(PeerNews::Ack { session: 1, seq: 2 }).is_empty());
        bed.state.send_replace(LinkState::Down);
        let effects = bed.news(PeerNews::Down { session: 1 });
        // Event 3 (alice's message) was not acknowledged: bob gets it from us.
        assert_eq!(summary(&effects), ["direct:bob@b.test/1"]);
        let (_, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert_eq!(summary(&effects), ["direct:bob@b.test/1"]);
    }

    #[test]
    fn a_returning_peerhost_resumes_from_what_it_kept() {
        let mut bed = Bed::new();
        bed.input(join("bob@b.test/1", "bob"));
        bed.input(say("alice@a.test/1", "hi"));
        bed.news(PeerNews::Ack { session: 1, seq: 3 });
        bed.state.send_replace(LinkState::Down);
        bed.news(PeerNews::Down { session: 1 });
        bed.input(say("alice@a.test/1", "hi"));
        bed.input(say("alice@a.test/1", "hi"));
        bed.state.send_replace(LinkState::Up(2));
        let effects = bed.news(PeerNews::Up {
            session: 2,
            resume_from: Some(3),
        });
        // The events it missed, applied silently: we delivered them.
        assert_eq!(summary(&effects), ["resume>=5", "event4", "event5"]);
        let (direct, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert_eq!(summary(&effects), ["event6"]);
        assert!(!recipients(&direct).contains(&"bob@b.test/1".to_owned()));
    }

    #[test]
    fn an_intercepting_domain_waits_for_its_slave_through_a_split() {
        let mut bed = Bed::new();
        bed.directory
            .get(&"b.test".parse().unwrap())
            .unwrap()
            .set_intercepts(true);
        bed.input(join("bob@b.test/1", "bob"));
        bed.news(PeerNews::Ack { session: 1, seq: 2 });
        bed.input(say("alice@a.test/1", "hi"));
        bed.state.send_replace(LinkState::Down);
        // Its users cannot be reached but through it: nothing direct.
        assert!(bed.news(PeerNews::Down { session: 1 }).is_empty());
        let (direct, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert!(effects.is_empty());
        assert_eq!(recipients(&direct), ["alice@a.test/1"]);
        // Back: it delivers everything after what it acknowledged.
        bed.state.send_replace(LinkState::Up(2));
        let effects = bed.news(PeerNews::Up {
            session: 2,
            resume_from: Some(2),
        });
        assert_eq!(summary(&effects), ["resume>=2", "event3", "event4"]);
    }

    #[test]
    fn a_slave_that_cannot_resume_gets_a_snapshot() {
        let mut bed = Bed::new();
        bed.input(join("bob@b.test/1", "bob"));
        bed.input(say("alice@a.test/1", "hi"));
        bed.news(PeerNews::Ack { session: 1, seq: 2 });
        // It lost its state before event 3, which it never delivered: ours now.
        let effects = bed.news(PeerNews::Resync {
            session: 1,
            have: 0,
        });
        assert_eq!(summary(&effects), ["direct:bob@b.test/1", "create@3"]);
        // A gap after event 2: the rest follows, its state is good.
        bed.input(say("alice@a.test/1", "hi"));
        let effects = bed.news(PeerNews::Resync {
            session: 1,
            have: 3,
        });
        assert_eq!(summary(&effects), ["resume>=3", "event4"]);
    }

    /// The bed with c.test's peerhost too, up on session 1, and the room
    /// running a tree without a fan-out limit (a star).
    fn tree_bed() -> (Bed, watch::Sender<LinkState>, mpsc::Receiver<ToPeer>) {
        let mut bed = Bed::new();
        let (state, rx) = add_peer(&mut bed, "c.test", 2);
        let metrics = dmuc_component::metrics::Metrics::new();
        let setup = TreeSetup {
            max_fanout: usize::MAX,
            signer: dmuc_protocol::signing::Signer::generate(),
            report_keys: dmuc_protocol::signing::ReportKeys::generate(),
            metrics,
        };
        let fanout = std::mem::replace(
            &mut bed.fanout,
            Fanout::new(bed.room.jid().clone(), GRACE, mpsc::unbounded_channel().0),
        );
        bed.fanout = fanout.with_tree(Some(Arc::new(setup)));
        (bed, state, rx)
    }

    /// `domain`'s peerhost (at 127.0.0.1:`port`), up on session 1.
    fn add_peer(
        bed: &mut Bed,
        domain: &str,
        port: u16,
    ) -> (watch::Sender<LinkState>, mpsc::Receiver<ToPeer>) {
        let (peer, rx, state) = PeerHandle::detached(PeerTarget {
            domain: domain.parse().unwrap(),
            jid: format!("muc-peer.{domain}").parse().unwrap(),
            endpoint: Some(format!("https://127.0.0.1:{port}")),
        });
        state.send_replace(LinkState::Up(1));
        bed.directory.insert(peer);
        (state, rx)
    }

    /// Once the master's patience with a detour is over, what c.test's
    /// slave did not acknowledge goes to carol directly.
    fn assert_owed_goes_direct(bed: &mut Bed) {
        let effects = bed.fanout.detours(Instant::now() + DETOUR_PATIENCE * 2);
        assert_eq!(summary(&effects)[0], "direct:carol@c.test/1");
    }

    /// The one move: b.test (under the master) is told to take c.test.
    fn assert_b_takes_c(effects: &[Effect]) {
        let b_takes_c = (
            "b.test".into(),
            String::new(),
            vec!["muc-peer.c.test".into()],
        );
        assert_eq!(assigns(effects), [b_takes_c]);
    }

    fn bob_and_carol_join(bed: &mut Bed) {
        bed.input(join("bob@b.test/1", "bob"));
        bed.input(join("carol@c.test/1", "carol"));
    }

    /// c.test's stream (session 1) goes down.
    fn c_goes_down(bed: &mut Bed, c_state: &watch::Sender<LinkState>) -> Vec<Effect> {
        c_state.send_replace(LinkState::Down);
        news_of(bed, "c.test", PeerNews::Down { session: 1 })
    }

    fn news_of(bed: &mut Bed, domain: &str, news: PeerNews) -> Vec<Effect> {
        let mut effects = Vec::new();
        let step = bed.fanout.on_news(
            &domain.parse().unwrap(),
            news,
            &bed.room,
            bed.seq,
            &bed.directory,
            &mut effects,
        );
        if let Some(step) = step {
            effects.extend(bed.fanout.release(step));
        }
        effects
    }

    /// `child`'s `frame`, as its peerhost seals it with `counter` (and
    /// `key`: the key the master gave it, or another) for its parent to
    /// carry up.
    fn sealed_with(key: &[u8], child: &str, counter: u64, frame: ChildFrame) -> PeerNews {
        use prost::Message;
        let encoded = pb::PeerFrame {
            frame: Some(match &frame {
                ChildFrame::Ack(seq) => pb::peer_frame::Frame::Ack(pb::Ack {
                    room: "r@conference.a.test".into(),
                    seq: *seq,
                }),
                ChildFrame::Forward(stanza) => pb::peer_frame::Frame::Forward(pb::Forward {
                    stanza: String::from(&**stanza),
                }),
                ChildFrame::Report {
                    parent,
                    refused,
                    have,
                } => pb::peer_frame::Frame::Report(pb::TreeReport {
                    room: "r@conference.a.test".into(),
                    parent_jid: parent.to_string(),
                    why: if *refused {
                        pb::Unusable::Refused
                    } else {
                        pb::Unusable::Unreachable
                    } as i32,
                    have: *have,
                }),
            }),
        }
        .encode_to_vec();
        let key = dmuc_protocol::signing::ReportKey::new(key).unwrap();
        PeerNews::Relayed {
            child: child.parse().unwrap(),
            frame,
            seal: Seal {
                mac: key.seal(counter, &encoded),
                frame: encoded,
                counter,
            },
        }
    }

    /// The key the master gives `peer` (in its `Assign`).
    fn report_key(bed: &Bed, peer: &str) -> Vec<u8> {
        let sp = bed.fanout.spanning.as_ref().unwrap();
        sp.setup.report_keys.for_peer(peer)
    }

    /// `child`'s `frame`, sealed as its peerhost does.
    fn sealed(bed: &Bed, child: &str, counter: u64, frame: ChildFrame) -> PeerNews {
        sealed_with(&report_key(bed, child), child, counter, frame)
    }

    fn assigns(effects: &[Effect]) -> Vec<(String, String, Vec<String>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Peer(peer, ToPeer::Frame { frame, .. }) => match frame.as_ref() {
                    master_frame::Frame::Assign(a) => Some((
                        peer.target.domain.to_string(),
                        a.parent_jid.clone(),
                        a.children.clone(),
                    )),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn links(peer: &str, rtt_ms: u32, reachable: bool) -> PeerNews {
        PeerNews::Links {
            links: vec![(
                peer.parse().unwrap(),
                Measured {
                    rtt_ms,
                    loss_permille: 0,
                    reachable,
                },
            )],
        }
    }

    /// Parents preferred by measured link health (issue 5): c.test is far
    /// from the master; b.test measures a fast link to it: the room
    /// replans (at most every `REPLAN_EVERY`) and c.test goes under
    /// b.test; when c.test finds that link slow, it goes back.
    #[test]
    fn a_fast_link_between_peerhosts_draws_a_slave_under_the_other_and_back() {
        let (mut bed, _c_state, _c) = tree_bed();
        let peer = |bed: &Bed, d: &str| bed.directory.get(&d.parse().unwrap()).unwrap();
        peer(&bed, "b.test").set_rtt_ms(10);
        peer(&bed, "c.test").set_rtt_ms(120);
        bed.input(join("bob@b.test/1", "bob"));
        let (_, effects) = bed.input(join("carol@c.test/1", "carol"));
        assert!(
            assigns(&effects)
                .iter()
                .all(|(_, parent, _)| parent.is_empty())
        );
        let health = |bed: &Bed| bed.fanout.spanning.as_ref().unwrap().health.clone();
        let (b, c) = (NodeId::peer("b.test"), NodeId::peer("c.test"));

        // What b.test says of links it is no end of, or of peerhosts not
        // in the room, is not taken.
        for peer in ["muc-peer.b.test", "conference.a.test", "muc-peer.z.test"] {
            assert!(news_of(&mut bed, "b.test", links(peer, 1, true)).is_empty());
        }
        assert_eq!(health(&bed).link(&b, &c), crate::tree::Link::default());
        assert_eq!(health(&bed).link(&b, &NodeId::Master).rtt_ms, 10);

        // The room replanned for the master's links a moment ago: the
        // next replan waits.
        let effects = news_of(&mut bed, "b.test", links("muc-peer.c.test", 5, true));
        assert_eq!(health(&bed).link(&b, &c).rtt_ms, 5);
        assert!(assigns(&effects).is_empty());
        let due = bed.fanout.next_check().expect("a replan is due");
        assert!(due <= Instant::now() + REPLAN_EVERY);
        let effects = bed.fanout.replan_due(due);
        let mut moved = assigns(&effects);
        moved.sort();
        assert_eq!(
            moved,
            [
                (
                    "b.test".into(),
                    String::new(),
                    vec!["muc-peer.c.test".into()]
                ),
                ("c.test".into(), "muc-peer.b.test".into(), vec![]),
            ]
        );
        assert!(bed.fanout.next_check().is_none(), "nothing drifted since");

        // c.test finds the link slow: the worse end counts.
        news_of(&mut bed, "c.test", links("muc-peer.b.test", 300, true));
        assert_eq!(health(&bed).link(&b, &c).rtt_ms, 300);
        let due = bed.fanout.next_check().expect("a replan is due");
        assert!(
            bed.fanout
                .replan_due(due - Duration::from_secs(1))
                .is_empty()
        );
        let mut moved = assigns(&bed.fanout.replan_due(due));
        moved.sort();
        assert_eq!(
            moved,
            [
                ("b.test".into(), String::new(), vec![]),
                ("c.test".into(), String::new(), vec![]),
            ]
        );
    }

    #[test]
    fn a_slave_cut_off_from_the_master_is_reached_through_another() {
        let (mut bed, c_state, _c) = tree_bed();
        bed.input(join("bob@b.test/1", "bob"));
        let (_, effects) = bed.input(join("carol@c.test/1", "carol"));
        // A star: both under the master, each may fall back on the other.
        assert!(
            assigns(&effects)
                .iter()
                .all(|(_, parent, children)| parent.is_empty() && children.is_empty())
        );
        news_of(&mut bed, "c.test", PeerNews::Ack { session: 1, seq: 3 });
        // In the star, nothing is signed: nobody relays.
        let (_, effects) = bed.input(say("alice@a.test/1", "before"));
        assert_eq!(summary(&effects), ["event4", "event4"]);
        let effects = c_goes_down(&mut bed, &c_state);
        // Nothing direct; b.test is told to take c.test as its child, and
        // gets signed what c.test did not acknowledge, to relay it.
        assert_b_takes_c(&effects);
        assert_eq!(summary(&effects)[1..], ["signed4"]);
        // Operators see it: two levels, one reparent, in the room's series.
        let metrics = bed.fanout.spanning.as_ref().unwrap().setup.metrics.render();
        for series in [
            "dmuc_tree_depth{room=\"r@conference.a.test\"} 2",
            "dmuc_tree_fanout{room=\"r@conference.a.test\"} 1",
            "dmuc_reparents_total{room=\"r@conference.a.test\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == series), "{series}:\n{metrics}");
        }
        // Alice speaks: the master sends it to b.test only, nothing direct.
        let (direct, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert_eq!(summary(&effects), ["signed5"]);
        assert_eq!(recipients(&direct), ["alice@a.test/1"]);
        // c.test acknowledges through b.test: nothing is owed, even later.
        let ack = sealed(&bed, "muc-peer.c.test", 1, ChildFrame::Ack(5));
        news_of(&mut bed, "b.test", ack);
        assert!(
            bed.fanout
                .detours(Instant::now() + DETOUR_PATIENCE * 2)
                .is_empty()
        );
        // What c.test does not acknowledge in time is delivered directly.
        bed.input(say("alice@a.test/1", "again"));
        assert_owed_goes_direct(&mut bed);
    }

    #[test]
    fn an_intercepting_slave_cut_off_goes_on_through_another_and_splits_without_news() {
        let (mut bed, c_state, _c) = tree_bed();
        bed.directory
            .get(&"c.test".parse().unwrap())
            .unwrap()
            .set_intercepts(true);
        bob_and_carol_join(&mut bed);
        news_of(&mut bed, "c.test", PeerNews::Ack { session: 1, seq: 3 });
        let effects = c_goes_down(&mut bed, &c_state);
        // A detour, as for any slave: b.test is its parent.
        assert_b_takes_c(&effects);
        bed.input(say("alice@a.test/1", "hi"));
        // No news in time: its users cannot be reached but through it, so
        // nothing goes direct; it catches up when it is back.
        let effects = bed.fanout.detours(Instant::now() + DETOUR_PATIENCE * 2);
        assert!(
            summary(&effects).iter().all(|s| !s.starts_with("direct:")),
            "{:?}",
            summary(&effects)
        );
        c_state.send_replace(LinkState::Up(2));
        let effects = news_of(
            &mut bed,
            "c.test",
            PeerNews::Up {
                session: 2,
                resume_from: Some(3),
            },
        );
        assert_eq!(summary(&effects)[..2], ["resume>=3", "event4"]);
    }

    #[test]
    fn a_stanza_carried_up_is_taken_once_if_sealed_by_the_child_for_its_users() {
        let (mut bed, c_state, _c) = tree_bed();
        bob_and_carol_join(&mut bed);
        let stanza = |from: &str, to: &str| {
            ChildFrame::Forward(Box::new(
                format!(
                    "<message xmlns='jabber:client' type='groupchat' from='{from}' to='{to}'><body>hi</body></message>"
                )
                .parse()
                .unwrap(),
            ))
        };
        let carols = stanza("carol@c.test/1", "r@conference.a.test");
        let forwarded = |effects: &[Effect]| {
            effects
                .iter()
                .filter(|e| matches!(e, Effect::Forward(_)))
                .count()
        };
        c_goes_down(&mut bed, &c_state);
        // b.test is its parent now: what carol sent to the room is taken.
        let good = sealed(&bed, "muc-peer.c.test", 5, carols.clone());
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", good.clone())), 1);
        // Once only: b.test cannot replay it.
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", good)), 0);
        // One sealed before, on a slower way: taken once too.
        let slower = sealed(&bed, "muc-peer.c.test", 4, carols.clone());
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", slower.clone())), 1);
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", slower)), 0);
        // b.test cannot make one up: it does not have c.test's key (its
        // own, or none, will not do).
        let b_key = report_key(&bed, "muc-peer.b.test");
        let made_up = sealed_with(&b_key, "muc-peer.c.test", 9, carols.clone());
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", made_up)), 0);
        let unsealed = sealed_with(&[0; 32], "muc-peer.c.test", 10, carols.clone());
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", unsealed)), 0);
        // Sealed by c.test, but not from a user of its domain, or not to
        // this room.
        let bobs = stanza("bob@b.test/1", "r@conference.a.test");
        let bobs = sealed(&bed, "muc-peer.c.test", 11, bobs);
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", bobs)), 0);
        let elsewhere = stanza("carol@c.test/1", "s@conference.a.test");
        let elsewhere = sealed(&bed, "muc-peer.c.test", 12, elsewhere);
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", elsewhere)), 0);
        // c.test's stream comes back. It sends up, sealed, what it does not
        // know b.test carried: each is taken once, whichever way came first.
        let carried = sealed(&bed, "muc-peer.c.test", 16, carols.clone());
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", carried.clone())), 1);
        c_state.send_replace(LinkState::Up(2));
        let up = PeerNews::Up {
            session: 2,
            resume_from: Some(3),
        };
        news_of(&mut bed, "c.test", up);
        assert_eq!(forwarded(&news_of(&mut bed, "c.test", carried)), 0);
        let unsent = sealed(&bed, "muc-peer.c.test", 17, carols);
        assert_eq!(forwarded(&news_of(&mut bed, "c.test", unsent.clone())), 1);
        assert_eq!(forwarded(&news_of(&mut bed, "c.test", unsent.clone())), 0);
        assert_eq!(forwarded(&news_of(&mut bed, "b.test", unsent)), 0);
    }

    #[test]
    fn an_orphan_that_cannot_reach_its_parent_is_moved_on_a_report_through_another() {
        let (mut bed, c_state, _c) = tree_bed();
        let (_d_state, _d) = add_peer(&mut bed, "d.test", 3);
        bob_and_carol_join(&mut bed);
        bed.input(join("dave@d.test/1", "dave"));
        let report = |key: &[u8], counter| {
            let frame = ChildFrame::Report {
                parent: "muc-peer.b.test".parse().unwrap(),
                refused: false,
                have: 3,
            };
            sealed_with(key, "muc-peer.c.test", counter, frame)
        };
        let c_key = report_key(&bed, "muc-peer.c.test");
        // On its own stream, c.test would say so there: ignored.
        assert_eq!(assigns(&news_of(&mut bed, "d.test", report(&c_key, 1))), []);
        let effects = c_goes_down(&mut bed, &c_state);
        let parent_of_c = |effects: &[Effect]| {
            assigns(effects)
                .into_iter()
                .find(|(_, _, children)| children.contains(&"muc-peer.c.test".to_owned()))
                .map(|(domain, _, _)| domain)
        };
        assert_eq!(parent_of_c(&effects).as_deref(), Some("b.test"));
        // d.test (not its parent) carries up what b.test made up: ignored.
        let b_key = report_key(&bed, "muc-peer.b.test");
        assert_eq!(assigns(&news_of(&mut bed, "d.test", report(&b_key, 2))), []);
        // c.test's own report, through d.test: it goes under d.test.
        let effects = news_of(&mut bed, "d.test", report(&c_key, 3));
        assert_eq!(parent_of_c(&effects).as_deref(), Some("d.test"));
        // Replayed, it moves nothing.
        assert_eq!(assigns(&news_of(&mut bed, "b.test", report(&c_key, 3))), []);
    }

    #[test]
    fn a_sealed_counter_is_taken_once_in_any_order_until_it_is_too_old() {
        let mut seen = Seen::default();
        assert!(seen.first_time(10));
        assert!(!seen.first_time(10));
        assert!(seen.first_time(7), "an older one, not seen");
        assert!(!seen.first_time(7));
        for counter in 100..100 + SEEN as u64 {
            assert!(seen.first_time(counter));
        }
        // The oldest are forgotten, and refused from then on.
        assert!(!seen.first_time(7));
        assert!(!seen.first_time(8), "below the oldest remembered");
        assert!(!seen.first_time(100));
        assert!(seen.first_time(100 + SEEN as u64));
    }

    #[test]
    fn a_peerhost_not_running_is_not_waited_for() {
        let (mut bed, c_state, _c) = tree_bed();
        bob_and_carol_join(&mut bed);
        news_of(&mut bed, "c.test", PeerNews::Ack { session: 1, seq: 3 });
        c_goes_down(&mut bed, &c_state);
        let (_, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert_eq!(summary(&effects), ["signed4"], "through b.test");
        // The master's next dial is refused: nothing listens there, so no
        // parent is reaching its slave either. Carol gets it now, and what
        // follows, without the wait for news.
        let effects = news_of(&mut bed, "c.test", PeerNews::NotRunning { session: 1 });
        assert_eq!(summary(&effects)[0], "direct:carol@c.test/1");
        let (_, effects) = bed.input(say("alice@a.test/1", "again"));
        assert!(
            summary(&effects).contains(&"direct:carol@c.test/1".to_owned()),
            "{:?}",
            summary(&effects)
        );
        assert!(
            bed.fanout
                .detours(Instant::now() + DETOUR_PATIENCE * 2)
                .is_empty()
        );
    }

    #[test]
    fn a_parent_cannot_acknowledge_for_its_child() {
        let (mut bed, c_state, _c) = tree_bed();
        bob_and_carol_join(&mut bed);
        news_of(&mut bed, "c.test", PeerNews::Ack { session: 1, seq: 3 });
        c_goes_down(&mut bed, &c_state);
        bed.input(say("alice@a.test/1", "hi"));
        // b.test, c.test's parent now, says c.test has event 4: it cannot
        // seal that, so the event is still owed and goes direct in time.
        let b_key = report_key(&bed, "muc-peer.b.test");
        let forged = sealed_with(&b_key, "muc-peer.c.test", 1, ChildFrame::Ack(4));
        news_of(&mut bed, "b.test", forged);
        assert_owed_goes_direct(&mut bed);
    }

    #[test]
    fn a_parent_made_again_from_a_snapshot_gets_what_its_children_lack() {
        let (mut bed, c_state, _c) = tree_bed();
        bob_and_carol_join(&mut bed);
        news_of(&mut bed, "b.test", PeerNews::Ack { session: 1, seq: 3 });
        news_of(&mut bed, "c.test", PeerNews::Ack { session: 1, seq: 3 });
        bed.input(say("alice@a.test/1", "before"));
        let effects = c_goes_down(&mut bed, &c_state);
        assert_eq!(summary(&effects)[1..], ["signed4"]);
        // b.test, c.test's parent now, lost its state: a new slave after
        // event 4, whose window holds nothing c.test lacks. What c.test
        // has not acknowledged follows, signed, as for a new parent.
        let effects = news_of(
            &mut bed,
            "b.test",
            PeerNews::Resync {
                session: 1,
                have: 0,
            },
        );
        let summary = summary(&effects);
        assert_eq!(summary[..2], ["direct:bob@b.test/1", "create@4"]);
        assert_eq!(summary[3..], ["signed4"]);
        assert_b_takes_c(&effects);
    }

    /// The bed of [`tree_bed`] with the keepalives' round trips measured:
    /// 20 ms to b.test, `to_c` ms to c.test; bob and carol joined.
    fn measured_bed(to_c: u32) -> (Bed, Vec<Effect>) {
        let (mut bed, _, _) = tree_bed();
        for (domain, rtt) in [("b.test", 20), ("c.test", to_c)] {
            let peer = bed.directory.get(&domain.parse().unwrap()).unwrap();
            peer.set_rtt_ms(rtt);
        }
        bed.input(join("bob@b.test/1", "bob"));
        let (_, effects) = bed.input(join("carol@c.test/1", "carol"));
        (bed, effects)
    }

    #[test]
    fn a_slow_master_link_loses_to_a_faster_detour_by_measured_round_trips() {
        // c.test's link (400 ms) costs more than through b.test (20 ms,
        // then b-c unmeasured, 100 ms, one relay hop each): c.test goes
        // under b.test, which gets its events signed to relay them.
        let (mut bed, effects) = measured_bed(400);
        assert_eq!(
            assigns(&effects),
            [
                (
                    "b.test".into(),
                    String::new(),
                    vec!["muc-peer.c.test".into()]
                ),
                ("c.test".into(), "muc-peer.b.test".into(), vec![]),
            ]
        );
        let (_, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert_eq!(summary(&effects), ["signed4"]);
        // A link about as fast as the detour: a star, nothing signed.
        let (mut bed, effects) = measured_bed(60);
        assert!(
            assigns(&effects)
                .iter()
                .all(|(_, parent, children)| parent.is_empty() && children.is_empty())
        );
        let (_, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert_eq!(summary(&effects), ["event4", "event4"]);
    }

    #[test]
    fn a_slave_that_cannot_reach_its_parent_is_moved_when_it_reports_it() {
        let (mut bed, _) = measured_bed(400);
        let b: BareJid = "muc-peer.b.test".parse().unwrap();
        let report = |session| PeerNews::Report {
            session,
            parent: b.clone(),
            refused: false,
            have: 3,
        };
        // Not on c.test's current stream: ignored.
        assert!(news_of(&mut bed, "c.test", report(2)).is_empty());
        // b.test cannot speak for c.test: its report is about its own
        // place (under the master), which does not change.
        assert!(news_of(&mut bed, "b.test", report(1)).is_empty());
        // c.test reports on its own stream: back under the master, which
        // feeds it (and b.test, no longer a relay) unsigned events.
        let effects = news_of(&mut bed, "c.test", report(1));
        assert_eq!(
            assigns(&effects),
            [
                ("b.test".into(), String::new(), vec![]),
                ("c.test".into(), String::new(), vec![]),
            ]
        );
        let (_, effects) = bed.input(say("alice@a.test/1", "hi"));
        assert_eq!(summary(&effects), ["event4", "event4"]);
        // The same report again (late, or by two paths): nothing moves.
        assert!(news_of(&mut bed, "c.test", report(1)).is_empty());
    }

    #[test]
    fn a_slave_goes_a_grace_period_after_its_last_occupant() {
        let mut bed = Bed::new();
        bed.input(join("bob@b.test/1", "bob"));
        bed.input(Input::Leave {
            from: "bob@b.test/1".parse().unwrap(),
            payload: Payload::default(),
        });
        let now = Instant::now();
        assert!(bed.fanout.occupancy(&bed.room, now).is_empty());
        assert_eq!(bed.fanout.next_check(), Some(now + GRACE));
        // Not while the slave may still owe bob his last stanzas.
        assert!(bed.fanout.occupancy(&bed.room, now + GRACE).is_empty());
        assert_eq!(bed.fanout.next_check(), Some(now + GRACE + RECHECK));
        bed.news(PeerNews::Ack { session: 1, seq: 3 });
        let steps = bed.fanout.occupancy(&bed.room, now + GRACE + RECHECK);
        let effects: Vec<Effect> = steps
            .into_iter()
            .flat_map(|s| bed.fanout.release(s))
            .collect();
        assert_eq!(summary(&effects), ["destroy"]);
        // The next b.test joiner gets a new slave.
        let (_, effects) = bed.input(join("bea@b.test/1", "bea"));
        assert_eq!(summary(&effects), ["create@3", "event4"]);
    }
}
