//! Conversions between `pb` messages and `dmuc_room` types, one file per
//! area. Domain to wire is infallible (`From<&T>`); wire to domain
//! (`TryFrom<pb::T>`) re-validates everything through the domain newtypes,
//! as if the bytes came from a stranger: they come from another operator's
//! binary.
//!
//! - [`input`]: `Input` (every stanza kind a room handles).
//! - [`snapshot`]: `RoomSnapshot` (a room's whole state).
//! - [`frames`]: [`RoomEvent`](frames::RoomEvent) and
//!   [`SlaveStart`](frames::SlaveStart), the validated contents of `Event`
//!   and `CreateSlave`.
//! - `enums` and this module: the scalar pieces they share (JIDs, nicks,
//!   payloads, enums).
//!
//! Errors are built at the leaf with the field's own name and get the
//! enclosing fields prepended on the way out (`error::Within`).

mod enums;
pub mod frames;
pub mod input;
pub mod snapshot;

use dmuc_room::{Nick, Payload};
use jid::{BareJid, FullJid};

use crate::ProtocolError;

fn full_jid(s: &str, field: &str) -> Result<FullJid, ProtocolError> {
    FullJid::new(s).map_err(|e| ProtocolError::Jid {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

fn bare_jid(s: &str, field: &str) -> Result<BareJid, ProtocolError> {
    BareJid::new(s).map_err(|e| ProtocolError::Jid {
        field: field.to_owned(),
        reason: e.to_string(),
    })
}

fn nick(s: &str, field: &str) -> Result<Nick, ProtocolError> {
    Nick::new(s).map_err(|_| ProtocolError::Nick {
        field: field.to_owned(),
    })
}

fn payload(xml: &str, field: &str) -> Result<Payload, ProtocolError> {
    Payload::from_xml(xml).map_err(|source| ProtocolError::Payload {
        field: field.to_owned(),
        source,
    })
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ProtocolError> {
    value.ok_or_else(|| ProtocolError::missing(field))
}

/// Sizes travel as `uint64`; a 32-bit receiver refuses what it cannot hold.
fn size(v: u64, field: &str) -> Result<usize, ProtocolError> {
    usize::try_from(v).map_err(|_| ProtocolError::invalid(field, "out of range"))
}
