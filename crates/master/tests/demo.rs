//! End to end: the scripted conversation of the local demo (`dmuc-demo`,
//! `scripts/demo`) on the whole system: `dmuc-master` on `a.test`, a
//! `dmuc-peerhost` on `b.test` and on `c.test` (each dialling the master,
//! its server handing it its users' stanzas for the room: interception),
//! with counted s2s and gRPC.
//! Checks the facts of the transcript: the room's configuration, the join
//! order, every message reaching every occupant once with one stanza-id
//! that every recipient shares, stable occupant-ids, the private message
//! reaching only its addressee, the nick change seen by everyone; and what
//! crossed between domains is what dmuc promises: no s2s stanza for any
//! message or join (the users' stanzas go up their peerhost's gRPC link),
//! joins served by the joiner's domain's slave. And the last act, split
//! mode: b.test's link to the master cut, both sides chatting among
//! themselves, the heal bringing each side the other's messages with the
//! ids their authors saw, and the replicas ending with the same history.
//!
//! Needs `dmuc-peerhost` built next to `dmuc-master` (`cargo build -p
//! dmuc-peerhost`; `cargo test --workspace` builds it).

use std::time::Duration;

use dmuc_testbed::demo::{self, HOME, JoinSeen, JoinStep, Notice, PEER_DOMAINS, Transcript};
use dmuc_testbed::distributed::{self, Distributed, PeerhostSetup};
use dmuc_testbed::scenarios::{MasterSetup, check, check_eq};
use dmuc_testbed::{DomainOptions, TestbedOptions};

/// Upper bound of the whole conversation.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

async fn system() -> dmuc_testbed::Result<Distributed> {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let mut options = TestbedOptions::new()
        .with_domain(DomainOptions::new(HOME))
        .counted();
    for domain in PEER_DOMAINS {
        options = options.with_domain(DomainOptions::new(domain));
    }
    distributed::start_distributed(
        master,
        distributed::peerhost_binary(master)?,
        options,
        &MasterSetup::default(),
        &PEER_DOMAINS,
        &demo::peerhost_setup(PeerhostSetup::default()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_conversation() {
    let system = system().await.expect("the system starts");
    let played = tokio::time::timeout(SCRIPT_TIMEOUT, demo::run_script(&system, false)).await;
    let conversation = match played {
        Ok(Ok(conversation)) => conversation,
        Ok(Err(e)) => panic!("the script failed: {e}\n\n{}", system.testbed.log_tails(60)),
        Err(_) => panic!(
            "the script took over {SCRIPT_TIMEOUT:?}\n\n{}",
            system.testbed.log_tails(60)
        ),
    };
    let t = &conversation.transcript;
    if let Err(e) = facts(t)
        .and_then(|()| crossing(t))
        .and_then(|()| split_act(t))
    {
        let e = match e {
            dmuc_testbed::Error::Check(why) => why,
            other => other.to_string(),
        };
        panic!("{e}\n--- transcript ---\n{}", t.lines.join("\n"));
    }
    assert_eq!(conversation.clients.len(), 4, "clients left in the room");
}

/// The kinds of a join sequence's steps, in arrival order.
fn kinds(join: &JoinSeen) -> Vec<&'static str> {
    join.steps
        .iter()
        .map(|s| match s {
            JoinStep::Occupant(_) => "occupant",
            JoinStep::SelfPresence(_) => "self",
            JoinStep::History { .. } => "history",
            JoinStep::Subject(_) => "subject",
        })
        .collect()
}

fn join<'a>(t: &'a Transcript, user: &str) -> dmuc_testbed::Result<&'a JoinSeen> {
    t.join_of(user)
        .ok_or_else(|| dmuc_testbed::Error::Check(format!("no join of {user}")))
}

