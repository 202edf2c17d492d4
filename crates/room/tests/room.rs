//! The room state machine, driven input by input, asserting on its actions.

use std::sync::Arc;

use dmuc_room::event::{
    AdminFilter, AdminItem, IqRequest, IqResponse, JoinRequest, MessageKind, OccupantPresence,
    StanzaKind,
};
use dmuc_room::form::Submission;
use dmuc_room::{
    Action, Affiliation, Condition, ConfigBounds, HistoryRequest, Input, Nick, Outgoing, Payload,
    Persist, RateLimit, Role, Room, RoomConfig, RoomSettings, Seq, Timestamp,
};
use jid::{BareJid, FullJid};

fn settings() -> RoomSettings {
    RoomSettings {
        epoch: 7,
        salt: Arc::from(&b"salt"[..]),
        bounds: ConfigBounds {
            max_users: 100,
            max_history: 50,
        },
        lock_new_rooms: true,
        default_config: RoomConfig::default(),
        rate_limit: None,
    }
}

fn jid(s: &str) -> FullJid {
    s.parse().unwrap()
}

fn nick(s: &str) -> Nick {
    Nick::new(s).unwrap()
}

const NOW: Timestamp = Timestamp(1_700_000_000_000);

struct Harness {
    room: Room,
}

impl Harness {
    fn new() -> Self {
        Harness {
            room: Room::new("room@conference.a.test".parse().unwrap(), settings()),
        }
    }

    fn handle(&mut self, input: Input) -> Vec<Action> {
        self.room.handle(input, NOW)
    }

    fn join_with(&mut self, who: &str, n: &str, join: JoinRequest) -> Vec<Action> {
        self.handle(Input::Presence {
            from: jid(who),
            nick: nick(n),
            join: Some(join),
            payload: Payload::default(),
        })
    }

    fn join(&mut self, who: &str, n: &str) -> Vec<Action> {
        self.join_with(who, n, JoinRequest::default())
    }

    /// A created, unlocked room owned by alice@a.test/pc as "alice".
    fn with_owner() -> Self {
        let mut h = Harness::new();
        h.join("alice@a.test/pc", "alice");
        h.iq(
            "alice@a.test/pc",
            IqRequest::ConfigSet(Some(Submission::default())),
        );
        h
    }

    fn iq(&mut self, from: &str, request: IqRequest) -> Vec<Action> {
        self.handle(Input::Iq {
            from: jid(from),
            to: None,
            id: "iq1".into(),
            request,
        })
    }

    fn say(&mut self, from: &str, body: &str) -> Vec<Action> {
        self.handle(Input::Groupchat {
            from: jid(from),
            id: Some(format!("m-{body}")),
            subject: None,
            has_body: true,
            payload: Payload::default(),
            size: body.len(),
        })
    }

    fn configure(&mut self, fields: &[(&str, &str)]) -> Vec<Action> {
        let form = Submission {
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                .collect(),
        };
        self.iq("alice@a.test/pc", IqRequest::ConfigSet(Some(form)))
    }
}

/// The stanzas sent to `to`, in order.
fn sent_to<'a>(actions: &'a [Action], to: &str) -> Vec<&'a Outgoing> {
    let to = jid(to);
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to: list, stanza } if list.contains(&to) => Some(stanza),
            _ => None,
        })
        .collect()
}

fn presence(o: &Outgoing) -> &OccupantPresence {
    match o {
        Outgoing::Presence(p) => p,
        other => panic!("expected a presence, got {other:?}"),
    }
}

