//! Spanning trees of slaves (issue 5), end to end: a.test with the master,
//! six peerhost domains, real s2s and mutual-TLS gRPC, every link counted.
//! With `[peering] max_fanout = 2` the master sends each event to two
//! peerhosts only; they relay it (signed by the master) to the others, and
//! every occupant still gets every message exactly once, in order. The
//! same room without a fan-out limit (a star) gives the figures to compare:
//! the master's outbound bytes per message and the latency to the last
//! recipient.

use std::time::{Duration, Instant};

use dmuc_testbed::distributed::{self, Distributed, PeerhostSetup};
use dmuc_testbed::scenarios::MasterSetup;
use dmuc_testbed::{Client, Element, stanza};

const ROOM: &str = "tree@conference.a.test";
const DOMAINS: [&str; 6] = ["b.test", "c.test", "d.test", "e.test", "f.test", "g.test"];
const MESSAGES: usize = 20;

fn is_room_groupchat(el: &Element) -> bool {
    stanza::is_message(el)
        && stanza::stanza_type(el) == "groupchat"
        && stanza::from(el).starts_with(ROOM)
        && stanza::body(el).is_some()
}

async fn system(max_fanout: usize) -> Distributed {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    distributed::start_counted(
        master,
        &MasterSetup {
            peering_toml: format!("max_fanout = {max_fanout}\n"),
            // One sender, many messages: no flood control.
            extra_toml: "[limits]\nrate_per_second = 0\n".into(),
            ..MasterSetup::default()
        },
        &DOMAINS,
        &PeerhostSetup::default(),
    )
    .await
    .expect("system starts")
}

/// Sends `body` from `clients[sender]`; every client must get it as its
/// next room message. Returns how long the last one took.
async fn exchange(clients: &mut [Client], sender: usize, body: &str) -> Duration {
    let start = Instant::now();
    clients[sender]
        .send_groupchat(ROOM, body)
        .await
        .expect("sent");
    let mut last = Duration::ZERO;
    for client in clients.iter_mut() {
        let got = client
            .expect(&format!("groupchat {body}"), is_room_groupchat)
            .await
            .expect("delivered");
        assert_eq!(stanza::body(&got).as_deref(), Some(body), "in order");
        last = last.max(start.elapsed());
    }
    last
}

/// What one run measured.
#[derive(Debug)]
struct Figures {
    /// gRPC bytes the master sent each peerhost during the messages.
    sent: Vec<(String, u64)>,
    /// Median latency from sending to the last recipient.
    median: Duration,
}

/// A room with alice (a.test) and one user on each peer domain; alice says
/// `MESSAGES` things, one at a time; nobody gets anything twice.
async fn conversation(system: &Distributed) -> Figures {
    let t = &system.testbed;
    let mut alice = t.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut clients = vec![alice];
    for domain in DOMAINS {
        let nick = format!("u-{domain}");
        let mut c = t.client(domain, &nick).await.unwrap();
        c.join(ROOM, &nick).await.unwrap();
        for other in clients.iter_mut() {
            other
                .expect_presence_from(ROOM, &nick, |p| stanza::stanza_type(p).is_empty())
                .await
                .unwrap();
        }
        clients.push(c);
    }
    // Every slave has its place (and has followed its parent) by now.
    exchange(&mut clients, 0, "warm-up").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = system.master_sent().unwrap();
    let mut latencies = Vec::new();
    for i in 0..MESSAGES {
        latencies.push(exchange(&mut clients, 0, &format!("m{i}")).await);
    }
    let after = system.master_sent().unwrap();
    // Nothing twice: a barrier through each client's own server, then
    // nothing of the room left over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in clients.iter_mut() {
        let server = c.bare_jid().split('@').nth(1).unwrap().to_owned();
        c.barrier(&server).await.unwrap();
        c.expect_none_pending("a second copy", is_room_groupchat)
            .unwrap();
    }
    latencies.sort();
    Figures {
        sent: before
            .iter()
            .zip(after)
            .map(|((domain, b), (_, a))| (domain.clone(), a - b))
            .collect(),
        median: latencies[latencies.len() / 2],
    }
}

/// The domains the master fed events to (more than keepalives).
fn fed(figures: &Figures) -> Vec<&str> {
    figures
        .sent
        .iter()
        .filter(|(_, bytes)| *bytes > 50 * MESSAGES as u64)
        .map(|(d, _)| d.as_str())
        .collect()
}

fn per_message(figures: &Figures) -> u64 {
    figures.sent.iter().map(|(_, b)| b).sum::<u64>() / MESSAGES as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fanout_two_the_master_sends_each_event_twice() {
    let system = system(2).await;
    let figures = conversation(&system).await;
    let fed = fed(&figures);
    println!(
        "max_fanout 2, 6 peerhosts: master sends {} B/message over gRPC, fed {fed:?}; \
         latency to the last recipient (median, 2-level tree): {:?}; per peerhost: {:?}",
        per_message(&figures),
        figures.median,
        figures.sent
    );
    assert_eq!(fed.len(), 2, "the master feeds two peerhosts: {figures:?}");
    // The others got the events from their parents, over the links
    // between peerhosts.
    let relayed: u64 = DOMAINS
        .iter()
        .flat_map(|child| DOMAINS.iter().map(move |parent| (child, parent)))
        .filter(|(c, p)| c != p)
        .map(|(c, p)| system.link(c, p).unwrap().traffic().bytes_out)
        .sum();
    assert!(
        relayed > 4 * 50 * MESSAGES as u64,
        "peerhosts relay: {relayed} B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fanout_limit_the_master_feeds_every_peerhost() {
    let system = system(0).await;
    let figures = conversation(&system).await;
    let fed = fed(&figures);
    println!(
        "star, 6 peerhosts: master sends {} B/message over gRPC, fed {fed:?}; \
         latency to the last recipient (median): {:?}; per peerhost: {:?}",
        per_message(&figures),
        figures.median,
        figures.sent
    );
    assert_eq!(fed.len(), DOMAINS.len(), "{figures:?}");
}
