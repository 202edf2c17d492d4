//! The room state machine: [`Room::handle`] takes an [`Input`] and returns
//! the [`Action`]s that carry it out. No I/O, no clock, no randomness.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jid::{BareJid, FullJid};
use minidom::Element;
use sha2::{Digest, Sha256};

use crate::config::{ConfigBounds, Whois};
use crate::event::{
    Action, AdminFilter, AdminItem, Destroyed, Input, IqKind, IqRequest, IqResponse, JoinRequest,
    ListItem, MessageKind, OccupantPresence, Outgoing, Persist, StanzaKind,
};
use crate::history::{History, HistoryRequest, Payload, RoomMessage, Subject};
use crate::merge::{Merges, SplitProgress};
use crate::{
    Affiliation, Condition, ErrorType, Nick, OccupantId, Role, RoomConfig, Seq, StanzaId, Timestamp,
};

/// XEP-0199.
const NS_PING: &str = "urn:xmpp:ping";

/// Service-wide settings every room of a master shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSettings {
    /// The master's boot epoch, part of every stanza id it assigns.
    pub epoch: u64,
    /// Secret salt for occupant ids.
    pub salt: Arc<[u8]>,
    pub bounds: ConfigBounds,
    /// New rooms are locked until their owner configures them (§10.1).
    pub lock_new_rooms: bool,
    /// Configuration of newly created rooms.
    pub default_config: RoomConfig,
    /// Per-occupant flood limit on messages.
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `burst` messages at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: u32,
}

/// What the master restores a persistent room from.
#[derive(Clone, Debug)]
pub struct StoredRoom {
    pub config: RoomConfig,
    pub affiliations: Vec<(BareJid, Affiliation)>,
    pub subject: Option<Subject>,
    /// The most recent messages, oldest first.
    pub history: Vec<Arc<RoomMessage>>,
    /// The next sequence number to assign.
    pub next_seq: Seq,
    /// How far each domain's last split is merged ([`crate::merge`]).
    pub merged: Vec<SplitProgress>,
}

#[derive(Clone, Debug)]
pub(crate) struct Occupant {
    pub(crate) bare: BareJid,
    /// Every joined session of this bare JID under this nick (§7.2.1 allows several).
    pub(crate) sessions: Vec<FullJid>,
    pub(crate) role: Role,
    pub(crate) occupant_id: OccupantId,
    presence: Payload,
    tokens: f64,
    refilled: Timestamp,
}

/// Everything a replica needs to continue a room exactly where its master
/// is: the whole state, so that the same inputs then produce the same actions.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomSnapshot {
    pub jid: BareJid,
    pub settings: RoomSettings,
    pub config: RoomConfig,
    /// Sorted by JID.
    pub affiliations: Vec<(BareJid, Affiliation)>,
    /// Sorted by nick.
    pub occupants: Vec<OccupantSnapshot>,
    pub subject: Option<Subject>,
    /// Oldest first.
    pub history: Vec<Arc<RoomMessage>>,
    pub next_seq: Seq,
    pub locked: bool,
    pub created: bool,
    /// How far each domain's last split is merged, sorted by domain.
    pub merged: Vec<SplitProgress>,
}

/// One occupant in a [`RoomSnapshot`].
#[derive(Clone, Debug, PartialEq)]
pub struct OccupantSnapshot {
    pub nick: Nick,
    pub bare: BareJid,
    pub sessions: Vec<FullJid>,
    pub role: Role,
    pub occupant_id: OccupantId,
    pub presence: Payload,
    /// Flood-control state, so replicas limit exactly as the master does.
    pub tokens: f64,
    pub refilled: Timestamp,
}

/// One XEP-0045 room.
#[derive(Debug)]
pub struct Room {
    jid: BareJid,
    pub(crate) settings: RoomSettings,
    config: RoomConfig,
    affiliations: BTreeMap<BareJid, Affiliation>,
    pub(crate) occupants: BTreeMap<Nick, Occupant>,
    by_session: HashMap<FullJid, Nick>,
    subject: Option<Subject>,
    pub(crate) history: History,
    next_seq: Seq,
    /// Awaiting its owner's first configuration (§10.1.2).
    locked: bool,
    /// Whether the room exists yet: a new room is created by its first join.
    created: bool,
    /// Who numbers the room's messages.
    ids: Ids,
    /// How far each domain's splits are merged.
    pub(crate) merges: Merges,
}

/// Whose stanza ids a room assigns: the master's, or a split-off slave's
/// provisional ones ([`crate::split`]), which never collide with them.
#[derive(Clone, Debug)]
enum Ids {
    Master,
    Provisional { domain: Arc<str>, began: Timestamp },
}

/// Accumulates the actions of one input.
#[derive(Default)]
pub(crate) struct Out(pub(crate) Vec<Action>);

impl Out {
    pub(crate) fn send(&mut self, to: Vec<FullJid>, stanza: Outgoing) {
        if !to.is_empty() {
            self.0.push(Action::Send { to, stanza });
        }
    }

    pub(crate) fn one(&mut self, to: &FullJid, stanza: Outgoing) {
        self.send(vec![to.clone()], stanza);
    }

    fn error(
        &mut self,
        to: &FullJid,
        kind: StanzaKind,
        from: Option<Nick>,
        id: Option<String>,
        condition: Condition,
        text: Option<&'static str>,
    ) {
        self.one(
            to,
            Outgoing::Error {
                kind,
                from,
                id,
                condition,
                error_type: condition.error_type(),
                text,
            },
        );
    }
}

/// Why an occupant is removed, as status code and whom to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    Kicked,
    Banned,
    AffiliationChanged,
    MembersOnly,
    Bounced,
    Shutdown,
}

impl Removal {
    fn status(self) -> u16 {
        match self {
            Removal::Banned => 301,
            Removal::Kicked => 307,
            Removal::AffiliationChanged => 321,
            Removal::MembersOnly => 322,
            Removal::Shutdown => 332,
            Removal::Bounced => 333,
        }
    }
}

