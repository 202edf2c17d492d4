//! Misdirected or malformed input: the service answers with the right
//! error and keeps going.

use super::{Ctx, check, check_error};
use crate::error::Result;
use crate::muc::{JoinOptions, occupant_jid};
use crate::stanza::{self, error_condition, escape, is_message, show};

/// A private message to an occupant of a room that does not exist is
/// item-not-found.
pub async fn message_to_unknown_room_occupant(ctx: &Ctx) -> Result<()> {
    let mut bob = ctx.remote("bob").await?;
    let id = bob.next_id();
    bob.send_raw(&format!(
        "<message type='chat' to='{}' id='{id}'><body>hello?</body></message>",
        escape(&occupant_jid(&ctx.room("ghost"), "nobody"))
    ))
    .await?;
    let error = bob
        .expect("error for a message to nowhere", |el| {
            is_message(el) && stanza::attr(el, "id") == id
        })
        .await?;
    check_error(&error, "cancel", "item-not-found")
}

/// An IQ in an unknown namespace to a room is service-unavailable or
/// feature-not-implemented (RFC 6120 §8.3.3), type cancel, and the room
/// still works afterwards.
pub async fn unknown_iq_namespace_to_room(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, _bob) = ctx.room_with_two("unknown-iq", &[]).await?;
    let response = alice
        .iq("get", &room, "<query xmlns='urn:example:dmuc:unknown'/>")
        .await?;
    check(
        stanza::stanza_type(&response) == "error"
            && matches!(
                error_condition(&response),
                Some(("cancel", "service-unavailable" | "feature-not-implemented"))
            ),
        || {
            format!(
                "expected service-unavailable or feature-not-implemented: {}",
                show(&response)
            )
        },
    )?;
    alice.say(&room, "still alive").await?;
    Ok(())
}

/// §7.2.9 / RFC 7622: a nick that fails resourceprep (here a Unicode
/// non-character) is refused with jid-malformed.
pub async fn nick_fails_resourceprep(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("badnick");
    let mut alice = ctx.local("alice").await?;
    alice.create_instant_room(&room, "alice").await?;
    let mut bob = ctx.remote("bob").await?;
    let error = bob
        .join_refused(&room, "bad\u{FDD0}nick", &JoinOptions::default())
        .await?;
    check_error(&error, "modify", "jid-malformed")
}