fn error_condition(o: &Outgoing) -> Condition {
    match o {
        Outgoing::Error { condition, .. } => *condition,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn creation_gives_201_and_locks_until_configured() {
    let mut h = Harness::new();
    let actions = h.join("alice@a.test/pc", "alice");
    let to_alice = sent_to(&actions, "alice@a.test/pc");
    assert_eq!(to_alice.len(), 2, "self-presence then empty subject");
    let own = presence(to_alice[0]);
    assert_eq!(own.statuses, vec![110, 201]);
    assert_eq!(own.affiliation, Affiliation::Owner);
    assert_eq!(own.role, Role::Moderator);
    assert!(matches!(
        to_alice[1],
        Outgoing::Subject {
            subject: None,
            delayed: true
        }
    ));
    assert!(h.room.is_locked());

    let refused = h.join("bob@b.test/x", "bob");
    assert_eq!(
        error_condition(sent_to(&refused, "bob@b.test/x")[0]),
        Condition::ItemNotFound
    );

    // An instant room (empty submission) unlocks it.
    h.iq(
        "alice@a.test/pc",
        IqRequest::ConfigSet(Some(Submission::default())),
    );
    assert!(!h.room.is_locked());
    let joined = h.join("bob@b.test/x", "bob");
    assert_eq!(
        presence(sent_to(&joined, "bob@b.test/x")[1]).statuses,
        vec![110]
    );
}

#[test]
fn join_order_is_roster_self_history_subject() {
    let mut h = Harness::with_owner();
    h.say("alice@a.test/pc", "one");
    h.say("alice@a.test/pc", "two");
    let actions = h.join("bob@b.test/x", "bob");

    // Alice hears of bob first.
    let to_alice = sent_to(&actions, "alice@a.test/pc");
    assert_eq!(to_alice.len(), 1);
    assert_eq!(presence(to_alice[0]).nick, nick("bob"));
    assert_eq!(
        presence(to_alice[0]).jid,
        Some(jid("bob@b.test/x")),
        "moderators see real JIDs"
    );

    let to_bob = sent_to(&actions, "bob@b.test/x");
    assert_eq!(to_bob.len(), 5);
    assert_eq!(presence(to_bob[0]).nick, nick("alice"));
    assert_eq!(
        presence(to_bob[0]).jid,
        None,
        "semi-anonymous: participants don't"
    );
    assert_eq!(presence(to_bob[1]).statuses, vec![110]);
    let history: Vec<u64> = to_bob[2..4]
        .iter()
        .map(|o| match o {
            Outgoing::History(m) => m.seq.0,
            other => panic!("expected history, got {other:?}"),
        })
        .collect();
    assert_eq!(history, vec![1, 2]);
    assert!(matches!(to_bob[4], Outgoing::Subject { delayed: true, .. }));
    // The alice→bob order: alice's presence to bob is emitted after bob's to alice.
    let first_bob = actions
        .iter()
        .position(|a| matches!(a, Action::Send { to, .. } if to.contains(&jid("bob@b.test/x"))))
        .unwrap();
    let first_alice = actions
        .iter()
        .position(|a| matches!(a, Action::Send { to, .. } if to.contains(&jid("alice@a.test/pc"))))
        .unwrap();
    assert!(first_alice < first_bob);
}

#[test]
fn history_request_limits_what_a_joiner_gets() {
    let mut h = Harness::with_owner();
    for i in 0..5 {
        h.say("alice@a.test/pc", &format!("m{i}"));
    }
    let actions = h.join_with(
        "bob@b.test/x",
        "bob",
        JoinRequest {
            password: None,
            history: HistoryRequest {
                max_stanzas: Some(2),
                ..Default::default()
            },
        },
    );
    let seqs: Vec<u64> = sent_to(&actions, "bob@b.test/x")
        .iter()
        .filter_map(|o| match o {
            Outgoing::History(m) => Some(m.seq.0),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![4, 5]);
}

#[test]
fn join_errors() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let conflict = h.join("carol@b.test/y", "bob");
    assert_eq!(
        error_condition(sent_to(&conflict, "carol@b.test/y")[0]),
        Condition::Conflict
    );

    h.configure(&[
        ("muc#roomconfig_passwordprotectedroom", "1"),
        ("muc#roomconfig_roomsecret", "pw"),
    ]);
    let wrong = h.join("dave@b.test/z", "dave");
    assert_eq!(
        error_condition(sent_to(&wrong, "dave@b.test/z")[0]),
        Condition::NotAuthorized
    );
    let right = h.join_with(
        "dave@b.test/z",
        "dave",
        JoinRequest {
            password: Some("pw".into()),
            ..Default::default()
        },
    );
    assert_eq!(
        presence(
            sent_to(&right, "dave@b.test/z")
                .last()
                .map(|_| sent_to(&right, "dave@b.test/z")[2])
                .unwrap()
        )
        .statuses,
        vec![110]
    );

    h.configure(&[
        ("muc#roomconfig_passwordprotectedroom", "0"),
        ("muc#roomconfig_membersonly", "1"),
    ]);
    let members = h.join("erin@b.test/e", "erin");
    assert_eq!(
        error_condition(sent_to(&members, "erin@b.test/e")[0]),
        Condition::RegistrationRequired
    );

    h.iq(
        "alice@a.test/pc",
        IqRequest::AdminSet(vec![AdminItem::Affiliation {
            jid: "erin@b.test".parse().unwrap(),
            affiliation: Affiliation::Outcast,
            reason: None,
        }]),
    );
    let banned = h.join("erin@b.test/e", "erin");
    assert_eq!(
        error_condition(sent_to(&banned, "erin@b.test/e")[0]),
        Condition::Forbidden
    );
}

#[test]
fn members_only_switch_removes_non_members_with_322() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let actions = h.configure(&[("muc#roomconfig_membersonly", "1")]);
    let to_bob = sent_to(&actions, "bob@b.test/x");
    let gone = presence(to_bob[0]);
    assert!(!gone.available);
    assert_eq!(gone.statuses, vec![110, 322]);
}

#[test]
fn room_full_lets_admins_in() {
    let mut h = Harness::with_owner();
    h.configure(&[("muc#roomconfig_maxusers", "2")]);
    h.join("bob@b.test/x", "bob");
    let full = h.join("carol@b.test/y", "carol");
    assert_eq!(
        error_condition(sent_to(&full, "carol@b.test/y")[0]),
        Condition::ServiceUnavailable
    );
    h.iq(
        "alice@a.test/pc",
        IqRequest::AdminSet(vec![AdminItem::Affiliation {
            jid: "carol@b.test".parse().unwrap(),
            affiliation: Affiliation::Admin,
            reason: None,
        }]),
    );
    let admin = h.join("carol@b.test/y", "carol");
    assert!(matches!(
        sent_to(&admin, "carol@b.test/y")[0],
        Outgoing::Presence(_)
    ));
}

#[test]
fn groupchat_is_reflected_with_ids_and_sequenced() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let actions = h.say("bob@b.test/x", "hi");
    let Action::Send {
        to,
        stanza: Outgoing::Groupchat(m),
    } = &actions[0]
    else {
        panic!("expected one broadcast, got {actions:?}");
    };
    assert_eq!(to.len(), 2, "sender included");
    assert_eq!(m.id.as_deref(), Some("m-hi"));
    assert_eq!(m.seq, Seq(1));
    assert_eq!(m.stanza_id.as_str(), "7-1");
    assert_eq!(m.nick, nick("bob"));
    let again = h.say("bob@b.test/x", "again");
    assert!(
        matches!(&again[0], Action::Send { stanza: Outgoing::Groupchat(m2), .. } if m2.occupant_id == m.occupant_id && m2.seq == Seq(2))
    );
}

