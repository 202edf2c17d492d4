//! Choosing the terms of a stream from the master's `Hello`.

use std::ops::RangeInclusive;

use crate::{ProtocolError, pb};

/// The terms both sides agreed on: what the peerhost puts in its `Welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The highest version both sides speak.
    pub version: u32,
    /// The features both sides support, in the peerhost's order.
    pub features: Vec<String>,
}

impl Agreed {
    /// The `Welcome` announcing these terms.
    pub fn welcome(&self, peer_jid: &str, domain: &str) -> pb::Welcome {
        pb::Welcome {
            version: self.version,
            features: self.features.clone(),
            peer_jid: peer_jid.to_owned(),
            domain: domain.to_owned(),
            resumable: Vec::new(),
            intercepts: false,
        }
    }
}

/// Chooses the highest version in both `hello`'s range and `supported`, and
/// the features in both `hello.features` and `features`.
///
/// Pure, so the peerhost's stream handler only decides what to do with the
/// result (send `Welcome`, or `Refused` with the error's message).
pub fn negotiate(
    hello: &pb::Hello,
    supported: RangeInclusive<u32>,
    features: &[&str],
) -> Result<Agreed, ProtocolError> {
    if hello.min_version == 0 {
        return Err(ProtocolError::invalid(
            "hello.min_version",
            "versions start at 1",
        ));
    }
    if hello.min_version > hello.max_version {
        return Err(ProtocolError::invalid(
            "hello.max_version",
            "below min_version",
        ));
    }
    let low = hello.min_version.max(*supported.start());
    let high = hello.max_version.min(*supported.end());
    if low > high {
        return Err(ProtocolError::NoCommonVersion {
            offered_min: hello.min_version,
            offered_max: hello.max_version,
            supported_min: *supported.start(),
            supported_max: *supported.end(),
        });
    }
    let mut agreed: Vec<String> = Vec::new();
    for f in features {
        if hello.features.iter().any(|h| h == f) && !agreed.iter().any(|a| a == f) {
            agreed.push((*f).to_owned());
        }
    }
    Ok(Agreed {
        version: high,
        features: agreed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min: u32, max: u32, features: &[&str]) -> pb::Hello {
        pb::Hello {
            min_version: min,
            max_version: max,
            features: features.iter().map(|f| (*f).to_owned()).collect(),
            master_jid: "conference.a.test".into(),
        }
    }

    #[test]
    fn highest_common_version_wins() {
        let agreed = negotiate(&hello(1, 3, &[]), 2..=5, &[]).unwrap();
        assert_eq!(agreed.version, 3);
        assert_eq!(negotiate(&hello(2, 7, &[]), 1..=4, &[]).unwrap().version, 4);
        assert_eq!(negotiate(&hello(1, 1, &[]), 1..=1, &[]).unwrap().version, 1);
        // Touching ranges overlap in one version.
        assert_eq!(negotiate(&hello(1, 2, &[]), 2..=9, &[]).unwrap().version, 2);
    }

    #[test]
    fn disjoint_versions_are_refused() {
        let err = negotiate(&hello(3, 4, &[]), 1..=2, &[]).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::NoCommonVersion {
                offered_min: 3,
                offered_max: 4,
                supported_min: 1,
                supported_max: 2,
            }
        );
        assert_eq!(
            err.to_string(),
            "no common protocol version: offered 3..=4, supported 1..=2"
        );
        assert!(matches!(
            negotiate(&hello(1, 1, &[]), 2..=2, &[]),
            Err(ProtocolError::NoCommonVersion { .. })
        ));
    }

    #[test]
    fn malformed_ranges_are_invalid() {
        assert_eq!(
            negotiate(&hello(0, 1, &[]), 1..=1, &[])
                .unwrap_err()
                .field(),
            "hello.min_version"
        );
        assert_eq!(
            negotiate(&hello(3, 2, &[]), 1..=5, &[])
                .unwrap_err()
                .field(),
            "hello.max_version"
        );
    }

    #[test]
    fn features_are_the_intersection_in_our_order() {
        let agreed = negotiate(
            &hello(1, 1, &["zeta", "resync", "keepalive-echo", "resync"]),
            1..=1,
            &["keepalive-echo", "resync", "other"],
        )
        .unwrap();
        assert_eq!(agreed.features, ["keepalive-echo", "resync"]);
        assert!(
            negotiate(&hello(1, 1, &["a"]), 1..=1, &["b"])
                .unwrap()
                .features
                .is_empty()
        );
    }

    #[test]
    fn our_own_hello_agrees_with_ourselves() {
        let agreed = negotiate(
            &crate::hello("conference.a.test"),
            crate::SUPPORTED_VERSIONS,
            crate::feature::ALL,
        )
        .unwrap();
        assert_eq!(agreed.version, crate::PROTOCOL_VERSION);
        assert_eq!(agreed.features, crate::feature::ALL);
        let welcome = agreed.welcome("peer.b.test", "b.test");
        assert_eq!(welcome.version, 1);
        assert_eq!(welcome.domain, "b.test");
    }
}
