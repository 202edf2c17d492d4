//! Store tests against real SQLite files in temporary directories.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use dmuc_room::{
    Affiliation, Nick, OccupantId, Payload, Persist, RoomConfig, RoomMessage, Seq, SplitProgress,
    StanzaId, Subject, Timestamp, Whois,
};
use futures::FutureExt;
use jid::BareJid;
use minidom::Element;
use tempfile::TempDir;

use super::*;

fn jid(s: &str) -> BareJid {
    s.parse().unwrap()
}

fn message(seq: u64, text: &str) -> Arc<RoomMessage> {
    let body: Element = format!("<body xmlns='jabber:client'>{}</body>", escape(text))
        .parse()
        .unwrap();
    let origin: Element = format!("<origin-id xmlns='urn:xmpp:sid:0' id='o{seq}'/>")
        .parse()
        .unwrap();
    Arc::new(RoomMessage {
        seq: Seq(seq),
        stanza_id: StanzaId::assign(7, Seq(seq)),
        occupant_id: OccupantId::from_stored(format!("occ{}", seq % 3)),
        nick: Nick::new(&format!("nick{}", seq % 3)).unwrap(),
        sender: jid(&format!("user{}@a.test", seq % 3)),
        id: seq.is_multiple_of(2).then(|| format!("id-{seq}")),
        at: Timestamp(1_700_000_000_000 + seq as i64),
        payload: Payload::new(vec![body, origin]),
        size: 100 + seq as usize,
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn config(name: &str) -> RoomConfig {
    RoomConfig {
        name: name.into(),
        description: "about <things> & stuff".into(),
        persistent: true,
        members_only: true,
        password: Some("s3cret".into()),
        whois: Whois::Anyone,
        history_length: 50,
        ..RoomConfig::default()
    }
}

async fn open(dir: &TempDir) -> Store {
    Store::open(&dir.path().join("master.db"), StoreOptions::default())
        .await
        .unwrap()
}

/// An independent pool on the same file, as a restarted process would open it.
async fn count(path: &Path, table: &str) -> i64 {
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
        .await
        .unwrap();
    let n = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn room_round_trips_through_close_and_reopen() {
    let dir = TempDir::new().unwrap();
    let room = jid("lounge@conference.a.test");
    let tricky: Vec<Element> = [
        "<body xmlns='jabber:client' xml:lang='en'>1 &lt; 2 &amp;&amp; 3 &gt; 2 ]]&gt; \"é\"</body>",
        "<x:data xmlns:x='urn:example:x' x:kind='a&amp;b' plain='&lt;'><x:item>in</x:item><other xmlns='urn:other'/></x:data>",
    ]
    .iter()
    .map(|x| x.parse().unwrap())
    .collect();
    let special = Arc::new(RoomMessage {
        payload: Payload::new(tricky),
        ..(*message(30, "")).clone()
    });
    let subject = Subject {
        text: "Today: <b>&</b>".into(),
        nick: Some(Nick::new("alice").unwrap()),
        at: Timestamp(1234),
    };

    let store = open(&dir).await;
    let writer = store.writer();
    writer
        .write(
            room.clone(),
            vec![
                Persist::Config(RoomConfig::default()),
                Persist::Config(config("Lounge")),
                Persist::Affiliation(jid("alice@a.test"), Affiliation::Owner),
                Persist::Affiliation(jid("bob@b.test"), Affiliation::Member),
                Persist::Affiliation(jid("eve@e.test"), Affiliation::Outcast),
                Persist::Affiliation(jid("carol@c.test"), Affiliation::Admin),
                Persist::Subject(subject.clone()),
            ],
        )
        .await
        .unwrap();
    for seq in 1..30 {
        writer
            .write(room.clone(), vec![Persist::Message(message(seq, "hi <&>"))])
            .await
            .unwrap();
    }
    writer
        .write(
            room.clone(),
            vec![
                Persist::Message(special.clone()),
                Persist::Affiliation(jid("bob@b.test"), Affiliation::Admin),
                Persist::Affiliation(jid("carol@c.test"), Affiliation::None),
            ],
        )
        .await
        .unwrap();
    store.close().await;

    let store = open(&dir).await;
    let rooms = store.load_rooms(20).await.unwrap();
    assert_eq!(rooms.len(), 1);
    let (loaded_jid, loaded) = &rooms[0];
    assert_eq!(loaded_jid, &room);
    assert_eq!(loaded.config, config("Lounge"));
    assert_eq!(
        loaded.affiliations,
        vec![
            (jid("alice@a.test"), Affiliation::Owner),
            (jid("bob@b.test"), Affiliation::Admin),
            (jid("eve@e.test"), Affiliation::Outcast),
        ]
    );
    assert_eq!(loaded.subject, Some(subject));
    assert_eq!(loaded.next_seq, Seq(31));
    let seqs: Vec<u64> = loaded.history.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, (11..=30).collect::<Vec<_>>());
    assert_eq!(loaded.history[0], message(11, "hi <&>"));
    assert_eq!(loaded.history[19], special);
    assert_eq!(
        String::from(&loaded.history[19].payload.elements()[0]),
        String::from(&special.payload.elements()[0])
    );
    store.close().await;
}

#[tokio::test]
async fn messages_reads_a_range() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir).await;
    let room = jid("r@conference.a.test");
    let mut changes = vec![Persist::Config(config("r"))];
    changes.extend((1..=50).map(|s| Persist::Message(message(s, "m"))));
    store.writer().write(room.clone(), changes).await.unwrap();

    let seqs = |v: Vec<Arc<RoomMessage>>| v.iter().map(|m| m.seq.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.messages(&room, Seq(45), 100).await.unwrap()),
        [45, 46, 47, 48, 49, 50]
    );
    assert_eq!(
        seqs(store.messages(&room, Seq(1), 3).await.unwrap()),
        [1, 2, 3]
    );
    assert!(store.messages(&room, Seq(51), 10).await.unwrap().is_empty());
    assert!(
        store
            .messages(&jid("none@conference.a.test"), Seq(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Room without messages: next_seq starts at 1; history 0 still finds the max seq.
    store
        .writer()
        .write(
            jid("empty@conference.a.test"),
            vec![Persist::Config(config("e"))],
        )
        .await
        .unwrap();
    let rooms = store.load_rooms(0).await.unwrap();
    assert_eq!(rooms[0].1.next_seq, Seq(1));
    assert_eq!(rooms[1].1.next_seq, Seq(51));
    assert!(rooms[1].1.history.is_empty());
    store.close().await;
}

#[tokio::test]
async fn delete_removes_everything_and_a_room_can_come_back() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.db");
    let store = open(&dir).await;
    let writer = store.writer();
    let gone = jid("gone@conference.a.test");
    let kept = jid("kept@conference.a.test");
    for room in [&gone, &kept] {
        writer
            .write(
                room.clone(),
                vec![
                    Persist::Config(config("x")),
                    Persist::Affiliation(jid("alice@a.test"), Affiliation::Owner),
                    Persist::Subject(Subject {
                        text: "s".into(),
                        nick: None,
                        at: Timestamp(1),
                    }),
                    Persist::Message(message(1, "a")),
                    Persist::Message(message(2, "b")),
                ],
            )
            .await
            .unwrap();
    }
    // Messages queued before a Delete in the same transaction go with it.
    writer
        .write(
            gone.clone(),
            vec![Persist::Message(message(3, "c")), Persist::Delete],
        )
        .await
        .unwrap();
    let rooms = store.load_rooms(10).await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].0, kept);
    assert_eq!(count(&path, "rooms").await, 1);
    assert_eq!(count(&path, "affiliations").await, 1);
    assert_eq!(count(&path, "messages").await, 2);

    // Deleted and recreated within one batch: only the new incarnation remains.
    writer
        .write(
            kept.clone(),
            vec![
                Persist::Delete,
                Persist::Config(config("new")),
                Persist::Message(message(1, "new")),
            ],
        )
        .await
        .unwrap();
    let rooms = store.load_rooms(10).await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].1.config.name, "new");
    assert!(rooms[0].1.affiliations.is_empty());
    assert_eq!(rooms[0].1.subject, None);
    assert_eq!(rooms[0].1.history, [message(1, "new")]);

    writer
        .write(kept.clone(), vec![Persist::Delete])
        .await
        .unwrap();
    // Deleting a room that does not exist is not an error.
    writer
        .write(jid("never@conference.a.test"), vec![Persist::Delete])
        .await
        .unwrap();
    assert!(store.load_rooms(10).await.unwrap().is_empty());
    store.close().await;
    for table in ["rooms", "affiliations", "messages"] {
        assert_eq!(count(&path, table).await, 0, "{table}");
    }
}

