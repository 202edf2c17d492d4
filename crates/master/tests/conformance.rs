//! The XEP-0045 conformance suite (the same scenarios that pass against
//! Prosody's own mod_muc) against `dmuc-master`, with users on two domains.

async fn dmuc() -> dmuc_testbed::Result<dmuc_testbed::scenarios::Ctx> {
    dmuc_testbed::scenarios::Ctx::start_dmuc_master(env!("CARGO_BIN_EXE_dmuc-master")).await
}

dmuc_testbed::conformance_tests!(dmuc);
