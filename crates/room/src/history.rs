//! Room messages, the subject, and the discussion history sent to joiners.

use std::collections::VecDeque;
use std::sync::Arc;

use jid::BareJid;
use minidom::Element;
use minidom::tree_builder::TreeBuilder;

use crate::{Error, Nick, OccupantId, Seq, StanzaId, Timestamp};

/// Wraps a payload while it is parsed back. The namespace is bound to a
/// prefix, never made the default, so that a child without a namespace does
/// not inherit it.
const WRAPPER_OPEN: &str = "<dmuc:payload xmlns:dmuc='urn:dmuc:payload'>";
const WRAPPER_CLOSE: &str = "</dmuc:payload>";

/// Opaque XML children of a stanza (body, origin-id, chat states, ...),
/// carried through unchanged and shared between recipients.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Payload(pub Arc<[Element]>);

impl Payload {
    pub fn new(children: Vec<Element>) -> Self {
        Payload(children.into())
    }

    pub fn elements(&self) -> &[Element] {
        &self.0
    }

    /// The children as one string of XML: each serialized on its own, with
    /// its own namespace declarations, concatenated (empty for no children).
    /// This is how payloads are stored and sent to peerhosts; serializing
    /// what [`Payload::from_xml`] parsed gives the same text again.
    ///
    /// Payloads come from parsed stanzas, so every child serializes. One that
    /// does not (only possible for an element built in code with an invalid
    /// name or character) could not be sent to anyone either: it is left out
    /// rather than failing the stanza.
    pub fn to_xml(&self) -> String {
        let mut out = Vec::new();
        for element in self.elements() {
            let before = out.len();
            let written = element.write_to(&mut out);
            debug_assert!(written.is_ok(), "unserializable payload child: {written:?}");
            if written.is_err() {
                out.truncate(before);
            }
        }
        // The writer only ever emits UTF-8.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Parses what [`Payload::to_xml`] wrote back into elements. Text between
    /// the children (whitespace) is not part of a payload and is dropped.
    pub fn from_xml(xml: &str) -> Result<Payload, Error> {
        if xml.is_empty() {
            return Ok(Payload::default());
        }
        let wrapped = format!("{WRAPPER_OPEN}{xml}{WRAPPER_CLOSE}");
        let malformed = |e: &dyn std::fmt::Display| Error::MalformedPayload(e.to_string());
        // `Element::from_str` stops at the end of the root and ignores what
        // follows, so a payload that closes the wrapper early would be cut
        // short silently; this loop also checks that nothing follows.
        let mut reader = minidom::rxml::RawReader::new(wrapped.as_bytes());
        let mut tree = TreeBuilder::new();
        let root = loop {
            match reader.read().map_err(|e| malformed(&e))? {
                Some(event) => tree.process_event(event).map_err(|e| malformed(&e))?,
                None => return Err(malformed(&"unexpected end")),
            }
            if let Some(root) = tree.root.take() {
                break root;
            }
        };
        if !matches!(reader.read(), Ok(None)) {
            return Err(malformed(&"content after the payload"));
        }
        Ok(Payload::new(root.children().cloned().collect()))
    }
}

/// A groupchat message as the room sequenced it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomMessage {
    pub seq: Seq,
    pub stanza_id: StanzaId,
    pub occupant_id: OccupantId,
    pub nick: Nick,
    /// The sender's bare JID (shown in non-anonymous history, used for moderation).
    pub sender: BareJid,
    /// The sender's own `id`, reflected unchanged.
    pub id: Option<String>,
    pub at: Timestamp,
    pub payload: Payload,
    /// Approximate size in characters of the stanza, for `maxchars`.
    pub size: usize,
}

/// The room subject and who set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub text: String,
    pub nick: Option<Nick>,
    pub at: Timestamp,
}

/// XEP-0045 §7.2.14 limits a joiner puts on the history it receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    pub max_chars: Option<usize>,
    pub max_stanzas: Option<usize>,
    pub seconds: Option<u64>,
    pub since: Option<Timestamp>,
}

/// The most recent messages of a room, oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    messages: VecDeque<Arc<RoomMessage>>,
}

impl History {
    /// Appends a message, dropping the oldest beyond `keep`.
    pub fn push(&mut self, message: Arc<RoomMessage>, keep: usize) {
        self.messages.push_back(message);
        self.trim(keep);
    }

