//! End-to-end tests of what only dmuc-master promises beyond XEP-0045:
//! durability across crashes and restarts, surviving its server going
//! away, and bad input. Real Prosody domains, real clients, real SQLite.

use std::collections::HashSet;
use std::time::Duration;

use dmuc_testbed::scenarios::{DMUC_SERVICE, MasterSetup, start_dmuc_testbed};
use dmuc_testbed::stanza::{self, body, is_error, stanza_ids};
use dmuc_testbed::{
    Client, Element, HistoryLimits, JoinOptions, JoinOutcome, MasterProcess, Result, Testbed,
    TestbedOptions,
};

const MASTER: &str = env!("CARGO_BIN_EXE_dmuc-master");

/// A testbed (a.test, b.test) with dmuc-master as conference.a.test.
struct Bed {
    testbed: Testbed,
    master: MasterProcess,
}

impl Bed {
    /// Without the server's multicast module: the master's fallback path
    /// (one stanza per recipient) is what these tests exercise; the
    /// conformance suite runs with the module.
    async fn start(extra_toml: &str) -> Result<Bed> {
        let setup = MasterSetup {
            log_filter: "info,dmuc_master=debug".into(),
            extra_toml: extra_toml.into(),
            multicast: false,
            ..MasterSetup::default()
        };
        let (testbed, master) =
            start_dmuc_testbed(MASTER, TestbedOptions::default(), &setup).await?;
        Ok(Bed { testbed, master })
    }

    async fn wait_for_master(&self) -> Result<()> {
        let mut probe = self.testbed.client("a.test", "probe").await?;
        probe
            .wait_for_service(DMUC_SERVICE, Duration::from_secs(15))
            .await
    }

    async fn client(&self, domain: &str, user: &str) -> Result<Client> {
        self.testbed.client(domain, user).await
    }
}

fn room(name: &str) -> String {
    format!("{name}@{DMUC_SERVICE}")
}

/// Runs an async test body on a runtime, with the servers' logs on failure.
fn run<F: AsyncFnOnce() -> Result<()>>(test: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        match tokio::time::timeout(Duration::from_secs(120), test()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("test timed out"),
        }
    });
}

fn is_groupchat_from(el: &Element, room: &str) -> bool {
    stanza::is_message(el)
        && stanza::stanza_type(el) == "groupchat"
        && stanza::is_from_room(el, room)
        && body(el).is_some()
}

/// (stanza-id, body) of a groupchat message from `room`.
fn id_and_body(el: &Element, room: &str) -> (String, String) {
    let ids = stanza_ids(el, room);
    assert_eq!(
        ids.len(),
        1,
        "exactly one stanza-id by the room: {}",
        stanza::show(el)
    );
    (ids[0].to_owned(), body(el).unwrap_or_default())
}

/// Everything `client` receives from `room` until it has been quiet for
/// `quiet`: used only after the master was killed, when no event can say
/// "nothing more will come".
async fn drain_groupchat(
    client: &mut Client,
    room: &str,
    quiet: Duration,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Ok(el) = client
        .expect_within("more groupchat", quiet, |el| is_groupchat_from(el, room))
        .await
    {
        seen.push(id_and_body(&el, room));
    }
    seen
}

