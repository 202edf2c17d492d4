//! Room configuration, and its XEP-0045 §10.2 form with the standard
//! `muc#roomconfig_*` field names, so that existing clients can configure rooms.

use jid::BareJid;
use serde::{Deserialize, Serialize};

use crate::form::{Field, FieldKind, Form, Submission, bool_str, parse_bool};
use crate::{Affiliation, Error, Role};

/// Who may see occupants' real JIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whois {
    Moderators,
    Anyone,
}

/// Who may send private messages to occupants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    None,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }

    /// Whether an occupant with `role` may send a private message.
    pub fn allows(self, role: Role) -> bool {
        match self {
            AllowPm::Anyone => true,
            AllowPm::Participants => role.has_voice(),
            AllowPm::Moderators => role == Role::Moderator,
            AllowPm::None => false,
        }
    }
}

/// What a slave may let its own domain's users do while it cannot reach
/// the room's master (a *split*; see [`crate::split`]).
///
/// The default is [`SplitPolicy::LocalChat`]: the users a split cuts off
/// keep talking to each other, which is what they want from a chat room,
/// yet nothing they do can change who is in the room or who runs it (no
/// joins, nick changes, kicks, bans, role, affiliation, configuration or
/// subject changes), so a domain that splits off, by accident or on
/// purpose, can never take the room over; the master merges the talk back
/// when the room heals. `Open` admits new local joiners too, at the price
/// of nick collisions the master resolves on heal; `Off` refuses everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitPolicy {
    /// Nothing works during a split: every stanza that expects an answer
    /// gets an error; leaving the room still works.
    Off,
    /// Messages, private messages and presence among local occupants;
    /// no joins, nick changes or moderation.
    #[default]
    LocalChat,
    /// As `LocalChat`, and local users may join; nick collisions with the
    /// rest of the room are decided by the master on heal.
    Open,
}

impl SplitPolicy {
    pub const ALL: [SplitPolicy; 3] = [SplitPolicy::Off, SplitPolicy::LocalChat, SplitPolicy::Open];

    /// The value of the form field (and of the stored JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            SplitPolicy::Off => "off",
            SplitPolicy::LocalChat => "local-chat",
            SplitPolicy::Open => "open",
        }
    }

    pub fn parse(s: &str) -> Option<SplitPolicy> {
        SplitPolicy::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The owner-settable configuration of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// `Some` when the room is password protected.
    pub password: Option<String>,
    pub whois: Whois,
    /// Maximum number of occupants; owners and admins may always enter.
    pub max_users: u32,
    /// Whether participants (not only moderators) may change the subject.
    pub change_subject: bool,
    pub allow_pm: AllowPm,
    pub allow_invites: bool,
    /// Whether the room is publicly logged (XEP-0045 status 170).
    pub logging: bool,
    /// Roles that may retrieve the member list.
    pub get_member_list: Vec<Role>,
    /// Roles whose presence is broadcast to the room.
    pub presence_broadcast: Vec<Role>,
    /// How many messages of discussion history are kept and sent to joiners.
    pub history_length: u32,
    /// What local users of a slave may do while it is split from the
    /// master. Absent from configurations stored before it existed, which
    /// then load with the default.
    pub split_policy: SplitPolicy,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            whois: Whois::Moderators,
            max_users: 200,
            change_subject: false,
            allow_pm: AllowPm::Anyone,
            allow_invites: false,
            logging: false,
            get_member_list: vec![Role::Moderator, Role::Participant, Role::Visitor],
            presence_broadcast: vec![Role::Moderator, Role::Participant, Role::Visitor],
            history_length: 20,
            split_policy: SplitPolicy::default(),
        }
    }
}

/// The service's bounds on what owners may configure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigBounds {
    pub max_users: u32,
    pub max_history: u32,
}

/// What a successful configuration submission changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// Status codes to announce (104 always; 170–174 for logging/anonymity).
    pub statuses: Vec<u16>,
    /// Affiliations set through `muc#roomconfig_roomowners` / `roomadmins`.
    pub affiliations: Vec<(BareJid, Affiliation)>,
}

pub const FORM_TYPE_CONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";

