//! What occupants do (XEP-0045 §7.4–7.7, §7.14, §8.1): messages, nick and
//! status changes, leaving, subject.

use super::join::set_subject;
use super::{Ctx, check, check_eq, check_error, check_error_kinds, check_no_status, check_status};
use crate::error::Result;
use crate::muc::occupant_jid;
use crate::stanza::{
    self, NS_DISCO_INFO, affiliation_role, body, escape, has_status, is_message, is_presence,
    muc_item, muc_user, origin_id, show, stanza_ids, stanza_type,
};

/// §7.4: a groupchat message is reflected to every occupant, the sender
/// included, from the sender's occupant JID, with the same id, origin-id
/// kept and one stanza-id by the room (the same for every recipient).
pub async fn groupchat_reflection(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("reflect", &[]).await?;
    let id = bob.next_id();
    bob.send_raw(&format!(
        "<message type='groupchat' to='{}' id='{id}'><body>hello all</body><origin-id xmlns='{}' id='origin-{id}'/></message>",
        escape(&room),
        stanza::NS_SID
    ))
    .await?;
    let mut stanza_id = None;
    for client in [&mut bob, &mut alice] {
        let m = client.expect_groupchat(&room, &id).await?;
        check_eq(
            stanza::from(&m),
            occupant_jid(&room, "bob").as_str(),
            "reflected from",
        )?;
        check_eq(stanza::attr(&m, "to"), client.jid(), "reflected to")?;
        check_eq(&body(&m), &Some("hello all".to_owned()), "reflected body")?;
        check_eq(
            &origin_id(&m),
            &Some(format!("origin-{id}").as_str()),
            "origin-id",
        )?;
        let ids = stanza_ids(&m, &room);
        check_eq(&ids.len(), &1, "stanza-ids by the room")?;
        match &stanza_id {
            None => stanza_id = Some(ids[0].to_owned()),
            Some(first) => check_eq(ids[0], first.as_str(), "stanza-id for every recipient")?,
        }
    }
    Ok(())
}

/// §7.4/§8.3: in a moderated room a visitor's groupchat is refused with
/// forbidden and reaches nobody.
pub async fn groupchat_visitor_forbidden(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx
        .room_with_two("visitor", &[("muc#roomconfig_moderatedroom", &["1"])])
        .await?;
    let id = bob.send_groupchat(&room, "may I speak?").await?;
    let error = bob
        .expect("groupchat error", |el| {
            is_message(el) && stanza::attr(el, "id") == id
        })
        .await?;
    check_error(&error, "auth", "forbidden")?;
    alice.barrier(&room).await?;
    alice.expect_none_pending("the visitor's message", |el| stanza::attr(el, "id") == id)
}

/// §7.4: a groupchat message from a non-occupant is refused with
/// not-acceptable.
pub async fn groupchat_non_occupant_not_acceptable(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("outsider");
    let mut alice = ctx.local("alice").await?;
    alice.create_instant_room(&room, "alice").await?;
    let mut bob = ctx.remote("bob").await?;
    let id = bob.send_groupchat(&room, "let me in").await?;
    let error = bob
        .expect("groupchat error", |el| {
            is_message(el) && stanza::attr(el, "id") == id
        })
        .await?;
    // XEP-0045 shows type modify in an example, RFC 6120 allows either;
    // Prosody says cancel.
    check_error_kinds(&error, &["modify", "cancel"], "not-acceptable")?;
    bob.barrier(&room).await?;
    alice.barrier(&room).await?;
    alice.expect_none_pending("the outsider's message", |el| stanza::attr(el, "id") == id)
}

/// §7.5: a private message to an occupant JID arrives from the sender's
/// occupant JID with a muc#user `<x/>`; an unknown nick is item-not-found.
pub async fn private_message(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("pm", &[]).await?;
    let id = bob.next_id();
    bob.send_raw(&format!(
        "<message type='chat' to='{}' id='{id}'><body>psst</body></message>",
        escape(&occupant_jid(&room, "alice"))
    ))
    .await?;
    let pm = alice
        .expect("private message", |el| {
            is_message(el) && stanza::attr(el, "id") == id
        })
        .await?;
    check_eq(
        stanza::from(&pm),
        occupant_jid(&room, "bob").as_str(),
        "pm from",
    )?;
    check_eq(stanza_type(&pm), "chat", "pm type")?;
    check_eq(&body(&pm), &Some("psst".to_owned()), "pm body")?;
    check(muc_user(&pm).is_some(), || {
        format!("pm without muc#user x: {}", show(&pm))
    })?;

    let id = bob.next_id();
    bob.send_raw(&format!(
        "<message type='chat' to='{}' id='{id}'><body>anyone?</body></message>",
        escape(&occupant_jid(&room, "nobody"))
    ))
    .await?;
    let error = bob
        .expect("pm error", |el| {
            is_message(el) && stanza::attr(el, "id") == id
        })
        .await?;
    check_error(&error, "cancel", "item-not-found")
}

