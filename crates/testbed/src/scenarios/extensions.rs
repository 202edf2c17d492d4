//! XEP-0359 stanza ids, XEP-0410 self-ping, XEP-0421 occupant ids.

use super::{Ctx, check, check_eq, check_error};
use crate::error::Result;
use crate::muc::occupant_jid;
use crate::stanza::{self, NS_OCCUPANT_ID, NS_PING, NS_SID, escape, show, stanza_ids};

/// XEP-0359: every live and history message carries one stanza-id by the
/// room, the same in both; a stanza-id forged by the sender is stripped.
pub async fn stanza_id(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("sid", &[]).await?;
    let id = bob.next_id();
    bob.send_raw(&format!(
        "<message type='groupchat' to='{}' id='{id}'><body>with forgery</body><stanza-id xmlns='{NS_SID}' by='{}' id='forged'/></message>",
        escape(&room),
        escape(&room)
    ))
    .await?;
    let live = alice.expect_groupchat(&room, &id).await?;
    let ids = stanza_ids(&live, &room);
    check(
        ids.len() == 1 && ids[0] != "forged" && !ids[0].is_empty(),
        || format!("expected one genuine stanza-id: {}", show(&live)),
    )?;
    let mut carol = ctx.local("carol").await?;
    let joined = carol.join(&room, "carol").await?;
    let history = joined
        .history
        .iter()
        .find(|m| stanza::attr(m, "id") == id)
        .ok_or_else(|| crate::Error::Check(format!("message {id} not in history: {joined:?}")))?;
    check_eq(&stanza_ids(history, &room), &ids, "stanza-id in history")
}

/// XEP-0410: a ping to one's own occupant JID is answered by the service;
/// from a non-occupant it is not-acceptable.
pub async fn self_ping(ctx: &Ctx) -> Result<()> {
    let (room, _alice, mut bob) = ctx.room_with_two("ping", &[]).await?;
    let ping = format!("<ping xmlns='{NS_PING}'/>");
    let pong = bob.iq("get", &occupant_jid(&room, "bob"), &ping).await?;
    check_eq(
        stanza::stanza_type(&pong),
        "result",
        &format!("self-ping: {}", show(&pong)),
    )?;
    let mut carol = ctx.local("carol").await?;
    let refused = carol
        .iq("get", &occupant_jid(&room, "carol"), &ping)
        .await?;
    check_error(&refused, "cancel", "not-acceptable")
}

/// The occupant-id of `el`, required.
fn required_occupant_id(el: &minidom::Element) -> Result<String> {
    stanza::occupant_id(el)
        .map(str::to_owned)
        .ok_or_else(|| crate::Error::Check(format!("no occupant-id: {}", show(el))))
}

/// XEP-0421: presences and messages carry an occupant-id, stable per bare
/// JID across leave and rejoin (even under another nick), distinct between
/// users; a forged one is replaced.
pub async fn occupant_id(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("occid");
    let mut alice = ctx.local("alice").await?;
    let created = alice.create_instant_room(&room, "alice").await?;
    let alice_id = required_occupant_id(&created.self_presence)?;
    let mut bob = ctx.remote("bob").await?;
    let joined = bob.join(&room, "bob").await?;
    let bob_id = required_occupant_id(&joined.self_presence)?;
    check(bob_id != alice_id, || {
        format!("two users share occupant-id {bob_id}")
    })?;
    check_eq(
        &required_occupant_id(&joined.occupants[0])?,
        &alice_id,
        "alice's id seen by bob",
    )?;
    let seen = alice
        .expect_presence_from(&room, "bob", |el| stanza::stanza_type(el).is_empty())
        .await?;
    check_eq(
        &required_occupant_id(&seen)?,
        &bob_id,
        "bob's id seen by alice",
    )?;

    let id = bob.next_id();
    bob.send_raw(&format!(
        "<message type='groupchat' to='{}' id='{id}'><body>who am I</body><occupant-id xmlns='{NS_OCCUPANT_ID}' id='forged'/></message>",
        escape(&room)
    ))
    .await?;
    let message = alice.expect_groupchat(&room, &id).await?;
    let ids: Vec<&str> = message
        .children()
        .filter(|c| c.is("occupant-id", NS_OCCUPANT_ID))
        .map(|c| stanza::attr(c, "id"))
        .collect();
    check_eq(&ids, &vec![bob_id.as_str()], "occupant-id of a message")?;
    bob.expect_groupchat(&room, &id).await?;

    bob.leave(&room, "bob").await?;
    let rejoined = bob.join(&room, "bobby").await?;
    check_eq(
        &required_occupant_id(&rejoined.self_presence)?,
        &bob_id,
        "occupant-id after rejoin",
    )
}
