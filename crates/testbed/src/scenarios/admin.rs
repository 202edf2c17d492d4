//! Owner and moderator operations (XEP-0045 §8–10) and removal of
//! bouncing occupants (§18.1).

use super::{Ctx, check, check_eq, check_error, check_no_status, check_status};
use crate::client::Client;
use crate::error::Result;
use crate::muc::occupant_jid;
use crate::stanza::{
    self, NS_DISCO_INFO, NS_MUC_OWNER, NS_MUC_USER, affiliation_role, escape, form_values,
    form_vars, is_message, muc_item, show, stanza_type,
};

/// Configuration fields every service has (XEP-0045 §10.2 registry).
const CONFIG_FIELDS: &[&str] = &[
    "muc#roomconfig_roomname",
    "muc#roomconfig_roomdesc",
    "muc#roomconfig_persistentroom",
    "muc#roomconfig_publicroom",
    "muc#roomconfig_membersonly",
    "muc#roomconfig_moderatedroom",
    "muc#roomconfig_roomsecret",
    "muc#roomconfig_whois",
    "muc#roomconfig_changesubject",
    "muc#roomconfig_presencebroadcast",
];

/// Further fields dmuc has and Prosody 0.12 lacks ([`super::Expect::full_config_form`]);
/// Prosody offers `allowinvites` only in some room states.
const FULL_CONFIG_FIELDS: &[&str] = &[
    "muc#roomconfig_allowinvites",
    "muc#roomconfig_passwordprotectedroom",
    "muc#roomconfig_maxusers",
    "muc#roomconfig_allowpm",
    "muc#roomconfig_enablelogging",
    "muc#roomconfig_getmemberlist",
    "muc#roomconfig_roomowners",
    "muc#roomconfig_roomadmins",
    "dmuc#roomconfig_splitpolicy",
];

/// Expects the result of a muc#admin set.
fn check_result(response: &minidom::Element, what: &str) -> Result<()> {
    check_eq(
        stanza_type(response),
        "result",
        &format!("{what}: {}", show(response)),
    )
}

/// Waits for an unavailable presence of `nick` carrying `codes`.
async fn expect_removal(
    client: &mut Client,
    room: &str,
    nick: &str,
    codes: &[u16],
) -> Result<minidom::Element> {
    let p = client
        .expect_presence_from(room, nick, |el| stanza_type(el) == "unavailable")
        .await?;
    check_status(&p, codes)?;
    Ok(p)
}

/// §10.2: the owner gets a muc#roomconfig form with the standard fields;
/// a submitted change is applied and announced with status 104; others
/// may not configure.
pub async fn config_form(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("config", &[]).await?;
    let form = alice.config_form(&room).await?;
    check_eq(
        &form_values(&form, "FORM_TYPE"),
        &Some(vec!["http://jabber.org/protocol/muc#roomconfig".to_owned()]),
        "FORM_TYPE",
    )?;
    let vars = form_vars(&form);
    let mut wanted = CONFIG_FIELDS.to_vec();
    if ctx.expect.full_config_form {
        wanted.extend_from_slice(FULL_CONFIG_FIELDS);
    }
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|w| !vars.iter().any(|v| v == *w))
        .collect();
    check(missing.is_empty(), || {
        format!("config form lacks {missing:?}; has {vars:?}")
    })?;

    alice
        .configure(&room, &[("muc#roomconfig_roomname", &["Renamed"])])
        .await?;
    for client in [&mut alice, &mut bob] {
        let notice = client
            .expect("status 104", |el| {
                is_message(el) && stanza::is_from_room(el, &room) && stanza::has_status(el, 104)
            })
            .await?;
        check_eq(stanza::from(&notice), room.as_str(), "104 from the room")?;
    }
    let form = alice.config_form(&room).await?;
    check_eq(
        &form_values(&form, "muc#roomconfig_roomname"),
        &Some(vec!["Renamed".to_owned()]),
        "roomname after submit",
    )?;
    let refused = bob
        .iq("get", &room, &format!("<query xmlns='{NS_MUC_OWNER}'/>"))
        .await?;
    check_error(&refused, "auth", "forbidden")
}

