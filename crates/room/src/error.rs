//! The crate's error enum and the XMPP error conditions the room answers with.

/// An XMPP stanza error condition (RFC 6120 §8.3.3) the room answers with.
///
/// The edge maps it to the wire; the error `type` follows from the condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RegistrationRequired,
    /// A server needed to fulfil the request (for dmuc: the room's master,
    /// or the recipient's domain behind it) cannot be reached for now.
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
}

/// The error `type` attribute (RFC 6120 §8.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Modify,
    Wait,
}

impl Condition {
    /// The error type XEP-0045 uses with this condition.
    pub fn error_type(self) -> ErrorType {
        match self {
            Condition::BadRequest | Condition::JidMalformed => ErrorType::Modify,
            Condition::PolicyViolation => ErrorType::Modify,
            Condition::Forbidden | Condition::NotAuthorized | Condition::RegistrationRequired => {
                ErrorType::Auth
            }
            Condition::ResourceConstraint | Condition::RemoteServerTimeout => ErrorType::Wait,
            Condition::Conflict
            | Condition::NotAcceptable
            | Condition::ServiceUnavailable
            | Condition::FeatureNotImplemented
            | Condition::InternalServerError
            | Condition::ItemNotFound
            | Condition::NotAllowed => ErrorType::Cancel,
        }
    }

    /// The RFC 6120 element name of the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::Conflict => "conflict",
            Condition::FeatureNotImplemented => "feature-not-implemented",
            Condition::Forbidden => "forbidden",
            Condition::InternalServerError => "internal-server-error",
            Condition::ItemNotFound => "item-not-found",
            Condition::JidMalformed => "jid-malformed",
            Condition::NotAcceptable => "not-acceptable",
            Condition::NotAllowed => "not-allowed",
            Condition::NotAuthorized => "not-authorized",
            Condition::PolicyViolation => "policy-violation",
            Condition::RegistrationRequired => "registration-required",
            Condition::RemoteServerTimeout => "remote-server-timeout",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::ServiceUnavailable => "service-unavailable",
        }
    }
}

/// Errors of the room crate: invalid input that never reaches the state machine.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("nickname is not a valid resourcepart")]
    MalformedNick,
    #[error("invalid value for form field {0}")]
    InvalidField(String),
    /// Stored or transmitted payload XML that does not parse.
    #[error("payload is not well-formed XML: {0}")]
    MalformedPayload(String),
}

impl Error {
    /// The XMPP condition a client gets for this error.
    pub fn condition(&self) -> Condition {
        match self {
            Error::MalformedNick => Condition::JidMalformed,
            Error::InvalidField(_) => Condition::NotAcceptable,
            Error::MalformedPayload(_) => Condition::BadRequest,
        }
    }
}
