//! [`RoomSnapshot`] ⇄ [`pb::RoomSnapshot`]: a room's whole state.
//!
//! Besides re-validating every value, decoding checks what
//! `Room::from_snapshot` relies on without checking: unique nicks, sessions
//! and affiliation entries (duplicates would be merged silently), sessions
//! that belong to their occupant, finite flood-control state, history
//! numbered below `next_seq`. A replica built on a snapshot that breaks
//! them would drift from its master without anyone noticing.

use std::collections::HashSet;
use std::sync::Arc;

use dmuc_room::{
    ConfigBounds, OccupantId, OccupantSnapshot, RateLimit, RoomConfig, RoomMessage, RoomSettings,
    RoomSnapshot, Seq, SplitProgress, StanzaId, Subject, Timestamp,
};

use super::enums::{
    affiliation, affiliation_to_pb, allow_pm, allow_pm_to_pb, role, role_to_pb, split_policy,
    split_policy_to_pb, whois, whois_to_pb,
};
use super::{bare_jid, full_jid, nick, payload, required, size};
use crate::error::Within;
use crate::{ProtocolError, pb};

impl From<&RoomSnapshot> for pb::RoomSnapshot {
    fn from(s: &RoomSnapshot) -> Self {
        pb::RoomSnapshot {
            jid: s.jid.to_string(),
            settings: Some(settings_to_pb(&s.settings)),
            config: Some(config_to_pb(&s.config)),
            affiliations: s
                .affiliations
                .iter()
                .map(|(jid, a)| pb::AffiliationEntry {
                    jid: jid.to_string(),
                    affiliation: affiliation_to_pb(*a),
                })
                .collect(),
            occupants: s.occupants.iter().map(occupant_to_pb).collect(),
            subject: s.subject.as_ref().map(subject_to_pb),
            history: s.history.iter().map(|m| message_to_pb(m)).collect(),
            next_seq: s.next_seq.0,
            locked: s.locked,
            created: s.created,
            merged: s
                .merged
                .iter()
                .map(|p| pb::SplitProgress {
                    domain: p.domain.clone(),
                    began_ms: p.began.millis(),
                    next_index: p.next_index,
                })
                .collect(),
        }
    }
}

/// Errors name fields from `snapshot`, e.g. `snapshot.occupants[2].nick`.
impl TryFrom<pb::RoomSnapshot> for RoomSnapshot {
    type Error = ProtocolError;

    fn try_from(s: pb::RoomSnapshot) -> Result<RoomSnapshot, ProtocolError> {
        snapshot_from_pb(s).within("snapshot")
    }
}