#[test]
fn non_occupants_and_visitors_cannot_speak() {
    let mut h = Harness::with_owner();
    let stranger = h.say("eve@b.test/e", "spam");
    assert_eq!(
        error_condition(sent_to(&stranger, "eve@b.test/e")[0]),
        Condition::NotAcceptable
    );

    h.configure(&[("muc#roomconfig_moderatedroom", "1")]);
    let joined = h.join("bob@b.test/x", "bob");
    assert_eq!(
        presence(sent_to(&joined, "bob@b.test/x")[1]).role,
        Role::Visitor
    );
    let visitor = h.say("bob@b.test/x", "hello");
    assert_eq!(
        error_condition(sent_to(&visitor, "bob@b.test/x")[0]),
        Condition::Forbidden
    );

    // Voice granted: now bob may speak.
    h.iq(
        "alice@a.test/pc",
        IqRequest::AdminSet(vec![AdminItem::Role {
            nick: nick("bob"),
            role: Role::Participant,
            reason: None,
        }]),
    );
    assert!(matches!(
        h.say("bob@b.test/x", "hello")[0],
        Action::Send {
            stanza: Outgoing::Groupchat(_),
            ..
        }
    ));
}

#[test]
fn subject_changes_only_by_those_allowed() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let subject = |h: &mut Harness, from: &str| {
        h.handle(Input::Groupchat {
            from: jid(from),
            id: None,
            subject: Some("news".into()),
            has_body: false,
            payload: Payload::default(),
            size: 10,
        })
    };
    let refused = subject(&mut h, "bob@b.test/x");
    assert_eq!(
        error_condition(sent_to(&refused, "bob@b.test/x")[0]),
        Condition::Forbidden
    );
    let ok = subject(&mut h, "alice@a.test/pc");
    assert!(
        matches!(sent_to(&ok, "bob@b.test/x")[0], Outgoing::Subject { subject: Some(s), delayed: false } if s.text == "news")
    );
    // A message with subject and body is a normal message, not a subject change.
    let with_body = h.handle(Input::Groupchat {
        from: jid("bob@b.test/x"),
        id: None,
        subject: Some("sneaky".into()),
        has_body: true,
        payload: Payload::default(),
        size: 10,
    });
    assert!(matches!(
        with_body[0],
        Action::Send {
            stanza: Outgoing::Groupchat(_),
            ..
        }
    ));
    let joined = h.join("carol@b.test/c", "carol");
    assert!(
        matches!(sent_to(&joined, "carol@b.test/c").last().unwrap(), Outgoing::Subject { subject: Some(s), .. } if s.text == "news")
    );
}

