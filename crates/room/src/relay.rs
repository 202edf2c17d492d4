//! Spanning trees of a room's slaves: the relay of one node, for one room.
//!
//! The master numbers the room's events (consecutive sequence numbers) and
//! is the root of the room's tree; every slave is a node that may serve as
//! the parent of other slaves. A [`RelayNode`] is the pure state machine of
//! one node: it takes the room's events from its parent (or, at the root,
//! from the master's room), delivers them to its local replica once each
//! and in order, and forwards them to its children. The master decides the
//! tree's shape (`dmuc_master::tree`) and tells each node its parent
//! ([`RelayInput::Assign`]); nodes tell each other the rest with
//! [`RelayMsg`]s.
//!
//! ```text
//!  master's room ─Publish{seq, event}─▶ RelayNode (root, master)
//!                                          │ Send{Forward}     ▲ Subscribe, Ack, Fetch
//!                                          ▼                   │
//!                       peerhost b:     RelayNode ─Deliver{seq, event}─▶ Replica::apply
//!                                          │ Send{Forward}     ▲ Subscribe, Ack, Fetch
//!                                          ▼                   │
//!                       peerhost c:     RelayNode ─Deliver{seq, event}─▶ Replica::apply
//!
//!  c's parent b has pruned what c misses: b ─Unavailable─▶ c ─Fetch─▶ master ─CatchUp─▶ c
//!  c loses b:  LinkLost{b} ─▶ Report{lost b} ─(any path)─▶ master ─Assign{parent, path}─▶ c
//!              c ─Subscribe{after: what c has}─▶ new parent ─Forward(what follows)─▶ c
//! ```
//!
//! # Guarantees
//! - **Exactly once, in order.** A node delivers event `n + 1` right after
//!   event `n` and never again: events it already delivered or holds are
//!   dropped (and counted), whichever path they came by (live from the
//!   parent, from an old parent during a reparenting, or a catch-up).
//! - **No gaps.** An event that arrives ahead of a gap is held in a bounded
//!   buffer (the nearest ones are kept when it is full); the node fetches
//!   the gap from its parent, or from the master's history when the parent
//!   no longer has it ([`RelayMsg::Unavailable`]) or the node has no
//!   parent. A lost tail is found from the parent's heartbeat
//!   ([`RelayMsg::Head`], every tick) and fetched the same way.
//! - **Parents forward in order.** A parent forwards only what it has
//!   delivered itself, in order; it keeps a bounded window of recent events
//!   to answer its children's subscriptions and fetches. A child that
//!   subscribes having event `n` gets `n + 1..` from the window, or is told
//!   which events to fetch from the master.
//! - **Reparenting loses and duplicates nothing.** A node that gets a new
//!   parent subscribes from the last event it delivered; what the old and
//!   the new parent both send is dropped as duplicates.
//! - **No loops.** Each node knows its path from the root (the master sends
//!   it with the assignment, parents repeat it in their heartbeats). A node
//!   declines a parent that is itself, one of its children, or has the node
//!   on its path; a parent refuses a child that is on its own path; a node
//!   whose parent's path comes to contain it drops that parent.
//! - **Self-healing.** Every message may be lost, delayed, reordered or
//!   duplicated: a node that hears nothing from its parent for a tick
//!   subscribes again, fetches that went unanswered are asked again each
//!   tick, an orphan reports again each tick until the master assigns it a
//!   parent, and a node that gets events from a node that is not its parent
//!   tells it to stop.
//!
//! # The runtime
//! It moves [`RelayAction::Send`]s to the peer they name (the master and
//! every peerhost are [`NodeId`]s), feeds what arrives as
//! [`RelayInput::Receive`], turns a broken link into
//! [`RelayInput::LinkLost`], carries a [`RelayAction::Report`] to the
//! master by any path it has (the master's own link, or any peer outside
//! the node's subtree, whose relay passes it up), calls
//! [`RelayInput::Tick`] every few seconds, and applies each
//! [`RelayAction::Deliver`] to the local replica.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

/// A node of a room's tree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeId {
    /// The room's master: the root of the tree and the origin of every event.
    Master,
    /// A peerhost's slave of the room, named by the XMPP domain it serves.
    Peer(Arc<str>),
}

impl NodeId {
    /// The slave on the peerhost of `domain`.
    pub fn peer(domain: &str) -> NodeId {
        NodeId::Peer(Arc::from(domain))
    }

    pub fn is_master(&self) -> bool {
        matches!(self, NodeId::Master)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeId::Master => f.write_str("master"),
            NodeId::Peer(domain) => f.write_str(domain),
        }
    }
}

/// How much a node keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Delivered events kept to serve children's subscriptions and fetches
    /// (at the root: the master's history for catch-ups).
    pub window: usize,
    /// Events held ahead of a gap.
    pub buffer: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            window: 1024,
            buffer: 1024,
        }
    }
}

/// Why a node reports (see [`Report`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The link to its parent is gone.
    Unreachable,
    /// The parent refused it as a child (the node is on the parent's path).
    Refused,
    /// The parent's path came to contain the node: a loop, now broken.
    Loop,
    /// It declined the master's assignment: the parent is the node itself,
    /// one of its children, or has the node on its path (or the path is
    /// malformed).
    Declined,
}

