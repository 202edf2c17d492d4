//! A peerhost dies and comes back, mid-conversation: its domain's users
//! miss nothing and see nothing twice. While it is away the master delivers
//! to them itself; once it is back, its slave resumes from the state it
//! stored, and the room's events cross to its domain as events again, not
//! as one s2s stanza per occupant.

use std::time::Duration;

use dmuc_testbed::distributed::{self, Distributed, PeerhostSetup};
use dmuc_testbed::scenarios::MasterSetup;
use dmuc_testbed::{Client, Element, stanza};

const ROOM: &str = "failover@conference.a.test";
/// Messages in each phase: slave up, peerhost dead, peerhost back.
const PHASE: usize = 15;

fn is_room_groupchat(el: &Element) -> bool {
    stanza::is_message(el)
        && stanza::stanza_type(el) == "groupchat"
        && stanza::from(el).starts_with(ROOM)
        && stanza::body(el).is_some()
}

/// Sends message `i` from `sender` and checks that it is the next groupchat
/// every client receives: in order, nothing skipped, nothing twice.
async fn exchange(sender: &mut Client, all: &mut [&mut Client], i: usize) {
    let body = format!("m{i}");
    sender.send_groupchat(ROOM, &body).await.expect("sent");
    for client in all.iter_mut() {
        let got = client
            .expect(&format!("groupchat {body}"), is_room_groupchat)
            .await
            .expect("delivered");
        assert_eq!(stanza::body(&got).as_deref(), Some(body.as_str()));
    }
}

async fn system() -> Distributed {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    distributed::start_counted(
        master,
        &MasterSetup {
            // One sender, many messages: no flood control.
            extra_toml: "[limits]\nrate_per_second = 0\n".into(),
            ..MasterSetup::default()
        },
        &["b.test"],
        &PeerhostSetup::default(),
    )
    .await
    .expect("system starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peerhost_loses_nothing_and_resumes() {
    let mut system = system().await;
    let testbed = &system.testbed;
    let mut alice = testbed.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    let mut bob = testbed.client("b.test", "bob").await.unwrap();
    bob.join(ROOM, "bob").await.unwrap();
    let mut bea = testbed.client("b.test", "bea").await.unwrap();
    bea.join(ROOM, "bea").await.unwrap();

    let mut n = 0;
    for _ in 0..PHASE - 1 {
        exchange(&mut alice, &mut [&mut bob, &mut bea], n).await;
        n += 1;
    }
    // The last message before the kill is acknowledged: the kill falls
    // between messages, not inside the (unavoidable) window between a
    // slave's delivery and its ack, where the master would deliver again.
    const ACKED: &str = "slave acknowledged everything";
    let acked = system.master.log_lines(&[ACKED]);
    exchange(&mut alice, &mut [&mut bob, &mut bea], n).await;
    n += 1;
    system
        .master
        .wait_for_log_lines(&[ACKED], acked + 1, Duration::from_secs(15))
        .await
        .unwrap();
    let before = system.crossing().unwrap();
    assert!(before.grpc.bytes() > 0, "the slave was serving b.test");

    // Killed between two messages; the room goes on.
    system.peerhost("b.test").unwrap().kill9();
    for _ in 0..PHASE {
        exchange(&mut alice, &mut [&mut bob, &mut bea], n).await;
        n += 1;
    }
    // The master delivered those itself: one s2s stanza per b.test occupant.
    let away = system.crossing().unwrap().since(&before);
    assert!(
        away.s2s.stanzas() >= 2 * PHASE as u64,
        "direct delivery while the peerhost was away: {away:?}"
    );

    system.peerhost("b.test").unwrap().restart().unwrap();
    system.wait_for_peerhost("b.test").await.unwrap();
    system
        .master
        .wait_for_log("resuming slave", Duration::from_secs(15))
        .await
        .unwrap();
    let master_log = || system.master.log();
    let back = system.crossing().unwrap();
    for _ in 0..PHASE {
        exchange(&mut alice, &mut [&mut bob, &mut bea], n).await;
        n += 1;
    }
    let after = system.crossing().unwrap().since(&back);
    assert_eq!(
        after.s2s.stanzas(),
        0,
        "the slave serves b.test again: {after:?}"
    );
    assert!(
        !master_log()[master_log().find("resuming slave").unwrap()..].contains("creating slave"),
        "resumed from its stored state, not recreated from a snapshot"
    );
    for client in [&bob, &bea] {
        client
            .expect_none_pending("a message twice", is_room_groupchat)
            .unwrap();
    }
}