/// What the clients received.
fn facts(t: &Transcript) -> dmuc_testbed::Result<()> {
    check_eq(t.room.as_str(), "lounge@conference.a.test", "room")?;
    check_eq(
        t.room_name.as_str(),
        demo::ROOM_NAME,
        "room name (disco#info)",
    )?;
    check(t.persistent, || "room not persistent in disco#info".into())?;
    check_eq(t.subject.as_str(), demo::SUBJECT, "subject")?;

    // alice created the room: 110 + 201, then the empty subject.
    let alice = join(t, "alice@a.test")?;
    check_eq(&kinds(alice), &vec!["self", "subject"], "alice's join")?;
    check(
        matches!(&alice.steps[0], JoinStep::SelfPresence(c) if c.contains(&110) && c.contains(&201)),
        || format!("creator's status codes: {:?}", alice.steps[0]),
    )?;
    check_eq(
        &alice.steps[1],
        &JoinStep::Subject(String::new()),
        "new room's subject",
    )?;

    // From the other domains: occupants, self (110), history, subject.
    let first = &t.messages[0];
    let history = JoinStep::History {
        body: first.body.clone(),
        stanza_id: first.deliveries[0].stanza_id.clone(),
    };
    for (user, before) in [("bob@b.test", 1), ("carol@c.test", 2), ("dave@b.test", 3)] {
        let seen = join(t, user)?;
        let mut expected = vec!["occupant"; before];
        expected.extend(["self", "history", "subject"]);
        check_eq(&kinds(seen), &expected, &format!("{user}'s join order"))?;
        check_eq(
            &seen.steps[0],
            &JoinStep::Occupant("alice".into()),
            "alice first",
        )?;
        check(
            matches!(&seen.steps[before], JoinStep::SelfPresence(c) if c.contains(&110)),
            || format!("{user}'s self-presence: {:?}", seen.steps[before]),
        )?;
        check_eq(
            &seen.steps[before + 1],
            &history,
            "history keeps the live stanza-id",
        )?;
        check_eq(
            &seen.steps[before + 2],
            &JoinStep::Subject(demo::SUBJECT.into()),
            &format!("{user}'s subject"),
        )?;
    }

    // Every message: every occupant got it, once (no second copy after
    // the last event), with one stanza-id, the same for every recipient
    // and unique per message; the sender's occupant-id as it joined.
    check_eq(&t.messages.len(), &6, "messages")?;
    let mut ids = Vec::new();
    for m in &t.messages {
        check_eq(
            &m.recipients(),
            &m.occupants.iter().map(String::as_str).collect::<Vec<_>>(),
            "recipients",
        )?;
        check_eq(
            m.deliveries[0].recipient.as_str(),
            m.sender.as_str(),
            "reflection to the sender first",
        )?;
        check(m.same_stanza_id_everywhere(), || {
            format!("stanza-ids differ: {m:?}")
        })?;
        ids.push(m.deliveries[0].stanza_id.clone());
        let sender = join(t, &m.sender)?;
        check(
            m.deliveries
                .iter()
                .all(|d| d.occupant_id == sender.occupant_id),
            || format!("occupant-id differs from {}'s: {m:?}", m.sender),
        )?;
    }
    check_eq(&t.messages[0].occupants.len(), &1, "alice alone at first")?;
    for m in &t.messages[1..] {
        check_eq(&m.occupants.len(), &4, "occupants")?;
    }
    check(t.duplicates.is_empty(), || {
        format!("second copies: {:?}", t.duplicates)
    })?;
    ids.sort();
    ids.dedup();
    check_eq(&ids.len(), &t.messages.len(), "distinct stanza-ids")?;

    check_eq(&t.private_messages.len(), &1, "private messages")?;
    let pm = &t.private_messages[0];
    check_eq(pm.sender.as_str(), "carol@c.test", "pm sender")?;
    check_eq(pm.recipient.as_str(), "bob@b.test", "pm recipient")?;
    check_eq(
        pm.from.as_str(),
        "lounge@conference.a.test/carol",
        "pm from",
    )?;
    check(pm.leaked_to.is_empty(), || {
        format!("pm leaked to {:?}", pm.leaked_to)
    })?;

    check_eq(&t.nick_changes.len(), &1, "nick changes")?;
    let nick = &t.nick_changes[0];
    check_eq(
        &(nick.old.as_str(), nick.new.as_str()),
        &("bob", "robert"),
        "nick change",
    )?;
    check_eq(&nick.seen_by.len(), &4, "nick change seen by")?;
    let bob = join(t, "bob@b.test")?;
    check(
        nick.occupant_ids.iter().all(|id| *id == bob.occupant_id),
        || format!("occupant-id changed with the nick: {nick:?}"),
    )
}

