//! Room messages, the subject, and the discussion history sent to joiners.

use std::collections::VecDeque;
use std::sync::Arc;

use jid::BareJid;
use minidom::Element;

use crate::{Nick, OccupantId, Seq, StanzaId, Timestamp};

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
