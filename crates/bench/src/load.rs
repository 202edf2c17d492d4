//! One measured run against a deployment: fill the room, send at a fixed
//! rate, snapshot CPU at the window's edges, drain, and sum up.
//!
//! ```text
//!  join: creator (instant room) ─► N-2 joins, C in flight ─► quiet ─► N-th join (timed)
//!  load: t0 ── warm-up ──┬──────── window ────────┬── drain (≤ 10 s)
//!                    snapshot                  snapshot       VmHWM
//!        message i due at t0 + i/rate, sent by sender i mod K
//! ```

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
use crate::system::{DOMAINS, Deployment};

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
}

impl Occupants {
    /// Starts the receive loop of occupant `i` and keeps its write half.
    fn admit(&mut self, i: usize, conn: Connection) {
        let (receiver, writer) = conn.into_receiver(self.recorder.clone(), i % DOMAINS.len());
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
    machine_ticks: u64,
}

/// Runs the load of `options` against `deployment`.
pub async fn measure(deployment: &Deployment, options: &Options) -> Result<Measurement> {
    let n = options.occupants;
    let recorder = Arc::new(Recorder::new(options.total_messages()));
    let room = format!("{ROOM}@{}", deployment.service);
    let mut occupants = Occupants {
        recorder: recorder.clone(),
        receivers: JoinSet::new(),
        writers: (0..n).map(|_| None).collect(),
    };
    let (fill, last_join) = fill(deployment, options, &room, &mut occupants).await?;
    eprintln!(
        "  {n} joined in {:.1} s; N-th join {:.1} ms",
        fill.as_secs_f64(),
        ms(last_join.subject)
    );

    let senders = sender_indices(n, options.senders);
    let t0 = Instant::now() + LEAD;
    let window_start = t0 + options.warmup;
    let probe = tokio::spawn(probe_window(
        deployment.processes.iter().map(|p| p.pid).collect(),
        recorder.clone(),
        window_start,
        window_start + options.window,
    ));
    let send_lag = send(options, &room, &mut occupants, &senders, t0).await?;
    let (start, end) = probe.await.expect("window probe does not panic")?;
    let measured = options.first_measured()..options.total_messages();
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < drain_deadline
        && measured
            .clone()
            .any(|seq| recorder.deliveries_of(seq) < n as u32)
    {
        sleep(POLL).await;
    }

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
        cpu: cpu(start.own_ticks, end.own_ticks),
        peak_rss_kib: procfs::peak_rss_kib(std::process::id()).unwrap_or(0),
    };
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
            &fates,
        )?;
    }
    let by_domain = DOMAINS
        .iter()
        .enumerate()
        .map(|(d, name)| {
            let (first, last): (Vec<_>, Vec<_>) =
                fates.iter().filter_map(|f| f.by_domain[d]).unzip();
            DomainLatency {
                domain: (*name).to_owned(),
                first: Percentiles::of(first),
                last: Percentiles::of(last),
            }
        })
        .collect();
    let after = recorder.counters();
    Ok(Measurement {
        system: deployment.system,
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
        others,
        send_lag,
        malformed: after.malformed,
        disconnects: after.disconnects,
    })
}

/// Writes one CSV line per measured message: its number, then per domain
/// the ms to the first and to the last delivery (for `DMUC_BENCH_TRACE`).
fn write_trace(path: &std::path::Path, first: usize, fates: &[crate::record::Fate]) -> Result<()> {
    use std::fmt::Write as _;
    let mut csv = String::from("seq");
    for d in DOMAINS {
        let _ = write!(csv, ",{d} first ms,{d} last ms");
    }
    csv.push('\n');
    for (i, fate) in fates.iter().enumerate() {
        let _ = write!(csv, "{}", first + i);
        for d in fate.by_domain {
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

/// Fills the room: occupant 0 creates it, the next N-2 join with
/// `join_concurrency` in flight, and once the presence flood is over the
/// N-th joins alone. Returns the whole fill time and the N-th join's times.
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
    let mut joins = futures::stream::iter(1..n - 1)
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
    let domain = DOMAINS[i % 2];
    let mut conn =
        Connection::login(deployment.c2s_addr(domain)?, domain, &format!("u{i}")).await?;
    let times = conn.join(room, &format!("o{i}"), create).await?;
    Ok((conn, times))
}

/// `k` occupants spread evenly over the room, alternating between the two
/// domains (even indices are on a.test, odd ones on b.test).
fn sender_indices(n: usize, k: usize) -> Vec<usize> {
    (0..k)
        .map(|j| {
            let spread = j * n / k;
            let on_domain = (spread & !1) | (j & 1);
            on_domain.min(n - 1)
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
    pids: Vec<u32>,
    recorder: Arc<Recorder>,
    start: Instant,
    end: Instant,
) -> Result<(Snapshot, Snapshot)> {
    let snapshot = |at| -> Result<Snapshot> {
        let server_ticks = pids
            .iter()
            .map(|&pid| procfs::cpu_ticks(pid).map_err(Error::io(format!("reading CPU of {pid}"))))
            .collect::<Result<_>>()?;
        Ok(Snapshot {
            at,
            counters: recorder.counters(),
            server_ticks,
            own_ticks: procfs::cpu_ticks(std::process::id())
                .map_err(Error::io("reading own CPU"))?,
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
    fn senders_alternate_domains_and_spread() {
        assert_eq!(
            sender_indices(100, 10),
            vec![0, 11, 20, 31, 40, 51, 60, 71, 80, 91]
        );
        assert_eq!(sender_indices(2, 2), vec![0, 1]);
        assert_eq!(sender_indices(3, 3), vec![0, 1, 2]);
        let s = sender_indices(1000, 7);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().enumerate().all(|(j, i)| i % 2 == j % 2));
    }
}
