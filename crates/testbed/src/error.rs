//! The one error type of the testbed.

use std::time::Duration;

/// Everything that can go wrong while starting servers, driving clients or
/// checking a scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the testbed was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No free loopback block was found for a testbed.
    #[error("no free loopback address block after {0} attempts")]
    NoAddressBlock(usize),
    /// A Prosody process exited or did not open its ports in time.
    #[error("prosody for {domain} did not start: {reason}\n--- log tail ---\n{log}")]
    ProsodyStart {
        /// The domain whose server failed.
        domain: String,
        /// Why the start was judged failed.
        reason: String,
        /// The end of its log.
        log: String,
    },
    /// A domain name that the testbed does not serve.
    #[error("unknown domain {0}")]
    UnknownDomain(String),
    /// The peer sent XML that does not parse.
    #[error("malformed xml from the server: {0}")]
    Xml(String),
    /// The XML stream ended or reported a stream error.
    #[error("stream closed: {0}")]
    StreamClosed(String),
    /// Stream negotiation (SASL, bind) failed.
    #[error("stream negotiation failed: {0}")]
    Negotiation(String),
    /// Nothing matching arrived in time.
    #[error("timed out after {timeout:?} waiting for {what}; received meanwhile:\n{received}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// The stanzas that did arrive (pending and recent).
        received: String,
    },
    /// A stanza arrived that breaks the expected protocol.
    #[error("unexpected stanza ({what}):\n{stanza}")]
    Unexpected {
        /// What was wrong with it.
        what: String,
        /// The stanza, serialised.
        stanza: String,
    },
    /// A conformance check failed.
    #[error("check failed: {0}")]
    Check(String),
    /// The test PKI could not make a key or certificate.
    #[error("test pki: {0}")]
    Pki(#[from] rcgen::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// An [`Error::Unexpected`] for `stanza`.
    pub(crate) fn unexpected(what: impl Into<String>, stanza: &minidom::Element) -> Self {
        Self::Unexpected {
            what: what.into(),
            stanza: String::from(stanza),
        }
    }
}

/// Result alias of the testbed.
pub type Result<T, E = Error> = std::result::Result<T, E>;