/// A node tells the master that it needs a parent (or that it declined one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The node reporting.
    pub node: NodeId,
    /// The parent the node cannot use: the one it lost, or the one assigned.
    pub unusable: NodeId,
    pub why: Why,
    /// The parent the node keeps ([`Why::Declined`] only); `None`: it has
    /// no parent and waits for an assignment.
    pub keeps: Option<NodeId>,
    /// The last event the node delivered.
    pub have: u64,
}

/// What relays say to each other about one room: one frame each on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum RelayMsg<E> {
    /// Child to parent: make me your child; I have every event up to `after`.
    Subscribe { after: u64 },
    /// Child to parent (or to anyone sending it events): stop sending me events.
    Unsubscribe,
    /// Child to parent: I delivered every event up to `seq` (cumulative).
    Ack { seq: u64 },
    /// Parent to child: the next events of the room, in order.
    Forward { events: Vec<(u64, E)> },
    /// Parent to child, every tick and when its path changes: I delivered
    /// up to `seq`; my path from the root is `path` (the master first, the
    /// parent last).
    Head { seq: u64, path: Vec<NodeId> },
    /// Parent to child: you are on my path; I cannot be your parent.
    Refuse,
    /// Send me the events after `after` up to `until` that you have.
    Fetch { after: u64, until: u64 },
    /// The answer to a [`RelayMsg::Fetch`]: events in order.
    CatchUp { events: Vec<(u64, E)> },
    /// The answer to a fetch or subscription: I no longer have the events
    /// after `after` up to `until`; fetch them from the master.
    Unavailable { after: u64, until: u64 },
    /// A report on its way to the master (passed up from parent to parent).
    Report(Report),
}

/// What happens to a node.
#[derive(Clone, Debug, PartialEq)]
pub enum RelayInput<E> {
    /// (Root only.) The master's room handled event `seq`, the one after the
    /// last published.
    Publish { seq: u64, event: E },
    /// A message from another node.
    Receive { from: NodeId, msg: RelayMsg<E> },
    /// The master assigns this node a parent; `path` is the parent's path
    /// from the root, the master first and `parent` last.
    Assign { parent: NodeId, path: Vec<NodeId> },
    /// The link to `peer` is gone (the parent, a child, or another node).
    LinkLost { peer: NodeId },
    /// The local replica restarted from a snapshot taken after event `seq`.
    Reset { seq: u64 },
    /// Time passed (every few seconds): heartbeats and retries.
    Tick,
}

/// What a node decides; the runtime carries these out in order.
#[derive(Clone, Debug, PartialEq)]
pub enum RelayAction<E> {
    /// Apply event `seq` to the local replica: each event exactly once, in
    /// order. (Not at the root: the master's room already handled it.)
    Deliver { seq: u64, event: E },
    /// Send a message to another node.
    Send { to: NodeId, msg: RelayMsg<E> },
    /// Carry this report to the master by any path: the master's own link
    /// if it is up, else any peer outside this node's subtree (its relay
    /// passes it up as [`RelayMsg::Report`]).
    Report(Report),
    /// (Root only.) A report reached the master: for the tree planner.
    Reported(Report),
    /// (Root only.) `node` needs events after `after` that the master no
    /// longer keeps: it needs a fresh snapshot (then [`RelayInput::Reset`]).
    Resync { node: NodeId, after: u64 },
}

/// What a node has done so far, for observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Events dropped because they had been delivered, or were held, already.
    pub duplicates: u64,
    /// New events (not duplicates) that came in answer to a fetch.
    pub caught_up: u64,
    /// Fetches this node sent.
    pub fetches: u64,
    /// Events this node sent in answer to others' fetches.
    pub served: u64,
    /// Events forwarded to children.
    pub forwarded: u64,
    /// Times the node got a parent other than its last one.
    pub reparents: u64,
    /// Events dropped because the buffer was full (fetched again later).
    pub overflow: u64,
    /// Assignments declined and children refused (loops avoided).
    pub refused: u64,
}

/// What a parent knows of a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    /// The last event sent to it (or that it said it has).
    pub sent: u64,
    /// The last event it acknowledged.
    pub acked: u64,
}

/// One node's relay for one room. `E` is the event (cheap to clone, e.g.
/// an `Arc`).
#[derive(Debug)]
pub struct RelayNode<E> {
    me: NodeId,
    limits: RelayLimits,
    /// `None` at the root, and at a node waiting for an assignment.
    parent: Option<NodeId>,
    /// The parent's path from the root (master first, parent last); empty
    /// at the root and at an orphan.
    ancestors: Vec<NodeId>,
    /// The parent the node had last (current or lost), to count reparents.
    previous: Option<NodeId>,
    /// The parent lost and why, reported again each tick until an assignment.
    lost: Option<(NodeId, Why)>,
    /// Whether the parent said anything since the last tick.
    heard: bool,
    /// The last event delivered.
    delivered: u64,
    /// The highest event known to exist.
    head: u64,
    /// Delivered events, consecutive, ending at `delivered`.
    window: VecDeque<(u64, E)>,
    /// Events after a gap, waiting for it to fill.
    buffer: BTreeMap<u64, E>,
    /// Events up to here come from the master: the parent no longer has them.
    from_master_until: u64,
    /// The fetch sent since the last tick, `(after, until)`, not to repeat it.
    asked: Option<(u64, u64)>,
    children: BTreeMap<NodeId, Child>,
    stats: RelayStats,
}

