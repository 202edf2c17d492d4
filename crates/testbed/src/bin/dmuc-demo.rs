//! `dmuc-demo --master PATH [--peerhost PATH] [--script-only]`: the local
//! demo of dmuc, the whole system (`scripts/demo` builds everything and
//! runs it).
//!
//! Starts three XMPP domains, `a.test`, `b.test` and `c.test` (one Prosody
//! each, on loopback addresses, with real s2s between them), the
//! `dmuc-master` at `--master` as the component `conference.a.test`
//! (storage `dmuc.sqlite` in the testbed directory), and the
//! `dmuc-peerhost` at `--peerhost` (by default the one next to the master)
//! as `muc-peer.b.test` and `muc-peer.c.test`, each dialling the master
//! over gRPC with mutual TLS (a throw-away test CA), its server handing it
//! its users' stanzas for the service (interception). Every s2s and gRPC
//! connection goes through a counting relay ([`dmuc_testbed::distributed`]).
//!
//! Then it plays the scripted conversation of [`dmuc_testbed::demo`] in
//! `lounge@conference.a.test`, printing what the clients receive, what
//! crossed between domains (b.test split off by cutting its link, and
//! merged back) and, at the end, a table of it; and explains how
//! to join the room with your own client, on any of the three domains.
//! Everything keeps running, with what alice sees printed live, until
//! SIGINT (Ctrl-C) or SIGTERM; then the master is stopped with SIGTERM (the
//! occupants get status 332), then the peerhosts, then the servers.
//!
//! With `--script-only` it exits after the conversation: 0 if every
//! expected stanza arrived in time and said what it should, 1 otherwise
//! (with the servers', the master's and the peerhosts' log tails on
//! stderr), 64 on bad arguments.
//!
//! Environment: `DMUC_TESTBED_PROSODY_LOG`, `DMUC_TESTBED_MASTER_LOG`,
//! `DMUC_TESTBED_PEERHOST_LOG` (log levels, default `info`; the script
//! waits for the master's `info` lines on its peerhosts' streams, so keep
//! the master's at `info` or finer), `DMUC_TESTBED_KEEP=1` (keep the
//! testbed directory with its logs after exit).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dmuc_testbed::demo::{self, Conversation, HOME, PEER_DOMAINS};
use dmuc_testbed::distributed::{
    self, Distributed, PeerhostSetup, peerhost_jid, start_distributed,
};
use dmuc_testbed::minidom::Element;
use dmuc_testbed::scenarios::{DMUC_SERVICE, MasterSetup};
use dmuc_testbed::stanza::{self, escape};
use dmuc_testbed::{C2S_PORT, COMPONENT_PORT, Client, DomainOptions, S2S_PORT, TestbedOptions};

/// BSD sysexits: bad command line.
const EX_USAGE: u8 = 64;
/// Upper bound of the whole scripted conversation (each stanza also has
/// the client timeout).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for the 332 presences at shutdown, in all.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);
/// Lines of each log shown when the script fails.
const LOG_TAIL: usize = 40;
/// What alice answers to private messages while the demo runs.
const ALICE_REPLY: &str = "Hi! I am a scripted client of the dmuc demo, \
                           but the room you are in is real.";

const USAGE: &str = "usage: dmuc-demo --master PATH [--peerhost PATH] [--script-only]";
const HELP: &str = "The local demo of dmuc, the whole system: starts a.test, b.test and c.test
(Prosody, real s2s), the dmuc-master binary as conference.a.test and the
dmuc-peerhost binary as muc-peer.b.test and muc-peer.c.test (gRPC, mutual
TLS), plays a conversation between users of the three domains in
lounge@conference.a.test, shows what crossed between domains, splits
b.test off and merges it back, then keeps everything running for your own
client until Ctrl-C.

  --master PATH     the dmuc-master binary
  --peerhost PATH   the dmuc-peerhost binary (default: next to the master)
  --script-only     exit after the conversation: 0 if it went as expected

