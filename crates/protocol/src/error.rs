//! [`ProtocolError`]: a frame that does not convert to domain values.

/// A malformed or unacceptable frame. `field` is the path of the bad value
/// from the converted message down, e.g. `input.presence.nick` or
/// `snapshot.occupants[2].sessions[0]`, so that an operator can tell what
/// the other side sent wrong without a packet dump.
///
/// Messages name fields and reasons, never the offending values: they go to
/// the remote peer and into its logs, and the values are users' JIDs and
/// nicks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A required field or oneof is absent.
    #[error("{field}: missing")]
    Missing { field: String },
    /// An enum field holds its `UNSPECIFIED` (zero) value.
    #[error("{field}: unspecified")]
    Unspecified { field: String },
    /// An enum field holds a value this build does not know (a newer peer).
    #[error("{field}: unknown value {value}")]
    UnknownEnum { field: String, value: i32 },
    /// A JID that does not parse, or has the wrong shape (full vs bare).
    #[error("{field}: malformed jid: {reason}")]
    Jid { field: String, reason: String },
    /// A nick that is not a valid resourcepart.
    #[error("{field}: malformed nick")]
    Nick { field: String },
    /// XML payload that does not parse.
    #[error("{field}: malformed xml payload")]
    Payload {
        field: String,
        #[source]
        source: dmuc_room::Error,
    },
    /// A value out of range or inconsistent with another field.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: &'static str },
    /// `Hello` offers no version this build speaks.
    #[error(
        "no common protocol version: offered {offered_min}..={offered_max}, supported {supported_min}..={supported_max}"
    )]
    NoCommonVersion {
        offered_min: u32,
        offered_max: u32,
        supported_min: u32,
        supported_max: u32,
    },
}

impl ProtocolError {
    /// The path of the bad field (empty for [`ProtocolError::NoCommonVersion`]).
    pub fn field(&self) -> &str {
        match self {
            ProtocolError::Missing { field }
            | ProtocolError::Unspecified { field }
            | ProtocolError::UnknownEnum { field, .. }
            | ProtocolError::Jid { field, .. }
            | ProtocolError::Nick { field }
            | ProtocolError::Payload { field, .. }
            | ProtocolError::Invalid { field, .. } => field,
            ProtocolError::NoCommonVersion { .. } => "",
        }
    }

    pub(crate) fn missing(field: &str) -> Self {
        ProtocolError::Missing {
            field: field.to_owned(),
        }
    }

    pub(crate) fn invalid(field: &str, reason: &'static str) -> Self {
        ProtocolError::Invalid {
            field: field.to_owned(),
            reason,
        }
    }

    /// Prefixes the field path with the enclosing field: errors are built
    /// at the leaf and get their path on the way out, so a conversion does
    /// not need to know where its message sits.
    pub(crate) fn within(mut self, outer: &str) -> Self {
        if let Some(field) = self.field_mut() {
            *field = if field.is_empty() {
                outer.to_owned()
            } else {
                format!("{outer}.{field}")
            };
        }
        self
    }

    fn field_mut(&mut self) -> Option<&mut String> {
        match self {
            ProtocolError::Missing { field }
            | ProtocolError::Unspecified { field }
            | ProtocolError::UnknownEnum { field, .. }
            | ProtocolError::Jid { field, .. }
            | ProtocolError::Nick { field }
            | ProtocolError::Payload { field, .. }
            | ProtocolError::Invalid { field, .. } => Some(field),
            ProtocolError::NoCommonVersion { .. } => None,
        }
    }
}

/// Adds the enclosing field to the path of an error on its way out.
pub(crate) trait Within<T> {
    fn within(self, outer: &str) -> Result<T, ProtocolError>;
    /// For elements of repeated fields: `outer[index]`.
    fn within_item(self, outer: &str, index: usize) -> Result<T, ProtocolError>;
}

impl<T> Within<T> for Result<T, ProtocolError> {
    fn within(self, outer: &str) -> Result<T, ProtocolError> {
        self.map_err(|e| e.within(outer))
    }

    fn within_item(self, outer: &str, index: usize) -> Result<T, ProtocolError> {
        self.map_err(|e| e.within(&format!("{outer}[{index}]")))
    }
}

/// What the remote peer learns: the code, and the message (field and reason,
/// no values, no internals).
impl From<ProtocolError> for tonic::Status {
    fn from(e: ProtocolError) -> Self {
        match e {
            // Nothing is wrong with the frame; the two builds cannot talk.
            ProtocolError::NoCommonVersion { .. } => {
                tonic::Status::failed_precondition(e.to_string())
            }
            _ => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_grow_outwards() {
        let e: Result<(), _> = Err(ProtocolError::missing("nick"));
        let e = e.within("presence").within("input").unwrap_err();
        assert_eq!(e.field(), "input.presence.nick");
        assert_eq!(e.to_string(), "input.presence.nick: missing");
        let e: Result<(), _> = Err(ProtocolError::missing(""));
        let e = e
            .within_item("sessions", 2)
            .within("occupants[0]")
            .unwrap_err();
        assert_eq!(e.field(), "occupants[0].sessions[2]");
    }

    #[test]
    fn status_names_the_field_not_the_value() {
        let e = ProtocolError::Jid {
            field: "input.leave.from".into(),
            reason: "domainpart empty".into(),
        };
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "input.leave.from: malformed jid: domainpart empty"
        );

        let e = ProtocolError::NoCommonVersion {
            offered_min: 2,
            offered_max: 3,
            supported_min: 1,
            supported_max: 1,
        };
        assert_eq!(
            tonic::Status::from(e).code(),
            tonic::Code::FailedPrecondition
        );
    }
}
