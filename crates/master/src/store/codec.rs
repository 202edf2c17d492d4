//! Conversions between database rows and `dmuc_room` types.
//!
//! Stored values are re-validated on the way out (JIDs, nicks, affiliations),
//! so a damaged row becomes a [`StoreError::Invalid`] instead of a room built
//! on bad data.

use dmuc_room::{
    Affiliation, Nick, OccupantId, Payload, RoomConfig, RoomMessage, Seq, StanzaId, Timestamp,
};
use jid::BareJid;

use super::StoreError;

/// A `rooms` row, subject included.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct RoomRow {
    pub jid: String,
    pub config: String,
    pub subject_text: Option<String>,
    pub subject_nick: Option<String>,
    pub subject_at: Option<i64>,
}

/// A `messages` row without its room.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct MessageRow {
    pub seq: i64,
    pub stanza_id: String,
    pub occupant_id: String,
    pub nick: String,
    pub sender: String,
    pub msg_id: Option<String>,
    pub at_ms: i64,
    pub size: i64,
    pub payload_xml: String,
}

impl MessageRow {
    pub fn into_message(self) -> Result<RoomMessage, StoreError> {
        Ok(RoomMessage {
            seq: Seq(u64_from_db(self.seq, "seq")?),
            stanza_id: StanzaId::from_stored(self.stanza_id),
            occupant_id: OccupantId::from_stored(self.occupant_id),
            nick: nick(&self.nick)?,
            sender: jid(&self.sender)?,
            id: self.msg_id,
            at: Timestamp(self.at_ms),
            payload: Payload::from_xml(&self.payload_xml)
                .map_err(|e| StoreError::Invalid(format!("stored payload: {e}")))?,
            size: usize::try_from(self.size)
                .map_err(|_| StoreError::Invalid(format!("negative size {}", self.size)))?,
        })
    }
}

pub(super) fn config_to_json(config: &RoomConfig) -> Result<String, StoreError> {
    serde_json::to_string(config).map_err(|e| StoreError::Invalid(format!("room config: {e}")))
}

pub(super) fn config(json: &str) -> Result<RoomConfig, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Invalid(format!("stored room config: {e}")))
}

pub(super) fn jid(s: &str) -> Result<BareJid, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Invalid(format!("stored jid {s:?}: {e}")))
}

pub(super) fn nick(s: &str) -> Result<Nick, StoreError> {
    Nick::new(s).map_err(|_| StoreError::Invalid(format!("stored nick {s:?}")))
}

pub(super) fn affiliation(s: &str) -> Result<Affiliation, StoreError> {
    Affiliation::parse(s).ok_or_else(|| StoreError::Invalid(format!("stored affiliation {s:?}")))
}

/// SQLite integers are signed; sequence numbers and the epoch never reach 2^63.
pub(super) fn u64_to_db(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} out of range")))
}

pub(super) fn u64_from_db(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Invalid(format!("stored {what} {v} is negative")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The payload XML itself is tested with `Payload::to_xml` in dmuc-room.
    #[test]
    fn damaged_payload_is_invalid_data() {
        let row = MessageRow {
            seq: 1,
            stanza_id: "1-1".into(),
            occupant_id: "o".into(),
            nick: "n".into(),
            sender: "a@a.test".into(),
            msg_id: None,
            at_ms: 0,
            size: 1,
            payload_xml: "<unclosed".into(),
        };
        assert!(matches!(row.into_message(), Err(StoreError::Invalid(_))));
    }
}