const F_NAME: &str = "muc#roomconfig_roomname";
const F_DESC: &str = "muc#roomconfig_roomdesc";
const F_PERSISTENT: &str = "muc#roomconfig_persistentroom";
const F_PUBLIC: &str = "muc#roomconfig_publicroom";
const F_MEMBERS_ONLY: &str = "muc#roomconfig_membersonly";
const F_MODERATED: &str = "muc#roomconfig_moderatedroom";
const F_PASSWORD_PROTECTED: &str = "muc#roomconfig_passwordprotectedroom";
const F_SECRET: &str = "muc#roomconfig_roomsecret";
const F_WHOIS: &str = "muc#roomconfig_whois";
const F_MAX_USERS: &str = "muc#roomconfig_maxusers";
const F_CHANGE_SUBJECT: &str = "muc#roomconfig_changesubject";
const F_ALLOW_PM: &str = "muc#roomconfig_allowpm";
const F_ALLOW_INVITES: &str = "muc#roomconfig_allowinvites";
const F_LOGGING: &str = "muc#roomconfig_enablelogging";
const F_MEMBER_LIST: &str = "muc#roomconfig_getmemberlist";
const F_PRESENCE_BROADCAST: &str = "muc#roomconfig_presencebroadcast";
const F_HISTORY: &str = "muc#roomconfig_historylength";
const F_OWNERS: &str = "muc#roomconfig_roomowners";
const F_ADMINS: &str = "muc#roomconfig_roomadmins";
/// dmuc's own field, outside the `muc#roomconfig_` registry.
pub const F_SPLIT_POLICY: &str = "dmuc#roomconfig_splitpolicy";

const ROLE_OPTIONS: &[(&str, &str)] = &[
    ("Moderator", "moderator"),
    ("Participant", "participant"),
    ("Visitor", "visitor"),
];

impl RoomConfig {
    /// The configuration form (XEP-0045 §10.2), filled with current values.
    pub fn to_form(&self, owners: &[BareJid], admins: &[BareJid]) -> Form {
        let jids = |list: &[BareJid]| list.iter().map(|j| j.to_string()).collect();
        let roles = |list: &[Role]| list.iter().map(|r| r.as_str().to_owned()).collect();
        let fields = vec![
            Field::hidden("FORM_TYPE", FORM_TYPE_CONFIG),
            Field::text(F_NAME, "Natural-language room name", &self.name),
            Field::new(
                F_DESC,
                FieldKind::TextSingle,
                Some("Short description of room"),
                vec![self.description.clone()],
            ),
            Field::boolean(F_PERSISTENT, "Make room persistent?", self.persistent),
            Field::boolean(F_PUBLIC, "Make room publicly searchable?", self.public),
            Field::boolean(F_MEMBERS_ONLY, "Make room members-only?", self.members_only),
            Field::boolean(F_MODERATED, "Make room moderated?", self.moderated),
            Field::boolean(
                F_PASSWORD_PROTECTED,
                "Password required to enter?",
                self.password.is_some(),
            ),
            Field::new(
                F_SECRET,
                FieldKind::TextPrivate,
                Some("Password"),
                vec![self.password.clone().unwrap_or_default()],
            ),
            Field::new(
                F_WHOIS,
                FieldKind::ListSingle,
                Some("Who may discover real JIDs?"),
                vec![self.whois_str().to_owned()],
            )
            .with_options(&[("Moderators only", "moderators"), ("Anyone", "anyone")]),
            Field::new(
                F_MAX_USERS,
                FieldKind::ListSingle,
                Some("Maximum number of occupants"),
                vec![self.max_users.to_string()],
            )
            .with_options(&[
                ("10", "10"),
                ("20", "20"),
                ("30", "30"),
                ("50", "50"),
                ("100", "100"),
                ("200", "200"),
                ("1000", "1000"),
            ]),
            Field::boolean(
                F_CHANGE_SUBJECT,
                "Allow occupants to change the subject?",
                self.change_subject,
            ),
            Field::new(
                F_ALLOW_PM,
                FieldKind::ListSingle,
                Some("Who may send private messages?"),
                vec![self.allow_pm.as_str().to_owned()],
            )
            .with_options(&[
                ("Anyone", "anyone"),
                ("Participants", "participants"),
                ("Moderators", "moderators"),
                ("Nobody", "none"),
            ]),
            Field::boolean(
                F_ALLOW_INVITES,
                "Allow occupants to invite others?",
                self.allow_invites,
            ),
            Field::boolean(F_LOGGING, "Enable public logging?", self.logging),
            Field::new(
                F_MEMBER_LIST,
                FieldKind::ListMulti,
                Some("Roles that may retrieve the member list"),
                roles(&self.get_member_list),
            )
            .with_options(ROLE_OPTIONS),
            Field::new(
                F_PRESENCE_BROADCAST,
                FieldKind::ListMulti,
                Some("Roles whose presence is broadcast"),
                roles(&self.presence_broadcast),
            )
            .with_options(ROLE_OPTIONS),
            Field::text(
                F_HISTORY,
                "Number of history messages sent to joiners",
                &self.history_length.to_string(),
            ),
            Field::new(
                F_SPLIT_POLICY,
                FieldKind::ListSingle,
                Some("While the room is split from its master, local users may"),
                vec![self.split_policy.as_str().to_owned()],
            )
            .with_options(&[
                ("Do nothing (every request gets an error)", "off"),
                (
                    "Chat among themselves (no joins, nick changes or moderation)",
                    "local-chat",
                ),
                ("Chat and join (nick collisions resolved on heal)", "open"),
            ]),
            Field::new(
                F_OWNERS,
                FieldKind::JidMulti,
                Some("Room owners"),
                jids(owners),
            ),
            Field::new(
                F_ADMINS,
                FieldKind::JidMulti,
                Some("Room admins"),
                jids(admins),
            ),
        ];
        Form {
            title: Some(format!(
                "Configuration for {}",
                if self.name.is_empty() {
                    "room"
                } else {
                    &self.name
                }
            )),
            fields,
        }
    }

