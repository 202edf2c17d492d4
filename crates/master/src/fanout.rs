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
use tracing::{debug, info};

use crate::peering::{Directory, LinkState, News, PeerHandle, PeerNews, ToPeer};

/// Events kept for slaves that come back (Resume instead of a snapshot).
const LOG_LIMIT: usize = 4096;

/// Something the room task must do, in order.
#[derive(Debug)]
pub enum Effect {
    /// Deliver these to their recipients directly.
    Direct(Vec<Action>),
    /// Hand this to a peerhost's task.
    Peer(PeerHandle, ToPeer),
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
    /// Since when the room has had no occupant from the domain.
    empty_since: Option<Instant>,
}

#[derive(Debug)]
enum Mode {
    Direct,
    Slave {
        session: u64,
        /// Shares of released events the slave has not acknowledged.
        unacked: VecDeque<(u64, Vec<Action>)>,
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
        }
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
        let Input::Presence {
            from,
            join: Some(_),
            ..
        } = input
        else {
            return None;
        };
        let domain = from.domain().as_str();
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
                empty_since: None,
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
                if let Mode::Slave { session: s, .. } = entry.mode
                    && s <= session
                {
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
                None
            }
            PeerNews::Ack {
                session,
                seq: acked,
            } => {
                acknowledge(entry, session, acked);
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
                acknowledge(entry, session, have);
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
                entry.empty_since = None;
                continue;
            }
            let since = *entry.empty_since.get_or_insert(now);
            let settled = matches!(&entry.mode, Mode::Slave { unacked, .. } if unacked.is_empty())
                || matches!(entry.mode, Mode::Direct);
            if now.duration_since(since) >= self.grace && settled && entry.attaching.is_none() {
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
        self.domains
            .values()
            .filter_map(|d| d.empty_since)
            .min()
            .map(|since| since + self.grace)
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
                let mut wire: Option<Arc<pb::Event>> = None;
                for (domain, entry) in &mut self.domains {
                    let share = shares
                        .iter()
                        .position(|(d, _)| d == domain)
                        .map(|i| shares.swap_remove(i).1);
                    match &mut entry.mode {
                        Mode::Slave { session, unacked } => {
                            let event =
                                wire.get_or_insert_with(|| Arc::new(pb::Event::from(&event)));
                            effects.push(Effect::Peer(
                                entry.peer.clone(),
                                ToPeer::Event {
                                    session: *session,
                                    event: event.clone(),
                                },
                            ));
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
                        if let Mode::Slave { unacked, .. } = &mut entry.mode {
                            let owed: Vec<Action> =
                                unacked.drain(..).flat_map(|(_, a)| a).collect();
                            if !owed.is_empty() {
                                effects.push(Effect::Direct(owed));
                            }
                        }
                        entry.direct_until = start.seq;
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
                            effects.push(Effect::Peer(
                                entry.peer.clone(),
                                ToPeer::Event { session, event },
                            ));
                        }
                        if let Mode::Slave { session: s, .. } = &mut entry.mode {
                            *s = session;
                        } else {
                            entry.mode = Mode::Slave {
                                session,
                                unacked: VecDeque::new(),
                            };
                        }
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
                };
            }
            Release::Destroy { domain, peer } => {
                info!(%domain, "destroying slave");
                if let LinkState::Up(session) = peer.state() {
                    effects.push(Effect::Peer(peer, self.destroy_frame(session)));
                }
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

fn acknowledge(entry: &mut Domain, session: u64, acked: u64) {
    if let Mode::Slave {
        session: s,
        unacked,
    } = &mut entry.mode
        && *s == session
    {
        while unacked.front().is_some_and(|(seq, _)| *seq <= acked) {
            unacked.pop_front();
        }
    }
}

fn has_occupant_from(room: &Room, domain: &str) -> bool {
    room.sessions().any(|jid| jid.domain().as_str() == domain)
}
