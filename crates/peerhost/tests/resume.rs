//! Slaves outlive their stream and their process: the peerhost stores them
//! (`[storage] path`), and when their master's next stream starts it asks
//! to resume each in `Welcome.resumable`.
//! The master answers with `Resume` and the events after `have_seq`, and bob
//! (b.test) receives exactly the events he had not had, once.
//!
//! The peerhost runs in-process (stopped cleanly, so its slaves save a
//! snapshot) or as the real binary (killed with SIGKILL, so what is stored
//! is an older snapshot and the event log after it).

mod common;

use anyhow::Result;
use common::{
    ALICE, MASTER, Master, PEER, Peerhost, PeerhostProcess, ROOM, WAIT, ended, has_stanza_id, join,
    say, stanza_id, stored, wait_for_store,
};
use dmuc_peerhost::slave::SNAPSHOT_EVERY;
use dmuc_protocol::pb::{self, master_frame};
use dmuc_testbed::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peerhost_resumes_its_slaves() -> Result<()> {
    let testbed = common::testbed().await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("peerhost.sqlite");
    let mut bob: Client = testbed.client("b.test", "bob").await?;
    let peerhost = Peerhost::start(&testbed, &db).await?;
    let mut master = Master::connect(peerhost.addr).await?;

    let (bob_joins, _) = master.handle(join(bob.jid(), "bob"));
    let (before, actions) = master.handle(say(ALICE, "before the restart"));
    let before_id = stanza_id(&actions);
    master.events(&[&bob_joins, &before]).await?;
    bob.expect("the message before the restart", |e| {
        has_stanza_id(e, &before_id)
    })
    .await?;
    master.acked(before.seq).await?;

    // A clean stop: the slave saves a snapshot, the log is empty.
    peerhost.stop().await?;
    let rooms = stored(&db).await?;
    assert_eq!(rooms.len(), 1);
    assert_eq!(
        (rooms[0].snapshot_seq, rooms[0].logged, rooms[0].last_seq),
        (before.seq, 0, before.seq)
    );

    // While the peerhost is away the master delivers to bob itself.
    let (missed, actions) = master.handle(say(ALICE, "delivered by the master"));
    let missed_id = stanza_id(&actions);
    let (after, actions) = master.handle(say(ALICE, "after the restart"));
    let after_id = stanza_id(&actions);

    let peerhost = Peerhost::start(&testbed, &db).await?;
    bob.wait_for_service(PEER, WAIT).await?;
    master.reconnect(peerhost.addr).await?;
    assert_eq!(master.offered(), [(ROOM.to_owned(), before.seq)]);
    master.resume(ROOM, missed.seq).await?;
    // From `have_seq + 1`; an event it had already is dropped too.
    master.events(&[&before, &missed, &after]).await?;
    bob.expect("the message after the restart", |e| {
        has_stanza_id(e, &after_id)
    })
    .await?;
    bob.expect_none_pending("the message before the restart twice", |e| {
        has_stanza_id(e, &before_id)
    })?;
    bob.expect_none_pending("the message the master delivered", |e| {
        has_stanza_id(e, &missed_id)
    })?;
    master.acked(after.seq).await?;

    // A new stream of the same master (without a restart; the master left
    // the old one open) resumes it too: the peerhost ends the old stream
    // first, and its slave saves its state.
    let (_old_frames, mut old_replies) = master.reconnect(peerhost.addr).await?;
    assert_eq!(master.offered(), [(ROOM.to_owned(), after.seq)]);
    ended(&mut old_replies).await?;
    master.resume(ROOM, after.seq).await?;
    let (last, actions) = master.handle(say(ALICE, "after the reconnect"));
    let last_id = stanza_id(&actions);
    master.events(&[&last]).await?;
    bob.expect("the message after the reconnect", |e| {
        has_stanza_id(e, &last_id)
    })
    .await?;
    bob.expect_none_pending("the message after the restart twice", |e| {
        has_stanza_id(e, &after_id)
    })?;
    master.acked(last.seq).await?;

    drop(master);
    peerhost.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peerhost_resumes_from_its_event_log() -> Result<()> {
    let testbed = common::testbed().await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("peerhost.sqlite");
    let mut bob: Client = testbed.client("b.test", "bob").await?;
    let mut peerhost = PeerhostProcess::spawn(&testbed, dir.path(), &db).await?;
    bob.wait_for_service(PEER, WAIT).await?;
    let mut master = Master::connect(peerhost.addr).await?;

    let (bob_joins, _) = master.handle(join(bob.jid(), "bob"));
    let mut sent = vec![bob_joins];
    let mut ids = Vec::new();
    for n in 0..3 {
        let (event, actions) = master.handle(say(ALICE, &format!("before the crash {n}")));
        ids.push(stanza_id(&actions));
        sent.push(event);
    }
    master.events(&sent.iter().collect::<Vec<_>>()).await?;
    for id in &ids {
        bob.expect("a message before the crash", |e| has_stanza_id(e, id))
            .await?;
    }
    let last = master.seq;
    master.acked(last).await?;

    // Acks may run ahead of storage: wait until the log has every event
    // (after the snapshot of the CreateSlave), then crash.
    let created = sent[0].seq - 1;
    let rooms = wait_for_store(&db, "the event log", |rooms| {
        rooms.first().is_some_and(|r| r.last_seq == last)
    })
    .await?;
    assert_eq!(
        (rooms[0].snapshot_seq, rooms[0].logged),
        (created, last - created),
        "{}",
        peerhost.log()
    );
    peerhost.kill9();

    let (missed, actions) = master.handle(say(ALICE, "delivered by the master"));
    let missed_id = stanza_id(&actions);
    let (after, actions) = master.handle(say(ALICE, "after the crash"));
    let after_id = stanza_id(&actions);

    peerhost.restart()?;
    bob.wait_for_service(PEER, WAIT).await?;
    master.reconnect(peerhost.addr).await?;
    assert_eq!(master.offered(), [(ROOM.to_owned(), last)]);
    master.resume(ROOM, missed.seq).await?;
    master.events(&[&missed, &after]).await?;
    bob.expect("the message after the crash", |e| {
        has_stanza_id(e, &after_id)
    })
    .await?;
    for id in ids.iter().chain([&missed_id]) {
        bob.expect_none_pending("a message twice, or the master's", |e| has_stanza_id(e, id))?;
    }
    master.acked(after.seq).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destroyed_and_unresumable_rooms_are_not_resumed() -> Result<()> {
    let testbed = common::testbed().await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("peerhost.sqlite");
    let peerhost = Peerhost::start(&testbed, &db).await?;
    let mut master = Master::connect(peerhost.addr).await?;
    master.echoed(1).await?;

    // A Resume for a room the peerhost knows nothing of: a resync from nothing.
    let ghost = format!("ghost@{MASTER}");
    master.resume(&ghost, 0).await?;
    assert_eq!(master.resync().await?, (ghost, 0));

    // DestroySlave forgets the room, in storage too: the next stream, of
    // the restarted peerhost, asks for nothing.
    let destroy = pb::DestroySlave {
        room: ROOM.to_owned(),
    };
    master.send(master_frame::Frame::Destroy(destroy)).await?;
    master.echoed(2).await?;
    peerhost.stop().await?;
    assert_eq!(stored(&db).await?, []);
    let peerhost = Peerhost::start(&testbed, &db).await?;
    master.reconnect(peerhost.addr).await?;
    assert!(master.offered().is_empty());
    master.echoed(3).await?;

    // A master without "resync" cannot resume: its stored rooms are dropped.
    master.create().await?;
    master.echoed(4).await?;
    let without_resync = pb::Hello {
        features: vec![dmuc_protocol::feature::KEEPALIVE_ECHO.to_owned()],
        ..dmuc_protocol::hello(MASTER)
    };
    master.reconnect_with(peerhost.addr, without_resync).await?;
    master.echoed(5).await?;
    master.reconnect(peerhost.addr).await?;
    master.echoed(6).await?;

    drop(master);
    peerhost.stop().await?;
    assert_eq!(stored(&db).await?, []);
    Ok(())
}

/// The log does not grow without end: a slave stores a new snapshot every
/// `SNAPSHOT_EVERY` events, which empties its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_snapshots_every_so_many_events() -> Result<()> {
    let testbed = common::testbed().await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("peerhost.sqlite");
    let peerhost = Peerhost::start(&testbed, &db).await?;
    let mut master = Master::connect(peerhost.addr).await?;
    let created = master.seq;

    let extra = 10;
    let events: Vec<_> = (0..SNAPSHOT_EVERY + extra)
        .map(|n| master.handle(say(ALICE, &format!("message {n}"))).0)
        .collect();
    for batch in events.chunks(100) {
        master.events(&batch.iter().collect::<Vec<_>>()).await?;
    }
    let last = master.seq;
    master.acked(last).await?;
    let rooms = wait_for_store(&db, "every event", |rooms| {
        rooms.first().is_some_and(|r| r.last_seq == last)
    })
    .await?;
    let snapshot = created + SNAPSHOT_EVERY as u64;
    assert_eq!(
        (rooms[0].snapshot_seq, rooms[0].logged),
        (snapshot, last - snapshot)
    );

    drop(master);
    peerhost.stop().await
}
