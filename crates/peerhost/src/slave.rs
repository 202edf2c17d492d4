//! One task per slave: it owns the room's [`Replica`], applies the master's
//! events in order, hands the stanzas for this domain's users to the
//! component link, then acknowledges; and it keeps the replica's state in
//! the [`store`](crate::store).
//!
//! ```text
//!  stream ──Event──▶ inbox ─▶ Replica::apply ─▶ Deliver ─▶ log the event ─▶ stanzas() ─▶ link
//!         ──Resume─▶   │            │ Gap                                then Ack{room, seq} ─▶ stream
//!                      │            └──▶ Resync{room, have_seq} ─▶ stream; stalled until Resume
//!                      └─ every SNAPSHOT_EVERY events, when idle, at the end: snapshot ─▶ store
//! ```
//!
//! A slave starts from a `CreateSlave` ([`Slave::create`], whose snapshot it
//! stores first) or from its stored state ([`Dormant`], rebuilt when its
//! master's stream starts, then [`Slave::resume`] once the master answers
//! with `Resume`). When its stream ends it saves a snapshot and stops; its
//! state stays stored for the next stream of the master.

use std::time::Duration;

use dmuc_component::LinkHandle;
use dmuc_protocol::pb::{self, peer_frame};
use dmuc_protocol::{RoomEvent, SlaveStart};
use std::collections::HashSet;

use dmuc_room::replica::{Applied, Replica, local_only};
use dmuc_room::split::{Healed, Split, SplitEvent, SplitStart};
use dmuc_room::{Action, Input, Timestamp};
use dmuc_stanza::inbound::{self, Routed};
use dmuc_stanza::outbound;
use jid::{BareJid, FullJid};
use minidom::Element;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::store::{StoredSlave, Writer};
use crate::stream::Upstream;

/// How many events may wait for a busy slave before the stream waits (and,
/// through HTTP/2 flow control, the master).
const INBOX: usize = 1024;

/// The largest stanza a split accepts from a local user (the master's
/// default limit; the master applies its own to what is merged).
const MAX_STANZA_BYTES: usize = 16 * 1024;

/// A slave acknowledges at the latest after this many events, even when
/// more are waiting.
const ACK_EVERY: u64 = 64;

/// A slave stores a new snapshot (and so empties its log) after this many
/// logged events: a snapshot carries the whole history with payloads, too
/// much to write per event, while a long log makes loading slow.
pub const SNAPSHOT_EVERY: usize = 256;

/// A slave that has logged events and then receives nothing for this long
/// stores a snapshot, so a quiet room loads without replaying.
pub const SNAPSHOT_WHEN_IDLE: Duration = Duration::from_secs(10);

/// What a slave task needs besides its replica: where its stanzas, frames
/// and stored state go.
#[derive(Clone, Debug)]
pub struct Outlets {
    pub link: LinkHandle,
    pub up: Upstream,
    pub store: Writer,
    /// The local server, when it expands XEP-0033 multicasts for us.
    pub multicast: watch::Receiver<Option<BareJid>>,
}

/// What the stream tells a running slave, in order with its events.
// Events are nearly all the traffic, and were this size before: boxing them
// would only add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Command {
    /// An event to apply, with its `pb::Event` encoding for the log.
    Event(RoomEvent, Vec<u8>),
    /// The master's answer to a `Resync`: the slave's state is still good
    /// and the missing events follow; events up to `deliver_after` were
    /// delivered by the master.
    Resume { deliver_after: u64 },
    /// Stop without saving: the slave is replaced or destroyed.
    Discard,
    /// The master's stream ended and this domain's traffic is intercepted:
    /// serve the local users alone (a split).
    Split,
    /// A local user's stanza to the room, intercepted while split.
    Local(Element),
    /// A new stream of the master: end the split, if any, and answer with
    /// what it submits; frames go to `up` from now on.
    Reattach {
        up: Upstream,
        healed: oneshot::Sender<(u64, Option<HealedSplit>)>,
    },
    /// The master confirmed the merge of the split that began at `began`.
    Merged { began: Timestamp },
}

