//! The closed sets: roles, affiliations, room policies, message types.
//!
//! On the wire an enum is an `i32`. Zero (`UNSPECIFIED`) is what an unset
//! field reads as, so it is always an error, never a default; a value this
//! build does not know comes from a newer peer and is an error too.

use dmuc_room::event::MessageKind;
use dmuc_room::{Affiliation, AllowPm, Role, SplitPolicy, Whois};

use crate::{ProtocolError, pb};

/// Decodes the `i32` into the generated enum, refusing unknown values.
fn known<E: TryFrom<i32>>(v: i32, field: &str) -> Result<E, ProtocolError> {
    E::try_from(v).map_err(|_| ProtocolError::UnknownEnum {
        field: field.to_owned(),
        value: v,
    })
}

fn unspecified<T>(field: &str) -> Result<T, ProtocolError> {
    Err(ProtocolError::Unspecified {
        field: field.to_owned(),
    })
}

pub(super) fn role_to_pb(r: Role) -> i32 {
    match r {
        Role::Moderator => pb::Role::Moderator,
        Role::Participant => pb::Role::Participant,
        Role::Visitor => pb::Role::Visitor,
        Role::None => pb::Role::None,
    }
    .into()
}

pub(super) fn role(v: i32, field: &str) -> Result<Role, ProtocolError> {
    match known(v, field)? {
        pb::Role::Unspecified => unspecified(field),
        pb::Role::Moderator => Ok(Role::Moderator),
        pb::Role::Participant => Ok(Role::Participant),
        pb::Role::Visitor => Ok(Role::Visitor),
        pb::Role::None => Ok(Role::None),
    }
}

pub(super) fn affiliation_to_pb(a: Affiliation) -> i32 {
    match a {
        Affiliation::Owner => pb::Affiliation::Owner,
        Affiliation::Admin => pb::Affiliation::Admin,
        Affiliation::Member => pb::Affiliation::Member,
        Affiliation::None => pb::Affiliation::None,
        Affiliation::Outcast => pb::Affiliation::Outcast,
    }
    .into()
}

pub(super) fn affiliation(v: i32, field: &str) -> Result<Affiliation, ProtocolError> {
    match known(v, field)? {
        pb::Affiliation::Unspecified => unspecified(field),
        pb::Affiliation::Owner => Ok(Affiliation::Owner),
        pb::Affiliation::Admin => Ok(Affiliation::Admin),
        pb::Affiliation::Member => Ok(Affiliation::Member),
        pb::Affiliation::None => Ok(Affiliation::None),
        pb::Affiliation::Outcast => Ok(Affiliation::Outcast),
    }
}

pub(super) fn whois_to_pb(w: Whois) -> i32 {
    match w {
        Whois::Moderators => pb::Whois::Moderators,
        Whois::Anyone => pb::Whois::Anyone,
    }
    .into()
}

pub(super) fn whois(v: i32, field: &str) -> Result<Whois, ProtocolError> {
    match known(v, field)? {
        pb::Whois::Unspecified => unspecified(field),
        pb::Whois::Moderators => Ok(Whois::Moderators),
        pb::Whois::Anyone => Ok(Whois::Anyone),
    }
}

pub(super) fn allow_pm_to_pb(a: AllowPm) -> i32 {
    match a {
        AllowPm::Anyone => pb::AllowPm::Anyone,
        AllowPm::Participants => pb::AllowPm::Participants,
        AllowPm::Moderators => pb::AllowPm::Moderators,
        AllowPm::None => pb::AllowPm::None,
    }
    .into()
}

pub(super) fn allow_pm(v: i32, field: &str) -> Result<AllowPm, ProtocolError> {
    match known(v, field)? {
        pb::AllowPm::Unspecified => unspecified(field),
        pb::AllowPm::Anyone => Ok(AllowPm::Anyone),
        pb::AllowPm::Participants => Ok(AllowPm::Participants),
        pb::AllowPm::Moderators => Ok(AllowPm::Moderators),
        pb::AllowPm::None => Ok(AllowPm::None),
    }
}

