//! The relay of a room's tree over a simulated network: a master and a few
//! slaves, every message lost, delayed, reordered or duplicated at random,
//! links breaking, the master moving nodes (or proposing loops), catch-ups
//! from the master's history. Once the links heal, every slave has
//! delivered exactly the master's events 1..=M, each once and in order.
//!
//! The simulated master keeps its view of the tree (who it assigned to
//! whom) and reacts to reports at once (unless a report is lost on the
//! way: then the orphan reports again at its next tick). It only assigns
//! parents outside the node's subtree as it sees it, except for the
//! "rogue" assignments, which may name the node itself or a descendant:
//! the node must decline those. After every step the real parents form no
//! loop, and each real parent is the one the master assigned.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dmuc_room::relay::{
    NodeId, RelayAction, RelayInput, RelayLimits, RelayMsg, RelayNode, Report, Why,
};
use proptest::prelude::*;

type Event = String;

/// The payload of event `seq`, as the master published it.
fn payload(seq: u64) -> Event {
    format!("e{seq}")
}

/// One step of the run.
#[derive(Clone, Debug)]
enum Op {
    /// The master publishes its next event (until it has published M).
    Publish,
    /// A message in flight (any: delays and reorders) arrives.
    Deliver(usize),
    /// A message in flight is lost.
    Drop(usize),
    /// A message in flight will arrive twice.
    Duplicate(usize),
    /// A node's timer fires (0 is the master).
    Tick(usize),
    /// A slave's link to its parent breaks: the slave notices (and, if
    /// `both`, the parent too); its report may be lost on the way.
    LinkLost {
        node: usize,
        both: bool,
        report_lost: bool,
    },
    /// The master moves a slave to another parent outside its subtree.
    Move(usize),
    /// The master assigns a slave any node as parent (itself, a
    /// descendant, ...), with that node's true path.
    Rogue { node: usize, parent: usize },
    /// The master sends a slave its history after what the slave has,
    /// minus `back` (duplicates).
    MasterPush { node: usize, back: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Publish),
        12 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Duplicate),
        3 => any::<usize>().prop_map(Op::Tick),
        1 => (any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(node, both, report_lost)| Op::LinkLost { node, both, report_lost }),
        1 => any::<usize>().prop_map(Op::Move),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(node, parent)| Op::Rogue { node, parent }),
        1 => (any::<usize>(), 0u64..4).prop_map(|(node, back)| Op::MasterPush { node, back }),
    ]
}

/// A small deterministic generator for the master's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize].clone()
    }
}

struct Sim {
    nodes: BTreeMap<NodeId, RelayNode<Event>>,
    /// The slaves, by index.
    peers: Vec<NodeId>,
    flight: Vec<(NodeId, NodeId, RelayMsg<Event>)>,
    /// The master's view of the tree: slave to parent.
    assigned: BTreeMap<NodeId, NodeId>,
    /// Reports for the master, handled at once.
    reports: VecDeque<Report>,
    /// What each slave delivered, in order.
    delivered: BTreeMap<NodeId, Vec<u64>>,
    published: u64,
    m: u64,
    rng: Rng,
    /// Links heal: nothing is lost any more and the master assigns
    /// itself as the parent of whoever reports.
    healing: bool,
    drop_next_report: bool,
}

impl Sim {
    fn new(n: usize, m: u64, shape: &[usize], limits: RelayLimits, seed: u64) -> Sim {
        let peers: Vec<NodeId> = (0..n)
            .map(|i| NodeId::peer(&format!("p{i}.test")))
            .collect();
        let mut nodes = BTreeMap::new();
        nodes.insert(
            NodeId::Master,
            RelayNode::new(
                NodeId::Master,
                0,
                RelayLimits {
                    window: 1024,
                    buffer: limits.buffer,
                },
            ),
        );
        for id in &peers {
            nodes.insert(id.clone(), RelayNode::new(id.clone(), 0, limits));
        }
        let mut sim = Sim {
            nodes,
            delivered: peers.iter().map(|id| (id.clone(), Vec::new())).collect(),
            peers,
            flight: Vec::new(),
            assigned: BTreeMap::new(),
            reports: VecDeque::new(),
            published: 0,
            m,
            rng: Rng(seed),
            healing: false,
            drop_next_report: false,
        };
        // A random tree: each slave under the master or an earlier slave.
        for (i, choice) in shape.iter().enumerate().take(n) {
            let parent = match choice % (i + 1) {
                0 => NodeId::Master,
                j => sim.peers[j - 1].clone(),
            };
            let node = sim.peers[i].clone();
            sim.assign(&node, parent);
        }
        sim
    }