#[tokio::test]
async fn changes_for_an_unknown_room_create_it() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir).await;
    let room = jid("orphan@conference.a.test");
    store
        .writer()
        .write(
            room.clone(),
            vec![
                Persist::Message(message(1, "first")),
                Persist::Affiliation(jid("alice@a.test"), Affiliation::Member),
            ],
        )
        .await
        .unwrap();
    let rooms = store.load_rooms(10).await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].0, room);
    assert!(rooms[0].1.config.persistent);
    assert_eq!(rooms[0].1.history.len(), 1);
    assert_eq!(
        rooms[0].1.affiliations,
        [(jid("alice@a.test"), Affiliation::Member)]
    );

    // Deleted in one transaction, written to in a later one: the writer's
    // memory of existing rooms must not skip re-creating it.
    let writer = store.writer();
    writer
        .write(room.clone(), vec![Persist::Delete])
        .await
        .unwrap();
    writer
        .write(room.clone(), vec![Persist::Message(message(1, "again"))])
        .await
        .unwrap();
    let rooms = store.load_rooms(10).await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].1.history, [message(1, "again")]);
    assert!(rooms[0].1.affiliations.is_empty());
    store.close().await;
}

#[tokio::test]
async fn merge_progress_is_replaced_per_domain_and_goes_with_its_room() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.db");
    let store = open(&dir).await;
    let writer = store.writer();
    let room = jid("merged@conference.a.test");
    let progress = |domain: &str, began, next_index| SplitProgress {
        domain: domain.into(),
        began: Timestamp(began),
        next_index,
    };
    writer
        .write(
            room.clone(),
            vec![
                Persist::Config(config("m")),
                Persist::Merged(progress("b.test", 10, 1)),
                Persist::Merged(progress("c.test", 20, 4)),
            ],
        )
        .await
        .unwrap();
    writer
        .write(
            room.clone(),
            vec![Persist::Merged(progress("b.test", 30, 2))],
        )
        .await
        .unwrap();
    store.close().await;

    let store = open(&dir).await;
    let rooms = store.load_rooms(10).await.unwrap();
    assert_eq!(
        rooms[0].1.merged,
        [progress("b.test", 30, 2), progress("c.test", 20, 4)]
    );
    store
        .writer()
        .write(room, vec![Persist::Delete])
        .await
        .unwrap();
    store.close().await;
    assert_eq!(count(&path, "merged_splits").await, 0);
}

