//! What a slave does while it cannot reach its room's master: a *split*.
//!
//! The slave forks its [`Replica`] into a [`Split`]: a copy of the room that
//! serves the slave's own domain alone, under the room's [`SplitPolicy`],
//! and records in a log every input it lets change the room. When the
//! master is back, [`Split::end`] hands over what the master needs to merge
//! the split back into the room.
//!
//! ```text
//!  master unreachable:
//!  Replica ──snapshot──▶ Split::begin ──▶ notice "split" to local occupants
//!  (kept as it was;            │
//!   resumes after heal)        ▼
//!  local input, now ──▶ Split::handle ──policy refuses──▶ an error to the sender
//!                              │
//!                              └──▶ forked Room ──local_only──▶ sends to local users
//!                                        │
//!                                        └──▶ log: SplitEvent { now, input, local_id }
//!                                                  ──▶ peerhost store, before the sends
//!  peerhost restart: Split::restore(start, log): replays the log, same room, same ids
//!  master back:      Split::end ──▶ notice "whole" to local occupants
//!                               └─▶ submissions, in local order ──▶ master
//! ```
//!
//! # Ids
//! The forked room numbers its messages on from where the replica was, but
//! with provisional stanza ids, `split:{domain}:{began:x}:{seq:x}`
//! ([`StanzaId::provisional`]). They can never equal the master's
//! (`{epoch:x}-{seq:x}`) nor another split's, and they depend only on the
//! [`SplitStart`] and the log, so replaying the log gives the same ids.
//! Local users have seen these ids, so the master keeps them when it
//! merges the messages on heal ([`crate::merge`]): then a message has one
//! id everywhere.
//!
//! # Errors
//! - `off`: `remote-server-timeout` (type `wait`): what the request needs,
//!   the room's master, cannot be reached for now. Leaving still works, and
//!   under every policy the split answers XEP-0410 self-pings, so that
//!   clients stay in the room.
//! - `local-chat`, `open`: what the policy forbids (joins under
//!   `local-chat`; nick, subject, role, affiliation and configuration
//!   changes, destruction) gets `not-allowed` of type `wait`: the refusal
//!   lasts only until the room is whole again.
//! - A private message or IQ to an occupant of another domain gets
//!   `remote-server-timeout` (type `wait`): the recipient is out of reach.
//!
//! Each error carries a text saying that the room is split from its master.
//! Nothing that expects an answer is dropped; what cannot be answered (IQ
//! responses whose requester is out of reach) is dropped, as XMPP requires.

use jid::FullJid;

use crate::event::{IqRequest, JoinRequest, StanzaKind};
use crate::replica::{Replica, local_only};
use crate::{
    Action, Condition, ErrorType, Input, Nick, Outgoing, Room, RoomSnapshot, SplitPolicy, StanzaId,
    Timestamp,
};

/// Where a split started: everything [`Split::restore`] needs besides the log.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitStart {
    /// The replica's room when the split began.
    pub snapshot: RoomSnapshot,
    /// The last master event the replica had applied.
    pub seq: u64,
    /// The slave's own domain: the only users the split serves.
    pub domain: String,
    /// When the split began; part of every provisional id.
    pub began: Timestamp,
}

/// One input the split let change its room, in local order.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitEvent {
    /// When the slave handled it (the message's timestamp, kept on heal).
    pub now: Timestamp,
    pub input: Input,
    /// The provisional stanza id of the groupchat message it became.
    pub local_id: Option<StanzaId>,
}