/// §10.9: destroying a room sends each occupant an unavailable presence
/// with `<destroy/>` (alternate venue, reason); the room is gone.
pub async fn destroy_room(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("destroy", &[]).await?;
    let venue = ctx.room("venue");
    let response = alice
        .iq(
            "set",
            &room,
            &format!(
                "<query xmlns='{NS_MUC_OWNER}'><destroy jid='{}'><reason>moving</reason></destroy></query>",
                escape(&venue)
            ),
        )
        .await?;
    check_result(&response, "destroy")?;
    for (client, nick) in [(&mut bob, "bob"), (&mut alice, "alice")] {
        let p = client
            .expect_presence_from(&room, nick, |el| stanza_type(el) == "unavailable")
            .await?;
        // XEP-0045 shows affiliation none in its example but does not
        // require it; the role must be none.
        check_eq(&affiliation_role(&p).1, &"none", "role in a destroyed room")?;
        let destroy = stanza::muc_user(&p).and_then(|x| x.get_child("destroy", NS_MUC_USER));
        check(
            destroy.is_some_and(|d| {
                stanza::attr(d, "jid") == venue
                    && d.get_child("reason", NS_MUC_USER)
                        .map(|r| r.text())
                        .as_deref()
                        == Some("moving")
            }),
            || format!("no destroy with venue and reason: {}", show(&p)),
        )?;
    }
    let info = bob
        .iq("get", &room, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
        .await?;
    check_error(&info, "cancel", "item-not-found")
}

/// §8.2: a kicked occupant gets unavailable with 307 (and 110); everyone
/// sees 307; role none.
pub async fn kick(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("kick", &[]).await?;
    let response = alice
        .admin_set(&room, &[("nick", "bob"), ("role", "none")], Some("out"))
        .await?;
    check_result(&response, "kick")?;
    let own = expect_removal(&mut bob, &room, "bob", &[307, 110]).await?;
    check_eq(
        &muc_item(&own)
            .and_then(|i| i.get_child("reason", NS_MUC_USER))
            .map(|r| r.text()),
        &Some("out".to_owned()),
        "kick reason",
    )?;
    let seen = expect_removal(&mut alice, &room, "bob", &[307]).await?;
    check_no_status(&seen, &[110])?;
    check_eq(&affiliation_role(&seen).1, &"none", "role after kick")
}

/// §9.1: a ban (by bare JID) removes the occupant with 301, lists it as
/// outcast and keeps it out.
pub async fn ban(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("ban", &[]).await?;
    let response = alice
        .admin_set(
            &room,
            &[("jid", bob.bare_jid()), ("affiliation", "outcast")],
            Some("spam"),
        )
        .await?;
    check_result(&response, "ban")?;
    let own = expect_removal(&mut bob, &room, "bob", &[301, 110]).await?;
    check_eq(&affiliation_role(&own), &("outcast", "none"), "banned item")?;
    expect_removal(&mut alice, &room, "bob", &[301]).await?;
    let outcasts = alice.admin_list(&room, "affiliation", "outcast").await?;
    check(
        outcasts
            .iter()
            .any(|i| stanza::attr(i, "jid") == bob.bare_jid()),
        || format!("outcast list lacks bob: {outcasts:?}"),
    )?;
    let error = bob.join_refused(&room, "bob", &Default::default()).await?;
    check_error(&error, "auth", "forbidden")
}

/// §8.3–8.4: in a moderated room a moderator grants voice (visitor →
/// participant) and revokes it, each broadcast as a presence.
pub async fn voice_grant_revoke(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx
        .room_with_two("voice", &[("muc#roomconfig_moderatedroom", &["1"])])
        .await?;
    check_eq(
        &bob.admin_list(&room, "role", "participant").await.is_err(),
        &true,
        "a visitor may not list participants",
    )?;
    for (role, may_speak) in [("participant", true), ("visitor", false)] {
        let response = alice
            .admin_set(&room, &[("nick", "bob"), ("role", role)], None)
            .await?;
        check_result(&response, &format!("role {role}"))?;
        for client in [&mut alice, &mut bob] {
            client
                .expect_presence_from(&room, "bob", |el| affiliation_role(el).1 == role)
                .await?;
        }
        let id = bob.send_groupchat(&room, "speaking").await?;
        let answer = bob
            .expect("reflection or error", |el| {
                is_message(el) && stanza::attr(el, "id") == id
            })
            .await?;
        check_eq(
            &(stanza_type(&answer) == "groupchat"),
            &may_speak,
            &format!("speaking as {role}"),
        )?;
    }
    Ok(())
}

/// §9.3–10.7: member, admin and owner grants change occupants'
/// presences and show up in the affiliation lists; revoking removes them.
pub async fn affiliation_grants_and_lists(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("affiliations", &[]).await?;
    let bob_bare = bob.bare_jid().to_owned();
    for affiliation in ["member", "admin", "owner"] {
        let response = alice
            .admin_set(
                &room,
                &[("jid", &bob_bare), ("affiliation", affiliation)],
                None,
            )
            .await?;
        check_result(&response, &format!("grant {affiliation}"))?;
        for client in [&mut alice, &mut bob] {
            client
                .expect_presence_from(&room, "bob", |el| affiliation_role(el).0 == affiliation)
                .await?;
        }
        let list = alice.admin_list(&room, "affiliation", affiliation).await?;
        check(
            list.iter().any(|i| stanza::attr(i, "jid") == bob_bare),
            || format!("{affiliation} list lacks bob: {list:?}"),
        )?;
    }
    let owners = alice.admin_list(&room, "affiliation", "owner").await?;
    check_eq(&owners.len(), &2, "owners")?;
    let response = alice
        .admin_set(&room, &[("jid", &bob_bare), ("affiliation", "none")], None)
        .await?;
    check_result(&response, "revoke")?;
    bob.expect_presence_from(&room, "bob", |el| {
        affiliation_role(el) == ("none", "participant")
    })
    .await?;
    for affiliation in ["member", "admin", "owner"] {
        let list = alice.admin_list(&room, "affiliation", affiliation).await?;
        check(
            !list.iter().any(|i| stanza::attr(i, "jid") == bob_bare),
            || format!("{affiliation} list still has bob: {list:?}"),
        )?;
    }
    Ok(())
}

/// §10.6/10.7: the last owner cannot give up ownership (conflict).
pub async fn last_owner_cannot_be_removed(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("lastowner");
    let mut alice = ctx.local("alice").await?;
    alice.create_instant_room(&room, "alice").await?;
    let bare = alice.bare_jid().to_owned();
    for affiliation in ["admin", "none"] {
        let response = alice
            .admin_set(&room, &[("jid", &bare), ("affiliation", affiliation)], None)
            .await?;
        check_error(&response, "cancel", "conflict")?;
    }
    let owners = alice.admin_list(&room, "affiliation", "owner").await?;
    check_eq(&owners.len(), &1, "owners after refused removal")
}

/// §18.1: an error presence from an occupant (its server bounced) removes
/// it with status 333.
pub async fn error_presence_removes_occupant(ctx: &Ctx) -> Result<()> {
    let (room, mut alice, mut bob) = ctx.room_with_two("bounce", &[]).await?;
    bob.send_raw(&format!(
        "<presence type='error' to='{}'><error type='cancel'><remote-server-not-found xmlns='{}'/></error></presence>",
        escape(&occupant_jid(&room, "bob")),
        stanza::NS_STANZAS
    ))
    .await?;
    let seen = expect_removal(&mut alice, &room, "bob", &[333]).await?;
    check_eq(&affiliation_role(&seen).1, &"none", "role after removal")
}