/// IQs to an occupant JID are relayed to the occupant, from the sender's
/// occupant JID, and its answer comes back with the sender's own id (how
/// vCards of occupants work).
pub async fn iq_between_occupants(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("iq-relay", &[]).await?;
    let id = bob.next_id();
    bob.send_raw(&format!(
        "<iq type='get' to='{}' id='{id}'><query xmlns='urn:example:relay'/></iq>",
        escape(&occupant_jid(&room, "alice"))
    ))
    .await?;
    let relayed = alice
        .expect("relayed iq", |el| {
            stanza::is_iq(el)
                && stanza_type(el) == "get"
                && stanza::from(el) == occupant_jid(&room, "bob")
        })
        .await?;
    check(
        relayed.get_child("query", "urn:example:relay").is_some(),
        || format!("payload lost: {}", show(&relayed)),
    )?;
    alice
        .send_raw(&format!(
            "<iq type='result' to='{}' id='{}'><query xmlns='urn:example:relay'><answer/></query></iq>",
            escape(stanza::from(&relayed)),
            escape(stanza::attr(&relayed, "id"))
        ))
        .await?;
    let answer = bob
        .expect("relayed answer", |el| {
            stanza::is_iq(el) && stanza::attr(el, "id") == id
        })
        .await?;
    check_eq(stanza_type(&answer), "result", "answer type")?;
    check_eq(
        stanza::from(&answer),
        occupant_jid(&room, "alice").as_str(),
        "answer from",
    )?;
    check(
        answer
            .get_child("query", "urn:example:relay")
            .is_some_and(|q| q.children().any(|c| c.name() == "answer")),
        || format!("answer payload lost: {}", show(&answer)),
    )
}

/// §7.6: a nick change is an unavailable presence with 303 and the new
/// nick, then an available one from the new nick; a taken nick is a
/// conflict and changes nothing.
pub async fn nick_change(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("nick", &[]).await?;
    bob.send_raw(&format!(
        "<presence to='{}'/>",
        escape(&occupant_jid(&room, "robert"))
    ))
    .await?;
    for (client, own) in [(&mut bob, true), (&mut alice, false)] {
        let old = client
            .expect("unavailable of the old nick", |el| {
                is_presence(el) && stanza::from(el) == occupant_jid(&room, "bob")
            })
            .await?;
        check_eq(stanza_type(&old), "unavailable", "old nick presence type")?;
        check_status(&old, &[303])?;
        check_eq(
            &muc_item(&old).and_then(|i| i.attr("nick")),
            &Some("robert"),
            "new nick in the 303 item",
        )?;
        // The very next presence from the room is the new nick's.
        let new = client
            .expect("presence of the new nick", |el| {
                is_presence(el) && stanza::is_from_room(el, &room)
            })
            .await?;
        check_eq(
            stanza::from(&new),
            occupant_jid(&room, "robert").as_str(),
            "new nick presence",
        )?;
        check_eq(stanza_type(&new), "", "new nick presence type")?;
        if own {
            check_status(&old, &[110])?;
            check_status(&new, &[110])?;
        } else {
            check_no_status(&new, &[110])?;
        }
    }
    bob.send_raw(&format!(
        "<presence to='{}'/>",
        escape(&occupant_jid(&room, "alice"))
    ))
    .await?;
    let error = bob
        .expect("nick conflict", |el| {
            is_presence(el) && stanza_type(el) == "error"
        })
        .await?;
    check_error(&error, "cancel", "conflict")?;
    let m = bob.say(&room, "still robert").await?;
    check_eq(
        stanza::from(&m),
        occupant_jid(&room, "robert").as_str(),
        "nick after conflict",
    )
}