/// What [`Split::end`] leaves for the runtime.
#[derive(Debug, PartialEq)]
pub struct Healed {
    /// Tell local occupants that the room is whole again.
    pub actions: Vec<Action>,
    /// The last master event the slave had applied when the split began
    /// ([`SplitStart::seq`]): the submissions happened after it.
    pub since: u64,
    /// What the master must merge, in local order: joins, status changes
    /// and leaves that took effect, and the groupchat messages delivered
    /// (each with its provisional id). Inputs that the split refused or
    /// the room turned down, private messages and IQs (answered, or
    /// delivered, locally) are not part of it. The peerhost submits each
    /// as a [`Merge`](crate::Merge) whose `index` is its place here
    /// ([`crate::merge`]).
    pub submissions: Vec<SplitEvent>,
    /// To submit after `submissions`: each local session still in the
    /// room, rejoining with its presence as it is now. A master that
    /// restarted during the split (and so lost its occupants) gets them
    /// back; to one that kept them, a presence that did not change is
    /// nothing new. Sorted by session.
    pub present: Vec<SplitEvent>,
}

/// A slave's room while it is split from its master.
#[derive(Debug)]
pub struct Split {
    start: SplitStart,
    room: Room,
    policy: SplitPolicy,
    log: Vec<SplitEvent>,
    /// Parallel to `log`: whether the entry goes to the master on heal.
    submit: Vec<bool>,
}

/// What the policy makes of an input.
enum Verdict {
    /// The room handles it.
    Room,
    /// An error to the sender.
    Refuse(Condition, &'static str),
    /// Not ours to answer: from another domain, or the service's own.
    Ignore,
}

const OFF: &str = "This room is split from its master and unavailable until it is whole again";
const NO_JOIN: &str = "This room is split from its master: nobody can join until it is whole again";
const NO_NICK_CHANGE: &str =
    "This room is split from its master: nicks cannot change until it is whole again";
const NO_SUBJECT_CHANGE: &str =
    "This room is split from its master: the subject cannot change until it is whole again";
const NO_MODERATION: &str = "This room is split from its master: roles, affiliations and \
    the configuration cannot change until it is whole again";
const UNREACHABLE: &str =
    "This room is split from its master: that occupant is out of reach until it is whole again";

impl Split {
    /// Forks `replica` at `now`: the split-era room, and the notices that
    /// tell local occupants the room is split. The replica itself is left
    /// as it was; it resumes from [`SplitStart::seq`] after the heal.
    pub fn begin(replica: &Replica, now: Timestamp) -> (Split, Vec<Action>) {
        let split = Split::restore(
            SplitStart {
                snapshot: replica.snapshot(),
                seq: replica.seq(),
                domain: replica.domain().to_owned(),
                began: now,
            },
            Vec::new(),
        );
        let text = split.begin_text();
        let actions = split.notice(text);
        (split, actions)
    }

    /// The split as it was after `log` (from [`Self::log`]): each input is
    /// handled again, so state and provisional ids come out the same.
    /// Nothing is sent: the occupants saw it all the first time.
    pub fn restore(start: SplitStart, log: Vec<SplitEvent>) -> Split {
        let mut room = Room::from_snapshot(start.snapshot.clone());
        room.number_provisionally(&start.domain, start.began);
        let mut split = Split {
            policy: start.snapshot.config.split_policy,
            start,
            room,
            log: Vec::with_capacity(log.len()),
            submit: Vec::with_capacity(log.len()),
        };
        for event in log {
            split.apply(event.input, event.now);
        }
        split
    }

    /// Handles one input from a local user at `now`, under the room's
    /// split policy. The actions are sends to local users only.
    ///
    /// An input that may change the room is appended to [`Self::log`]
    /// (so the new entries are `log()[len_before..]`); the runtime must
    /// store them before sending the actions, so that what local users
    /// saw survives a crash.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> Vec<Action> {
        match self.judge(&input) {
            Verdict::Room => self.apply(input, now),
            Verdict::Refuse(condition, text) => refusal(&input, condition, text),
            Verdict::Ignore => Vec::new(),
        }
    }