#[tokio::test]
async fn epoch_increments_across_reopen() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.next_epoch().await.unwrap(), 1);
    assert_eq!(store.next_epoch().await.unwrap(), 2);
    // Not closed: the epoch is written with FULL sync before it is returned.
    drop(store);
    let store = open(&dir).await;
    assert_eq!(store.next_epoch().await.unwrap(), 3);
    store.close().await;
    let store = open(&dir).await;
    assert_eq!(store.next_epoch().await.unwrap(), 4);
    store.close().await;
}

#[tokio::test]
async fn salt_is_random_and_stable_across_reopen() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir).await;
    let salt = store.salt().await.unwrap();
    assert_ne!(salt, [0; 32]);
    assert_eq!(store.salt().await.unwrap(), salt);
    drop(store);
    let store = open(&dir).await;
    assert_eq!(store.salt().await.unwrap(), salt);
    store.close().await;

    let other = TempDir::new().unwrap();
    let store = open(&other).await;
    assert_ne!(store.salt().await.unwrap(), salt);
    store.close().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_dropping_the_store() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.db");
    let store = open(&dir).await;
    let writer = store.writer();
    let room = jid("r@conference.a.test");
    writer
        .write(room.clone(), vec![Persist::Config(config("r"))])
        .await
        .unwrap();
    for seq in 1..=100 {
        writer
            .write(room.clone(), vec![Persist::Message(message(seq, "x"))])
            .await
            .unwrap();
    }
    // No close: the writer and pool are just dropped, and the WAL stays behind.
    drop(store);
    assert_eq!(count(&path, "messages").await, 100);
}