/// Persistent rooms keep every message any occupant saw: kill -9 the
/// master while messages stream through it, restart it, and the history a
/// new joiner gets holds each of them, in order, with the same stanza-ids.
#[test]
fn kill9_under_load_loses_no_reflected_message() {
    run(async || {
        let limits = "[limits]\nmax_history = 1000\ndefault_history = 1000\nrate_per_second = 0\n";
        let mut bed = Bed::start(limits).await?;
        let room = room("durable");
        let mut alice = bed.client("a.test", "alice").await?;
        let mut bob = bed.client("b.test", "bob").await?;
        alice
            .create_room(&room, "alice", &[("muc#roomconfig_persistentroom", &["1"])])
            .await?;
        bob.join(&room, "bob").await?;

        // Alice keeps firing messages without waiting for them, until told
        // to stop; bob watches them arrive, and the master is killed while
        // the stream is in full flow.
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let sender_room = room.clone();
        let sender = tokio::spawn(async move {
            let mut sent = 0usize;
            while stopped.try_recv().is_err() && sent < 100_000 {
                alice
                    .send_groupchat(&sender_room, &format!("m{sent}"))
                    .await?;
                sent += 1;
                tokio::task::yield_now().await;
            }
            Ok::<_, dmuc_testbed::Error>((alice, sent))
        });
        let mut seen_by_bob = Vec::new();
        while seen_by_bob.len() < 50 {
            let el = bob
                .expect("groupchat", |el| is_groupchat_from(el, &room))
                .await?;
            seen_by_bob.push(id_and_body(&el, &room));
        }
        bed.master.kill9();
        let _ = stop.send(());
        let (mut alice, sent) = sender.await.expect("sender task")?;
        let quiet = Duration::from_millis(1500);
        seen_by_bob.extend(drain_groupchat(&mut bob, &room, quiet).await);
        let seen_by_alice = drain_groupchat(&mut alice, &room, quiet).await;
        assert!(
            seen_by_bob.len() < sent,
            "the kill interrupted the stream: {} of {sent} seen",
            seen_by_bob.len()
        );

        bed.master.restart()?;
        bed.wait_for_master().await?;
        let mut carol = bed.client("b.test", "carol").await?;
        let joined = carol
            .join_ok(
                &room,
                "carol",
                &JoinOptions::history(HistoryLimits {
                    maxstanzas: Some(1000),
                    ..Default::default()
                }),
            )
            .await?;
        let history: Vec<(String, String)> = joined
            .history
            .iter()
            .map(|el| id_and_body(el, &room))
            .collect();
        let position = |m: &(String, String)| history.iter().position(|h| h == m);
        for seen in [&seen_by_bob, &seen_by_alice] {
            let positions: Vec<Option<usize>> = seen.iter().map(position).collect();
            assert!(
                positions.iter().all(Option::is_some),
                "every reflected message is in the history: missing {:?}",
                seen.iter()
                    .zip(&positions)
                    .filter(|(_, p)| p.is_none())
                    .map(|(m, _)| m)
                    .collect::<Vec<_>>()
            );
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "in the order seen"
            );
        }
        // History is in send order: m0, m1, ... with no gaps.
        let bodies: Vec<&str> = history.iter().map(|(_, b)| b.as_str()).collect();
        let expected: Vec<String> = (0..history.len()).map(|i| format!("m{i}")).collect();
        assert_eq!(bodies, expected);
        let unique: HashSet<&String> = history.iter().map(|(id, _)| id).collect();
        assert_eq!(unique.len(), history.len(), "stanza-ids are unique");
        Ok(())
    });
}

