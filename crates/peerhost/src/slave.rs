//! One task per slave: it owns the room's [`Replica`], applies the master's
//! events in order and hands the stanzas for this domain's users to the
//! component link, then acknowledges.
//!
//! ```text
//!  stream ──RoomEvent──▶ inbox ─▶ Replica::apply ─▶ Deliver ─▶ stanzas() ─▶ link
//!                                     │ Gap                       then Ack{room, seq} ─▶ stream
//!                                     └──────────▶ Resync{room, have_seq} ─▶ stream
//! ```

use dmuc_component::LinkHandle;
use dmuc_protocol::pb::{self, peer_frame};
use dmuc_protocol::{RoomEvent, SlaveStart};
use dmuc_room::Action;
use dmuc_room::replica::{Applied, Replica};
use dmuc_stanza::outbound;
use jid::BareJid;
use minidom::Element;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info_span, warn};

use crate::stream::Upstream;

/// How many events may wait for a busy slave before the stream waits (and,
/// through HTTP/2 flow control, the master).
const INBOX: usize = 1024;

/// A slave acknowledges at the latest after this many events, even when
/// more are waiting.
const ACK_EVERY: u64 = 64;

/// What the stream keeps of a running slave.
#[derive(Debug)]
pub struct Slave {
    inbox: mpsc::Sender<RoomEvent>,
    task: JoinHandle<()>,
}

impl Slave {
    /// Starts the task owning a replica made from `start`, serving `domain`.
    pub fn spawn(start: SlaveStart, domain: &BareJid, link: LinkHandle, up: Upstream) -> Slave {
        let room = start.snapshot.jid.clone();
        let replica = Replica::new(
            start.snapshot,
            start.seq,
            start.deliver_after,
            domain.as_str(),
        );
        let (inbox, rx) = mpsc::channel(INBOX);
        let span = info_span!("slave", room = %room);
        let task = tokio::spawn(run(room, replica, rx, link, up).instrument(span));
        Slave { inbox, task }
    }

    /// Queues an event; `false` if the slave has stopped (its link closed).
    pub async fn send(&self, event: RoomEvent) -> bool {
        self.inbox.send(event).await.is_ok()
    }

    /// Lets the slave finish the events already queued, then waits for it.
    pub async fn stop(self) {
        drop(self.inbox);
        let _ = self.task.await;
    }
}

async fn run(
    room: BareJid,
    mut replica: Replica,
    mut inbox: mpsc::Receiver<RoomEvent>,
    link: LinkHandle,
    up: Upstream,
) {
    debug!(seq = replica.seq(), "slave started");
    let mut acked = replica.seq();
    // After a gap the slave applies nothing until the master replaces it.
    let mut stalled = false;
    while let Some(event) = inbox.recv().await {
        if stalled {
            continue;
        }
        let seq = event.seq;
        match replica.apply(seq, event.now, event.input) {
            Applied::Deliver(actions) => {
                for stanza in stanzas(&room, actions) {
                    if link.send(stanza).await.is_err() {
                        warn!("component link closed: slave stops");
                        return;
                    }
                }
            }
            Applied::Duplicate => debug!(seq, "duplicate event ignored"),
            Applied::Gap { have } => {
                warn!(seq, have, "gap in room events: asking for a resync");
                stalled = true;
                up.resync(&room, have).await;
                continue;
            }
        }
        let seq = replica.seq();
        if seq > acked && (inbox.is_empty() || seq - acked >= ACK_EVERY) {
            let ack = peer_frame::Frame::Ack(pb::Ack {
                room: room.to_string(),
                seq,
            });
            if !up.send(ack).await {
                return;
            }
            acked = seq;
        }
    }
    debug!(seq = replica.seq(), "slave stopped");
}

/// The stanzas a replica's actions stand for, one per recipient. The
/// replica keeps only sends to its own domain's users, so this is the whole
/// of what the slave delivers.
pub fn stanzas(room: &BareJid, actions: Vec<Action>) -> Vec<Element> {
    let mut out = Vec::new();
    for action in actions {
        if let Action::Send { to, stanza } = action {
            let el = outbound::build(room, &stanza);
            out.extend(to.iter().map(|jid| outbound::addressed(el.clone(), jid)));
        }
    }
    out
}

#[cfg(test)]
mod tests {

    use dmuc_room::event::JoinRequest;
    use dmuc_room::{Input, Nick, Payload, Room, Timestamp};

    use super::*;

    fn join(who: &str, nick: &str) -> Input {
        Input::Presence {
            from: who.parse().unwrap(),
            nick: Nick::new(nick).unwrap(),
            join: Some(JoinRequest::default()),
            payload: Payload::default(),
        }
    }

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
            delivered.extend(stanzas(&room, actions));
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
}
