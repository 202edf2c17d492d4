//! What a node of a room's tree does with sequence numbers, without I/O:
//! the decisions [`super::Hub`] and its follow task make, kept here so
//! that they are unit-tested and property-tested
//! (`crates/peerhost/tests/window.rs`) apart from the sockets.
//!
//! ```text
//!  parent's event ─▶ wants(seq)? ─ no ─▶ dropped (had already)
//!                        │ yes
//!  master's signed ─▶ publish(seq) ─▶ New: kept, sent to the subscribers, given to the slave
//!  event                     ├──────▶ Backfilled: an older event kept (in order) for later subscribers
//!                            └──────▶ Duplicate: dropped
//!  child subscribes(after) ─▶ catch_up(after): the window's events after `after`;
//!                             `gap` when it no longer holds `after + 1`
//! ```
//!
//! The window does not refuse what is ahead of a gap: an event newer than
//! all it has is new, even if some before it are missing. The slave (its
//! `dmuc_room::replica::Replica`) is what holds the line: it applies only
//! the next event, drops what it has, and on a gap stalls and asks the
//! master for a resync (the master resumes it from its history). A child
//! served a catch-up with a `gap` finds the same gap and does the same.
//! Events missing from the window that arrive later (the master sends a
//! slave that gains children, signed, what they have not acknowledged)
//! fill its holes, in order, while it has room.
//!
//! What a parent relays while the slave is stalled is the node's (it is
//! in the window, and `wants` refuses it again) but not the slave's (it
//! dropped it). So when the master resumes the slave, the first event the
//! master hands it is followed by what the window holds after it
//! ([`Window::resume`], [`Window::resumed`]), and a new slave from a
//! snapshot gets what the window holds after the snapshot
//! ([`Window::started`]).

use std::collections::VecDeque;

/// What [`Window::publish`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Newer than all the window has: kept, and for the subscribers.
    New,
    /// Older than the newest, missing from the window: kept in order for
    /// later subscriptions, not for those subscribed already.
    Backfilled,
    /// Had already (or too old to keep): dropped.
    Duplicate,
}

/// What a child subscribing after some event is sent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp<E> {
    /// The window's events after the child's, in order.
    pub events: Vec<E>,
    /// The window no longer holds the event right after the child's (it
    /// holds later ones): the child will find a gap and resync with the
    /// master.
    pub gap: bool,
}

/// One room's recent events on a node, and the last event it has.
#[derive(Debug, Clone)]
pub struct Window<E> {
    /// Most events kept.
    cap: usize,
    /// The last event this node has, from any path (a snapshot too).
    last: u64,
    /// Recent events by sequence number, ascending.
    events: VecDeque<(u64, E)>,
    /// Events dropped as already had.
    duplicates: u64,
    /// The master resumes the slave: what the window holds goes to it
    /// after the master's first event (see [`Window::resume`]).
    resuming: bool,
}

impl<E: Clone> Window<E> {
    /// An empty window keeping up to `cap` events.
    pub fn new(cap: usize) -> Window<E> {
        Window {
            cap: cap.max(1),
            last: 0,
            events: VecDeque::new(),
            duplicates: 0,
            resuming: false,
        }
    }

    /// The node's slave starts after event `seq` (a snapshot). Returns
    /// what the window holds after it, for the new slave: events a parent
    /// relayed while the old slave was stalled, which the node has (a
    /// parent does not send them again) but no slave applied.
    pub fn started(&mut self, seq: u64) -> Vec<E> {
        self.last = self.last.max(seq);
        self.resuming = true;
        self.resumed(seq)
    }

    /// The master resumes the slave (`Resume`: the answer to its resync,
    /// or a new stream). Events a parent relayed while it was stalled are
    /// in the window (the node has them: a parent does not send them
    /// again) but the slave dropped them, and the master's events may end
    /// before them: the first event the master hands the slave is followed
    /// by what the window holds after it ([`Window::resumed`]).
    pub fn resume(&mut self) {
        self.resuming = true;
    }

    /// The master handed the slave event `seq`: if it is the first since
    /// [`Window::resume`], the window's events after it, to hand the slave
    /// next (else none). A hole among them stalls the slave, which asks
    /// the master for a resync again: slower, never wrong.
    pub fn resumed(&mut self, seq: u64) -> Vec<E> {
        if !std::mem::take(&mut self.resuming) {
            return Vec::new();
        }
        self.catch_up(seq).events
    }

    /// The last event this node has: what it subscribes after, and what
    /// it tells the master it has.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Events dropped as already had.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Whether an event a parent relays is worth handing on: not had yet.
    pub fn wants(&self, seq: u64) -> bool {
        seq > self.last
    }