    /// The room is whole again: the notices for local occupants, and the
    /// split-era inputs for the master to merge.
    pub fn end(self) -> Healed {
        let actions = self.notice("This room is whole again".to_owned());
        let since = self.start.seq;
        let at = self.log.last().map_or(self.start.began, |e| e.now);
        let mut present: Vec<SplitEvent> = self
            .room
            .sessions()
            .filter(|s| self.is_local(s))
            .filter_map(|session| {
                let (nick, payload) = self.room.session_presence(session)?;
                Some(SplitEvent {
                    now: at,
                    input: Input::Presence {
                        from: session.clone(),
                        nick: nick.clone(),
                        join: Some(JoinRequest::default()),
                        payload: payload.clone(),
                    },
                    local_id: None,
                })
            })
            .collect();
        present.sort_by(|a, b| {
            let jid = |e: &SplitEvent| e.input.sender().map(|j| j.as_str().to_owned());
            jid(a).cmp(&jid(b))
        });
        let submissions = self
            .log
            .into_iter()
            .zip(self.submit)
            .filter_map(|(event, submit)| submit.then_some(event))
            .collect();
        Healed {
            actions,
            since,
            submissions,
            present,
        }
    }

    /// Every input that changed (or may have changed) the room, in local
    /// order: what the runtime persists, and gives back to [`Self::restore`].
    pub fn log(&self) -> &[SplitEvent] {
        &self.log
    }

    pub fn start(&self) -> &SplitStart {
        &self.start
    }

    pub fn policy(&self) -> SplitPolicy {
        self.policy
    }

    /// The split-era room, as local users see it.
    pub fn room(&self) -> &Room {
        &self.room
    }

    fn is_local(&self, jid: &FullJid) -> bool {
        jid.domain().as_str() == self.start.domain
    }

    fn judge(&self, input: &Input) -> Verdict {
        let Some(from) = input.sender() else {
            return Verdict::Ignore; // The service's own (Shutdown): the runtime's business.
        };
        if !self.is_local(from) {
            return Verdict::Ignore;
        }
        let me = self.room.nick_of(from);
        match input {
            // The master's business, never a user's stanza.
            Input::Merge(_) => Verdict::Ignore,
            // Leaving always works, and answers complete exchanges.
            Input::Leave { .. } | Input::Bounced { .. } | Input::IqResponse { .. } => Verdict::Room,
            // XEP-0410: answered, so that clients stay in the room.
            Input::Iq {
                to: Some(target),
                request: IqRequest::Ping,
                ..
            } if me == Some(target) => Verdict::Room,
            _ if self.policy == SplitPolicy::Off => {
                Verdict::Refuse(Condition::RemoteServerTimeout, OFF)
            }
            Input::Presence { nick, join, .. } => match me {
                Some(current) if current == nick => Verdict::Room,
                Some(_) => Verdict::Refuse(Condition::NotAllowed, NO_NICK_CHANGE),
                // Not a join; the room says so.
                None if join.is_none() => Verdict::Room,
                // Never on a room that has ended: the joiner would create
                // it anew and own it.
                None if self.policy == SplitPolicy::Open && self.room.exists() => Verdict::Room,
                None => Verdict::Refuse(Condition::NotAllowed, NO_JOIN),
            },
            Input::Groupchat {
                subject: Some(_),
                has_body: false,
                ..
            } if me.is_some() => Verdict::Refuse(Condition::NotAllowed, NO_SUBJECT_CHANGE),
            Input::Groupchat { .. } => Verdict::Room,
            Input::Private { to, .. } | Input::Iq { to: Some(to), .. } => self.to_occupant(me, to),
            Input::Iq {
                to: None, request, ..
            } => match request {
                IqRequest::AdminSet(_) | IqRequest::ConfigSet(_) | IqRequest::Destroy { .. } => {
                    Verdict::Refuse(Condition::NotAllowed, NO_MODERATION)
                }
                _ => Verdict::Room,
            },
            Input::Shutdown => Verdict::Ignore,
        }
    }

    /// A private message or IQ from occupant `me` to occupant `to`.
    fn to_occupant(&self, me: Option<&Nick>, to: &Nick) -> Verdict {
        let remote = self
            .room
            .occupant_sessions(to)
            .is_some_and(|sessions| !sessions.iter().any(|s| self.is_local(s)));
        if me.is_some() && remote {
            Verdict::Refuse(Condition::RemoteServerTimeout, UNREACHABLE)
        } else {
            // Local, or not there (the room answers item-not-found), or
            // from a non-occupant (the room answers not-acceptable).
            Verdict::Room
        }
    }