/// Run as a child process by `acknowledged_writes_survive_kill_9`: writes
/// messages forever and prints the seq of each one whose commit resolved.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os("DMUC_STORE_CRASH_CHILD") else {
        return;
    };
    use std::io::Write;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = Store::open(Path::new(&path), StoreOptions::default())
            .await
            .unwrap();
        let writer = store.writer();
        let room = jid("crash@conference.a.test");
        writer
            .write(room.clone(), vec![Persist::Config(config("c"))])
            .await
            .unwrap();
        // Several commits in flight at once, so the kill lands mid-group.
        let mut pending = std::collections::VecDeque::new();
        for seq in 1.. {
            pending.push_back((
                seq,
                writer
                    .submit(room.clone(), vec![Persist::Message(message(seq, "c"))])
                    .await,
            ));
            if pending.len() >= 16 {
                let (seq, commit) = pending.pop_front().unwrap();
                commit.await.unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "ack {seq}").unwrap();
                out.flush().unwrap();
            }
        }
    });
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DMUC_STORE_CRASH_CHILD", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(seq) = line.unwrap().strip_prefix("ack ") {
            acked = seq.parse().unwrap();
            if acked >= 3000 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no close, no checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acked >= 3000, "child stopped early");

    let store = open(&dir).await;
    let room = jid("crash@conference.a.test");
    let stored = store.messages(&room, Seq(1), usize::MAX).await.unwrap();
    assert!(
        stored.len() as u64 >= acked,
        "acked {acked}, found {}",
        stored.len()
    );
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, Seq(i as u64 + 1));
        assert_eq!(*m, message(i as u64 + 1, "c"));
    }
    store.close().await;
}