Environment: DMUC_TESTBED_PROSODY_LOG, DMUC_TESTBED_MASTER_LOG,
DMUC_TESTBED_PEERHOST_LOG (log levels, default info; keep the master's at
info or finer: the script reads it), DMUC_TESTBED_KEEP=1 (keep the testbed
directory and its logs).";

/// The command line.
struct Args {
    master: PathBuf,
    peerhost: Option<PathBuf>,
    script_only: bool,
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}\n\n{HELP}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("dmuc-demo: {message}\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dmuc-demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut master = None;
    let mut peerhost = None;
    let mut script_only = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--master" => master = Some(args.next().ok_or("--master needs a PATH")?),
            "--peerhost" => peerhost = Some(args.next().ok_or("--peerhost needs a PATH")?),
            "--script-only" => script_only = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let master = master.ok_or("--master PATH is required")?;
    Ok(Args {
        master: master.into(),
        peerhost: peerhost.map(PathBuf::from),
        script_only,
    })
}

/// A log level from the environment, `info` by default.
fn log_level(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| "info".into())
}

async fn run(args: Args) -> ExitCode {
    let peerhost = match &args.peerhost {
        Some(path) => path.clone(),
        None => match distributed::peerhost_binary(&args.master.to_string_lossy()) {
            Ok(path) => path,
            Err(e) => {
                eprintln!("dmuc-demo: {e}; or name it with --peerhost PATH\n{USAGE}");
                return ExitCode::from(EX_USAGE);
            }
        },
    };
    let mut options = TestbedOptions::new()
        .with_domain(DomainOptions::new(HOME))
        .counted();
    for domain in PEER_DOMAINS {
        options = options.with_domain(DomainOptions::new(domain));
    }
    options.log_level = log_level("DMUC_TESTBED_PROSODY_LOG");
    println!(
        "Starting a.test, b.test and c.test (Prosody), dmuc-master as {DMUC_SERVICE}, \
         and dmuc-peerhost on b.test and c.test..."
    );
    let master = MasterSetup {
        log_filter: log_level("DMUC_TESTBED_MASTER_LOG"),
        ..MasterSetup::default()
    };
    let peers = demo::peerhost_setup(PeerhostSetup {
        log_filter: log_level("DMUC_TESTBED_PEERHOST_LOG"),
        ..PeerhostSetup::default()
    });
    let started = start_distributed(
        &args.master,
        &peerhost,
        options,
        &master,
        &PEER_DOMAINS,
        &peers,
    )
    .await;
    let mut system = match started {
        Ok(system) => system,
        Err(e) => {
            eprintln!("dmuc-demo: could not start the system: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_setup(&system, &args.master, &peerhost);

    let played = tokio::time::timeout(SCRIPT_TIMEOUT, demo::run_script(&system, true)).await;
    let conversation = match played {
        Ok(Ok(conversation)) => conversation,
        Ok(Err(e)) => return fail(&mut system, &e.to_string()),
        Err(_) => return fail(&mut system, &format!("timed out after {SCRIPT_TIMEOUT:?}")),
    };
    println!("\nThe scripted conversation went as expected: every stanza above was received.");
    if args.script_only {
        stop(&mut system);
        return ExitCode::SUCCESS;
    }

    print_connect_help(&system, &conversation);
    let Conversation { mut clients, .. } = conversation;
    watch(&mut clients).await;
    println!("\nStopping dmuc-master (SIGTERM)...");
    tokio::task::block_in_place(|| system.master.stop());
    let deadline = tokio::time::Instant::now() + GOODBYE_TIMEOUT;
    for client in &mut clients {
        let who = client.bare_jid().to_owned();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let goodbye = client
            .expect_within("own presence with status 332", left, |el| {
                stanza::is_presence(el)
                    && stanza::has_status(el, 332)
                    && stanza::has_status(el, 110)
            })
            .await;
        match goodbye {
            Ok(p) => println!(
                "  {who} ← unavailable from {}, status 332: the service shut down",
                stanza::from(&p)
            ),
            Err(_) => println!("  {who}: no 332 within {GOODBYE_TIMEOUT:?}"),
        }
    }
    drop(clients);
    println!("Stopping the peerhosts and Prosody...");
    stop(&mut system);
    drop(system);
    println!("Done.");
    ExitCode::SUCCESS
}

/// Reports a failed script with the log tails, stops everything.
fn fail(system: &mut Distributed, error: &str) -> ExitCode {
    eprintln!("\ndmuc-demo: the scripted conversation failed: {error}");
    stop(system);
    eprintln!("\n{}", system.testbed.log_tails(LOG_TAIL));
    ExitCode::FAILURE
}

/// SIGTERM to the master, then to the peerhosts; each waited for (SIGKILL
/// after a grace period). The servers stop when the system is dropped.
fn stop(system: &mut Distributed) {
    tokio::task::block_in_place(|| {
        system.master.stop();
        for peerhost in &mut system.peerhosts {
            peerhost.process.stop();
        }
    });
}

fn print_setup(system: &Distributed, master: &std::path::Path, peerhost: &std::path::Path) {
    let testbed = &system.testbed;
    let dir = testbed.dir().display();
    let ip = |d: &str| testbed.ip(d).map_or("?".into(), |ip| ip.to_string());
    let relay = |d: &str| testbed.relay_ip(d).map_or("?".into(), |ip| ip.to_string());
    println!("\ndmuc demo: one XEP-0045 room, users of three XMPP domains\n");
    println!(
        "  {HOME:<18} Prosody on {} (c2s {C2S_PORT}, s2s {S2S_PORT}, components {COMPONENT_PORT})",
        ip(HOME)
    );
    println!(
        "  {DMUC_SERVICE:<18} dmuc-master ({}): the room's master",
        master.display()
    );
    println!("  {:<18} storage {dir}/dmuc.sqlite", "");
    for domain in PEER_DOMAINS {
        println!(
            "  {domain:<18} Prosody on {} (c2s {C2S_PORT}, s2s {S2S_PORT}, components {COMPONENT_PORT})",
            ip(domain)
        );
        println!(
            "  {:<18} dmuc-peerhost ({}): dials the master",
            peerhost_jid(domain),
            peerhost.display(),
        );
        println!(
            "  {:<18} over gRPC; {domain} hands it its users' stanzas for the room",
            ""
        );
    }
    let relays: Vec<String> = testbed.domains().map(relay).collect();
    println!(
        "  {:<18} s2s between the servers, gRPC (mutual TLS, test CA) from",
        "links"
    );
    println!(
        "  {:<18} each peerhost to the master: all through counting relays",
        ""
    );
    println!("  {:<18} on {}", "", relays.join(", "));
    println!("  {:<18} {dir}/*/prosody.log", "logs");
    println!("  {:<18} {dir}/{DMUC_SERVICE}.log", "");
    println!("  {:<18} {dir}/muc-peer.*.log", "");
    println!();
    println!("  Lines read: who → sent, who ← received. Everything after ← comes from a");
    println!("  stanza the client received; <nick> lines are the reflected messages.");
    println!("  ⇄ what the relays counted meanwhile; ✓ what that shows.");
}

fn print_connect_help(system: &Distributed, conversation: &Conversation) {
    let testbed = &system.testbed;
    let room = &conversation.transcript.room;
    let ip = |d: &str| testbed.ip(d).map_or("?".into(), |ip| ip.to_string());
    let (a, b, c) = (ip("a.test"), ip("b.test"), ip("c.test"));
    let rule = "─".repeat(49);
    println!(
        "
── connect your own client {rule}
  The room stays up with alice, robert, carol and dave in it. To join it
  from this machine:

  account     any name on a.test, b.test or c.test, e.g. you@c.test, and any
              password (insecure auth: an account exists as soon as you log in)
  server      a.test → {a} port {C2S_PORT}
              b.test → {b} port {C2S_PORT}
              c.test → {c} port {C2S_PORT}
              the .test names do not resolve outside the testbed: set your
              client's connect host and port by hand
  encryption  none: TLS is neither offered nor required, so allow plaintext
              connections and PLAIN authentication in your client
  room        {room}
              (on b.test and c.test, the room reaches you from your domain's
              slave: muc-peer.b.test, muc-peer.c.test)

  e.g. profanity:  /connect you@c.test server {c} port {C2S_PORT} tls disable
                   /join {room}

  What alice sees from now on is printed below; send her a private message
  and she answers. Ctrl-C stops everything.
"
    );
}

/// Prints what alice (the first client) receives, and answers private
/// messages, until SIGINT or SIGTERM.
async fn watch(clients: &mut [Client]) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("dmuc-demo: cannot install signal handlers; stopping");
        return;
    };
    let mut alice = clients.first_mut();
    if let Some(client) = alice.as_deref_mut() {
        client.clear_pending(); // leftovers of the script, e.g. her own presence
    }
    loop {
        let next = async {
            match alice.as_deref_mut() {
                Some(client) => {
                    client
                        .expect_within("room activity", Duration::from_secs(3600), |_| true)
                        .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            received = next => {
                let Some(client) = alice.as_deref_mut() else { continue };
                match received {
                    Ok(el) => on_live_stanza(client, &el).await,
                    Err(_) => {
                        if let Some(why) = client.closed() {
                            println!("  alice's stream closed: {why}");
                            alice = None;
                        }
                    }
                }
            }
        }
    }
}

/// Prints one stanza alice received while the demo runs.
async fn on_live_stanza(alice: &mut Client, el: &Element) {
    let from = stanza::from(el);
    let nick = stanza::resource(from).unwrap_or(from);
    let kind = stanza::stanza_type(el);
    if stanza::is_presence(el) && stanza::muc_user(el).is_none() {
        return; // not from a room
    }
    match el.name() {
        "presence" if kind == "unavailable" => println!("  alice  ← {nick} left"),
        "presence" if kind.is_empty() => {
            let (aff, role) = stanza::affiliation_role(el);
            let jid = stanza::muc_item(el)
                .and_then(|i| i.attr("jid"))
                .map_or(String::new(), |j| format!(" ({j})"));
            println!("  alice  ← presence: {nick}{jid} is in the room · {aff}/{role}");
        }
        "message" if kind == "groupchat" => {
            if let Some(body) = stanza::body(el) {
                let ids = stanza::stanza_ids(el, stanza::bare(from)).join(",");
                println!("  <{nick}> {body}");
                println!("           stanza-id {ids}");
            } else if let Some(subject) = stanza::child_text(el, "subject") {
                println!("  alice  ← {nick} set the subject: \"{subject}\"");
            }
        }
        "message" if kind == "chat" => {
            let Some(body) = stanza::body(el) else {
                return; // a chat state notification or the like
            };
            println!("  alice  ← private message from {from}: \"{body}\"");
            let reply = format!(
                "<message type='chat' to='{}'><body>{}</body></message>",
                escape(from),
                escape(ALICE_REPLY)
            );
            if alice.send_raw(&reply).await.is_ok() {
                println!("  alice  → private reply to {nick}");
            }
        }
        "iq" if matches!(kind, "get" | "set") => {
            // Not a full client: refuse politely so that the asker does not wait.
            let error = format!(
                "<iq type='error' to='{}' id='{}'><error type='cancel'>\
                 <service-unavailable xmlns='{}'/></error></iq>",
                escape(from),
                escape(stanza::attr(el, "id")),
                stanza::NS_STANZAS
            );
            let _ = alice.send_raw(&error).await;
        }
        _ => println!("  alice  ← {}", stanza::show(el)),
    }
}
