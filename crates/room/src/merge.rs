//! Merging a split back into its room: on heal, a peerhost submits what its
//! users did while its slave was split from the master ([`crate::split`]),
//! one [`Merge`] per input, in the split's order; the master's room takes
//! each one once, in order, and tells only those who have not seen it.
//!
//! ```text
//!  peerhost of b.test, heal: Healed::submissions[i]
//!      ──Submit(Merge { domain: b.test, began, index: i, at, local_id, input })──▶ master
//!  Room::handle(Input::Merge) ── b.test's progress (began, next_index):
//!      ├─ same split, index < next_index; or an older split ──▶ duplicate: no change
//!      ├─ index > next_index (of this split, or of a new one: 0) ──▶ gap: refused, no change
//!      └─ index = next_index ──▶ the inner input, as the room takes it,
//!             │                  minus every send to b.test (its users saw it in the split),
//!             │                  plus renames or refusals of split-era joins, to b.test only
//!             └─▶ Persist::Merged(progress) ──▶ store, with the message it merged
//!  in every case: Action::Merged { next_index } ──▶ master: SplitMerged to the peerhost
//!  slaves apply the same event through the same code: b.test's slave
//!  delivers only the renames and refusals; other domains' slaves deliver the rest
//! ```
//!
//! # Order
//! The room keeps, per origin domain, the split it last merged (`began`)
//! and the index of the next submission it expects (a [`SplitProgress`],
//! part of the snapshot and stored with the room). Submissions are merged
//! exactly once and in order: a resubmission after a lost confirmation or
//! a master restart changes nothing, and a submission after a gap waits
//! for the peerhost to resend what is missing. A newer `began` starts a
//! new split (at index 0); an older one is over, and its submissions are
//! dropped and confirmed, so that the peerhost stops resending them.
//! A room that does not exist takes nothing and confirms everything.
//!
//! # What is merged
//! The *origin* is the submitting slave's domain; origin sessions are the
//! room's sessions of that domain. They saw everything in their split, so
//! a merge sends them nothing, except what only the master can decide
//! (renames, refusals); everybody else gets the effect as usual. Only what
//! a split can submit is merged, anything else (or an input whose sender
//! is not of the origin) is ignored and confirmed:
//! - `Groupchat`: a message with the split's provisional stanza id (the
//!   origin's users saw that one; a room id if the split gave none) and its
//!   time, `at`, appended to the history (history order is the master's
//!   order), live with a delay ([`Outgoing::Merged`]). Its sender needs
//!   voice; a sender the room does not have (the master restarted during
//!   the split and lost its occupants) must be one who could join and
//!   speak now, and the message takes its nick from the sender's newest
//!   message in the history, or else its localpart. Subject changes are
//!   not merged (splits refuse them); neither is flood control applied.
//! - `Presence` of an occupant under its nick: a status change, if it
//!   changes anything (a split ends with every local session's presence).
//! - `Presence` joining: the session is seated without the join sequence
//!   (it has the room from its split) and announced. A nick held by another
//!   user is renamed, never kicked: the first free of `nick (domain)`,
//!   `nick (domain) 2`, ...; origin sessions then see the usual nick change
//!   (unavailable from the old nick with 303 and the new nick, then the new
//!   nick's presence; 110 to the joiner). A join the room refuses (a ban,
//!   members-only, a full room... during the split) changes nothing, and
//!   origin sessions see the nick leave: unavailable with status 307
//!   (kicked: the split let the user in, the room now puts it out) and a
//!   reason starting with [`NOT_ADMITTED`] (110 to the joiner).
//! - `Leave`, `Bounced`: as usual, told to non-origin sessions only.
//!
//! Everything depends on the room's state and the merge alone, so that the
//! slaves, applying the same event, take the same decisions.
//!
//! # Known limits
//! Origin sessions that join in the split *after* a renamed or refused
//! joiner are not told of the rename or refusal when their own join is
//! merged later (their split roster keeps the old nick).

