//! Proptest strategies for rooms, shared by the property tests of this crate
//! and of the crates that carry inputs and snapshots over a wire (they need
//! the same inputs, including every variant and field, to show that what
//! crosses the wire behaves like what was sent).
//!
//! Compiled only with the `testing` feature.
//!
//! Inputs come from small pools (four users on three domains, three nicks,
//! a few payloads) so that random sequences collide: the same nick is taken
//! twice, a kicked user rejoins, a message races a ban. Inputs that end a
//! room (`Destroy`, `Shutdown`) are rare, so most sequences keep a room busy.

use std::sync::Arc;

use jid::{BareJid, FullJid};
use minidom::Element;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::event::{AdminFilter, AdminItem, IqRequest, JoinRequest, MessageKind};
use crate::form::Submission;
use crate::{
    Affiliation, ConfigBounds, HistoryRequest, Input, Merge, Nick, Payload, RateLimit, Role, Room,
    RoomConfig, RoomSettings, Seq, SplitPolicy, StanzaId, Timestamp,
};

/// The sessions inputs come from: two share a domain, one has two sessions.
pub const USERS: [&str; 5] = [
    "alice@a.test/pc",
    "bob@b.test/x",
    "carol@b.test/y",
    "dave@c.test/z",
    "alice@a.test/phone",
];

/// The nicks inputs use.
pub const NICKS: [&str; 3] = ["one", "two", "three"];

/// Payload children: namespaces, prefixes, attributes, escapes, nesting.
const PAYLOADS: [&str; 4] = [
    "<body xmlns='jabber:client'>hi &amp; &lt;bye&gt; 🎉</body>",
    "<active xmlns='http://jabber.org/protocol/chatstates'/>",
    "<x:a xmlns:x='urn:x' xmlns='urn:d' x:b='1' c='2'><d>t<e xmlns='urn:e'/>u</d></x:a>",
    "<origin-id xmlns='urn:xmpp:sid:0' id='o&apos;1'/>",
];

/// The room the strategies' inputs are for.
pub fn room_jid() -> BareJid {
    "r@conference.a.test".parse().expect("valid room JID")
}

/// Tight settings, so limits are reached: three users, short history, a
/// flood limit.
pub fn settings() -> RoomSettings {
    RoomSettings {
        epoch: 3,
        salt: Arc::from(&b"salt"[..]),
        bounds: ConfigBounds {
            max_users: 3,
            max_history: 5,
        },
        lock_new_rooms: false,
        default_config: RoomConfig {
            history_length: 3,
            ..RoomConfig::default()
        },
        rate_limit: Some(RateLimit {
            burst: 2,
            per_second: 1,
        }),
    }
}

/// Settings that stay out of the way: unlocked rooms, room for everyone,
/// no flood control; for tests about something else.
pub fn relaxed_settings() -> RoomSettings {
    RoomSettings {
        epoch: 1,
        salt: Arc::from(&b"s"[..]),
        bounds: ConfigBounds {
            max_users: 10,
            max_history: 10,
        },
        lock_new_rooms: false,
        default_config: RoomConfig::default(),
        rate_limit: None,
    }
}

/// A join presence from `who` (a full JID) as `nick`.
pub fn join(who: &str, nick: &str) -> Input {
    Input::Presence {
        from: who.parse().expect("a full JID"),
        nick: Nick::new(nick).expect("a valid nick"),
        join: Some(JoinRequest::default()),
        payload: Payload::default(),
    }
}

/// A groupchat message from `who` (a full JID) with `body`.
pub fn say(who: &str, body: &str) -> Input {
    let xml = format!("<body xmlns='jabber:client'>{body}</body>");
    Input::Groupchat {
        from: who.parse().expect("a full JID"),
        id: None,
        subject: None,
        has_body: true,
        payload: Payload::from_xml(&xml).expect("a body"),
        size: body.len(),
    }
}

/// A new room with [`settings`].
pub fn room() -> Room {
    Room::new(room_jid(), settings())
}

/// One of [`USERS`].
pub fn user() -> impl Strategy<Value = FullJid> {
    (0..USERS.len()).prop_map(|i| USERS[i].parse().expect("valid user JID"))
}

/// The bare JID of one of [`USERS`].
pub fn bare() -> impl Strategy<Value = BareJid> {
    user().prop_map(FullJid::into_bare)
}

