//! What goes into a room ([`Input`]) and what comes out ([`Action`]).

use std::sync::Arc;

use jid::{BareJid, FullJid};

use crate::form::{Form, Submission};
use crate::history::{HistoryRequest, Payload, RoomMessage, Subject};
use crate::merge::{Merge, SplitProgress};
use crate::{Affiliation, Condition, ErrorType, Nick, OccupantId, Role, RoomConfig, Timestamp};

/// A stanza addressed to the room or one of its occupants, already parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Available presence to `room/nick`: a join, a rejoin, a nick change or
    /// a status change, depending on who sends it.
    Presence {
        from: FullJid,
        nick: Nick,
        /// `Some` when the presence carries `<x xmlns='…muc'/>`.
        join: Option<JoinRequest>,
        payload: Payload,
    },
    /// Unavailable presence: the session leaves.
    Leave { from: FullJid, payload: Payload },
    /// An occupant's server bounced a stanza (error presence): the session is gone.
    Bounced { from: FullJid },
    /// A groupchat message to the room.
    Groupchat {
        from: FullJid,
        id: Option<String>,
        /// The `<subject/>` text, if the message has one.
        subject: Option<String>,
        has_body: bool,
        payload: Payload,
        size: usize,
    },
    /// A message to `room/nick`.
    Private {
        from: FullJid,
        to: Nick,
        id: Option<String>,
        kind: MessageKind,
        payload: Payload,
    },
    /// An IQ request to the room (`to: None`) or to an occupant JID.
    Iq {
        from: FullJid,
        to: Option<Nick>,
        id: String,
        request: IqRequest,
    },
    /// The answer of an occupant's client to an IQ the room relayed to it
    /// ([`IqRequest::Relay`]), addressed to the requester's occupant JID.
    IqResponse {
        from: FullJid,
        to: Nick,
        id: String,
        error: bool,
        payload: Payload,
    },
    /// The service is shutting down (status 332).
    Shutdown,
    /// An input that a slave's users sent while it was split from the
    /// master, submitted on heal ([`crate::merge`]).
    Merge(Box<Merge>),
}

impl Input {
    /// The session that asks to join, if this is a join (also a merged one:
    /// its domain's slave must be attached first, to hear of renames).
    pub fn joiner(&self) -> Option<&FullJid> {
        match self {
            Input::Presence {
                from,
                join: Some(_),
                ..
            } => Some(from),
            Input::Merge(merge) => merge.input.joiner(),
            _ => None,
        }
    }

    /// The user whose stanza this is; `None` for the service's own inputs.
    pub fn sender(&self) -> Option<&FullJid> {
        match self {
            Input::Presence { from, .. }
            | Input::Leave { from, .. }
            | Input::Bounced { from }
            | Input::Groupchat { from, .. }
            | Input::Private { from, .. }
            | Input::Iq { from, .. }
            | Input::IqResponse { from, .. } => Some(from),
            Input::Shutdown => None,
            Input::Merge(merge) => merge.input.sender(),
        }
    }
}

/// The `<x xmlns='http://jabber.org/protocol/muc'/>` of a join.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinRequest {
    pub password: Option<String>,
    pub history: HistoryRequest,
}

/// The message types a private message can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Chat,
    Normal,
    Groupchat,
    Headline,
}

/// An IQ request, by what the room does with it.
#[derive(Clone, Debug, PartialEq)]
pub enum IqRequest {
    DiscoInfo,
    DiscoItems,
    /// XEP-0199 ping; to an occupant JID it is an XEP-0410 self-ping.
    Ping,
    /// muc#admin get: the list of occupants with a role or users with an affiliation.
    AdminList(AdminFilter),
    /// muc#admin set: role and affiliation changes, applied all or nothing.
    AdminSet(Vec<AdminItem>),
    /// muc#owner get: the configuration form.
    ConfigGet,
    /// muc#owner set with a form; `None` is a cancel.
    ConfigSet(Option<Submission>),
    /// muc#owner set with `<destroy/>`.
    Destroy {
        reason: Option<String>,
        alternate: Option<BareJid>,
    },
    /// Any other request to an occupant JID (vCard, version, ...): relayed
    /// to one of the occupant's sessions, its answer relayed back.
    Relay {
        set: bool,
        payload: Payload,
    },
    /// Anything else: answered with an error.
    Unsupported,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminFilter {
    Role(Role),
    Affiliation(Affiliation),
}

/// One `<item/>` of a muc#admin set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminItem {
    Role {
        nick: Nick,
        role: Role,
        reason: Option<String>,
    },
    Affiliation {
        jid: BareJid,
        affiliation: Affiliation,
        reason: Option<String>,
    },
}