#[test]
fn private_messages() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let pm = h.handle(Input::Private {
        from: jid("bob@b.test/x"),
        to: nick("alice"),
        id: Some("p1".into()),
        kind: MessageKind::Chat,
        payload: Payload::default(),
    });
    assert!(
        matches!(sent_to(&pm, "alice@a.test/pc")[0], Outgoing::Private { from, .. } if *from == nick("bob"))
    );
    let nobody = h.handle(Input::Private {
        from: jid("bob@b.test/x"),
        to: nick("nobody"),
        id: None,
        kind: MessageKind::Chat,
        payload: Payload::default(),
    });
    assert_eq!(
        error_condition(sent_to(&nobody, "bob@b.test/x")[0]),
        Condition::ItemNotFound
    );
}

#[test]
fn nick_change_sends_303_then_available() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let actions = h.handle(Input::Presence {
        from: jid("bob@b.test/x"),
        nick: nick("robert"),
        join: None,
        payload: Payload::default(),
    });
    let to_alice = sent_to(&actions, "alice@a.test/pc");
    let gone = presence(to_alice[0]);
    assert!(!gone.available);
    assert_eq!(gone.statuses, vec![303]);
    assert_eq!(gone.new_nick, Some(nick("robert")));
    assert_eq!(presence(to_alice[1]).nick, nick("robert"));
    let to_bob = sent_to(&actions, "bob@b.test/x");
    assert_eq!(presence(to_bob[0]).statuses, vec![303, 110]);
    assert_eq!(presence(to_bob[1]).statuses, vec![110]);

    let conflict = h.handle(Input::Presence {
        from: jid("bob@b.test/x"),
        nick: nick("alice"),
        join: None,
        payload: Payload::default(),
    });
    assert_eq!(
        error_condition(sent_to(&conflict, "bob@b.test/x")[0]),
        Condition::Conflict
    );
}

#[test]
fn leaving_the_last_occupant_closes_a_temporary_room() {
    let mut h = Harness::with_owner();
    let actions = h.handle(Input::Leave {
        from: jid("alice@a.test/pc"),
        payload: Payload::default(),
    });
    assert_eq!(
        presence(sent_to(&actions, "alice@a.test/pc")[0]).statuses,
        vec![110]
    );
    assert!(matches!(actions.last(), Some(Action::Close)));
}

