//! `dmuc-demo --master PATH [--script-only]`: the local demo of dmuc
//! (`scripts/demo` builds everything and runs it).
//!
//! Starts two XMPP domains, `a.test` and `b.test` (one Prosody each, on
//! loopback addresses, with real s2s between them), and the `dmuc-master`
//! at `PATH` as the component `conference.a.test` (storage `dmuc.sqlite` in
//! the testbed directory). Then it plays the scripted conversation of
//! [`dmuc_testbed::demo`] in `lounge@conference.a.test`, printing what the
//! clients receive, and explains how to join the room with your own client.
//! Everything keeps running, with what alice sees printed live, until
//! SIGINT (Ctrl-C) or SIGTERM; then the master is stopped with SIGTERM (the
//! occupants get status 332) and the servers after it.
//!
//! With `--script-only` it exits after the conversation: 0 if every
//! expected stanza arrived in time and said what it should, 1 otherwise
//! (with the servers' and the master's log tails on stderr), 64 on bad
//! arguments.
//!
//! Environment: `DMUC_TESTBED_PROSODY_LOG`, `DMUC_TESTBED_MASTER_LOG`
//! (log levels, default `info`), `DMUC_TESTBED_KEEP=1` (keep the testbed
//! directory with its logs after exit).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dmuc_testbed::demo::{self, Conversation};
use dmuc_testbed::minidom::Element;
use dmuc_testbed::scenarios::{DMUC_SERVICE, MasterSetup, start_dmuc_testbed};
use dmuc_testbed::stanza::{self, escape};
use dmuc_testbed::{
    C2S_PORT, COMPONENT_PORT, Client, DomainOptions, MasterProcess, S2S_PORT, Testbed,
    TestbedOptions,
};

/// BSD sysexits: bad command line.
const EX_USAGE: u8 = 64;
/// Upper bound of the whole scripted conversation (each stanza also has
/// the client timeout).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for the 332 presences at shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);
/// Lines of each log shown when the script fails.
const LOG_TAIL: usize = 40;
/// What alice answers to private messages while the demo runs.
const ALICE_REPLY: &str = "Hi! I am a scripted client of the dmuc demo, \
                           but the room you are in is real.";

const USAGE: &str = "usage: dmuc-demo --master PATH [--script-only]";
const HELP: &str = "The local demo of dmuc: starts a.test and b.test (Prosody, real s2s) and the
dmuc-master binary at PATH as conference.a.test, plays a conversation between
users of both domains in lounge@conference.a.test, then keeps everything
running for your own client until Ctrl-C.

  --master PATH   the dmuc-master binary
  --script-only   exit after the conversation: 0 if it went as expected

Environment: DMUC_TESTBED_PROSODY_LOG, DMUC_TESTBED_MASTER_LOG (log levels,
default info), DMUC_TESTBED_KEEP=1 (keep the testbed directory and its logs).";

/// The command line.
struct Args {
    master: PathBuf,
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
    let mut script_only = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--master" => master = Some(args.next().ok_or("--master needs a PATH")?),
            "--script-only" => script_only = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let master = master.ok_or("--master PATH is required")?;
    Ok(Args {
        master: master.into(),
        script_only,
    })
}

/// A log level from the environment, `info` by default.
fn log_level(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| "info".into())
}

