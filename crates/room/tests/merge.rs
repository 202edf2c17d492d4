//! Merging a healed split into the master's room, asserting on the actions
//! of the master and of two replicas: b.test's (the origin) and c.test's.
//! Nobody may see anything twice: the origin's users saw their split, so
//! the origin's replica delivers only renames and refusals, while everyone
//! else gets each merged input once, with the split's stanza ids.

use dmuc_room::event::{AdminItem, IqRequest, OccupantPresence};
use dmuc_room::merge::NOT_ADMITTED;
use dmuc_room::replica::{Applied, Replica, local_only};
use dmuc_room::testing::{join, relaxed_settings, room_jid, say};
use dmuc_room::{
    Action, Affiliation, Input, Merge, Nick, Outgoing, Payload, Persist, RoomConfig, RoomMessage,
    Seq, Split, SplitProgress, StanzaId, StoredRoom, Timestamp,
};
use dmuc_room::{Room, SplitPolicy};
use proptest::prelude::*;
use std::sync::Arc;

const ALICE: &str = "alice@a.test/pc";
const BOB: &str = "bob@b.test/x";
const CAROL: &str = "carol@b.test/y";
const DAVE: &str = "dave@c.test/z";
const ERIN: &str = "erin@b.test/e";

/// When the split began.
const BEGAN: Timestamp = Timestamp(1_700_000_000_000);

fn t(ms: i64) -> Timestamp {
    Timestamp(BEGAN.0 + ms)
}

fn local_id(seq: u64) -> StanzaId {
    StanzaId::provisional("b.test", BEGAN, Seq(seq))
}

/// Submission `index` of b.test's split, handled there at `t(index)`.
fn merge(index: u64, input: Input) -> Input {
    let local_id = matches!(input, Input::Groupchat { .. }).then(|| local_id(10 + index));
    Input::Merge(Box::new(Merge {
        domain: "b.test".into(),
        began: BEGAN,
        index,
        at: t(index as i64),
        local_id,
        input,
    }))
}

fn status(from: &str, nick: &str) -> Input {
    Input::Presence {
        from: from.parse().unwrap(),
        nick: Nick::new(nick).unwrap(),
        join: None,
        payload: Payload::new(vec![
            "<show xmlns='jabber:client'>away</show>".parse().unwrap(),
        ]),
    }
}

fn leave(from: &str) -> Input {
    Input::Leave {
        from: from.parse().unwrap(),
        payload: Payload::default(),
    }
}

fn merged(next_index: u64) -> Action {
    Action::Merged {
        domain: "b.test".into(),
        began: BEGAN,
        next_index,
    }
}

/// Each send as (recipient, stanza), in order.
fn sends(actions: &[Action]) -> Vec<(String, &Outgoing)> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Send { to, stanza } => to.iter().map(|j| (j.to_string(), stanza)).collect(),
            _ => vec![],
        })
        .collect()
}

fn recipients(actions: &[Action]) -> Vec<String> {
    let mut to: Vec<String> = sends(actions).into_iter().map(|(r, _)| r).collect();
    to.sort();
    to
}

fn presence(stanza: &Outgoing) -> &OccupantPresence {
    match stanza {
        Outgoing::Presence(p) => p,
        other => panic!("not a presence: {other:?}"),
    }
}

/// The master's room (alice of a.test owns it; bob of b.test, dave of
/// c.test are in) and the replicas of b.test and c.test.
struct World {
    master: Room,
    seq: u64,
    b: Replica,
    c: Replica,
}

/// What one event did on each side.
struct Fed {
    master: Vec<Action>,
    b: Vec<Action>,
    c: Vec<Action>,
}

impl World {
    fn new() -> World {
        World::on(
            Room::new(room_jid(), relaxed_settings()),
            &[ALICE, BOB, DAVE],
        )
    }