/// What crossed between domains.
fn crossing(t: &Transcript) -> dmuc_testbed::Result<()> {
    // Each message: nothing over s2s, whoever sent it: a user of another
    // domain's stanza goes up its peerhost's gRPC link, and the events go
    // down to the slaves over gRPC.
    let classic: Vec<Option<u64>> = t.messages.iter().map(|m| m.classic_s2s).collect();
    let classic: Vec<u64> = classic.into_iter().flatten().collect();
    check_eq(&classic, &vec![0, 4, 4, 4, 3, 3], "classic MUC (computed)")?;
    for m in &t.messages {
        let c = &m.crossed;
        check_eq(&c.s2s_stanzas(), &0, &format!("s2s for {m:?}"))?;
        if m.occupants.len() > 1 {
            check(c.grpc_bytes() > 0, || format!("no gRPC for {m:?}"))?;
        }
    }

    // Joins: nothing crossed s2s, neither the joiner's presence nor the
    // room's stanzas (the joiner's domain's slave served them), nor the
    // master's questions: each peerhost was vouched for by its domain
    // when it dialled in, before the script.
    for user in ["bob@b.test", "carol@c.test", "dave@b.test"] {
        let c = &join(t, user)?.crossed;
        check_eq(&c.s2s_stanzas(), &0, &format!("{user}: s2s {c:?}"))?;
        check(c.grpc_bytes() > 0, || format!("{user}: no gRPC {c:?}"))?;
    }

    // The private message and the nick change: up the gRPC link too.
    let pm = &t.private_messages[0].crossed;
    check_eq(&pm.s2s_stanzas(), &0, "private message over s2s")?;
    check_eq(
        &t.nick_changes[0].crossed.s2s_stanzas(),
        &0,
        "nick change over s2s",
    )?;
    // What the demo says about it.
    for said in [
        "✓ b.test's slave served bob's join",
        "✓ c.test's slave served carol's join",
        "✓ b.test's slave served dave's join",
        "✓ nothing crossed s2s into b.test: b.test's slave delivered it to bob",
        "s2s 0 (the message went up b.test's gRPC link)",
        "what crossed between domains",
    ] {
        check(t.lines.iter().any(|l| l.contains(said)), || {
            format!("the transcript does not say {said:?}")
        })?;
    }
    Ok(())
}