async fn run(args: Args) -> ExitCode {
    let mut options = TestbedOptions::new()
        .with_domain(DomainOptions::new("a.test"))
        .with_domain(DomainOptions::new("b.test"));
    options.log_level = log_level("DMUC_TESTBED_PROSODY_LOG");
    println!("Starting a.test and b.test (Prosody) and dmuc-master as {DMUC_SERVICE}...");
    let setup = MasterSetup {
        log_filter: log_level("DMUC_TESTBED_MASTER_LOG"),
        ..MasterSetup::default()
    };
    let started = start_dmuc_testbed(&args.master, options, &setup).await;
    let (testbed, mut master) = match started {
        Ok(pieces) => pieces,
        Err(e) => {
            eprintln!("dmuc-demo: could not start the testbed: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_setup(&testbed, &args);

    let played = tokio::time::timeout(
        SCRIPT_TIMEOUT,
        demo::run_script(&testbed, DMUC_SERVICE, true),
    )
    .await;
    let conversation = match played {
        Ok(Ok(conversation)) => conversation,
        Ok(Err(e)) => return fail(&testbed, &mut master, &e.to_string()),
        Err(_) => {
            return fail(
                &testbed,
                &mut master,
                &format!("timed out after {SCRIPT_TIMEOUT:?}"),
            );
        }
    };
    println!("\nThe scripted conversation went as expected: every stanza above was received.");
    if args.script_only {
        stop_master(&mut master);
        return ExitCode::SUCCESS;
    }

    print_connect_help(&testbed, &conversation);
    let Conversation { mut clients, .. } = conversation;
    watch(&mut clients).await;
    println!("\nStopping dmuc-master (SIGTERM)...");
    stop_master(&mut master);
    for client in &mut clients {
        let who = client.bare_jid().to_owned();
        let goodbye = client
            .expect_within("own presence with status 332", GOODBYE_TIMEOUT, |el| {
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
    println!("Stopping Prosody...");
    drop(testbed);
    println!("Done.");
    ExitCode::SUCCESS
}

/// Reports a failed script with the log tails, stops everything.
fn fail(testbed: &Testbed, master: &mut MasterProcess, error: &str) -> ExitCode {
    eprintln!("\ndmuc-demo: the scripted conversation failed: {error}");
    stop_master(master);
    eprintln!("\n{}", testbed.log_tails(LOG_TAIL));
    ExitCode::FAILURE
}

/// SIGTERM, wait for the exit (SIGKILL after a grace period).
fn stop_master(master: &mut MasterProcess) {
    tokio::task::block_in_place(|| master.stop());
}

fn print_setup(testbed: &Testbed, args: &Args) {
    let dir = testbed.dir().display();
    let ip = |d: &str| testbed.ip(d).map_or("?".into(), |ip| ip.to_string());
    println!("\ndmuc demo: one XEP-0045 room, users of two XMPP domains\n");
    println!(
        "  a.test             Prosody on {} (c2s {C2S_PORT}, s2s {S2S_PORT}, components {COMPONENT_PORT})",
        ip("a.test")
    );
    println!(
        "  b.test             Prosody on {} (c2s {C2S_PORT}, s2s {S2S_PORT})",
        ip("b.test")
    );
    println!(
        "  {DMUC_SERVICE}  dmuc-master ({}), an external component of a.test",
        args.master.display()
    );
    println!("                     storage {dir}/dmuc.sqlite");
    println!("  logs               {dir}/*/prosody.log, {dir}/{DMUC_SERVICE}.log");
    println!();
    println!("  Lines read: who → sent, who ← received. Everything after ← comes from a");
    println!("  stanza the client received; <nick> lines are the reflected messages.");
}

fn print_connect_help(testbed: &Testbed, conversation: &Conversation) {
    let room = &conversation.transcript.room;
    let ip = |d: &str| testbed.ip(d).map_or("?".into(), |ip| ip.to_string());
    let (a, b) = (ip("a.test"), ip("b.test"));
    let rule = "─".repeat(45);
    println!(
        "
── connect your own client {rule}
  The room stays up with alice and robert in it. To join it from this machine:

  account     any name on a.test or b.test, e.g. you@b.test, and any password
              (insecure auth: an account exists as soon as you log in)
  server      a.test → {a} port {C2S_PORT}
              b.test → {b} port {C2S_PORT}
              a.test and b.test do not resolve outside the testbed: set your
              client's connect host and port by hand
  encryption  none: TLS is neither offered nor required, so allow plaintext
              connections and PLAIN authentication in your client
  room        {room} (users of b.test reach it over s2s)

  e.g. profanity:  /connect you@b.test server {b} port {C2S_PORT} tls disable
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
