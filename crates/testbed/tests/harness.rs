//! Tests of the harness itself: s2s between domains, server restart,
//! managed child processes.

use std::time::Duration;

use dmuc_testbed::stanza::{self, body};
use dmuc_testbed::{MasterConfig, MasterProcess, Testbed, TestbedOptions};

/// Sends a chat message from `from` to `to`'s bare JID and awaits it.
async fn chat(
    from: &mut dmuc_testbed::Client,
    to: &mut dmuc_testbed::Client,
    text: &str,
) -> anyhow::Result<()> {
    let bare = to.bare_jid().to_owned();
    from.send_raw(&format!(
        "<message type='chat' to='{bare}'><body>{text}</body></message>"
    ))
    .await?;
    let got = to
        .expect("chat", |el| {
            stanza::is_message(el) && body(el).as_deref() == Some(text)
        })
        .await?;
    assert_eq!(stanza::bare(stanza::from(&got)), from.bare_jid());
    Ok(())
}

#[tokio::test]
async fn s2s_works_and_survives_a_restart() -> anyhow::Result<()> {
    let mut testbed = Testbed::start(TestbedOptions::default()).await?;
    assert_ne!(testbed.ip("a.test")?, testbed.ip("b.test")?);
    assert_eq!(testbed.ip("muc.b.test")?, testbed.ip("b.test")?);
    let mut alice = testbed.client("a.test", "alice").await?;
    let mut bob = testbed.client("b.test", "bob").await?;
    chat(&mut alice, &mut bob, "over s2s").await?;

    testbed.restart("b.test").await?;
    let mut bob = testbed.client("b.test", "bob").await?;
    chat(&mut alice, &mut bob, "after restart").await?;
    chat(&mut bob, &mut alice, "and back").await?;
    assert!(testbed.log("b.test")?.contains("Received[s2sin]"));
    Ok(())
}

#[tokio::test]
async fn external_component_port_is_open() -> anyhow::Result<()> {
    let mut options = TestbedOptions::default();
    options
        .domain_mut("a.test")
        .expect("default domain")
        .components
        .push(dmuc_testbed::ExternalComponent {
            jid: "conference.a.test".into(),
            secret: "s3cret".into(),
            validate_from_addresses: false,
        });
    let testbed = Testbed::start(options).await?;
    assert_eq!(testbed.component_secret("conference.a.test")?, "s3cret");
    tokio::net::TcpStream::connect(testbed.component_addr("conference.a.test")?).await?;
    // Not connected: the server answers for the component with an error.
    let mut bob = testbed.client("b.test", "bob").await?;
    let err = bob
        .wait_for_service("conference.a.test", Duration::from_millis(200))
        .await;
    assert!(err.is_err());
    Ok(())
}

#[tokio::test]
async fn master_process_is_spawned_killed_and_restarted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("fake-master");
    std::fs::write(&script, "#!/bin/sh\necho \"started $*\"\nexec sleep 600\n")?;
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()?;
    let config = MasterConfig {
        component_jid: "conference.a.test".into(),
        server: "127.0.0.1:5347".parse()?,
        secret: "s3cret".into(),
        storage_path: dir.path().join("dmuc.sqlite"),
        log_filter: "debug".into(),
        extra_toml: String::new(),
    };
    let mut master = MasterProcess::spawn(&script, &config, dir.path())?;
    let toml = std::fs::read_to_string(master.config_path())?;
    assert!(toml.contains("jid = \"conference.a.test\""));
    wait_for_starts(&master, 1).await;
    master.kill9();
    master.restart()?;
    wait_for_starts(&master, 2).await;
    assert!(master.try_exit_status().is_none());
    Ok(())
}

/// Polls the log until the fake binary has started `n` times (its output
/// is the only event it gives).
async fn wait_for_starts(master: &MasterProcess, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while master.log().matches("started --config").count() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log: {}",
            master.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
