//! The sequence-number decisions the peerhost's relay makes
//! (`dmuc_peerhost::relay::window::Window`, the ones `Hub` runs) over a
//! simulated tree: a master and a few slaves, each with a small window,
//! links to parents cut and restored, messages from parents lost, delayed,
//! reordered and duplicated, slaves moved to other parents, streams to the
//! master cut (its messages lost with it) and started again. Before
//! anything heals, no slave ever delivers out of order, twice or past a
//! gap. Once the links heal, every slave has delivered exactly the
//! master's events 1..=M, each once and in order, with no later event
//! needed (a quiet room too). It found two ways a slave stayed behind
//! without one, both fixed in the runtime and modelled here: an event a
//! parent relayed while the slave was stalled (the node had it, the slave
//! had dropped it; now handed to it from the window once the master
//! resumes it: `Window::resume`), and a parent made again from a snapshot
//! (its window held nothing its children lacked; now the master sends it,
//! signed, what they have not acknowledged, as to a new parent).
//!
//! Each simulated node does what the runtime does:
//! - an event from a parent: dropped unless [`Window::wants`] it (the
//!   follow task), else published and handed to the slave (`Hub::publish`,
//!   then the slave; the stream and the orphan's feeder alike);
//! - an event on the master's stream (signed for a slave with children,
//!   or a catch-up): published and handed to the slave, and after the
//!   first since a `Resume`, what the window holds after it
//!   ([`Window::resumed`], `Stream::master_event`);
//! - a new subscription: the parent sends [`Window::catch_up`] after what
//!   the child has, then every event it publishes as new;
//! - the slave applies only the next event, drops what it has, and on a
//!   gap stalls and asks the master for a resync (as
//!   `dmuc_room::replica::Replica` does); the master answers on its stream
//!   with `Resume` and the events after what the slave has (or, when its
//!   history no longer holds them, a new slave from a snapshot:
//!   `Window::started`, the snapshot standing for the events before it,
//!   the window's events after it handed to the new slave; then, signed,
//!   what the node's children have not acknowledged), and a new stream
//!   offers every slave for resume the same way.
//!
//! The master's stream is ordered and loses what is in flight when it is
//! cut; a parent's events may arrive in any order, twice, or not at all
//! (the subscription then ends: a stream loses nothing without ending),
//! and from a parent the child no longer follows (they are the master's
//! events all the same: signed).

use std::collections::{BTreeSet, VecDeque};

use dmuc_peerhost::relay::window::{Publish, Window};
use proptest::prelude::*;

/// One step of the run.
#[derive(Clone, Debug)]
enum Op {
    /// The master publishes its next event (until it has published M).
    Publish,
    /// An event from a parent in flight (any: delays and reorders) arrives.
    Deliver(usize),
    /// An event from a parent in flight is lost: the subscription ends.
    Drop(usize),
    /// An event from a parent in flight will arrive twice.
    Duplicate(usize),
    /// The next frame on a slave's stream from the master arrives.
    FromMaster(usize),
    /// A slave subscribes to its parent again (after what it has).
    Subscribe(usize),
    /// A slave's link to its parent breaks: the parent forgets it.
    Cut(usize),
    /// A slave's stream to the master ends, or starts again.
    MasterLink(usize),
    /// The master gives a slave another parent (a lower index: no loop).
    Move { node: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Publish),
        12 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Duplicate),
        8 => any::<usize>().prop_map(Op::FromMaster),
        2 => any::<usize>().prop_map(Op::Subscribe),
        2 => any::<usize>().prop_map(Op::Cut),
        1 => any::<usize>().prop_map(Op::MasterLink),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(node, to)| Op::Move { node, to }),
    ]
}

/// A frame on a slave's stream from the master.
#[derive(Clone, Debug)]
enum FromMaster {
    /// An event (signed: the slave may have children).
    Event(u64),
    /// The answer to a resync, or the offer of a new stream: the slave
    /// goes on, and the master's events after what it had follow.
    Resume,
    /// The answer when the master's history no longer holds what the
    /// slave lacks: a new slave, from a snapshot after this event.
    Create(u64),
}

