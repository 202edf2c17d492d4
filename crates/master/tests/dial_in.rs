//! Peerhosts that dial the master (`[[peering.uplink]]` to the master's
//! `[peering] listen`), advertising no endpoint: the master still trusts
//! one only once its domain lists it, then replicates to it as to one it
//! dialled. When the peerhost dies and comes back, it dials in again and
//! its slave resumes.

use std::time::Duration;

use dmuc_testbed::distributed::{self, PeerhostSetup};
use dmuc_testbed::scenarios::MasterSetup;
use dmuc_testbed::stanza;

const ROOM: &str = "dialin@conference.a.test";
const WAIT: Duration = Duration::from_secs(15);
/// The master's log line once a slave has acknowledged every event sent.
const ACKED: &str = "slave acknowledged everything";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peerhost_that_dials_in_serves_its_domain() {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let mut system = distributed::start_counted(
        master,
        &MasterSetup::default(),
        &["b.test"],
        &PeerhostSetup {
            dial_in: true,
            ..PeerhostSetup::default()
        },
    )
    .await
    .unwrap();
    // Vouched for by b.test's disco#items, then adopted.
    system
        .master
        .wait_for_log("peerhost stream up", WAIT)
        .await
        .unwrap();
    assert!(
        system
            .master
            .log()
            .contains("discovery domain=b.test peerhost=Some(\"muc-peer.b.test\")")
    );

    let t = &system.testbed;
    let mut alice = t.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut bob = t.client("b.test", "bob").await.unwrap();
    let before = system.crossing().unwrap();
    bob.join(ROOM, "bob").await.unwrap();
    let acked = system.master.log_lines(&[ACKED]);
    alice.say(ROOM, "over the uplink").await.unwrap();
    bob.expect_groupchat_body(ROOM, "over the uplink")
        .await
        .unwrap();
    // The slave's ack is in: a kill now loses and repeats nothing.
    system
        .master
        .wait_for_log_lines(&[ACKED], acked + 1, WAIT)
        .await
        .unwrap();
    let crossed = system.crossing().unwrap().since(&before);
    // Only bob's join crossed over s2s; the rest came through his slave.
    assert_eq!(crossed.s2s.stanzas(), 1, "{crossed:?}");
    assert!(system.master.log().contains("creating slave domain=b.test"));

    // It dies and dials in again: its slave resumes.
    system.peerhost("b.test").unwrap().kill9();
    alice.say(ROOM, "while it is away").await.unwrap();
    bob.expect_groupchat_body(ROOM, "while it is away")
        .await
        .unwrap();
    system.peerhost("b.test").unwrap().restart().unwrap();
    system
        .master
        .wait_for_log("resuming slave domain=b.test", WAIT)
        .await
        .unwrap();
    alice.say(ROOM, "back again").await.unwrap();
    bob.expect_groupchat_body(ROOM, "back again").await.unwrap();
    bob.expect_none_pending("a message twice", |el| {
        stanza::is_message(el) && stanza::body(el).is_some()
    })
    .unwrap();
}
