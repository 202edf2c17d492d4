//! A replica made from a snapshot at any point behaves exactly like the
//! room it was taken from: the property slaves rely on to render a room's
//! stanzas for their own users from the master's inputs alone.

use dmuc_room::event::JoinRequest;
use dmuc_room::testing::{self, USERS};
use dmuc_room::{Input, Nick, Payload, Room, Timestamp};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_replica_from_a_snapshot_acts_like_its_master(
        inputs in testing::inputs(1..60),
        split in 0usize..60,
    ) {
        let mut master = testing::room();
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
    let mut master = testing::room();
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