impl<E: Clone> RelayNode<E> {
    /// The relay of node `me`, whose replica has applied every event up to
    /// `delivered`. [`NodeId::Master`] makes the root; any other node waits
    /// for the master's [`RelayInput::Assign`].
    pub fn new(me: NodeId, delivered: u64, limits: RelayLimits) -> Self {
        RelayNode {
            me,
            limits,
            parent: None,
            ancestors: Vec::new(),
            previous: None,
            lost: None,
            heard: false,
            delivered,
            head: delivered,
            window: VecDeque::new(),
            buffer: BTreeMap::new(),
            from_master_until: 0,
            asked: None,
            children: BTreeMap::new(),
            stats: RelayStats::default(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn is_root(&self) -> bool {
        self.me.is_master()
    }

    /// The current parent (`None` at the root and at an orphan).
    pub fn parent(&self) -> Option<&NodeId> {
        self.parent.as_ref()
    }

    /// This node's path from the root, the master first and itself last.
    pub fn path(&self) -> Vec<NodeId> {
        let mut path = self.ancestors.clone();
        path.push(self.me.clone());
        path
    }

    /// The node's distance from the root, as far as it knows.
    pub fn depth(&self) -> usize {
        self.ancestors.len()
    }

    /// The last event delivered (at the root: published).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Events held ahead of a gap.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn children(&self) -> impl Iterator<Item = (&NodeId, &Child)> {
        self.children.iter()
    }

    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Handles one input; the actions are to be carried out in order.
    pub fn handle(&mut self, input: RelayInput<E>) -> Vec<RelayAction<E>> {
        let mut out = Vec::new();
        let before = self.delivered;
        match input {
            RelayInput::Publish { seq, event } => {
                if self.is_root() {
                    self.accept(seq, event, false, &mut out);
                }
            }
            RelayInput::Receive { from, msg } => self.receive(from, msg, &mut out),
            RelayInput::Assign { parent, path } => self.assign(parent, path, &mut out),
            RelayInput::LinkLost { peer } => {
                self.children.remove(&peer);
                if self.parent.as_ref() == Some(&peer) {
                    self.orphan(Why::Unreachable, &mut out);
                }
            }
            RelayInput::Reset { seq } => self.reset(seq, &mut out),
            RelayInput::Tick => self.tick(&mut out),
        }
        self.forward(&mut out);
        if !self.is_root() {
            if self.delivered > before
                && let Some(parent) = &self.parent
            {
                out.push(send(
                    parent,
                    RelayMsg::Ack {
                        seq: self.delivered,
                    },
                ));
            }
            self.want(&mut out);
        }
        out
    }

    fn receive(&mut self, from: NodeId, msg: RelayMsg<E>, out: &mut Vec<RelayAction<E>>) {
        match msg {
            RelayMsg::Subscribe { after } => self.subscribe(from, after, out),
            RelayMsg::Unsubscribe => {
                self.children.remove(&from);
            }
            RelayMsg::Ack { seq } => {
                if let Some(child) = self.children.get_mut(&from) {
                    child.acked = child.acked.max(seq);
                    child.sent = child.sent.max(seq);
                }
            }
            RelayMsg::Forward { events } => {
                // Events from a node that is not our parent (an old parent,
                // during a reparenting) are still the room's events: keep
                // what is new, and tell it to stop.
                self.sent_by_parent(&from, out);
                for (seq, event) in events {
                    self.accept(seq, event, false, out);
                }
            }
            RelayMsg::CatchUp { events } => {
                if self.parent.as_ref() == Some(&from) {
                    self.heard = true;
                }
                for (seq, event) in events {
                    self.accept(seq, event, true, out);
                }
            }
            RelayMsg::Head { seq, path } => {
                if !self.sent_by_parent(&from, out) {
                    return;
                }
                if path.last() == Some(&from) {
                    if path.contains(&self.me) {
                        self.orphan(Why::Loop, out);
                        return;
                    }
                    if path != self.ancestors {
                        self.ancestors = path;
                        self.announce(out);
                    }
                }
                self.head = self.head.max(seq);
                if seq <= self.delivered {
                    // The parent may have missed our last ack.
                    out.push(send(
                        &from,
                        RelayMsg::Ack {
                            seq: self.delivered,
                        },
                    ));
                }
            }
            RelayMsg::Refuse => {
                if self.parent.as_ref() == Some(&from) {
                    self.orphan(Why::Refused, out);
                }
            }
            RelayMsg::Fetch { after, until } => self.serve(from, after, until, out),
            RelayMsg::Unavailable { after: _, until } => {
                if self.parent.as_ref() == Some(&from) {
                    self.heard = true;
                }
                self.from_master_until = self.from_master_until.max(until);
                self.head = self.head.max(until);
                self.asked = None;
            }
            RelayMsg::Report(report) => {
                if self.is_root() {
                    out.push(RelayAction::Reported(report));
                } else if report.node != self.me
                    && !self.ancestors.contains(&report.node)
                    && let Some(parent) = &self.parent
                {
                    // Not from our own path (that would go round in a
                    // circle); an orphan drops it (the reporter repeats it).
                    out.push(send(parent, RelayMsg::Report(report)));
                }
            }
        }
    }

    /// Whether `from` is our parent (and note that it spoke); if it is not,
    /// tell it to stop sending to us.
    fn sent_by_parent(&mut self, from: &NodeId, out: &mut Vec<RelayAction<E>>) -> bool {
        if self.parent.as_ref() == Some(from) {
            self.heard = true;
            return true;
        }
        out.push(send(from, RelayMsg::Unsubscribe));
        false
    }

    /// Takes one event, from wherever it came.
    fn accept(&mut self, seq: u64, event: E, caught_up: bool, out: &mut Vec<RelayAction<E>>) {
        if seq <= self.delivered || self.buffer.contains_key(&seq) {
            self.stats.duplicates += 1;
            return;
        }
        self.head = self.head.max(seq);
        if caught_up {
            self.stats.caught_up += 1;
        }
        if seq != self.delivered + 1 {
            self.buffer.insert(seq, event);
            if self.buffer.len() > self.limits.buffer {
                // Keep the nearest events; the farthest is fetched again.
                self.buffer.pop_last();
                self.stats.overflow += 1;
            }
            return;
        }
        self.deliver(seq, event, out);
        self.drain_buffer(out);
    }

    fn drain_buffer(&mut self, out: &mut Vec<RelayAction<E>>) {
        while let Some(event) = self.buffer.remove(&(self.delivered + 1)) {
            self.deliver(self.delivered + 1, event, out);
        }
    }

    fn deliver(&mut self, seq: u64, event: E, out: &mut Vec<RelayAction<E>>) {
        self.delivered = seq;
        if !self.is_root() {
            out.push(RelayAction::Deliver {
                seq,
                event: event.clone(),
            });
        }
        self.window.push_back((seq, event));
        while self.window.len() > self.limits.window {
            self.window.pop_front();
        }
    }

    /// The first event in the window (`delivered + 1` when it is empty).
    fn window_first(&self) -> u64 {
        self.delivered + 1 - self.window.len() as u64
    }

    /// The window's events after `after` up to `until`.
    fn window_range(&self, after: u64, until: u64) -> Vec<(u64, E)> {
        let first = self.window_first();
        let start = (after + 1).saturating_sub(first) as usize;
        let end = (until + 1)
            .saturating_sub(first)
            .min(self.window.len() as u64) as usize;
        if start >= end {
            return Vec::new();
        }
        self.window.range(start..end).cloned().collect()
    }

    fn subscribe(&mut self, child: NodeId, after: u64, out: &mut Vec<RelayAction<E>>) {
        if child == self.me || self.ancestors.contains(&child) {
            self.stats.refused += 1;
            out.push(send(&child, RelayMsg::Refuse));
            return;
        }
        let first = self.window_first();
        if after < self.delivered && after + 1 < first {
            out.push(send(
                &child,
                RelayMsg::Unavailable {
                    after,
                    until: first - 1,
                },
            ));
        }
        self.children.insert(
            child.clone(),
            Child {
                sent: after,
                acked: after,
            },
        );
        // What follows `after` first, then the heartbeat (which would make
        // the child fetch what is on its way otherwise).
        self.forward(out);
        out.push(send(
            &child,
            RelayMsg::Head {
                seq: self.delivered,
                path: self.path(),
            },
        ));
    }

    /// Sends each child what it has not been sent yet, in order.
    fn forward(&mut self, out: &mut Vec<RelayAction<E>>) {
        let delivered = self.delivered;
        let pending: Vec<(NodeId, u64)> = self
            .children
            .iter()
            .filter(|(_, child)| child.sent < delivered)
            .map(|(id, child)| (id.clone(), child.sent))
            .collect();
        for (id, sent) in pending {
            let events = self.window_range(sent, delivered);
            if let Some(child) = self.children.get_mut(&id) {
                child.sent = delivered;
            }
            if !events.is_empty() {
                self.stats.forwarded += events.len() as u64;
                out.push(send(&id, RelayMsg::Forward { events }));
            }
        }
    }

    /// Answers a fetch from the window.
    fn serve(&mut self, from: NodeId, after: u64, until: u64, out: &mut Vec<RelayAction<E>>) {
        let until = until.min(self.delivered);
        if after >= until {
            // Nothing we have; what we get later reaches our children anyway.
            return;
        }
        let first = self.window_first();
        if after + 1 < first {
            if self.is_root() {
                out.push(RelayAction::Resync { node: from, after });
                return;
            }
            out.push(send(
                &from,
                RelayMsg::Unavailable {
                    after,
                    until: until.min(first - 1),
                },
            ));
        }
        let events = self.window_range(after, until);
        if !events.is_empty() {
            self.stats.served += events.len() as u64;
            out.push(send(&from, RelayMsg::CatchUp { events }));
        }
    }

    fn assign(&mut self, parent: NodeId, path: Vec<NodeId>, out: &mut Vec<RelayAction<E>>) {
        if self.is_root() {
            return;
        }
        let loops = parent == self.me
            || path.contains(&self.me)
            || self.children.contains_key(&parent)
            || path.last() != Some(&parent)
            || path.first() != Some(&NodeId::Master);
        if loops {
            self.stats.refused += 1;
            out.push(RelayAction::Report(Report {
                node: self.me.clone(),
                unusable: parent,
                why: Why::Declined,
                keeps: self.parent.clone(),
                have: self.delivered,
            }));
            return;
        }
        if self.parent.as_ref() != Some(&parent)
            && let Some(old) = self.parent.take()
        {
            out.push(send(&old, RelayMsg::Unsubscribe));
        }
        if self.previous.as_ref().is_some_and(|p| *p != parent) {
            self.stats.reparents += 1;
        }
        self.previous = Some(parent.clone());
        self.lost = None;
        self.heard = false;
        self.asked = None;
        out.push(send(
            &parent,
            RelayMsg::Subscribe {
                after: self.delivered,
            },
        ));
        self.parent = Some(parent);
        if path != self.ancestors {
            self.ancestors = path;
            self.announce(out);
        }
    }

    /// The node has no parent any more: report it.
    fn orphan(&mut self, why: Why, out: &mut Vec<RelayAction<E>>) {
        let Some(parent) = self.parent.take() else {
            return;
        };
        if why != Why::Unreachable {
            out.push(send(&parent, RelayMsg::Unsubscribe));
        }
        out.push(RelayAction::Report(Report {
            node: self.me.clone(),
            unusable: parent.clone(),
            why,
            keeps: None,
            have: self.delivered,
        }));
        self.lost = Some((parent, why));
        self.asked = None;
        self.ancestors.clear();
        self.announce(out);
    }

    /// Tells every child this node's path (it changed).
    fn announce(&self, out: &mut Vec<RelayAction<E>>) {
        let path = self.path();
        for id in self.children.keys() {
            out.push(send(
                id,
                RelayMsg::Head {
                    seq: self.delivered,
                    path: path.clone(),
                },
            ));
        }
    }

    fn reset(&mut self, seq: u64, out: &mut Vec<RelayAction<E>>) {
        if seq <= self.delivered || self.is_root() {
            return;
        }
        self.delivered = seq;
        self.head = self.head.max(seq);
        // The window must end at `delivered`: what came before the snapshot
        // is not ours to serve.
        self.window.clear();
        self.buffer = self.buffer.split_off(&(seq + 1));
        self.asked = None;
        self.drain_buffer(out);
    }

    fn tick(&mut self, out: &mut Vec<RelayAction<E>>) {
        if !self.is_root() {
            match &self.parent {
                Some(parent) => {
                    if !self.heard {
                        // Our subscription (or its answer) may have been
                        // lost, or the parent forgot us: subscribing again
                        // is harmless.
                        out.push(send(
                            parent,
                            RelayMsg::Subscribe {
                                after: self.delivered,
                            },
                        ));
                    }
                    self.heard = false;
                }
                None => {
                    if let Some((lost, why)) = &self.lost {
                        out.push(RelayAction::Report(Report {
                            node: self.me.clone(),
                            unusable: lost.clone(),
                            why: *why,
                            keeps: None,
                            have: self.delivered,
                        }));
                    }
                }
            }
            self.asked = None;
        }
        self.announce(out);
    }

    /// Fetches the first gap, unless it has been asked for since the last tick.
    fn want(&mut self, out: &mut Vec<RelayAction<E>>) {
        let until = match self.buffer.first_key_value() {
            Some((&seq, _)) => seq - 1,
            None => self.head,
        };
        if until <= self.delivered {
            return;
        }
        if let Some((after, asked)) = self.asked
            && after == self.delivered
            && asked >= until
        {
            return;
        }
        let to = match &self.parent {
            Some(parent) if self.delivered >= self.from_master_until => parent.clone(),
            _ => NodeId::Master,
        };
        self.stats.fetches += 1;
        self.asked = Some((self.delivered, until));
        out.push(send(
            &to,
            RelayMsg::Fetch {
                after: self.delivered,
                until,
            },
        ));
    }
}

fn send<E>(to: &NodeId, msg: RelayMsg<E>) -> RelayAction<E> {
    RelayAction::Send {
        to: to.clone(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Action = RelayAction<u32>;
    type Node = RelayNode<u32>;

    fn b() -> NodeId {
        NodeId::peer("b.test")
    }
    fn c() -> NodeId {
        NodeId::peer("c.test")
    }
    fn d() -> NodeId {
        NodeId::peer("d.test")
    }
    const M: NodeId = NodeId::Master;

    /// Event `seq`'s payload.
    fn ev(seq: u64) -> (u64, u32) {
        (seq, seq as u32 * 10)
    }
    fn evs(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, u32)> {
        seqs.map(ev).collect()
    }

    fn to(to: NodeId, msg: RelayMsg<u32>) -> Action {
        RelayAction::Send { to, msg }
    }
    fn deliver(seqs: std::ops::RangeInclusive<u64>) -> Vec<Action> {
        seqs.map(|seq| RelayAction::Deliver {
            seq,
            event: ev(seq).1,
        })
        .collect()
    }
    fn from(from: NodeId, msg: RelayMsg<u32>) -> RelayInput<u32> {
        RelayInput::Receive { from, msg }
    }
    fn forward(seqs: std::ops::RangeInclusive<u64>) -> RelayMsg<u32> {
        RelayMsg::Forward { events: evs(seqs) }
    }
    fn catch_up(seqs: std::ops::RangeInclusive<u64>) -> RelayMsg<u32> {
        RelayMsg::CatchUp { events: evs(seqs) }
    }

    fn limits(window: usize, buffer: usize) -> RelayLimits {
        RelayLimits { window, buffer }
    }

    /// Node `me`, at event `delivered`, assigned `parent` with `path`
    /// (the subscription it sends is not shown).
    fn attached(me: NodeId, path: &[NodeId], delivered: u64, limits: RelayLimits) -> Node {
        let mut node = RelayNode::new(me, delivered, limits);
        let parent = path.last().unwrap().clone();
        node.handle(RelayInput::Assign {
            parent,
            path: path.to_vec(),
        });
        node
    }

    #[test]
    fn the_root_forwards_what_it_publishes_to_each_child_once() {
        let mut root: Node = RelayNode::new(M, 0, RelayLimits::default());
        assert_eq!(
            root.handle(from(b(), RelayMsg::Subscribe { after: 0 })),
            [to(
                b(),
                RelayMsg::Head {
                    seq: 0,
                    path: vec![M]
                }
            )]
        );
        root.handle(from(c(), RelayMsg::Subscribe { after: 0 }));
        assert_eq!(
            root.handle(RelayInput::Publish { seq: 1, event: 10 }),
            [to(b(), forward(1..=1)), to(c(), forward(1..=1))]
        );
        assert_eq!(root.stats().forwarded, 2);
        assert_eq!(root.delivered(), 1);
    }

    #[test]
    fn a_child_delivers_in_order_acks_and_forwards() {
        let mut node: Node = RelayNode::new(b(), 0, RelayLimits::default());
        assert_eq!(
            node.handle(RelayInput::Assign {
                parent: M,
                path: vec![M]
            }),
            [to(M, RelayMsg::Subscribe { after: 0 })]
        );
        assert_eq!(
            node.handle(from(c(), RelayMsg::Subscribe { after: 0 })),
            [to(
                c(),
                RelayMsg::Head {
                    seq: 0,
                    path: vec![M, b()]
                }
            )]
        );
        let mut expected = deliver(1..=2);
        expected.push(to(c(), forward(1..=2)));
        expected.push(to(M, RelayMsg::Ack { seq: 2 }));
        assert_eq!(node.handle(from(M, forward(1..=2))), expected);
        assert_eq!(node.depth(), 1);
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut node = attached(b(), &[M], 0, RelayLimits::default());
        node.handle(from(M, forward(1..=1)));
        assert_eq!(node.handle(from(M, forward(1..=1))), []);
        let mut expected = deliver(2..=2);
        expected.push(to(M, RelayMsg::Ack { seq: 2 }));
        assert_eq!(node.handle(from(M, catch_up(1..=2))), expected);
        let stats = node.stats();
        assert_eq!((stats.duplicates, stats.caught_up), (2, 1));
    }

    #[test]
    fn a_gap_is_held_and_fetched_from_the_parent() {
        let mut node = attached(c(), &[M, b()], 0, RelayLimits::default());
        node.handle(from(b(), forward(1..=1)));
        assert_eq!(
            node.handle(from(b(), forward(3..=4))),
            [to(b(), RelayMsg::Fetch { after: 1, until: 2 })]
        );
        // Asked already: no second fetch for the same gap.
        assert_eq!(node.handle(from(b(), forward(5..=5))), []);
        assert_eq!(node.buffered(), 3);
        let mut expected = deliver(2..=5);
        expected.push(to(b(), RelayMsg::Ack { seq: 5 }));
        assert_eq!(node.handle(from(b(), catch_up(2..=2))), expected);
        assert_eq!(node.buffered(), 0);
        assert_eq!(node.stats().fetches, 1);
    }

    #[test]
    fn a_parent_that_pruned_sends_its_child_to_the_master() {
        let mut parent = attached(b(), &[M], 0, limits(3, 8));
        parent.handle(from(M, forward(1..=5)));
        assert_eq!(
            parent.handle(from(c(), RelayMsg::Fetch { after: 1, until: 5 })),
            [
                to(c(), RelayMsg::Unavailable { after: 1, until: 2 }),
                to(c(), catch_up(3..=5)),
            ]
        );
        assert_eq!(parent.stats().served, 3);

        let mut child = attached(c(), &[M, b()], 1, RelayLimits::default());
        assert_eq!(
            child.handle(from(b(), RelayMsg::Unavailable { after: 1, until: 2 })),
            [to(M, RelayMsg::Fetch { after: 1, until: 2 })]
        );
        assert_eq!(child.handle(from(b(), catch_up(3..=5))), []);
        let mut expected = deliver(2..=5);
        expected.push(to(b(), RelayMsg::Ack { seq: 5 }));
        assert_eq!(child.handle(from(M, catch_up(2..=2))), expected);
        // Later gaps go to the parent again.
        assert_eq!(
            child.handle(from(b(), forward(7..=7))),
            [to(b(), RelayMsg::Fetch { after: 5, until: 6 })]
        );
    }

    #[test]
    fn a_subscriber_gets_what_follows_from_the_window() {
        let mut node = attached(b(), &[M], 0, limits(3, 8));
        node.handle(from(M, forward(1..=5)));
        let head = |seq| RelayMsg::Head {
            seq,
            path: vec![M, b()],
        };
        assert_eq!(
            node.handle(from(c(), RelayMsg::Subscribe { after: 1 })),
            [
                to(c(), RelayMsg::Unavailable { after: 1, until: 2 }),
                to(c(), forward(3..=5)),
                to(c(), head(5)),
            ]
        );
        assert_eq!(
            node.handle(from(d(), RelayMsg::Subscribe { after: 4 })),
            [to(d(), forward(5..=5)), to(d(), head(5))]
        );
        // A child ahead of its new parent gets only what it lacks.
        let e = NodeId::peer("e.test");
        assert_eq!(
            node.handle(from(e.clone(), RelayMsg::Subscribe { after: 7 })),
            [to(e.clone(), head(5))]
        );
        let mut expected = deliver(6..=8);
        expected.extend([
            to(c(), forward(6..=8)),
            to(d(), forward(6..=8)),
            to(e, forward(8..=8)),
            to(M, RelayMsg::Ack { seq: 8 }),
        ]);
        assert_eq!(node.handle(from(M, forward(6..=8))), expected);
    }

    #[test]
    fn the_master_asks_for_a_snapshot_when_its_history_is_pruned() {
        let mut root: Node = RelayNode::new(M, 0, limits(2, 8));
        for seq in 1..=4 {
            root.handle(RelayInput::Publish {
                seq,
                event: ev(seq).1,
            });
        }
        assert_eq!(
            root.handle(from(b(), RelayMsg::Fetch { after: 0, until: 4 })),
            [RelayAction::Resync {
                node: b(),
                after: 0
            }]
        );
        // The slave restarts from a snapshot after 3 and goes on.
        let mut node = attached(b(), &[M], 0, RelayLimits::default());
        assert_eq!(
            node.handle(from(M, forward(4..=4))),
            [to(M, RelayMsg::Fetch { after: 0, until: 3 })]
        );
        let mut expected = deliver(4..=4);
        expected.push(to(M, RelayMsg::Ack { seq: 4 }));
        assert_eq!(node.handle(RelayInput::Reset { seq: 3 }), expected);
    }

    #[test]
    fn reparenting_loses_and_duplicates_nothing() {
        let mut node = attached(c(), &[M, b()], 0, RelayLimits::default());
        node.handle(from(b(), forward(1..=2)));
        let report = Report {
            node: c(),
            unusable: b(),
            why: Why::Unreachable,
            keeps: None,
            have: 2,
        };
        assert_eq!(
            node.handle(RelayInput::LinkLost { peer: b() }),
            [RelayAction::Report(report.clone())]
        );
        // Until the master answers, the report goes again each tick.
        assert_eq!(node.handle(RelayInput::Tick), [RelayAction::Report(report)]);
        assert_eq!(
            node.handle(RelayInput::Assign {
                parent: d(),
                path: vec![M, d()]
            }),
            [to(d(), RelayMsg::Subscribe { after: 2 })]
        );
        // The old parent's last events, still on their way: kept, and it is
        // told to stop.
        let mut expected = vec![to(b(), RelayMsg::Unsubscribe)];
        expected.extend(deliver(3..=3));
        expected.push(to(d(), RelayMsg::Ack { seq: 3 }));
        assert_eq!(node.handle(from(b(), forward(3..=3))), expected);
        // The new parent sends what followed 2: 3 again, dropped.
        let mut expected = deliver(4..=4);
        expected.push(to(d(), RelayMsg::Ack { seq: 4 }));
        assert_eq!(node.handle(from(d(), forward(3..=4))), expected);
        let stats = node.stats();
        assert_eq!((stats.reparents, stats.duplicates), (1, 1));
        assert_eq!(node.path(), [M, d(), c()]);
    }

    #[test]
    fn a_node_declines_a_parent_that_would_make_a_loop() {
        let mut node = attached(b(), &[M], 0, RelayLimits::default());
        node.handle(from(c(), RelayMsg::Subscribe { after: 0 }));
        let declined = |unusable: NodeId| {
            vec![RelayAction::Report(Report {
                node: b(),
                unusable,
                why: Why::Declined,
                keeps: Some(M),
                have: 0,
            })]
        };
        let assign = |parent: NodeId, path: Vec<NodeId>| RelayInput::Assign { parent, path };
        // Itself.
        assert_eq!(node.handle(assign(b(), vec![M, b()])), declined(b()));
        // Its own child, whatever the master says its path is.
        assert_eq!(node.handle(assign(c(), vec![M, c()])), declined(c()));
        // A descendant, by the path the master gives.
        let deep = vec![M, c(), b(), d()];
        assert_eq!(node.handle(assign(d(), deep)), declined(d()));
        // A path that does not lead from the master to the parent.
        assert_eq!(node.handle(assign(d(), vec![d()])), declined(d()));
        assert_eq!(node.handle(assign(d(), vec![M, c()])), declined(d()));
        assert_eq!(node.parent(), Some(&M));
        assert_eq!(node.stats().refused, 5);
    }

    #[test]
    fn a_parent_refuses_a_child_on_its_own_path() {
        let mut node = attached(c(), &[M, b()], 0, RelayLimits::default());
        assert_eq!(
            node.handle(from(b(), RelayMsg::Subscribe { after: 0 })),
            [to(b(), RelayMsg::Refuse)]
        );
        assert_eq!(node.children().count(), 0);
        // The refused child goes back to the master for another parent.
        let mut refused = attached(d(), &[M, b(), c()], 0, RelayLimits::default());
        assert_eq!(
            refused.handle(from(c(), RelayMsg::Refuse)),
            [
                to(c(), RelayMsg::Unsubscribe),
                RelayAction::Report(Report {
                    node: d(),
                    unusable: c(),
                    why: Why::Refused,
                    keeps: None,
                    have: 0,
                }),
            ]
        );
    }

    #[test]
    fn a_loop_announced_by_a_head_is_broken() {
        let mut node = attached(b(), &[M, c()], 0, RelayLimits::default());
        assert_eq!(
            node.handle(from(
                c(),
                RelayMsg::Head {
                    seq: 0,
                    path: vec![M, b(), c()]
                }
            )),
            [
                to(c(), RelayMsg::Unsubscribe),
                RelayAction::Report(Report {
                    node: b(),
                    unusable: c(),
                    why: Why::Loop,
                    keeps: None,
                    have: 0,
                }),
            ]
        );
        assert_eq!(node.parent(), None);
    }

    #[test]
    fn a_new_path_is_passed_down() {
        let mut node = attached(b(), &[M], 0, RelayLimits::default());
        node.handle(from(c(), RelayMsg::Subscribe { after: 0 }));
        assert_eq!(
            node.handle(RelayInput::Assign {
                parent: d(),
                path: vec![M, d()]
            }),
            [
                to(M, RelayMsg::Unsubscribe),
                to(d(), RelayMsg::Subscribe { after: 0 }),
                to(
                    c(),
                    RelayMsg::Head {
                        seq: 0,
                        path: vec![M, d(), b()]
                    }
                ),
            ]
        );
        // And a path change further up, too.
        let moved = vec![M, NodeId::peer("e.test"), d()];
        assert_eq!(
            node.handle(from(
                d(),
                RelayMsg::Head {
                    seq: 0,
                    path: moved.clone()
                }
            )),
            [
                to(
                    c(),
                    RelayMsg::Head {
                        seq: 0,
                        path: [moved, vec![b()]].concat()
                    }
                ),
                to(d(), RelayMsg::Ack { seq: 0 }),
            ]
        );
    }

    #[test]
    fn a_lost_tail_is_found_by_the_next_head() {
        let mut node = attached(c(), &[M, b()], 0, RelayLimits::default());
        node.handle(from(b(), forward(1..=1)));
        assert_eq!(
            node.handle(from(
                b(),
                RelayMsg::Head {
                    seq: 3,
                    path: vec![M, b()]
                }
            )),
            [to(b(), RelayMsg::Fetch { after: 1, until: 3 })]
        );
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut node = attached(b(), &[M], 0, limits(8, 2));
        assert_eq!(
            node.handle(from(M, forward(3..=5))),
            [to(M, RelayMsg::Fetch { after: 0, until: 2 })]
        );
        assert_eq!((node.buffered(), node.stats().overflow), (2, 1));
        // 5 was dropped, but is known to exist: fetched next.
        let mut expected = deliver(1..=4);
        expected.push(to(M, RelayMsg::Ack { seq: 4 }));
        expected.push(to(M, RelayMsg::Fetch { after: 4, until: 5 }));
        assert_eq!(node.handle(from(M, catch_up(1..=2))), expected);
    }

    #[test]
    fn a_silent_parent_is_subscribed_to_again() {
        let mut node = attached(b(), &[M], 0, RelayLimits::default());
        assert_eq!(
            node.handle(RelayInput::Tick),
            [to(M, RelayMsg::Subscribe { after: 0 })]
        );
        node.handle(from(M, forward(1..=1)));
        assert_eq!(node.handle(RelayInput::Tick), []);
        assert_eq!(
            node.handle(RelayInput::Tick),
            [to(M, RelayMsg::Subscribe { after: 1 })]
        );
    }

    #[test]
    fn parents_send_heads_each_tick_and_children_answer() {
        let mut root: Node = RelayNode::new(M, 0, RelayLimits::default());
        root.handle(from(b(), RelayMsg::Subscribe { after: 0 }));
        root.handle(RelayInput::Publish { seq: 1, event: 10 });
        let head = RelayMsg::Head {
            seq: 1,
            path: vec![M],
        };
        assert_eq!(root.handle(RelayInput::Tick), [to(b(), head.clone())]);
        let mut node = attached(b(), &[M], 1, RelayLimits::default());
        assert_eq!(
            node.handle(from(M, head)),
            [to(M, RelayMsg::Ack { seq: 1 })]
        );
        // Heads from a node that is not the parent: told to stop.
        assert_eq!(
            node.handle(from(
                c(),
                RelayMsg::Head {
                    seq: 1,
                    path: vec![M, c()]
                }
            )),
            [to(c(), RelayMsg::Unsubscribe)]
        );
    }

    #[test]
    fn reports_travel_up_through_other_peers() {
        let report = Report {
            node: d(),
            unusable: c(),
            why: Why::Unreachable,
            keeps: None,
            have: 7,
        };
        let mut node = attached(b(), &[M], 0, RelayLimits::default());
        assert_eq!(
            node.handle(from(d(), RelayMsg::Report(report.clone()))),
            [to(M, RelayMsg::Report(report.clone()))]
        );
        // Not through the reporter's own subtree.
        let mut below = attached(c(), &[M, d()], 0, RelayLimits::default());
        assert_eq!(
            below.handle(from(b(), RelayMsg::Report(report.clone()))),
            []
        );
        let mut root: Node = RelayNode::new(M, 0, RelayLimits::default());
        assert_eq!(
            root.handle(from(b(), RelayMsg::Report(report.clone()))),
            [RelayAction::Reported(report)]
        );
    }
}
