//! A replica made from a snapshot at any point behaves exactly like the
//! room it was taken from: the property slaves rely on to render a room's
//! stanzas for their own users from the master's inputs alone.

use std::sync::Arc;

use dmuc_room::event::{AdminItem, IqRequest, JoinRequest, MessageKind};
use dmuc_room::form::Submission;
use dmuc_room::{
    Affiliation, ConfigBounds, Input, Nick, Payload, RateLimit, Role, Room, RoomConfig,
    RoomSettings, Timestamp,
};
use proptest::prelude::*;

const USERS: [&str; 4] = [
    "alice@a.test/pc",
    "bob@b.test/x",
    "carol@b.test/y",
    "dave@c.test/z",
];
const NICKS: [&str; 3] = ["one", "two", "three"];

fn settings() -> RoomSettings {
    RoomSettings {
        epoch: 3,
        salt: Arc::from(&b"salt"[..]),
        bounds: ConfigBounds {
            max_users: 3,
            max_history: 5,
        },
        lock_new_rooms: false,
        default_config: RoomConfig {
            history_length: 3,
            ..RoomConfig::default()
        },
        rate_limit: Some(RateLimit {
            burst: 2,
            per_second: 1,
        }),
    }
}

fn input_strategy() -> impl Strategy<Value = Input> {
    let user = (0..USERS.len()).prop_map(|i| USERS[i].parse().unwrap());
    let nick = (0..NICKS.len()).prop_map(|i| Nick::new(NICKS[i]).unwrap());
    let bare = (0..USERS.len()).prop_map(|i| USERS[i].split('/').next().unwrap().parse().unwrap());
    let flag = prop_oneof![Just("0"), Just("1")];
    prop_oneof![
        4 => (user.clone(), nick.clone()).prop_map(|(from, nick)| Input::Presence {
            from,
            nick,
            join: Some(JoinRequest::default()),
            payload: Payload::default(),
        }),
        1 => (user.clone(), nick.clone()).prop_map(|(from, nick)| Input::Presence {
            from,
            nick,
            join: None,
            payload: Payload::default(),
        }),
        1 => user.clone().prop_map(|from| Input::Leave { from, payload: Payload::default() }),
        1 => user.clone().prop_map(|from| Input::Bounced { from }),
        4 => (user.clone(), any::<bool>()).prop_map(|(from, subject)| Input::Groupchat {
            from,
            id: Some("m".into()),
            subject: subject.then(|| "s".to_owned()),
            has_body: !subject,
            payload: Payload::default(),
            size: 10,
        }),
        1 => (user.clone(), nick.clone()).prop_map(|(from, to)| Input::Private {
            from,
            to,
            id: None,
            kind: MessageKind::Chat,
            payload: Payload::default(),
        }),
        1 => (user.clone(), nick.clone(), 0..4usize).prop_map(|(from, nick, r)| Input::Iq {
            from,
            to: None,
            id: "i".into(),
            request: IqRequest::AdminSet(vec![AdminItem::Role {
                nick,
                role: Role::ALL[r],
                reason: None,
            }]),
        }),
        1 => (user.clone(), bare, 0..5usize).prop_map(|(from, jid, a)| Input::Iq {
            from,
            to: None,
            id: "i".into(),
            request: IqRequest::AdminSet(vec![AdminItem::Affiliation {
                jid,
                affiliation: Affiliation::ALL[a],
                reason: None,
            }]),
        }),
        2 => (user.clone(), flag.clone(), flag).prop_map(|(from, members, moderated)| Input::Iq {
            from,
            to: None,
            id: "c".into(),
            request: IqRequest::ConfigSet(Some(Submission {
                fields: vec![
                    ("muc#roomconfig_membersonly".into(), vec![members.into()]),
                    ("muc#roomconfig_moderatedroom".into(), vec![moderated.into()]),
                ],
            })),
        }),
        1 => (user, nick).prop_map(|(from, to)| Input::Iq {
            from,
            to: Some(to),
            id: "p".into(),
            request: IqRequest::Ping,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_replica_from_a_snapshot_acts_like_its_master(
        inputs in proptest::collection::vec((input_strategy(), 0i64..600), 1..60),
        split in 0usize..60,
    ) {
        let mut master = Room::new("r@conference.a.test".parse().unwrap(), settings());
        let mut replica: Option<Room> = None;
        let mut now = 1_000_000i64;
        for (i, (input, step)) in inputs.into_iter().enumerate() {
            if replica.is_none() && i >= split {
                replica = Some(Room::from_snapshot(master.snapshot()));
            }
            now += step;
            let expected = master.handle(input.clone(), Timestamp(now));
            if let Some(r) = replica.as_mut() {
                prop_assert_eq!(r.handle(input, Timestamp(now)), expected);
            }
        }
    }
}

/// Flood-control state travels with the snapshot: a replica refuses what
/// its master refuses.
#[test]
fn a_replica_keeps_flood_control_state() {
    let mut master = Room::new("r@conference.a.test".parse().unwrap(), settings());
    let from: jid::FullJid = USERS[1].parse().unwrap();
    let t = |ms: i64| Timestamp(1_000_000 + ms);
    master.handle(
        Input::Presence {
            from: from.clone(),
            nick: Nick::new("two").unwrap(),
            join: Some(JoinRequest::default()),
            payload: Payload::default(),
        },
        t(0),
    );
    let say = || Input::Groupchat {
        from: from.clone(),
        id: None,
        subject: None,
        has_body: true,
        payload: Payload::default(),
        size: 1,
    };
    master.handle(say(), t(1));
    master.handle(say(), t(2));
    let mut replica = Room::from_snapshot(master.snapshot());
    let refused = master.handle(say(), t(100));
    assert!(
        matches!(
            &refused[..],
            [dmuc_room::Action::Send {
                stanza: dmuc_room::Outgoing::Error { .. },
                ..
            }]
        ),
        "{refused:?}"
    );
    assert_eq!(replica.handle(say(), t(100)), refused);
}
