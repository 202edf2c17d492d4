//! What crosses the wire is what was sent: domain → pb → bytes → pb →
//! domain gives back equal values, and — the property replication rests
//! on — a replica built from a decoded snapshot, fed decoded events, takes
//! exactly the decisions of the room it replicates.

use std::sync::Arc;

use dmuc_protocol::pb::{self, master_frame::Frame};
use dmuc_protocol::{RoomEvent, SlaveStart};
use dmuc_room::event::{AdminFilter, AdminItem, IqRequest, JoinRequest, MessageKind};
use dmuc_room::form::Submission;
use dmuc_room::testing;
use dmuc_room::{
    Affiliation, ConfigBounds, HistoryRequest, Input, Nick, Payload, RateLimit, Role, Room,
    RoomConfig, RoomSettings, RoomSnapshot, SplitPolicy, Timestamp,
};
use jid::FullJid;
use proptest::prelude::*;
use prost::Message;

/// Through protobuf bytes and back, as the peer sees it.
fn over_the_wire<P: Message + Default>(message: P) -> P {
    P::decode(message.encode_to_vec().as_slice()).expect("decodes what was encoded")
}

fn input_round_trip(input: &Input) -> Input {
    Input::try_from(over_the_wire(pb::Input::from(input))).expect("valid input")
}

fn snapshot_round_trip(snapshot: &RoomSnapshot) -> RoomSnapshot {
    RoomSnapshot::try_from(over_the_wire(pb::RoomSnapshot::from(snapshot))).expect("valid snapshot")
}

fn jid(s: &str) -> FullJid {
    s.parse().unwrap()
}

fn nick(s: &str) -> Nick {
    Nick::new(s).unwrap()
}

fn xml(children: &[&str]) -> Payload {
    Payload::new(children.iter().map(|c| c.parse().unwrap()).collect())
}

/// One of every variant, with every optional field set somewhere.
fn every_variant() -> Vec<Input> {
    let from = || jid("alice@a.test/pc");
    let iq = |to: Option<Nick>, request| Input::Iq {
        from: from(),
        to,
        id: "iq1".into(),
        request,
    };
    let mut inputs = vec![
        Input::Presence {
            from: from(),
            nick: nick("Alice"),
            join: Some(JoinRequest {
                password: Some("sécret".into()),
                history: HistoryRequest {
                    max_chars: Some(1000),
                    max_stanzas: Some(0),
                    seconds: Some(3600),
                    since: Some(Timestamp(-5)),
                },
            }),
            payload: xml(&[
                "<show xmlns='jabber:client'>away</show>",
                "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v='/>",
            ]),
        },
        Input::Presence {
            from: from(),
            nick: nick("Ålice Ünï"),
            join: Some(JoinRequest::default()),
            payload: Payload::default(),
        },
        Input::Presence {
            from: from(),
            nick: nick("Alice"),
            join: None,
            payload: xml(&["<status xmlns='jabber:client'>brb</status>"]),
        },
        Input::Leave {
            from: from(),
            payload: xml(&["<status xmlns='jabber:client'>bye</status>"]),
        },
        Input::Bounced {
            from: jid("bob@b.test/gone"),
        },
        Input::Groupchat {
            from: from(),
            id: Some("m1".into()),
            subject: Some(String::new()),
            has_body: false,
            payload: Payload::default(),
            size: 42,
        },
        Input::Groupchat {
            from: from(),
            id: None,
            subject: None,
            has_body: true,
            payload: xml(&[
                "<body xmlns='jabber:client'>&lt;hi&gt; &amp; ünï</body>",
                "<x:y xmlns:x='urn:x' xmlns='urn:d' x:a='1'><z/></x:y>",
            ]),
            size: usize::MAX >> 12,
        },
    ];
    for kind in [
        MessageKind::Chat,
        MessageKind::Normal,
        MessageKind::Groupchat,
        MessageKind::Headline,
    ] {
        inputs.push(Input::Private {
            from: from(),
            to: nick("bob"),
            id: Some("p".into()),
            kind,
            payload: xml(&["<body xmlns='jabber:client'>psst</body>"]),
        });
    }
    inputs.extend([
        iq(None, IqRequest::DiscoInfo),
        iq(Some(nick("bob")), IqRequest::DiscoItems),
        iq(Some(nick("bob")), IqRequest::Ping),
        iq(None, IqRequest::AdminList(AdminFilter::Role(Role::Visitor))),
        iq(
            None,
            IqRequest::AdminList(AdminFilter::Affiliation(Affiliation::Outcast)),
        ),
        iq(
            None,
            IqRequest::AdminSet(vec![
                AdminItem::Role {
                    nick: nick("bob"),
                    role: Role::None,
                    reason: Some("flood".into()),
                },
                AdminItem::Affiliation {
                    jid: "dave@c.test".parse().unwrap(),
                    affiliation: Affiliation::Member,
                    reason: None,
                },
            ]),
        ),
        iq(None, IqRequest::AdminSet(Vec::new())),
        iq(None, IqRequest::ConfigGet),
        iq(None, IqRequest::ConfigSet(None)),
        iq(
            None,
            IqRequest::ConfigSet(Some(Submission {
                fields: vec![
                    ("FORM_TYPE".into(), vec!["x".into()]),
                    ("empty".into(), vec![]),
                    ("multi".into(), vec!["a".into(), String::new()]),
                ],
            })),
        ),
        iq(
            None,
            IqRequest::Destroy {
                reason: Some("done".into()),
                alternate: Some("next@conference.a.test".parse().unwrap()),
            },
        ),
        iq(
            None,
            IqRequest::Destroy {
                reason: None,
                alternate: None,
            },
        ),
        iq(None, IqRequest::Unsupported),
        Input::Shutdown,
    ]);
    inputs
}