impl Room {
    /// A room that does not exist yet; its first join creates it.
    pub fn new(jid: BareJid, settings: RoomSettings) -> Self {
        let config = settings.default_config.clone();
        Room {
            jid,
            settings,
            config,
            affiliations: BTreeMap::new(),
            occupants: BTreeMap::new(),
            by_session: HashMap::new(),
            subject: None,
            history: History::default(),
            next_seq: Seq(1),
            locked: false,
            created: false,
            ids: Ids::Master,
            merges: Merges::default(),
        }
    }

    /// A persistent room as it was stored.
    pub fn restore(jid: BareJid, settings: RoomSettings, stored: StoredRoom) -> Self {
        let mut room = Room::new(jid, settings);
        room.config = stored.config;
        room.affiliations = stored.affiliations.into_iter().collect();
        room.subject = stored.subject;
        let keep = room.config.history_length as usize;
        for m in stored.history {
            room.history.push(m, keep);
        }
        room.next_seq = stored.next_seq;
        room.merges = Merges::from(stored.merged);
        room.created = true;
        room
    }

    /// The whole state, for a replica.
    pub fn snapshot(&self) -> RoomSnapshot {
        let mut affiliations: Vec<(BareJid, Affiliation)> = self
            .affiliations
            .iter()
            .map(|(j, a)| (j.clone(), *a))
            .collect();
        affiliations.sort();
        RoomSnapshot {
            jid: self.jid.clone(),
            settings: self.settings.clone(),
            config: self.config.clone(),
            affiliations,
            occupants: self
                .occupants
                .iter()
                .map(|(nick, o)| OccupantSnapshot {
                    nick: nick.clone(),
                    bare: o.bare.clone(),
                    sessions: o.sessions.clone(),
                    role: o.role,
                    occupant_id: o.occupant_id.clone(),
                    presence: o.presence.clone(),
                    tokens: o.tokens,
                    refilled: o.refilled,
                })
                .collect(),
            subject: self.subject.clone(),
            history: self.history.iter().cloned().collect(),
            next_seq: self.next_seq,
            locked: self.locked,
            created: self.created,
            merged: self.merges.progress(),
        }
    }

    /// A replica continuing from `snapshot`.
    pub fn from_snapshot(snapshot: RoomSnapshot) -> Self {
        let mut room = Room::new(snapshot.jid, snapshot.settings);
        room.config = snapshot.config;
        room.affiliations = snapshot.affiliations.into_iter().collect();
        for o in snapshot.occupants {
            for s in &o.sessions {
                room.by_session.insert(s.clone(), o.nick.clone());
            }
            room.occupants.insert(
                o.nick,
                Occupant {
                    bare: o.bare,
                    sessions: o.sessions,
                    role: o.role,
                    occupant_id: o.occupant_id,
                    presence: o.presence,
                    tokens: o.tokens,
                    refilled: o.refilled,
                },
            );
        }
        room.subject = snapshot.subject;
        let keep = usize::MAX;
        for m in snapshot.history {
            room.history.push(m, keep);
        }
        room.next_seq = snapshot.next_seq;
        room.locked = snapshot.locked;
        room.created = snapshot.created;
        room.merges = Merges::from(snapshot.merged);
        room
    }

    /// From now on, messages get provisional stanza ids
    /// ([`StanzaId::provisional`]): the room is a split-off copy.
    pub(crate) fn number_provisionally(&mut self, domain: &str, began: Timestamp) {
        self.ids = Ids::Provisional {
            domain: Arc::from(domain),
            began,
        };
    }

    fn stanza_id(&self, seq: Seq) -> StanzaId {
        match &self.ids {
            Ids::Master => StanzaId::assign(self.settings.epoch, seq),
            Ids::Provisional { domain, began } => StanzaId::provisional(domain, *began, seq),
        }
    }

    pub fn jid(&self) -> &BareJid {
        &self.jid
    }

    /// Whether the room exists: created by a first join, not yet ended.
    pub fn exists(&self) -> bool {
        self.created
    }

    /// The nick a joined session occupies.
    pub fn nick_of(&self, session: &FullJid) -> Option<&Nick> {
        self.by_session.get(session)
    }

    /// The nick and presence of a joined session.
    pub fn session_presence(&self, session: &FullJid) -> Option<(&Nick, &Payload)> {
        let nick = self.by_session.get(session)?;
        let occupant = self.occupants.get(nick)?;
        Some((nick, &occupant.presence))
    }

    /// The sessions of the occupant `nick`, if there is one.
    pub fn occupant_sessions(&self, nick: &Nick) -> Option<&[FullJid]> {
        self.occupants.get(nick).map(|o| o.sessions.as_slice())
    }

    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    pub fn occupant_count(&self) -> usize {
        self.occupants.len()
    }

    /// The occupants' sessions (full JIDs), in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = &FullJid> {
        self.by_session.keys()
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    pub fn affiliation(&self, jid: &BareJid) -> Affiliation {
        self.affiliations
            .get(jid)
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// Handles one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Timestamp) -> Vec<Action> {
        let mut out = Out(Vec::new());
        let existed = self.created;
        match input {
            Input::Presence {
                from,
                nick,
                join,
                payload,
            } => self.on_presence(&mut out, from, nick, join, payload, now),
            Input::Leave { from, payload } => self.on_leave(&mut out, &from, payload),
            Input::Bounced { from } => self.on_bounced(&mut out, &from),
            Input::Groupchat {
                from,
                id,
                subject,
                has_body,
                payload,
                size,
            } => self.on_groupchat(&mut out, from, id, subject, has_body, payload, size, now),
            Input::Private {
                from,
                to,
                id,
                kind,
                payload,
            } => self.on_private(&mut out, from, to, id, kind, payload, now),
            Input::Iq {
                from,
                to,
                id,
                request,
            } => self.on_iq(&mut out, from, to, id, request),
            Input::IqResponse {
                from,
                to,
                id,
                error,
                payload,
            } => self.on_iq_response(&mut out, &from, &to, &id, error, payload),
            Input::Shutdown => {
                let nicks: Vec<Nick> = self.occupants.keys().cloned().collect();
                for nick in nicks {
                    self.remove_occupant(&mut out, &nick, Removal::Shutdown, None);
                }
            }
            Input::Merge(merge) => self.on_merge(&mut out, *merge, now),
        }
        self.end_if_empty(&mut out);
        if existed && !self.created {
            out.0.push(Action::Close);
        }
        out.0
    }

