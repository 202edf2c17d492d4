//! The `[metrics]` endpoint of real processes: what operators see after a
//! join, and across a split and its heal.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dmuc_testbed::distributed::{self, PeerhostSetup};
use dmuc_testbed::scenarios::{DMUC_SERVICE, MasterSetup, start_dmuc_testbed};
use dmuc_testbed::{Client, Element, TestbedOptions, stanza};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MASTER: &str = env!("CARGO_BIN_EXE_dmuc-master");
const WAIT: Duration = Duration::from_secs(20);

/// A free loopback address for an endpoint.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The body of `GET /metrics`.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("request sent");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("answer read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    body.to_owned()
}

/// The value of the series `series` (name and labels, as rendered).
fn value(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `series` has `want` (gauges change as things happen).
async fn wait_for(addr: SocketAddr, series: &str, want: i64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(addr).await;
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never {want}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn groupchat(el: &Element) -> bool {
    stanza::is_message(el) && stanza::stanza_type(el) == "groupchat" && stanza::body(el).is_some()
}

async fn next_is(client: &mut Client, body: &str) {
    let got = client.expect_within(body, WAIT, groupchat).await.unwrap();
    assert_eq!(stanza::body(&got).as_deref(), Some(body));
}

/// After a join, one room is active and stanzas went both ways through
/// the component link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_shows_in_the_masters_metrics() {
    let addr = free_addr();
    let setup = MasterSetup {
        extra_toml: format!("[rooms]\nlock_new_rooms = false\n\n[metrics]\nlisten = \"{addr}\"\n"),
        multicast: false,
        ..MasterSetup::default()
    };
    let (testbed, _master) = start_dmuc_testbed(MASTER, TestbedOptions::default(), &setup)
        .await
        .unwrap();
    let before = scrape(addr).await;
    assert_eq!(value(&before, "dmuc_rooms_active"), Some(0), "{before}");
    let mut bob = testbed.client("b.test", "bob").await.unwrap();
    bob.join(&format!("metered@{DMUC_SERVICE}"), "bob")
        .await
        .unwrap();
    let after = scrape(addr).await;
    assert!(
        after.contains("# TYPE dmuc_rooms_active gauge\n"),
        "{after}"
    );
    assert_eq!(value(&after, "dmuc_rooms_active"), Some(1), "{after}");
    for counter in ["dmuc_stanzas_in_total", "dmuc_stanzas_out_total"] {
        assert!(
            value(&after, counter) > value(&before, counter),
            "{counter} grew:\n{before}\n{after}"
        );
    }
}

/// The peer link's gauge follows a silent cut and its heal, the split is
/// counted, and the peerhost reports its slave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_and_heal_show_in_the_metrics() {
    const ROOM: &str = "metered@conference.a.test";
    const UP: &str = "dmuc_peer_up{domain=\"b.test\"}";
    const DOWNS: &str = "dmuc_peer_down_total{domain=\"b.test\"}";
    let (master_addr, peer_addr) = (free_addr(), free_addr());
    let system = distributed::start_counted(
        MASTER,
        &MasterSetup {
            peering_toml: "keepalive_secs = 1\n".into(),
            extra_toml: format!("[metrics]\nlisten = \"{master_addr}\"\n"),
            ..MasterSetup::default()
        },
        &["b.test"],
        &PeerhostSetup {
            intercept: true,
            peering_toml: "keepalive_secs = 1\n".into(),
            extra_toml: format!("[metrics]\nlisten = \"{peer_addr}\"\n"),
            ..PeerhostSetup::default()
        },
    )
    .await
    .unwrap();
    let up = wait_for(master_addr, UP, 1).await;
    assert_eq!(value(&up, DOWNS), Some(0), "{up}");
    let t = &system.testbed;
    let mut alice = t.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut bob = t.client("b.test", "bob").await.unwrap();
    bob.join(ROOM, "bob").await.unwrap();
    // Sampled from the peerhost's store every few seconds.
    let slaves = wait_for(peer_addr, "dmuc_slaves", 1).await;
    assert!(
        value(&slaves, "dmuc_stanzas_out_total") > Some(0),
        "{slaves}"
    );

    let uplink = system.peerhosts[0].uplink_relay.as_ref().unwrap();
    uplink.stall();
    let split = wait_for(master_addr, UP, 0).await;
    assert_eq!(value(&split, DOWNS), Some(1), "{split}");
    alice.say(ROOM, "while split").await.unwrap();
    uplink.heal();
    wait_for(master_addr, UP, 1).await;
    next_is(&mut bob, "while split").await;
}
