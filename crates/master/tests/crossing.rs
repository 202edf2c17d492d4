//! What crosses between domains, counted on the wire: every s2s connection
//! and every gRPC stream runs through a counting relay (see
//! `dmuc_testbed::relay`). The same room and load run on dmuc (master on
//! a.test, peerhosts on b.test and c.test) and on Prosody's own mod_muc
//! (muc.a.test), with 1, 5 and 20 occupants on each remote domain.
//!
//! dmuc must carry each room event to a remote domain once, whatever the
//! number of its occupants: no s2s stanza for a message from a.test, only
//! the sender's own stanza for a message from b.test, and a gRPC volume
//! that does not grow with the occupants. A second joiner from b.test must
//! not make the roster or history cross again.
//!
//! `cargo test -p dmuc-master --test crossing -- --nocapture` prints the
//! table.

use std::time::Duration;

use dmuc_testbed::distributed::{self, Crossing, Distributed, PeerhostSetup};
use dmuc_testbed::relay::Traffic;
use dmuc_testbed::scenarios::{DMUC_SERVICE, MasterSetup};
use dmuc_testbed::{Client, DomainOptions, Testbed, TestbedOptions};

/// Messages in the history before anyone from b.test joins.
const HISTORY: usize = 10;
/// Messages per measurement.
const MESSAGES: usize = 10;
const REMOTE: [&str; 2] = ["b.test", "c.test"];

/// What was counted for one system and size.
#[derive(Debug, Default)]
struct Row {
    first_join: Crossing,
    second_join: Option<Crossing>,
    /// For `MESSAGES` messages from alice@a.test.
    local: Crossing,
    /// For `MESSAGES` messages from a b.test occupant.
    remote: Crossing,
}

/// A counted system under test.
enum System {
    Dmuc(Box<Distributed>),
    Prosody(Testbed),
}

impl System {
    fn testbed(&self) -> &Testbed {
        match self {
            System::Dmuc(d) => &d.testbed,
            System::Prosody(t) => t,
        }
    }

    fn crossing(&self) -> Crossing {
        match self {
            System::Dmuc(d) => d.crossing().expect("counted"),
            System::Prosody(t) => Crossing {
                s2s: t
                    .domains()
                    .map(|d| t.s2s_traffic(d).expect("counted"))
                    .fold(Traffic::default(), |a, b| a + b),
                grpc: Traffic::default(),
            },
        }
    }
}

fn options() -> TestbedOptions {
    TestbedOptions::new()
        .with_domain(DomainOptions::new("a.test").with_prosody_muc())
        .with_domain(DomainOptions::new("b.test"))
        .with_domain(DomainOptions::new("c.test"))
        .counted()
}

async fn dmuc() -> System {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let peerhost = distributed::peerhost_binary(master).expect("dmuc-peerhost built");
    let system = distributed::start_distributed(
        master,
        peerhost,
        options(),
        &MasterSetup::default(),
        &REMOTE,
        &PeerhostSetup::default(),
    )
    .await
    .expect("system starts");
    System::Dmuc(Box::new(system))
}

async fn prosody() -> System {
    System::Prosody(Testbed::start(options()).await.expect("testbed starts"))
}

/// Waits until every client got the groupchat `body`.
async fn all_receive(clients: &mut [Client], room: &str, body: &str) {
    for c in clients.iter_mut() {
        c.expect_groupchat_body(room, body)
            .await
            .expect("delivered");
    }
}

/// Waits until every client saw `nick` join.
async fn all_see_join(clients: &mut [Client], room: &str, nick: &str) {
    for c in clients.iter_mut() {
        c.expect_presence_from(room, nick, |p| p.attr("type").is_none())
            .await
            .expect("join seen");
    }
}

/// Runs the load with `n` occupants on each remote domain.
async fn measure(system: &System, service: &str, n: usize) -> Row {
    let testbed = system.testbed();
    let room = format!("crossing-{n}@{service}");
    let mut alice = testbed.client("a.test", "alice").await.expect("alice");
    alice
        .create_instant_room(&room, "alice")
        .await
        .expect("room");
    for i in 0..HISTORY {
        alice
            .say(&room, &format!("history {i}"))
            .await
            .expect("said");
    }
    let mut row = Row::default();
    let mut present = vec![alice];
    for domain in REMOTE {
        for i in 0..n {
            let nick = format!("{}{i}", &domain[..1]);
            let mut user = testbed.client(domain, &nick).await.expect("client");
            let before = system.crossing();
            let joined = user.join(&room, &nick).await.expect("joined");
            assert_eq!(joined.history.len(), HISTORY, "{nick} got the history");
            all_see_join(&mut present, &room, &nick).await;
            let crossed = system.crossing().since(&before);
            match (domain, i) {
                ("b.test", 0) => row.first_join = crossed,
                ("b.test", 1) => row.second_join = Some(crossed),
                _ => {}
            }
            present.push(user);
        }
    }

    let before = system.crossing();
    for k in 0..MESSAGES {
        let body = format!("local {k}");
        present[0].send_groupchat(&room, &body).await.expect("sent");
        all_receive(&mut present, &room, &body).await;
    }
    row.local = system.crossing().since(&before);

    let before = system.crossing();
    for k in 0..MESSAGES {
        let body = format!("remote {k}");
        present[1].send_groupchat(&room, &body).await.expect("sent");
        all_receive(&mut present, &room, &body).await;
    }
    row.remote = system.crossing().since(&before);
    row
}

fn per_message(t: &Traffic) -> f64 {
    t.stanzas() as f64 / MESSAGES as f64
}