    /// This node has event `seq`: keep it (see [`Publish`]).
    pub fn publish(&mut self, seq: u64, event: E) -> Publish {
        let newest = self.events.back().map_or(0, |(s, _)| *s);
        if seq <= newest {
            if let Err(at) = self.events.binary_search_by_key(&seq, |(s, _)| *s)
                && self.events.len() < self.cap
            {
                self.events.insert(at, (seq, event));
                return Publish::Backfilled;
            }
            self.duplicates += 1;
            return Publish::Duplicate;
        }
        self.last = self.last.max(seq);
        self.events.push_back((seq, event));
        if self.events.len() > self.cap {
            self.events.pop_front();
        }
        Publish::New
    }

    /// What a child that has events up to `after` is sent when it
    /// subscribes.
    pub fn catch_up(&self, after: u64) -> CatchUp<E> {
        let events: Vec<(u64, E)> = self
            .events
            .iter()
            .filter(|(seq, _)| *seq > after)
            .cloned()
            .collect();
        let gap = events.first().is_some_and(|(seq, _)| *seq != after + 1);
        CatchUp {
            events: events.into_iter().map(|(_, e)| e).collect(),
            gap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(catch_up: &CatchUp<u64>) -> Vec<u64> {
        catch_up.events.clone()
    }

    #[test]
    fn the_next_event_is_new_and_a_repeat_a_duplicate() {
        let mut w = Window::new(8);
        assert!(w.wants(1));
        assert_eq!(w.publish(1, 1), Publish::New);
        assert_eq!(w.last(), 1);
        assert!(!w.wants(1));
        assert_eq!(w.publish(1, 1), Publish::Duplicate);
        assert_eq!(w.duplicates(), 1);
    }

    #[test]
    fn an_event_ahead_of_a_gap_is_new_and_the_hole_fills_in_order() {
        let mut w = Window::new(8);
        w.publish(1, 1);
        assert_eq!(w.publish(4, 4), Publish::New);
        assert_eq!(w.last(), 4);
        assert_eq!(
            w.catch_up(1),
            CatchUp {
                events: vec![4],
                gap: true
            }
        );
        assert_eq!(w.publish(3, 3), Publish::Backfilled);
        assert_eq!(w.publish(2, 2), Publish::Backfilled);
        assert_eq!(w.publish(3, 3), Publish::Duplicate);
        assert_eq!(w.last(), 4);
        assert_eq!(seqs(&w.catch_up(0)), [1, 2, 3, 4]);
        assert!(!w.catch_up(1).gap);
    }

    #[test]
    fn a_full_window_keeps_the_newest_and_refuses_old_holes() {
        let mut w = Window::new(3);
        for seq in [1, 2, 4, 5] {
            w.publish(seq, seq);
        }
        assert_eq!(seqs(&w.catch_up(0)), [2, 4, 5]);
        // Full: the hole at 3 is not filled any more.
        assert_eq!(w.publish(3, 3), Publish::Duplicate);
        // A child with 1 still finds 2 first; one with 2 finds a gap.
        assert!(!w.catch_up(1).gap);
        assert!(w.catch_up(2).gap);
    }

    #[test]
    fn a_child_beyond_the_window_is_sent_nothing_and_no_gap() {
        let mut w = Window::new(2);
        for seq in 1..=5 {
            w.publish(seq, seq);
        }
        assert_eq!(seqs(&w.catch_up(0)), [4, 5]);
        assert!(w.catch_up(0).gap);
        assert_eq!(
            w.catch_up(5),
            CatchUp {
                events: vec![],
                gap: false
            }
        );
        assert_eq!(
            w.catch_up(9),
            CatchUp {
                events: vec![],
                gap: false
            }
        );
    }

    #[test]
    fn a_snapshot_sets_what_the_node_has_but_not_the_window() {
        let mut w = Window::new(8);
        assert!(w.started(4).is_empty());
        assert_eq!(w.last(), 4);
        assert!(!w.wants(4));
        assert!(w.wants(5));
        assert_eq!(w.publish(5, 5), Publish::New);
        assert_eq!(w.publish(6, 6), Publish::New);
        // The master sends older events for new children: 3 and 4 fill
        // the window before 5, 5 and 6 are duplicates.
        for seq in 3..=6 {
            assert_ne!(w.publish(seq, seq), Publish::New, "{seq}");
        }
        assert_eq!(w.duplicates(), 2);
        assert_eq!(seqs(&w.catch_up(2)), [3, 4, 5, 6]);
        // `started` never goes back.
        w.started(1);
        assert_eq!(w.last(), 6);
    }

    #[test]
    fn a_resumed_slave_is_handed_what_the_node_got_while_it_was_stalled() {
        let mut w = Window::new(8);
        for seq in [1, 2, 4, 5] {
            w.publish(seq, seq);
        }
        // Not resuming: nothing to hand.
        assert!(w.resumed(3).is_empty());
        // The slave stalled at 2 (no 3); the master resumes it with 3.
        w.resume();
        assert_eq!(w.resumed(3), [4, 5]);
        // Only after the first of the master's events.
        assert!(w.resumed(4).is_empty());
        // A new slave from a snapshot at 4 is handed 5 at once.
        assert_eq!(w.started(4), [5]);
        assert!(w.resumed(5).is_empty());
    }
}
