//! Per room, the shape of its spanning tree: which node relays the room's
//! events to which (pure; the room task sends the assignments as `Assign`
//! frames, and each peerhost's `Hub` does the relaying, see
//! `proto/dmuc/peering/v1/relay.proto`).
//!
//! The master is the root. Without a fan-out limit the tree is a star
//! (the master sends each event to every slave), unless a link is broken
//! or much slower than a detour: a slave goes under another slave only if
//! that path costs less, one relay hop included. With a maximum fan-out
//! `k`, no node has more than `k` children (the master sends each event at
//! most `k` times), and the tree is filled level by level, cheapest links
//! first.
//!
//! ```text
//!  slave needed / gone ──────▶ Tree::add / Tree::remove ─┐
//!  Report (a slave: lost parent,                         │
//!   refused) ─────────────────▶ Tree::report ────────────┼─▶ Vec<Assignment>
//!  keepalive RTTs,                                       │
//!  LinkHealth ─▶ Health ──▶ Tree::replan (drifted) ──────┘        │
//!                                                                 ▼
//!                                  Assign { parent, path } to each node
//! ```
//!
//! The master's links are measured by its keepalives (the round trip of
//! each peerhost's stream, `crate::fanout` copies it into the room's
//! [`Health`]). Links between peerhosts are measured by the peerhosts
//! themselves (pings over `TreeRelay`, reported on their own streams as
//! `LinkHealth`, taken by [`Health::reported`]: a peerhost speaks only of
//! links it is an end of, and a link is the worse of what its two ends
//! last said); a link nobody measured yet costs [`DEFAULT_RTT_MS`]. A link
//! a node reports it cannot use is broken until its stream is back (the
//! master's) or its ends report it again (between peerhosts).
//!
//! When the links have drifted from what the tree was last planned with
//! ([`Health::drifted`]: some link's cost moved by [`STICKY_MS`] or more),
//! the room replans, at most every `crate::fanout::REPLAN_EVERY`; the
//! replan moves only nodes whose path gets cheaper by more than
//! [`STICKY_MS`].
//!
//! # Minimal changes
//! A change moves as few nodes as it can: a new slave is placed under the
//! best parent with room; a slave that lost its parent, and the children
//! of a slave that goes, move with their whole subtrees to the best parent
//! outside them. Only when no such parent has room does the planner start
//! over ([`Tree::replan`]), keeping current links when they cost about the
//! same. A new parent is never the node itself nor one of its descendants,
//! so the tree never has a loop; the relays check again on their side.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// What relaying through one more node costs, as if it were this much
/// round trip: a detour is taken only when it saves more than this.
const HOP_MS: u64 = 50;
/// The round trip assumed for a link not measured yet.
pub const DEFAULT_RTT_MS: u32 = 100;
/// What each permille of loss adds to a link's cost.
const LOSS_MS_PER_PERMILLE: u64 = 5;
/// A broken link is used only when there is no other way.
const BROKEN_MS: u64 = 1_000_000;
/// A link in use is kept unless another is better by more than this; a
/// link whose cost moved by this much since the last plan calls for a
/// replan.
pub const STICKY_MS: u64 = 20;

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

/// Why a node cannot use its parent (see [`Report`]; the `Unusable` of a
/// slave's `TreeReport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The link to its parent is gone.
    Unreachable,
    /// The parent refused it as a child.
    Refused,
}

/// A node cannot use its parent: what the master learnt from the node's
/// `TreeReport`, or from its own stream ending (its parent, the master,
/// is unreachable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The node reporting.
    pub node: NodeId,
    /// The parent the node cannot use.
    pub unusable: NodeId,
    pub why: Why,
}

/// The measured health of the link between two nodes (either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub rtt_ms: u32,
    pub loss_permille: u16,
    /// A node reported that it cannot reach the other.
    pub broken: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            rtt_ms: DEFAULT_RTT_MS,
            loss_permille: 0,
            broken: false,
        }
    }
}

impl Link {
    /// The cost of relaying over this link: one hop, the round trip, loss,
    /// and a prohibitive cost if broken.
    pub fn cost(&self) -> u64 {
        HOP_MS
            + u64::from(self.rtt_ms)
            + u64::from(self.loss_permille) * LOSS_MS_PER_PERMILLE
            + if self.broken { BROKEN_MS } else { 0 }
    }
}

/// What one end of a link between two peerhosts says of it (a
/// `PeerLink` of its `LinkHealth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    pub rtt_ms: u32,
    pub loss_permille: u16,
    /// Any of its last pings was answered.
    pub reachable: bool,
}

