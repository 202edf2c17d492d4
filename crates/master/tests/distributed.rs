//! The XEP-0045 conformance suite against the whole system: the master on
//! a.test, peerhosts on b.test and c.test. Every remote user of the
//! scenarios is on b.test, so every one of their joins, and every room
//! event for them, goes through b.test's slave of the room.
//!
//! `intercepted`: the same suite with b.test's server handing its users'
//! stanzas for the service to its peerhost (mod_dmuc_intercept), which
//! dials the master and forwards them: everything b.test's users send to
//! the room goes through the peerhost.

use dmuc_testbed::distributed::{PeerhostSetup, peerhost_binary};
use dmuc_testbed::scenarios::Ctx;

async fn system() -> dmuc_testbed::Result<Ctx> {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    Ctx::start_distributed(master, peerhost_binary(master)?, &PeerhostSetup::default()).await
}

async fn intercepting() -> dmuc_testbed::Result<Ctx> {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let setup = PeerhostSetup {
        intercept: true,
        ..PeerhostSetup::default()
    };
    Ctx::start_distributed(master, peerhost_binary(master)?, &setup).await
}

mod through_slaves {
    dmuc_testbed::conformance_tests!(super::system);
}

mod intercepted {
    dmuc_testbed::conformance_tests!(super::intercepting);
}