/// §7.7: a presence update (show, status) is broadcast to everyone.
pub async fn status_change_broadcast(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("status", &[]).await?;
    bob.send_raw(&format!(
        "<presence to='{}'><show>away</show><status>brb</status></presence>",
        escape(&occupant_jid(&room, "bob"))
    ))
    .await?;
    for (client, own) in [(&mut alice, false), (&mut bob, true)] {
        let p = client
            .expect_presence_from(&room, "bob", |el| stanza::child_text(el, "show").is_some())
            .await?;
        check_eq(
            &stanza::child_text(&p, "show"),
            &Some("away".to_owned()),
            "show",
        )?;
        check_eq(
            &stanza::child_text(&p, "status"),
            &Some("brb".to_owned()),
            "status",
        )?;
        check_eq(&affiliation_role(&p), &("none", "participant"), "item")?;
        check_eq(&has_status(&p, 110), &own, "110 only to self")?;
    }
    Ok(())
}

/// §7.14: leaving: unavailable with 110 to self, the status text passed
/// on to the others, role none.
pub async fn leave_room(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("leave", &[]).await?;
    bob.send_raw(&format!(
        "<presence type='unavailable' to='{}'><status>bye</status></presence>",
        escape(&occupant_jid(&room, "bob"))
    ))
    .await?;
    let own = bob
        .expect_presence_from(&room, "bob", |el| stanza_type(el) == "unavailable")
        .await?;
    check_status(&own, &[110])?;
    let seen = alice
        .expect_presence_from(&room, "bob", |el| stanza_type(el) == "unavailable")
        .await?;
    check_no_status(&seen, &[110])?;
    check_eq(
        &stanza::child_text(&seen, "status"),
        &Some("bye".to_owned()),
        "status text",
    )?;
    check_eq(&affiliation_role(&seen), &("none", "none"), "item")
}

/// §7.14/§10.1.2: a temporary room is destroyed when its last occupant
/// leaves; joining it again creates it (201).
pub async fn temporary_room_destroyed_when_empty(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("temporary");
    let mut alice = ctx.local("alice").await?;
    alice.create_instant_room(&room, "alice").await?;
    alice.leave(&room, "alice").await?;
    let mut bob = ctx.remote("bob").await?;
    let info = bob
        .iq("get", &room, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
        .await?;
    check_error(&info, "cancel", "item-not-found")?;
    let joined = bob.join(&room, "bob").await?;
    check_status(&joined.self_presence, &[201])
}

/// §8.1: a subject change is a message with `<subject/>` and no body,
/// broadcast and shown last to joiners; subject plus body is an ordinary
/// message; participants may not change it when `changesubject` is off.
pub async fn subject_change(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx
        .room_with_two("subject", &[("muc#roomconfig_changesubject", &["0"])])
        .await?;
    set_subject(&mut alice, &room, "first topic").await?;
    let seen = bob
        .expect("subject broadcast", |el| {
            stanza::is_subject_message(el) && stanza::is_from_room(el, &room)
        })
        .await?;
    check_eq(
        &stanza::child_text(&seen, "subject"),
        &Some("first topic".to_owned()),
        "subject",
    )?;
    check_eq(
        stanza::from(&seen),
        occupant_jid(&room, "alice").as_str(),
        "subject from",
    )?;

    let id = alice.next_id();
    alice
        .send_raw(&format!(
            "<message type='groupchat' to='{}' id='{id}'><subject>not a topic</subject><body>just text</body></message>",
            escape(&room)
        ))
        .await?;
    bob.expect_groupchat(&room, &id).await?;

    let id = bob.next_id();
    bob.send_raw(&format!(
        "<message type='groupchat' to='{}' id='{id}'><subject>bob's topic</subject></message>",
        escape(&room)
    ))
    .await?;
    let error = bob
        .expect("subject refusal", |el| {
            is_message(el) && stanza::attr(el, "id") == id
        })
        .await?;
    check_error(&error, "auth", "forbidden")?;

    let mut carol = ctx.local("carol").await?;
    let joined = carol.join(&room, "carol").await?;
    check_eq(
        &stanza::child_text(&joined.subject, "subject"),
        &Some("first topic".to_owned()),
        "subject shown to a joiner",
    )
}
