//! The store on a real SQLite file: what is written is what loads, across
//! a reopen, and snapshots empty the log.

use dmuc_protocol::{RoomEvent, pb};
use dmuc_room::testing::{join, say};
use dmuc_room::{Input, Room, Timestamp};
use jid::BareJid;
use prost::Message;

use super::*;
use crate::slave::Dormant;

const MASTER: &str = "conference.a.test";

/// A master's room and the events it numbered, as a slave receives them.
struct MasterRoom {
    room: Room,
    seq: u64,
}

impl MasterRoom {
    fn new(name: &str) -> MasterRoom {
        let jid: BareJid = format!("{name}@{MASTER}").parse().unwrap();
        let mut room = Room::new(jid, dmuc_room::testing::relaxed_settings());
        room.handle(join("alice@a.test/1", "alice"), Timestamp(1));
        MasterRoom { room, seq: 1 }
    }

    /// Handles `input` and returns the event with its encoding.
    fn event(&mut self, input: Input) -> (RoomEvent, Vec<u8>) {
        self.seq += 1;
        let now = Timestamp(self.seq as i64 * 1000);
        self.room.handle(input.clone(), now);
        let event = RoomEvent {
            room: self.room.jid().clone(),
            seq: self.seq,
            now,
            input,
        };
        let encoded = pb::Event::from(&event).encode_to_vec();
        (event, encoded)
    }

    fn jid(&self) -> &BareJid {
        self.room.jid()
    }
}

async fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("peerhost.sqlite"))
        .await
        .unwrap()
}

fn master() -> BareJid {
    MASTER.parse().unwrap()
}

#[tokio::test]
async fn a_snapshot_and_its_log_load_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut lounge = MasterRoom::new("lounge");
    let store = open(&dir).await;
    let writer = store.writer();
    writer.snapshot(lounge.room.snapshot(), 1, 3).await;
    let mut log = Vec::new();
    for input in [
        join("bob@b.test/1", "bob"),
        say("alice@a.test/1", "one"),
        say("bob@b.test/1", "two"),
    ] {
        let (event, encoded) = lounge.event(input);
        writer.event(lounge.jid(), event.seq, encoded).await;
        log.push(event);
    }
    writer.deliver_after(lounge.jid(), 5).await;
    store.close().await;

    let store = open(&dir).await;
    assert_eq!(
        store.rooms().await.unwrap(),
        [StoredRoom {
            room: lounge.jid().clone(),
            master: master(),
            snapshot_seq: 1,
            logged: 3,
            last_seq: 4,
        }]
    );
    let stored = store.load(&master()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].seq, stored[0].deliver_after), (1, 5));
    assert_eq!(stored[0].log, log);

    let dormant = Dormant::load(stored[0].clone(), "b.test");
    assert_eq!(dormant.seq(), 4);
    assert_eq!(dormant.replica().snapshot(), lounge.room.snapshot());
    assert!(
        store
            .load(&"other.test".parse().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
}

#[tokio::test]
async fn a_new_snapshot_empties_the_rooms_log_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let writer = store.writer();
    let mut lounge = MasterRoom::new("lounge");
    let mut kitchen = MasterRoom::new("kitchen");
    for room in [&lounge, &kitchen] {
        writer.snapshot(room.room.snapshot(), 1, 0).await;
    }
    for n in 0..5 {
        for room in [&mut lounge, &mut kitchen] {
            let (event, encoded) = room.event(say("alice@a.test/1", &format!("m{n}")));
            writer.event(room.jid(), event.seq, encoded).await;
        }
    }
    writer.snapshot(lounge.room.snapshot(), lounge.seq, 0).await;
    let (event, encoded) = lounge.event(say("alice@a.test/1", "after"));
    writer.event(lounge.jid(), event.seq, encoded).await;
    writer.flush().await.unwrap();

    let rooms = store.rooms().await.unwrap();
    let summary: Vec<_> = rooms
        .iter()
        .map(|r| {
            (
                r.room.node().unwrap().as_str(),
                r.snapshot_seq,
                r.logged,
                r.last_seq,
            )
        })
        .collect();
    assert_eq!(summary, [("kitchen", 1, 5, 6), ("lounge", 6, 1, 7)]);
    let stored = store.load(&master()).await.unwrap();
    for (stored, room) in stored.into_iter().zip([&kitchen, &lounge]) {
        let dormant = Dormant::load(stored, "b.test");
        assert_eq!(dormant.seq(), room.seq);
        assert_eq!(dormant.replica().snapshot(), room.room.snapshot());
    }
    store.close().await;
}