impl Measured {
    fn link(&self) -> Link {
        Link {
            rtt_ms: self.rtt_ms,
            loss_permille: self.loss_permille.min(1000),
            broken: !self.reachable,
        }
    }
}

/// What the master knows of the links between nodes (it may be shared by
/// every room: links are between peerhosts, not rooms).
#[derive(Clone, Debug, Default)]
pub struct Health {
    links: BTreeMap<(NodeId, NodeId), Link>,
    /// What each end of a link between peerhosts last said of it: by
    /// (the end that said it, the other end).
    said: BTreeMap<(NodeId, NodeId), Measured>,
}

impl Health {
    /// A measurement of the link between `a` and `b`: it works.
    pub fn measured(&mut self, a: &NodeId, b: &NodeId, rtt_ms: u32, loss_permille: u16) {
        *self.entry(a, b) = Link {
            rtt_ms,
            loss_permille,
            broken: false,
        };
    }

    /// `a` cannot reach `b` (or the other way round).
    pub fn broken(&mut self, a: &NodeId, b: &NodeId) {
        self.entry(a, b).broken = true;
    }

    /// The link between `a` and `b` works again.
    pub fn healed(&mut self, a: &NodeId, b: &NodeId) {
        self.entry(a, b).broken = false;
    }

    /// `by` says how the link between `a` and `b` is. Taken only from an
    /// end of the link, and only between two peerhosts (the master
    /// measures its own links): a peerhost cannot speak for others' links.
    /// The link is then the worse of what its two ends last said, so that
    /// one end cannot make it look better than the other sees it (and a
    /// link usable one way only counts as broken); this replaces a
    /// `broken` that a report of a node set. Returns whether it was taken.
    pub fn reported(&mut self, by: &NodeId, a: &NodeId, b: &NodeId, measured: Measured) -> bool {
        if a == b || a.is_master() || b.is_master() || (by != a && by != b) {
            return false;
        }
        let other = if by == a { b } else { a };
        self.said.insert((by.clone(), other.clone()), measured);
        let worse = [(a, b), (b, a)]
            .iter()
            .filter_map(|(x, y)| self.said.get(&((*x).clone(), (*y).clone())))
            .map(Measured::link)
            .max_by_key(Link::cost)
            .expect("just said");
        *self.entry(a, b) = worse;
        true
    }

    /// Whether any link's cost moved by [`STICKY_MS`] or more since
    /// `planned` (the health the tree was last planned with).
    pub fn drifted(&self, planned: &Health) -> bool {
        self.links
            .keys()
            .chain(planned.links.keys())
            .any(|(a, b)| self.cost(a, b).abs_diff(planned.cost(a, b)) >= STICKY_MS)
    }

    /// The link between `a` and `b` as known (the defaults if never measured).
    pub fn link(&self, a: &NodeId, b: &NodeId) -> Link {
        self.links.get(&key(a, b)).copied().unwrap_or_default()
    }

    pub fn cost(&self, a: &NodeId, b: &NodeId) -> u64 {
        self.link(a, b).cost()
    }

    fn entry(&mut self, a: &NodeId, b: &NodeId) -> &mut Link {
        self.links.entry(key(a, b)).or_default()
    }
}

fn key(a: &NodeId, b: &NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

/// A node placed while planning.
#[derive(Clone, Copy, Debug, Default)]
struct Placed {
    /// Its path's cost.
    cost: u64,
    depth: usize,
    children: usize,
}

/// A candidate step while planning: `node` under `parent`.
#[derive(Debug)]
struct Step {
    /// Cost (less a bonus for a current link), depth, the parent's
    /// children, whether the link is new: lowest first.
    rank: (u64, usize, usize, bool),
    parent: NodeId,
    node: NodeId,
    /// The node's path cost.
    cost: u64,
}

/// How a master's rooms run spanning trees (`[peering] max_fanout`; 0: a
/// star, still with detours).
#[derive(Debug)]
pub struct TreeSetup {
    /// Children per node at most (the master included).
    pub max_fanout: usize,
    /// Signs the events slaves relay to each other.
    pub signer: dmuc_protocol::signing::Signer,
    /// Each peerhost's key to seal the frames its parents carry up.
    pub report_keys: dmuc_protocol::signing::ReportKeys,
    /// Where rooms register their `dmuc_tree_*` and `dmuc_reparents_total`.
    pub metrics: dmuc_component::metrics::Metrics,
}

/// Tell `node` its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub node: NodeId,
    pub parent: NodeId,
    /// The parent's path from the root: the master first, `parent` last.
    pub path: Vec<NodeId>,
}

