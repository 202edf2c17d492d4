//! Split mode, end to end: b.test's server hands its users' stanzas for
//! the room to its peerhost (interception), which dials the master. Cutting
//! that one link (a relay) splits b.test off. Each side keeps talking
//! among itself, under the room's split policy; when the link heals, the
//! slave submits what its users did, the master merges it, and everybody
//! ends with every message once and the same history. Also: the peerhost,
//! then the master, killed during a split.

use std::time::Duration;

use dmuc_testbed::distributed::{self, Distributed, PeerhostSetup};
use dmuc_testbed::scenarios::MasterSetup;
use dmuc_testbed::{Client, Element, JoinOptions, occupant_jid, stanza};

const ROOM: &str = "split@conference.a.test";
const WAIT: Duration = Duration::from_secs(20);
const POLICY: &str = "dmuc#roomconfig_splitpolicy";

fn groupchat(el: &Element) -> bool {
    stanza::is_message(el) && stanza::stanza_type(el) == "groupchat" && stanza::body(el).is_some()
}

/// A room notice: a body, no nick (from the room itself).
fn notice(el: &Element) -> bool {
    groupchat(el) && stanza::resource(stanza::from(el)).is_none()
}

/// An occupant's message (not a notice).
fn said(el: &Element) -> bool {
    groupchat(el) && stanza::resource(stanza::from(el)).is_some()
}

/// The next message `client` receives from an occupant must be `body`;
/// returns it.
async fn next_is(client: &mut Client, body: &str) -> Element {
    let got = client.expect_within(body, WAIT, said).await.unwrap();
    assert_eq!(
        stanza::body(&got).as_deref(),
        Some(body),
        "{} got the wrong message",
        client.jid()
    );
    got
}

/// The room's stanza-id of a message.
fn stanza_id(el: &Element) -> String {
    stanza::stanza_ids(el, ROOM)
        .first()
        .expect("a stanza-id by the room")
        .to_string()
}

/// The next notice `client` receives must contain `text`.
async fn notice_says(client: &mut Client, text: &str) {
    let got = client.expect_within(text, WAIT, notice).await.unwrap();
    let body = stanza::body(&got).unwrap();
    assert!(body.contains(text), "{}: {body}", client.jid());
}

/// a.test with the master; the peerhosts of `peers` dial it and intercept
/// their domains' traffic.
async fn system(peers: &[&str]) -> Distributed {
    system_with(peers, "").await
}

/// [`system`] with `peering` added to the `[peering]` section of the master
/// and of every peerhost (say, shorter keepalives).
async fn system_with(peers: &[&str], peering: &str) -> Distributed {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let system = distributed::start_counted(
        master,
        &MasterSetup {
            extra_toml: "[limits]\nrate_per_second = 0\n".into(),
            peering_toml: peering.into(),
            ..MasterSetup::default()
        },
        peers,
        &PeerhostSetup {
            intercept: true,
            peering_toml: peering.into(),
            ..PeerhostSetup::default()
        },
    )
    .await
    .unwrap();
    for domain in peers {
        system
            .master
            .wait_for_log_line(&["peerhost stream up", &format!("domain={domain}")], WAIT)
            .await
            .unwrap();
    }
    system
}

/// Cuts b.test's links (to the master, and to the other peerhosts, else
/// its slave goes on through another's: no split) and waits until both
/// sides have noticed (the master, with other peerhosts, first tries a
/// detour through one, and splits once an event goes unacknowledged).
async fn cut(system: &Distributed) {
    system.peerhosts[0].uplink_relay.as_ref().unwrap().cut();
    for (_, link) in &system.peerhosts[0].links {
        link.cut();
    }
    system
        .master
        .wait_for_log_line(&["peerhost stream down", "domain=b.test"], WAIT)
        .await
        .unwrap();
    // And b.test's peerhost has split (stanzas sent before would find the
    // old stream gone and be refused).
    system.peerhosts[0]
        .process
        .wait_for_log("the master's stream is down", WAIT)
        .await
        .unwrap();
}

async fn heal(system: &Distributed) {
    for (_, link) in &system.peerhosts[0].links {
        link.heal();
    }
    system.peerhosts[0].uplink_relay.as_ref().unwrap().heal();
}

