//! Durable messages per second through the store's writer: one commit per
//! message versus group commit, under both durability levels.
//!
//! ```text
//! cargo run --release -p dmuc-master --example store_bench [messages]
//! ```
//! Each run uses a fresh database in a temporary directory on the same disk
//! as the system's temp dir (set `TMPDIR` to measure another disk).

use std::sync::Arc;
use std::time::Instant;

use dmuc_master::store::{Durability, Store, StoreOptions, Writer};
use dmuc_room::{
    Nick, OccupantId, Payload, Persist, RoomConfig, RoomMessage, Seq, StanzaId, Timestamp,
};
use jid::BareJid;
use minidom::Element;

/// The children of a typical groupchat message (≈375 bytes as a stanza).
fn payload() -> Payload {
    let body: Element =
        "<body xmlns='jabber:client'>A typical chat line, about sixty characters long.</body>"
            .parse()
            .expect("valid body");
    let origin: Element =
        "<origin-id xmlns='urn:xmpp:sid:0' id='a3f9c2e1-77d0-4c1b-9b7e-5f0e2d1c3b4a'/>"
            .parse()
            .expect("valid origin-id");
    Payload::new(vec![body, origin])
}

/// A message as a room emits it; the payload is shared, as the room shares it.
fn message(seq: u64, payload: &Payload) -> Persist {
    Persist::Message(Arc::new(RoomMessage {
        seq: Seq(seq),
        stanza_id: StanzaId::assign(1, Seq(seq)),
        occupant_id: OccupantId::from_stored("5d41402abc4b2a76b9719d911017c592".into()),
        nick: Nick::new("alice").expect("valid nick"),
        sender: "alice@a.example".parse().expect("valid jid"),
        id: Some(format!("msg-{seq}")),
        at: Timestamp(1_700_000_000_000 + seq as i64),
        payload: payload.clone(),
        size: 375,
    }))
}

fn room(i: usize) -> BareJid {
    format!("room{i}@conference.a.example")
        .parse()
        .expect("valid room jid")
}

async fn create_rooms(writer: &Writer, rooms: usize) {
    let config = RoomConfig {
        persistent: true,
        ..RoomConfig::default()
    };
    for i in 0..rooms {
        writer
            .write(room(i), vec![Persist::Config(config.clone())])
            .await
            .expect("room created");
    }
}

/// `rooms` tasks, each sending `per_room` messages; a task waits for a
/// message's commit before its next one when `wait_each`, else keeps up to
/// 64 commits in flight.
async fn run(durability: Durability, rooms: usize, per_room: u64, wait_each: bool) -> (f64, u64) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let options = StoreOptions {
        durability,
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("bench.db"), options)
        .await
        .expect("store opens");
    let writer = store.writer();
    create_rooms(&writer, rooms).await;
    let before = store.stats().transactions;
    let started = Instant::now();
    let tasks: Vec<_> = (0..rooms)
        .map(|i| {
            let writer = writer.clone();
            let payload = payload();
            tokio::spawn(async move {
                let mut in_flight = std::collections::VecDeque::new();
                for seq in 1..=per_room {
                    let commit = writer.submit(room(i), vec![message(seq, &payload)]).await;
                    if wait_each {
                        commit.await.expect("durable");
                    } else {
                        in_flight.push_back(commit);
                        if in_flight.len() >= 64 {
                            in_flight
                                .pop_front()
                                .expect("non-empty")
                                .await
                                .expect("durable");
                        }
                    }
                }
                for commit in in_flight {
                    commit.await.expect("durable");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task completes");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let transactions = store.stats().transactions - before;
    store.close().await;
    ((rooms as u64 * per_room) as f64 / elapsed, transactions)
}

#[tokio::main]
async fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("messages: a number"))
        .unwrap_or(20_000);
    println!(
        "durability  mode                                        messages  transactions  durable msg/s"
    );
    for durability in [Durability::Normal, Durability::Full] {
        let serial = (total / 10).max(100);
        let cases: [(&str, usize, u64, bool); 4] = [
            (
                "one commit per message (1 room, await each)",
                1,
                serial,
                true,
            ),
            (
                "group commit, 100 rooms, each awaits its own",
                100,
                total / 100,
                true,
            ),
            ("group commit, 1 room, 64 in flight", 1, total, false),
            (
                "group commit, 10 rooms, 64 in flight each",
                10,
                total / 10,
                false,
            ),
        ];
        for (name, rooms, per_room, wait_each) in cases {
            let (rate, transactions) = run(durability, rooms, per_room, wait_each).await;
            println!(
                "{:<10}  {name:<44}  {:>8}  {transactions:>12}  {rate:>13.0}",
                format!("{durability:?}"),
                rooms as u64 * per_room,
            );
        }
    }
}