/// A split that ended: what its slave submits to the master.
#[derive(Debug)]
pub struct HealedSplit {
    pub room: BareJid,
    /// Names the split, with the peerhost's domain.
    pub began: Timestamp,
    /// In local order; entry `i` is submitted with index `i`.
    pub submissions: Vec<SplitEvent>,
}

impl HealedSplit {
    /// What a stored split submits (one healed before the peerhost restarted).
    pub fn from_stored(start: SplitStart, log: Vec<SplitEvent>) -> HealedSplit {
        let room = start.snapshot.jid.clone();
        let began = start.began;
        HealedSplit {
            room,
            began,
            submissions: submissions(Split::restore(start, log).end()),
        }
    }
}

/// What a healed split submits, in order: what happened, then who is there.
fn submissions(healed: Healed) -> Vec<SplitEvent> {
    let mut submissions = healed.submissions;
    submissions.extend(healed.present);
    submissions
}

/// What the stream keeps of a running slave.
#[derive(Debug)]
pub struct Slave {
    inbox: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

/// A slave's state loaded from storage, waiting for its master to answer
/// the `Resync` the stream sent for it.
#[derive(Debug)]
pub struct Dormant {
    replica: Replica,
    deliver_after: u64,
    /// Events in the stored log after the stored snapshot.
    logged: usize,
}

impl Dormant {
    /// Rebuilds a stored slave serving `domain`: its snapshot, then its log
    /// applied silently (nothing is delivered at load). Replay stops at an
    /// event that does not follow (never expected: the store keeps logs
    /// contiguous); the replica is then at the one before.
    pub fn load(stored: StoredSlave, domain: &str) -> Dormant {
        let mut replica = Replica::new(stored.snapshot, stored.seq, stored.deliver_after, domain);
        let mut logged = 0;
        for event in stored.log {
            match replica.apply(event.seq, event.now, event.input) {
                Applied::Deliver(_) => logged += 1,
                Applied::Duplicate | Applied::Gap { .. } => {
                    warn!(room = %event.room, seq = event.seq, have = replica.seq(),
                        "stored log does not follow: replay stops there");
                    break;
                }
            }
        }
        Dormant {
            replica,
            deliver_after: stored.deliver_after,
            logged,
        }
    }

    pub fn room(&self) -> &BareJid {
        self.replica.room().jid()
    }

    /// The last event applied: the `have_seq` of its `Resync`.
    pub fn seq(&self) -> u64 {
        self.replica.seq()
    }

    /// The rebuilt replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }
}

impl Slave {
    /// Starts the task owning a replica made from `start`, serving `domain`;
    /// its first act is to store `start` (replacing any stored state).
    pub fn create(start: SlaveStart, domain: &BareJid, outlets: Outlets) -> Slave {
        let replica = Replica::new(
            start.snapshot,
            start.seq,
            start.deliver_after,
            domain.as_str(),
        );
        let dormant = Dormant {
            replica,
            deliver_after: start.deliver_after,
            logged: 0,
        };
        Slave::spawn(dormant, outlets, Start::Created)
    }

    /// Starts the task owning a stored replica, which the master resumes:
    /// events up to `deliver_after` were delivered by the master.
    pub fn resume(dormant: Dormant, deliver_after: u64, outlets: Outlets) -> Slave {
        Slave::spawn(dormant, outlets, Start::Resumed { deliver_after })
    }

    /// Starts the task owning a stored replica that was split from its
    /// master when the peerhost stopped: it goes on serving local users
    /// from the split's stored log (see [`Split::restore`]).
    pub fn restore_split(dormant: Dormant, split: Split, outlets: Outlets) -> Slave {
        info!(room = %dormant.room(), began = split.start().began.millis(),
            logged = split.log().len(), "split restored");
        Slave::spawn_split(dormant, Some(split), outlets, Start::Split)
    }

    fn spawn(dormant: Dormant, outlets: Outlets, start: Start) -> Slave {
        Slave::spawn_split(dormant, None, outlets, start)
    }

