//! Entering rooms (XEP-0045 §7.2, §10.1): join sequence, history, errors,
//! creation and locking.

use super::{Ctx, check, check_eq, check_error, check_no_status, check_status};
use crate::client::Client;
use crate::error::Result;
use crate::muc::{HistoryLimits, JoinOptions, Joined, occupant_jid};
use crate::stanza::{self, affiliation_role, body, delay, escape, has_status, is_presence, show};

/// The bodies of history messages.
fn bodies(joined: &Joined) -> Vec<String> {
    joined.history.iter().filter_map(body).collect()
}

/// Sends `bodies` to `room` and waits for each reflection; returns their ids.
async fn say_all(client: &mut Client, room: &str, bodies: &[&str]) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for b in bodies {
        ids.push(stanza::attr(&client.say(room, b).await?, "id").to_owned());
    }
    Ok(ids)
}

/// Sets the subject of `room` and waits for its reflection.
pub(crate) async fn set_subject(
    client: &mut Client,
    room: &str,
    subject: &str,
) -> Result<minidom::Element> {
    client.set_subject(room, subject).await
}

/// §7.2.1: a presence without `<x xmlns='…muc'/>` from a non-occupant is
/// not a join: no self-presence, nobody sees a new occupant.
pub async fn presence_without_muc_x_is_not_a_join(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("nox");
    let mut alice = ctx.local("alice").await?;
    alice.create_instant_room(&room, "alice").await?;
    let mut bob = ctx.remote("bob").await?;
    bob.send_raw(&format!(
        "<presence to='{}'/>",
        escape(&occupant_jid(&room, "bob"))
    ))
    .await?;
    // The room handles a sender's stanzas in order: once it answered bob's
    // disco, whatever bob's presence caused has been sent.
    bob.barrier(&room).await?;
    alice.barrier(&room).await?;
    bob.expect_none_pending("a non-error presence from the room", |el| {
        is_presence(el) && stanza::is_from_room(el, &room) && stanza::stanza_type(el) != "error"
    })?;
    alice.expect_none_pending("bob's presence", |el| {
        is_presence(el) && stanza::from(el) == occupant_jid(&room, "bob")
    })
}

/// §7.2.2–7.2.15: others' presences, then self-presence (110; 201 on
/// creation; 100 when non-anonymous), then history with delay, then the
/// subject last.
pub async fn join_order(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("order");
    let mut alice = ctx.local("alice").await?;
    let created = alice.create_instant_room(&room, "alice").await?;
    check_status(&created.self_presence, &[110, 201])?;
    check_no_status(&created.self_presence, &[100])?;
    check(
        created.occupants.is_empty() && created.history.is_empty(),
        || format!("a new room has no occupants or history: {created:?}"),
    )?;
    let mut carol = ctx.local("carol").await?;
    carol.join(&room, "carol").await?;
    let ids = say_all(&mut alice, &room, &["one", "two"]).await?;
    set_subject(&mut alice, &room, "the topic").await?;

    let mut bob = ctx.remote("bob").await?;
    let joined = bob.join(&room, "bob").await?;
    let mut others: Vec<&str> = joined.occupants.iter().map(stanza::from).collect();
    others.sort_unstable();
    let (a, c) = (occupant_jid(&room, "alice"), occupant_jid(&room, "carol"));
    check_eq(
        &others,
        &vec![a.as_str(), c.as_str()],
        "occupant presences before self",
    )?;
    for p in &joined.occupants {
        check_no_status(p, &[110])?;
    }
    check_eq(
        stanza::from(&joined.self_presence),
        occupant_jid(&room, "bob").as_str(),
        "self-presence from",
    )?;
    check_status(&joined.self_presence, &[110])?;
    check_no_status(&joined.self_presence, &[201, 100])?;
    check_eq(
        &bodies(&joined),
        &vec!["one".to_owned(), "two".to_owned()],
        "history bodies",
    )?;
    for (message, id) in joined.history.iter().zip(&ids) {
        check_eq(
            stanza::attr(message, "id"),
            id.as_str(),
            "history message id",
        )?;
        check_eq(stanza::from(message), a.as_str(), "history message from")?;
        check(
            delay(message)
                .is_some_and(|d| stanza::attr(d, "from") == room && d.attr("stamp").is_some()),
            || format!("history without delay from the room: {}", show(message)),
        )?;
    }
    check_eq(
        &stanza::child_text(&joined.subject, "subject"),
        &Some("the topic".to_owned()),
        "subject",
    )?;
    let seen = alice
        .expect_presence_from(&room, "bob", |p| stanza::stanza_type(p).is_empty())
        .await?;
    check_no_status(&seen, &[110])?;

    alice
        .configure(&room, &[("muc#roomconfig_whois", &["anyone"])])
        .await?;
    let mut dave = ctx.remote("dave").await?;
    let joined = dave.join(&room, "dave").await?;
    check_status(&joined.self_presence, &[110, 100])
}