    pub fn trim(&mut self, keep: usize) {
        while self.messages.len() > keep {
            self.messages.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<RoomMessage>> {
        self.messages.iter()
    }

    /// The messages a joiner gets under `request`, oldest first: whole
    /// stanzas only, the newest that fit every limit.
    pub fn select(&self, request: &HistoryRequest, now: Timestamp) -> Vec<Arc<RoomMessage>> {
        let oldest = match (request.seconds.map(|s| now.minus_secs(s)), request.since) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut chars = 0usize;
        let mut picked: Vec<_> = self
            .messages
            .iter()
            .rev()
            .take(request.max_stanzas.unwrap_or(usize::MAX))
            .take_while(|m| oldest.is_none_or(|t| m.at >= t))
            .take_while(|m| {
                chars += m.size;
                request.max_chars.is_none_or(|max| chars <= max)
            })
            .cloned()
            .collect();
        picked.reverse();
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, at: i64, size: usize) -> Arc<RoomMessage> {
        Arc::new(RoomMessage {
            seq: Seq(seq),
            stanza_id: StanzaId::assign(1, Seq(seq)),
            occupant_id: OccupantId::from_stored("o".into()),
            nick: Nick::new("n").unwrap(),
            sender: "a@a.test".parse().unwrap(),
            id: None,
            at: Timestamp(at),
            payload: Payload::default(),
            size,
        })
    }

    fn payload_round_trip(xml: &[&str]) {
        let elements: Vec<Element> = xml.iter().map(|x| x.parse().unwrap()).collect();
        let payload = Payload::new(elements);
        let text = payload.to_xml();
        let back = Payload::from_xml(&text).unwrap();
        assert_eq!(back, payload, "serialized as {text}");
        // Serializing again gives the same text: nothing drifts across
        // restarts or hops between master and peerhost.
        assert_eq!(back.to_xml(), text);
    }

    #[test]
    fn payload_xml_round_trips() {
        payload_round_trip(&[]);
        payload_round_trip(&[
            "<body xmlns='jabber:client' xml:lang='en'>a &lt;b&gt; &amp; c \"q\" 'a' ]]&gt; ünï 🎉</body>",
            "<origin-id xmlns='urn:xmpp:sid:0' id='x&amp;y&lt;z'/>",
            "<active xmlns='http://jabber.org/protocol/chatstates'/>",
        ]);
        payload_round_trip(&[
            "<x:outer xmlns:x='urn:a' xmlns='urn:b' x:attr='1' plain='v'>\
               <inner>text<deep xmlns='urn:c'>more</deep>tail</inner>\
               <x:again/>\
             </x:outer>",
        ]);
        payload_round_trip(&[
            "<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>Hi <b>there</b></p></body></html>",
        ]);
        // A child using the wrapper's own prefix for another namespace.
        payload_round_trip(&["<dmuc:x xmlns:dmuc='urn:other'><dmuc:y/></dmuc:x>"]);
    }

    #[test]
    fn malformed_payload_is_an_error() {
        for bad in [
            "<unclosed",
            "<a xmlns='x'></b>",
            // Closing the wrapper early must not silently drop the rest.
            "<a xmlns='x'/></dmuc:payload><evil xmlns='x'/>",
            "<a xmlns='x'/></dmuc:payload>",
        ] {
            assert!(
                matches!(Payload::from_xml(bad), Err(Error::MalformedPayload(_))),
                "{bad}"
            );
        }
    }

    fn seqs(v: &[Arc<RoomMessage>]) -> Vec<u64> {
        v.iter().map(|m| m.seq.0).collect()
    }

    fn history() -> History {
        let mut h = History::default();
        for i in 1..=5 {
            h.push(msg(i, i as i64 * 1000, 100), 4);
        }
        h
    }

    #[test]
    fn keeps_the_newest() {
        let h = history();
        assert_eq!(
            seqs(&h.select(&HistoryRequest::default(), Timestamp(0))),
            [2, 3, 4, 5]
        );
    }

    #[test]
    fn limits_combine() {
        let h = history();
        let now = Timestamp(5000);
        let req = |r: HistoryRequest| seqs(&h.select(&r, now));
        assert_eq!(
            req(HistoryRequest {
                max_stanzas: Some(2),
                ..Default::default()
            }),
            [4, 5]
        );
        assert!(
            req(HistoryRequest {
                max_chars: Some(0),
                ..Default::default()
            })
            .is_empty()
        );
        assert_eq!(
            req(HistoryRequest {
                max_chars: Some(250),
                ..Default::default()
            }),
            [4, 5]
        );
        assert_eq!(
            req(HistoryRequest {
                seconds: Some(2),
                ..Default::default()
            }),
            [3, 4, 5]
        );
        assert_eq!(
            req(HistoryRequest {
                since: Some(Timestamp(4000)),
                seconds: Some(3),
                ..Default::default()
            }),
            [4, 5]
        );
    }
}