    fn persistent(&self) -> bool {
        self.created && self.config.persistent
    }

    pub(crate) fn persist(&self, out: &mut Out, change: Persist) {
        if self.persistent() {
            out.0.push(Action::Persist(change));
        }
    }

    /// A temporary room ends with its last occupant; so does a room whose
    /// creator left before configuring it.
    fn end_if_empty(&mut self, out: &mut Out) {
        if self.created && self.occupants.is_empty() && (!self.config.persistent || self.locked) {
            if self.config.persistent {
                out.0.push(Action::Persist(Persist::Delete));
            }
            self.created = false;
        }
    }

    // ---- presence ----------------------------------------------------------

    pub(crate) fn on_presence(
        &mut self,
        out: &mut Out,
        from: FullJid,
        nick: Nick,
        join: Option<JoinRequest>,
        payload: Payload,
        now: Timestamp,
    ) {
        match self.by_session.get(&from).cloned() {
            Some(current) if current == nick => match join {
                // §7.2.1: a join from a joined session is a request for a full resync.
                Some(request) => {
                    self.occupants.get_mut(&nick).expect("indexed").presence = payload;
                    self.send_join_sequence(out, &from, &nick, &request.history, false, now);
                }
                None => {
                    self.occupants.get_mut(&nick).expect("indexed").presence = payload;
                    self.broadcast_presence(out, &nick, &[]);
                }
            },
            Some(current) => self.change_nick(out, &from, current, nick, payload),
            // A presence without <x/> from a non-occupant is not a join (§7.2.1).
            None => match join {
                Some(request) => self.join(out, from, nick, request, payload, now),
                None => out.error(
                    &from,
                    StanzaKind::Presence,
                    Some(nick),
                    None,
                    Condition::NotAcceptable,
                    Some("Join requests must include <x xmlns='http://jabber.org/protocol/muc'/>"),
                ),
            },
        }
    }

    fn join(
        &mut self,
        out: &mut Out,
        from: FullJid,
        nick: Nick,
        request: JoinRequest,
        payload: Payload,
        now: Timestamp,
    ) {
        let bare = from.to_bare();
        let creating = !self.created;
        if creating {
            self.created = true;
            self.locked = self.settings.lock_new_rooms;
            self.config = self.settings.default_config.clone();
            self.affiliations.clear();
            self.affiliations.insert(bare.clone(), Affiliation::Owner);
        }
        if let Some((condition, text)) = self.admission(&bare, &nick, &request) {
            out.error(
                &from,
                StanzaKind::Presence,
                Some(nick),
                None,
                condition,
                Some(text),
            );
            if condition == Condition::ServiceUnavailable
                && let Some(Action::Send {
                    stanza: Outgoing::Error { error_type, .. },
                    ..
                }) = out.0.last_mut()
            {
                // §7.2.10: a full room is a temporary condition.
                *error_type = ErrorType::Wait;
            }
            return;
        }
        self.seat(&from, &nick, payload, now);
        if creating {
            self.persist_snapshot(out);
        }

        // Everyone else learns of the new occupant first...
        self.presence_to_others(out, &nick, &[]);
        // ...then the joiner gets the room (§7.2.2 order).
        self.send_join_sequence(out, &from, &nick, &request.history, creating, now);
    }

    /// Why `bare` may not join as `nick` with `request`, if it may not.
    pub(crate) fn admission(
        &self,
        bare: &BareJid,
        nick: &Nick,
        request: &JoinRequest,
    ) -> Option<(Condition, &'static str)> {
        let affiliation = self.affiliation(bare);
        if self.locked && affiliation != Affiliation::Owner {
            Some((Condition::ItemNotFound, "This room is locked"))
        } else if affiliation == Affiliation::Outcast {
            Some((Condition::Forbidden, "You are banned from this room"))
        } else if self.occupants.get(nick).is_some_and(|o| o.bare != *bare) {
            Some((Condition::Conflict, "That nickname is in use"))
        } else if self.config.members_only && affiliation == Affiliation::None {
            Some((Condition::RegistrationRequired, "This room is members-only"))
        } else if self
            .config
            .password
            .as_ref()
            .is_some_and(|p| request.password.as_ref() != Some(p))
        {
            Some((Condition::NotAuthorized, "A password is required"))
        } else if !self.occupants.contains_key(nick)
            && self.occupants.len() >= self.config.max_users as usize
            && !affiliation.is_admin_or_owner()
        {
            Some((Condition::ServiceUnavailable, "This room is full"))
        } else {
            None
        }
    }

    /// Seats session `from` as occupant `nick`, which [`Self::admission`]
    /// let in; tells nobody.
    pub(crate) fn seat(&mut self, from: &FullJid, nick: &Nick, payload: Payload, now: Timestamp) {
        let bare = from.to_bare();
        let occupant_id = OccupantId::derive(&self.settings.salt, &self.jid, &bare);
        let role = self.affiliation(&bare).default_role(self.config.moderated);
        let occupant = self
            .occupants
            .entry(nick.clone())
            .or_insert_with(|| Occupant {
                bare,
                sessions: Vec::new(),
                role,
                occupant_id,
                presence: Payload::default(),
                tokens: 0.0,
                refilled: now,
            });
        occupant.sessions.push(from.clone());
        occupant.presence = payload;
        if let Some(limit) = self.settings.rate_limit {
            occupant.tokens = f64::from(limit.burst);
        }
        self.by_session.insert(from.clone(), nick.clone());
    }