/// What the room asks its runtime to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send one stanza to every listed real JID.
    Send { to: Vec<FullJid>, stanza: Outgoing },
    /// Make a change durable (persistent rooms only). Later `Send`s must not
    /// leave before earlier `Persist`s are durable.
    Persist(Persist),
    /// The room no longer exists; its owner task may end.
    Close,
    /// Every submission of `domain`'s split since `began` with an index
    /// below `next_index` is merged (the answer to every [`Input::Merge`],
    /// whatever became of it): for the master to confirm to the peerhost,
    /// which resubmits from `next_index` what it still has.
    Merged {
        domain: String,
        began: Timestamp,
        next_index: u64,
    },
}

/// A durable change of a persistent room.
#[derive(Clone, Debug, PartialEq)]
pub enum Persist {
    Config(RoomConfig),
    Affiliation(BareJid, Affiliation),
    Subject(Subject),
    Message(Arc<RoomMessage>),
    /// Forget the room (destroyed, or no longer persistent).
    Delete,
    /// How far a domain's split is merged (replaces that domain's previous one).
    Merged(SplitProgress),
}

/// A stanza from the room or from an occupant JID, before serialization.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    Presence(Box<OccupantPresence>),
    /// A live groupchat message.
    Groupchat(Arc<RoomMessage>),
    /// A discussion history message (with a delay).
    History(Arc<RoomMessage>),
    /// A groupchat message merged from a split: live, but sent earlier
    /// (at its `at`), so with a delay as in [`Outgoing::History`].
    Merged(Arc<RoomMessage>),
    /// The subject, sent last on join (`delayed`) and live when it changes.
    Subject {
        subject: Option<Subject>,
        delayed: bool,
    },
    /// A room message carrying only status codes (e.g. 104).
    Status(Vec<u16>),
    /// A message from the room itself with a human-readable body, which
    /// clients show as a room notice (e.g. that the room is split).
    Notice {
        text: String,
    },
    Private {
        from: Nick,
        occupant_id: OccupantId,
        id: Option<String>,
        kind: MessageKind,
        payload: Payload,
    },
    IqResult {
        from: Option<Nick>,
        id: String,
        body: IqResponse,
    },
    /// An IQ relayed between occupants, from occupant `from`.
    Iq {
        from: Nick,
        id: String,
        kind: IqKind,
        payload: Payload,
    },
    Error {
        kind: StanzaKind,
        from: Option<Nick>,
        id: Option<String>,
        condition: Condition,
        /// Usually `condition.error_type()`; XEP-0045 sometimes says otherwise.
        error_type: ErrorType,
        text: Option<&'static str>,
    },
}

/// The type of a relayed IQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqKind {
    Get,
    Set,
    Result,
    Error,
}

/// The three stanza kinds, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StanzaKind {
    Presence,
    Message,
    Iq,
}

/// The payload of an IQ result.
#[derive(Clone, Debug, PartialEq)]
pub enum IqResponse {
    Empty,
    DiscoInfo {
        name: String,
        features: Vec<&'static str>,
        form: Form,
    },
    DiscoItems(Vec<(FullJid, String)>),
    AdminList(Vec<ListItem>),
    ConfigForm(Form),
}

/// One entry of a role or affiliation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListItem {
    pub jid: Option<BareJid>,
    pub nick: Option<Nick>,
    pub affiliation: Affiliation,
    pub role: Role,
}

/// An occupant's presence as one recipient sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct OccupantPresence {
    pub nick: Nick,
    pub available: bool,
    pub affiliation: Affiliation,
    pub role: Role,
    /// The real JID, when the recipient may see it.
    pub jid: Option<FullJid>,
    /// The new nick of a 303 nick change.
    pub new_nick: Option<Nick>,
    pub statuses: Vec<u16>,
    pub reason: Option<String>,
    pub occupant_id: OccupantId,
    pub payload: Payload,
    pub destroy: Option<Destroyed>,
}

/// The `<destroy/>` of a room destruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destroyed {
    pub reason: Option<String>,
    pub alternate: Option<BareJid>,
}