/// The tree's shape, for observability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Slaves in the tree.
    pub nodes: usize,
    /// The longest path from the master, in hops (1 for a star).
    pub depth: usize,
    /// The most children any node has.
    pub max_fanout: usize,
    /// The master's children: how many times it sends each event.
    pub master_fanout: usize,
    /// Slaves moved to another parent so far.
    pub reparents: u64,
}

/// One room's tree: every slave's parent.
#[derive(Clone, Debug)]
pub struct Tree {
    /// `usize::MAX`: no limit.
    max_fanout: usize,
    parents: BTreeMap<NodeId, NodeId>,
    reparents: u64,
}

impl Default for Tree {
    /// A star: no fan-out limit.
    fn default() -> Self {
        Tree::new(0)
    }
}

impl Tree {
    /// An empty tree whose nodes have at most `max_fanout` children each;
    /// 0 means no limit (a star).
    pub fn new(max_fanout: usize) -> Self {
        Tree {
            max_fanout: if max_fanout == 0 {
                usize::MAX
            } else {
                max_fanout
            },
            parents: BTreeMap::new(),
            reparents: 0,
        }
    }

    /// The slaves in the tree.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.parents.keys()
    }

    pub fn contains(&self, node: &NodeId) -> bool {
        self.parents.contains_key(node)
    }

    pub fn parent(&self, node: &NodeId) -> Option<&NodeId> {
        self.parents.get(node)
    }

    pub fn children(&self, node: &NodeId) -> Vec<NodeId> {
        self.parents
            .iter()
            .filter(|(_, parent)| *parent == node)
            .map(|(child, _)| child.clone())
            .collect()
    }

    /// `node`'s path from the root, the master first and `node` last.
    pub fn path(&self, node: &NodeId) -> Vec<NodeId> {
        let mut path = vec![node.clone()];
        let mut at = node;
        while let Some(parent) = self.parents.get(at) {
            path.push(parent.clone());
            at = parent;
            debug_assert!(path.len() <= self.parents.len() + 1, "no loop");
        }
        path.reverse();
        path
    }

    /// `node`'s current assignment (to send it again).
    pub fn assignment(&self, node: &NodeId) -> Option<Assignment> {
        let parent = self.parents.get(node)?;
        Some(Assignment {
            node: node.clone(),
            parent: parent.clone(),
            path: self.path(parent),
        })
    }

    pub fn stats(&self) -> TreeStats {
        let mut fanout: BTreeMap<&NodeId, usize> = BTreeMap::new();
        for parent in self.parents.values() {
            *fanout.entry(parent).or_default() += 1;
        }
        TreeStats {
            nodes: self.parents.len(),
            depth: self
                .parents
                .keys()
                .map(|node| self.path(node).len() - 1)
                .max()
                .unwrap_or(0),
            max_fanout: fanout.values().copied().max().unwrap_or(0),
            master_fanout: fanout.get(&NodeId::Master).copied().unwrap_or(0),
            reparents: self.reparents,
        }
    }

    /// A slave joins the tree (a domain of the room got a slave): placed
    /// under the best parent with room. Nobody else moves.
    pub fn add(&mut self, node: NodeId, health: &Health) -> Vec<Assignment> {
        if node.is_master() {
            return Vec::new();
        }
        if self.contains(&node) {
            return self.assignment(&node).into_iter().collect();
        }
        match self.best_parent(&node, None, health) {
            Some(parent) => {
                self.parents.insert(node.clone(), parent);
                self.assignment(&node).into_iter().collect()
            }
            None => {
                // Cannot happen with a fan-out of at least 1 (a leaf has
                // room), but starting over is always possible.
                self.parents.insert(node.clone(), NodeId::Master);
                let mut moves = self.replan(health);
                self.must_tell(&node, &mut moves);
                moves
            }
        }
    }

    /// A slave leaves the tree: its children move, with their subtrees,
    /// to the best parents with room.
    pub fn remove(&mut self, node: &NodeId, health: &Health) -> Vec<Assignment> {
        if self.parents.remove(node).is_none() {
            return Vec::new();
        }
        let orphans = self.children(node);
        let mut moves = Vec::new();
        for orphan in &orphans {
            match self.best_parent(orphan, None, health) {
                Some(parent) => {
                    self.parents.insert(orphan.clone(), parent);
                    self.reparents += 1;
                    moves.extend(self.assignment(orphan));
                }
                None => {
                    let mut moves = self.replan(health);
                    for orphan in &orphans {
                        self.must_tell(orphan, &mut moves);
                    }
                    return moves;
                }
            }
        }
        moves
    }

    /// A node's report reached the master: find the node a parent. An
    /// unreachable parent marks the link broken in `health`.
    pub fn report(&mut self, report: &Report, health: &mut Health) -> Vec<Assignment> {
        let node = &report.node;
        let Some(current) = self.parents.get(node).cloned() else {
            // Not (any longer) a slave of this room.
            return Vec::new();
        };
        if report.why == Why::Unreachable {
            health.broken(node, &report.unusable);
        }
        // The node has no parent now.
        if current != report.unusable {
            // We moved it already; it has not heard yet.
            return self.assignment(node).into_iter().collect();
        }
        match self.best_parent(node, Some(&report.unusable), health) {
            Some(parent) => {
                self.parents.insert(node.clone(), parent);
                self.reparents += 1;
                self.assignment(node).into_iter().collect()
            }
            None => {
                let mut moves = self.replan(health);
                self.must_tell(node, &mut moves);
                moves
            }
        }
    }

    /// Plans the whole tree again for the links as they are now, keeping
    /// current links unless another is better by more than a little.
    /// Returns the moves, shallowest first (a node's new ancestors move
    /// before it, so that applying them in order never makes a loop).
    pub fn replan(&mut self, health: &Health) -> Vec<Assignment> {
        let old = std::mem::take(&mut self.parents);
        let nodes: BTreeSet<NodeId> = old.keys().cloned().collect();
        self.parents = self.plan(&nodes, &old, health);
        let mut moved: Vec<&NodeId> = self
            .parents
            .iter()
            .filter(|(node, parent)| old.get(*node) != Some(*parent))
            .map(|(node, _)| node)
            .collect();
        moved.sort_by_key(|node| (self.path(node).len(), (*node).clone()));
        let moves: Vec<Assignment> = moved
            .into_iter()
            .filter_map(|node| self.assignment(node))
            .collect();
        self.reparents += moves.len() as u64;
        moves
    }

    /// Whether `node` is `top` or below it.
    fn is_within(&self, node: &NodeId, top: &NodeId) -> bool {
        self.path(node).contains(top)
    }

    /// Whether `node`'s path leads to the master (not while a node above
    /// it waits for a new parent).
    fn is_rooted(&self, node: &NodeId) -> bool {
        self.path(node)[0].is_master()
    }

    fn fanout(&self, node: &NodeId) -> usize {
        self.parents
            .values()
            .filter(|parent| *parent == node)
            .count()
    }

    /// The cost of `node`'s path from the root.
    fn path_cost(&self, node: &NodeId, health: &Health) -> u64 {
        self.path(node)
            .windows(2)
            .map(|pair| health.cost(&pair[0], &pair[1]))
            .sum()
    }

    /// The best parent for `node` (and its subtree, if it is in the tree)
    /// outside that subtree and in the tree, other than `avoid`, with room for one more
    /// child: the cheapest path, then the shallowest, then the fewest
    /// children (balance), then its current parent.
    fn best_parent(
        &self,
        node: &NodeId,
        avoid: Option<&NodeId>,
        health: &Health,
    ) -> Option<NodeId> {
        let current = self.parents.get(node);
        std::iter::once(&NodeId::Master)
            .chain(self.parents.keys())
            .filter(|candidate| {
                Some(*candidate) != avoid
                    && self.is_rooted(candidate)
                    && !self.is_within(candidate, node)
                    && self.fanout(candidate) - usize::from(current == Some(*candidate))
                        < self.max_fanout
            })
            .min_by_key(|candidate| {
                (
                    self.path_cost(candidate, health) + health.cost(candidate, node),
                    self.path(candidate).len(),
                    self.fanout(candidate),
                    current != Some(*candidate),
                    (*candidate).clone(),
                )
            })
            .cloned()
    }

    /// A whole tree for `nodes`: grown from the master, each step adding
    /// the node with the cheapest path through a placed node with room
    /// (then the shallowest, then the parent with fewest children, so that
    /// equal links give a balanced tree; then the current link).
    fn plan(
        &self,
        nodes: &BTreeSet<NodeId>,
        current: &BTreeMap<NodeId, NodeId>,
        health: &Health,
    ) -> BTreeMap<NodeId, NodeId> {
        let mut placed: BTreeMap<NodeId, Placed> = BTreeMap::new();
        placed.insert(NodeId::Master, Placed::default());
        let mut parents = BTreeMap::new();
        let mut left = nodes.clone();
        while !left.is_empty() {
            let mut best: Option<Step> = None;
            for (parent, at) in &placed {
                if at.children >= self.max_fanout {
                    continue;
                }
                for node in &left {
                    let cost = at.cost + health.cost(parent, node);
                    let kept = current.get(node) == Some(parent);
                    let rank = (
                        if kept {
                            cost.saturating_sub(STICKY_MS)
                        } else {
                            cost
                        },
                        at.depth + 1,
                        at.children,
                        !kept,
                    );
                    if best.as_ref().is_none_or(|step| rank < step.rank) {
                        best = Some(Step {
                            rank,
                            parent: parent.clone(),
                            node: node.clone(),
                            cost,
                        });
                    }
                }
            }
            let Some(step) = best else {
                // Only with no room anywhere, which a fan-out >= 1 rules out.
                break;
            };
            let depth = step.rank.1;
            if let Some(at) = placed.get_mut(&step.parent) {
                at.children += 1;
            }
            placed.insert(
                step.node.clone(),
                Placed {
                    cost: step.cost,
                    depth,
                    children: 0,
                },
            );
            left.remove(&step.node);
            parents.insert(step.node, step.parent);
        }
        parents
    }

    /// Makes sure `node` (which has no parent now) hears its assignment.
    fn must_tell(&self, node: &NodeId, moves: &mut Vec<Assignment>) {
        if !moves.iter().any(|m| &m.node == node)
            && let Some(assignment) = self.assignment(node)
        {
            moves.push(assignment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: NodeId = NodeId::Master;

    fn n(domain: &str) -> NodeId {
        NodeId::peer(domain)
    }

    /// b.test, c.test, ...
    fn domains(count: usize) -> Vec<NodeId> {
        (0..count)
            .map(|i| n(&format!("{}.test", (b'b' + i as u8) as char)))
            .collect()
    }

    fn grown(max_fanout: usize, nodes: &[NodeId], health: &Health) -> Tree {
        let mut tree = Tree::new(max_fanout);
        for node in nodes {
            tree.add(node.clone(), health);
        }
        tree
    }

    fn assignment(node: &str, parent: NodeId, path: &[NodeId]) -> Assignment {
        Assignment {
            node: n(node),
            parent,
            path: path.to_vec(),
        }
    }

    fn parents(tree: &Tree) -> BTreeMap<NodeId, NodeId> {
        tree.parents.clone()
    }

    /// Every node's path leads to the master without a loop, and no node
    /// has more children than allowed.
    fn check(tree: &Tree) {
        for node in tree.nodes() {
            let mut at = node;
            let mut hops = 0;
            while let Some(parent) = tree.parent(at) {
                hops += 1;
                assert!(hops <= tree.parents.len(), "loop through {node}");
                at = parent;
            }
            assert_eq!(at, &M, "{node} is rooted");
            assert!(tree.fanout(node) <= tree.max_fanout);
        }
        assert!(tree.fanout(&M) <= tree.max_fanout);
    }

    #[test]
    fn a_star_by_default() {
        let health = Health::default();
        let mut tree = Tree::default();
        for node in domains(6) {
            assert_eq!(
                tree.add(node.clone(), &health),
                [Assignment {
                    node,
                    parent: M,
                    path: vec![M],
                }]
            );
        }
        let stats = tree.stats();
        assert_eq!((stats.depth, stats.master_fanout, stats.nodes), (1, 6, 6));
    }

    #[test]
    fn fan_out_two_with_six_domains_gives_a_balanced_tree() {
        let nodes = domains(6);
        let tree = grown(2, &nodes, &Health::default());
        check(&tree);
        let [b, c, d, e, f, g] = &nodes[..] else {
            unreachable!()
        };
        assert_eq!(
            parents(&tree),
            BTreeMap::from([
                (b.clone(), M),
                (c.clone(), M),
                (d.clone(), b.clone()),
                (e.clone(), c.clone()),
                (f.clone(), b.clone()),
                (g.clone(), c.clone()),
            ])
        );
        let stats = tree.stats();
        assert_eq!(
            (stats.depth, stats.master_fanout, stats.max_fanout),
            (2, 2, 2)
        );
    }

    /// The acceptance criterion, on the tree itself: over a tree of
    /// fan-out 2, the master sends each event twice, and an event sent
    /// down the tree (each node to its children) reaches every slave once.
    #[test]
    fn with_fan_out_two_and_six_domains_the_master_sends_each_event_twice() {
        let nodes = domains(6);
        let tree = grown(2, &nodes, &Health::default());
        let mut reached: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut sent: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut wave = vec![M];
        while let Some(at) = wave.pop() {
            for child in tree.children(&at) {
                *sent.entry(at.clone()).or_default() += 1;
                *reached.entry(child.clone()).or_default() += 1;
                assert!(reached.len() <= nodes.len(), "a loop through {child}");
                wave.push(child);
            }
        }
        assert_eq!(sent[&M], 2);
        for node in &nodes {
            assert_eq!(reached.get(node), Some(&1), "{node}");
            assert_eq!(
                sent.get(node).copied().unwrap_or(0),
                tree.children(node).len()
            );
        }
    }

    #[test]
    fn a_broken_link_is_routed_around_via_a_third_node() {
        let mut health = Health::default();
        let nodes = domains(3);
        let mut tree = grown(0, &nodes, &health);
        let report = Report {
            node: n("c.test"),
            unusable: M,
            why: Why::Unreachable,
        };
        assert_eq!(
            tree.report(&report, &mut health),
            [assignment("c.test", n("b.test"), &[M, n("b.test")])]
        );
        assert!(health.link(&M, &n("c.test")).broken);
        assert_eq!(tree.parent(&n("b.test")), Some(&M));
        assert_eq!(tree.parent(&n("d.test")), Some(&M));
        // The same report again (it went by two paths): the same answer.
        assert_eq!(
            tree.report(&report, &mut health),
            [assignment("c.test", n("b.test"), &[M, n("b.test")])]
        );
        assert_eq!(tree.stats().reparents, 1);
        // Once the link heals, a replan makes it a star again.
        health.healed(&M, &n("c.test"));
        assert_eq!(tree.replan(&health), [assignment("c.test", M, &[M])]);
    }

    #[test]
    fn parents_are_chosen_by_link_health() {
        let (b, c) = (n("b.test"), n("c.test"));
        let mut health = Health::default();
        health.measured(&M, &b, 20, 0);
        health.measured(&b, &c, 10, 0);
        // A direct link slower than the detour by less than a hop: direct.
        health.measured(&M, &c, 60, 0);
        let tree = grown(0, &[b.clone(), c.clone()], &health);
        assert_eq!(tree.parent(&c), Some(&M));
        // Much slower, or lossy: through b.
        health.measured(&M, &c, 300, 0);
        let tree = grown(0, &[b.clone(), c.clone()], &health);
        assert_eq!(tree.parent(&c), Some(&b));
        health.measured(&M, &c, 60, 20);
        let tree = grown(0, &[b.clone(), c.clone()], &health);
        assert_eq!(tree.parent(&c), Some(&b));
        // With room for one child only, a replan gives the master the best
        // link (growing the tree placed c first).
        let mut tree = grown(1, &[c.clone(), b.clone()], &health);
        assert_eq!((tree.parent(&b), tree.parent(&c)), (Some(&c), Some(&M)));
        assert_eq!(
            tree.replan(&health),
            [
                assignment("b.test", M, &[M]),
                assignment("c.test", b.clone(), &[M, b.clone()]),
            ]
        );
    }

    #[test]
    fn reparenting_moves_one_node_with_its_subtree() {
        let mut health = Health::default();
        let nodes = domains(6);
        let mut tree = grown(2, &nodes, &health);
        let before = parents(&tree);
        let report = Report {
            node: n("b.test"),
            unusable: M,
            why: Why::Unreachable,
        };
        // b (with d and f) goes under a leaf of c's subtree: the master
        // and c are full.
        assert_eq!(
            tree.report(&report, &mut health),
            [assignment(
                "b.test",
                n("e.test"),
                &[M, n("c.test"), n("e.test")]
            )]
        );
        check(&tree);
        let after = parents(&tree);
        let moved: Vec<&NodeId> = after
            .keys()
            .filter(|node| before[*node] != after[*node])
            .collect();
        assert_eq!(moved, [&n("b.test")]);
        assert_eq!(tree.path(&n("f.test")).len(), 5);
        assert_eq!(tree.stats().depth, 4);
    }

    #[test]
    fn a_leaving_relay_s_children_find_new_parents() {
        let health = Health::default();
        let nodes = domains(6);
        let mut tree = grown(2, &nodes, &health);
        assert_eq!(
            tree.remove(&n("b.test"), &health),
            [
                assignment("d.test", M, &[M]),
                assignment("f.test", n("d.test"), &[M, n("d.test")]),
            ]
        );
        check(&tree);
        assert_eq!(tree.stats().nodes, 5);
        assert_eq!(tree.remove(&n("b.test"), &health), []);
    }

    #[test]
    fn refused_parents_are_avoided() {
        let mut health = Health::default();
        let nodes = domains(3);
        let mut tree = grown(0, &nodes, &health);
        for _ in 0..2 {
            let from = tree.parent(&n("c.test")).unwrap().clone();
            let report = Report {
                node: n("c.test"),
                unusable: from.clone(),
                why: Why::Refused,
            };
            let moves = tree.report(&report, &mut health);
            assert_eq!(moves.len(), 1);
            assert_ne!(moves[0].parent, from);
            // Not a broken link: nothing marked.
            assert!(!health.link(&from, &n("c.test")).broken);
            check(&tree);
        }
        // Reports of nodes that are not in the tree are ignored.
        let stranger = Report {
            node: n("z.test"),
            unusable: M,
            why: Why::Unreachable,
        };
        assert_eq!(tree.report(&stranger, &mut health), []);
    }

    #[test]
    fn replan_keeps_links_that_cost_about_the_same() {
        let (b, c) = (n("b.test"), n("c.test"));
        let mut health = Health::default();
        let mut tree = grown(0, &[b.clone(), c.clone()], &health);
        assert_eq!(tree.replan(&health), []);
        // Through b costs 300; direct costs 305: not worth a move.
        health.measured(&M, &c, 255, 0);
        assert_eq!(tree.replan(&health), []);
        health.measured(&M, &c, 400, 0);
        assert_eq!(
            tree.replan(&health),
            [assignment("c.test", b.clone(), &[M, b.clone()])]
        );
        let nodes = domains(6);
        let mut tree = grown(2, &nodes, &Health::default());
        assert_eq!(tree.replan(&Health::default()), []);
    }

    fn up(rtt_ms: u32) -> Measured {
        Measured {
            rtt_ms,
            loss_permille: 0,
            reachable: true,
        }
    }

    /// The issue's "parents preferred by measured link health": c.test
    /// is far from the master; once b.test measures a fast link to it,
    /// the replan puts c under b, and back under the master when that
    /// link degrades.
    #[test]
    fn a_measured_fast_peer_link_draws_a_slave_under_that_peer_and_back() {
        let (b, c) = (n("b.test"), n("c.test"));
        let mut health = Health::default();
        health.measured(&M, &b, 10, 0);
        health.measured(&M, &c, 120, 0);
        // Unmeasured, b-c costs the default: through b (60 + 150) is
        // dearer than direct (170).
        let mut tree = grown(0, &[b.clone(), c.clone()], &health);
        assert_eq!(tree.parent(&c), Some(&M));
        let planned = health.clone();
        assert!(health.reported(&b, &b, &c, up(5)));
        assert!(health.drifted(&planned));
        assert_eq!(
            tree.replan(&health),
            [assignment("c.test", b.clone(), &[M, b.clone()])]
        );
        // c sees the link as slow and lossy: the worse end counts.
        let planned = health.clone();
        let slow = Measured {
            rtt_ms: 90,
            loss_permille: 20,
            reachable: true,
        };
        assert!(health.reported(&c, &c, &b, slow));
        assert_eq!(health.link(&b, &c).rtt_ms, 90);
        assert!(health.drifted(&planned));
        assert_eq!(tree.replan(&health), [assignment("c.test", M, &[M])]);
        // Both ends see it fast again: under b again.
        assert!(health.reported(&c, &b, &c, up(4)));
        assert_eq!(health.link(&b, &c).rtt_ms, 5);
        assert_eq!(
            tree.replan(&health),
            [assignment("c.test", b.clone(), &[M, b.clone()])]
        );
        // An end that cannot reach the other breaks the link.
        assert!(health.reported(
            &c,
            &c,
            &b,
            Measured {
                reachable: false,
                ..up(4)
            }
        ));
        assert!(health.link(&b, &c).broken);
        assert_eq!(tree.replan(&health), [assignment("c.test", M, &[M])]);
    }

    #[test]
    fn a_peer_speaks_only_for_its_own_links_between_peerhosts() {
        let (b, c, d) = (n("b.test"), n("c.test"), n("d.test"));
        let mut health = Health::default();
        let before = health.clone();
        // d is no end of b-c; nobody reports the master's links (it
        // measures them itself); a link to oneself is no link.
        assert!(!health.reported(&d, &b, &c, up(1)));
        assert!(!health.reported(&b, &b, &M, up(1)));
        assert!(!health.reported(&b, &b, &b, up(1)));
        assert_eq!(health.link(&b, &c), Link::default());
        assert_eq!(health.link(&b, &M), Link::default());
        assert!(!health.drifted(&before));
        let mut tree = grown(0, &[b.clone(), c.clone(), d.clone()], &health);
        assert_eq!(tree.replan(&health), []);
    }

    #[test]
    fn small_changes_do_not_call_for_a_replan_but_their_sum_does() {
        let (b, c) = (n("b.test"), n("c.test"));
        let mut health = Health::default();
        health.reported(&b, &b, &c, up(40));
        let planned = health.clone();
        health.reported(&b, &b, &c, up(55));
        assert!(!health.drifted(&planned), "15 ms");
        health.reported(&b, &b, &c, up(60));
        assert!(health.drifted(&planned), "20 ms since the plan");
    }

    /// A small deterministic generator (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random fan-outs, link health and failures: the tree never has a
    /// loop or an overfull node, and the assignments, applied in order to
    /// what the nodes have, give exactly the master's tree without ever
    /// making a loop on the way.
    #[test]
    fn no_loops_under_random_health_and_failures() {
        let pool = domains(9);
        let pick = |rng: &mut Rng| pool[rng.below(pool.len())].clone();
        for seed in 0..400 {
            let mut rng = Rng(seed);
            let mut tree = Tree::new(rng.below(4));
            let mut health = Health::default();
            // What the nodes themselves have as parents.
            let mut world: BTreeMap<NodeId, NodeId> = BTreeMap::new();
            for _ in 0..60 {
                let node = pick(&mut rng);
                let moves = match rng.below(9) {
                    0 | 1 => tree.add(node.clone(), &health),
                    2 => {
                        world.remove(&node);
                        tree.remove(&node, &health)
                    }
                    3..=6 if tree.contains(&node) => {
                        let current = tree.parent(&node).unwrap().clone();
                        // Mostly about its current parent; sometimes stale.
                        let unusable = if rng.below(4) == 0 {
                            pick(&mut rng)
                        } else {
                            current
                        };
                        let why = [Why::Unreachable, Why::Refused][rng.below(2)];
                        world.remove(&node);
                        let report = Report {
                            node: node.clone(),
                            unusable,
                            why,
                        };
                        tree.report(&report, &mut health)
                    }
                    7 => {
                        let other = if rng.below(3) == 0 { M } else { pick(&mut rng) };
                        if rng.below(2) == 0 {
                            health.broken(&node, &other);
                        } else {
                            health.measured(
                                &node,
                                &other,
                                rng.below(400) as u32,
                                rng.below(50) as u16,
                            );
                        }
                        Vec::new()
                    }
                    8 => tree.replan(&health),
                    _ => Vec::new(),
                };
                check(&tree);
                for m in &moves {
                    assert_eq!(m.path, tree.path(&m.parent), "seed {seed}");
                    assert!(!m.path.contains(&m.node), "seed {seed}");
                    world.insert(m.node.clone(), m.parent.clone());
                }
                world.retain(|node, _| tree.contains(node));
                assert_eq!(world, parents(&tree), "seed {seed}");
            }
        }
    }

    /// Replanning's moves, applied one at a time in the order given, never
    /// make a loop.
    #[test]
    fn replan_moves_apply_in_order_without_loops() {
        let pool = domains(9);
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let mut health = Health::default();
            let mut tree = grown(1 + rng.below(3), &pool, &health);
            for _ in 0..12 {
                let a = pool[rng.below(pool.len())].clone();
                let b = if rng.below(3) == 0 {
                    M
                } else {
                    pool[rng.below(pool.len())].clone()
                };
                health.measured(&a, &b, rng.below(500) as u32, rng.below(30) as u16);
            }
            let mut world = parents(&tree);
            for m in tree.replan(&health) {
                world.insert(m.node.clone(), m.parent.clone());
                for start in world.keys() {
                    let mut at = start;
                    for _ in 0..=world.len() {
                        match world.get(at) {
                            Some(parent) => at = parent,
                            None => break,
                        }
                    }
                    assert_eq!(at, &M, "seed {seed}: {start} loops");
                }
            }
            assert_eq!(world, parents(&tree));
            check(&tree);
        }
    }
}