    fn spawn_split(
        dormant: Dormant,
        split: Option<Split>,
        outlets: Outlets,
        start: Start,
    ) -> Slave {
        let room = dormant.room().clone();
        let (inbox, rx) = mpsc::channel(INBOX);
        let span = info_span!("slave", room = %room);
        let task = SlaveTask {
            room,
            replica: dormant.replica,
            deliver_after: dormant.deliver_after,
            logged: dormant.logged,
            stalled: false,
            split,
            healing: None,
            outlets,
        };
        let task = tokio::spawn(task.run(rx, start).instrument(span));
        Slave { inbox, task }
    }

    /// Queues an event and its `pb::Event` encoding; `false` if the slave
    /// has stopped (its link closed).
    pub async fn send(&self, event: RoomEvent, encoded: Vec<u8>) -> bool {
        self.inbox
            .send(Command::Event(event, encoded))
            .await
            .is_ok()
    }

    /// A handle that queues events for the slave (one fed from elsewhere
    /// than its stream: an orphan, see `crate::relay`).
    pub fn sender(&self) -> SlaveSender {
        SlaveSender(self.inbox.clone())
    }

    /// Queues the master's `Resume`: a stalled slave goes on from its state.
    pub async fn resume_here(&self, deliver_after: u64) -> bool {
        self.inbox
            .send(Command::Resume { deliver_after })
            .await
            .is_ok()
    }

    /// Tells the slave that its stream is gone: it serves local users alone.
    pub async fn split(&self) -> bool {
        self.inbox.send(Command::Split).await.is_ok()
    }

    /// Hands the slave a local user's intercepted stanza (while split);
    /// gives it back if the slave has stopped.
    pub async fn local(&self, stanza: Element) -> Result<(), Element> {
        self.inbox
            .send(Command::Local(stanza))
            .await
            .map_err(|e| match e.0 {
                Command::Local(stanza) => stanza,
                _ => unreachable!("sent a Local"),
            })
    }