    /// Node `id`'s path from the root as the master sees it, if it has one
    /// (not if it, or a node above it, waits for a parent).
    fn view_path(&self, id: &NodeId) -> Option<Vec<NodeId>> {
        let mut path = vec![id.clone()];
        let mut at = id;
        while let Some(parent) = self.assigned.get(at) {
            assert!(
                path.len() <= self.peers.len() + 1,
                "loop in the master's view"
            );
            path.push(parent.clone());
            at = parent;
        }
        path.reverse();
        at.is_master().then_some(path)
    }

    /// The parents the master may give `node`: outside its subtree.
    fn candidates(&self, node: &NodeId) -> Vec<NodeId> {
        let mut all = vec![NodeId::Master];
        all.extend(
            self.peers
                .iter()
                .filter(|p| self.view_path(p).is_some_and(|path| !path.contains(node)))
                .cloned(),
        );
        all
    }

    fn assign(&mut self, node: &NodeId, parent: NodeId) {
        let path = self.view_path(&parent).expect("a parent with a path");
        self.assigned.insert(node.clone(), parent.clone());
        self.input(node, RelayInput::Assign { parent, path });
    }

    /// The master answers reports until there are none.
    fn master(&mut self) {
        while let Some(report) = self.reports.pop_front() {
            let node = report.node.clone();
            match (&report.why, &report.keeps) {
                (Why::Declined, Some(keeps)) => {
                    self.assigned.insert(node, keeps.clone());
                }
                _ => {
                    // The node has no parent: find it one (not the one it
                    // cannot use, if there is another).
                    self.assigned.remove(&node);
                    let parent = if self.healing || report.why == Why::Declined {
                        NodeId::Master
                    } else {
                        let mut options = self.candidates(&node);
                        if options.len() > 1 {
                            options.retain(|p| *p != report.unusable);
                        }
                        self.rng.pick(&options)
                    };
                    self.assign(&node, parent);
                }
            }
        }
    }

    fn input(&mut self, at: &NodeId, input: RelayInput<Event>) {
        let actions = self.nodes.get_mut(at).expect("node").handle(input);
        for action in actions {
            match action {
                RelayAction::Deliver { seq, event } => {
                    let log = self.delivered.get_mut(at).expect("slave");
                    assert_eq!(seq, log.len() as u64 + 1, "{at} delivers in order, once");
                    assert_eq!(event, payload(seq), "{at} delivers the master's event");
                    log.push(seq);
                }
                RelayAction::Send { to, msg } => self.flight.push((at.clone(), to, msg)),
                RelayAction::Report(report) => {
                    if std::mem::take(&mut self.drop_next_report) && !self.healing {
                        continue;
                    }
                    self.reports.push_back(report);
                }
                RelayAction::Reported(report) => self.reports.push_back(report),
                RelayAction::Resync { node, after } => {
                    panic!("the master keeps its whole history: no resync ({node} after {after})")
                }
            }
        }
    }

    fn publish(&mut self) {
        if self.published < self.m {
            self.published += 1;
            let seq = self.published;
            self.input(
                &NodeId::Master,
                RelayInput::Publish {
                    seq,
                    event: payload(seq),
                },
            );
        }
    }

    fn arrive(&mut self, index: usize) {
        let (from, to, msg) = self.flight.remove(index);
        self.input(&to, RelayInput::Receive { from, msg });
    }