/// alice (a.test) creates the room with `config`, and bob (b.test) joins it.
async fn alice_and_bob(system: &Distributed, config: &[(&str, &[&str])]) -> (Client, Client) {
    let t = &system.testbed;
    let mut alice = t.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    if !config.is_empty() {
        alice.configure(ROOM, config).await.unwrap();
    }
    let mut bob = t.client("b.test", "bob").await.unwrap();
    bob.join(ROOM, "bob").await.unwrap();
    (alice, bob)
}

/// XEP-0410: a self-ping to the own occupant JID gets a result while the
/// client is joined.
async fn self_ping_ok(client: &mut Client, nick: &str) {
    let answer = client
        .iq(
            "get",
            &occupant_jid(ROOM, nick),
            "<ping xmlns='urn:xmpp:ping'/>",
        )
        .await
        .unwrap();
    assert_eq!(
        stanza::stanza_type(&answer),
        "result",
        "{}: {answer:?}",
        client.jid()
    );
}

/// Bodies and stanza-ids of the history a new joiner gets.
async fn history_of(client: &mut Client, nick: &str) -> Vec<(String, String)> {
    let joined = client.join(ROOM, nick).await.unwrap();
    joined
        .history
        .iter()
        .map(|m| (stanza::body(m).unwrap_or_default(), stanza_id(m)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_chat_goes_on_during_a_cut_and_everyone_gets_everything_once() {
    let system = system(&["b.test", "c.test"]).await;
    let (mut alice, mut bob) = alice_and_bob(&system, &[]).await;
    let t = &system.testbed;
    let mut bea = t.client("b.test", "bea").await.unwrap();
    bea.join(ROOM, "bea").await.unwrap();
    let mut carol = t.client("c.test", "carol").await.unwrap();
    carol.join(ROOM, "carol").await.unwrap();
    // Bob may moderate, at the master: an admin.
    let granted = alice
        .admin_set(
            ROOM,
            &[("jid", "bob@b.test"), ("affiliation", "admin")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(stanza::stanza_type(&granted), "result", "{granted:?}");
    alice.say(ROOM, "before").await.unwrap();
    for client in [&mut bob, &mut bea, &mut carol] {
        next_is(client, "before").await;
    }

    cut(&system).await;
    // b.test's users learn that the room is split (the default policy,
    // local chat), and keep talking among themselves.
    notice_says(&mut bob, "split from its master").await;
    notice_says(&mut bea, "split from its master").await;
    let b1 = bob.say(ROOM, "b1").await.unwrap();
    next_is(&mut bea, "b1").await;
    let b2 = bea.say(ROOM, "b2").await.unwrap();
    next_is(&mut bob, "b2").await;
    // ... and a.test and c.test among themselves.
    alice.say(ROOM, "a1").await.unwrap();
    next_is(&mut carol, "a1").await;
    carol.say(ROOM, "c1").await.unwrap();
    next_is(&mut alice, "c1").await;
    // Nobody is out of the room: the split answers self-pings.
    self_ping_ok(&mut bob, "bob").await;
    self_ping_ok(&mut bea, "bea").await;
    // No takeovers: no joins, nick changes or moderation during the split,
    // not even by bob, an admin.
    let mut dan = t.client("b.test", "dan").await.unwrap();
    let refused = dan
        .join_refused(ROOM, "dan", &JoinOptions::default())
        .await
        .unwrap();
    assert!(stanza::is_error(&refused, "not-allowed"), "{refused:?}");
    bob.send_raw(&format!(
        "<presence to='{}'/>",
        occupant_jid(ROOM, "robert")
    ))
    .await
    .unwrap();
    let error = bob
        .expect_within("nick change refused", WAIT, |el| {
            stanza::is_presence(el) && stanza::stanza_type(el) == "error"
        })
        .await
        .unwrap();
    assert!(stanza::is_error(&error, "not-allowed"), "{error:?}");
    let kick = bob
        .admin_set(ROOM, &[("nick", "bea"), ("role", "none")], None)
        .await
        .unwrap();
    assert!(stanza::is_error(&kick, "not-allowed"), "{kick:?}");
    let promote = bob
        .admin_set(
            ROOM,
            &[("jid", "bea@b.test"), ("affiliation", "admin")],
            None,
        )
        .await
        .unwrap();
    assert!(stanza::is_error(&promote, "not-allowed"), "{promote:?}");

    heal(&system).await;
    notice_says(&mut bob, "whole again").await;
    notice_says(&mut bea, "whole again").await;
    // What each side said during the split reaches the other, once, in
    // order, with the ids its authors saw and the time they said it.
    for client in [&mut bob, &mut bea] {
        next_is(client, "a1").await;
        next_is(client, "c1").await;
    }
    for client in [&mut alice, &mut carol] {
        for (sent, body) in [(&b1, "b1"), (&b2, "b2")] {
            let got = next_is(client, body).await;
            assert_eq!(stanza_id(&got), stanza_id(sent));
            assert!(stanza::delay(&got).is_some(), "a merged message is delayed");
        }
    }
    // The room goes on as one.
    alice.say(ROOM, "after").await.unwrap();
    bob.say(ROOM, "after b").await.unwrap();
    for client in [&mut bea, &mut carol] {
        next_is(client, "after").await;
        next_is(client, "after b").await;
    }
    next_is(&mut alice, "after b").await;
    next_is(&mut bob, "after").await;
    // Still in the room, now as the master sees it.
    self_ping_ok(&mut bob, "bob").await;
    self_ping_ok(&mut bea, "bea").await;
    // Nothing came twice, nobody left.
    for client in [&alice, &bob, &bea, &carol] {
        client.expect_none_pending("a message twice", said).unwrap();
        client
            .expect_none_pending("someone leaving", |el| {
                stanza::stanza_type(el) == "unavailable"
            })
            .unwrap();
    }
    // Every replica has the same history: new joiners on each domain
    // (served by the master, b.test's slave and c.test's slave).
    let mut ann = t.client("a.test", "ann").await.unwrap();
    let mut bill = t.client("b.test", "bill").await.unwrap();
    let mut cid = t.client("c.test", "cid").await.unwrap();
    let at_master = history_of(&mut ann, "ann").await;
    let bodies: Vec<&str> = at_master.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["before", "a1", "c1", "b1", "b2", "after", "after b"]
    );
    assert_eq!(history_of(&mut bill, "bill").await, at_master);
    assert_eq!(history_of(&mut cid, "cid").await, at_master);
}

/// `off`: during a split, b.test's users get an explicit error for what
/// they send, stay in the room (self-pings), and nothing is merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_refuses_with_an_error_during_a_split() {
    let system = system(&["b.test"]).await;
    let (mut alice, mut bob) = alice_and_bob(&system, &[(POLICY, &["off"])]).await;

    cut(&system).await;
    notice_says(&mut bob, "unavailable until it is whole again").await;
    let id = bob.send_groupchat(ROOM, "anyone?").await.unwrap();
    let error = bob
        .expect_within("an error", WAIT, |el| stanza::attr(el, "id") == id)
        .await
        .unwrap();
    assert!(
        stanza::is_error(&error, "remote-server-timeout"),
        "{error:?}"
    );
    self_ping_ok(&mut bob, "bob").await;
    alice.say(ROOM, "a1").await.unwrap();

    heal(&system).await;
    notice_says(&mut bob, "whole again").await;
    next_is(&mut bob, "a1").await;
    alice.say(ROOM, "a2").await.unwrap();
    next_is(&mut bob, "a2").await;
    alice
        .expect_none_pending("the refused message", said)
        .unwrap();
}

/// `open`: a new b.test user may join during the split. The nick it took
/// was taken at the master meanwhile: on heal the master renames it (a
/// nick change, not a kick), and both sides agree on who is who.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_admits_local_joins_and_renames_on_a_nick_collision() {
    let system = system(&["b.test"]).await;
    let (mut alice, mut bob) = alice_and_bob(&system, &[(POLICY, &["open"])]).await;
    let t = &system.testbed;

    cut(&system).await;
    notice_says(&mut bob, "split from its master").await;
    let mut dan_b = t.client("b.test", "dan").await.unwrap();
    dan_b.join(ROOM, "dan").await.unwrap();
    let mut dan_a = t.client("a.test", "dan").await.unwrap();
    dan_a.join(ROOM, "dan").await.unwrap();
    dan_b.say(ROOM, "hello from b").await.unwrap();
    next_is(&mut bob, "hello from b").await;

    heal(&system).await;
    // b.test's dan is renamed: his client sees his own nick change.
    let renamed = dan_b
        .expect_within("a rename", WAIT, |el| {
            stanza::is_presence(el)
                && stanza::stanza_type(el) == "unavailable"
                && stanza::has_status(el, 303)
        })
        .await
        .unwrap();
    let new_nick = stanza::muc_item(&renamed)
        .and_then(|item| item.attr("nick"))
        .expect("the new nick")
        .to_owned();
    assert_ne!(new_nick, "dan");
    assert!(stanza::has_status(&renamed, 110), "{renamed:?}");
    // a.test sees him join under the new nick, and his message.
    alice
        .expect_presence_from(ROOM, &new_nick, |el| {
            stanza::stanza_type(el) != "unavailable"
        })
        .await
        .unwrap();
    next_is(&mut alice, "hello from b").await;
    // Both dans are in the room, and each can talk.
    dan_b.say(ROOM, "still here").await.unwrap();
    let got = next_is(&mut alice, "still here").await;
    assert_eq!(stanza::from(&got), occupant_jid(ROOM, &new_nick));
    dan_a.say(ROOM, "me too").await.unwrap();
    next_is(&mut dan_b, "me too").await;
}

/// A peerhost killed during a split comes back split, from its store: what
/// its users said before the crash is merged on heal with what they said
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peerhost_killed_during_a_split_loses_nothing() {
    let mut system = system(&["b.test"]).await;
    let (mut alice, mut bob) = alice_and_bob(&system, &[]).await;
    let mut bea = system.testbed.client("b.test", "bea").await.unwrap();
    bea.join(ROOM, "bea").await.unwrap();

    cut(&system).await;
    bob.say(ROOM, "s1").await.unwrap();
    next_is(&mut bea, "s1").await;
    let peerhost = system.peerhost("b.test").unwrap();
    peerhost.kill9();
    peerhost.restart().unwrap();
    peerhost.wait_for_log("split restored", WAIT).await.unwrap();
    bob.say(ROOM, "s2").await.unwrap();
    next_is(&mut bea, "s2").await;
    self_ping_ok(&mut bea, "bea").await;

    heal(&system).await;
    next_is(&mut alice, "s1").await;
    next_is(&mut alice, "s2").await;
    alice.say(ROOM, "after").await.unwrap();
    next_is(&mut bob, "after").await;
    next_is(&mut bea, "after").await;
    alice.expect_none_pending("a message twice", said).unwrap();
}

/// A master killed during a split (a dead master, not a cut link) and
/// restarted from SQLite: b.test chats meanwhile; what it said is merged
/// into the restarted master's history, and b.test's users are occupants
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_during_a_split_loses_nothing() {
    let mut system = system(&["b.test"]).await;
    let (mut alice, mut bob) =
        alice_and_bob(&system, &[("muc#roomconfig_persistentroom", &["1"])]).await;
    let mut bea = system.testbed.client("b.test", "bea").await.unwrap();
    bea.join(ROOM, "bea").await.unwrap();
    alice.say(ROOM, "before").await.unwrap();
    next_is(&mut bob, "before").await;
    next_is(&mut bea, "before").await;

    system.master.kill9();
    let peerhost = &system.peerhosts[0].process;
    peerhost
        .wait_for_log("split: serving local users alone", WAIT)
        .await
        .unwrap();
    bob.say(ROOM, "s1").await.unwrap();
    next_is(&mut bea, "s1").await;
    bea.say(ROOM, "s2").await.unwrap();
    next_is(&mut bob, "s2").await;

    system.master.restart().unwrap();
    peerhost
        .wait_for_log("split merged by the master", WAIT)
        .await
        .unwrap();
    // The restarted master has the split's messages, after its own.
    let mut ann = system.testbed.client("a.test", "ann").await.unwrap();
    let history = history_of(&mut ann, "ann").await;
    let bodies: Vec<&str> = history.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, ["before", "s1", "s2"]);
    // And b.test's users are in the room: they can talk to it.
    bob.say(ROOM, "after").await.unwrap();
    next_is(&mut ann, "after").await;
    next_is(&mut bea, "after").await;
}

/// A link that goes silent (packets dropped, no connection closed) is
/// noticed by keepalives, within about twice `keepalive_secs`, and heals
/// like a cut one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_is_noticed_by_keepalives() {
    let system = system_with(&["b.test"], "keepalive_secs = 1\n").await;
    let (mut alice, mut bob) = alice_and_bob(&system, &[]).await;

    let uplink = system.peerhosts[0].uplink_relay.as_ref().unwrap();
    let stalled = std::time::Instant::now();
    uplink.stall();
    system
        .master
        .wait_for_log("split: the slave's events wait for it", WAIT)
        .await
        .unwrap();
    let detected = stalled.elapsed();
    println!("split noticed by the master {detected:?} after the link went silent (keepalive 1 s)");
    // Twice the keepalive, with room for a busy machine.
    assert!(detected < Duration::from_secs(6), "{detected:?}");
    notice_says(&mut bob, "split from its master").await;
    println!(
        "b.test's users told of the split {:?} after the link went silent",
        stalled.elapsed()
    );
    alice.say(ROOM, "while silent").await.unwrap();

    uplink.heal();
    notice_says(&mut bob, "whole again").await;
    next_is(&mut bob, "while silent").await;
    bob.expect_none_pending("a message twice", said).unwrap();
}