#[test]
fn kick_and_ban() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    h.join("carol@b.test/c", "carol");
    let kick = h.iq(
        "alice@a.test/pc",
        IqRequest::AdminSet(vec![AdminItem::Role {
            nick: nick("bob"),
            role: Role::None,
            reason: Some("bye".into()),
        }]),
    );
    let to_bob = presence(sent_to(&kick, "bob@b.test/x")[0]);
    assert_eq!(to_bob.statuses, vec![110, 307]);
    assert_eq!(to_bob.reason.as_deref(), Some("bye"));
    assert_eq!(
        presence(sent_to(&kick, "carol@b.test/c")[0]).statuses,
        vec![307]
    );

    let ban = h.iq(
        "alice@a.test/pc",
        IqRequest::AdminSet(vec![AdminItem::Affiliation {
            jid: "carol@b.test".parse().unwrap(),
            affiliation: Affiliation::Outcast,
            reason: None,
        }]),
    );
    let to_carol = presence(sent_to(&ban, "carol@b.test/c")[0]);
    assert_eq!(to_carol.statuses, vec![110, 301]);
    assert_eq!(to_carol.affiliation, Affiliation::Outcast);
    let list = h.iq(
        "alice@a.test/pc",
        IqRequest::AdminList(AdminFilter::Affiliation(Affiliation::Outcast)),
    );
    assert!(
        matches!(sent_to(&list, "alice@a.test/pc")[0], Outgoing::IqResult { body: IqResponse::AdminList(items), .. } if items.len() == 1)
    );
}

#[test]
fn participants_cannot_kick_and_nobody_kicks_the_owner() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let by_bob = h.iq(
        "bob@b.test/x",
        IqRequest::AdminSet(vec![AdminItem::Role {
            nick: nick("alice"),
            role: Role::None,
            reason: None,
        }]),
    );
    assert_eq!(
        error_condition(sent_to(&by_bob, "bob@b.test/x")[0]),
        Condition::Forbidden
    );
}

#[test]
fn last_owner_cannot_be_removed() {
    let mut h = Harness::with_owner();
    let actions = h.iq(
        "alice@a.test/pc",
        IqRequest::AdminSet(vec![AdminItem::Affiliation {
            jid: "alice@a.test".parse().unwrap(),
            affiliation: Affiliation::Admin,
            reason: None,
        }]),
    );
    assert_eq!(
        error_condition(sent_to(&actions, "alice@a.test/pc")[0]),
        Condition::Conflict
    );
    assert_eq!(
        h.room.affiliation(&"alice@a.test".parse().unwrap()),
        Affiliation::Owner
    );
}

#[test]
fn config_change_announces_104_and_persists() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let actions = h.configure(&[
        ("muc#roomconfig_persistentroom", "1"),
        ("muc#roomconfig_roomname", "Lounge"),
    ]);
    assert!(
        matches!(sent_to(&actions, "bob@b.test/x")[0], Outgoing::Status(codes) if codes == &vec![104])
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Persist(Persist::Config(c)) if c.name == "Lounge"))
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Persist(Persist::Affiliation(j, Affiliation::Owner)) if *j == "alice@a.test".parse::<BareJid>().unwrap())));
    let msg = h.say("bob@b.test/x", "kept");
    assert!(
        matches!(&msg[0], Action::Persist(Persist::Message(m)) if m.seq == Seq(1)),
        "persist comes before the send: {msg:?}"
    );
    let bob_config = h.iq("bob@b.test/x", IqRequest::ConfigGet);
    assert_eq!(
        error_condition(sent_to(&bob_config, "bob@b.test/x")[0]),
        Condition::Forbidden
    );
}

#[test]
fn destroy_tells_everyone_and_deletes() {
    let mut h = Harness::with_owner();
    h.configure(&[("muc#roomconfig_persistentroom", "1")]);
    h.join("bob@b.test/x", "bob");
    let actions = h.iq(
        "alice@a.test/pc",
        IqRequest::Destroy {
            reason: Some("done".into()),
            alternate: None,
        },
    );
    let to_bob = presence(sent_to(&actions, "bob@b.test/x")[0]);
    assert!(!to_bob.available);
    assert_eq!(
        to_bob.destroy.as_ref().and_then(|d| d.reason.as_deref()),
        Some("done")
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Persist(Persist::Delete)))
    );
    assert!(matches!(actions.last(), Some(Action::Close)));
}

#[test]
fn bounced_occupant_is_removed_with_333() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let actions = h.handle(Input::Bounced {
        from: jid("bob@b.test/x"),
    });
    assert!(sent_to(&actions, "bob@b.test/x").is_empty());
    assert_eq!(
        presence(sent_to(&actions, "alice@a.test/pc")[0]).statuses,
        vec![333]
    );
}

