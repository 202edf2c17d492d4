//! The master's signatures on room events relayed down spanning trees.
//!
//! A slave takes a relayed event only if the master signed it: a relay
//! (another peerhost) may drop or delay events, never forge or alter them.
//! The master makes a fresh Ed25519 key pair each run ([`Signer`]) and
//! gives its public key to each slave on its own authenticated stream
//! (`Assign.master_key`); slaves check relayed events with a [`Verifier`].

use prost::Message;
use ring::rand::SystemRandom;
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

#[cfg(test)]
mod tests {
    use super::*;

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