/// §7.2.3–4: role and affiliation in every occupant presence, also
/// unavailable; real JIDs only to moderators in a semi-anonymous room.
pub async fn roles_and_affiliations_in_presences(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("roles");
    let mut alice = ctx.local("alice").await?;
    let created = alice.create_instant_room(&room, "alice").await?;
    check_eq(
        &affiliation_role(&created.self_presence),
        &("owner", "moderator"),
        "creator",
    )?;
    let mut bob = ctx.remote("bob").await?;
    let joined = bob.join(&room, "bob").await?;
    check_eq(
        &affiliation_role(&joined.self_presence),
        &("none", "participant"),
        "joiner",
    )?;
    let alice_seen = &joined.occupants[0];
    check_eq(
        &affiliation_role(alice_seen),
        &("owner", "moderator"),
        "owner seen by participant",
    )?;
    check(
        stanza::muc_item(alice_seen).is_some_and(|i| i.attr("jid").is_none()),
        || {
            format!(
                "semi-anonymous room shows a real JID to a participant: {}",
                show(alice_seen)
            )
        },
    )?;
    let bob_seen = alice
        .expect_presence_from(&room, "bob", |p| stanza::stanza_type(p).is_empty())
        .await?;
    check_eq(
        &affiliation_role(&bob_seen),
        &("none", "participant"),
        "participant seen by owner",
    )?;
    check(
        stanza::muc_item(&bob_seen).is_some_and(|i| stanza::attr(i, "jid") == bob.jid()),
        || format!("moderator does not see the real JID: {}", show(&bob_seen)),
    )?;
    bob.leave(&room, "bob").await?;
    let gone = alice
        .expect_presence_from(&room, "bob", |p| stanza::stanza_type(p) == "unavailable")
        .await?;
    check_eq(
        &affiliation_role(&gone),
        &("none", "none"),
        "unavailable presence",
    )
}

/// §7.2.14: maxstanzas, maxchars=0, seconds, since.
pub async fn history_limits(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("history");
    let mut alice = ctx.local("alice").await?;
    alice.create_instant_room(&room, "alice").await?;
    say_all(&mut alice, &room, &["m1", "m2", "m3"]).await?;
    let all: Vec<String> = ["m1", "m2", "m3"].map(String::from).to_vec();
    let cases: [(HistoryLimits, &[String]); 5] = [
        (
            HistoryLimits {
                maxstanzas: Some(2),
                ..Default::default()
            },
            &all[1..],
        ),
        (
            HistoryLimits {
                maxstanzas: Some(0),
                ..Default::default()
            },
            &[],
        ),
        (
            HistoryLimits {
                maxchars: Some(0),
                ..Default::default()
            },
            &[],
        ),
        (
            HistoryLimits {
                seconds: Some(3600),
                ..Default::default()
            },
            &all,
        ),
        (
            HistoryLimits {
                since: Some("2999-01-01T00:00:00Z".into()),
                ..Default::default()
            },
            &[],
        ),
    ];
    let mut bob = ctx.remote("bob").await?;
    for (limits, expected) in cases {
        let joined = bob
            .join_ok(&room, "bob", &JoinOptions::history(limits.clone()))
            .await?;
        check_eq(
            &bodies(&joined),
            &expected.to_vec(),
            &format!("history with {limits:?}"),
        )?;
        bob.leave(&room, "bob").await?;
    }
    Ok(())
}

