//! `dmuc-bench`: a load generator that drives one room with N occupants,
//! spread evenly over D domains (`a.test`, `b.test`, ...; by default two,
//! so half the deliveries cross s2s), at a fixed message rate, on
//! Prosody's own `mod_muc` and on dmuc, each on a fresh testbed, and
//! compares them in one run. dmuc is `dmuc-master` alone, or with
//! `--peerhosts` the distributed system: the master on `a.test` and a
//! `dmuc-peerhost` on every other domain, each delivering the room's events
//! to its own domain's users.
//!
//! # Usage
//!
//! ```text
//! scripts/bench                                    # N=100, 100 msg/s, 10 s, a.test + b.test
//! scripts/bench --occupants 1000 --rate 10
//! scripts/bench --occupants 1000 --domains 5 --peerhosts --rate 10
//! target/release/dmuc-bench --master target/release/dmuc-master --system dmuc --seconds 30
//! ```
//!
//! `scripts/bench` runs `scripts/setup`, builds the binaries in release
//! and passes its arguments on; `dmuc-bench --help` lists them. A run
//! takes the measured window plus warm-up, drain and room filling (about
//! 20 s per system at N=100, a minute or two at N=1,000), then stops every
//! process it started.
//!
//! # What it measures
//!
//! Messages are sent evenly spaced (message *i* due at *t0 + i/rate*) by
//! K senders spread over all domains (sender *j* on domain *j mod D*, as
//! occupant *i* is on domain *i mod D*); each body carries the message
//! number and its send time. Every occupant's receive loop notes when each
//! message arrives. For the messages sent in the window:
//!
//! - **deliveries/s**: deliveries received within the window / its length;
//! - **time to the last recipient**, p50/p99/max: from the send time in the
//!   body to the last of the N deliveries (the sender's reflection counts),
//!   and per recipient domain to its first and last recipient;
//! - **lost**: N per message, minus deliveries seen after a drain of at
//!   most 10 s;
//! - **CPU µs per delivery**: utime+stime (`/proc/PID/stat`) of every
//!   Prosody and, for dmuc, the master and the peerhosts, over the window,
//!   divided by the window's deliveries; the load generator's own CPU is
//!   printed beside it, to show it is not the bottleneck;
//! - **peak RSS**: VmHWM of every server process at the end of the run;
//! - **N-th join**: the last occupant joins a quiet room of N-1; time to
//!   its self-presence and to the subject that ends the join sequence;
//! - **crossing** (with `--count-crossing`, implied by `--peerhosts`):
//!   bytes and stanzas of s2s into every server and of gRPC into every
//!   peerhost, both ways, in the window, per room message sent in it. The
//!   testbed's counting relays forward these connections; they are tasks
//!   of this process on a thread of their own, whose CPU is reported
//!   apart (in neither the servers' nor the load generator's figure), and
//!   they run for both systems alike.
//!
//! Prosody runs without its MUC archive, as in PERF.md's baseline
//! (`--prosody-archive` turns it on); dmuc runs with its defaults (SQLite
//! history, group commit, XEP-0033 multicast through a.test's server),
//! flood control off and room limits raised to N. Servers log at `warn`.
//! The load client sets TCP_NODELAY and re-arms TCP_QUICKACK after every
//! read.
//!
//! # Layout
//!
//! ```text
//! main.rs      thin binary: arguments, one current-thread tokio runtime, exit codes
//! options.rs   the command line (Options, System)
//! system.rs    Deployment: a fresh testbed (master, peerhosts) per system, server
//!              PIDs, crossing counters; Relays: the runtime the relays run on
//! load.rs      one run: fill the room, send on schedule, window snapshots, drain
//! conn.rs      the lean load client: login, join, receive loop (no trees kept)
//! frame.rs     byte-level XMPP stream framing and stanza peeking
//! record.rs    Recorder: per-message delivery counts and last-arrival times
//! procfs.rs    CPU ticks (of processes and of own threads), VmHWM, PID lookup
//! report.rs    Measurement, its text block, the side-by-side summary
//! ```
//!
//! ```text
//!  dmuc-bench ──N lean clients──c2s──► Prosody a.test ──► muc.a.test | dmuc-master (conference.a.test)
//!             ├─────────────────c2s──► Prosody b.test ─s2s─┘               ║ gRPC (--peerhosts)
//!             │                                   └──────── dmuc-peerhost ◄╝ (muc-peer.b.test)
//!             ├── ... one Prosody (and peerhost) per domain
//!             ├── counting relays on s2s and gRPC (--count-crossing), thread `bench-relays`
//!             └── /proc/PID/stat, /proc/PID/status of every server process
//! ```

mod conn;
mod error;
mod frame;
mod load;
mod options;
mod procfs;
mod record;
mod report;
mod system;

pub use error::{Error, Result};
pub use options::{Options, System, USAGE, UsageError};
pub use report::{Measurement, summary};

/// Runs every system of `options` in turn, each on a fresh deployment,
/// printing each system's block to stdout as it completes; returns the
/// measurements for [`summary`].
pub async fn run(options: &Options) -> Result<Vec<Measurement>> {
    let spread: Vec<String> = options
        .domains
        .iter()
        .enumerate()
        .map(|(d, name)| format!("{} on {name}", options.occupants_on(d)))
        .collect();
    println!(
        "dmuc-bench: N={} occupants ({}), {} room msg/s, {} senders spread over all {} domains, \
         {:.0} s window after {:.0} s warm-up{}",
        options.occupants,
        spread.join(", "),
        options.rate,
        options.senders,
        options.domains.len(),
        options.window.as_secs_f64(),
        options.warmup.as_secs_f64(),
        if options.count_crossing {
            "; cross-domain traffic counted"
        } else {
            ""
        }
    );
    // Declared first, dropped last: the deployments' relays run on it.
    let relays = system::Relays::start()?;
    let mut runs = Vec::new();
    for &system in &options.systems {
        eprintln!("{}: starting", system.name());
        let mut deployment = system::Deployment::start(system, options, &relays).await?;
        eprintln!("  testbed in {}", deployment.dir().display());
        let measurement = load::measure(&deployment, options).await?;
        println!("\n{measurement}");
        if let Some((who, status)) = deployment.crashed() {
            println!("WARNING: {who} exited during the run ({status})");
        }
        runs.push(measurement);
        eprintln!("{}: stopping", system.name());
        drop(deployment);
    }
    Ok(runs)
}