    /// `master` after joins of `who` (nick: the localpart).
    fn on(mut master: Room, who: &[&str]) -> World {
        for (i, w) in who.iter().enumerate() {
            let nick = w.split('@').next().unwrap();
            master.handle(join(w, nick), t(-100 + i as i64));
        }
        let seq = who.len() as u64;
        let b = Replica::new(master.snapshot(), seq, seq, "b.test");
        let c = Replica::new(master.snapshot(), seq, seq, "c.test");
        World { master, seq, b, c }
    }

    fn feed(&mut self, input: Input) -> Fed {
        self.seq += 1;
        let now = t(1000 + self.seq as i64);
        let master = self.master.handle(input.clone(), now);
        let deliver = |r: &mut Replica| match r.apply(self.seq, now, input.clone()) {
            Applied::Deliver(actions) => actions,
            other => panic!("{other:?}"),
        };
        let (b, c) = (deliver(&mut self.b), deliver(&mut self.c));
        // The replicas decide as the master does, each for its own users.
        for (replica, domain) in [(&b, "b.test"), (&c, "c.test")] {
            let mine = local_only(master.clone(), |j| j.domain().as_str() == domain);
            assert_eq!(*replica, mine, "{domain}");
        }
        Fed { master, b, c }
    }

    fn history(&self) -> Vec<Arc<RoomMessage>> {
        self.master.snapshot().history
    }
}

#[test]
fn messages_keep_their_ids_and_times_and_skip_the_origin() {
    let mut w = World::new();
    let first = w.feed(merge(0, say(BOB, "one")));
    assert_eq!(recipients(&first.master), [ALICE, DAVE]);
    let Outgoing::Merged(m) = sends(&first.master)[0].1 else {
        panic!("{:?}", first.master)
    };
    assert_eq!(m.stanza_id, local_id(10));
    assert_eq!(m.at, t(0));
    assert_eq!(m.nick.as_str(), "bob");
    assert_eq!(first.master.last(), Some(&merged(1)));
    // b.test saw it in its split; c.test gets it from its replica.
    assert!(first.b.is_empty());
    assert_eq!(recipients(&first.c), [DAVE]);

    w.feed(say(ALICE, "meanwhile"));
    w.feed(merge(1, say(BOB, "two")));
    let ids: Vec<String> = w
        .history()
        .iter()
        .map(|m| m.stanza_id.to_string())
        .collect();
    let master_id = StanzaId::assign(relaxed_settings().epoch, Seq(2));
    // History order is the master's order.
    assert_eq!(
        ids,
        [
            local_id(10).to_string(),
            master_id.to_string(),
            local_id(11).to_string()
        ]
    );
}

#[test]
fn a_message_without_a_local_id_gets_a_room_id() {
    let mut w = World::new();
    let Input::Merge(mut m) = merge(0, say(BOB, "one")) else {
        unreachable!()
    };
    m.local_id = None;
    w.feed(Input::Merge(m));
    assert_eq!(
        w.history()[0].stanza_id,
        StanzaId::assign(relaxed_settings().epoch, Seq(1))
    );
}

#[test]
fn resubmissions_change_nothing_and_gaps_are_refused() {
    let mut w = World::new();
    w.feed(merge(0, say(BOB, "one")));
    w.feed(merge(1, say(BOB, "two")));
    let before = w.master.snapshot();
    assert_eq!(w.feed(merge(0, say(BOB, "one"))).master, [merged(2)]);
    assert_eq!(w.feed(merge(1, say(BOB, "two"))).master, [merged(2)]);
    // Index 3 without 2: refused, the peerhost must resend from 2.
    assert_eq!(w.feed(merge(3, say(BOB, "four"))).master, [merged(2)]);
    assert_eq!(w.master.snapshot(), before);
    assert_eq!(
        before.merged,
        [SplitProgress {
            domain: "b.test".into(),
            began: BEGAN,
            next_index: 2
        }]
    );
}