fn snapshot_from_pb(s: pb::RoomSnapshot) -> Result<RoomSnapshot, ProtocolError> {
    let jid = bare_jid(&s.jid, "jid")?;
    let settings = settings_from_pb(required(s.settings, "settings")?).within("settings")?;
    let config = config_from_pb(required(s.config, "config")?).within("config")?;

    let mut seen = HashSet::new();
    let mut affiliations = Vec::with_capacity(s.affiliations.len());
    for (i, entry) in s.affiliations.into_iter().enumerate() {
        let jid = bare_jid(&entry.jid, "jid").within_item("affiliations", i)?;
        let a = affiliation(entry.affiliation, "affiliation").within_item("affiliations", i)?;
        if !seen.insert(jid.clone()) {
            return Err(ProtocolError::invalid("jid", "duplicate")).within_item("affiliations", i);
        }
        affiliations.push((jid, a));
    }

    let mut nicks = HashSet::new();
    let mut sessions = HashSet::new();
    let mut occupants = Vec::with_capacity(s.occupants.len());
    for (i, o) in s.occupants.into_iter().enumerate() {
        let o = occupant_from_pb(o).within_item("occupants", i)?;
        if !nicks.insert(o.nick.clone()) {
            return Err(ProtocolError::invalid("nick", "duplicate")).within_item("occupants", i);
        }
        for (j, session) in o.sessions.iter().enumerate() {
            if !sessions.insert(session.clone()) {
                return Err(ProtocolError::invalid("", "duplicate"))
                    .within_item("sessions", j)
                    .within_item("occupants", i);
            }
        }
        occupants.push(o);
    }

    let subject = s
        .subject
        .map(subject_from_pb)
        .transpose()
        .within("subject")?;
    if s.next_seq == 0 {
        return Err(ProtocolError::invalid("next_seq", "must be at least 1"));
    }
    let next_seq = Seq(s.next_seq);
    let history = s
        .history
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let m = message_from_pb(m).within_item("history", i)?;
            if m.seq >= next_seq {
                return Err(ProtocolError::invalid("seq", "not below next_seq"))
                    .within_item("history", i);
            }
            Ok(Arc::new(m))
        })
        .collect::<Result<_, _>>()?;
    let mut domains = HashSet::new();
    let mut merged = Vec::with_capacity(s.merged.len());
    for (i, p) in s.merged.into_iter().enumerate() {
        let domain = bare_jid(&p.domain, "domain").within_item("merged", i)?;
        if domain.node().is_some() {
            return Err(ProtocolError::invalid("domain", "not a domain")).within_item("merged", i);
        }
        if !domains.insert(domain.clone()) {
            return Err(ProtocolError::invalid("domain", "duplicate")).within_item("merged", i);
        }
        merged.push(SplitProgress {
            domain: domain.to_string(),
            began: Timestamp(p.began_ms),
            next_index: p.next_index,
        });
    }
    Ok(RoomSnapshot {
        jid,
        settings,
        config,
        affiliations,
        occupants,
        subject,
        history,
        next_seq,
        locked: s.locked,
        created: s.created,
        merged,
    })
}

fn settings_to_pb(s: &RoomSettings) -> pb::RoomSettings {
    pb::RoomSettings {
        epoch: s.epoch,
        salt: s.salt.to_vec(),
        bounds: Some(pb::ConfigBounds {
            max_users: s.bounds.max_users,
            max_history: s.bounds.max_history,
        }),
        lock_new_rooms: s.lock_new_rooms,
        default_config: Some(config_to_pb(&s.default_config)),
        rate_limit: s.rate_limit.map(|r| pb::RateLimit {
            burst: r.burst,
            per_second: r.per_second,
        }),
    }
}

fn settings_from_pb(s: pb::RoomSettings) -> Result<RoomSettings, ProtocolError> {
    let bounds = required(s.bounds, "bounds")?;
    Ok(RoomSettings {
        epoch: s.epoch,
        salt: Arc::from(s.salt),
        bounds: ConfigBounds {
            max_users: bounds.max_users,
            max_history: bounds.max_history,
        },
        lock_new_rooms: s.lock_new_rooms,
        default_config: config_from_pb(required(s.default_config, "default_config")?)
            .within("default_config")?,
        rate_limit: s.rate_limit.map(|r| RateLimit {
            burst: r.burst,
            per_second: r.per_second,
        }),
    })
}

fn config_to_pb(c: &RoomConfig) -> pb::RoomConfig {
    pb::RoomConfig {
        name: c.name.clone(),
        description: c.description.clone(),
        persistent: c.persistent,
        public: c.public,
        members_only: c.members_only,
        moderated: c.moderated,
        password: c.password.clone(),
        whois: whois_to_pb(c.whois),
        max_users: c.max_users,
        change_subject: c.change_subject,
        allow_pm: allow_pm_to_pb(c.allow_pm),
        allow_invites: c.allow_invites,
        logging: c.logging,
        get_member_list: c.get_member_list.iter().map(|r| role_to_pb(*r)).collect(),
        presence_broadcast: c
            .presence_broadcast
            .iter()
            .map(|r| role_to_pb(*r))
            .collect(),
        history_length: c.history_length,
        split_policy: split_policy_to_pb(c.split_policy),
    }
}

