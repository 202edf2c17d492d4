//! Identifiers that check themselves once, at construction.

use std::fmt;
use std::sync::Arc;

use jid::{BareJid, FullJid, ResourcePart};
use sha2::{Digest, Sha256};

use crate::Error;

/// A room nickname: the resource part of an occupant JID, after resourceprep.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nick(Arc<str>);

impl Nick {
    /// Applies resourceprep; rejects empty and invalid nicknames.
    pub fn new(raw: &str) -> Result<Self, Error> {
        let prepped = ResourcePart::new(raw).map_err(|_| Error::MalformedNick)?;
        if prepped.as_str().trim().is_empty() {
            return Err(Error::MalformedNick);
        }
        Ok(Nick(Arc::from(prepped.as_str())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The occupant JID `room@service/nick`.
    pub fn occupant_jid(&self, room: &BareJid) -> FullJid {
        room.with_resource_str(&self.0)
            .expect("a Nick is a valid resource part by construction")
    }
}

impl TryFrom<String> for Nick {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Nick::new(&s)
    }
}

impl From<Nick> for String {
    fn from(n: Nick) -> String {
        n.0.to_string()
    }
}

impl fmt::Display for Nick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// XEP-0421 occupant id: stable per (room, bare JID), opaque to everyone else.
///
/// Derived as a keyed hash of the service's secret salt, the room and the
/// occupant's bare JID, so it survives restarts without being stored and
/// cannot be reversed into the real JID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OccupantId(Arc<str>);

impl OccupantId {
    pub fn derive(salt: &[u8], room: &BareJid, user: &BareJid) -> Self {
        let mut hash = Sha256::new();
        hash.update(salt);
        hash.update([0]);
        hash.update(room.as_str().as_bytes());
        hash.update([0]);
        hash.update(user.as_str().as_bytes());
        OccupantId(Arc::from(hex::encode(&hash.finalize()[..16])))
    }

    /// Wraps an id read back from storage.
    pub fn from_stored(s: String) -> Self {
        OccupantId(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OccupantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The master's per-room sequence number of a room event. Never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// XEP-0359 stanza id assigned by the room: unique forever.
///
/// Built from the master's boot epoch (incremented and persisted at every
/// start) and the room's sequence number, so an id can never repeat even if
/// a crash loses the tail of a room's sequence.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StanzaId(Arc<str>);

impl StanzaId {
    pub fn assign(epoch: u64, seq: Seq) -> Self {
        StanzaId(Arc::from(format!("{epoch:x}-{:x}", seq.0)))
    }

    /// The provisional id of message `seq` of a slave of `domain` split
    /// from its master since `began`: `split:{domain}:{began:x}:{seq:x}`.
    ///
    /// It can never equal an id the master assigns (those are two hex
    /// numbers joined by `-`, and this one starts with `split:`), nor one
    /// of another split (the domain and the start of the split tell them
    /// apart), and it depends only on what the split log records, so a
    /// restarted peerhost replaying its log gives the same ids again.
    pub fn provisional(domain: &str, began: Timestamp, seq: Seq) -> Self {
        StanzaId(Arc::from(format!(
            "{PROVISIONAL}{domain}:{:x}:{:x}",
            began.0, seq.0
        )))
    }

    /// `s` if it is the provisional id of a message of `domain`'s split
    /// since `began`, exactly as [`Self::provisional`] writes it.
    pub fn parse_provisional(s: &str, domain: &str, began: Timestamp) -> Option<Self> {
        let prefix = format!("{PROVISIONAL}{domain}:{:x}:", began.0);
        let seq = u64::from_str_radix(s.strip_prefix(&prefix)?, 16).ok()?;
        let id = StanzaId::provisional(domain, began, Seq(seq));
        (id.as_str() == s).then_some(id)
    }

    /// Whether a split-off slave assigned this id ([`Self::provisional`]).
    pub fn is_provisional(&self) -> bool {
        self.0.starts_with(PROVISIONAL)
    }

    /// Wraps an id read back from storage.
    pub fn from_stored(s: String) -> Self {
        StanzaId(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const PROVISIONAL: &str = "split:";

impl fmt::Display for StanzaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, given to the state
/// machine with every input (the machine never reads a clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn minus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_sub((secs as i64).saturating_mul(1000)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nick_is_resourceprepped() {
        assert_eq!(Nick::new("Ｍｉｓｓ").unwrap().as_str(), "Miss");
        assert!(Nick::new("").is_err());
        assert!(Nick::new("   ").is_err());
        assert!(Nick::new("bad\u{0007}bell").is_err());
    }

    #[test]
    fn occupant_id_is_stable_and_distinct() {
        let room: BareJid = "r@conference.a.test".parse().unwrap();
        let alice: BareJid = "alice@a.test".parse().unwrap();
        let bob: BareJid = "bob@b.test".parse().unwrap();
        let a1 = OccupantId::derive(b"salt", &room, &alice);
        assert_eq!(a1, OccupantId::derive(b"salt", &room, &alice));
        assert_ne!(a1, OccupantId::derive(b"salt", &room, &bob));
        assert_ne!(a1, OccupantId::derive(b"other", &room, &alice));
        assert!(!a1.as_str().contains("alice"));
    }

    #[test]
    fn stanza_ids_differ_across_epochs() {
        assert_ne!(StanzaId::assign(1, Seq(5)), StanzaId::assign(2, Seq(5)));
    }

    #[test]
    fn provisional_ids_are_their_own_namespace() {
        let p = StanzaId::provisional("b.test", Timestamp(0x1000), Seq(0x1a));
        assert_eq!(p.as_str(), "split:b.test:1000:1a");
        assert!(p.is_provisional());
        assert!(!StanzaId::assign(0x1000, Seq(0x1a)).is_provisional());
        assert_ne!(
            p,
            StanzaId::provisional("c.test", Timestamp(0x1000), Seq(0x1a))
        );
        assert_ne!(
            p,
            StanzaId::provisional("b.test", Timestamp(0x1001), Seq(0x1a))
        );
    }

    #[test]
    fn provisional_ids_parse_back_only_exactly() {
        let began = Timestamp(0x1000);
        let parse = |s| StanzaId::parse_provisional(s, "b.test", began);
        assert_eq!(
            parse("split:b.test:1000:1a"),
            Some(StanzaId::provisional("b.test", began, Seq(0x1a)))
        );
        for bad in [
            "split:c.test:1000:1a",
            "split:b.test:1001:1a",
            "split:b.test:1000:",
            "split:b.test:1000:01a",
            "split:b.test:1000:1A",
            "split:b.test:1000:+1a",
            "split:b.test:1000:1a:2",
            "3-1a",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