    /// Attaches the slave to a new stream of its master: it ends its split,
    /// if any. Answers the replica's last event and what the split submits;
    /// `None` if the slave has stopped.
    pub async fn reattach(&self, up: Upstream) -> Option<(u64, Option<HealedSplit>)> {
        let (healed, answer) = oneshot::channel();
        self.inbox
            .send(Command::Reattach { up, healed })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Tells the slave that the master merged its split that began at `began`.
    pub async fn merged(&self, began: Timestamp) {
        let _ = self.inbox.send(Command::Merged { began }).await;
    }

    /// Lets the slave finish the events already queued and save its state,
    /// then waits for it.
    pub async fn stop(self) {
        drop(self.inbox);
        let _ = self.task.await;
    }

    /// Lets the slave finish the events already queued, then stops it
    /// without saving (it is replaced, or destroyed); waits for it.
    pub async fn discard(self) {
        let _ = self.inbox.send(Command::Discard).await;
        drop(self.inbox);
        let _ = self.task.await;
    }
}

/// Queues events for a slave (see [`Slave::sender`]).
#[derive(Debug, Clone)]
pub struct SlaveSender(mpsc::Sender<Command>);

impl SlaveSender {
    /// Queues an event; `false` if the slave has stopped.
    pub async fn send(&self, event: RoomEvent, encoded: Vec<u8>) -> bool {
        self.0.send(Command::Event(event, encoded)).await.is_ok()
    }
}

/// How a slave task begins.
#[derive(Debug)]
enum Start {
    /// From a `CreateSlave`: store it first.
    Created,
    /// From stored state, on the master's `Resume`.
    Resumed { deliver_after: u64 },
    /// From stored state, in the split it was in when the peerhost stopped.
    Split,
}

struct SlaveTask {
    room: BareJid,
    replica: Replica,
    /// As in the replica (which does not show it): stored with snapshots.
    deliver_after: u64,
    /// Events logged since the last stored snapshot.
    logged: usize,
    /// After a gap the slave applies nothing until the master resumes or
    /// replaces it.
    stalled: bool,
    /// While the master cannot be reached: the room local users see.
    split: Option<Split>,
    /// After a split, until the master has merged it.
    healing: Option<Healing>,
    outlets: Outlets,
}

/// A slave between the end of its split and the master's merge of it.
///
/// The master's events of the split era follow the replica's state from
/// before the split, in which local users who left during the split are
/// still there: they get nothing more. Only the sessions that were in the
/// split room at its end receive those events, until the master's merge
/// (which brings the replica up to date) is confirmed.
#[derive(Debug)]
struct Healing {
    began: Timestamp,
    /// The index of the split's last submission.
    last: u64,
    sessions: HashSet<FullJid>,
}

impl SlaveTask {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>, start: Start) {
        debug!(
            seq = self.replica.seq(),
            logged = self.logged,
            ?start,
            "slave started"
        );
        match start {
            Start::Created => self.save().await,
            Start::Resumed { deliver_after } => self.resumed(deliver_after).await,
            Start::Split => {}
        }
        let mut acked = self.replica.seq();
        loop {
            let command = if self.logged > 0 {
                match tokio::time::timeout(SNAPSHOT_WHEN_IDLE, inbox.recv()).await {
                    Ok(command) => command,
                    Err(_idle) => {
                        self.save().await;
                        continue;
                    }
                }
            } else {
                inbox.recv().await
            };
            match command {
                Some(Command::Event(event, encoded)) => {
                    if !self.apply(event, encoded).await {
                        return;
                    }
                }
                Some(Command::Resume { deliver_after }) => self.resumed(deliver_after).await,
                Some(Command::Discard) => {
                    debug!(seq = self.replica.seq(), "slave discarded");
                    return;
                }
                Some(Command::Split) => {
                    if !self.begin_split().await {
                        return;
                    }
                }
                Some(Command::Local(stanza)) => {
                    if !self.local(stanza).await {
                        return;
                    }
                }
                Some(Command::Reattach { up, healed }) => {
                    self.outlets.up = up;
                    acked = self.replica.seq();
                    let _ = healed.send((acked, self.heal().await));
                }
                Some(Command::Merged { began }) => {
                    if self.healing.as_ref().is_some_and(|h| h.began == began) {
                        debug!(began = began.millis(), "healed");
                        self.healing = None;
                    }
                }
                None => break,
            }
            let seq = self.replica.seq();
            if seq > acked && (inbox.is_empty() || seq - acked >= ACK_EVERY) {
                let ack = peer_frame::Frame::Ack(pb::Ack {
                    room: self.room.to_string(),
                    seq,
                });
                // A stream that has ended hands the slave on (to a split,
                // or a stop): the next stream resumes from what is stored.
                if self.outlets.up.send(ack).await {
                    acked = seq;
                }
            }
        }
        if self.logged > 0 {
            self.save().await;
        }
        debug!(seq = self.replica.seq(), "slave stopped");
    }

    /// Applies one event, logs it and delivers its stanzas; `false` once the
    /// component link has closed.
    async fn apply(&mut self, event: RoomEvent, encoded: Vec<u8>) -> bool {
        if self.stalled {
            return true;
        }
        let seq = event.seq;
        let merged = self.ends_healing(&event.input);
        match self.replica.apply(seq, event.now, event.input) {
            Applied::Deliver(mut actions) => {
                self.outlets.store.event(&self.room, seq, encoded).await;
                self.logged += 1;
                if let Some(healing) = &self.healing {
                    actions = local_only(actions, |jid| healing.sessions.contains(jid));
                }
                if merged {
                    info!(seq, "the master's merge of the split has arrived");
                    self.healing = None;
                }
                if !self.send(actions).await {
                    return false;
                }
                if self.logged >= SNAPSHOT_EVERY {
                    self.save().await;
                }
            }
            Applied::Duplicate => debug!(seq, "duplicate event ignored"),
            Applied::Gap { have } => {
                warn!(seq, have, "gap in room events: asking for a resync");
                self.stalled = true;
                self.outlets.up.resync(&self.room, have).await;
            }
        }
        true
    }

    /// Whether `input` is the master's merge of the last submission of the
    /// split this slave is healing from.
    fn ends_healing(&self, input: &Input) -> bool {
        let (Some(healing), Input::Merge(merge)) = (&self.healing, input) else {
            return false;
        };
        merge.domain == self.replica.domain()
            && merge.began == healing.began
            && merge.index == healing.last
    }