#[test]
fn a_newer_split_starts_over_and_an_older_one_is_over() {
    let mut w = World::new();
    w.feed(merge(0, say(BOB, "one")));
    let newer = |index, input| {
        let Input::Merge(mut m) = merge(index, input) else {
            unreachable!()
        };
        m.began = t(50);
        m.local_id = None;
        Input::Merge(m)
    };
    // A new split starts at 0.
    let gap = w.feed(newer(1, say(BOB, "x"))).master;
    assert!(matches!(gap[..], [Action::Merged { next_index: 0, began, .. }] if began == t(50)));
    let first = w.feed(newer(0, say(BOB, "x"))).master;
    assert!(matches!(
        first.last(),
        Some(Action::Merged { next_index: 1, .. })
    ));
    // The old split's rest is dropped, and confirmed so that it is not resent.
    let old = w.feed(merge(1, say(BOB, "late"))).master;
    assert_eq!(old, [merged(2)]);
    assert_eq!(w.history().len(), 2);
}

#[test]
fn a_taken_nick_is_renamed_and_the_origin_sees_a_nick_change() {
    let mut w = World::new();
    // Carol joined the split as "alice", which alice of a.test holds.
    let fed = w.feed(merge(0, join(CAROL, "alice")));
    let renamed = Nick::new("alice (b.test)").unwrap();
    assert_eq!(w.master.nick_of(&CAROL.parse().unwrap()), Some(&renamed));

    // Everybody else sees her arrive under the new nick.
    let c = sends(&fed.c);
    assert_eq!(c.len(), 1);
    assert_eq!(presence(c[0].1).nick, renamed);
    assert!(presence(c[0].1).available);

    // The origin: bob and carol see "alice" become "alice (b.test)".
    let b = sends(&fed.b);
    let shape: Vec<String> = b
        .iter()
        .map(|(to, s)| {
            let p = presence(s);
            let new = p.new_nick.as_ref().map(Nick::as_str).unwrap_or("-");
            format!("{to} {}/{} {:?} {new}", p.nick, p.available, p.statuses)
        })
        .collect();
    assert_eq!(
        shape,
        [
            format!("{BOB} alice/false [303] alice (b.test)"),
            format!("{CAROL} alice/false [303, 110] alice (b.test)"),
            format!("{BOB} alice (b.test)/true [] -"),
            format!("{CAROL} alice (b.test)/true [110] -"),
        ]
    );

    // A second one takes the next free name.
    w.feed(merge(1, join(ERIN, "alice")));
    assert_eq!(
        w.master.nick_of(&ERIN.parse().unwrap()).map(Nick::as_str),
        Some("alice (b.test) 2")
    );
}

#[test]
fn a_free_nick_joins_silently_for_the_origin() {
    let mut w = World::new();
    let fed = w.feed(merge(0, join(CAROL, "carol")));
    assert!(fed.b.is_empty());
    assert_eq!(recipients(&fed.master), [ALICE, DAVE]);
    assert_eq!(w.master.occupant_count(), 4);
    // A merged message of hers then reaches the others under her nick.
    let said = w.feed(merge(1, say(CAROL, "hello")));
    assert_eq!(recipients(&said.master), [ALICE, DAVE]);
}