    /// Has the room handle `input`, logs it if it may change the room,
    /// and keeps the sends to local users.
    fn apply(&mut self, input: Input, now: Timestamp) -> Vec<Action> {
        // IQs and their answers never change the room (moderation is
        // refused), so they need no log entry.
        let logged = !matches!(
            input,
            Input::Iq { .. } | Input::IqResponse { .. } | Input::Shutdown
        );
        let joined_before = input
            .sender()
            .is_some_and(|from| self.room.nick_of(from).is_some());
        let record = logged.then(|| input.clone());
        let actions = self.room.handle(input, now);
        let local_id = actions.iter().find_map(|a| match a {
            Action::Send {
                stanza: Outgoing::Groupchat(m),
                ..
            } => Some(m.stanza_id.clone()),
            _ => None,
        });
        let mut actions = local_only(actions, |jid| self.is_local(jid));
        let Some(input) = record else {
            return actions;
        };
        let submit = match &input {
            Input::Presence {
                from, nick, join, ..
            } => {
                let joined = self.room.nick_of(from) == Some(nick);
                if joined && join.is_some() && !joined_before {
                    // A new joiner learns why the room looks as it does.
                    actions.push(Action::Send {
                        to: vec![from.clone()],
                        stanza: Outgoing::Notice {
                            text: self.begin_text(),
                        },
                    });
                }
                joined
            }
            Input::Leave { .. } | Input::Bounced { .. } => joined_before,
            Input::Groupchat { .. } => local_id.is_some(),
            _ => false,
        };
        self.log.push(SplitEvent {
            now,
            input,
            local_id,
        });
        self.submit.push(submit);
        actions
    }

    fn begin_text(&self) -> String {
        let domain = &self.start.domain;
        match self.policy {
            SplitPolicy::Off => format!("{OFF}; you remain in it"),
            SplitPolicy::LocalChat => format!(
                "This room is split from its master: until it is whole again, only occupants \
                 on {domain} can be reached, and nobody can join, change nick or moderate"
            ),
            SplitPolicy::Open => format!(
                "This room is split from its master: until it is whole again, only occupants \
                 on {domain} can be reached, only users of {domain} can join, and nobody can \
                 change nick or moderate"
            ),
        }
    }

    /// A notice to every local session, in a stable order.
    fn notice(&self, text: String) -> Vec<Action> {
        let mut to: Vec<FullJid> = self
            .room
            .sessions()
            .filter(|s| self.is_local(s))
            .cloned()
            .collect();
        if to.is_empty() {
            return Vec::new();
        }
        to.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        vec![Action::Send {
            to,
            stanza: Outgoing::Notice { text },
        }]
    }
}

/// The error answer to a refused input; inputs without an answer get none.
fn refusal(input: &Input, condition: Condition, text: &'static str) -> Vec<Action> {
    let (from, kind, nick, id) = match input {
        Input::Presence { from, nick, .. } => (from, StanzaKind::Presence, Some(nick), None),
        Input::Groupchat { from, id, .. } => (from, StanzaKind::Message, None, id.clone()),
        Input::Private { from, to, id, .. } => (from, StanzaKind::Message, Some(to), id.clone()),
        Input::Iq { from, to, id, .. } => (from, StanzaKind::Iq, to.as_ref(), Some(id.clone())),
        Input::Leave { .. }
        | Input::Bounced { .. }
        | Input::IqResponse { .. }
        | Input::Shutdown
        | Input::Merge(_) => {
            return Vec::new();
        }
    };
    vec![Action::Send {
        to: vec![from.clone()],
        stanza: Outgoing::Error {
            kind,
            from: nick.cloned(),
            id,
            condition,
            // Every refusal lasts only as long as the split.
            error_type: ErrorType::Wait,
            text: Some(text),
        },
    }]
}