    /// Delivers stanzas to local users; `false` once the link has closed.
    async fn send(&self, actions: Vec<Action>) -> bool {
        let via = self.outlets.multicast.borrow().clone();
        for stanza in stanzas(&self.room, actions, via.as_ref()) {
            if self.outlets.link.send(stanza).await.is_err() {
                warn!("component link closed: slave stops");
                return false;
            }
        }
        true
    }

    /// The master's stream is gone: the room goes on for local users under
    /// its split policy. The replica is stored first: the split's log
    /// starts from it.
    async fn begin_split(&mut self) -> bool {
        if self.split.is_some() {
            return true;
        }
        self.save().await;
        let (split, actions) = Split::begin(&self.replica, now());
        info!(
            seq = split.start().seq,
            began = split.start().began.millis(),
            policy = ?split.policy(),
            "split: serving local users alone"
        );
        self.outlets.store.split_begin(split.start()).await;
        self.split = Some(split);
        self.durable_then_send(actions).await
    }

    /// A local user's stanza during the split: handled by the split room,
    /// which logs what it lets change the room; the log is stored before
    /// anyone is told (what users saw survives a crash).
    async fn local(&mut self, stanza: Element) -> bool {
        let Some(split) = &mut self.split else {
            // Never expected: the router gives stanzas only to split slaves.
            warn!("intercepted stanza for a slave that is not split");
            return match crate::shadow::unreachable(&stanza) {
                Some(reply) => self.outlets.link.send(reply).await.is_ok(),
                None => true,
            };
        };
        let actions = match inbound::route(stanza, &service_of(&self.room), MAX_STANZA_BYTES) {
            Routed::Room { room, input, .. } if room == self.room => {
                let before = split.log().len();
                let actions = split.handle(input, now());
                let began = split.start().began;
                for (index, event) in split.log().iter().enumerate().skip(before) {
                    self.outlets
                        .store
                        .split_event(&self.room, began, index as u64, event.clone())
                        .await;
                }
                actions
            }
            Routed::Reply(reply) => {
                return self.outlets.link.send(reply).await.is_ok();
            }
            Routed::Room { .. } | Routed::Service { .. } | Routed::Drop(_) => return true,
        };
        self.durable_then_send(actions).await
    }

    /// Waits for what is queued for the store to commit, then sends.
    async fn durable_then_send(&self, actions: Vec<Action>) -> bool {
        if let Err(e) = self.outlets.store.flush().await {
            error!(error = %e, "split log not stored: local users are not told");
            return true;
        }
        self.send(actions).await
    }

    /// Ends the split, if any: local users are told the room is whole, and
    /// the split's submissions are handed back for the master.
    async fn heal(&mut self) -> Option<HealedSplit> {
        let split = self.split.take()?;
        let began = split.start().began;
        let sessions: HashSet<FullJid> = split
            .room()
            .sessions()
            .filter(|s| s.domain().as_str() == self.replica.domain())
            .cloned()
            .collect();
        let mut healed = split.end();
        let actions = std::mem::take(&mut healed.actions);
        let submissions = submissions(healed);
        info!(
            began = began.millis(),
            submissions = submissions.len(),
            "split healed: submitting it to the master"
        );
        self.outlets.store.split_healed(&self.room, began).await;
        if let Some(last) = submissions.len().checked_sub(1) {
            self.healing = Some(Healing {
                began,
                last: last as u64,
                sessions,
            });
        }
        self.send(actions).await;
        Some(HealedSplit {
            room: self.room.clone(),
            began,
            submissions,
        })
    }

    /// The master resumes this slave from its state.
    async fn resumed(&mut self, deliver_after: u64) {
        if std::mem::take(&mut self.stalled) {
            info!(seq = self.replica.seq(), deliver_after, "resumed");
        }
        self.replica.delivered_by_master_until(deliver_after);
        if deliver_after > self.deliver_after {
            self.deliver_after = deliver_after;
            self.outlets
                .store
                .deliver_after(&self.room, deliver_after)
                .await;
        }
    }

