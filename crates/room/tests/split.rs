//! A slave split from its master, under each split policy, asserting on
//! the actions it emits: local users keep what the policy allows, get an
//! explicit error for the rest, and nothing reaches another domain.

use dmuc_room::event::{AdminItem, IqRequest, IqResponse, JoinRequest, MessageKind, StanzaKind};
use dmuc_room::form::Submission;
use dmuc_room::replica::Replica;
use dmuc_room::testing::{self, relaxed_settings};
use dmuc_room::{
    Action, Affiliation, Condition, ErrorType, Input, Nick, Outgoing, Payload, Role, Room,
    RoomMessage, Split, SplitEvent, SplitPolicy, StanzaId, Timestamp,
};
use jid::FullJid;
use proptest::prelude::*;

const ALICE: &str = "alice@a.test/pc";
const BOB: &str = "bob@b.test/x";
const CAROL: &str = "carol@b.test/y";
const DAVE: &str = "dave@c.test/z";
const ERIN: &str = "erin@b.test/e";

/// The slave's domain.
const LOCAL: &str = "b.test";

fn jid(s: &str) -> FullJid {
    s.parse().unwrap()
}

fn nick(s: &str) -> Nick {
    Nick::new(s).unwrap()
}

fn t(ms: i64) -> Timestamp {
    Timestamp(1_700_000_000_000 + ms)
}

fn join(from: &str, n: &str) -> Input {
    Input::Presence {
        from: jid(from),
        nick: nick(n),
        join: Some(JoinRequest::default()),
        payload: Payload::default(),
    }
}

fn status(from: &str, n: &str) -> Input {
    Input::Presence {
        from: jid(from),
        nick: nick(n),
        join: None,
        payload: Payload::new(vec![
            "<show xmlns='jabber:client'>away</show>".parse().unwrap(),
        ]),
    }
}

fn leave(from: &str) -> Input {
    Input::Leave {
        from: jid(from),
        payload: Payload::default(),
    }
}

fn say(from: &str, body: &str) -> Input {
    Input::Groupchat {
        from: jid(from),
        id: Some(format!("m-{body}")),
        subject: None,
        has_body: true,
        payload: Payload::new(vec![
            format!("<body xmlns='jabber:client'>{body}</body>")
                .parse()
                .unwrap(),
        ]),
        size: body.len(),
    }
}

fn subject(from: &str, text: &str) -> Input {
    Input::Groupchat {
        from: jid(from),
        id: Some("s".into()),
        subject: Some(text.into()),
        has_body: false,
        payload: Payload::default(),
        size: text.len(),
    }
}

fn pm(from: &str, to: &str) -> Input {
    Input::Private {
        from: jid(from),
        to: nick(to),
        id: Some("p".into()),
        kind: MessageKind::Chat,
        payload: Payload::default(),
    }
}

fn iq(from: &str, to: Option<&str>, request: IqRequest) -> Input {
    Input::Iq {
        from: jid(from),
        to: to.map(nick),
        id: "i".into(),
        request,
    }
}

fn configure(from: &str, fields: &[(&str, &str)]) -> Input {
    iq(
        from,
        None,
        IqRequest::ConfigSet(Some(Submission {
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                .collect(),
        })),
    )
}

/// The master's room before the split: alice (a.test, owner), bob (b.test,
/// admin, so a moderator), carol (b.test), dave (c.test); one message,
/// a subject; the room's split policy set to `policy`.
fn replica(policy: SplitPolicy) -> Replica {
    let mut master = Room::new("r@muc.a.test".parse().unwrap(), relaxed_settings());
    let inputs = [
        join(ALICE, "alice"),
        configure(ALICE, &[("dmuc#roomconfig_splitpolicy", policy.as_str())]),
        join(BOB, "bob"),
        join(CAROL, "carol"),
        join(DAVE, "dave"),
        iq(
            ALICE,
            None,
            IqRequest::AdminSet(vec![AdminItem::Affiliation {
                jid: "bob@b.test".parse().unwrap(),
                affiliation: Affiliation::Admin,
                reason: None,
            }]),
        ),
        say(ALICE, "before"),
        subject(ALICE, "Topic"),
    ];
    let n = inputs.len() as u64;
    for (i, input) in inputs.into_iter().enumerate() {
        master.handle(input, t(i as i64));
    }
    assert_eq!(master.config().split_policy, policy);
    Replica::new(master.snapshot(), n, n, LOCAL)
}