#[test]
fn shutdown_sends_332() {
    let mut h = Harness::with_owner();
    let actions = h.handle(Input::Shutdown);
    assert_eq!(
        presence(sent_to(&actions, "alice@a.test/pc")[0]).statuses,
        vec![110, 332]
    );
}

#[test]
fn self_ping_is_answered_only_for_occupants() {
    let mut h = Harness::with_owner();
    let ping = |h: &mut Harness, from: &str| {
        h.handle(Input::Iq {
            from: jid(from),
            to: Some(nick("alice")),
            id: "p".into(),
            request: IqRequest::Ping,
        })
    };
    assert!(matches!(
        ping(&mut h, "alice@a.test/pc")[0],
        Action::Send {
            stanza: Outgoing::IqResult { .. },
            ..
        }
    ));
    let stranger = ping(&mut h, "eve@b.test/e");
    assert_eq!(
        error_condition(sent_to(&stranger, "eve@b.test/e")[0]),
        Condition::NotAcceptable
    );
}

#[test]
fn rejoin_from_the_same_session_is_a_full_resync() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let actions = h.join("bob@b.test/x", "bob");
    let to_bob = sent_to(&actions, "bob@b.test/x");
    assert_eq!(presence(to_bob[1]).statuses, vec![110]);
    assert!(
        sent_to(&actions, "alice@a.test/pc").is_empty(),
        "others see nothing new"
    );
}

#[test]
fn presence_without_muc_x_is_not_a_join() {
    let mut h = Harness::with_owner();
    let actions = h.handle(Input::Presence {
        from: jid("bob@b.test/x"),
        nick: nick("bob"),
        join: None,
        payload: Payload::default(),
    });
    assert_eq!(h.room.occupant_count(), 1);
    assert!(sent_to(&actions, "alice@a.test/pc").is_empty());
}

#[test]
fn flood_is_limited() {
    let mut s = settings();
    s.rate_limit = Some(RateLimit {
        burst: 2,
        per_second: 1,
    });
    s.lock_new_rooms = false;
    let mut room = Room::new("r@conference.a.test".parse().unwrap(), s);
    room.handle(
        Input::Presence {
            from: jid("bob@b.test/x"),
            nick: nick("bob"),
            join: Some(JoinRequest::default()),
            payload: Payload::default(),
        },
        NOW,
    );
    let say = |room: &mut Room, at: Timestamp| {
        room.handle(
            Input::Groupchat {
                from: jid("bob@b.test/x"),
                id: None,
                subject: None,
                has_body: true,
                payload: Payload::default(),
                size: 1,
            },
            at,
        )
    };
    assert!(matches!(
        say(&mut room, NOW)[0],
        Action::Send {
            stanza: Outgoing::Groupchat(_),
            ..
        }
    ));
    assert!(matches!(
        say(&mut room, NOW)[0],
        Action::Send {
            stanza: Outgoing::Groupchat(_),
            ..
        }
    ));
    assert!(matches!(
        say(&mut room, NOW)[0],
        Action::Send {
            stanza: Outgoing::Error {
                condition: Condition::ResourceConstraint,
                kind: StanzaKind::Message,
                ..
            },
            ..
        }
    ));
    assert!(matches!(
        say(&mut room, Timestamp(NOW.0 + 1000))[0],
        Action::Send {
            stanza: Outgoing::Groupchat(_),
            ..
        }
    ));
}