    /// Roster, own presence (110), history, subject: to one session.
    fn send_join_sequence(
        &self,
        out: &mut Out,
        to: &FullJid,
        nick: &Nick,
        history: &HistoryRequest,
        created: bool,
        now: Timestamp,
    ) {
        let me = &self.occupants[nick];
        for (other, occupant) in &self.occupants {
            if other != nick && self.config.presence_broadcast.contains(&occupant.role) {
                let p = self.presence_of(other, occupant, me.role, vec![]);
                out.one(to, Outgoing::Presence(Box::new(p)));
            }
        }
        let mut statuses = vec![110];
        if self.config.whois == Whois::Anyone {
            statuses.push(100);
        }
        if self.config.logging {
            statuses.push(170);
        }
        if created {
            statuses.push(201);
        }
        let own = self.presence_of(nick, me, me.role, statuses);
        out.one(to, Outgoing::Presence(Box::new(own)));
        for message in self.history.select(history, now) {
            out.one(to, Outgoing::History(message));
        }
        out.one(
            to,
            Outgoing::Subject {
                subject: self.subject.clone(),
                delayed: true,
            },
        );
    }

    pub(crate) fn on_leave(&mut self, out: &mut Out, from: &FullJid, payload: Payload) {
        let Some(nick) = self.by_session.get(from).cloned() else {
            return; // Not joined: nothing to leave, and no error for unavailable presence.
        };
        self.occupants.get_mut(&nick).expect("indexed").presence = payload;
        let occupant = &self.occupants[&nick];
        if occupant.sessions.len() > 1 {
            let p = self.presence_of(&nick, occupant, occupant.role, vec![110]);
            out.one(from, Outgoing::Presence(Box::new(unavailable(p))));
            self.detach_session(&nick, from);
            return;
        }
        self.remove_occupant(out, &nick, RemovalOrLeave::Leave, None);
    }

    /// The session's server bounced a stanza: the session is gone (333).
    pub(crate) fn on_bounced(&mut self, out: &mut Out, from: &FullJid) {
        if let Some(nick) = self.by_session.get(from).cloned() {
            self.remove_session(out, &nick, from, Removal::Bounced);
        }
    }

    fn remove_session(&mut self, out: &mut Out, nick: &Nick, session: &FullJid, why: Removal) {
        if self.occupants[nick].sessions.len() > 1 {
            self.detach_session(nick, session);
        } else {
            self.remove_occupant(out, nick, why, None);
        }
    }

    fn detach_session(&mut self, nick: &Nick, session: &FullJid) {
        self.by_session.remove(session);
        if let Some(o) = self.occupants.get_mut(nick) {
            o.sessions.retain(|s| s != session);
        }
    }

    /// Removes an occupant with all its sessions and tells the room.
    fn remove_occupant(
        &mut self,
        out: &mut Out,
        nick: &Nick,
        why: impl Into<RemovalOrLeave>,
        reason: Option<String>,
    ) {
        let why = why.into();
        let Some(mut occupant) = self.occupants.remove(nick) else {
            return;
        };
        for s in &occupant.sessions {
            self.by_session.remove(s);
        }
        let visible = self.config.presence_broadcast.contains(&occupant.role);
        occupant.role = Role::None;
        let statuses: Vec<u16> = match why {
            RemovalOrLeave::Leave => vec![],
            RemovalOrLeave::Removal(r) => vec![r.status()],
        };
        // The removed occupant hears it, unless its server is gone.
        if why != RemovalOrLeave::Removal(Removal::Bounced) {
            let mut own_statuses = vec![110];
            own_statuses.extend(&statuses);
            let mut p = self.presence_of(nick, &occupant, Role::None, own_statuses);
            p.reason = reason.clone();
            out.send(
                occupant.sessions.clone(),
                Outgoing::Presence(Box::new(unavailable(p))),
            );
        }
        if visible {
            self.each_recipient(out, None, |room, role| {
                let mut p = room.presence_of(nick, &occupant, role, statuses.clone());
                p.reason = reason.clone();
                Outgoing::Presence(Box::new(unavailable(p)))
            });
        }
    }

    fn change_nick(
        &mut self,
        out: &mut Out,
        from: &FullJid,
        old: Nick,
        new: Nick,
        payload: Payload,
    ) {
        let bare = from.to_bare();
        if self.occupants.get(&new).is_some_and(|o| o.bare != bare) {
            out.error(
                from,
                StanzaKind::Presence,
                Some(new),
                None,
                Condition::Conflict,
                Some("That nickname is in use"),
            );
            return;
        }
        if self.occupants.contains_key(&new) {
            // Same user holds both nicks (two sessions): not a rename.
            out.error(
                from,
                StanzaKind::Presence,
                Some(new),
                None,
                Condition::NotAcceptable,
                None,
            );
            return;
        }
        let mut occupant = self.occupants.remove(&old).expect("indexed");
        occupant.presence = payload;
        // Unavailable from the old nick with 303 and the new nick, to everyone.
        for session in &occupant.sessions {
            self.by_session.insert(session.clone(), new.clone());
        }
        let sessions = occupant.sessions.clone();
        let mut own = self.presence_of(&old, &occupant, occupant.role, vec![303, 110]);
        own.new_nick = Some(new.clone());
        out.send(
            sessions.clone(),
            Outgoing::Presence(Box::new(unavailable(own))),
        );
        self.each_recipient(out, None, |room, role| {
            let mut p = room.presence_of(&old, &occupant, role, vec![303]);
            p.new_nick = Some(new.clone());
            Outgoing::Presence(Box::new(unavailable(p)))
        });
        self.occupants.insert(new.clone(), occupant);
        self.broadcast_presence(out, &new, &[]);
    }

