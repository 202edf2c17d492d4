//! Service and room discovery (XEP-0045 §6, XEP-0030).

use super::{Ctx, check, check_eq, check_error};
use crate::client::Client;
use crate::error::Result;
use crate::stanza::{
    self, NS_DISCO_INFO, NS_DISCO_ITEMS, disco_features, disco_identities, find_form, form_values,
};

/// Features every MUC room must advertise (with XEP-0359/0410/0421); the
/// service advertises the first and the last, and with
/// [`super::Expect::service_features`] all of them.
const ROOM_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/muc",
    "http://jabber.org/protocol/muc#stable_id",
    "http://jabber.org/protocol/muc#self-ping-optimization",
    "urn:xmpp:sid:0",
    "urn:xmpp:occupant-id:0",
];

/// disco#info of `jid` (must succeed).
async fn disco_info(client: &mut Client, jid: &str) -> Result<minidom::Element> {
    client
        .iq_ok("get", jid, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
        .await
}

/// Fails unless every feature of `wanted` is in `features`.
fn check_features(features: &[String], wanted: &[&str], whose: &str) -> Result<()> {
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|w| !features.iter().any(|f| f == *w))
        .collect();
    check(missing.is_empty(), || {
        format!("{whose} lacks features {missing:?}; has {features:?}")
    })
}

/// §6.2: the service is `conference/text` and supports the MUC protocol,
/// seen locally and over s2s.
pub async fn service_disco_info(ctx: &Ctx) -> Result<()> {
    let mut alice = ctx.local("alice").await?;
    let mut bob = ctx.remote("bob").await?;
    for client in [&mut alice, &mut bob] {
        let info = disco_info(client, &ctx.service).await?;
        let identities = disco_identities(&info);
        check(
            identities.contains(&("conference".to_owned(), "text".to_owned())),
            || format!("no conference/text identity: {identities:?}"),
        )?;
        let features = disco_features(&info);
        check_features(&features, &[ROOM_FEATURES[0], ROOM_FEATURES[4]], "service")?;
        if ctx.expect.service_features {
            check_features(&features, &ROOM_FEATURES[1..4], "service")?;
        }
    }
    Ok(())
}

/// §6.3: disco#items lists public rooms and hides hidden ones.
pub async fn service_disco_items_lists_public_rooms(ctx: &Ctx) -> Result<()> {
    let public = ctx.room("public");
    let hidden = ctx.room("hidden");
    let mut alice = ctx.local("alice").await?;
    alice
        .create_room(
            &public,
            "alice",
            &[
                ("muc#roomconfig_publicroom", &["1"]),
                ("muc#roomconfig_roomname", &["Public room"]),
            ],
        )
        .await?;
    alice
        .create_room(&hidden, "alice", &[("muc#roomconfig_publicroom", &["0"])])
        .await?;
    let mut bob = ctx.remote("bob").await?;
    let items = bob
        .iq_ok(
            "get",
            &ctx.service,
            &format!("<query xmlns='{NS_DISCO_ITEMS}'/>"),
        )
        .await?;
    let jids: Vec<String> = items
        .get_child("query", NS_DISCO_ITEMS)
        .into_iter()
        .flat_map(|q| q.children())
        .filter(|c| c.is("item", NS_DISCO_ITEMS))
        .map(|c| stanza::attr(c, "jid").to_owned())
        .collect();
    check(jids.contains(&public), || {
        format!("public room {public} not listed: {jids:?}")
    })?;
    check(!jids.contains(&hidden), || {
        format!("hidden room {hidden} listed: {jids:?}")
    })
}

/// §6.4: room disco#info reflects the configuration, with the
/// muc#roominfo form; unknown rooms are item-not-found.
pub async fn room_disco_info(ctx: &Ctx) -> Result<()> {
    let room = ctx.room("info");
    let mut alice = ctx.local("alice").await?;
    alice
        .create_room(
            &room,
            "alice",
            &[
                ("muc#roomconfig_roomname", &["Info room"]),
                ("muc#roomconfig_roomdesc", &["A room to describe"]),
                ("muc#roomconfig_publicroom", &["1"]),
            ],
        )
        .await?;
    let mut bob = ctx.remote("bob").await?;
    let info = disco_info(&mut bob, &room).await?;
    let identity = info
        .get_child("query", NS_DISCO_INFO)
        .and_then(|q| q.get_child("identity", NS_DISCO_INFO));
    check(
        identity.is_some_and(|i| {
            stanza::attr(i, "category") == "conference"
                && stanza::attr(i, "type") == "text"
                && stanza::attr(i, "name") == "Info room"
        }),
        || format!("room identity: {}", stanza::show(&info)),
    )?;
    let features = disco_features(&info);
    check_features(&features, ROOM_FEATURES, "room")?;
    check_features(
        &features,
        &[
            "muc_public",
            "muc_temporary",
            "muc_open",
            "muc_unmoderated",
            "muc_semianonymous",
            "muc_unsecured",
        ],
        "default room",
    )?;
    let form =
        find_form(&info).ok_or_else(|| crate::Error::Check("no muc#roominfo form".into()))?;
    check_eq(
        &form_values(form, "FORM_TYPE"),
        &Some(vec!["http://jabber.org/protocol/muc#roominfo".to_owned()]),
        "roominfo FORM_TYPE",
    )?;
    check_eq(
        &form_values(form, "muc#roominfo_description"),
        &Some(vec!["A room to describe".to_owned()]),
        "muc#roominfo_description",
    )?;

    alice
        .configure(
            &room,
            &[
                ("muc#roomconfig_publicroom", &["0"]),
                ("muc#roomconfig_persistentroom", &["1"]),
                ("muc#roomconfig_membersonly", &["1"]),
                ("muc#roomconfig_moderatedroom", &["1"]),
                ("muc#roomconfig_whois", &["anyone"]),
                ("muc#roomconfig_roomsecret", &["secret"]),
                ("muc#roomconfig_passwordprotectedroom", &["1"]),
            ],
        )
        .await?;
    let info = disco_info(&mut bob, &room).await?;
    check_features(
        &disco_features(&info),
        &[
            "muc_hidden",
            "muc_persistent",
            "muc_membersonly",
            "muc_moderated",
            "muc_nonanonymous",
            "muc_passwordprotected",
        ],
        "reconfigured room",
    )?;

    let missing = bob
        .iq(
            "get",
            &ctx.room("nonexistent"),
            &format!("<query xmlns='{NS_DISCO_INFO}'/>"),
        )
        .await?;
    check_error(&missing, "cancel", "item-not-found")
}