#[tokio::test]
async fn group_commit_makes_10_000_concurrent_messages_durable_in_few_transactions() {
    const ROOMS: u64 = 8;
    const PER_ROOM: u64 = 1250;
    let dir = TempDir::new().unwrap();
    let store = open(&dir).await;
    let tasks: Vec<_> = (0..ROOMS)
        .map(|r| {
            let writer = store.writer();
            tokio::spawn(async move {
                let room = jid(&format!("room{r}@conference.a.test"));
                writer
                    .write(room.clone(), vec![Persist::Config(config("g"))])
                    .await
                    .unwrap();
                // A room pipelines its messages: it keeps submitting while earlier ones commit.
                let mut commits = Vec::new();
                for seq in 1..=PER_ROOM {
                    commits.push(
                        writer
                            .submit(room.clone(), vec![Persist::Message(message(seq, "g"))])
                            .await,
                    );
                    if seq % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                let last = commits.pop().unwrap();
                last.await.unwrap();
                // In-order resolution: once the last is durable, every earlier one already is.
                // (Unconstrained: tokio's cooperative budget would make a poll
                // of a ready receiver return Pending after ~128 polls.)
                tokio::task::unconstrained(async move {
                    for commit in commits {
                        assert!(matches!(commit.now_or_never(), Some(Ok(()))));
                    }
                })
                .await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.stats();
    println!("group commit: {stats:?}");
    assert_eq!(stats.changes, ROOMS * (PER_ROOM + 1));
    assert_eq!(stats.batches, ROOMS * (PER_ROOM + 1));
    assert_eq!(stats.failed_transactions, 0);
    assert!(
        stats.transactions < 10_000 / 10,
        "{} transactions",
        stats.transactions
    );
    drop(store);

    // Read back through a fresh store, as after a crash.
    let store = open(&dir).await;
    for r in 0..ROOMS {
        let room = jid(&format!("room{r}@conference.a.test"));
        let stored = store.messages(&room, Seq(1), usize::MAX).await.unwrap();
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq.0).collect();
        assert_eq!(seqs, (1..=PER_ROOM).collect::<Vec<_>>());
    }
    store.close().await;
}

#[tokio::test]
async fn a_failed_group_applies_nothing_and_the_writer_carries_on() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.db");
    let store = open(&dir).await;
    let writer = store.writer();
    let a = jid("a@conference.a.test");
    let b = jid("b@conference.a.test");
    let subject = |text: &str| Subject {
        text: text.into(),
        nick: None,
        at: Timestamp(1),
    };
    writer
        .write(
            a.clone(),
            vec![
                Persist::Config(config("a")),
                Persist::Subject(subject("before")),
            ],
        )
        .await
        .unwrap();
    writer
        .write(b.clone(), vec![Persist::Config(config("b"))])
        .await
        .unwrap();

    // Every message insert now fails the way an I/O error would: not a constraint of one batch.
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    sqlx::query("CREATE TRIGGER fail_io BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'simulated I/O error'); END")
        .execute(&pool)
        .await
        .unwrap();
    let before = store.stats();
    // The test runtime is single-threaded and `submit` does not yield while
    // the queue has room: both batches are queued before the writer wakes,
    // so they share one transaction.
    let first = writer
        .submit(
            a.clone(),
            vec![
                Persist::Subject(subject("after")),
                Persist::Message(message(1, "x")),
            ],
        )
        .await;
    let second = writer
        .submit(b.clone(), vec![Persist::Subject(subject("b too"))])
        .await;
    let first = first.await;
    assert!(matches!(first, Err(StoreError::Database(_))), "{first:?}");
    // Display hides the database's own words.
    assert_eq!(first.unwrap_err().to_string(), "storage failure");
    // Not a constraint of one batch: the whole group fails, innocent batch included.
    assert!(matches!(second.await, Err(StoreError::Database(_))));
    let after = store.stats();
    assert_eq!(after.failed_transactions, before.failed_transactions + 1);
    assert_eq!(after.transactions, before.transactions);

    sqlx::query("DROP TRIGGER fail_io")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    writer
        .write(a.clone(), vec![Persist::Message(message(1, "ok"))])
        .await
        .unwrap();

    let rooms = store.load_rooms(10).await.unwrap();
    assert_eq!(
        rooms[0].1.subject,
        Some(subject("before")),
        "nothing of the failed batch applied"
    );
    assert_eq!(rooms[0].1.history, [message(1, "ok")]);
    assert_eq!(rooms[1].1.subject, None);
    store.close().await;
}

#[tokio::test]
async fn a_bad_batch_fails_alone() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir).await;
    let writer = store.writer();
    let room = jid("r@conference.a.test");
    writer
        .write(
            room.clone(),
            vec![
                Persist::Config(config("r")),
                Persist::Message(message(1, "one")),
            ],
        )
        .await
        .unwrap();
    let before = store.stats();
    // Queued back to back on the single-threaded test runtime: one group.
    let good_before = writer
        .submit(room.clone(), vec![Persist::Message(message(2, "two"))])
        .await;
    let bad = writer
        .submit(
            room.clone(),
            vec![
                Persist::Subject(Subject {
                    text: "bad".into(),
                    nick: None,
                    at: Timestamp(5),
                }),
                Persist::Message(message(1, "duplicate seq")),
            ],
        )
        .await;
    let good_after = writer
        .submit(room.clone(), vec![Persist::Message(message(3, "three"))])
        .await;
    good_before.await.unwrap();
    assert!(matches!(bad.await, Err(StoreError::Database(_))));
    good_after.await.unwrap();
    // The group failed once, then each batch ran alone: two commits, one more failure.
    let after = store.stats();
    assert_eq!(after.failed_transactions, before.failed_transactions + 2);
    assert_eq!(after.transactions, before.transactions + 2);

    let rooms = store.load_rooms(10).await.unwrap();
    assert_eq!(rooms[0].1.subject, None, "the bad batch is all or nothing");
    let seqs: Vec<u64> = rooms[0].1.history.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(rooms[0].1.history[0], message(1, "one"));
    store.close().await;
}

#[tokio::test]
async fn close_finishes_the_queue_and_refuses_later_writes() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("master.db");
    let store = open(&dir).await;
    let writer = store.writer();
    let room = jid("r@conference.a.test");
    let mut commits = vec![
        writer
            .submit(room.clone(), vec![Persist::Config(config("r"))])
            .await,
    ];
    for seq in 1..=500 {
        commits.push(
            writer
                .submit(room.clone(), vec![Persist::Message(message(seq, "q"))])
                .await,
        );
    }
    store.close().await;
    for commit in commits {
        commit.await.unwrap();
    }
    assert!(matches!(
        writer.write(room.clone(), vec![Persist::Delete]).await,
        Err(StoreError::Closed)
    ));
    // A clean close checkpoints the WAL into the database file and removes it.
    assert!(!dir.path().join("master.db-wal").exists());
    assert_eq!(count(&path, "messages").await, 500);
}

#[test]
fn errors_do_not_leak_internals() {
    let e = StoreError::from(sqlx::Error::Protocol(
        "table messages has no column x".into(),
    ));
    assert_eq!(e.to_string(), "storage failure");
    assert!(format!("{e:?}").contains("no column x"));
    assert_eq!(
        StoreError::Invalid("stored nick \"\"".into()).to_string(),
        "invalid stored data"
    );
}
