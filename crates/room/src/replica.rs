//! Replication of a room to slaves: the master numbers every input it feeds
//! its room; a slave applies the same inputs, in order, exactly once, to a
//! replica made from a snapshot, and delivers only to its own domain's users.
//!
//! ```text
//!  master: input ──seq n, now──▶ Room::handle ──▶ sends to domains it serves directly
//!                     │
//!                     └──(n, now, input)──▶ slave: Replica::apply ──▶ sends to its own domain
//! ```
//! Both sides are pure: the runtimes move the events and the stanzas.

use jid::FullJid;

use crate::{Action, Input, Room, RoomSnapshot, Timestamp};

/// What a replica did with an event.
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// Applied; these are the actions for the replica's own users.
    Deliver(Vec<Action>),
    /// Already applied (a duplicate, e.g. over two paths): ignored.
    Duplicate,
    /// Events are missing before this one: the replica needs the master to
    /// resend from `have + 1` (or a new snapshot); the event was not applied.
    Gap { have: u64 },
}

/// A slave's copy of a room.
#[derive(Debug)]
pub struct Replica {
    room: Room,
    /// Whose users this replica serves (a domain such as `b.test`).
    domain: String,
    /// The last event applied.
    seq: u64,
    /// Events up to this one were delivered by the master itself: apply
    /// them, deliver nothing.
    deliver_after: u64,
}

impl Replica {
    /// A replica of the room as it was after event `seq`.
    pub fn new(snapshot: RoomSnapshot, seq: u64, deliver_after: u64, domain: &str) -> Self {
        Replica {
            room: Room::from_snapshot(snapshot),
            domain: domain.to_owned(),
            seq,
            deliver_after,
        }
    }

    /// The last event applied.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn room(&self) -> &Room {
        &self.room
    }

    /// The domain whose users this replica serves.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The state to persist, for a restart that resumes at [`Self::seq`].
    pub fn snapshot(&self) -> RoomSnapshot {
        self.room.snapshot()
    }

    /// From now on the master delivers up to `seq` itself (its link to
    /// this slave broke); later events are ours again.
    pub fn delivered_by_master_until(&mut self, seq: u64) {
        self.deliver_after = self.deliver_after.max(seq);
    }

    /// Applies event `seq` (the master's number for `input`, handled at `now`).
    pub fn apply(&mut self, seq: u64, now: Timestamp, input: Input) -> Applied {
        if seq <= self.seq {
            return Applied::Duplicate;
        }
        if seq != self.seq + 1 {
            return Applied::Gap { have: self.seq };
        }
        self.seq = seq;
        let actions = self.room.handle(input, now);
        if seq <= self.deliver_after {
            return Applied::Deliver(Vec::new());
        }
        Applied::Deliver(local_only(actions, |jid| {
            jid.domain().as_str() == self.domain
        }))
    }
}

/// Keeps only the sends (and their recipients) for which `local` holds;
/// persistence, closing and confirming merges are the master's business.
pub fn local_only(actions: Vec<Action>, local: impl Fn(&FullJid) -> bool) -> Vec<Action> {
    actions
        .into_iter()
        .filter_map(|action| match action {
            Action::Send { mut to, stanza } => {
                to.retain(&local);
                (!to.is_empty()).then_some(Action::Send { to, stanza })
            }
            Action::Persist(_) | Action::Close | Action::Merged { .. } => None,
        })
        .collect()
}

/// Splits a room's actions between the master and its slaves: sends to
/// users of a domain `served_by_slave` are dropped (its slave renders them
/// from the same input); everything else stays.
pub fn master_share(actions: Vec<Action>, served_by_slave: impl Fn(&str) -> bool) -> Vec<Action> {
    actions
        .into_iter()
        .filter_map(|action| match action {
            Action::Send { mut to, stanza } => {
                to.retain(|jid| !served_by_slave(jid.domain().as_str()));
                (!to.is_empty()).then_some(Action::Send { to, stanza })
            }
            other => Some(other),
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::Outgoing;
    use crate::testing::{join, relaxed_settings, say};

    fn recipients(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .flat_map(|a| match a {
                Action::Send { to, .. } => to.iter().map(|j| j.to_string()).collect(),
                _ => vec![],
            })
            .collect()
    }

    /// A master room with alice (a.test) and a b.test slave made after her join.
    fn setup() -> (Room, Replica) {
        let mut master = Room::new("r@muc.a.test".parse().unwrap(), relaxed_settings());
        master.handle(join("alice@a.test/1", "alice"), Timestamp(1));
        let replica = Replica::new(master.snapshot(), 1, 1, "b.test");
        (master, replica)
    }

    #[test]
    fn each_side_delivers_to_its_own_users_only() {
        let (mut master, mut slave) = setup();
        let now = Timestamp(2);
        let actions = master.handle(join("bob@b.test/1", "bob"), now);
        let master_part = master_share(actions, |d| d == "b.test");
        assert_eq!(recipients(&master_part), ["alice@a.test/1"]);

        let Applied::Deliver(slave_part) = slave.apply(2, now, join("bob@b.test/1", "bob")) else {
            panic!("applied");
        };
        // Bob's whole join sequence comes from the slave: alice, himself, subject.
        assert_eq!(recipients(&slave_part), ["bob@b.test/1"; 3]);
        assert!(
            matches!(&slave_part[1], Action::Send { stanza: Outgoing::Presence(p), .. } if p.statuses == [110])
        );
    }

    #[test]
    fn duplicates_are_ignored_and_gaps_reported() {
        let (_, mut slave) = setup();
        assert!(matches!(
            slave.apply(2, Timestamp(2), join("bob@b.test/1", "bob")),
            Applied::Deliver(_)
        ));
        assert_eq!(
            slave.apply(2, Timestamp(2), say("bob@b.test/1", "hi")),
            Applied::Duplicate
        );
        assert_eq!(
            slave.apply(4, Timestamp(3), say("bob@b.test/1", "hi")),
            Applied::Gap { have: 2 }
        );
        assert_eq!(slave.seq(), 2);
    }

    #[test]
    fn events_the_master_delivered_are_applied_silently() {
        let (mut master, mut slave) = setup();
        master.handle(join("bob@b.test/1", "bob"), Timestamp(2));
        slave.delivered_by_master_until(3);
        assert_eq!(
            slave.apply(2, Timestamp(2), join("bob@b.test/1", "bob")),
            Applied::Deliver(vec![])
        );
        assert_eq!(
            slave.apply(3, Timestamp(3), say("alice@a.test/1", "hi")),
            Applied::Deliver(vec![])
        );
        let Applied::Deliver(after) = slave.apply(4, Timestamp(4), say("alice@a.test/1", "hi"))
        else {
            panic!("applied");
        };
        assert_eq!(recipients(&after), ["bob@b.test/1"]);
        // The replica kept up: its state matches the master's.
        master.handle(say("alice@a.test/1", "hi"), Timestamp(3));
        master.handle(say("alice@a.test/1", "hi"), Timestamp(4));
        assert_eq!(slave.room().occupant_count(), master.occupant_count());
    }
}
