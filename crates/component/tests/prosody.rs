//! The link against a real Prosody with a `Component` declared.
//!
//! Skipped (passes with a note) when `prosody` is not installed. Kept
//! deliberately small: the shared end-to-end harness lives in
//! `crates/testbed`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use dmuc_component::minidom::Element;
use dmuc_component::{BackoffConfig, Error, Inbound, LinkConfig, spawn};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const STUCK: Duration = Duration::from_secs(30);
const SECRET: &str = "s3cret";

struct Prosody {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn prosody_binary() -> Option<&'static str> {
    ["/usr/bin/prosody", "/usr/local/bin/prosody"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

async fn start_prosody(binary: &str) -> Prosody {
    let dir = tempfile::tempdir().unwrap();
    // A free port for the component listener (tiny race, acceptable in a test).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let config = format!(
        r#"
run_as_root = true
pidfile = "{d}/prosody.pid"
data_path = "{d}"
log = {{ info = "*console" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
component_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {port} }}
modules_enabled = {{ "ping" }}
network_settings = {{ nagle = false }}
VirtualHost "a.test"
Component "conference.a.test"
    component_secret = "{SECRET}"
"#
    );
    let path = dir.path().join("prosody.cfg.lua");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(binary)
        .arg("-F")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait for Prosody to say it listens on the component port.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    timeout(STUCK, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Activated service 'component'") {
                break;
            }
        }
    })
    .await
    .expect("prosody did not start listening");
    // Keep draining its console so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Prosody {
        child,
        port,
        _dir: dir,
    }
}

fn config(port: u16, secret: &str) -> LinkConfig {
    let mut c = LinkConfig::new(
        "conference.a.test".parse().unwrap(),
        format!("localhost:{port}"),
        secret,
    );
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        ..BackoffConfig::default()
    };
    c
}

async fn next(inbound: &mut tokio::sync::mpsc::Receiver<Inbound>) -> Inbound {
    timeout(STUCK, inbound.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn real_prosody_handshake_round_trip_and_wrong_secret() {
    let Some(binary) = prosody_binary() else {
        eprintln!("prosody not installed: skipped");
        return;
    };
    let prosody = start_prosody(binary).await;

    // Wrong secret first: Auth error, retried.
    let shutdown = CancellationToken::new();
    let mut bad = spawn(config(prosody.port, "wrong"), shutdown.clone()).unwrap();
    loop {
        match next(&mut bad.inbound).await {
            Inbound::Disconnected {
                reason: Error::Auth(_),
                ..
            } => break,
            // Prosody may not listen yet on the first attempt.
            Inbound::Disconnected { .. } => continue,
            other => panic!("expected Disconnected(Auth), got {other:?}"),
        }
    }
    shutdown.cancel();
    bad.task.await.unwrap();

    let shutdown = CancellationToken::new();
    let mut link = spawn(config(prosody.port, SECRET), shutdown.clone()).unwrap();
    loop {
        match next(&mut link.inbound).await {
            Inbound::Connected { .. } => break,
            Inbound::Disconnected { .. } => continue,
            other => panic!("expected Connected, got {other:?}"),
        }
    }
    // A ping to the host, answered by Prosody itself: a full round trip.
    let ping: Element = "<iq xmlns='jabber:component:accept' type='get' id='p1' \
        from='conference.a.test' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>"
        .parse()
        .unwrap();
    link.handle.send(ping).await.unwrap();
    // A stanza to our own domain with an odd type comes back to us raw.
    let odd: Element = "<message xmlns='jabber:component:accept' type='bogus' id='o1' \
        from='x@conference.a.test' to='room@conference.a.test'><foo xmlns='urn:x'/></message>"
        .parse()
        .unwrap();
    link.handle.send(odd).await.unwrap();
    let mut seen_pong = false;
    let mut seen_odd = false;
    while !(seen_pong && seen_odd) {
        match next(&mut link.inbound).await {
            Inbound::Stanza(el) if el.attr("id") == Some("p1") => {
                assert_eq!(el.attr("type"), Some("result"));
                assert_eq!(el.attr("from"), Some("a.test"));
                seen_pong = true;
            }
            Inbound::Stanza(el) if el.attr("id") == Some("o1") => {
                assert!(el.has_child("foo", "urn:x"));
                seen_odd = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    shutdown.cancel();
    link.task.await.unwrap();
}