fn config_from_pb(c: pb::RoomConfig) -> Result<RoomConfig, ProtocolError> {
    let roles = |list: Vec<i32>, field: &str| {
        list.into_iter()
            .enumerate()
            .map(|(i, r)| role(r, "").within_item(field, i))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(RoomConfig {
        name: c.name,
        description: c.description,
        persistent: c.persistent,
        public: c.public,
        members_only: c.members_only,
        moderated: c.moderated,
        password: c.password,
        whois: whois(c.whois, "whois")?,
        max_users: c.max_users,
        change_subject: c.change_subject,
        allow_pm: allow_pm(c.allow_pm, "allow_pm")?,
        allow_invites: c.allow_invites,
        logging: c.logging,
        get_member_list: roles(c.get_member_list, "get_member_list")?,
        presence_broadcast: roles(c.presence_broadcast, "presence_broadcast")?,
        history_length: c.history_length,
        split_policy: split_policy(c.split_policy, "split_policy")?,
    })
}

fn occupant_to_pb(o: &OccupantSnapshot) -> pb::OccupantSnapshot {
    pb::OccupantSnapshot {
        nick: o.nick.to_string(),
        bare: o.bare.to_string(),
        sessions: o.sessions.iter().map(ToString::to_string).collect(),
        role: role_to_pb(o.role),
        occupant_id: o.occupant_id.to_string(),
        presence_xml: o.presence.to_xml(),
        tokens: o.tokens,
        refilled_ms: o.refilled.millis(),
    }
}

fn occupant_from_pb(o: pb::OccupantSnapshot) -> Result<OccupantSnapshot, ProtocolError> {
    let bare = bare_jid(&o.bare, "bare")?;
    let sessions = o
        .sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let session = full_jid(s, "").within_item("sessions", i)?;
            if session.to_bare() != bare {
                return Err(ProtocolError::invalid("", "not a session of bare"))
                    .within_item("sessions", i);
            }
            Ok(session)
        })
        .collect::<Result<_, _>>()?;
    if !o.tokens.is_finite() || o.tokens < 0.0 {
        return Err(ProtocolError::invalid("tokens", "not a finite count"));
    }
    Ok(OccupantSnapshot {
        nick: nick(&o.nick, "nick")?,
        bare,
        sessions,
        role: role(o.role, "role")?,
        occupant_id: OccupantId::from_stored(o.occupant_id),
        presence: payload(&o.presence_xml, "presence_xml")?,
        tokens: o.tokens,
        refilled: Timestamp(o.refilled_ms),
    })
}

fn subject_to_pb(s: &Subject) -> pb::Subject {
    pb::Subject {
        text: s.text.clone(),
        nick: s.nick.as_ref().map(ToString::to_string),
        at_ms: s.at.millis(),
    }
}

fn subject_from_pb(s: pb::Subject) -> Result<Subject, ProtocolError> {
    Ok(Subject {
        text: s.text,
        nick: s.nick.as_deref().map(|n| nick(n, "nick")).transpose()?,
        at: Timestamp(s.at_ms),
    })
}

fn message_to_pb(m: &RoomMessage) -> pb::RoomMessage {
    pb::RoomMessage {
        seq: m.seq.0,
        stanza_id: m.stanza_id.to_string(),
        occupant_id: m.occupant_id.to_string(),
        nick: m.nick.to_string(),
        sender: m.sender.to_string(),
        id: m.id.clone(),
        at_ms: m.at.millis(),
        payload_xml: m.payload.to_xml(),
        size: m.size as u64,
    }
}

fn message_from_pb(m: pb::RoomMessage) -> Result<RoomMessage, ProtocolError> {
    Ok(RoomMessage {
        seq: Seq(m.seq),
        stanza_id: StanzaId::from_stored(m.stanza_id),
        occupant_id: OccupantId::from_stored(m.occupant_id),
        nick: nick(&m.nick, "nick")?,
        sender: bare_jid(&m.sender, "sender")?,
        id: m.id,
        at: Timestamp(m.at_ms),
        payload: payload(&m.payload_xml, "payload_xml")?,
        size: size(m.size, "size")?,
    })
}

