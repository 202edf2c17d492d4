//! Split mode, first part: b.test's server hands its users' stanzas for the
//! room to its peerhost (interception), which dials the master. Cutting
//! that one link splits b.test off: a.test keeps talking; b.test's users
//! stay in the room (nobody removes them) and, when the link heals, get
//! every message of the split from their slave, once and in order.
//!
//! (While split, b.test's users get an error for what they send: the
//! `off` behaviour. Local chat during a split comes with the split
//! policies.)

use std::time::Duration;

use dmuc_testbed::distributed::{self, PeerhostSetup};
use dmuc_testbed::scenarios::MasterSetup;
use dmuc_testbed::{Client, Element, stanza};

const ROOM: &str = "split@conference.a.test";
const WAIT: Duration = Duration::from_secs(20);

fn groupchat(el: &Element) -> bool {
    stanza::is_message(el) && stanza::stanza_type(el) == "groupchat" && stanza::body(el).is_some()
}

/// The next groupchat `client` receives must be `body`.
async fn next_is(client: &mut Client, body: &str) {
    let got = client.expect_within(body, WAIT, groupchat).await.unwrap();
    assert_eq!(stanza::body(&got).as_deref(), Some(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_off_domain_catches_up_on_heal() {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let system = distributed::start_counted(
        master,
        &MasterSetup::default(),
        &["b.test"],
        &PeerhostSetup {
            intercept: true,
            ..PeerhostSetup::default()
        },
    )
    .await
    .unwrap();
    system
        .master
        .wait_for_log("peerhost stream up", WAIT)
        .await
        .unwrap();
    let t = &system.testbed;
    let mut alice = t.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut bob = t.client("b.test", "bob").await.unwrap();
    bob.join(ROOM, "bob").await.unwrap();
    let mut bea = t.client("b.test", "bea").await.unwrap();
    bea.join(ROOM, "bea").await.unwrap();
    alice.say(ROOM, "before").await.unwrap();
    next_is(&mut bob, "before").await;
    next_is(&mut bea, "before").await;

    let uplink = system.peerhosts[0].uplink_relay.as_ref().unwrap();
    uplink.cut();
    system
        .master
        .wait_for_log("split: the slave's events wait for it", WAIT)
        .await
        .unwrap();
    for body in ["during 1", "during 2", "during 3"] {
        alice.say(ROOM, body).await.unwrap();
    }
    // b.test cannot reach the room: an error, nothing silently dropped.
    let id = bob.send_groupchat(ROOM, "anyone?").await.unwrap();
    let error = bob
        .expect_within("an error", WAIT, |el| stanza::attr(el, "id") == id)
        .await
        .unwrap();
    assert_eq!(stanza::stanza_type(&error), "error");

    uplink.heal();
    system
        .master
        .wait_for_log("resuming slave domain=b.test", WAIT)
        .await
        .unwrap();
    for client in [&mut bob, &mut bea] {
        for body in ["during 1", "during 2", "during 3"] {
            next_is(client, body).await;
        }
    }
    alice.say(ROOM, "after").await.unwrap();
    next_is(&mut bob, "after").await;
    next_is(&mut bea, "after").await;
    // Nobody left the room, and nothing came twice.
    alice
        .expect_none_pending("someone leaving", |el| {
            stanza::stanza_type(el) == "unavailable"
        })
        .unwrap();
    for client in [&bob, &bea] {
        client
            .expect_none_pending("a message twice", groupchat)
            .unwrap();
    }
}

/// A link that goes silent (packets dropped, no connection closed) is
/// noticed by keepalives, within about twice `keepalive_secs`, and heals
/// like a cut one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_is_noticed_by_keepalives() {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let system = distributed::start_counted(
        master,
        &MasterSetup {
            peering_toml: "keepalive_secs = 1\n".into(),
            ..MasterSetup::default()
        },
        &["b.test"],
        &PeerhostSetup {
            intercept: true,
            peering_toml: "keepalive_secs = 1\n".into(),
            ..PeerhostSetup::default()
        },
    )
    .await
    .unwrap();
    system
        .master
        .wait_for_log("peerhost stream up", WAIT)
        .await
        .unwrap();
    let t = &system.testbed;
    let mut alice = t.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut bob = t.client("b.test", "bob").await.unwrap();
    bob.join(ROOM, "bob").await.unwrap();

    let uplink = system.peerhosts[0].uplink_relay.as_ref().unwrap();
    let stalled = std::time::Instant::now();
    uplink.stall();
    system
        .master
        .wait_for_log("split: the slave's events wait for it", WAIT)
        .await
        .unwrap();
    let detected = stalled.elapsed();
    println!("split noticed {detected:?} after the link went silent (keepalive 1 s)");
    // Twice the keepalive, with room for a busy machine.
    assert!(detected < Duration::from_secs(6), "{detected:?}");
    alice.say(ROOM, "while silent").await.unwrap();

    uplink.heal();
    system
        .master
        .wait_for_log("resuming slave domain=b.test", WAIT)
        .await
        .unwrap();
    next_is(&mut bob, "while silent").await;
    bob.expect_none_pending("a message twice", groupchat)
        .unwrap();
}