#[test]
fn iqs_between_occupants_are_relayed_and_answered() {
    use dmuc_room::event::IqKind;
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let vcard = Payload::new(vec!["<vCard xmlns='vcard-temp'/>".parse().unwrap()]);
    let asked = h.handle(Input::Iq {
        from: jid("bob@b.test/x"),
        to: Some(nick("alice")),
        id: "v1".into(),
        request: IqRequest::Relay {
            set: false,
            payload: vcard.clone(),
        },
    });
    let [
        Outgoing::Iq {
            from,
            id,
            kind: IqKind::Get,
            payload,
        },
    ] = &sent_to(&asked, "alice@a.test/pc")[..]
    else {
        panic!("relayed to alice: {asked:?}");
    };
    assert_eq!(*from, nick("bob"));
    assert_eq!(payload, &vcard);
    assert!(
        !id.contains("bob@b.test"),
        "the relay id hides the requester's JID: {id}"
    );
    assert!(
        sent_to(&asked, "bob@b.test/x").is_empty(),
        "no answer from the room itself"
    );

    let answered = h.handle(Input::IqResponse {
        from: jid("alice@a.test/pc"),
        to: nick("bob"),
        id: id.clone(),
        error: false,
        payload: Payload::default(),
    });
    assert!(matches!(
        &sent_to(&answered, "bob@b.test/x")[..],
        [Outgoing::Iq { from, id, kind: IqKind::Result, .. }] if *from == nick("alice") && id == "v1"
    ));

    // A forged answer (wrong tag) and answers from strangers go nowhere.
    let forged = h.handle(Input::IqResponse {
        from: jid("alice@a.test/pc"),
        to: nick("bob"),
        id: "000000000000.v1".into(),
        error: false,
        payload: Payload::default(),
    });
    assert!(forged.is_empty());
    let stranger = h.handle(Input::IqResponse {
        from: jid("eve@b.test/e"),
        to: nick("bob"),
        id: id.clone(),
        error: false,
        payload: Payload::default(),
    });
    assert!(stranger.is_empty());
}

#[test]
fn pings_to_other_occupants_are_relayed() {
    let mut h = Harness::with_owner();
    h.join("bob@b.test/x", "bob");
    let pinged = h.handle(Input::Iq {
        from: jid("bob@b.test/x"),
        to: Some(nick("alice")),
        id: "p".into(),
        request: IqRequest::Ping,
    });
    assert!(
        matches!(&sent_to(&pinged, "alice@a.test/pc")[..], [Outgoing::Iq { payload, .. }] if payload.elements()[0].name() == "ping")
    );
}

/// The split policy is dmuc's own field of the configuration form: listed
/// with its three options, `local-chat` by default, settable, persisted,
/// and a bad value refuses the whole submission.
#[test]
fn split_policy_is_a_config_form_field() {
    use dmuc_room::SplitPolicy;
    use dmuc_room::form::FieldKind;

    const FIELD: &str = "dmuc#roomconfig_splitpolicy";
    let mut h = Harness::with_owner();
    let form = |h: &mut Harness| {
        let actions = h.iq("alice@a.test/pc", IqRequest::ConfigGet);
        match sent_to(&actions, "alice@a.test/pc")[0] {
            Outgoing::IqResult {
                body: IqResponse::ConfigForm(form),
                ..
            } => form.fields.iter().find(|f| f.var == FIELD).cloned(),
            other => panic!("expected the form, got {other:?}"),
        }
    };
    let field = form(&mut h).expect("the form lists the split policy");
    assert_eq!(field.kind, FieldKind::ListSingle);
    assert!(field.label.is_some());
    assert_eq!(field.values, ["local-chat"]);
    let options: Vec<&str> = field.options.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(options, ["off", "local-chat", "open"]);
    assert!(field.options.iter().all(|(label, _)| !label.is_empty()));

    h.configure(&[("muc#roomconfig_persistentroom", "1")]);
    let actions = h.configure(&[(FIELD, "open")]);
    assert_eq!(h.room.config().split_policy, SplitPolicy::Open);
    assert!(actions.iter().any(
        |a| matches!(a, Action::Persist(Persist::Config(c)) if c.split_policy == SplitPolicy::Open)
    ));
    assert!(
        matches!(sent_to(&actions, "alice@a.test/pc")[0], Outgoing::Status(codes) if codes == &vec![104])
    );
    assert_eq!(form(&mut h).unwrap().values, ["open"]);

    let refused = h.configure(&[("muc#roomconfig_roomname", "Renamed"), (FIELD, "sometimes")]);
    assert_eq!(
        error_condition(sent_to(&refused, "alice@a.test/pc")[0]),
        Condition::NotAcceptable
    );
    assert_eq!(h.room.config().split_policy, SplitPolicy::Open);
    assert_eq!(
        h.room.config().name,
        "",
        "nothing of a refused form applies"
    );

    h.configure(&[(FIELD, "off")]);
    assert_eq!(h.room.config().split_policy, SplitPolicy::Off);
}