#[cfg(test)]
mod tests {
    //! Invalid snapshots; round trips of realistic ones are tested in
    //! `tests/round_trip.rs`.
    use super::*;

    /// A small valid snapshot: one occupant with one session, one message.
    fn valid() -> pb::RoomSnapshot {
        let config = config_to_pb(&RoomConfig::default());
        pb::RoomSnapshot {
            jid: "r@conference.a.test".into(),
            settings: Some(pb::RoomSettings {
                epoch: 1,
                salt: b"salt".to_vec(),
                bounds: Some(pb::ConfigBounds {
                    max_users: 10,
                    max_history: 10,
                }),
                lock_new_rooms: false,
                default_config: Some(config.clone()),
                rate_limit: None,
            }),
            config: Some(config),
            affiliations: vec![pb::AffiliationEntry {
                jid: "alice@a.test".into(),
                affiliation: pb::Affiliation::Owner.into(),
            }],
            occupants: vec![pb::OccupantSnapshot {
                nick: "alice".into(),
                bare: "alice@a.test".into(),
                sessions: vec!["alice@a.test/pc".into()],
                role: pb::Role::Moderator.into(),
                occupant_id: "oid".into(),
                presence_xml: String::new(),
                tokens: 1.0,
                refilled_ms: 5,
            }],
            subject: None,
            history: vec![pb::RoomMessage {
                seq: 1,
                stanza_id: "1-1".into(),
                occupant_id: "oid".into(),
                nick: "alice".into(),
                sender: "alice@a.test".into(),
                id: None,
                at_ms: 5,
                payload_xml: "<body xmlns='jabber:client'>hi</body>".into(),
                size: 10,
            }],
            next_seq: 2,
            locked: false,
            created: true,
            merged: vec![pb::SplitProgress {
                domain: "b.test".into(),
                began_ms: 5,
                next_index: 2,
            }],
        }
    }

    fn error(edit: impl FnOnce(&mut pb::RoomSnapshot)) -> ProtocolError {
        let mut s = valid();
        edit(&mut s);
        RoomSnapshot::try_from(s).unwrap_err()
    }

    #[test]
    fn the_valid_one_decodes() {
        let s = RoomSnapshot::try_from(valid()).unwrap();
        assert_eq!(s.occupants.len(), 1);
        assert_eq!(s.history[0].payload.elements().len(), 1);
    }

    #[test]
    fn merge_progress_decodes_once_per_domain() {
        let s = RoomSnapshot::try_from(valid()).unwrap();
        assert_eq!(
            s.merged,
            [SplitProgress {
                domain: "b.test".into(),
                began: Timestamp(5),
                next_index: 2,
            }]
        );
        assert_eq!(pb::RoomSnapshot::from(&s), valid());
        let twice = error(|s| s.merged.push(s.merged[0].clone()));
        assert_eq!(
            twice,
            ProtocolError::invalid("snapshot.merged[1].domain", "duplicate")
        );
        assert_eq!(
            error(|s| s.merged[0].domain = "bob@b.test".into()).field(),
            "snapshot.merged[0].domain"
        );
    }

    #[test]
    fn required_messages_are_required() {
        assert_eq!(error(|s| s.settings = None).field(), "snapshot.settings");
        assert_eq!(error(|s| s.config = None).field(), "snapshot.config");
        assert_eq!(
            error(|s| s.settings.as_mut().unwrap().bounds = None).field(),
            "snapshot.settings.bounds"
        );
        assert_eq!(
            error(|s| s.settings.as_mut().unwrap().default_config = None).field(),
            "snapshot.settings.default_config"
        );
    }