    /// Sends `nick`'s current presence to every occupant (110 to itself).
    fn broadcast_presence(&self, out: &mut Out, nick: &Nick, statuses: &[u16]) {
        self.presence_to_others(out, nick, statuses);
        let occupant = &self.occupants[nick];
        let mut own = vec![110];
        own.extend(statuses);
        let p = self.presence_of(nick, occupant, occupant.role, own);
        out.send(occupant.sessions.clone(), Outgoing::Presence(Box::new(p)));
    }

    /// Sends `nick`'s current presence to every other occupant.
    pub(crate) fn presence_to_others(&self, out: &mut Out, nick: &Nick, statuses: &[u16]) {
        let occupant = &self.occupants[nick];
        if self.config.presence_broadcast.contains(&occupant.role) {
            self.each_recipient(out, Some(nick), |room, role| {
                Outgoing::Presence(Box::new(room.presence_of(
                    nick,
                    occupant,
                    role,
                    statuses.to_vec(),
                )))
            });
        }
    }

    /// Builds one stanza per kind of recipient and sends it to every
    /// occupant but `except`: recipients differ only in seeing real JIDs.
    pub(crate) fn each_recipient(
        &self,
        out: &mut Out,
        except: Option<&Nick>,
        make: impl Fn(&Room, Role) -> Outgoing,
    ) {
        let mut by_role: BTreeMap<Role, Vec<FullJid>> = BTreeMap::new();
        for (nick, o) in &self.occupants {
            if Some(nick) != except {
                by_role
                    .entry(self.visibility_role(o.role))
                    .or_default()
                    .extend(o.sessions.iter().cloned());
            }
        }
        for (role, to) in by_role {
            out.send(to, make(self, role));
        }
    }

    /// Recipients differ only in whether they see real JIDs.
    fn visibility_role(&self, role: Role) -> Role {
        if self.sees_jids(role) {
            Role::Moderator
        } else {
            Role::Participant
        }
    }

    fn sees_jids(&self, role: Role) -> bool {
        self.config.whois == Whois::Anyone || role == Role::Moderator
    }

    pub(crate) fn presence_of(
        &self,
        nick: &Nick,
        occupant: &Occupant,
        recipient_role: Role,
        statuses: Vec<u16>,
    ) -> OccupantPresence {
        OccupantPresence {
            nick: nick.clone(),
            available: true,
            affiliation: self.affiliation(&occupant.bare),
            role: occupant.role,
            jid: self
                .sees_jids(recipient_role)
                .then(|| occupant.sessions.first().cloned())
                .flatten(),
            new_nick: None,
            statuses,
            reason: None,
            occupant_id: occupant.occupant_id.clone(),
            payload: occupant.presence.clone(),
            destroy: None,
        }
    }

    pub(crate) fn all_sessions(&self) -> Vec<FullJid> {
        self.occupants
            .values()
            .flat_map(|o| o.sessions.iter().cloned())
            .collect()
    }