/// Reconciliation figures: b.test's users say `DMUC_SPLIT_MESSAGES`
/// messages (default 1,000; the closing note used 10,000) during a split;
/// from the heal, how long until a.test has them all, and how many bytes
/// crossed between the domains meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_figures() {
    let count: usize = std::env::var("DMUC_SPLIT_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let system = system(&["b.test"]).await;
    let (mut alice, mut bob) = alice_and_bob(&system, &[]).await;

    cut(&system).await;
    notice_says(&mut bob, "split from its master").await;
    let said_at = std::time::Instant::now();
    for i in 0..count {
        bob.send_groupchat(ROOM, &format!("split message {i}"))
            .await
            .unwrap();
    }
    let last = format!("split message {}", count - 1);
    bob.expect_within(&last, Duration::from_secs(600), |el| {
        said(el) && stanza::body(el).as_deref() == Some(last.as_str())
    })
    .await
    .unwrap();
    let split_era = said_at.elapsed();

    let before = system.crossing().unwrap();
    let healed_at = std::time::Instant::now();
    heal(&system).await;
    // The peerhost dials again with backoff: count from its new stream.
    system.peerhosts[0]
        .process
        .wait_for_log("submitting a split", Duration::from_secs(60))
        .await
        .unwrap();
    let redialled = healed_at.elapsed();
    let submitted_at = std::time::Instant::now();
    for i in 0..count {
        let body = format!("split message {i}");
        let got = alice
            .expect_within(&body, Duration::from_secs(600), said)
            .await
            .unwrap();
        assert_eq!(stanza::body(&got).as_deref(), Some(body.as_str()));
    }
    let reconciled = submitted_at.elapsed();
    system.peerhosts[0]
        .process
        .wait_for_log("split merged by the master", WAIT)
        .await
        .unwrap();
    let crossed = system.crossing().unwrap().since(&before);
    println!(
        "split era: {count} messages said and stored on b.test in {split_era:?} \
         ({:.0}/s)",
        count as f64 / split_era.as_secs_f64()
    );
    println!(
        "reconciliation: stream back {redialled:?} after the heal; {count} messages at \
         a.test {reconciled:?} after that ({:.0}/s); crossed: {} bytes gRPC, {} bytes s2s ({:.0} bytes per message)",
        count as f64 / reconciled.as_secs_f64(),
        crossed.grpc.bytes(),
        crossed.s2s.bytes(),
        crossed.bytes() as f64 / count as f64
    );
    alice.expect_none_pending("a message twice", said).unwrap();
}