/// Creates a room with `fields` as alice and returns it with alice and a
/// remote bob who has not joined.
async fn room_and_outsider(
    ctx: &Ctx,
    tag: &str,
    fields: &[(&str, &[&str])],
) -> Result<(String, Client, Client)> {
    let room = ctx.room(tag);
    let mut alice = ctx.local("alice").await?;
    alice.create_room(&room, "alice", fields).await?;
    Ok((room, alice, ctx.remote("bob").await?))
}

/// §7.2.6: a password-protected room refuses a missing or wrong password
/// with not-authorized.
pub async fn join_error_password(ctx: &Ctx) -> Result<()> {
    let (room, _alice, mut bob) = room_and_outsider(
        ctx,
        "password",
        &[
            ("muc#roomconfig_passwordprotectedroom", &["1"]),
            ("muc#roomconfig_roomsecret", &["s3cret"]),
        ],
    )
    .await?;
    let error = bob
        .join_refused(&room, "bob", &JoinOptions::default())
        .await?;
    check_error(&error, "auth", "not-authorized")?;
    let error = bob
        .join_refused(&room, "bob", &JoinOptions::password("wrong"))
        .await?;
    check_error(&error, "auth", "not-authorized")?;
    bob.join_ok(&room, "bob", &JoinOptions::password("s3cret"))
        .await?;
    Ok(())
}

/// §7.2.7: a members-only room refuses non-members with
/// registration-required, and admits them once they are members.
pub async fn join_error_members_only(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) =
        room_and_outsider(ctx, "members", &[("muc#roomconfig_membersonly", &["1"])]).await?;
    let error = bob
        .join_refused(&room, "bob", &JoinOptions::default())
        .await?;
    check_error(&error, "auth", "registration-required")?;
    let granted = alice
        .admin_set(
            &room,
            &[("jid", bob.bare_jid()), ("affiliation", "member")],
            None,
        )
        .await?;
    check_eq(stanza::stanza_type(&granted), "result", "member grant")?;
    let joined = bob.join(&room, "bob").await?;
    check_eq(
        &affiliation_role(&joined.self_presence),
        &("member", "participant"),
        "member joins",
    )
}

/// §7.2.8: an outcast is refused with forbidden.
pub async fn join_error_banned(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = room_and_outsider(ctx, "banned", &[]).await?;
    let banned = alice
        .admin_set(
            &room,
            &[("jid", bob.bare_jid()), ("affiliation", "outcast")],
            Some("go away"),
        )
        .await?;
    check_eq(stanza::stanza_type(&banned), "result", "ban")?;
    let error = bob
        .join_refused(&room, "bob", &JoinOptions::default())
        .await?;
    check_error(&error, "auth", "forbidden")
}

/// §7.2.9: a nick held by another user is refused with conflict.
pub async fn join_error_nick_conflict(ctx: &Ctx) -> Result<()> {
    let (room, _alice, mut bob) = room_and_outsider(ctx, "conflict", &[]).await?;
    let error = bob
        .join_refused(&room, "alice", &JoinOptions::default())
        .await?;
    check_error(&error, "cancel", "conflict")
}

