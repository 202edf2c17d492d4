//! The master's signatures on room events relayed down spanning trees.
//!
//! A slave takes a relayed event only if the master signed it: a relay
//! (another peerhost) may drop or delay events, never forge or alter them.
//! The master makes a fresh Ed25519 key pair each run ([`Signer`]) and
//! gives its public key to each slave on its own authenticated stream
//! (`Assign.master_key`); slaves check relayed events with a [`Verifier`].
//!
//! The other way up, a slave whose own stream is down hands its parent
//! frames for the master (acknowledgements, its users' stanzas). The parent
//! must not be able to make or replay them: the master gives each peerhost,
//! on that peerhost's own stream, a key of its own (`Assign.report_key`,
//! derived from a per-run secret: [`ReportKeys`]); the peerhost seals each
//! such frame with it and a counter that only grows ([`ReportKey`]), and the
//! master takes a sealed frame only once, by its counter.

use prost::Message;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::ProtocolError;
use crate::pb;

/// The master's signing key.
#[derive(Debug)]
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    /// A fresh key pair.
    pub fn generate() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system's RNG works");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key ring just made");
        Signer { pair }
    }

    /// The public key (32 bytes), for `Assign.master_key`.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// `event`, encoded and signed.
    pub fn sign(&self, event: &pb::Event) -> pb::SignedEvent {
        let event = event.encode_to_vec();
        let signature = self.pair.sign(&event).as_ref().to_vec();
        pb::SignedEvent { event, signature }
    }
}

/// Checks events against the master's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    key: Vec<u8>,
}

impl Verifier {
    /// The master's public key, as `Assign.master_key` carries it.
    pub fn new(key: Vec<u8>) -> Result<Verifier, ProtocolError> {
        if key.len() != 32 {
            return Err(ProtocolError::Invalid {
                field: "assign.master_key".into(),
                reason: "not an Ed25519 public key",
            });
        }
        Ok(Verifier { key })
    }

    /// The event `signed` carries, if the master signed it.
    pub fn open(&self, signed: &pb::SignedEvent) -> Result<pb::Event, ProtocolError> {
        UnparsedPublicKey::new(&signature::ED25519, &self.key)
            .verify(&signed.event, &signed.signature)
            .map_err(|_| ProtocolError::Invalid {
                field: "signed_event.signature".into(),
                reason: "not the master's signature",
            })?;
        decode(signed)
    }
}

/// The event `signed` carries, unchecked (it came on the master's own
/// authenticated stream).
pub fn decode(signed: &pb::SignedEvent) -> Result<pb::Event, ProtocolError> {
    pb::Event::decode(signed.event.as_slice()).map_err(|_| ProtocolError::Invalid {
        field: "signed_event.event".into(),
        reason: "not an encoded event",
    })
}

/// The master's secret for this run, from which each peerhost's
/// [`ReportKey`] is derived (so that none needs storing).
#[derive(Debug)]
pub struct ReportKeys {
    secret: hmac::Key,
}

impl ReportKeys {
    /// A fresh secret.
    pub fn generate() -> ReportKeys {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .expect("the system's RNG works");
        ReportKeys {
            secret: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    /// `peer`'s key (32 bytes), for its `Assign.report_key` only.
    pub fn for_peer(&self, peer: &str) -> Vec<u8> {
        hmac::sign(&self.secret, peer.as_bytes()).as_ref().to_vec()
    }

    /// Checks a frame `peer` sealed with its key.
    pub fn check(&self, peer: &str, sealed: &Sealed<'_>) -> Result<(), ProtocolError> {
        ReportKey::new(&self.for_peer(peer))?.check(sealed)
    }
}

/// A frame for the master, as a slave's parent carries it up
/// (`ReportRequest`/`RelayedFrame`).
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    /// The encoded `PeerFrame`.
    pub frame: &'a [u8],
    /// Grows with every frame the peerhost seals for the room.
    pub counter: u64,
    /// HMAC-SHA256 of `counter` (8 bytes, big-endian) then `frame`.
    pub mac: &'a [u8],
}

/// A peerhost's key for the frames its parents carry up for it.
#[derive(Clone)]
pub struct ReportKey(hmac::Key);

impl std::fmt::Debug for ReportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportKey(..)")
    }
}

impl ReportKey {
    /// The key as `Assign.report_key` carries it.
    pub fn new(key: &[u8]) -> Result<ReportKey, ProtocolError> {
        if key.len() != 32 {
            return Err(ProtocolError::Invalid {
                field: "assign.report_key".into(),
                reason: "not a 32-byte key",
            });
        }
        Ok(ReportKey(hmac::Key::new(hmac::HMAC_SHA256, key)))
    }

    /// The MAC of `frame` sealed with `counter`.
    pub fn seal(&self, counter: u64, frame: &[u8]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&counter.to_be_bytes());
        ctx.update(frame);
        ctx.sign().as_ref().to_vec()
    }

    /// Whether `sealed` was sealed with this key.
    pub fn check(&self, sealed: &Sealed<'_>) -> Result<(), ProtocolError> {
        let mut message = Vec::with_capacity(8 + sealed.frame.len());
        message.extend_from_slice(&sealed.counter.to_be_bytes());
        message.extend_from_slice(sealed.frame);
        hmac::verify(&self.0, &message, sealed.mac).map_err(|_| ProtocolError::Invalid {
            field: "relayed_frame.mac".into(),
            reason: "not sealed with the peerhost's key",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_frame_checks_only_for_its_peer_counter_and_bytes() {
        let master = ReportKeys::generate();
        let key = ReportKey::new(&master.for_peer("muc-peer.c.test")).unwrap();
        let mac = key.seal(7, b"frame");
        let sealed = Sealed {
            frame: b"frame",
            counter: 7,
            mac: &mac,
        };
        master.check("muc-peer.c.test", &sealed).unwrap();
        // Another peerhost (the parent carrying it) has another key.
        assert!(master.check("muc-peer.b.test", &sealed).is_err());
        // Nor can a frame or its counter be changed.
        let altered = Sealed {
            frame: b"other",
            ..sealed
        };
        assert!(master.check("muc-peer.c.test", &altered).is_err());
        let replayed = Sealed {
            counter: 8,
            ..sealed
        };
        assert!(master.check("muc-peer.c.test", &replayed).is_err());
        // Another run of the master has another secret.
        assert!(
            ReportKeys::generate()
                .check("muc-peer.c.test", &sealed)
                .is_err()
        );
        assert!(ReportKey::new(&[0; 31]).is_err());
    }

    fn event(seq: u64) -> pb::Event {
        pb::Event {
            room: "r@conference.a.test".into(),
            seq,
            now_ms: 1,
            input: None,
        }
    }

    #[test]
    fn a_signed_event_opens_with_the_masters_key_only() {
        let master = Signer::generate();
        let signed = master.sign(&event(7));
        let verifier = Verifier::new(master.public_key()).unwrap();
        assert_eq!(verifier.open(&signed).unwrap(), event(7));

        let other = Verifier::new(Signer::generate().public_key()).unwrap();
        assert!(other.open(&signed).is_err());

        let mut altered = signed.clone();
        altered.event = event(8).encode_to_vec();
        assert!(verifier.open(&altered).is_err());
        assert!(Verifier::new(vec![0; 31]).is_err());
    }
}