#[test]
fn a_refused_join_changes_nothing_and_the_origin_sees_the_nick_go() {
    let mut w = World::new();
    // Erin was banned on the master while she joined the split.
    w.feed(Input::Iq {
        from: ALICE.parse().unwrap(),
        to: None,
        id: "ban".into(),
        request: IqRequest::AdminSet(vec![AdminItem::Affiliation {
            jid: "erin@b.test".parse().unwrap(),
            affiliation: Affiliation::Outcast,
            reason: None,
        }]),
    });
    let before = w.master.snapshot();
    let fed = w.feed(merge(0, join(ERIN, "erin")));
    let b = sends(&fed.b);
    let shape: Vec<(&str, bool, Vec<u16>)> = b
        .iter()
        .map(|(to, s)| {
            (
                to.as_str(),
                presence(s).available,
                presence(s).statuses.clone(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [(BOB, false, vec![307]), (ERIN, false, vec![110, 307])]
    );
    let reason = presence(b[1].1).reason.as_deref().unwrap();
    assert!(reason.starts_with(NOT_ADMITTED), "{reason}");
    assert!(fed.c.is_empty());
    assert_eq!(recipients(&fed.master), [BOB, ERIN]);
    let after = w.master.snapshot();
    assert_eq!(after.occupants, before.occupants);
    assert_eq!(after.merged[0].next_index, 1);
}

#[test]
fn leaves_and_status_changes_reach_the_others_only() {
    let mut w = World::new();
    let away = w.feed(merge(0, status(BOB, "bob")));
    assert_eq!(recipients(&away.master), [ALICE, DAVE]);
    assert!(away.b.is_empty());
    let gone = w.feed(merge(1, leave(BOB)));
    assert_eq!(recipients(&gone.master), [ALICE, DAVE]);
    assert!(!presence(sends(&gone.master)[0].1).available);
    assert!(gone.b.is_empty());
    assert_eq!(w.master.occupant_count(), 2);
    // Leaving twice is nothing, but still confirmed.
    assert_eq!(w.feed(merge(2, leave(BOB))).master, [merged(3)]);
}

#[test]
fn other_inputs_and_other_domains_users_are_confirmed_not_merged() {
    let mut w = World::new();
    let before = w.master.snapshot();
    // A user of another domain: the origin cannot speak for him.
    assert_eq!(w.feed(merge(0, say(DAVE, "forged"))).master, [merged(1)]);
    // A subject change: splits refuse them.
    let subject = Input::Groupchat {
        from: BOB.parse().unwrap(),
        id: None,
        subject: Some("new".into()),
        has_body: false,
        payload: Payload::default(),
        size: 3,
    };
    assert_eq!(w.feed(merge(1, subject)).master, [merged(2)]);
    assert_eq!(w.feed(merge(2, Input::Shutdown)).master, [merged(3)]);
    let after = w.master.snapshot();
    assert_eq!(
        (after.history, after.subject),
        (before.history, before.subject)
    );
}

/// The master restarted during the split: its persistent, members-only
/// room lost its occupants; alice came back.
fn restarted() -> Room {
    let mut room = Room::restore(
        room_jid(),
        relaxed_settings(),
        StoredRoom {
            config: RoomConfig {
                persistent: true,
                members_only: true,
                ..RoomConfig::default()
            },
            affiliations: vec![
                ("alice@a.test".parse().unwrap(), Affiliation::Owner),
                ("bob@b.test".parse().unwrap(), Affiliation::Member),
                ("erin@b.test".parse().unwrap(), Affiliation::Outcast),
            ],
            subject: None,
            history: vec![],
            next_seq: Seq(1),
            merged: vec![],
        },
    );
    room.handle(join(ALICE, "alice"), t(-1));
    room
}

#[test]
fn after_a_master_restart_messages_of_those_who_could_join_are_kept() {
    let mut room = restarted();
    let actions = room.handle(merge(0, say(BOB, "still here")), t(5));
    assert_eq!(recipients(&actions), [ALICE]);
    let kept = actions.iter().find_map(|a| match a {
        Action::Persist(Persist::Message(m)) => Some(m.clone()),
        _ => None,
    });
    let kept = kept.expect("stored");
    assert_eq!(
        (kept.nick.as_str(), &kept.stanza_id),
        ("bob", &local_id(10))
    );
    assert!(
        actions.contains(&Action::Persist(Persist::Merged(SplitProgress {
            domain: "b.test".into(),
            began: BEGAN,
            next_index: 1
        })))
    );

    // An outcast, and a non-member of a members-only room: dropped.
    for (index, who) in [(1, ERIN), (2, CAROL)] {
        let actions = room.handle(merge(index, say(who, "let me in")), t(6));
        assert!(recipients(&actions).is_empty(), "{who}");
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Persist(Persist::Message(_)))),
            "{who}"
        );
        assert_eq!(actions.last(), Some(&merged(index + 1)));
    }
    assert_eq!(room.snapshot().history.len(), 1);
}