/// §7.2.10: a full room refuses with service-unavailable; admins and
/// owners still enter.
pub async fn join_error_room_full(ctx: &Ctx) -> Result<()> {
    if !ctx.expect.max_users {
        tracing::info!("skipped: the service has no occupant limit (Expect::max_users)");
        return Ok(());
    }
    let (room, mut alice, mut bob) =
        room_and_outsider(ctx, "full", &[("muc#roomconfig_maxusers", &["1"])]).await?;
    let error = bob
        .join_refused(&room, "bob", &JoinOptions::default())
        .await?;
    check_error(&error, "wait", "service-unavailable")?;
    let mut carol = ctx.local("carol").await?;
    let granted = alice
        .admin_set(
            &room,
            &[("jid", carol.bare_jid()), ("affiliation", "admin")],
            None,
        )
        .await?;
    check_eq(stanza::stanza_type(&granted), "result", "admin grant")?;
    carol.join(&room, "carol").await?;
    Ok(())
}

/// §7.2.11/§10.1.1: a room awaiting its initial configuration refuses
/// others with item-not-found.
pub async fn join_error_locked_room(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("locked");
    let mut alice = ctx.local("alice").await?;
    let created = alice.join(&room, "alice").await?;
    check_status(&created.self_presence, &[201])?;
    let mut bob = ctx.remote("bob").await?;
    let error = bob
        .join_refused(&room, "bob", &JoinOptions::default())
        .await?;
    check_error(&error, "cancel", "item-not-found")
}

/// §7.2.1: a join from an already-joined full JID resends the whole state
/// (presences, self-presence, history, subject) and is not a leave.
pub async fn rejoin_same_full_jid(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("rejoin", &[]).await?;
    alice.say(&room, "before rejoin").await?;
    bob.expect_groupchat_body(&room, "before rejoin").await?;
    let rejoined = bob.join(&room, "bob").await?;
    check_eq(
        &rejoined
            .occupants
            .iter()
            .map(stanza::from)
            .collect::<Vec<_>>(),
        &vec![occupant_jid(&room, "alice").as_str()],
        "occupants on rejoin",
    )?;
    check_status(&rejoined.self_presence, &[110])?;
    check_eq(
        &bodies(&rejoined),
        &vec!["before rejoin".to_owned()],
        "history on rejoin",
    )?;
    bob.barrier(&room).await?;
    alice.barrier(&room).await?;
    alice.expect_none_pending("bob leaving", |el| {
        stanza::from(el) == occupant_jid(&room, "bob") && stanza::stanza_type(el) == "unavailable"
    })
}

/// §10.1: the creator gets 201 and owner affiliation, an empty subject;
/// the room is locked until the owner accepts the instant configuration.
pub async fn create_room_locked_until_configured(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("create");
    let mut alice = ctx.local("alice").await?;
    let created = alice.join(&room, "alice").await?;
    check_status(&created.self_presence, &[110, 201])?;
    check_eq(
        &affiliation_role(&created.self_presence),
        &("owner", "moderator"),
        "creator",
    )?;
    check_eq(
        &stanza::child_text(&created.subject, "subject"),
        &Some(String::new()),
        "initial subject is empty",
    )?;
    let mut bob = ctx.remote("bob").await?;
    let error = bob
        .join_refused(&room, "bob", &JoinOptions::default())
        .await?;
    check_error(&error, "cancel", "item-not-found")?;
    alice
        .iq_ok(
            "set",
            &room,
            &format!(
                "<query xmlns='{}'><x xmlns='{}' type='submit'/></query>",
                stanza::NS_MUC_OWNER,
                stanza::NS_DATA
            ),
        )
        .await?;
    let joined = bob.join(&room, "bob").await?;
    check(!has_status(&joined.self_presence, 201), || {
        "201 for a joiner".into()
    })?;
    let owners = alice.admin_list(&room, "affiliation", "owner").await?;
    check(
        owners
            .iter()
            .any(|i| stanza::attr(i, "jid") == alice.bare_jid()),
        || format!("creator not in the owner list: {owners:?}"),
    )
}
