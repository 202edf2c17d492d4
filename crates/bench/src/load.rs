//! One measured run against a deployment: fill the room, send at a fixed
//! rate, snapshot CPU at the window's edges, drain, and sum up.
//!
//! ```text
//!  join: creator (instant room) ─► one per other domain, in turn ─► the rest, C in flight
//!        ─► quiet ─► N-th join (timed)
//!  load: t0 ── warm-up ──┬──────── window ────────┬── drain (≤ 10 s) ── quiet ── VmHWM
//!        │           CPU snapshot              CPU snapshot                  │
//!        └──────────── crossing counters (when counted): from t0 to quiet ───┘
//!        message i due at t0 + i/rate, sent by sender i mod K
//! ```
//!
//! Occupant `i` lives on domain `i mod D`; sender `j` on domain `j mod D`,
//! so senders are spread over all domains.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::conn::{Connection, JoinTimes};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::procfs;
use crate::record::{Counters, Recorder};
use crate::report::{DomainLatency, Measurement, Percentiles, Usage, ms};
use crate::system::{Deployment, RELAY_THREAD};

/// The benchmark room's local part.
const ROOM: &str = "bench";
/// Upper bound of waiting for deliveries after the last send.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The room counts as quiet once no stanza arrived for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Upper bound of waiting for quiet.
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval of the waits above.
const POLL: Duration = Duration::from_millis(20);
/// Lead time before the first message.
const LEAD: Duration = Duration::from_millis(100);

/// The joined occupants: their receive loops and their write halves.
struct Occupants {
    recorder: Arc<Recorder>,
    receivers: JoinSet<()>,
    writers: Vec<Option<OwnedWriteHalf>>,
    domains: usize,
}

impl Occupants {
    /// Starts the receive loop of occupant `i` and keeps its write half.
    fn admit(&mut self, i: usize, conn: Connection) {
        let (receiver, writer) = conn.into_receiver(self.recorder.clone(), i % self.domains);
        self.receivers.spawn(receiver.run());
        self.writers[i] = Some(writer);
    }
}

/// CPU and counters at one edge of the window.
struct Snapshot {
    at: Instant,
    counters: Counters,
    server_ticks: Vec<u64>,
    own_ticks: u64,
    /// Of `own_ticks`, the counting relays' thread.
    relay_ticks: u64,
    machine_ticks: u64,
}

/// Runs the load of `options` against `deployment`.
pub async fn measure(deployment: &Deployment, options: &Options) -> Result<Measurement> {
    let n = options.occupants;
    let domains = deployment.domains.len();
    let recorder = Arc::new(Recorder::new(options.total_messages(), domains));
    let room = format!("{ROOM}@{}", deployment.service);
    let mut occupants = Occupants {
        recorder: recorder.clone(),
        receivers: JoinSet::new(),
        writers: (0..n).map(|_| None).collect(),
        domains,
    };
    let (fill, last_join) = fill(deployment, options, &room, &mut occupants).await?;
    eprintln!(
        "  {n} joined in {:.1} s; N-th join {:.1} ms",
        fill.as_secs_f64(),
        ms(last_join.subject)
    );

    let senders = sender_indices(n, options.senders, domains);
    let t0 = Instant::now() + LEAD;
    let window_start = t0 + options.warmup;
    // Counted over the whole load, until drained: a saturated system
    // delivers the window's messages after it, and earlier ones within.
    let crossing_before = deployment.crossing()?;
    let grpc_before = deployment.grpc_by_domain();
    let (send_lag, window) = tokio::join!(
        send(options, &room, &mut occupants, &senders, t0),
        probe_window(
            deployment,
            &recorder,
            window_start,
            window_start + options.window
        ),
    );
    let (send_lag, (start, end)) = (send_lag?, window?);
    let measured = options.first_measured()..options.total_messages();
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < drain_deadline
        && measured
            .clone()
            .any(|seq| recorder.deliveries_of(seq) < n as u32)
    {
        sleep(POLL).await;
    }
    // A peerhost that got nothing during the load: its domain was served
    // by the master directly (its discovery failed), and the figures
    // are not those of the distributed system.
    let direct_domains = deployment
        .grpc_by_domain()
        .into_iter()
        .zip(&grpc_before)
        .filter(|((_, after), (_, before))| after.bytes_in == before.bytes_in)
        .map(|((domain, _), _)| domain)
        .collect();
    let crossing = match crossing_before {
        Some(before) => {
            wait_quiet(&recorder).await;
            deployment.crossing()?.map(|after| after.since(&before))
        }
        None => None,
    };

    let ticks = procfs::ticks_per_second();
    let cpu =
        |from: u64, to: u64| Duration::from_secs_f64(to.saturating_sub(from) as f64 / ticks as f64);
    let mut servers = Vec::new();
    for (i, process) in deployment.processes.iter().enumerate() {
        servers.push(Usage {
            name: process.name.clone(),
            cpu: cpu(start.server_ticks[i], end.server_ticks[i]),
            peak_rss_kib: procfs::peak_rss_kib(process.pid)
                .map_err(Error::io(format!("reading VmHWM of {}", process.name)))?,
        });
    }
    let generator = Usage {
        name: "dmuc-bench".into(),
        cpu: cpu(
            start.own_ticks + end.relay_ticks,
            end.own_ticks + start.relay_ticks,
        ),
        peak_rss_kib: procfs::peak_rss_kib(std::process::id()).unwrap_or(0),
    };
    let relays = cpu(start.relay_ticks, end.relay_ticks);
    let ours = |s: &Snapshot| s.own_ticks + s.server_ticks.iter().sum::<u64>();
    let others = cpu(
        start.machine_ticks + ours(&end),
        end.machine_ticks + ours(&start),
    );

    let fates: Vec<_> = measured.map(|seq| recorder.fate(seq)).collect();
    let n64 = n as u64;
    let expected = n64 * fates.len() as u64;
    let received: u64 = fates.iter().map(|f| u64::from(f.deliveries).min(n64)).sum();
    let duplicates: u64 = fates
        .iter()
        .map(|f| u64::from(f.deliveries).saturating_sub(n64))
        .sum();
    let complete: Vec<Duration> = fates
        .iter()
        .filter(|f| u64::from(f.deliveries) >= n64)
        .map(|f| f.to_last)
        .collect();
    if let Some(path) = std::env::var_os("DMUC_BENCH_TRACE") {
        write_trace(
            std::path::Path::new(&path),
            options.first_measured(),
            &deployment.domains,
            &fates,
        )?;
    }
    let by_domain = deployment
        .domains
        .iter()
        .enumerate()
        .map(|(d, name)| {
            let (first, last): (Vec<_>, Vec<_>) =
                fates.iter().filter_map(|f| f.by_domain[d]).unzip();
            DomainLatency {
                domain: name.clone(),
                first: Percentiles::of(first),
                last: Percentiles::of(last),
            }
        })
        .collect();
    let after = recorder.counters();
    Ok(Measurement {
        system: deployment.system,
        label: deployment.label,
        layout: deployment.layout.clone(),
        service: deployment.service.clone(),
        occupants: n,
        rate: options.rate,
        senders: senders.len(),
        fill,
        last_join,
        window: end.at - start.at,
        deliveries: end.counters.deliveries - start.counters.deliveries,
        delivered_bytes: end.counters.delivered_bytes - start.counters.delivered_bytes,
        messages: fates.len(),
        expected,
        lost: expected - received,
        incomplete: fates.len() - complete.len(),
        duplicates,
        to_last: Percentiles::of(complete),
        by_domain,
        servers,
        generator,
        relays: crossing.is_some().then_some(relays),
        crossing,
        crossed_messages: options.total_messages(),
        direct_domains,
        others,
        send_lag,
        malformed: after.malformed,
        disconnects: after.disconnects,
    })
}