#[test]
fn every_input_variant_round_trips() {
    for input in every_variant() {
        assert_eq!(input_round_trip(&input), input);
    }
}

/// A busy room: several occupants (one with two sessions), affiliations,
/// a password, a subject, history with payloads, spent flood tokens.
fn busy_room() -> Room {
    let settings = RoomSettings {
        epoch: 7,
        salt: Arc::from(&[0u8, 255, 1, 2][..]),
        bounds: ConfigBounds {
            max_users: 50,
            max_history: 10,
        },
        lock_new_rooms: true,
        default_config: RoomConfig {
            name: "default".into(),
            ..RoomConfig::default()
        },
        rate_limit: Some(RateLimit {
            burst: 3,
            per_second: 2,
        }),
    };
    let mut room = Room::new("lounge@conference.a.test".parse().unwrap(), settings);
    let mut now = 1_700_000_000_000i64;
    let mut step = |room: &mut Room, input: Input| {
        now += 250;
        room.handle(input, Timestamp(now))
    };
    let join = |from: &str, nick_: &str| Input::Presence {
        from: jid(from),
        nick: nick(nick_),
        join: Some(JoinRequest {
            password: Some("pw".into()),
            history: HistoryRequest::default(),
        }),
        payload: xml(&["<show xmlns='jabber:client'>chat</show>"]),
    };
    let owner = jid("alice@a.test/pc");
    step(&mut room, join("alice@a.test/pc", "alice"));
    step(
        &mut room,
        Input::Iq {
            from: owner.clone(),
            to: None,
            id: "cfg".into(),
            request: IqRequest::ConfigSet(Some(Submission {
                fields: vec![
                    ("muc#roomconfig_roomname".into(), vec!["Lounge".into()]),
                    ("muc#roomconfig_persistentroom".into(), vec!["1".into()]),
                    (
                        "muc#roomconfig_passwordprotectedroom".into(),
                        vec!["1".into()],
                    ),
                    ("muc#roomconfig_roomsecret".into(), vec!["pw".into()]),
                    ("muc#roomconfig_whois".into(), vec!["anyone".into()]),
                    ("muc#roomconfig_allowpm".into(), vec!["participants".into()]),
                    ("muc#roomconfig_historylength".into(), vec!["5".into()]),
                    ("dmuc#roomconfig_splitpolicy".into(), vec!["open".into()]),
                    (
                        "muc#roomconfig_presencebroadcast".into(),
                        vec!["moderator".into(), "participant".into()],
                    ),
                ],
            })),
        },
    );
    step(&mut room, join("bob@b.test/x", "bob"));
    step(&mut room, join("carol@b.test/y", "carol"));
    step(&mut room, join("alice@a.test/phone", "alice"));
    step(
        &mut room,
        Input::Iq {
            from: owner.clone(),
            to: None,
            id: "aff".into(),
            request: IqRequest::AdminSet(vec![
                AdminItem::Affiliation {
                    jid: "bob@b.test".parse().unwrap(),
                    affiliation: Affiliation::Admin,
                    reason: None,
                },
                AdminItem::Affiliation {
                    jid: "eve@e.test".parse().unwrap(),
                    affiliation: Affiliation::Outcast,
                    reason: Some("spam".into()),
                },
                AdminItem::Affiliation {
                    jid: "dave@c.test".parse().unwrap(),
                    affiliation: Affiliation::Member,
                    reason: None,
                },
            ]),
        },
    );
    step(
        &mut room,
        Input::Groupchat {
            from: owner.clone(),
            id: Some("s".into()),
            subject: Some("Welcome & enjoy".into()),
            has_body: false,
            payload: xml(&["<subject xmlns='jabber:client'>Welcome &amp; enjoy</subject>"]),
            size: 60,
        },
    );
    for (i, from) in [
        "bob@b.test/x",
        "carol@b.test/y",
        "bob@b.test/x",
        "alice@a.test/phone",
    ]
    .into_iter()
    .cycle()
    .take(9)
    .enumerate()
    {
        step(
            &mut room,
            Input::Groupchat {
                from: jid(from),
                id: (i % 2 == 0).then(|| format!("m{i}")),
                subject: None,
                has_body: true,
                payload: xml(&[
                    &format!("<body xmlns='jabber:client'>message {i} &lt;3</body>"),
                    "<active xmlns='http://jabber.org/protocol/chatstates'/>",
                ]),
                size: 80 + i,
            },
        );
    }
    room
}