    // ---- messages ----------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn on_groupchat(
        &mut self,
        out: &mut Out,
        from: FullJid,
        id: Option<String>,
        subject: Option<String>,
        has_body: bool,
        payload: Payload,
        size: usize,
        now: Timestamp,
    ) {
        let Some(nick) = self.by_session.get(&from).cloned() else {
            out.error(
                &from,
                StanzaKind::Message,
                None,
                id,
                Condition::NotAcceptable,
                Some("Only occupants are allowed to send messages to the conference"),
            );
            return;
        };
        let role = self.occupants[&nick].role;
        if let (Some(text), false) = (&subject, has_body) {
            let allowed =
                role == Role::Moderator || (self.config.change_subject && role.has_voice());
            if !allowed {
                out.error(
                    &from,
                    StanzaKind::Message,
                    None,
                    id,
                    Condition::Forbidden,
                    None,
                );
                return;
            }
            let subject = Subject {
                text: text.clone(),
                nick: Some(nick),
                at: now,
            };
            self.subject = Some(subject.clone());
            self.persist(out, Persist::Subject(subject.clone()));
            out.send(
                self.all_sessions(),
                Outgoing::Subject {
                    subject: Some(subject),
                    delayed: false,
                },
            );
            return;
        }
        if !role.has_voice() {
            out.error(
                &from,
                StanzaKind::Message,
                None,
                id,
                Condition::Forbidden,
                Some("You do not have voice in this room"),
            );
            return;
        }
        if !self.take_token(&nick, now) {
            out.error(
                &from,
                StanzaKind::Message,
                None,
                id,
                Condition::ResourceConstraint,
                None,
            );
            return;
        }
        let (seq, stanza_id) = self.number();
        let occupant = &self.occupants[&nick];
        let message = Arc::new(RoomMessage {
            seq,
            stanza_id,
            occupant_id: occupant.occupant_id.clone(),
            nick,
            sender: occupant.bare.clone(),
            id,
            at: now,
            payload,
            size,
        });
        self.keep(out, message.clone());
        out.send(self.all_sessions(), Outgoing::Groupchat(message));
    }

    /// The next message's sequence number and the stanza id it would get.
    pub(crate) fn number(&mut self) -> (Seq, StanzaId) {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        (seq, self.stanza_id(seq))
    }

    /// Appends a message to the history, durably.
    pub(crate) fn keep(&mut self, out: &mut Out, message: Arc<RoomMessage>) {
        self.history
            .push(message.clone(), self.config.history_length as usize);
        self.persist(out, Persist::Message(message));
    }

    /// Flood control: one token per message.
    fn take_token(&mut self, nick: &Nick, now: Timestamp) -> bool {
        let Some(limit) = self.settings.rate_limit else {
            return true;
        };
        let o = self.occupants.get_mut(nick).expect("indexed");
        let elapsed = (now.0 - o.refilled.0).max(0) as f64 / 1000.0;
        o.tokens = (o.tokens + elapsed * f64::from(limit.per_second)).min(f64::from(limit.burst));
        o.refilled = now;
        if o.tokens >= 1.0 {
            o.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_private(
        &mut self,
        out: &mut Out,
        from: FullJid,
        to: Nick,
        id: Option<String>,
        kind: MessageKind,
        payload: Payload,
        now: Timestamp,
    ) {
        let err = |out: &mut Out, condition, text| {
            out.error(
                &from,
                StanzaKind::Message,
                Some(to.clone()),
                id.clone(),
                condition,
                text,
            )
        };
        let Some(sender) = self.by_session.get(&from).cloned() else {
            return err(
                out,
                Condition::NotAcceptable,
                Some("You are not in this room"),
            );
        };
        if kind == MessageKind::Groupchat {
            return err(
                out,
                Condition::BadRequest,
                Some("Private messages may not be of type groupchat"),
            );
        }
        let Some(target) = self.occupants.get(&to) else {
            return err(out, Condition::ItemNotFound, Some("Recipient not in room"));
        };
        if !self.config.allow_pm.allows(self.occupants[&sender].role) {
            return err(
                out,
                Condition::Forbidden,
                Some("Private messages are not allowed in this room"),
            );
        }
        let to_sessions = target.sessions.clone();
        if !self.take_token(&sender, now) {
            return err(out, Condition::ResourceConstraint, None);
        }
        let occupant_id = self.occupants[&sender].occupant_id.clone();
        out.send(
            to_sessions,
            Outgoing::Private {
                from: sender,
                occupant_id,
                id,
                kind,
                payload,
            },
        );
    }

    // ---- IQs ---------------------------------------------------------------

    fn on_iq(
        &mut self,
        out: &mut Out,
        from: FullJid,
        to: Option<Nick>,
        id: String,
        request: IqRequest,
    ) {
        let sender = self.by_session.get(&from).cloned();
        let result = match (&to, request) {
            (Some(target), request) => match (&sender, request) {
                (None, _) => Err((Condition::NotAcceptable, Some("You are not in this room"))),
                // XEP-0410: the room answers a self-ping for its occupant.
                (Some(me), IqRequest::Ping) if me == target => Ok(IqResponse::Empty),
                (Some(_), _) if !self.occupants.contains_key(target) => {
                    Err((Condition::ItemNotFound, None))
                }
                (Some(me), IqRequest::Ping) => {
                    let ping = Element::builder("ping", NS_PING).build();
                    return self.relay(
                        out,
                        &from,
                        me,
                        target,
                        id,
                        IqKind::Get,
                        Payload::new(vec![ping]),
                    );
                }
                (Some(me), IqRequest::Relay { set, payload }) => {
                    let kind = if set { IqKind::Set } else { IqKind::Get };
                    return self.relay(out, &from, me, target, id, kind, payload);
                }
                (Some(_), _) => Err((Condition::BadRequest, None)),
            },
            (None, IqRequest::Ping) => Ok(IqResponse::Empty),
            (None, IqRequest::DiscoInfo) => Ok(self.disco_info()),
            (None, IqRequest::DiscoItems) => Ok(IqResponse::DiscoItems(Vec::new())),
            (None, IqRequest::AdminList(filter)) => self.admin_list(&from, sender.as_ref(), filter),
            (None, IqRequest::AdminSet(items)) => {
                self.admin_set(out, &from, sender.as_ref(), items)
            }
            (None, IqRequest::ConfigGet) => self.config_get(&from),
            (None, IqRequest::ConfigSet(form)) => self.config_set(out, &from, form),
            (None, IqRequest::Destroy { reason, alternate }) => {
                self.destroy(out, &from, reason, alternate)
            }
            (None, IqRequest::Unsupported | IqRequest::Relay { .. }) => {
                Err((Condition::ServiceUnavailable, None))
            }
        };
        match result {
            Ok(body) => out.one(&from, Outgoing::IqResult { from: to, id, body }),
            Err((condition, text)) => {
                out.error(&from, StanzaKind::Iq, to, Some(id), condition, text)
            }
        }
    }

    /// Relays an IQ request from occupant `sender` (session `from`) to one
    /// session of `target`. The id it carries names the requesting session
    /// by a keyed hash, so the answer finds its way back without the room
    /// keeping state and without revealing the requester's real JID.
    #[allow(clippy::too_many_arguments)]
    fn relay(
        &self,
        out: &mut Out,
        from: &FullJid,
        sender: &Nick,
        target: &Nick,
        id: String,
        kind: IqKind,
        payload: Payload,
    ) {
        let Some(session) = self.occupants[target].sessions.first() else {
            return;
        };
        out.one(
            session,
            Outgoing::Iq {
                from: sender.clone(),
                id: format!("{}.{id}", self.session_tag(from)),
                kind,
                payload,
            },
        );
    }

    /// Relays an occupant's answer back to the session that asked.
    fn on_iq_response(
        &self,
        out: &mut Out,
        from: &FullJid,
        to: &Nick,
        id: &str,
        error: bool,
        payload: Payload,
    ) {
        let Some(responder) = self.by_session.get(from) else {
            return; // Answers from non-occupants are dropped, never bounced.
        };
        let Some((tag, original)) = id.split_once('.') else {
            return;
        };
        let requester = self
            .occupants
            .get(to)
            .and_then(|o| o.sessions.iter().find(|s| self.session_tag(s) == tag));
        if let Some(requester) = requester {
            out.one(
                requester,
                Outgoing::Iq {
                    from: responder.clone(),
                    id: original.to_owned(),
                    kind: if error { IqKind::Error } else { IqKind::Result },
                    payload,
                },
            );
        }
    }

    /// A short keyed hash of a session's JID.
    fn session_tag(&self, session: &FullJid) -> String {
        let mut hash = Sha256::new();
        hash.update(&self.settings.salt);
        hash.update(b"\0relay\0");
        hash.update(session.as_str().as_bytes());
        hex::encode(&hash.finalize()[..6])
    }

    fn disco_info(&self) -> IqResponse {
        let mut features = vec![
            "http://jabber.org/protocol/muc",
            "http://jabber.org/protocol/muc#stable_id",
            "http://jabber.org/protocol/muc#self-ping-optimization",
            "urn:xmpp:sid:0",
            "urn:xmpp:occupant-id:0",
            "http://jabber.org/protocol/disco#info",
        ];
        features.extend(self.config.features());
        let subject = self.subject.as_ref().map(|s| s.text.as_str()).unwrap_or("");
        IqResponse::DiscoInfo {
            name: if self.config.name.is_empty() {
                self.jid.node().map(|n| n.to_string()).unwrap_or_default()
            } else {
                self.config.name.clone()
            },
            features,
            form: self.config.room_info(self.occupants.len(), subject),
        }
    }

    fn requester_affiliation(&self, from: &FullJid) -> Affiliation {
        self.affiliation(&from.to_bare())
    }

    fn admin_list(&self, from: &FullJid, sender: Option<&Nick>, filter: AdminFilter) -> IqResult {
        let affiliation = self.requester_affiliation(from);
        let role = sender.map(|n| self.occupants[n].role).unwrap_or(Role::None);
        match filter {
            AdminFilter::Role(r) => {
                if role != Role::Moderator {
                    return Err((Condition::Forbidden, None));
                }
                let items = self
                    .occupants
                    .iter()
                    .filter(|(_, o)| o.role == r)
                    .map(|(nick, o)| ListItem {
                        jid: Some(o.bare.clone()),
                        nick: Some(nick.clone()),
                        affiliation: self.affiliation(&o.bare),
                        role: o.role,
                    })
                    .collect();
                Ok(IqResponse::AdminList(items))
            }
            AdminFilter::Affiliation(a) => {
                let allowed = affiliation.is_admin_or_owner()
                    || (a == Affiliation::Member && self.config.get_member_list.contains(&role));
                if !allowed || a == Affiliation::None {
                    return Err((Condition::Forbidden, None));
                }
                let mut items: Vec<ListItem> = self
                    .affiliations
                    .iter()
                    .filter(|(_, aff)| **aff == a)
                    .map(|(jid, aff)| {
                        let occupant = self.occupants.iter().find(|(_, o)| &o.bare == jid);
                        ListItem {
                            jid: Some(jid.clone()),
                            nick: occupant.map(|(n, _)| n.clone()),
                            affiliation: *aff,
                            role: occupant.map(|(_, o)| o.role).unwrap_or(Role::None),
                        }
                    })
                    .collect();
                items.sort_by(|a, b| a.jid.cmp(&b.jid));
                Ok(IqResponse::AdminList(items))
            }
        }
    }

    /// Applies muc#admin items all or nothing (§9, §10).
    fn admin_set(
        &mut self,
        out: &mut Out,
        from: &FullJid,
        sender: Option<&Nick>,
        items: Vec<AdminItem>,
    ) -> IqResult {
        let actor_aff = self.requester_affiliation(from);
        let actor_role = sender.map(|n| self.occupants[n].role).unwrap_or(Role::None);
        // Validate everything first.
        let mut owners: Vec<&BareJid> = self
            .affiliations
            .iter()
            .filter(|(_, a)| **a == Affiliation::Owner)
            .map(|(j, _)| j)
            .collect();
        for item in &items {
            match item {
                AdminItem::Role { nick, role, .. } => {
                    let Some(target) = self.occupants.get(nick) else {
                        return Err((Condition::ItemNotFound, None));
                    };
                    let target_aff = self.affiliation(&target.bare);
                    if actor_role != Role::Moderator {
                        return Err((Condition::Forbidden, None));
                    }
                    let touches_moderator =
                        *role == Role::Moderator || target.role == Role::Moderator;
                    if target_aff.is_admin_or_owner() && *role != Role::Moderator {
                        return Err((Condition::NotAllowed, None));
                    }
                    if touches_moderator && !actor_aff.is_admin_or_owner() {
                        return Err((Condition::NotAllowed, None));
                    }
                }
                AdminItem::Affiliation {
                    jid, affiliation, ..
                } => {
                    let current = self.affiliation(jid);
                    let owner_needed =
                        affiliation.is_admin_or_owner() || current.is_admin_or_owner();
                    let allowed = match actor_aff {
                        Affiliation::Owner => true,
                        Affiliation::Admin => !owner_needed,
                        _ => false,
                    };
                    if !allowed {
                        return Err((
                            if actor_aff.is_admin_or_owner() {
                                Condition::NotAllowed
                            } else {
                                Condition::Forbidden
                            },
                            None,
                        ));
                    }
                    if *affiliation != Affiliation::Owner {
                        owners.retain(|o| *o != jid);
                        if current == Affiliation::Owner && owners.is_empty() {
                            return Err((Condition::Conflict, Some("A room needs an owner")));
                        }
                    }
                }
            }
        }
        for item in items {
            match item {
                AdminItem::Role { nick, role, reason } => self.set_role(out, &nick, role, reason),
                AdminItem::Affiliation {
                    jid,
                    affiliation,
                    reason,
                } => self.set_affiliation(out, jid, affiliation, reason),
            }
        }
        Ok(IqResponse::Empty)
    }

    fn set_role(&mut self, out: &mut Out, nick: &Nick, role: Role, reason: Option<String>) {
        if role == Role::None {
            self.remove_occupant(out, nick, Removal::Kicked, reason);
            return;
        }
        let Some(occupant) = self.occupants.get_mut(nick) else {
            return;
        };
        if occupant.role == role {
            return;
        }
        occupant.role = role;
        self.broadcast_presence(out, nick, &[]);
    }

    fn set_affiliation(
        &mut self,
        out: &mut Out,
        jid: BareJid,
        affiliation: Affiliation,
        reason: Option<String>,
    ) {
        if affiliation == Affiliation::None {
            self.affiliations.remove(&jid);
        } else {
            self.affiliations.insert(jid.clone(), affiliation);
        }
        self.persist(out, Persist::Affiliation(jid.clone(), affiliation));
        let present: Vec<Nick> = self
            .occupants
            .iter()
            .filter(|(_, o)| o.bare == jid)
            .map(|(n, _)| n.clone())
            .collect();
        for nick in present {
            if affiliation == Affiliation::Outcast {
                self.remove_occupant(out, &nick, Removal::Banned, reason.clone());
            } else if affiliation == Affiliation::None && self.config.members_only {
                self.remove_occupant(out, &nick, Removal::AffiliationChanged, reason.clone());
            } else {
                let role = affiliation.default_role(self.config.moderated);
                self.occupants.get_mut(&nick).expect("present").role = role;
                self.broadcast_presence(out, &nick, &[]);
            }
        }
    }

    fn config_get(&self, from: &FullJid) -> IqResult {
        if self.requester_affiliation(from) != Affiliation::Owner {
            return Err((Condition::Forbidden, None));
        }
        let list = |a: Affiliation| -> Vec<BareJid> {
            let mut v: Vec<BareJid> = self
                .affiliations
                .iter()
                .filter(|(_, x)| **x == a)
                .map(|(j, _)| j.clone())
                .collect();
            v.sort();
            v
        };
        Ok(IqResponse::ConfigForm(self.config.to_form(
            &list(Affiliation::Owner),
            &list(Affiliation::Admin),
        )))
    }

    fn config_set(
        &mut self,
        out: &mut Out,
        from: &FullJid,
        form: Option<crate::form::Submission>,
    ) -> IqResult {
        if self.requester_affiliation(from) != Affiliation::Owner {
            return Err((Condition::Forbidden, None));
        }
        let Some(form) = form else {
            // Cancelling the initial configuration destroys the room (§10.1.3).
            if self.locked {
                self.destroy_room(out, None, None);
            }
            return Ok(IqResponse::Empty);
        };
        let was_persistent = self.persistent();
        let was_members_only = self.config.members_only;
        let change = self
            .config
            .apply(&form, &self.settings.bounds)
            .map_err(|e| (e.condition(), None))?;
        let unlocked = std::mem::replace(&mut self.locked, false);
        let keep = self.config.history_length as usize;
        self.history.trim(keep);
        for (jid, affiliation) in change.affiliations {
            self.affiliations.insert(jid.clone(), affiliation);
        }
        match (was_persistent, self.persistent()) {
            (false, true) => self.persist_snapshot(out),
            (true, false) => out.0.push(Action::Persist(Persist::Delete)),
            _ => self.persist(out, Persist::Config(self.config.clone())),
        }
        if self.config.members_only && !was_members_only {
            let outsiders: Vec<Nick> = self
                .occupants
                .iter()
                .filter(|(_, o)| self.affiliation(&o.bare) == Affiliation::None)
                .map(|(n, _)| n.clone())
                .collect();
            for nick in outsiders {
                self.remove_occupant(out, &nick, Removal::MembersOnly, None);
            }
        }
        if !unlocked {
            out.send(self.all_sessions(), Outgoing::Status(change.statuses));
        }
        Ok(IqResponse::Empty)
    }

    /// Everything a newly persistent room needs stored.
    fn persist_snapshot(&self, out: &mut Out) {
        self.persist(out, Persist::Config(self.config.clone()));
        for (jid, a) in &self.affiliations {
            self.persist(out, Persist::Affiliation(jid.clone(), *a));
        }
        if let Some(s) = &self.subject {
            self.persist(out, Persist::Subject(s.clone()));
        }
        for m in self.history.iter() {
            self.persist(out, Persist::Message(m.clone()));
        }
        for progress in self.merges.progress() {
            self.persist(out, Persist::Merged(progress));
        }
    }

    fn destroy(
        &mut self,
        out: &mut Out,
        from: &FullJid,
        reason: Option<String>,
        alternate: Option<BareJid>,
    ) -> IqResult {
        if self.requester_affiliation(from) != Affiliation::Owner {
            return Err((Condition::Forbidden, None));
        }
        self.destroy_room(out, reason, alternate);
        Ok(IqResponse::Empty)
    }

    fn destroy_room(&mut self, out: &mut Out, reason: Option<String>, alternate: Option<BareJid>) {
        let destroyed = Destroyed { reason, alternate };
        for (nick, occupant) in std::mem::take(&mut self.occupants) {
            let mut p = self.presence_of(&nick, &occupant, Role::None, vec![]);
            p.role = Role::None;
            p.affiliation = Affiliation::None;
            p.destroy = Some(destroyed.clone());
            out.send(
                occupant.sessions,
                Outgoing::Presence(Box::new(unavailable(p))),
            );
        }
        self.by_session.clear();
        if self.persistent() {
            out.0.push(Action::Persist(Persist::Delete));
        }
        self.created = false;
    }
}

type IqResult = Result<IqResponse, (Condition, Option<&'static str>)>;

/// How an occupant leaves: on its own, or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RemovalOrLeave {
    Leave,
    Removal(Removal),
}

impl From<Removal> for RemovalOrLeave {
    fn from(r: Removal) -> Self {
        RemovalOrLeave::Removal(r)
    }
}

pub(crate) fn unavailable(mut p: OccupantPresence) -> OccupantPresence {
    p.available = false;
    p
}