#[tokio::test]
async fn deleted_rooms_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let writer = store.writer();
    let mut lounge = MasterRoom::new("lounge");
    let kitchen = MasterRoom::new("kitchen");
    let elsewhere: BareJid = "room@muc.c.test".parse().unwrap();
    let mut other = Room::new(elsewhere, dmuc_room::testing::relaxed_settings());
    other.handle(join("carol@c.test/1", "carol"), Timestamp(1));
    writer.snapshot(lounge.room.snapshot(), 1, 0).await;
    writer.snapshot(kitchen.room.snapshot(), 1, 0).await;
    writer.snapshot(other.snapshot(), 1, 0).await;
    let (event, encoded) = lounge.event(say("alice@a.test/1", "gone soon"));
    writer.event(lounge.jid(), event.seq, encoded).await;

    writer.delete(lounge.jid()).await;
    writer.flush().await.unwrap();
    let rooms: Vec<String> = store
        .rooms()
        .await
        .unwrap()
        .iter()
        .map(|r| r.room.to_string())
        .collect();
    assert_eq!(rooms, ["kitchen@conference.a.test", "room@muc.c.test"]);
    assert_eq!(store.count_slaves().await.unwrap(), 2);

    writer.delete_master(&master()).await;
    writer.flush().await.unwrap();
    let rooms = store.rooms().await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].master.as_str(), "muc.c.test");
    assert_eq!(store.count_slaves().await.unwrap(), 1);
    store.close().await;
}

#[tokio::test]
async fn a_split_and_its_log_load_after_a_reopen_until_merged() {
    use dmuc_room::replica::Replica;
    use dmuc_room::split::Split;

    let dir = tempfile::tempdir().unwrap();
    let mut lounge = MasterRoom::new("lounge");
    let (event, _) = lounge.event(join("bob@b.test/1", "bob"));
    let replica = Replica::new(lounge.room.snapshot(), event.seq, 0, "b.test");
    let (mut split, _) = Split::begin(&replica, Timestamp(5_000));
    let store = open(&dir).await;
    let writer = store.writer();
    writer.split_begin(split.start()).await;
    for (i, input) in [say("bob@b.test/1", "one"), say("bob@b.test/1", "two")]
        .into_iter()
        .enumerate()
    {
        split.handle(input, Timestamp(6_000 + i as i64));
        let index = split.log().len() - 1;
        let entry = split.log()[index].clone();
        writer
            .split_event(lounge.jid(), split.start().began, index as u64, entry)
            .await;
    }
    store.close().await;

    // What the split did comes back as it was, provisional ids included.
    let store = open(&dir).await;
    let stored = store.load_splits(&master(), "b.test").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].start, split.start());
    assert_eq!(stored[0].log, split.log());
    assert!(!stored[0].healed);
    let restored = Split::restore(stored[0].start.clone(), stored[0].log.clone());
    assert_eq!(restored.room().snapshot(), split.room().snapshot());

    // Healed: kept (the master has not confirmed), marked.
    let began = split.start().began;
    store.writer().split_healed(lounge.jid(), began).await;
    store.writer().flush().await.unwrap();
    let stored = store.load_splits(&master(), "b.test").await.unwrap();
    assert!(stored[0].healed);
    assert_eq!(stored[0].log.len(), 2);

    // Deleting the slave leaves the split; the master's confirmation ends it.
    store.writer().delete(lounge.jid()).await;
    store.writer().flush().await.unwrap();
    assert_eq!(
        store.load_splits(&master(), "b.test").await.unwrap().len(),
        1
    );
    store.writer().split_merged(lounge.jid(), began).await;
    store.writer().flush().await.unwrap();
    assert!(
        store
            .load_splits(&master(), "b.test")
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
}