/// A slave's peerhost: its place in the tree and its slave.
struct Node {
    /// 0 is the master; always a lower index than the node's.
    parent: usize,
    window: Window<u64>,
    /// The children subscribed now.
    subscribers: BTreeSet<usize>,
    /// The node is subscribed to its parent.
    subscribed: bool,
    /// The stream to the master works.
    master_up: bool,
    /// Frames on that stream, in order.
    from_master: VecDeque<FromMaster>,
    /// The slave's last applied event (its replica's).
    have: u64,
    /// The slave found a gap and waits for the master's answer.
    stalled: bool,
    delivered: Vec<u64>,
}

struct Sim {
    nodes: Vec<Node>,
    /// Events from parents in flight: to whom, which.
    flight: Vec<(usize, u64)>,
    published: u64,
    m: u64,
    /// How many of its last events the master keeps to resume slaves.
    keep: u64,
}

impl Sim {
    fn new(parents: &[usize], caps: &[usize], m: u64, keep: u64) -> Sim {
        let nodes = parents
            .iter()
            .zip(caps)
            .enumerate()
            .map(|(i, (&p, &cap))| Node {
                // Node i + 1's parent is below it.
                parent: p % (i + 1),
                window: Window::new(cap),
                subscribers: BTreeSet::new(),
                subscribed: false,
                master_up: true,
                from_master: VecDeque::new(),
                have: 0,
                stalled: false,
                delivered: Vec::new(),
            })
            .collect();
        Sim {
            nodes,
            flight: Vec::new(),
            published: 0,
            m,
            keep,
        }
    }

    /// Node `n` (1-based) as an index into `nodes`.
    fn node(&self, any: usize) -> usize {
        any % self.nodes.len() + 1
    }

    fn at(&mut self, n: usize) -> &mut Node {
        &mut self.nodes[n - 1]
    }

    /// The master's answer to slave `n`, which has events up to `have`:
    /// `Resume` and the events after `have`, or, when its history no
    /// longer holds them, a new slave from a snapshot (and then, as for a
    /// new parent, what its children have not acknowledged, for its
    /// window: `Fanout::release`).
    /// Whether it was a new slave.
    fn answer(&mut self, n: usize) -> bool {
        let have = self.at(n).have;
        if have.saturating_add(self.keep) >= self.published {
            let events = (have + 1..=self.published).map(FromMaster::Event);
            let node = self.at(n);
            node.from_master.push_back(FromMaster::Resume);
            node.from_master.extend(events);
            false
        } else {
            let seq = self.published;
            self.at(n).from_master.push_back(FromMaster::Create(seq));
            self.backfill(n, None);
            true
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Publish => self.publish(),
            Op::Deliver(i) => {
                if !self.flight.is_empty() {
                    let (to, seq) = self.flight.remove(i % self.flight.len());
                    self.relayed(to, seq);
                }
            }
            Op::Drop(i) => {
                if !self.flight.is_empty() {
                    // A stream loses nothing but by ending: the child
                    // subscribes again.
                    let (to, _) = self.flight.remove(i % self.flight.len());
                    self.unsubscribe(to);
                }
            }
            Op::Duplicate(i) => {
                if !self.flight.is_empty() {
                    let again = self.flight[i % self.flight.len()];
                    self.flight.push(again);
                }
            }
            Op::FromMaster(n) => {
                let n = self.node(n);
                self.master_frame(n);
            }
            Op::Subscribe(n) => {
                let n = self.node(n);
                self.subscribe(n);
            }
            Op::Cut(n) => {
                let n = self.node(n);
                self.unsubscribe(n);
            }
            Op::MasterLink(n) => {
                let n = self.node(n);
                if self.at(n).master_up {
                    let node = self.at(n);
                    node.master_up = false;
                    node.from_master.clear();
                } else {
                    self.master_up(n);
                }
            }
            Op::Move { node, to } => {
                let n = self.node(node);
                let to = to % n;
                self.unsubscribe(n);
                self.at(n).parent = to;
                if to > 0 {
                    self.backfill(to, Some(n));
                }
                if to == 0 && self.at(n).master_up {
                    // The master, its new parent, sends what it lacks.
                    self.answer(n);
                }
            }
        }
    }

    /// The master's next event: on the streams of its own children.
    fn publish(&mut self) {
        if self.published == self.m {
            return;
        }
        self.published += 1;
        let seq = self.published;
        for node in &mut self.nodes {
            if node.parent == 0 && node.master_up {
                node.from_master.push_back(FromMaster::Event(seq));
            }
        }
    }

