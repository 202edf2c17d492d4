//! End-to-end test harness of dmuc: real Prosody domains, real XMPP
//! clients, and a XEP-0045 conformance suite that runs against any MUC
//! service (Prosody's own `mod_muc` as the reference, `dmuc-master` as the
//! subject).
//!
//! # Layout
//!
//! ```text
//! prosody.rs    Testbed: one Prosody per domain on a random 127.X.Y.0/24 block,
//!               standard ports, real s2s (dialback), lua-unbound hosts file
//! process.rs    ManagedProcess (SIGTERM→SIGKILL on drop), MasterProcess/MasterConfig
//! stream.rs     XML stream framing (rxml push parser → minidom elements)
//! client.rs     Client: SASL PLAIN, bind, send raw/typed, expect(pred) with timeout
//! stanza.rs     namespaces and read-only stanza inspection helpers
//! pki.rs        TestCa: a throw-away CA (rcgen) issuing PEM certificates for TLS tests
//! relay.rs      counting TCP relays (bytes, stanzas) in front of s2s and gRPC ports
//! distributed.rs  the whole system: master on a.test, peerhosts elsewhere, TLS, relays
//! muc.rs        XEP-0045 helpers on Client: join sequence, config, admin, groupchat
//! scenarios/    the conformance scenarios, Ctx (service under test + expectations)
//! demo.rs       the demo's scripted conversation (run_script → Transcript)
//! bin/dmuc-demo.rs  the local demo: three domains, master, peerhosts, the script, your client
//! ```
//!
//! ```text
//!   test ──Ctx──► scenario ──► Client(alice@a.test) ──c2s──► Prosody a.test ──► service (muc.a.test
//!                          └─► Client(bob@b.test)   ──c2s──► Prosody b.test ─s2s─┘  or conference.a.test)
//! ```
//!
//! # Running the conformance suite against a service
//!
//! [`conformance_tests!`] generates one `#[test]` per scenario. It takes an
//! async function returning [`Result<Ctx>`](scenarios::Ctx) that starts
//! whatever the service needs; the context (and anything it keeps alive) is
//! dropped after the scenario. For Prosody's own MUC:
//!
//! ```ignore
//! async fn prosody() -> dmuc_testbed::Result<dmuc_testbed::scenarios::Ctx> {
//!     let testbed = dmuc_testbed::Testbed::start(Default::default()).await?;
//!     Ok(dmuc_testbed::scenarios::Ctx::new(testbed, "muc.a.test", dmuc_testbed::scenarios::Expect::prosody()))
//! }
//! dmuc_testbed::conformance_tests!(prosody);              // every scenario
//! dmuc_testbed::conformance_tests!(prosody; join_order);  // a chosen few
//! ```
//!
//! For `dmuc-master` (in `crates/master/tests/`):
//!
//! ```ignore
//! async fn dmuc() -> dmuc_testbed::Result<dmuc_testbed::scenarios::Ctx> {
//!     dmuc_testbed::scenarios::Ctx::start_dmuc_master(env!("CARGO_BIN_EXE_dmuc-master")).await
//! }
//! dmuc_testbed::conformance_tests!(dmuc);
//! ```
//!
//! [`scenarios::Ctx::start_dmuc_master`] declares the external component
//! `conference.a.test` on `a.test`, writes the master's TOML config, spawns
//! it with `--config FILE` ([`MasterProcess`]), waits until the service
//! answers disco#info, and keeps the process alive in the context. Tests
//! that crash or restart the master build the same pieces themselves:
//! [`Testbed::start`], [`MasterProcess::spawn`] / [`MasterProcess::kill9`] /
//! [`MasterProcess::restart`], [`Client::wait_for_service`].
//!
//! On failure the scenario panics with the error (including the stanzas
//! the client received) and the tails of every log in the testbed
//! directory. `DMUC_TESTBED_KEEP=1` keeps that directory;
//! `DMUC_TESTBED_PROSODY_LOG` and `DMUC_TESTBED_MASTER_LOG` set log levels.

mod client;
pub mod demo;
pub mod distributed;
mod error;
mod muc;
pub mod pki;
mod process;
mod prosody;
pub mod relay;
pub mod scenarios;
pub mod stanza;
mod stream;

pub use client::{Client, ClientOptions, DEFAULT_TIMEOUT};
pub use error::{Error, Result};
pub use minidom::{self, Element};
pub use muc::{
    HistoryLimits, JoinOptions, JoinOutcome, Joined, is_occupant_presence, occupant_jid,
};
pub use process::{ManagedProcess, MasterConfig, MasterProcess, spawn_process};
pub use prosody::{
    C2S_PORT, COMPONENT_PORT, DomainOptions, ExternalComponent, InternalMuc, S2S_PORT, Testbed,
    TestbedOptions,
};