/// The last act: b.test split off, then whole again.
fn split_act(t: &Transcript) -> dmuc_testbed::Result<()> {
    let split = &t.split;
    check_eq(split.domain.as_str(), demo::SPLIT, "the domain split off")?;
    let on_b = ["bob@b.test", "dave@b.test"];
    let others = ["alice@a.test", "carol@c.test"];
    let told = |notices: &[Notice], says: &str| {
        let to: Vec<&str> = notices.iter().map(|n| n.recipient.as_str()).collect();
        check_eq(&to, &on_b.to_vec(), &format!("notices {says:?} to"))?;
        check(notices.iter().all(|n| n.text.contains(says)), || {
            format!("notices that do not say {says:?}: {notices:?}")
        })
    };
    // The cut: b.test's occupants told by their slave, nothing crossed.
    told(&split.split_notices, "split from its master")?;
    check_eq(&split.cut_crossed.s2s_stanzas(), &0, "s2s at the cut")?;

    // Each side talks among itself: b.test's messages stay on b.test
    // (nothing crosses at all) with the split's provisional ids; a.test's
    // and c.test's reach each other, and not b.test.
    let senders: Vec<&str> = split.messages.iter().map(|m| m.sender.as_str()).collect();
    check_eq(
        &senders,
        &vec!["bob@b.test", "dave@b.test", "alice@a.test", "carol@c.test"],
        "split-era senders",
    )?;
    for m in &split.messages {
        let from_b = on_b.contains(&m.sender.as_str());
        let side = if from_b { on_b } else { others };
        let mut got = m.recipients();
        got.sort_unstable();
        check_eq(&got, &side.to_vec(), &format!("who got {:?}", m.body))?;
        check(m.same_stanza_id_everywhere(), || {
            format!("stanza-ids differ: {m:?}")
        })?;
        check_eq(&m.classic_s2s, &None, "no classic figure for a split")?;
        check_eq(&m.crossed.s2s_stanzas(), &0, "s2s during the split")?;
        let id = &m.deliveries[0].stanza_id;
        if from_b {
            check(id.starts_with("split:b.test:"), || {
                format!("not a provisional id of b.test's split: {id}")
            })?;
            check_eq(
                &m.crossed.grpc_bytes(),
                &0,
                "gRPC for b.test's split message",
            )?;
        } else {
            check(m.crossed.grpc_bytes() > 0, || {
                format!("no gRPC to c.test's slave: {m:?}")
            })?;
        }
    }

    // The heal: b.test told, every split-era message of the other side to
    // each occupant, in the split's order, with the id its author saw;
    // b.test's delayed for a.test and c.test. Only gRPC crossed.
    told(&split.whole_notices, "whole again")?;
    let mut expected = Vec::new();
    for recipient in ["alice@a.test", "bob@b.test", "carol@c.test", "dave@b.test"] {
        let on_split = on_b.contains(&recipient);
        for m in &split.messages {
            if on_b.contains(&m.sender.as_str()) != on_split {
                expected.push((
                    recipient,
                    m.body.as_str(),
                    m.deliveries[0].stanza_id.as_str(),
                ));
            }
        }
    }
    let caught_up: Vec<(&str, &str, &str)> = split
        .caught_up
        .iter()
        .map(|c| (c.recipient.as_str(), c.body.as_str(), c.stanza_id.as_str()))
        .collect();
    check_eq(&caught_up, &expected, "caught up at the heal")?;
    for c in split
        .caught_up
        .iter()
        .filter(|c| others.contains(&c.recipient.as_str()))
    {
        check(c.delay.is_some(), || {
            format!("merged without a delay: {c:?}")
        })?;
    }
    check_eq(&split.heal_crossed.s2s_stanzas(), &0, "s2s at the heal")?;
    check(split.heal_crossed.grpc_bytes() > 0, || {
        "no gRPC at the heal".into()
    })?;
    check(split.left.is_empty(), || {
        format!("someone was seen leaving: {:?}", split.left)
    })?;

    // Every replica has the same history: the room's messages, the split's
    // among them, for a new joiner on a.test (the master) and on b.test
    // (its slave).
    let joiners: Vec<&str> = split.histories.iter().map(|h| h.joiner.as_str()).collect();
    check_eq(&joiners, &vec!["erin@a.test", "frank@b.test"], "latecomers")?;
    let history = &split.histories[0].messages;
    check_eq(
        &split.histories[1].messages,
        history,
        "frank's history is erin's",
    )?;
    let mut ids: Vec<&str> = history.iter().map(|(_, id)| id.as_str()).collect();
    let mut said: Vec<&str> = t
        .messages
        .iter()
        .chain(&split.messages)
        .map(|m| m.deliveries[0].stanza_id.as_str())
        .collect();
    ids.sort_unstable();
    said.sort_unstable();
    check_eq(&ids, &said, "the history holds every message once")?;

    for line in [
        "✂ b.test's gRPC link to the master is cut",
        "a classic MUC on a.test, its s2s link to b.test cut, would have kicked bob",
        "frank  ← joins on b.test, b.test's slave serves 10 history messages",
    ] {
        check(t.lines.iter().any(|l| l.contains(line)), || {
            format!("the transcript does not say {line:?}")
        })?;
    }
    Ok(())
}