    /// A new stream: the master offers to resume the slave after what it has.
    fn master_up(&mut self, n: usize) {
        let node = self.at(n);
        node.master_up = true;
        node.from_master.clear();
        if !self.answer(n) {
            self.backfill(n, None);
        }
    }

    /// A parent on a new stream (all its children are new to it), or with
    /// a new `child`: the master sends it, signed, what those children
    /// have not acknowledged (as far as its history goes), for its window.
    fn backfill(&mut self, n: usize, child: Option<usize>) {
        let Some(from) = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, c)| c.parent == n && child.is_none_or(|only| only == i + 1))
            .map(|(_, c)| c.have)
            .min()
        else {
            return;
        };
        let oldest = self.published.saturating_sub(self.keep) + 1;
        let events = (from + 1).max(oldest)..=self.published;
        let node = self.at(n);
        if node.master_up {
            node.from_master.extend(events.map(FromMaster::Event));
        }
    }

    fn unsubscribe(&mut self, n: usize) {
        let parent = self.at(n).parent;
        self.at(n).subscribed = false;
        if parent > 0 {
            self.at(parent).subscribers.remove(&n);
        }
    }

    /// `Hub::subscribe` at the parent.
    fn subscribe(&mut self, n: usize) {
        let parent = self.at(n).parent;
        if parent == 0 {
            return;
        }
        let after = self.at(n).window.last();
        let catch_up = self.at(parent).window.catch_up(after);
        self.flight
            .extend(catch_up.events.iter().map(|&seq| (n, seq)));
        self.at(parent).subscribers.insert(n);
        self.at(n).subscribed = true;
    }

    /// The follow task hands on an event from a parent.
    fn relayed(&mut self, n: usize, seq: u64) {
        if self.at(n).window.wants(seq) {
            self.publish_at(n, seq);
            self.apply(n, seq);
        }
    }

    fn master_frame(&mut self, n: usize) {
        let Some(frame) = self.at(n).from_master.pop_front() else {
            return;
        };
        match frame {
            FromMaster::Event(seq) => {
                // `Stream::master_event`.
                self.publish_at(n, seq);
                self.apply(n, seq);
                for seq in self.at(n).window.resumed(seq) {
                    self.apply(n, seq);
                }
            }
            FromMaster::Create(seq) => {
                // The snapshot stands for the events up to `seq`.
                let node = self.at(n);
                let missed = node.window.started(seq);
                node.delivered.extend(node.have + 1..=seq);
                node.have = node.have.max(seq);
                node.stalled = false;
                for seq in missed {
                    self.apply(n, seq);
                }
            }
            FromMaster::Resume => {
                let node = self.at(n);
                node.window.resume();
                node.stalled = false;
            }
        }
    }

    /// `Hub::publish`: a new event goes to the subscribers.
    fn publish_at(&mut self, n: usize, seq: u64) {
        if self.at(n).window.publish(seq, seq) == Publish::New {
            let subscribers: Vec<usize> = self.at(n).subscribers.iter().copied().collect();
            self.flight
                .extend(subscribers.into_iter().map(|c| (c, seq)));
        }
    }

    /// The slave's replica.
    fn apply(&mut self, n: usize, seq: u64) {
        let node = self.at(n);
        if node.stalled || seq <= node.have {
            return;
        }
        if seq == node.have + 1 {
            node.have = seq;
            node.delivered.push(seq);
            return;
        }
        node.stalled = true;
        if node.master_up {
            self.answer(n);
        }
        // Else: the next stream offers the slave for resume.
    }

    /// Links heal: every stream to the master and every subscription
    /// works again, and nothing is lost any more.
    fn heal(&mut self) {
        while self.published < self.m {
            self.publish();
        }
        for n in 1..=self.nodes.len() {
            if !self.at(n).master_up {
                self.master_up(n);
            }
        }
        for _round in 0..10 * (self.nodes.len() + 2) {
            for n in 1..=self.nodes.len() {
                if !self.at(n).subscribed {
                    self.subscribe(n);
                }
            }
            let mut moved = false;
            while !self.flight.is_empty() {
                let (to, seq) = self.flight.remove(0);
                self.relayed(to, seq);
                moved = true;
            }
            for n in 1..=self.nodes.len() {
                while !self.at(n).from_master.is_empty() {
                    self.master_frame(n);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the tree does not settle once the links heal");
    }
}

/// A run; `keep`: the master's history holds only that many events (else
/// all of them, and no slave is ever made again from a snapshot).
fn run(
    parents: &[usize],
    caps: &[usize],
    m: u64,
    keep: Option<u64>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(parents, caps, m, keep.unwrap_or(u64::MAX));
    for n in 1..=sim.nodes.len() {
        sim.subscribe(n);
    }
    for op in ops {
        sim.step(op);
        for node in &sim.nodes {
            // Never a gap, a repeat or a reordering, even before healing.
            prop_assert!(node.delivered.iter().copied().eq(1..=node.have));
            // What a node subscribes after is never behind its slave.
            prop_assert!(node.window.last() >= node.have);
        }
    }
    sim.heal();
    let all: Vec<u64> = (1..=sim.m).collect();
    for (i, node) in sim.nodes.iter().enumerate() {
        prop_assert_eq!(&node.delivered, &all, "node {}", i + 1);
        prop_assert!(!node.stalled);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever happens on the links, once they heal each slave has
    /// delivered 1..=M exactly once, in order, with no later event needed
    /// (the master resumes every slave from its history).
    #[test]
    fn every_slave_delivers_the_masters_sequence_exactly_once(
        shape in prop::collection::vec((any::<usize>(), 1usize..5), 1..6),
        m in 1u64..40,
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let (parents, caps): (Vec<usize>, Vec<usize>) = shape.into_iter().unzip();
        run(&parents, &caps, m, None, ops)?;
    }

    /// The same with a short history at the master (slaves made again
    /// from snapshots); a snapshot stands for the events before it.
    #[test]
    fn with_snapshots_every_slave_catches_up(
        shape in prop::collection::vec((any::<usize>(), 1usize..5), 1..6),
        m in 1u64..40,
        keep in 1u64..60,
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let (parents, caps): (Vec<usize>, Vec<usize>) = shape.into_iter().unzip();
        run(&parents, &caps, m, Some(keep), ops)?;
    }
}

/// A chain whose windows hold one event: a child that falls behind is
/// sent a catch-up with a gap, and catches up from the master.
#[test]
fn a_child_beyond_its_parents_window_catches_up_from_the_master() {
    let mut sim = Sim::new(&[0, 1], &[1, 1], 5, u64::MAX);
    sim.subscribe(2);
    sim.step(Op::Cut(1));
    for _ in 0..5 {
        sim.step(Op::Publish);
        sim.step(Op::FromMaster(0));
    }
    assert_eq!(sim.nodes[0].delivered, [1, 2, 3, 4, 5]);
    // Node 2 subscribes again after 0: the window holds only 5.
    assert!(sim.nodes[0].window.catch_up(0).gap);
    sim.step(Op::Subscribe(1));
    sim.step(Op::Deliver(0));
    assert!(sim.nodes[1].stalled);
    // `Resume`, then the master's events 1..=5.
    while !sim.nodes[1].from_master.is_empty() {
        sim.step(Op::FromMaster(1));
    }
    assert_eq!(sim.nodes[1].delivered, [1, 2, 3, 4, 5]);
    assert!(!sim.nodes[1].stalled);
}

/// An event the parent relays while the child's slave is stalled (waiting
/// for the master's `Resume`, which ends before it) is handed to the slave
/// from the window once the master resumes it: no later event is needed.
#[test]
fn an_event_relayed_to_a_stalled_slave_is_handed_to_it_on_resume() {
    let mut sim = Sim::new(&[0, 1], &[8, 8], 3, u64::MAX);
    sim.subscribe(2);
    for _ in 0..2 {
        sim.step(Op::Publish);
        sim.step(Op::FromMaster(0));
    }
    // 2 reaches node 2 before 1: its slave stalls and asks for a resync.
    assert_eq!(sim.flight, [(2, 1), (2, 2)]);
    sim.step(Op::Deliver(1));
    assert!(sim.nodes[1].stalled);
    // 3 is relayed while it waits: node 2 has it, its slave drops it.
    sim.step(Op::Publish);
    sim.step(Op::FromMaster(0));
    sim.step(Op::Deliver(1));
    assert_eq!(sim.nodes[1].window.last(), 3);
    // The master's answer ends at 2.
    while !sim.nodes[1].from_master.is_empty() {
        sim.step(Op::FromMaster(1));
    }
    assert_eq!(sim.nodes[1].delivered, [1, 2, 3]);
    assert!(!sim.nodes[1].stalled);
}