#[test]
fn stored_progress_survives_a_restart() {
    let stored = |merged| StoredRoom {
        config: RoomConfig {
            persistent: true,
            ..RoomConfig::default()
        },
        affiliations: vec![("alice@a.test".parse().unwrap(), Affiliation::Owner)],
        subject: None,
        history: vec![],
        next_seq: Seq(1),
        merged,
    };
    let progress = SplitProgress {
        domain: "b.test".into(),
        began: BEGAN,
        next_index: 2,
    };
    let mut room = Room::restore(
        room_jid(),
        relaxed_settings(),
        stored(vec![progress.clone()]),
    );
    assert_eq!(room.snapshot().merged, [progress]);
    assert_eq!(room.handle(merge(1, say(BOB, "again")), t(1)), [merged(2)]);
    assert!(room.snapshot().history.is_empty());
}

#[test]
fn a_room_that_does_not_exist_confirms_and_stays_so() {
    let mut room = Room::new(room_jid(), relaxed_settings());
    let actions = room.handle(merge(4, join(BOB, "bob")), t(1));
    assert_eq!(actions, [merged(5)]);
    assert!(!room.exists());
}

/// The whole path: b.test's slave splits, its users chat and come and go,
/// the heal's submissions become merges; the master and both replicas
/// (the b.test one resumed from where the split began) agree, and b.test's
/// users are sent nothing again.
#[test]
fn a_healed_splits_submissions_merge_cleanly() {
    let mut settings = relaxed_settings();
    settings.default_config.split_policy = SplitPolicy::Open;
    let mut w = World::on(Room::new(room_jid(), settings), &[ALICE, BOB, DAVE]);
    let (mut split, _) = Split::begin(&w.b, BEGAN);
    let mut at = BEGAN;
    for input in [
        say(BOB, "one"),
        join(CAROL, "carol"),
        say(CAROL, "two"),
        status(BOB, "bob"),
        leave(CAROL),
    ] {
        at = Timestamp(at.0 + 10);
        split.handle(input, at);
    }
    let start = split.start().clone();
    let healed = split.end();
    assert_eq!(healed.submissions.len(), 5);
    let mut ids = Vec::new();
    for (index, event) in healed.submissions.into_iter().enumerate() {
        ids.extend(event.local_id.clone());
        let merge = Input::Merge(Box::new(Merge {
            domain: start.domain.clone(),
            began: start.began,
            index: index as u64,
            at: event.now,
            local_id: event.local_id,
            input: event.input,
        }));
        let fed = w.feed(merge);
        assert!(fed.b.is_empty(), "{:?}", fed.b);
        assert!(!fed.c.is_empty());
    }
    let history: Vec<StanzaId> = w.history().iter().map(|m| m.stanza_id.clone()).collect();
    assert_eq!(history, ids);
    assert_eq!(w.master.occupant_count(), 3);
}

proptest! {
    /// However submissions are repeated, reordered or lost, each is merged
    /// at most once, in index order, and the confirmations say how far.
    #[test]
    fn merges_are_exactly_once_and_in_order(indices in proptest::collection::vec(0u64..6, 0..20)) {
        let mut w = World::new();
        let mut next = 0;
        for index in indices {
            let fed = w.feed(merge(index, say(BOB, "m")));
            if index == next {
                next += 1;
            }
            prop_assert_eq!(fed.master.last(), Some(&merged(next)));
        }
        let ids: Vec<StanzaId> = w.history().iter().map(|m| m.stanza_id.clone()).collect();
        let expected: Vec<StanzaId> = (0..next).map(|i| local_id(10 + i)).collect();
        prop_assert_eq!(ids, expected);
    }
}