    fn peer(&self, index: usize) -> NodeId {
        self.peers[index % self.peers.len()].clone()
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Publish => self.publish(),
            Op::Deliver(i) if !self.flight.is_empty() => self.arrive(i % self.flight.len()),
            Op::Drop(i) if !self.flight.is_empty() => {
                self.flight.remove(i % self.flight.len());
            }
            Op::Duplicate(i) if !self.flight.is_empty() => {
                let copy = self.flight[i % self.flight.len()].clone();
                self.flight.push(copy);
            }
            Op::Deliver(_) | Op::Drop(_) | Op::Duplicate(_) => {}
            Op::Tick(i) => {
                let id = match i % (self.peers.len() + 1) {
                    0 => NodeId::Master,
                    j => self.peers[j - 1].clone(),
                };
                self.input(&id, RelayInput::Tick);
            }
            Op::LinkLost {
                node,
                both,
                report_lost,
            } => {
                let node = self.peer(node);
                if let Some(parent) = self.nodes[&node].parent().cloned() {
                    self.drop_next_report = report_lost;
                    self.input(
                        &node,
                        RelayInput::LinkLost {
                            peer: parent.clone(),
                        },
                    );
                    self.drop_next_report = false;
                    if both {
                        self.input(&parent, RelayInput::LinkLost { peer: node });
                    }
                }
            }
            Op::Move(node) => {
                let node = self.peer(node);
                if self.assigned.contains_key(&node) {
                    let options = self.candidates(&node);
                    let parent = self.rng.pick(&options);
                    self.assign(&node, parent);
                }
            }
            Op::Rogue { node, parent } => {
                let node = self.peer(node);
                let parent = match parent % (self.peers.len() + 1) {
                    0 => NodeId::Master,
                    j => self.peers[j - 1].clone(),
                };
                if let Some(path) = self.view_path(&parent)
                    && self.assigned.contains_key(&node)
                {
                    // Declined (then its report says which parent it kept)
                    // or taken.
                    self.assigned.insert(node.clone(), parent.clone());
                    self.input(&node, RelayInput::Assign { parent, path });
                }
            }
            Op::MasterPush { node, back } => {
                let node = self.peer(node);
                let after = self.nodes[&node].delivered().saturating_sub(back);
                let events: Vec<(u64, Event)> = (after + 1..=self.published)
                    .map(|seq| (seq, payload(seq)))
                    .collect();
                if !events.is_empty() {
                    self.flight
                        .push((NodeId::Master, node, RelayMsg::CatchUp { events }));
                }
            }
        }
        self.master();
        self.check_tree();
    }

    /// The real parents form no loop, and each is the one the master
    /// assigned.
    fn check_tree(&self) {
        for id in &self.peers {
            let mut at = id.clone();
            let mut hops = 0;
            while let Some(parent) = self.nodes[&at].parent() {
                assert_eq!(
                    self.assigned.get(&at),
                    Some(parent),
                    "{at}'s parent is the master's choice"
                );
                hops += 1;
                assert!(hops <= self.peers.len(), "loop through {id}");
                at = parent.clone();
            }
        }
    }

    /// Links heal: everything left is published, every message arrives,
    /// timers fire, until every slave has every event.
    fn heal(&mut self) {
        self.healing = true;
        while self.published < self.m {
            self.publish();
        }
        for _ in 0..12 {
            self.drain();
            if self
                .delivered
                .values()
                .all(|log| log.len() as u64 == self.m)
            {
                break;
            }
            self.input(&NodeId::Master, RelayInput::Tick);
            for id in self.peers.clone() {
                self.input(&id, RelayInput::Tick);
            }
            self.master();
        }
        self.drain();
    }

    fn drain(&mut self) {
        let mut steps = 0;
        while !self.flight.is_empty() {
            steps += 1;
            assert!(steps < 100_000, "the network quiets down");
            self.arrive(0);
            self.master();
            self.check_tree();
        }
    }
}

fn sim_strategy() -> impl Strategy<Value = (usize, u64, Vec<usize>, RelayLimits, u64)> {
    (2usize..=8, 1u64..=16).prop_flat_map(|(n, m)| {
        (
            Just(n),
            Just(m),
            proptest::collection::vec(any::<usize>(), n),
            (1usize..=6, 0usize..=4).prop_map(|(window, buffer)| RelayLimits { window, buffer }),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the network does, once it heals every slave has delivered
    /// the master's events exactly once each, in order, with no gap.
    #[test]
    fn every_slave_delivers_the_masters_sequence_exactly_once(
        (n, m, shape, limits, seed) in sim_strategy(),
        ops in proptest::collection::vec(op(), 0..160),
    ) {
        let mut sim = Sim::new(n, m, &shape, limits, seed);
        for op in &ops {
            sim.step(op);
        }
        sim.heal();
        let expected: Vec<u64> = (1..=m).collect();
        for (id, log) in &sim.delivered {
            prop_assert_eq!(log, &expected, "{} delivered", id);
            prop_assert_eq!(sim.nodes[id].buffered(), 0);
        }
    }

    /// On a quiet network (nothing lost, nothing reordered, no timer), a
    /// tree carries each event once over each edge: no duplicate, no
    /// fetch, and the master sends each event once per child.
    #[test]
    fn a_quiet_tree_carries_each_event_once_per_edge(
        (n, m, shape, limits, seed) in sim_strategy(),
    ) {
        let mut sim = Sim::new(n, m, &shape, limits, seed);
        sim.drain();
        while sim.published < m {
            sim.publish();
            sim.drain();
        }
        let expected: Vec<u64> = (1..=m).collect();
        let master_children: BTreeSet<&NodeId> =
            sim.assigned.iter().filter(|(_, p)| p.is_master()).map(|(c, _)| c).collect();
        for (id, log) in &sim.delivered {
            prop_assert_eq!(log, &expected, "{} delivered", id);
            let stats = sim.nodes[id].stats();
            prop_assert_eq!((stats.duplicates, stats.fetches), (0, 0), "{}", id);
        }
        let root = sim.nodes[&NodeId::Master].stats();
        prop_assert_eq!(root.forwarded, m * master_children.len() as u64);
    }
}