/// A clean stop tells occupants (332); after the restart the room has its
/// configuration, affiliations, subject, history (same stanza-ids) and
/// occupant ids.
#[test]
fn persistent_room_survives_a_clean_restart() {
    run(async || {
        let mut bed = Bed::start("").await?;
        let room = room("kept");
        let mut alice = bed.client("a.test", "alice").await?;
        let joined = alice
            .create_room(
                &room,
                "alice",
                &[
                    ("muc#roomconfig_persistentroom", &["1"]),
                    ("muc#roomconfig_roomname", &["Kept Room"]),
                    ("muc#roomconfig_whois", &["anyone"]),
                ],
            )
            .await?;
        let alice_occupant_id = stanza::occupant_id(&joined.self_presence).map(str::to_owned);
        alice
            .admin_set(
                &room,
                &[("affiliation", "member"), ("jid", "bob@b.test")],
                None,
            )
            .await?;
        alice
            .admin_set(
                &room,
                &[("affiliation", "outcast"), ("jid", "eve@b.test")],
                None,
            )
            .await?;
        alice
            .send_raw(&format!(
                "<message to='{room}' type='groupchat'><subject>Persistence</subject></message>"
            ))
            .await?;
        alice.expect("subject", stanza::is_subject_message).await?;
        let said = alice.say(&room, "remember me").await?;
        let said_id = id_and_body(&said, &room).0;

        bed.master.stop();
        let gone = alice
            .expect("shutdown presence", |el| {
                stanza::is_presence(el)
                    && stanza::stanza_type(el) == "unavailable"
                    && stanza::has_status(el, 332)
            })
            .await?;
        assert!(stanza::has_status(&gone, 110));

        bed.master.restart()?;
        bed.wait_for_master().await?;
        let mut bob = bed.client("b.test", "bob").await?;
        let joined = bob.join(&room, "bob").await?;
        assert_eq!(
            stanza::affiliation_role(&joined.self_presence),
            ("member", "participant")
        );
        assert!(
            stanza::has_status(&joined.self_presence, 100),
            "still non-anonymous"
        );
        assert_eq!(
            joined
                .history
                .iter()
                .map(|el| id_and_body(el, &room))
                .collect::<Vec<_>>(),
            vec![(said_id, "remember me".to_owned())]
        );
        assert_eq!(
            stanza::child_text(&joined.subject, "subject").as_deref(),
            Some("Persistence")
        );

        let info = bob
            .iq_ok(
                "get",
                &room,
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await?;
        let features = stanza::disco_features(&info);
        assert!(features.iter().any(|f| f == "muc_persistent"));
        let identity = info
            .children()
            .flat_map(|q| q.children())
            .find(|c| c.name() == "identity")
            .expect("an identity");
        assert_eq!(identity.attr("name"), Some("Kept Room"));

        let mut eve = bed.client("b.test", "eve").await?;
        let refused = eve
            .join_refused(&room, "eve", &JoinOptions::default())
            .await?;
        assert!(is_error(&refused, "forbidden"), "the ban survived");

        // Same bare JID, same occupant id as before the restart.
        let mut alice_again = bed.client("a.test", "alice").await?;
        let rejoined = alice_again.join(&room, "alice").await?;
        assert_eq!(
            stanza::occupant_id(&rejoined.self_presence).map(str::to_owned),
            alice_occupant_id
        );
        assert_eq!(
            stanza::affiliation_role(&rejoined.self_presence),
            ("owner", "moderator")
        );
        Ok(())
    });
}

/// The server going away and coming back: the link reconnects and rooms
/// live on, with their occupants on other domains still in them.
#[test]
fn server_restart_keeps_rooms() {
    run(async || {
        let mut bed = Bed::start("").await?;
        let room = room("survivor");
        let mut bob = bed.client("b.test", "bob").await?;
        let mut carol = bed.client("b.test", "carol").await?;
        bob.create_instant_room(&room, "bob").await?;
        carol.join(&room, "carol").await?;
        bob.say(&room, "before").await?;

        bed.testbed.restart("a.test").await?;
        bed.wait_for_master().await?;

        // The temporary room and both occupants (on b.test) are still there.
        let id = bob.send_groupchat(&room, "after").await?;
        let echoed = carol.expect_groupchat(&room, &id).await?;
        assert_eq!(body(&echoed).as_deref(), Some("after"));
        let mut dave = bed.client("a.test", "dave").await?;
        let joined = dave.join(&room, "dave").await?;
        assert_eq!(joined.occupants.len(), 2);
        let bodies: Vec<String> = joined.history.iter().filter_map(body).collect();
        assert_eq!(bodies, ["before", "after"]);
        assert!(
            bed.master.try_exit_status().is_none(),
            "the master kept running"
        );
        Ok(())
    });
}

/// Malformed and hostile stanzas get precise errors; the service stays up.
#[test]
fn bad_input_gets_errors_and_the_service_survives() {
    run(async || {
        let bed = Bed::start("[limits]\nmax_message_bytes = 4096\n").await?;
        let room = room("robust");
        let mut alice = bed.client("a.test", "alice").await?;
        let mut mallory = bed.client("b.test", "mallory").await?;
        alice.create_instant_room(&room, "alice").await?;
        mallory.join(&room, "mallory").await?;

        let cases: &[(&str, &str, String)] = &[
            (
                "bad-request",
                "b1",
                format!("<message to='{room}' type='bogus' id='b1'><body>x</body></message>"),
            ),
            (
                "policy-violation",
                "b2",
                format!(
                    "<message to='{room}' type='groupchat' id='b2'><body>{}</body></message>",
                    "x".repeat(5000)
                ),
            ),
            (
                "bad-request",
                "b3",
                format!(
                    "<iq to='{room}' type='set' id='b3'><query xmlns='http://jabber.org/protocol/muc#admin'><item/></query></iq>"
                ),
            ),
            (
                "bad-request",
                "b4",
                format!(
                    "<iq to='{room}' type='set' id='b4'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'><field/></x></query></iq>"
                ),
            ),
            (
                "service-unavailable",
                "b5",
                format!(
                    "<iq to='{room}' type='get' id='b5'><query xmlns='urn:example:nonsense'/></iq>"
                ),
            ),
            (
                "item-not-found",
                "b6",
                format!(
                    "<message to='{room}/nobody' type='chat' id='b6'><body>hi</body></message>"
                ),
            ),
            (
                "item-not-found",
                "b7",
                format!(
                    "<iq to='nosuchroom@{DMUC_SERVICE}' type='get' id='b7'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
                ),
            ),
        ];
        for (condition, id, xml) in cases {
            mallory.send_raw(xml).await?;
            let error = mallory
                .expect(&format!("{condition} for {id}"), |el| {
                    stanza::attr(el, "id") == *id && stanza::stanza_type(el) == "error"
                })
                .await?;
            assert!(is_error(&error, condition), "{}", stanza::show(&error));
        }
        // A flood of odd payloads in a valid message is just passed on.
        mallory
            .send_raw(&format!(
                "<message to='{room}' type='groupchat' id='odd'><body>odd</body><foo xmlns='urn:x' a='1'><bar/></foo></message>"
            ))
            .await?;
        let odd = alice.expect_groupchat(&room, "odd").await?;
        assert!(odd.get_child("foo", "urn:x").is_some());

        // Still serving.
        let id = alice.send_groupchat(&room, "still here").await?;
        mallory.expect_groupchat(&room, &id).await?;
        Ok(())
    });
}

/// A flood from one occupant is limited with resource-constraint.
#[test]
fn floods_are_rate_limited() {
    run(async || {
        let bed = Bed::start("[limits]\nrate_burst = 3\nrate_per_second = 1\n").await?;
        let room = room("flood");
        let mut alice = bed.client("a.test", "alice").await?;
        alice.create_instant_room(&room, "alice").await?;
        for i in 0..6 {
            alice
                .send_groupchat_with_id(&room, "flood", &format!("f{i}"))
                .await?;
        }
        let limited = alice
            .expect("rate limit error", |el| is_error(el, "resource-constraint"))
            .await?;
        assert_eq!(
            stanza::error_condition(&limited),
            Some(("wait", "resource-constraint"))
        );
        Ok(())
    });
}

/// Configuration errors name the key and exit with EX_USAGE (64).
#[test]
fn bad_configuration_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[component]\njid = \"conference.a.test\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\n[storage]\npath = \"x.sqlite\"\n[limits]\nmax_occupants = 0\n",
    )
    .expect("write");
    let out = std::process::Command::new(MASTER)
        .arg("--config")
        .arg(&path)
        .env_remove("DMUC_COMPONENT_SECRET")
        .output()
        .expect("run dmuc-master");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_occupants"));

    let out = std::process::Command::new(MASTER)
        .output()
        .expect("run dmuc-master");
    assert_eq!(out.status.code(), Some(64), "no arguments");
}

