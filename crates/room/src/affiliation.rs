//! Affiliations (long-lived, per bare JID) and roles (per visit).

use serde::{Deserialize, Serialize};

/// XEP-0045 §5.2 affiliation, ordered from most to least privileged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    Owner,
    Admin,
    Member,
    None,
    Outcast,
}

impl Affiliation {
    pub const ALL: [Affiliation; 5] = [
        Affiliation::Owner,
        Affiliation::Admin,
        Affiliation::Member,
        Affiliation::None,
        Affiliation::Outcast,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Owners and admins: the affiliations that moderate by right.
    pub fn is_admin_or_owner(self) -> bool {
        matches!(self, Affiliation::Owner | Affiliation::Admin)
    }

    /// The role an occupant with this affiliation gets on entering (§5.1.2).
    pub fn default_role(self, moderated: bool) -> Role {
        match self {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }
}

/// XEP-0045 §5.1 role, ordered from most to least privileged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Moderator,
    Participant,
    Visitor,
    None,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Moderator,
        Role::Participant,
        Role::Visitor,
        Role::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Visitor => "visitor",
            Role::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Participants and moderators have voice.
    pub fn has_voice(self) -> bool {
        matches!(self, Role::Moderator | Role::Participant)
    }
}