fn split(policy: SplitPolicy) -> Split {
    Split::begin(&replica(policy), t(100)).0
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

/// Every recipient of every send, once each, sorted.
fn recipients(actions: &[Action]) -> Vec<String> {
    let mut all: Vec<String> = actions
        .iter()
        .flat_map(|a| match a {
            Action::Send { to, .. } => to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            other => panic!("only sends leave a split, got {other:?}"),
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The only stanza of `actions`, which must be an error to `to`:
/// its kind, condition, type and text.
fn error_to(actions: &[Action], to: &str) -> (StanzaKind, Condition, ErrorType, &'static str) {
    match actions {
        [
            Action::Send {
                to: list,
                stanza:
                    Outgoing::Error {
                        kind,
                        condition,
                        error_type,
                        text: Some(text),
                        ..
                    },
            },
        ] if list == &[jid(to)] => (*kind, *condition, *error_type, *text),
        other => panic!("expected one error to {to}, got {other:?}"),
    }
}

fn groupchat(o: &Outgoing) -> &RoomMessage {
    match o {
        Outgoing::Groupchat(m) | Outgoing::History(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn notice(o: &Outgoing) -> &str {
    match o {
        Outgoing::Notice { text } => text,
        other => panic!("expected a notice, got {other:?}"),
    }
}

#[test]
fn begin_and_end_notify_the_local_occupants() {
    let replica = replica(SplitPolicy::LocalChat);
    let (split, actions) = Split::begin(&replica, t(100));
    assert_eq!(
        actions,
        [Action::Send {
            to: vec![jid(BOB), jid(CAROL)],
            stanza: Outgoing::Notice {
                text: "This room is split from its master: until it is whole again, only \
                       occupants on b.test can be reached, and nobody can join, change nick \
                       or moderate"
                    .into()
            },
        }]
    );
    // The replica is untouched: it resumes after the heal.
    assert_eq!(replica.seq(), split.start().seq);
    assert_eq!(replica.snapshot(), split.start().snapshot);
    assert_eq!(split.policy(), SplitPolicy::LocalChat);

    let healed = split.end();
    assert_eq!(
        healed.actions,
        [Action::Send {
            to: vec![jid(BOB), jid(CAROL)],
            stanza: Outgoing::Notice {
                text: "This room is whole again".into()
            },
        }]
    );
    assert!(healed.submissions.is_empty());
    assert_eq!(healed.since, replica.seq());
    // Bob and carol rejoin the master as they are, in case it lost them.
    let present: Vec<(String, &str)> = healed
        .present
        .iter()
        .map(|e| match &e.input {
            Input::Presence {
                from,
                nick,
                join: Some(_),
                ..
            } => (from.to_string(), nick.as_str()),
            other => panic!("not a rejoin: {other:?}"),
        })
        .collect();
    assert_eq!(
        present,
        [(BOB.to_owned(), "bob"), (CAROL.to_owned(), "carol")]
    );
}

#[test]
fn off_refuses_with_errors_and_still_lets_users_leave() {
    let (mut split, begun) = Split::begin(&replica(SplitPolicy::Off), t(100));
    assert!(notice(sent_to(&begun, BOB)[0]).contains("unavailable until it is whole again"));
    let off = |actions: &[Action], to: &str, kind: StanzaKind| {
        assert_eq!(
            error_to(actions, to),
            (
                kind,
                Condition::RemoteServerTimeout,
                ErrorType::Wait,
                "This room is split from its master and unavailable until it is whole again"
            )
        );
    };
    // Every stanza that expects an answer gets one: an error.
    off(
        &split.handle(say(BOB, "hi"), t(101)),
        BOB,
        StanzaKind::Message,
    );
    off(
        &split.handle(pm(BOB, "carol"), t(102)),
        BOB,
        StanzaKind::Message,
    );
    off(
        &split.handle(status(BOB, "bob"), t(103)),
        BOB,
        StanzaKind::Presence,
    );
    off(
        &split.handle(join(ERIN, "erin"), t(104)),
        ERIN,
        StanzaKind::Presence,
    );
    off(
        &split.handle(iq(CAROL, None, IqRequest::DiscoInfo), t(105)),
        CAROL,
        StanzaKind::Iq,
    );
    off(
        &split.handle(iq(BOB, Some("carol"), IqRequest::Ping), t(106)),
        BOB,
        StanzaKind::Iq,
    );
    // The error names the sender's own stanza.
    let Action::Send {
        stanza: Outgoing::Error { id, from, .. },
        ..
    } = &split.handle(say(BOB, "x"), t(107))[0]
    else {
        panic!("an error")
    };
    assert_eq!((id.as_deref(), from), (Some("m-x"), &None));

    // Self-pings are answered, so clients stay in the room.
    let pong = split.handle(iq(BOB, Some("bob"), IqRequest::Ping), t(108));
    assert!(matches!(
        &pong[..],
        [Action::Send { to, stanza: Outgoing::IqResult { body: IqResponse::Empty, .. } }] if to == &[jid(BOB)]
    ));
    // Leaving works, and only local users hear of it.
    let gone = split.handle(leave(CAROL), t(109));
    assert_eq!(recipients(&gone), [BOB, CAROL]);
    assert!(
        matches!(sent_to(&gone, CAROL)[0], Outgoing::Presence(p) if !p.available && p.statuses == [110])
    );

    assert_eq!(split.log().len(), 1, "only the leave changed the room");
    assert_eq!(split.end().submissions[0].input, leave(CAROL));
}

#[test]
fn local_chat_delivers_messages_and_private_messages_among_locals() {
    let mut split = split(SplitPolicy::LocalChat);
    let said = split.handle(say(BOB, "hello"), t(101));
    assert_eq!(recipients(&said), [BOB, CAROL], "only local users");
    let m = groupchat(sent_to(&said, CAROL)[0]);
    assert_eq!(m.nick, nick("bob"));
    assert_eq!(m.id.as_deref(), Some("m-hello"));
    assert_eq!(m.at, t(101));
    assert!(m.stanza_id.is_provisional());

    let private = split.handle(pm(CAROL, "bob"), t(102));
    assert!(matches!(
        &private[..],
        [Action::Send { to, stanza: Outgoing::Private { from, .. } }] if to == &[jid(BOB)] && *from == nick("carol")
    ));

    let away = split.handle(status(CAROL, "carol"), t(103));
    assert_eq!(recipients(&away), [BOB, CAROL]);
    assert!(
        sent_to(&away, BOB)
            .iter()
            .all(|o| matches!(o, Outgoing::Presence(p) if p.nick == nick("carol")))
    );

    // Relayed IQs between local occupants still work.
    let relayed = split.handle(
        iq(
            BOB,
            Some("carol"),
            IqRequest::Relay {
                set: false,
                payload: Payload::default(),
            },
        ),
        t(104),
    );
    assert!(
        matches!(&relayed[..], [Action::Send { to, stanza: Outgoing::Iq { .. } }] if to == &[jid(CAROL)])
    );
}

#[test]
fn local_chat_refuses_joins_nick_changes_and_moderation() {
    let mut split = split(SplitPolicy::LocalChat);
    let before = split.room().snapshot();
    let refused = |split: &mut Split, input: Input, to: &str, kind: StanzaKind, text: &str| {
        let actions = split.handle(input, t(101));
        assert_eq!(
            error_to(&actions, to),
            (kind, Condition::NotAllowed, ErrorType::Wait, text),
        );
    };
    let no =
        |what: &str| format!("This room is split from its master: {what} until it is whole again");
    refused(
        &mut split,
        join(ERIN, "erin"),
        ERIN,
        StanzaKind::Presence,
        &no("nobody can join"),
    );
    // A second session of a local occupant is a join too.
    refused(
        &mut split,
        join("bob@b.test/phone", "bob"),
        "bob@b.test/phone",
        StanzaKind::Presence,
        &no("nobody can join"),
    );
    refused(
        &mut split,
        status(BOB, "robert"),
        BOB,
        StanzaKind::Presence,
        &no("nicks cannot change"),
    );
    refused(
        &mut split,
        subject(BOB, "Mine now"),
        BOB,
        StanzaKind::Message,
        &no("the subject cannot change"),
    );
    let moderation = no("roles, affiliations and the configuration cannot change");
    // bob is an admin, yet may not kick, ban, grant or configure.
    for request in [
        IqRequest::AdminSet(vec![AdminItem::Role {
            nick: nick("carol"),
            role: Role::None,
            reason: None,
        }]),
        IqRequest::AdminSet(vec![AdminItem::Role {
            nick: nick("carol"),
            role: Role::Moderator,
            reason: None,
        }]),
        IqRequest::AdminSet(vec![AdminItem::Affiliation {
            jid: "dave@c.test".parse().unwrap(),
            affiliation: Affiliation::Outcast,
            reason: None,
        }]),
        IqRequest::AdminSet(vec![AdminItem::Affiliation {
            jid: "bob@b.test".parse().unwrap(),
            affiliation: Affiliation::Owner,
            reason: None,
        }]),
        IqRequest::ConfigSet(Some(Submission::default())),
        IqRequest::ConfigSet(None),
        IqRequest::Destroy {
            reason: None,
            alternate: None,
        },
    ] {
        refused(
            &mut split,
            iq(BOB, None, request),
            BOB,
            StanzaKind::Iq,
            &moderation,
        );
    }
    assert_eq!(split.room().snapshot(), before, "nothing changed");
    assert!(split.log().is_empty());

    // Reading is fine: the room answers from its split-era state.
    let list = split.handle(
        iq(
            BOB,
            None,
            IqRequest::AdminList(dmuc_room::event::AdminFilter::Role(Role::Participant)),
        ),
        t(102),
    );
    assert!(
        matches!(sent_to(&list, BOB)[0], Outgoing::IqResult { body: IqResponse::AdminList(items), .. } if items.len() == 2)
    );
}

#[test]
fn messages_to_occupants_of_other_domains_get_errors() {
    for policy in [SplitPolicy::LocalChat, SplitPolicy::Open] {
        let mut split = split(policy);
        let unreachable = (
            Condition::RemoteServerTimeout,
            ErrorType::Wait,
            "This room is split from its master: that occupant is out of reach until it is \
             whole again",
        );
        let (kind, c, e, text) = error_to(&split.handle(pm(BOB, "alice"), t(101)), BOB);
        assert_eq!((kind, (c, e, text)), (StanzaKind::Message, unreachable));
        let (kind, c, e, text) = error_to(
            &split.handle(iq(CAROL, Some("dave"), IqRequest::Ping), t(102)),
            CAROL,
        );
        assert_eq!((kind, (c, e, text)), (StanzaKind::Iq, unreachable));
        let relay = IqRequest::Relay {
            set: true,
            payload: Payload::default(),
        };
        let (kind, c, ..) = error_to(&split.handle(iq(BOB, Some("alice"), relay), t(103)), BOB);
        assert_eq!((kind, c), (StanzaKind::Iq, Condition::RemoteServerTimeout));
        // A nick nobody has is the room's usual answer.
        let (_, c, ..) = error_to(&split.handle(pm(BOB, "nobody"), t(104)), BOB);
        assert_eq!(c, Condition::ItemNotFound);
    }
}

#[test]
fn self_pings_are_answered_under_every_policy() {
    for policy in SplitPolicy::ALL {
        let mut split = split(policy);
        let pong = split.handle(iq(CAROL, Some("carol"), IqRequest::Ping), t(101));
        assert_eq!(
            pong,
            [Action::Send {
                to: vec![jid(CAROL)],
                stanza: Outgoing::IqResult {
                    from: Some(nick("carol")),
                    id: "i".into(),
                    body: IqResponse::Empty,
                },
            }],
            "{policy:?}"
        );
        // A non-occupant's self-ping says it is not joined.
        let stranger = split.handle(iq(ERIN, Some("erin"), IqRequest::Ping), t(102));
        assert_eq!(recipients(&stranger), [ERIN]);
        assert!(matches!(
            sent_to(&stranger, ERIN)[0],
            Outgoing::Error { .. }
        ));
    }
}

#[test]
fn open_admits_a_local_joiner_with_the_whole_room() {
    let mut split = split(SplitPolicy::Open);
    let said = split.handle(say(BOB, "during"), t(101));
    let during = groupchat(sent_to(&said, BOB)[0]).clone();

    let joined = split.handle(join(ERIN, "erin"), t(102));
    assert_eq!(recipients(&joined), [BOB, CAROL, ERIN]);
    let to_erin = sent_to(&joined, ERIN);
    // Roster as of the split plus the locals, then erin herself (110)...
    let roster: Vec<(&str, Vec<u16>)> = to_erin[..5]
        .iter()
        .map(|o| match o {
            Outgoing::Presence(p) => (p.nick.as_str(), p.statuses.clone()),
            other => panic!("expected the roster, got {other:?}"),
        })
        .collect();
    assert_eq!(
        roster,
        [
            ("alice", vec![]),
            ("bob", vec![]),
            ("carol", vec![]),
            ("dave", vec![]),
            ("erin", vec![110]),
        ]
    );
    // ...the history, the split-era message included, with its provisional id...
    let history: Vec<&RoomMessage> = to_erin[5..7].iter().map(|o| groupchat(o)).collect();
    assert!(matches!(to_erin[5], Outgoing::History(_)));
    assert_eq!(history[0].nick, nick("alice"));
    assert!(!history[0].stanza_id.is_provisional());
    assert_eq!(*history[1], during);
    // ...the subject, and why the room looks as it does.
    assert!(
        matches!(to_erin[7], Outgoing::Subject { subject: Some(s), delayed: true } if s.text == "Topic")
    );
    assert!(notice(to_erin[8]).contains("only users of b.test can join"));
    assert_eq!(to_erin.len(), 9);
    assert!(matches!(sent_to(&joined, BOB)[..], [Outgoing::Presence(p)] if p.nick == nick("erin")));

    // Only local users may join, and nicks stay unique.
    assert!(
        split
            .handle(join("fred@c.test/f", "fred"), t(103))
            .is_empty()
    );
    let (_, c, ..) = error_to(
        &split.handle(join("gina@b.test/g", "dave"), t(104)),
        "gina@b.test/g",
    );
    assert_eq!(c, Condition::Conflict);
    // Open still refuses nick changes.
    let (_, c, ..) = error_to(&split.handle(status(ERIN, "erin2"), t(105)), ERIN);
    assert_eq!(c, Condition::NotAllowed);

    let submissions = split.end().submissions;
    assert_eq!(
        submissions.iter().map(|e| &e.input).collect::<Vec<_>>(),
        [&say(BOB, "during"), &join(ERIN, "erin")],
        "the refused join is not submitted"
    );
}

/// If the room ends during the split (its last occupant left a temporary
/// room), nobody may join it: the joiner would create it anew and own it.
#[test]
fn a_room_that_ended_during_the_split_admits_nobody() {
    let mut master = Room::new("r@muc.a.test".parse().unwrap(), relaxed_settings());
    master.handle(join(BOB, "bob"), t(0));
    master.handle(
        configure(BOB, &[("dmuc#roomconfig_splitpolicy", "open")]),
        t(1),
    );
    let replica = Replica::new(master.snapshot(), 2, 2, LOCAL);
    let (mut split, _) = Split::begin(&replica, t(100));
    let gone = split.handle(leave(BOB), t(101));
    assert_eq!(recipients(&gone), [BOB], "and no Close leaves the split");
    assert!(!split.room().exists());
    let (_, c, ..) = error_to(&split.handle(join(ERIN, "erin"), t(102)), ERIN);
    assert_eq!(c, Condition::NotAllowed);
}

#[test]
fn inputs_from_other_domains_are_ignored() {
    let mut split = split(SplitPolicy::Open);
    for input in [
        say(ALICE, "x"),
        join("fred@c.test/f", "fred"),
        leave(DAVE),
        pm(DAVE, "bob"),
        Input::Shutdown,
    ] {
        assert_eq!(split.handle(input, t(101)), []);
    }
    assert!(split.log().is_empty());
    assert_eq!(split.room().occupant_count(), 4);
}

#[test]
fn provisional_ids_never_collide_with_the_masters_and_survive_a_restore() {
    let mut split = split(SplitPolicy::LocalChat);
    let ids: Vec<StanzaId> = [(BOB, "one", 101), (CAROL, "two", 102)]
        .into_iter()
        .map(|(from, body, ms)| {
            let actions = split.handle(say(from, body), t(ms));
            groupchat(sent_to(&actions, BOB)[0]).stanza_id.clone()
        })
        .collect();
    // The master numbered message 1 ("before"); the split goes on from 2,
    // in its own namespace.
    let began = t(100).0;
    assert_eq!(ids[0].as_str(), format!("split:b.test:{began:x}:2"));
    assert_eq!(ids[1].as_str(), format!("split:b.test:{began:x}:3"));
    assert_ne!(ids[0], StanzaId::assign(1, dmuc_room::Seq(2)));
    assert!(ids.iter().all(StanzaId::is_provisional));
    assert_eq!(
        split
            .log()
            .iter()
            .filter_map(|e| e.local_id.clone())
            .collect::<Vec<_>>(),
        ids
    );

    // A crash: the peerhost restores from what it stored.
    let mut restored = Split::restore(split.start().clone(), split.log().to_vec());
    assert_eq!(restored.log(), split.log());
    assert_eq!(restored.room().snapshot(), split.room().snapshot());
    assert_eq!(restored.policy(), split.policy());
    // And both go on alike.
    let next = split.handle(say(BOB, "three"), t(103));
    assert_eq!(restored.handle(say(BOB, "three"), t(103)), next);
    assert_eq!(
        groupchat(sent_to(&next, BOB)[0]).stanza_id.as_str(),
        format!("split:b.test:{began:x}:4")
    );

    // Another split of the same room later numbers differently.
    let (mut later, _) = Split::begin(&replica(SplitPolicy::LocalChat), t(5000));
    let again = later.handle(say(BOB, "one"), t(5001));
    assert_ne!(groupchat(sent_to(&again, BOB)[0]).stanza_id, ids[0]);
}

#[test]
fn the_log_keeps_local_order_and_the_heal_submits_what_took_effect() {
    let mut split = split(SplitPolicy::LocalChat);
    split.handle(say(BOB, "one"), t(101));
    split.handle(pm(CAROL, "bob"), t(102));
    split.handle(join(ERIN, "erin"), t(103)); // refused
    split.handle(status(BOB, "bob"), t(104));
    split.handle(iq(BOB, None, IqRequest::DiscoInfo), t(105));
    split.handle(say(CAROL, "two"), t(106));
    split.handle(leave(CAROL), t(107));
    split.handle(say(CAROL, "gone"), t(108)); // not an occupant any more
    split.handle(leave("frank@b.test/f"), t(109)); // never joined

    let logged: Vec<(Timestamp, &Input)> = split.log().iter().map(|e| (e.now, &e.input)).collect();
    assert_eq!(
        logged,
        [
            (t(101), &say(BOB, "one")),
            (t(102), &pm(CAROL, "bob")),
            (t(104), &status(BOB, "bob")),
            (t(106), &say(CAROL, "two")),
            (t(107), &leave(CAROL)),
            (t(108), &say(CAROL, "gone")),
            (t(109), &leave("frank@b.test/f")),
        ]
    );
    let log = split.log().to_vec();
    let healed = split.end();
    assert_eq!(
        recipients(&healed.actions),
        [BOB],
        "the notice goes to who is still there"
    );
    let expected: Vec<SplitEvent> = [0, 2, 3, 4].into_iter().map(|i| log[i].clone()).collect();
    assert_eq!(healed.submissions, expected);
    assert!(healed.submissions[0].local_id.is_some());
    assert!(healed.submissions[1].local_id.is_none());
    assert_eq!(healed.submissions[2].now, t(106));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A master room runs random inputs; a b.test slave then splits off
    /// under a random policy and gets more random inputs (from every
    /// domain, as a misbehaving runtime might feed it). Whatever happens,
    /// nothing panics, only b.test users are sent anything, split-era
    /// messages have provisional ids, and restoring from the log gives
    /// the same room.
    #[test]
    fn a_split_only_ever_reaches_its_own_domain(
        before in testing::inputs(0..40),
        during in testing::inputs(1..40),
        policy in testing::split_policy(),
    ) {
        let mut master = testing::room();
        let mut now = 1_000_000i64;
        for (input, step) in before {
            now += step;
            master.handle(input, Timestamp(now));
        }
        let mut snapshot = master.snapshot();
        snapshot.config.split_policy = policy;
        let replica = Replica::new(snapshot, 7, 7, LOCAL);
        let (mut split, begun) = Split::begin(&replica, Timestamp(now));
        let mut all = begun;
        for (input, step) in during {
            now += step;
            let local = input.sender().is_some_and(|f| f.domain().as_str() == LOCAL);
            let actions = split.handle(input, Timestamp(now));
            if !local {
                prop_assert!(actions.is_empty());
            }
            all.extend(actions);
        }
        let restored = Split::restore(split.start().clone(), split.log().to_vec());
        prop_assert_eq!(restored.room().snapshot(), split.room().snapshot());
        prop_assert_eq!(restored.log(), split.log());
        let only_local = split
            .log()
            .iter()
            .all(|e| e.input.sender().is_some_and(|f| f.domain().as_str() == LOCAL));
        prop_assert!(only_local);
        let healed = split.end();
        all.extend(healed.actions);
        for action in &all {
            let Action::Send { to, stanza } = action else {
                return Err(TestCaseError::fail(format!("not a send: {action:?}")));
            };
            prop_assert!(!to.is_empty());
            prop_assert!(to.iter().all(|j| j.domain().as_str() == LOCAL), "{:?}", to);
            if let Outgoing::Groupchat(m) = stanza {
                prop_assert!(m.stanza_id.is_provisional());
            }
        }
    }
}