/// Writes one CSV line per measured message: its number, then per domain
/// the ms to the first and to the last delivery (for `DMUC_BENCH_TRACE`).
fn write_trace(
    path: &std::path::Path,
    first: usize,
    domains: &[String],
    fates: &[crate::record::Fate],
) -> Result<()> {
    use std::fmt::Write as _;
    let mut csv = String::from("seq");
    for d in domains {
        let _ = write!(csv, ",{d} first ms,{d} last ms");
    }
    csv.push('\n');
    for (i, fate) in fates.iter().enumerate() {
        let _ = write!(csv, "{}", first + i);
        for &d in &fate.by_domain {
            match d {
                Some((a, b)) => {
                    let _ = write!(csv, ",{:.1},{:.1}", ms(a), ms(b));
                }
                None => csv.push_str(",,"),
            }
        }
        csv.push('\n');
    }
    std::fs::write(path, csv).map_err(Error::io(format!("writing {}", path.display())))
}

/// Fills the room: occupant 0 creates it, the first of each other domain
/// joins, the rest but one join with `join_concurrency` in flight, and
/// once the presence flood is over the N-th joins alone. Returns the whole fill time and the N-th join's times.
async fn fill(
    deployment: &Deployment,
    options: &Options,
    room: &str,
    occupants: &mut Occupants,
) -> Result<(Duration, JoinTimes)> {
    let n = options.occupants;
    let start = Instant::now();
    let (creator, _) = join(deployment, room, 0, true).await?;
    occupants.admit(0, creator);
    // The first occupant of each other domain joins alone: the master looks
    // for that domain's peerhost then, in a quiet room (joins from the
    // domain wait meanwhile, at most twice its discovery timeout).
    let alone = deployment.domains.len().min(n - 1);
    for i in 1..alone {
        let (conn, _) = join(deployment, room, i, false).await?;
        occupants.admit(i, conn);
    }
    let mut joins = futures::stream::iter(alone..n - 1)
        .map(|i| async move { Ok::<_, Error>((i, join(deployment, room, i, false).await?.0)) })
        .buffer_unordered(options.join_concurrency);
    while let Some(joined) = joins.next().await {
        let (i, conn) = joined?;
        occupants.admit(i, conn);
    }
    wait_quiet(&occupants.recorder).await;
    let (last, last_join) = join(deployment, room, n - 1, false).await?;
    occupants.admit(n - 1, last);
    let fill = start.elapsed();
    wait_quiet(&occupants.recorder).await;
    Ok((fill, last_join))
}