/// One of [`NICKS`].
pub fn nick() -> impl Strategy<Value = Nick> {
    (0..NICKS.len()).prop_map(|i| Nick::new(NICKS[i]).expect("valid nick"))
}

/// Zero to three children from a pool.
pub fn payload() -> impl Strategy<Value = Payload> {
    vec(0..PAYLOADS.len(), 0..3).prop_map(|picks| {
        Payload::new(
            picks
                .into_iter()
                .map(|i| PAYLOADS[i].parse::<Element>().expect("valid payload XML"))
                .collect(),
        )
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), Just("s".to_owned()), "[a-z ]{1,8}"]
}

fn history_request() -> impl Strategy<Value = HistoryRequest> {
    (
        option::of(0usize..40),
        option::of(0usize..4),
        option::of(0u64..3),
        option::of((999_000i64..1_002_000).prop_map(Timestamp)),
    )
        .prop_map(|(max_chars, max_stanzas, seconds, since)| HistoryRequest {
            max_chars,
            max_stanzas,
            seconds,
            since,
        })
}

fn join_request() -> impl Strategy<Value = JoinRequest> {
    prop_oneof![
        3 => Just(JoinRequest::default()),
        1 => (option::of(Just("pw".to_owned())), history_request())
            .prop_map(|(password, history)| JoinRequest { password, history }),
    ]
}

fn message_kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![
        Just(MessageKind::Chat),
        Just(MessageKind::Normal),
        Just(MessageKind::Groupchat),
        Just(MessageKind::Headline),
    ]
}

/// Any split policy.
pub fn split_policy() -> impl Strategy<Value = SplitPolicy> {
    (0..SplitPolicy::ALL.len()).prop_map(|i| SplitPolicy::ALL[i])
}

fn role() -> impl Strategy<Value = Role> {
    (0..Role::ALL.len()).prop_map(|i| Role::ALL[i])
}

fn affiliation() -> impl Strategy<Value = Affiliation> {
    (0..Affiliation::ALL.len()).prop_map(|i| Affiliation::ALL[i])
}

fn reason() -> impl Strategy<Value = Option<String>> {
    option::of(Just("because".to_owned()))
}

fn admin_item() -> impl Strategy<Value = AdminItem> {
    prop_oneof![
        (nick(), role(), reason()).prop_map(|(nick, role, reason)| AdminItem::Role {
            nick,
            role,
            reason
        }),
        (bare(), affiliation(), reason()).prop_map(|(jid, affiliation, reason)| {
            AdminItem::Affiliation {
                jid,
                affiliation,
                reason,
            }
        }),
    ]
}

/// A configuration form touching the fields that change who may do what.
fn submission() -> impl Strategy<Value = Submission> {
    let flag = || prop_oneof![Just("0"), Just("1")];
    let field = prop_oneof![
        flag().prop_map(|v| ("muc#roomconfig_membersonly", vec![v.to_owned()])),
        flag().prop_map(|v| ("muc#roomconfig_moderatedroom", vec![v.to_owned()])),
        flag().prop_map(|v| ("muc#roomconfig_persistentroom", vec![v.to_owned()])),
        flag().prop_map(|v| ("muc#roomconfig_passwordprotectedroom", vec![v.to_owned()])),
        Just(("muc#roomconfig_roomsecret", vec!["pw".to_owned()])),
        prop_oneof![Just("anyone"), Just("moderators"), Just("bogus")]
            .prop_map(|v| ("muc#roomconfig_whois", vec![v.to_owned()])),
        prop_oneof![Just("anyone"), Just("participants"), Just("none")]
            .prop_map(|v| ("muc#roomconfig_allowpm", vec![v.to_owned()])),
        prop_oneof![
            Just("off"),
            Just("local-chat"),
            Just("open"),
            Just("sometimes")
        ]
        .prop_map(|v| ("dmuc#roomconfig_splitpolicy", vec![v.to_owned()])),
        (0u32..7).prop_map(|n| ("muc#roomconfig_historylength", vec![n.to_string()])),
        vec(prop_oneof![Just("moderator"), Just("participant")], 0..3).prop_map(|v| (
            "muc#roomconfig_presencebroadcast",
            v.into_iter().map(str::to_owned).collect()
        )),
    ];
    vec(field, 1..4).prop_map(|fields| Submission {
        fields: fields
            .into_iter()
            .map(|(var, values)| (var.to_owned(), values))
            .collect(),
    })
}

