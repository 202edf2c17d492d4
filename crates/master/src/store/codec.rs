//! Conversions between database rows and `dmuc_room` types.
//!
//! Stored values are re-validated on the way out (JIDs, nicks, affiliations),
//! so a damaged row becomes a [`StoreError::Invalid`] instead of a room built
//! on bad data.

use dmuc_room::{
    Affiliation, Nick, OccupantId, Payload, RoomConfig, RoomMessage, Seq, StanzaId, Timestamp,
};
use jid::BareJid;
use minidom::Element;

use super::StoreError;

/// The namespace of the wrapper element used to parse a stored payload back.
/// It is bound to a prefix, never the default namespace, so that a child
/// without a namespace does not inherit it.
const PAYLOAD_WRAPPER_OPEN: &str = "<dmuc:payload xmlns:dmuc='urn:dmuc:store:payload'>";
const PAYLOAD_WRAPPER_CLOSE: &str = "</dmuc:payload>";

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
            payload: payload_from_xml(&self.payload_xml)?,
            size: usize::try_from(self.size)
                .map_err(|_| StoreError::Invalid(format!("negative size {}", self.size)))?,
        })
    }
}

/// The children of a payload as concatenated XML, each with its own namespace declarations.
pub(super) fn payload_to_xml(payload: &Payload) -> Result<String, StoreError> {
    let mut out = Vec::new();
    for element in payload.elements() {
        element
            .write_to(&mut out)
            .map_err(|e| StoreError::Invalid(format!("unserializable payload: {e}")))?;
    }
    String::from_utf8(out).map_err(|_| StoreError::Invalid("payload is not UTF-8".into()))
}

/// Parses what [`payload_to_xml`] wrote back into elements.
pub(super) fn payload_from_xml(xml: &str) -> Result<Payload, StoreError> {
    if xml.is_empty() {
        return Ok(Payload::default());
    }
    let wrapped = format!("{PAYLOAD_WRAPPER_OPEN}{xml}{PAYLOAD_WRAPPER_CLOSE}");
    let root: Element = wrapped
        .parse()
        .map_err(|e| StoreError::Invalid(format!("stored payload: {e}")))?;
    Ok(Payload::new(root.children().cloned().collect()))
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

    fn round_trip(xml: &[&str]) {
        let elements: Vec<Element> = xml.iter().map(|x| x.parse().unwrap()).collect();
        let payload = Payload::new(elements);
        let stored = payload_to_xml(&payload).unwrap();
        let back = payload_from_xml(&stored).unwrap();
        assert_eq!(back, payload, "stored as {stored}");
        // Serializing again gives the same text: nothing drifts across restarts.
        assert_eq!(payload_to_xml(&back).unwrap(), stored);
    }

    #[test]
    fn payload_xml_round_trips() {
        round_trip(&[]);
        round_trip(&[
            "<body xmlns='jabber:client' xml:lang='en'>a &lt;b&gt; &amp; c \"q\" 'a' ]]&gt; ünï 🎉</body>",
            "<origin-id xmlns='urn:xmpp:sid:0' id='x&amp;y&lt;z'/>",
            "<active xmlns='http://jabber.org/protocol/chatstates'/>",
        ]);
        round_trip(&[
            "<x:outer xmlns:x='urn:a' xmlns='urn:b' x:attr='1' plain='v'>\
               <inner>text<deep xmlns='urn:c'>more</deep>tail</inner>\
               <x:again/>\
             </x:outer>",
        ]);
        round_trip(&[
            "<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>Hi <b>there</b></p></body></html>",
        ]);
    }

    #[test]
    fn damaged_payload_is_an_error() {
        assert!(matches!(
            payload_from_xml("<unclosed"),
            Err(StoreError::Invalid(_))
        ));
    }
}
