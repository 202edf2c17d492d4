//! The one error type of the load generator.

use std::time::Duration;

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The testbed (Prosody servers, the master process) failed.
    #[error(transparent)]
    Testbed(#[from] dmuc_testbed::Error),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the load generator was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A server answered something the load client cannot go on from.
    #[error("{who}: {what}")]
    Protocol {
        /// The client's JID or user name.
        who: String,
        /// What went wrong, with the offending stanza.
        what: String,
    },
    /// A step did not finish in time.
    #[error("{who}: no {what} within {timeout:?}")]
    Timeout {
        /// The client's JID or user name.
        who: String,
        /// The awaited step.
        what: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// A server process of the system under test is not running.
    #[error("cannot find the process of {0}")]
    NoProcess(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Result alias of the load generator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