use std::collections::BTreeMap;
use std::sync::Arc;

use jid::{BareJid, FullJid};

use crate::event::{JoinRequest, OccupantPresence, Outgoing, Persist};
use crate::history::{Payload, RoomMessage};
use crate::replica::{local_only, master_share};
use crate::room::{Out, unavailable};
use crate::{Action, Affiliation, Input, Nick, OccupantId, Role, Room, StanzaId, Timestamp};

/// The reason given, before the room's own, when a split-era join is refused.
pub const NOT_ADMITTED: &str = "Your join while the room was split was refused";

/// One input a slave's users sent while it was split from the master
/// (a [`crate::SplitEvent`]), submitted on heal.
#[derive(Clone, Debug, PartialEq)]
pub struct Merge {
    /// The slave's domain (the origin): the split served its users only.
    pub domain: String,
    /// When the split began ([`crate::SplitStart::began`]): names the split.
    pub began: Timestamp,
    /// The input's place among the split's submissions, from 0.
    pub index: u64,
    /// When the split handled it: the merged message's timestamp.
    pub at: Timestamp,
    /// The provisional stanza id the split gave the message, if it became one.
    pub local_id: Option<StanzaId>,
    pub input: Input,
}

/// How far a domain's last split is merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitProgress {
    pub domain: String,
    /// The split ([`Merge::began`]).
    pub began: Timestamp,
    /// Submissions below this index are merged.
    pub next_index: u64,
}

/// A room's [`SplitProgress`] per origin domain.
#[derive(Clone, Debug, Default)]
pub(crate) struct Merges(BTreeMap<String, (Timestamp, u64)>);

impl From<Vec<SplitProgress>> for Merges {
    fn from(progress: Vec<SplitProgress>) -> Self {
        Merges(
            progress
                .into_iter()
                .map(|p| (p.domain, (p.began, p.next_index)))
                .collect(),
        )
    }
}

impl Merges {
    /// Sorted by domain.
    pub(crate) fn progress(&self) -> Vec<SplitProgress> {
        self.0
            .iter()
            .map(|(domain, &(began, next_index))| SplitProgress {
                domain: domain.clone(),
                began,
                next_index,
            })
            .collect()
    }

    /// Whether submission `index` of `domain`'s split `began` is the next
    /// one; if not, how far that split is merged.
    fn check(&self, domain: &str, began: Timestamp, index: u64) -> Result<(), u64> {
        let next = match self.0.get(domain) {
            Some(&(last, next)) if last == began => next,
            // An older split is over: nothing more of it is merged.
            Some(&(last, _)) if last > began => return Err(index.saturating_add(1)),
            _ => 0,
        };
        if index == next { Ok(()) } else { Err(next) }
    }
}

impl Room {
    /// [`Input::Merge`]: see the module docs.
    pub(crate) fn on_merge(&mut self, out: &mut Out, merge: Merge, now: Timestamp) {
        let Merge {
            domain,
            began,
            index,
            at,
            local_id,
            input,
        } = merge;
        // Saturating: the index comes from another operator's peerhost.
        let after = index.saturating_add(1);
        let next_index = if !self.exists() {
            after
        } else {
            match self.merges.check(&domain, began, index) {
                Ok(()) => {
                    self.merge_input(out, &domain, input, at, local_id, now);
                    self.merges.0.insert(domain.clone(), (began, after));
                    let progress = SplitProgress {
                        domain: domain.clone(),
                        began,
                        next_index: after,
                    };
                    self.persist(out, Persist::Merged(progress));
                    after
                }
                Err(next_index) => next_index,
            }
        };
        out.0.push(Action::Merged {
            domain,
            began,
            next_index,
        });
    }