#[test]
fn a_busy_rooms_snapshot_round_trips() {
    let snapshot = busy_room().snapshot();
    // The room is as busy as intended, or this test proves little.
    assert_eq!(snapshot.occupants.len(), 3, "{:?}", snapshot.occupants);
    assert!(snapshot.occupants.iter().any(|o| o.sessions.len() == 2));
    assert!(
        snapshot
            .occupants
            .iter()
            .any(|o| o.tokens < 3.0 && !o.presence.elements().is_empty())
    );
    assert_eq!(snapshot.affiliations.len(), 4);
    assert_eq!(snapshot.history.len(), 5);
    assert!(snapshot.subject.is_some());
    assert!(snapshot.config.password.is_some());
    assert_eq!(snapshot.config.split_policy, SplitPolicy::Open);
    assert!(snapshot.created && !snapshot.locked);

    let back = snapshot_round_trip(&snapshot);
    assert_eq!(back, snapshot);
    // And the encoding is stable: encoding what was decoded gives the same bytes.
    assert_eq!(
        pb::RoomSnapshot::from(&back).encode_to_vec(),
        pb::RoomSnapshot::from(&snapshot).encode_to_vec()
    );
}

#[test]
fn a_fresh_and_a_locked_room_round_trip() {
    let mut room = Room::new(
        testing::room_jid(),
        RoomSettings {
            lock_new_rooms: true,
            rate_limit: None,
            ..testing::settings()
        },
    );
    let snapshot = room.snapshot();
    assert_eq!(snapshot_round_trip(&snapshot), snapshot);
    room.handle(
        Input::Presence {
            from: jid("alice@a.test/pc"),
            nick: nick("alice"),
            join: Some(JoinRequest::default()),
            payload: Payload::default(),
        },
        Timestamp(1),
    );
    let snapshot = room.snapshot();
    assert!(snapshot.locked);
    assert_eq!(snapshot_round_trip(&snapshot), snapshot);
}

/// Events in `EventBatch` frames of up to `batch` events, through bytes.
fn through_batches(events: &[RoomEvent], batch: usize) -> Vec<RoomEvent> {
    events
        .chunks(batch.max(1))
        .flat_map(|chunk| {
            let frame = over_the_wire(pb::MasterFrame {
                frame: Some(Frame::Events(pb::EventBatch {
                    events: chunk.iter().map(pb::Event::from).collect(),
                })),
            });
            let Some(Frame::Events(batch)) = frame.frame else {
                panic!("an event batch")
            };
            batch
                .events
                .into_iter()
                .map(|e| RoomEvent::try_from(e).expect("valid event"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn create_frame(start: &SlaveStart) -> SlaveStart {
    let frame = over_the_wire(pb::MasterFrame {
        frame: Some(Frame::Create(pb::CreateSlave::from(start))),
    });
    let Some(Frame::Create(create)) = frame.frame else {
        panic!("a create frame")
    };
    SlaveStart::try_from(create).expect("valid create")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_input_round_trips(input in testing::input()) {
        prop_assert_eq!(input_round_trip(&input), input);
    }

    /// The master's room runs; at `split` it starts a slave through a
    /// `CreateSlave` frame; every later input reaches the slave as an
    /// `Event` in a batch, through bytes. The slave's replica must emit the
    /// master's actions, one for one.
    #[test]
    fn a_replica_over_the_wire_acts_like_its_master(
        inputs in testing::inputs(1..60),
        split in 0usize..30,
        batch in 1usize..5,
    ) {
        let mut master = testing::room();
        let mut now = 1_000_000i64;
        let mut start = None;
        let mut events = Vec::new();
        let mut expected = Vec::new();
        for (i, (input, step)) in inputs.into_iter().enumerate() {
            let seq = i as u64 + 1;
            if i == split {
                start = Some(SlaveStart {
                    snapshot: master.snapshot(),
                    seq: seq - 1,
                    deliver_after: 0,
                });
            }
            now += step;
            let event = RoomEvent {
                room: testing::room_jid(),
                seq,
                now: Timestamp(now),
                input,
            };
            let actions = master.handle(event.input.clone(), event.now);
            if start.is_some() {
                events.push(event);
                expected.push(actions);
            }
        }
        let Some(start) = start else { return Ok(()) };
        let received = create_frame(&start);
        prop_assert_eq!(&received, &start);
        let mut replica = Room::from_snapshot(received.snapshot);
        let mut last = received.seq;
        let received = through_batches(&events, batch);
        prop_assert_eq!(received.len(), expected.len());
        for (event, expected) in received.into_iter().zip(expected) {
            prop_assert_eq!(event.seq, last + 1);
            last = event.seq;
            prop_assert_eq!(replica.handle(event.input, event.now), expected);
        }
    }
}