    /// Stores the replica's whole state, which empties its log.
    async fn save(&mut self) {
        debug!(
            seq = self.replica.seq(),
            logged = self.logged,
            "saving a snapshot"
        );
        self.outlets
            .store
            .snapshot(
                self.replica.snapshot(),
                self.replica.seq(),
                self.deliver_after,
            )
            .await;
        self.logged = 0;
    }
}

fn now() -> Timestamp {
    Timestamp(crate::store::writer::now_millis())
}

/// The MUC service a room belongs to.
fn service_of(room: &BareJid) -> BareJid {
    BareJid::from_parts(None, room.domain())
}

/// The stanzas a replica's actions stand for: through the local server's
/// multicast (`via`) when it offers it, else one per recipient. The
/// replica keeps only sends to its own domain's users, so this is the whole
/// of what the slave delivers.
pub fn stanzas(room: &BareJid, actions: Vec<Action>, via: Option<&BareJid>) -> Vec<Element> {
    let mut out = Vec::new();
    for action in actions {
        if let Action::Send { to, stanza } = action {
            out.extend(outbound::render(room, &stanza, &to, via));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use dmuc_room::testing::join;
    use dmuc_room::{Input, Room, Timestamp};

    use super::*;

    fn recipients(stanzas: &[Element]) -> Vec<String> {
        stanzas
            .iter()
            .map(|s| s.attr("to").unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn a_slave_delivers_to_its_own_domain_only() {
        let room: BareJid = "r@conference.a.test".parse().unwrap();
        let mut master = Room::new(room.clone(), dmuc_room::testing::relaxed_settings());
        master.handle(join("alice@a.test/1", "alice"), Timestamp(1));
        let mut slave = Replica::new(master.snapshot(), 1, 0, "b.test");
        let mut delivered = Vec::new();
        for (seq, input) in [
            join("bob@b.test/1", "bob"),
            join("carol@c.test/1", "carol"),
            join("dave@sub.b.test/1", "dave"),
        ]
        .into_iter()
        .enumerate()
        {
            let Applied::Deliver(actions) = slave.apply(seq as u64 + 2, Timestamp(2), input) else {
                panic!("applied");
            };
            delivered.extend(stanzas(&room, actions, None));
        }
        // Bob's join sequence (alice, himself, subject), then carol's and
        // dave's presences to him; nothing to a.test, c.test or sub.b.test.
        let to = recipients(&delivered);
        assert_eq!(to.len(), 5);
        assert!(to.iter().all(|t| t == "bob@b.test/1"), "{to:?}");
        assert!(
            delivered
                .iter()
                .all(|s| s.attr("from").unwrap().starts_with("r@conference.a.test"))
        );
    }

    fn event(room: &Room, seq: u64, input: Input) -> RoomEvent {
        RoomEvent {
            room: room.jid().clone(),
            seq,
            now: Timestamp(seq as i64),
            input,
        }
    }

    #[test]
    fn a_stored_slave_loads_at_its_last_logged_event() {
        let mut master = Room::new(
            "r@conference.a.test".parse().unwrap(),
            dmuc_room::testing::relaxed_settings(),
        );
        master.handle(join("alice@a.test/1", "alice"), Timestamp(1));
        let snapshot = master.snapshot();
        let log: Vec<RoomEvent> = [join("bob@b.test/1", "bob"), join("carol@c.test/1", "carol")]
            .into_iter()
            .zip(2..)
            .map(|(input, seq)| {
                master.handle(input.clone(), Timestamp(seq as i64));
                event(&master, seq, input)
            })
            .collect();
        let stored = |log: Vec<RoomEvent>| StoredSlave {
            seq: 1,
            deliver_after: 0,
            snapshot: snapshot.clone(),
            log,
        };

        let dormant = Dormant::load(stored(log.clone()), "b.test");
        assert_eq!((dormant.seq(), dormant.logged), (3, 2));
        assert_eq!(dormant.replica().snapshot(), master.snapshot());

        // A log with a hole is replayed up to it.
        let holed = vec![log[1].clone()];
        let dormant = Dormant::load(stored(holed), "b.test");
        assert_eq!((dormant.seq(), dormant.logged), (1, 0));
    }
}
