//! End to end: the scripted conversation of the local demo (`dmuc-demo`,
//! `scripts/demo`) against `dmuc-master`, with users of `a.test` and of
//! `b.test` (over s2s), checking the facts of the transcript: the room's
//! configuration, the join order, one stanza-id per message that every
//! recipient shares, stable occupant-ids, the private message reaching only
//! its addressee, the nick change and the departure seen by everyone.

use dmuc_testbed::demo::{self, JoinSeen, JoinStep, Transcript};
use dmuc_testbed::scenarios::{self, Ctx, check, check_eq};

async fn dmuc() -> dmuc_testbed::Result<Ctx> {
    Ctx::start_dmuc_master(env!("CARGO_BIN_EXE_dmuc-master")).await
}

#[test]
fn demo_conversation() {
    scenarios::run(dmuc, "demo_conversation", async |ctx: &Ctx| {
        let conversation = demo::run_script(&ctx.testbed, &ctx.service, false).await?;
        let t = &conversation.transcript;
        facts(t).map_err(|e| {
            let e = match e {
                dmuc_testbed::Error::Check(why) => why,
                other => other.to_string(),
            };
            dmuc_testbed::Error::Check(format!("{e}\n--- transcript ---\n{}", t.lines.join("\n")))
        })?;
        check_eq(&conversation.clients.len(), &2, "clients left in the room")
    });
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

    // Over s2s: occupants, self (110), history, subject.
    let bob = join(t, "bob@b.test")?;
    check_eq(
        &kinds(bob),
        &vec!["occupant", "self", "history", "subject"],
        "bob's join order",
    )?;
    check_eq(
        &bob.steps[0],
        &JoinStep::Occupant("alice".into()),
        "bob sees alice",
    )?;
    check(
        matches!(&bob.steps[1], JoinStep::SelfPresence(c) if c.contains(&110)),
        || format!("bob's self-presence: {:?}", bob.steps[1]),
    )?;
    let first = &t.messages[0];
    check_eq(
        &bob.steps[2],
        &JoinStep::History {
            body: first.body.clone(),
            stanza_id: first.deliveries[0].stanza_id.clone(),
        },
        "history keeps the live stanza-id",
    )?;
    check_eq(
        &bob.steps[3],
        &JoinStep::Subject(demo::SUBJECT.into()),
        "bob's subject",
    )?;
    let carol = join(t, "carol@b.test")?;
    check_eq(
        &kinds(carol),
        &vec![
            "occupant", "occupant", "self", "history", "history", "subject",
        ],
        "carol's join order",
    )?;

    // Every message: one stanza-id, the same for every recipient, unique
    // per message; the sender's occupant-id as it joined.
    check_eq(&t.messages.len(), &6, "messages")?;
    let mut ids = Vec::new();
    for m in &t.messages {
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
    ids.sort();
    ids.dedup();
    check_eq(&ids.len(), &t.messages.len(), "distinct stanza-ids")?;
    for m in &t.messages[2..] {
        check_eq(&m.deliveries.len(), &3, "recipients with three occupants")?;
        check_eq(
            m.deliveries[0].recipient.as_str(),
            m.sender.as_str(),
            "reflection to the sender",
        )?;
    }

    check_eq(&t.private_messages.len(), &1, "private messages")?;
    let pm = &t.private_messages[0];
    check_eq(pm.recipient.as_str(), "alice@a.test", "pm recipient")?;
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
    check_eq(&nick.seen_by.len(), &3, "nick change seen by")?;
    let renamed = &t.messages[5];
    check_eq(
        renamed.deliveries[0].from.as_str(),
        "lounge@conference.a.test/robert",
        "message after the nick change",
    )?;

    check_eq(&t.departures.len(), &1, "departures")?;
    check_eq(t.departures[0].nick.as_str(), "carol", "who left")?;
    check_eq(
        &t.departures[0].seen_by,
        &vec![
            "carol@b.test".to_owned(),
            "alice@a.test".to_owned(),
            "bob@b.test".to_owned(),
        ],
        "departure seen by",
    )
}