    fn merge_input(
        &mut self,
        out: &mut Out,
        domain: &str,
        input: Input,
        at: Timestamp,
        local_id: Option<StanzaId>,
        now: Timestamp,
    ) {
        // A slave speaks for its own users only.
        if input
            .sender()
            .is_none_or(|from| from.domain().as_str() != domain)
        {
            return;
        }
        let mut effect = Out::default();
        match input {
            Input::Groupchat {
                from,
                id,
                subject,
                has_body,
                payload,
                size,
            } if subject.is_none() || has_body => {
                let draft = Draft {
                    id,
                    at,
                    payload,
                    size,
                    local_id,
                };
                self.merge_message(&mut effect, &from, draft);
            }
            Input::Presence {
                from,
                nick,
                join,
                payload,
            } => match self.nick_of(&from) {
                Some(current) if *current == nick => {
                    // A split ends with each local session's presence
                    // (`Healed::present`): one that did not change is
                    // nothing new.
                    let unchanged = self
                        .session_presence(&from)
                        .is_some_and(|(_, current)| *current == payload);
                    if !unchanged {
                        self.on_presence(&mut effect, from, nick, None, payload, now);
                    }
                }
                // A nick change (splits refuse them), or not a join.
                Some(_) => {}
                None => {
                    if let Some(request) = join {
                        let joiner = Joiner { from, payload };
                        return self.merge_join(out, domain, joiner, nick, request, now);
                    }
                }
            },
            Input::Leave { from, payload } => self.on_leave(&mut effect, &from, payload),
            Input::Bounced { from } => self.on_bounced(&mut effect, &from),
            _ => {}
        }
        out.0.extend(beyond(domain, effect.0));
    }

    fn merge_message(&mut self, out: &mut Out, from: &FullJid, draft: Draft) {
        let bare = from.to_bare();
        let (nick, occupant_id) = match self.nick_of(from) {
            Some(nick) => {
                let occupant = &self.occupants[nick];
                if !occupant.role.has_voice() {
                    return;
                }
                (nick.clone(), occupant.occupant_id.clone())
            }
            None => {
                if !self.could_speak(&bare) {
                    return;
                }
                let Some(nick) = self.known_nick(&bare) else {
                    return;
                };
                let id = OccupantId::derive(&self.settings.salt, self.jid(), &bare);
                (nick, id)
            }
        };
        let (seq, assigned) = self.number();
        let message = Arc::new(RoomMessage {
            seq,
            stanza_id: draft.local_id.unwrap_or(assigned),
            occupant_id,
            nick,
            sender: bare,
            id: draft.id,
            at: draft.at,
            payload: draft.payload,
            size: draft.size,
        });
        self.keep(out, message.clone());
        out.send(self.all_sessions(), Outgoing::Merged(message));
    }

    /// Whether `bare`, not an occupant, could join now and speak.
    fn could_speak(&self, bare: &BareJid) -> bool {
        let affiliation = self.affiliation(bare);
        let config = self.config();
        !(self.is_locked() && affiliation != Affiliation::Owner)
            && affiliation != Affiliation::Outcast
            && !(config.members_only && affiliation == Affiliation::None)
            && affiliation.default_role(config.moderated).has_voice()
    }

    /// The nick of `bare`'s newest message in the history, or else its localpart.
    fn known_nick(&self, bare: &BareJid) -> Option<Nick> {
        let newest = self.history.iter().rev().find(|m| m.sender == *bare);
        match newest {
            Some(m) => Some(m.nick.clone()),
            None => Nick::new(bare.node().map_or(bare.as_str(), |n| n.as_str())).ok(),
        }
    }