fn bytes_per_message(c: &Crossing) -> f64 {
    c.bytes() as f64 / MESSAGES as f64
}

fn print_table(rows: &[(&str, usize, Row)]) {
    println!(
        "\n| system | occupants per remote domain | s2s stanzas per message (from a.test / from b.test) | \
         gRPC bytes per message (from a.test) | bytes crossing per message (from a.test / from b.test) | \
         first b.test join: s2s stanzas, bytes | second b.test join: s2s stanzas, bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (system, n, row) in rows {
        let second = row.second_join.as_ref().map_or("–".to_owned(), |c| {
            format!("{}, {}", c.s2s.stanzas(), c.bytes())
        });
        println!(
            "| {system} | {n} | {:.1} / {:.1} | {:.0} | {:.0} / {:.0} | {}, {} | {second} |",
            per_message(&row.local.s2s),
            per_message(&row.remote.s2s),
            row.local.grpc.bytes() as f64 / MESSAGES as f64,
            bytes_per_message(&row.local),
            bytes_per_message(&row.remote),
            row.first_join.s2s.stanzas(),
            row.first_join.bytes(),
        );
    }
}

#[test]
fn each_event_crosses_to_a_domain_once() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut rows = Vec::new();
        for n in [1, 5, 20] {
            let system = dmuc().await;
            let row =
                tokio::time::timeout(Duration::from_secs(120), measure(&system, DMUC_SERVICE, n))
                    .await
                    .expect("in time");
            rows.push(("dmuc", n, row));
            let system = prosody().await;
            let row =
                tokio::time::timeout(Duration::from_secs(120), measure(&system, "muc.a.test", n))
                    .await
                    .expect("in time");
            rows.push(("Prosody mod_muc", n, row));
        }
        print_table(&rows);

        let dmuc: Vec<&Row> = rows
            .iter()
            .filter(|r| r.0 == "dmuc")
            .map(|r| &r.2)
            .collect();
        let prosody: Vec<&Row> = rows
            .iter()
            .filter(|r| r.0 != "dmuc")
            .map(|r| &r.2)
            .collect();
        for (row, n) in dmuc.iter().zip([1u64, 5, 20]) {
            // A message from a.test crosses only as one gRPC event per domain.
            assert_eq!(row.local.s2s.stanzas(), 0, "n={n}: {row:?}");
            // A message from b.test: only the sender's own stanza, over s2s.
            assert_eq!(row.remote.s2s.stanzas(), MESSAGES as u64, "n={n}: {row:?}");
            assert!(row.local.grpc.bytes() > 0, "n={n}: events went over gRPC");
        }
        // Independent of the number of occupants.
        let small = dmuc[0].local.bytes() as f64;
        let large = dmuc[2].local.bytes() as f64;
        assert!(
            large < small * 1.3,
            "bytes per message grow with occupants: {small} for 1, {large} for 20"
        );
        for (row, n) in prosody.iter().zip([1u64, 5, 20]) {
            // The reference: one s2s stanza per remote occupant.
            assert_eq!(
                row.local.s2s.stanzas(),
                2 * n * MESSAGES as u64,
                "n={n}: {row:?}"
            );
        }
        // A second joiner from b.test: its presence goes to the master
        // over s2s, the news of it to the slaves as one small event; no
        // roster or history crosses again.
        for row in &dmuc[1..] {
            let second = row.second_join.expect("measured");
            assert_eq!(second.s2s.stanzas(), 1, "{second:?}");
            assert!(
                second.bytes() * 3 < row.first_join.bytes(),
                "second join {second:?} vs first {:?}",
                row.first_join
            );
        }
    });
}

/// With interception (mod_dmuc_intercept and `[[shadow]]`), b.test's users'
/// own stanzas to the room go up their peerhost's gRPC stream too: nothing
/// of the room crosses over s2s any more.
#[test]
fn intercepted_users_send_nothing_over_s2s() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let master = env!("CARGO_BIN_EXE_dmuc-master");
        let system = distributed::start_distributed(
            master,
            distributed::peerhost_binary(master).expect("dmuc-peerhost built"),
            options(),
            &MasterSetup::default(),
            &REMOTE,
            &PeerhostSetup {
                intercept: true,
                ..PeerhostSetup::default()
            },
        )
        .await
        .expect("system starts");
        // Each peerhost dials in and is vouched for by its domain first.
        for domain in REMOTE {
            system
                .master
                .wait_for_log_line(
                    &["peerhost stream up", &format!("domain={domain}")],
                    Duration::from_secs(15),
                )
                .await
                .unwrap();
        }
        let t = &system.testbed;
        let room = format!("intercepted@{DMUC_SERVICE}");
        let mut alice = t.client("a.test", "alice").await.unwrap();
        alice.create_instant_room(&room, "alice").await.unwrap();
        let before = system.crossing().unwrap();
        let mut present = vec![alice];
        for (domain, nick) in [("b.test", "b0"), ("b.test", "b1"), ("c.test", "c0")] {
            let mut user = t.client(domain, nick).await.unwrap();
            user.join(&room, nick).await.unwrap();
            all_see_join(&mut present, &room, nick).await;
            present.push(user);
        }
        for k in 0..MESSAGES {
            let body = format!("from b {k}");
            present[1].send_groupchat(&room, &body).await.unwrap();
            all_receive(&mut present, &room, &body).await;
        }
        let crossed = system.crossing().unwrap().since(&before);
        assert_eq!(crossed.s2s.stanzas(), 0, "{crossed:?}");
    });
}