/// A join to a room that is not there yet never reaches a room that is
/// closing: rooms come and go under a stream of joins and leaves.
#[test]
fn temporary_rooms_come_and_go() {
    run(async || {
        let bed = Bed::start("[rooms]\nlock_new_rooms = false\n").await?;
        let room = room("churn");
        let mut bob = bed.client("b.test", "bob").await?;
        for round in 0..20 {
            let joined = bob.join(&room, "bob").await?;
            assert!(
                stanza::has_status(&joined.self_presence, 201),
                "round {round}: created anew"
            );
            bob.leave(&room, "bob").await?;
        }
        let outcome = bob.join_with(&room, "bob", &JoinOptions::default()).await?;
        assert!(matches!(outcome, JoinOutcome::Joined(_)));
        Ok(())
    });
}

/// One user may create only so many rooms; joining existing ones is free.
#[test]
fn rooms_per_user_are_limited() {
    run(async || {
        let bed = Bed::start("[limits]\nmax_rooms_per_user = 1\n").await?;
        let mut bob = bed.client("b.test", "bob").await?;
        let mut alice = bed.client("a.test", "alice").await?;
        bob.create_instant_room(&room("first"), "bob").await?;
        let refused = bob
            .join_refused(&room("second"), "bob", &JoinOptions::default())
            .await?;
        assert!(
            is_error(&refused, "not-allowed"),
            "{}",
            stanza::show(&refused)
        );
        alice.create_instant_room(&room("second"), "alice").await?;
        bob.join(&room("second"), "bob").await?;
        // Once bob's room is gone, he may create another.
        bob.leave(&room("first"), "bob").await?;
        bob.create_instant_room(&room("third"), "bob").await?;
        Ok(())
    });
}