    fn merge_join(
        &mut self,
        out: &mut Out,
        domain: &str,
        joiner: Joiner,
        asked: Nick,
        request: JoinRequest,
        now: Timestamp,
    ) {
        let Joiner { from, payload } = joiner;
        let bare = from.to_bare();
        let nick = self.free_nick(&bare, &asked, domain);
        if let Some((_, text)) = self.admission(&bare, &nick, &request) {
            return self.refuse_join(out, domain, &from, asked, text);
        }
        self.seat(&from, &nick, payload, now);
        let mut announced = Out::default();
        self.presence_to_others(&mut announced, &nick, &[]);
        out.0.extend(beyond(domain, announced.0.clone()));
        if nick == asked {
            return;
        }
        // The origin saw `asked` join: now it is a nick change.
        let occupant = &self.occupants[&nick];
        let renamed = |room: &Room, role, statuses| {
            let mut p = room.presence_of(&asked, occupant, role, statuses);
            p.new_nick = Some(nick.clone());
            Outgoing::Presence(Box::new(unavailable(p)))
        };
        if self.config().presence_broadcast.contains(&occupant.role) {
            let mut gone = Out::default();
            self.each_recipient(&mut gone, Some(&nick), |room, role| {
                renamed(room, role, vec![303])
            });
            out.0.extend(within(domain, gone.0));
        }
        out.one(&from, renamed(self, occupant.role, vec![303, 110]));
        out.0.extend(within(domain, announced.0));
        let own = self.presence_of(&nick, occupant, occupant.role, vec![110]);
        out.one(&from, Outgoing::Presence(Box::new(own)));
    }

    /// `asked` if no other user holds it, or else the first free of
    /// `asked (domain)`, `asked (domain) 2`, ... (`asked` again if none is
    /// a valid nick: the room then refuses the join).
    fn free_nick(&self, bare: &BareJid, asked: &Nick, domain: &str) -> Nick {
        let free = |nick: &Nick| self.occupants.get(nick).is_none_or(|o| o.bare == *bare);
        if free(asked) {
            return asked.clone();
        }
        // Among one more candidate than there are occupants, one is free.
        (1..=self.occupants.len() + 1)
            .map(|i| match i {
                1 => format!("{asked} ({domain})"),
                i => format!("{asked} ({domain}) {i}"),
            })
            .filter_map(|candidate| Nick::new(&candidate).ok())
            .find(free)
            .unwrap_or_else(|| asked.clone())
    }

    /// The origin saw `from` join as `nick`, which the room refuses: the
    /// nick leaves (307), with the room's reason.
    fn refuse_join(
        &self,
        out: &mut Out,
        domain: &str,
        from: &FullJid,
        nick: Nick,
        text: &'static str,
    ) {
        let bare = from.to_bare();
        let gone = |sees_jid: bool, statuses: Vec<u16>| {
            Outgoing::Presence(Box::new(unavailable(OccupantPresence {
                nick: nick.clone(),
                available: false,
                affiliation: self.affiliation(&bare),
                role: Role::None,
                jid: sees_jid.then(|| from.clone()),
                new_nick: None,
                statuses,
                reason: Some(format!("{NOT_ADMITTED}: {text}")),
                occupant_id: OccupantId::derive(&self.settings.salt, self.jid(), &bare),
                payload: Payload::default(),
                destroy: None,
            })))
        };
        let mut others = Out::default();
        self.each_recipient(&mut others, None, |_, role| {
            gone(role == Role::Moderator, vec![307])
        });
        out.0.extend(within(domain, others.0));
        out.one(from, gone(true, vec![110, 307]));
    }
}

/// A merged groupchat message before the room numbers it.
struct Draft {
    id: Option<String>,
    at: Timestamp,
    payload: Payload,
    size: usize,
    local_id: Option<StanzaId>,
}

/// A split-era joiner.
struct Joiner {
    from: FullJid,
    payload: Payload,
}

/// `actions` without their sends to `domain`'s users.
fn beyond(domain: &str, actions: Vec<Action>) -> Vec<Action> {
    master_share(actions, |d| d == domain)
}

/// Only the sends of `actions` to `domain`'s users.
fn within(domain: &str, actions: Vec<Action>) -> Vec<Action> {
    local_only(actions, |jid| jid.domain().as_str() == domain)
}