    fn whois_str(&self) -> &'static str {
        match self.whois {
            Whois::Moderators => "moderators",
            Whois::Anyone => "anyone",
        }
    }

    /// Applies a submitted configuration form. Unknown fields are ignored (a
    /// client may send fields of another service); invalid values reject the
    /// whole submission and change nothing.
    pub fn apply(
        &mut self,
        form: &Submission,
        bounds: &ConfigBounds,
    ) -> Result<ConfigChange, Error> {
        if let Some(t) = form.single("FORM_TYPE")
            && t != FORM_TYPE_CONFIG
        {
            return Err(Error::InvalidField("FORM_TYPE".into()));
        }
        let mut next = self.clone();
        let boolean = |var: &str| -> Result<Option<bool>, Error> {
            form.single(var)
                .map(|v| parse_bool(v).ok_or_else(|| Error::InvalidField(var.into())))
                .transpose()
        };
        let roles = |var: &str| -> Result<Option<Vec<Role>>, Error> {
            form.get(var)
                .map(|values| {
                    values
                        .iter()
                        .map(|v| Role::parse(v).ok_or_else(|| Error::InvalidField(var.into())))
                        .collect()
                })
                .transpose()
        };
        if let Some(v) = form.single(F_NAME) {
            next.name = v.to_owned();
        }
        if let Some(v) = form.single(F_DESC) {
            next.description = v.to_owned();
        }
        if let Some(v) = boolean(F_PERSISTENT)? {
            next.persistent = v;
        }
        if let Some(v) = boolean(F_PUBLIC)? {
            next.public = v;
        }
        if let Some(v) = boolean(F_MEMBERS_ONLY)? {
            next.members_only = v;
        }
        if let Some(v) = boolean(F_MODERATED)? {
            next.moderated = v;
        }
        let secret = form.single(F_SECRET).map(str::to_owned);
        match boolean(F_PASSWORD_PROTECTED)? {
            Some(false) => next.password = None,
            Some(true) => {
                next.password = secret.or(next.password.take());
                if next.password.as_deref().is_none_or(str::is_empty) {
                    return Err(Error::InvalidField(F_SECRET.into()));
                }
            }
            // A secret alone (as some clients send) protects the room too.
            None => {
                if let Some(s) = secret {
                    next.password = (!s.is_empty()).then_some(s);
                }
            }
        }
        if let Some(v) = form.single(F_WHOIS) {
            next.whois = match v {
                "moderators" => Whois::Moderators,
                "anyone" => Whois::Anyone,
                _ => return Err(Error::InvalidField(F_WHOIS.into())),
            };
        }
        if let Some(v) = form.single(F_MAX_USERS) {
            let n = match v {
                "" | "none" | "0" => bounds.max_users,
                n => n
                    .parse::<u32>()
                    .map_err(|_| Error::InvalidField(F_MAX_USERS.into()))?,
            };
            next.max_users = n.clamp(1, bounds.max_users);
        }
        if let Some(v) = boolean(F_CHANGE_SUBJECT)? {
            next.change_subject = v;
        }
        if let Some(v) = form.single(F_ALLOW_PM) {
            next.allow_pm = match v {
                "anyone" => AllowPm::Anyone,
                "participants" => AllowPm::Participants,
                "moderators" => AllowPm::Moderators,
                "none" => AllowPm::None,
                _ => return Err(Error::InvalidField(F_ALLOW_PM.into())),
            };
        }
        if let Some(v) = boolean(F_ALLOW_INVITES)? {
            next.allow_invites = v;
        }
        if let Some(v) = boolean(F_LOGGING)? {
            next.logging = v;
        }
        if let Some(v) = roles(F_MEMBER_LIST)? {
            next.get_member_list = v;
        }
        if let Some(v) = roles(F_PRESENCE_BROADCAST)? {
            next.presence_broadcast = v;
        }
        if let Some(v) = form.single(F_HISTORY) {
            let n = v
                .parse::<u32>()
                .map_err(|_| Error::InvalidField(F_HISTORY.into()))?;
            next.history_length = n.min(bounds.max_history);
        }
        if let Some(v) = form.single(F_SPLIT_POLICY) {
            next.split_policy =
                SplitPolicy::parse(v).ok_or_else(|| Error::InvalidField(F_SPLIT_POLICY.into()))?;
        }
        let mut affiliations = Vec::new();
        for (var, affiliation) in [
            (F_OWNERS, Affiliation::Owner),
            (F_ADMINS, Affiliation::Admin),
        ] {
            for jid in form.get(var).unwrap_or_default() {
                let jid: BareJid = jid.parse().map_err(|_| Error::InvalidField(var.into()))?;
                affiliations.push((jid, affiliation));
            }
        }

        let mut statuses = vec![104];
        if next.logging != self.logging {
            statuses.push(if next.logging { 170 } else { 171 });
        }
        if next.whois != self.whois {
            statuses.push(if next.whois == Whois::Anyone {
                172
            } else {
                173
            });
        }
        *self = next;
        Ok(ConfigChange {
            statuses,
            affiliations,
        })
    }

    /// The `muc#roominfo` and feature view of the room for disco#info.
    pub fn features(&self) -> Vec<&'static str> {
        vec![
            if self.public {
                "muc_public"
            } else {
                "muc_hidden"
            },
            if self.persistent {
                "muc_persistent"
            } else {
                "muc_temporary"
            },
            if self.members_only {
                "muc_membersonly"
            } else {
                "muc_open"
            },
            if self.moderated {
                "muc_moderated"
            } else {
                "muc_unmoderated"
            },
            if self.whois == Whois::Anyone {
                "muc_nonanonymous"
            } else {
                "muc_semianonymous"
            },
            if self.password.is_some() {
                "muc_passwordprotected"
            } else {
                "muc_unsecured"
            },
        ]
    }

    /// The XEP-0045 §16.5.4 `muc#roominfo` form.
    pub fn room_info(&self, occupants: usize, subject: &str) -> Form {
        Form {
            title: None,
            fields: vec![
                Field::hidden("FORM_TYPE", "http://jabber.org/protocol/muc#roominfo"),
                Field::text("muc#roominfo_description", "Description", &self.description),
                Field::text("muc#roominfo_subject", "Subject", subject),
                Field::text(
                    "muc#roominfo_occupants",
                    "Number of occupants",
                    &occupants.to_string(),
                ),
                Field::boolean(
                    "muc#roominfo_subjectmod",
                    "Occupants may change the subject",
                    self.change_subject,
                ),
                Field::text(F_NAME, "Natural-language room name", &self.name),
                Field::text(
                    F_MAX_USERS,
                    "Maximum number of occupants",
                    &self.max_users.to_string(),
                ),
                Field::new(
                    F_LOGGING,
                    FieldKind::Boolean,
                    Some("Publicly logged"),
                    vec![bool_str(self.logging).to_owned()],
                ),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> ConfigBounds {
        ConfigBounds {
            max_users: 1000,
            max_history: 100,
        }
    }

    fn submit(fields: &[(&str, &[&str])]) -> Submission {
        Submission {
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
        }
    }

    #[test]
    fn standard_fields_apply() {
        let mut c = RoomConfig::default();
        let change = c
            .apply(
                &submit(&[
                    ("FORM_TYPE", &[FORM_TYPE_CONFIG]),
                    (F_NAME, &["Lounge"]),
                    (F_PERSISTENT, &["1"]),
                    (F_MEMBERS_ONLY, &["true"]),
                    (F_PASSWORD_PROTECTED, &["1"]),
                    (F_SECRET, &["pw"]),
                    (F_WHOIS, &["anyone"]),
                    (F_MAX_USERS, &["5000"]),
                    (F_OWNERS, &["bob@b.test"]),
                ]),
                &bounds(),
            )
            .unwrap();
        assert_eq!(c.name, "Lounge");
        assert!(c.persistent && c.members_only);
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.max_users, 1000, "clamped to the service bound");
        assert_eq!(change.statuses, vec![104, 172]);
        assert_eq!(
            change.affiliations,
            vec![("bob@b.test".parse().unwrap(), Affiliation::Owner)]
        );
    }

    #[test]
    fn invalid_value_changes_nothing() {
        let mut c = RoomConfig::default();
        let err = c
            .apply(
                &submit(&[(F_NAME, &["x"]), (F_PERSISTENT, &["maybe"])]),
                &bounds(),
            )
            .unwrap_err();
        assert_eq!(err, Error::InvalidField(F_PERSISTENT.into()));
        assert_eq!(c, RoomConfig::default());
    }

    #[test]
    fn password_protection_needs_a_secret() {
        let mut c = RoomConfig::default();
        assert!(
            c.apply(&submit(&[(F_PASSWORD_PROTECTED, &["1"])]), &bounds())
                .is_err()
        );
    }

    #[test]
    fn form_round_trips_through_apply() {
        let mut c = RoomConfig {
            name: "n".into(),
            persistent: true,
            password: Some("s".into()),
            split_policy: SplitPolicy::Open,
            ..RoomConfig::default()
        };
        let form = c.to_form(&[], &[]);
        let sub = Submission {
            fields: form
                .fields
                .iter()
                .map(|f| (f.var.clone(), f.values.clone()))
                .collect(),
        };
        let before = c.clone();
        c.apply(&sub, &bounds()).unwrap();
        assert_eq!(c, before);
    }

    #[test]
    fn split_policy_defaults_to_local_chat_and_parses_its_values() {
        assert_eq!(RoomConfig::default().split_policy, SplitPolicy::LocalChat);
        for p in SplitPolicy::ALL {
            assert_eq!(SplitPolicy::parse(p.as_str()), Some(p));
        }
        assert_eq!(SplitPolicy::parse("LocalChat"), None);
    }

    /// The master stores configurations as JSON: one stored before the
    /// split policy existed still loads, and the policy is stored by name.
    #[test]
    fn stored_json_without_split_policy_loads_with_the_default() {
        let mut json = serde_json::to_value(RoomConfig {
            split_policy: SplitPolicy::Open,
            ..RoomConfig::default()
        })
        .unwrap();
        assert_eq!(json["split_policy"], "open");
        json.as_object_mut().unwrap().remove("split_policy");
        let old: RoomConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old, RoomConfig::default());
        let off: RoomConfig = serde_json::from_str(r#"{"split_policy":"off"}"#).unwrap();
        assert_eq!(off.split_policy, SplitPolicy::Off);
        assert!(serde_json::from_str::<RoomConfig>(r#"{"split_policy":"sometimes"}"#).is_err());
    }
}
