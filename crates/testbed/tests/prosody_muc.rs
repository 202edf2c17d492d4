//! The conformance suite against Prosody's own `mod_muc` (`muc.a.test`):
//! proof that the scenarios test XEP-0045, not our reading of it.

use dmuc_testbed::scenarios::{Ctx, Expect};
use dmuc_testbed::{Testbed, TestbedOptions};

async fn prosody_muc() -> dmuc_testbed::Result<Ctx> {
    let testbed = Testbed::start(TestbedOptions::default()).await?;
    Ok(Ctx::new(testbed, "muc.a.test", Expect::prosody()))
}

dmuc_testbed::conformance_tests!(prosody_muc);
