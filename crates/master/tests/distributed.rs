//! The XEP-0045 conformance suite against the whole system: the master on
//! a.test, peerhosts on b.test and c.test. Every remote user of the
//! scenarios is on b.test, so every one of their joins, and every room
//! event for them, goes through b.test's slave of the room.

async fn system() -> dmuc_testbed::Result<dmuc_testbed::scenarios::Ctx> {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    let peerhost = dmuc_testbed::distributed::peerhost_binary(master)?;
    dmuc_testbed::scenarios::Ctx::start_distributed(master, peerhost).await
}

dmuc_testbed::conformance_tests!(system);