fn iq_request() -> impl Strategy<Value = IqRequest> {
    prop_oneof![
        1 => Just(IqRequest::DiscoInfo),
        1 => Just(IqRequest::DiscoItems),
        2 => Just(IqRequest::Ping),
        1 => role().prop_map(|r| IqRequest::AdminList(AdminFilter::Role(r))),
        1 => affiliation().prop_map(|a| IqRequest::AdminList(AdminFilter::Affiliation(a))),
        4 => vec(admin_item(), 0..3).prop_map(IqRequest::AdminSet),
        1 => Just(IqRequest::ConfigGet),
        4 => option::weighted(0.9, submission()).prop_map(IqRequest::ConfigSet),
        // Rare: it ends the room.
        1 => (reason(), option::of(Just(BareJid::new("elsewhere@conference.a.test").expect("valid JID"))))
            .prop_map(|(reason, alternate)| IqRequest::Destroy { reason, alternate }),
        1 => Just(IqRequest::Unsupported),
        2 => (any::<bool>(), payload()).prop_map(|(set, payload)| IqRequest::Relay { set, payload }),
    ]
}

/// Any input to the room of [`room_jid`], every variant and field included.
pub fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        8 => (user(), nick(), join_request(), payload()).prop_map(|(from, nick, join, payload)| {
            Input::Presence {
                from,
                nick,
                join: Some(join),
                payload,
            }
        }),
        2 => (user(), nick(), payload()).prop_map(|(from, nick, payload)| Input::Presence {
            from,
            nick,
            join: None,
            payload,
        }),
        2 => (user(), payload()).prop_map(|(from, payload)| Input::Leave { from, payload }),
        1 => user().prop_map(|from| Input::Bounced { from }),
        8 => (user(), option::of(Just("m".to_owned())), option::weighted(0.2, text()), payload(), 0usize..30)
            .prop_map(|(from, id, subject, payload, size)| Input::Groupchat {
                from,
                id,
                has_body: subject.is_none(),
                subject,
                payload,
                size,
            }),
        2 => (user(), nick(), option::of(Just("p".to_owned())), message_kind(), payload())
            .prop_map(|(from, to, id, kind, payload)| Input::Private {
                from,
                to,
                id,
                kind,
                payload,
            }),
        9 => (user(), option::weighted(0.2, nick()), iq_request()).prop_map(|(from, to, request)| {
            Input::Iq {
                from,
                to,
                id: "i".into(),
                request,
            }
        }),
        2 => (user(), nick(), any::<bool>(), payload(), option::of(Just("0123456789ab".to_owned())))
            .prop_map(|(from, to, error, payload, tag)| Input::IqResponse {
                from,
                to,
                id: tag.map_or("i".into(), |t| format!("{t}.i")),
                error,
                payload,
            }),
        // Rare: it ends the room.
        1 => Just(Input::Shutdown),
        2 => merge(),
    ]
}

/// A merge of a split-era message, join or leave of the sender's domain
/// (submissions 0 to 3 of one of two splits, so that some repeat).
fn merge() -> impl Strategy<Value = Input> {
    let inner = prop_oneof![
        (user(), payload()).prop_map(|(from, payload)| Input::Groupchat {
            from,
            id: None,
            subject: None,
            has_body: true,
            payload,
            size: 4,
        }),
        (user(), nick(), payload()).prop_map(|(from, nick, payload)| Input::Presence {
            from,
            nick,
            join: Some(JoinRequest::default()),
            payload,
        }),
        (user(), payload()).prop_map(|(from, payload)| Input::Leave { from, payload }),
    ];
    (inner, 0u64..4, 0i64..2, any::<bool>()).prop_map(|(input, index, split, with_id)| {
        let domain = input.sender().expect("a user's").domain().to_string();
        let began = Timestamp(1_000 + split);
        let local_id = (with_id && matches!(input, Input::Groupchat { .. }))
            .then(|| StanzaId::provisional(&domain, began, Seq(index + 1)));
        Input::Merge(Box::new(Merge {
            domain,
            began,
            index,
            at: Timestamp(began.0 + index as i64),
            local_id,
            input,
        }))
    })
}

/// A run of inputs, each with the milliseconds that pass before it.
pub fn inputs(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(Input, i64)>> {
    vec((input(), 0i64..600), len)
}