/// With the server's multicast module (deploy/prosody), a room event
/// crosses the component link once and still reaches everyone; users
/// cannot use the module to amplify their own stanzas.
#[test]
fn multicast_through_the_server() {
    run(async || {
        let setup = MasterSetup {
            log_filter: "info,dmuc_master=debug".into(),
            ..MasterSetup::default()
        };
        let (testbed, master) =
            start_dmuc_testbed(MASTER, TestbedOptions::default(), &setup).await?;
        let room = room("multi");
        let mut alice = testbed.client("a.test", "alice").await?;
        let mut bob = testbed.client("b.test", "bob").await?;
        let mut carol = testbed.client("a.test", "carol").await?;
        alice.create_instant_room(&room, "alice").await?;
        bob.join(&room, "bob").await?;
        carol.join(&room, "carol").await?;
        let id = bob.send_groupchat(&room, "to all").await?;
        for client in [&mut alice, &mut bob, &mut carol] {
            let got = client.expect_groupchat(&room, &id).await?;
            assert!(
                got.get_child("addresses", "http://jabber.org/protocol/address")
                    .is_none()
            );
        }
        assert!(
            master
                .log()
                .contains(r#"XEP-0033 multicast via=Some("a.test")"#),
            "the master found the module"
        );

        carol
            .send_raw(
                "<message to='a.test' type='chat' id='amp'><body>spam</body>\
                 <addresses xmlns='http://jabber.org/protocol/address'>\
                 <address type='bcc' jid='alice@a.test'/><address type='bcc' jid='bob@b.test'/>\
                 </addresses></message>",
            )
            .await?;
        let refused = carol
            .expect("multicast refused", |el| stanza::attr(el, "id") == "amp")
            .await?;
        assert!(
            is_error(&refused, "forbidden"),
            "{}",
            stanza::show(&refused)
        );
        Ok(())
    });
}