/// Sends every message on schedule (message `seq` due at `t0 + seq/rate`,
/// from sender `seq mod K`); returns the worst lateness of a send.
async fn send(
    options: &Options,
    room: &str,
    occupants: &mut Occupants,
    senders: &[usize],
    t0: Instant,
) -> Result<Duration> {
    let mut lag = Duration::ZERO;
    for seq in 0..options.total_messages() {
        let due = t0 + options.period().mul_f64(seq as f64);
        sleep_until(due).await;
        let now = Instant::now();
        lag = lag.max(now - due);
        let stanza = format!(
            "<message type='groupchat' to='{room}' id='b{seq}'><body>{}</body></message>",
            occupants.recorder.body(seq, now)
        );
        occupants.writers[senders[seq % senders.len()]]
            .as_mut()
            .expect("every occupant joined")
            .write_all(stanza.as_bytes())
            .await
            .map_err(Error::io("sending a room message"))?;
    }
    Ok(lag)
}

/// Logs in occupant `i` (user `u<i>` on its domain) and joins as `o<i>`.
async fn join(
    deployment: &Deployment,
    room: &str,
    i: usize,
    create: bool,
) -> Result<(Connection, JoinTimes)> {
    let domain = &deployment.domains[i % deployment.domains.len()];
    let mut conn =
        Connection::login(deployment.c2s_addr(domain)?, domain, &format!("u{i}")).await?;
    let times = conn.join(room, &format!("o{i}"), create).await?;
    Ok((conn, times))
}

/// `k` of the `n` occupants, spread evenly over the room and taking turns
/// over the `d` domains: sender `j` is on domain `j mod d` (occupant `i` is
/// on domain `i mod d`), the free one of that domain nearest to position
/// `j n / k`. Needs `k <= n` and `d <= n`.
fn sender_indices(n: usize, k: usize, d: usize) -> Vec<usize> {
    let mut taken = vec![false; n];
    (0..k)
        .map(|j| {
            let spread = j * n / k;
            let target = spread - spread % d + j % d;
            let chosen = (j % d..n)
                .step_by(d)
                .filter(|&i| !taken[i])
                .min_by_key(|&i| i.abs_diff(target))
                .expect("a domain has at least as many occupants as senders");
            taken[chosen] = true;
            chosen
        })
        .collect()
}

/// Returns once no stanza has arrived for [`QUIET`] (or after
/// [`QUIET_TIMEOUT`]): presence floods of the joins are over.
async fn wait_quiet(recorder: &Recorder) {
    let deadline = Instant::now() + QUIET_TIMEOUT;
    let mut seen = recorder.counters().stanzas;
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < QUIET {
        sleep(POLL).await;
        let now = recorder.counters().stanzas;
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
}

/// Snapshots at `start` and `end` of the window.
async fn probe_window(
    deployment: &Deployment,
    recorder: &Recorder,
    start: Instant,
    end: Instant,
) -> Result<(Snapshot, Snapshot)> {
    let snapshot = |at| -> Result<Snapshot> {
        let server_ticks = deployment
            .processes
            .iter()
            .map(|p| {
                procfs::cpu_ticks(p.pid).map_err(Error::io(format!("reading CPU of {}", p.name)))
            })
            .collect::<Result<_>>()?;
        Ok(Snapshot {
            at,
            counters: recorder.counters(),
            server_ticks,
            own_ticks: procfs::cpu_ticks(std::process::id())
                .map_err(Error::io("reading own CPU"))?,
            relay_ticks: procfs::own_threads_ticks(RELAY_THREAD)
                .map_err(Error::io("reading the relays' CPU"))?,
            machine_ticks: procfs::machine_busy_ticks().map_err(Error::io("reading /proc/stat"))?,
        })
    };
    sleep_until(start).await;
    let first = snapshot(Instant::now())?;
    sleep_until(end).await;
    Ok((first, snapshot(Instant::now())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_take_turns_over_domains_and_spread() {
        assert_eq!(
            sender_indices(100, 10, 2),
            vec![0, 11, 20, 31, 40, 51, 60, 71, 80, 91]
        );
        assert_eq!(sender_indices(2, 2, 2), vec![0, 1]);
        assert_eq!(sender_indices(3, 3, 2), vec![0, 1, 2]);
        assert_eq!(
            sender_indices(1000, 10, 5),
            vec![0, 101, 202, 303, 404, 500, 601, 702, 803, 904]
        );
        for n in 2..60 {
            for d in 2..=n.min(10) {
                for k in 1..=n {
                    let s = sender_indices(n, k, d);
                    let mut sorted = s.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    assert_eq!(sorted.len(), k, "distinct: n={n} k={k} d={d}: {s:?}");
                    assert!(s.iter().all(|&i| i < n), "n={n} k={k} d={d}: {s:?}");
                    assert!(
                        s.iter().enumerate().all(|(j, i)| i % d == j % d),
                        "n={n} k={k} d={d}: {s:?}"
                    );
                }
            }
        }
    }
}