    #[test]
    fn values_are_revalidated_with_their_path() {
        assert!(matches!(
            error(|s| s.jid = "r@conference.a.test/res".into()),
            ProtocolError::Jid { field, .. } if field == "snapshot.jid"
        ));
        assert_eq!(
            error(|s| s.occupants[0].nick = "".into()),
            ProtocolError::Nick {
                field: "snapshot.occupants[0].nick".into()
            }
        );
        assert_eq!(
            error(|s| s.occupants[0].sessions.push("alice@a.test".into())).field(),
            "snapshot.occupants[0].sessions[1]"
        );
        assert_eq!(
            error(|s| s.occupants[0].role = 0),
            ProtocolError::Unspecified {
                field: "snapshot.occupants[0].role".into()
            }
        );
        assert_eq!(
            error(|s| s.config.as_mut().unwrap().whois = 0).field(),
            "snapshot.config.whois"
        );
        assert_eq!(
            error(|s| s
                .settings
                .as_mut()
                .unwrap()
                .default_config
                .as_mut()
                .unwrap()
                .allow_pm = 9)
            .field(),
            "snapshot.settings.default_config.allow_pm"
        );
        assert_eq!(
            error(|s| s.config.as_mut().unwrap().split_policy = 0),
            ProtocolError::Unspecified {
                field: "snapshot.config.split_policy".into()
            }
        );
        assert_eq!(
            error(|s| s
                .settings
                .as_mut()
                .unwrap()
                .default_config
                .as_mut()
                .unwrap()
                .split_policy = 7)
            .field(),
            "snapshot.settings.default_config.split_policy"
        );
        assert_eq!(
            error(|s| s.config.as_mut().unwrap().presence_broadcast.push(0)).field(),
            "snapshot.config.presence_broadcast[3]"
        );
        assert_eq!(
            error(|s| s.affiliations[0].affiliation = 77).field(),
            "snapshot.affiliations[0].affiliation"
        );
        assert_eq!(
            error(|s| s.history[0].sender = "not a jid@".into()).field(),
            "snapshot.history[0].sender"
        );
        assert!(matches!(
            error(|s| s.history[0].payload_xml = "<body>".into()),
            ProtocolError::Payload { field, .. } if field == "snapshot.history[0].payload_xml"
        ));
        assert_eq!(
            error(|s| {
                s.subject = Some(pb::Subject {
                    text: "t".into(),
                    nick: Some(" ".into()),
                    at_ms: 0,
                })
            })
            .field(),
            "snapshot.subject.nick"
        );
    }

    #[test]
    fn inconsistent_state_is_refused() {
        let duplicate = |field: &str| ProtocolError::Invalid {
            field: field.into(),
            reason: "duplicate",
        };
        assert_eq!(
            error(|s| {
                let again = s.occupants[0].clone();
                s.occupants.push(pb::OccupantSnapshot {
                    sessions: vec!["alice@a.test/phone".into()],
                    ..again
                })
            }),
            duplicate("snapshot.occupants[1].nick")
        );
        assert_eq!(
            error(|s| {
                let again = s.occupants[0].clone();
                s.occupants.push(pb::OccupantSnapshot {
                    nick: "other".into(),
                    ..again
                })
            }),
            duplicate("snapshot.occupants[1].sessions[0]")
        );
        assert_eq!(
            error(|s| {
                let again = s.affiliations[0].clone();
                s.affiliations.push(again)
            }),
            duplicate("snapshot.affiliations[1].jid")
        );
        assert_eq!(
            error(|s| s.occupants[0].sessions[0] = "mallory@a.test/pc".into()),
            ProtocolError::Invalid {
                field: "snapshot.occupants[0].sessions[0]".into(),
                reason: "not a session of bare"
            }
        );
        for tokens in [f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(
                error(|s| s.occupants[0].tokens = tokens).field(),
                "snapshot.occupants[0].tokens"
            );
        }
        assert_eq!(error(|s| s.next_seq = 1).field(), "snapshot.history[0].seq");
        assert_eq!(error(|s| s.next_seq = 0).field(), "snapshot.next_seq");
    }
}