pub(super) fn split_policy_to_pb(p: SplitPolicy) -> i32 {
    match p {
        SplitPolicy::Off => pb::SplitPolicy::Off,
        SplitPolicy::LocalChat => pb::SplitPolicy::LocalChat,
        SplitPolicy::Open => pb::SplitPolicy::Open,
    }
    .into()
}

pub(super) fn split_policy(v: i32, field: &str) -> Result<SplitPolicy, ProtocolError> {
    match known(v, field)? {
        pb::SplitPolicy::Unspecified => unspecified(field),
        pb::SplitPolicy::Off => Ok(SplitPolicy::Off),
        pb::SplitPolicy::LocalChat => Ok(SplitPolicy::LocalChat),
        pb::SplitPolicy::Open => Ok(SplitPolicy::Open),
    }
}

pub(super) fn message_kind_to_pb(k: MessageKind) -> i32 {
    match k {
        MessageKind::Chat => pb::MessageKind::Chat,
        MessageKind::Normal => pb::MessageKind::Normal,
        MessageKind::Groupchat => pb::MessageKind::Groupchat,
        MessageKind::Headline => pb::MessageKind::Headline,
    }
    .into()
}

pub(super) fn message_kind(v: i32, field: &str) -> Result<MessageKind, ProtocolError> {
    match known(v, field)? {
        pb::MessageKind::Unspecified => unspecified(field),
        pb::MessageKind::Chat => Ok(MessageKind::Chat),
        pb::MessageKind::Normal => Ok(MessageKind::Normal),
        pb::MessageKind::Groupchat => Ok(MessageKind::Groupchat),
        pb::MessageKind::Headline => Ok(MessageKind::Headline),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips() {
        for r in Role::ALL {
            assert_eq!(role(role_to_pb(r), "f"), Ok(r));
        }
        for a in Affiliation::ALL {
            assert_eq!(affiliation(affiliation_to_pb(a), "f"), Ok(a));
        }
        for w in [Whois::Moderators, Whois::Anyone] {
            assert_eq!(whois(whois_to_pb(w), "f"), Ok(w));
        }
        for a in [
            AllowPm::Anyone,
            AllowPm::Participants,
            AllowPm::Moderators,
            AllowPm::None,
        ] {
            assert_eq!(allow_pm(allow_pm_to_pb(a), "f"), Ok(a));
        }
        for p in SplitPolicy::ALL {
            assert_eq!(split_policy(split_policy_to_pb(p), "f"), Ok(p));
        }
        for k in [
            MessageKind::Chat,
            MessageKind::Normal,
            MessageKind::Groupchat,
            MessageKind::Headline,
        ] {
            assert_eq!(message_kind(message_kind_to_pb(k), "f"), Ok(k));
        }
    }

    #[test]
    fn zero_and_unknown_values_are_errors() {
        let unspecified = |field: &str| ProtocolError::Unspecified {
            field: field.into(),
        };
        assert_eq!(role(0, "r"), Err(unspecified("r")));
        assert_eq!(affiliation(0, "a"), Err(unspecified("a")));
        assert_eq!(whois(0, "w"), Err(unspecified("w")));
        assert_eq!(allow_pm(0, "p"), Err(unspecified("p")));
        assert_eq!(split_policy(0, "s"), Err(unspecified("s")));
        assert_eq!(
            split_policy(4, "s"),
            Err(ProtocolError::UnknownEnum {
                field: "s".into(),
                value: 4
            })
        );
        assert_eq!(message_kind(0, "k"), Err(unspecified("k")));
        assert_eq!(
            role(99, "r"),
            Err(ProtocolError::UnknownEnum {
                field: "r".into(),
                value: 99
            })
        );
        assert!(matches!(
            affiliation(-1, "a"),
            Err(ProtocolError::UnknownEnum { value: -1, .. })
        ));
    }
}
