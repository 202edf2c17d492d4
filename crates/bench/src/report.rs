//! The figures of a run and their plain-text rendering: one block per
//! system, then a side-by-side table with dmuc/Prosody ratios.

use std::fmt::{self, Write as _};
use std::time::Duration;

use dmuc_testbed::distributed::Crossing;

use crate::conn::JoinTimes;
use crate::options::System;

/// CPU and peak memory of one process over a run.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The process, e.g. `prosody a.test`.
    pub name: String,
    /// CPU time (user + system) spent in the window.
    pub cpu: Duration,
    /// VmHWM at the end of the run, KiB.
    pub peak_rss_kib: u64,
}

/// p50, p99 and max of a set of durations (nearest rank).
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Percentiles {
    /// `None` for an empty set.
    pub fn of(mut values: Vec<Duration>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let rank = |p: f64| values[((p * values.len() as f64).ceil() as usize).max(1) - 1];
        Some(Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max: *values.last()?,
        })
    }
}

/// Time from send to the first and to the last recipient on one domain.
#[derive(Debug, Clone)]
pub struct DomainLatency {
    /// The recipients' domain.
    pub domain: String,
    /// To its first recipient.
    pub first: Option<Percentiles>,
    /// To its last recipient.
    pub last: Option<Percentiles>,
}

/// Everything measured for one system.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The system under test.
    pub system: System,
    /// Its name in reports (`prosody`, `dmuc`, `dmuc+peers`).
    pub label: &'static str,
    /// What ran where.
    pub layout: String,
    /// Its MUC service JID.
    pub service: String,
    /// Room size N.
    pub occupants: usize,
    /// Room messages per second asked for.
    pub rate: f64,
    /// How many occupants sent.
    pub senders: usize,
    /// From the creator's login to the N-th occupant's subject.
    pub fill: Duration,
    /// The N-th occupant's join, into a quiet room of N-1.
    pub last_join: JoinTimes,
    /// The measured window, as it really was.
    pub window: Duration,
    /// Deliveries (any message) received within the window.
    pub deliveries: u64,
    /// Their size in bytes, as the clients received them.
    pub delivered_bytes: u64,
    /// Messages sent within the window.
    pub messages: usize,
    /// Deliveries due for those: N each.
    pub expected: u64,
    /// Of those, never received (after the drain).
    pub lost: u64,
    /// Messages that did not reach every occupant.
    pub incomplete: usize,
    /// Deliveries beyond N of a message.
    pub duplicates: u64,
    /// Time from send to the last recipient, of complete messages.
    pub to_last: Option<Percentiles>,
    /// The same split by the recipients' domain, with the first arrival.
    pub by_domain: Vec<DomainLatency>,
    /// The server processes (both Prosody, and the master for dmuc).
    pub servers: Vec<Usage>,
    /// The load generator itself, without the counting relays.
    pub generator: Usage,
    /// CPU of the counting relays (threads of the load generator) in the
    /// window, if traffic was counted.
    pub relays: Option<Duration>,
    /// What crossed between domains (s2s both ways, gRPC both ways) from
    /// the first send until the room was quiet after the drain, if counted.
    pub crossing: Option<Crossing>,
    /// The messages sent in that time (warm-up and window).
    pub crossed_messages: usize,
    /// Peerhost domains that nothing was sent to over gRPC during the
    /// load: the master served them directly (should be empty).
    pub direct_domains: Vec<String>,
    /// CPU of every other process on the machine in the window (other
    /// work competing for the cores makes the figures unreliable).
    pub others: Duration,
    /// Worst lateness of a send against its schedule.
    pub send_lag: Duration,
    /// Benchmark bodies that did not parse (should be 0).
    pub malformed: u64,
    /// Occupants disconnected during the run (should be 0).
    pub disconnects: u64,
}

impl Measurement {
    /// Deliveries per second within the window.
    pub fn deliveries_per_second(&self) -> f64 {
        self.deliveries as f64 / self.window.as_secs_f64()
    }

    /// CPU of all server processes in the window.
    pub fn server_cpu(&self) -> Duration {
        self.servers.iter().map(|u| u.cpu).sum()
    }

    /// Server CPU µs per delivery.
    pub fn cpu_us_per_delivery(&self) -> f64 {
        self.server_cpu().as_secs_f64() * 1e6 / self.deliveries.max(1) as f64
    }

    /// Deliveries per server CPU-second.
    pub fn deliveries_per_cpu_second(&self) -> f64 {
        self.deliveries as f64 / self.server_cpu().as_secs_f64().max(1e-9)
    }

    /// Sum of the servers' peak RSS, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.servers.iter().map(|u| u.peak_rss_kib).sum()
    }

    fn p99_ms(&self) -> Option<f64> {
        self.to_last.map(|p| ms(p.p99))
    }

    /// Bytes that crossed between domains (s2s and gRPC, both ways) per
    /// room message.
    pub fn crossing_bytes_per_message(&self) -> Option<f64> {
        self.per_message(Crossing::bytes)
    }

    /// s2s stanzas (both ways) per room message.
    pub fn s2s_stanzas_per_message(&self) -> Option<f64> {
        self.per_message(|c| c.s2s.stanzas())
    }

    /// Of what crossed, `count` per room message sent.
    fn per_message(&self, count: impl Fn(&Crossing) -> u64) -> Option<f64> {
        Some(count(&self.crossing?) as f64 / self.crossed_messages.max(1) as f64)
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.window.as_secs_f64();
        writeln!(f, "== {}: {} ==", self.label, self.layout)?;
        writeln!(
            f,
            "join:        N-th occupant {:.1} ms to self-presence, {:.1} ms to subject; room of {} filled in {:.1} s",
            ms(self.last_join.self_presence),
            ms(self.last_join.subject),
            self.occupants,
            self.fill.as_secs_f64()
        )?;
        writeln!(
            f,
            "deliveries:  {:.0}/s ({} in {secs:.2} s, {} B each); lost {} of {} ({} of {} messages incomplete), duplicates {}",
            self.deliveries_per_second(),
            self.deliveries,
            self.delivered_bytes / self.deliveries.max(1),
            self.lost,
            self.expected,
            self.incomplete,
            self.messages,
            self.duplicates
        )?;
        match self.to_last {
            Some(p) => writeln!(
                f,
                "to last recipient: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(p.p50),
                ms(p.p99),
                ms(p.max)
            )?,
            None => writeln!(f, "to last recipient: no message reached everyone")?,
        }
        for d in &self.by_domain {
            let show = |p: Option<Percentiles>| match p {
                Some(p) => format!("p50 {:.1} / p99 {:.1} ms", ms(p.p50), ms(p.p99)),
                None => "none".to_owned(),
            };
            writeln!(
                f,
                "  on {}: to first {}, to last {}",
                d.domain,
                show(d.first),
                show(d.last)
            )?;
        }
        let cpus: Vec<String> = self
            .servers
            .iter()
            .map(|u| format!("{} {:.2} s", u.name, u.cpu.as_secs_f64()))
            .collect();
        writeln!(
            f,
            "server CPU:  {} = {:.0}% of a core; {:.1} µs per delivery ({:.0} deliveries per CPU-second)",
            cpus.join(", "),
            self.server_cpu().as_secs_f64() / secs * 100.0,
            self.cpu_us_per_delivery(),
            self.deliveries_per_cpu_second()
        )?;
        let rss: Vec<String> = self
            .servers
            .iter()
            .map(|u| format!("{} {}", u.name, mib(u.peak_rss_kib)))
            .collect();
        writeln!(f, "peak RSS:    {} (VmHWM)", rss.join(", "))?;
        if let Some(c) = self.crossing {
            let per = |n: u64| n as f64 / self.crossed_messages.max(1) as f64;
            writeln!(
                f,
                "crossing:    {:.0} B per message (all {} messages, until drained): s2s {:.0} B in {:.1} stanzas, \
                 gRPC {:.0} B ({:.0} B to peerhosts, {:.0} B back)",
                per(c.bytes()),
                self.crossed_messages,
                per(c.s2s.bytes()),
                per(c.s2s.stanzas()),
                per(c.grpc.bytes()),
                per(c.grpc.bytes_in),
                per(c.grpc.bytes_out),
            )?;
        }
        writeln!(
            f,
            "load generator: CPU {:.0}% of a core ({:.1} µs per delivery), VmHWM {}, worst send lag {:.1} ms",
            self.generator.cpu.as_secs_f64() / secs * 100.0,
            self.generator.cpu.as_secs_f64() * 1e6 / self.deliveries.max(1) as f64,
            mib(self.generator.peak_rss_kib),
            ms(self.send_lag)
        )?;
        if let Some(relays) = self.relays {
            writeln!(
                f,
                "counting relays (threads of dmuc-bench, not in server CPU): {:.0}% of a core ({:.1} µs per delivery)",
                relays.as_secs_f64() / secs * 100.0,
                relays.as_secs_f64() * 1e6 / self.deliveries.max(1) as f64,
            )?;
        }
        writeln!(
            f,
            "other processes on this machine: {:.0}% of a core{}",
            self.others.as_secs_f64() / secs * 100.0,
            if self.others.as_secs_f64() / secs > 0.1 {
                " (figures disturbed)"
            } else {
                ""
            }
        )?;
        if !self.direct_domains.is_empty() {
            writeln!(
                f,
                "WARNING: the master served {} directly: nothing went to the peerhost over gRPC \
                 (discovery failed? DMUC_TESTBED_KEEP=1 keeps the master's log)",
                self.direct_domains.join(", ")
            )?;
        }
        if self.malformed > 0 || self.disconnects > 0 {
            writeln!(
                f,
                "WARNING: {} malformed bodies, {} occupants disconnected",
                self.malformed, self.disconnects
            )?;
        }
        Ok(())
    }
}

/// The side-by-side table of all systems run, with dmuc/Prosody ratios
/// when both ran.
pub fn summary(runs: &[Measurement]) -> String {
    let find = |s: System| runs.iter().find(|m| m.system == s);
    let (prosody, dmuc) = (find(System::Prosody), find(System::Dmuc));
    let mut out = String::new();
    let mut header = format!("{:<28}", "");
    for m in runs {
        let _ = write!(header, "{:>12}", m.label);
    }
    let both = prosody.is_some() && dmuc.is_some();
    if both {
        header.push_str(&format!("{:>14}", "dmuc/prosody"));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    type Row = (&'static str, fn(&Measurement) -> Option<f64>, usize);
    let mut rows: Vec<Row> = vec![
        ("deliveries/s", |m| Some(m.deliveries_per_second()), 0),
        (
            "deliveries per CPU-second",
            |m| Some(m.deliveries_per_cpu_second()),
            0,
        ),
        ("CPU µs per delivery", |m| Some(m.cpu_us_per_delivery()), 1),
        (
            "server CPU, % of a core",
            |m| Some(m.server_cpu().as_secs_f64() / m.window.as_secs_f64() * 100.0),
            0,
        ),
        (
            "to last recipient p50 ms",
            |m| m.to_last.map(|p| ms(p.p50)),
            1,
        ),
        ("to last recipient p99 ms", Measurement::p99_ms, 1),
        (
            "N-th join ms (to subject)",
            |m| Some(ms(m.last_join.subject)),
            1,
        ),
        (
            "peak RSS, servers MiB",
            |m| Some(m.peak_rss_kib() as f64 / 1024.0),
            1,
        ),
        ("lost deliveries", |m| Some(m.lost as f64), 0),
        (
            "load generator CPU %",
            |m| Some(m.generator.cpu.as_secs_f64() / m.window.as_secs_f64() * 100.0),
            0,
        ),
        (
            "other processes' CPU %",
            |m| Some(m.others.as_secs_f64() / m.window.as_secs_f64() * 100.0),
            0,
        ),
    ];
    let counted = runs.iter().any(|m| m.crossing.is_some());
    if counted {
        rows.extend::<[Row; 5]>([
            (
                "crossing bytes/message",
                Measurement::crossing_bytes_per_message,
                0,
            ),
            (
                "  s2s bytes/message",
                |m| m.per_message(|c| c.s2s.bytes()),
                0,
            ),
            (
                "  gRPC bytes/message",
                |m| m.per_message(|c| c.grpc.bytes()),
                0,
            ),
            (
                "s2s stanzas/message",
                Measurement::s2s_stanzas_per_message,
                1,
            ),
            (
                "relays' CPU % (in bench)",
                |m| Some(m.relays?.as_secs_f64() / m.window.as_secs_f64() * 100.0),
                0,
            ),
        ]);
    }
    for (label, value, decimals) in rows {
        let mut line = format!("{label:<28}");
        for m in runs {
            let cell = value(m).map_or("-".into(), |v| format!("{v:.decimals$}"));
            let _ = write!(line, "{cell:>12}");
        }
        if let (Some(p), Some(d)) = (prosody, dmuc) {
            let ratio = match (value(d), value(p)) {
                (Some(d), Some(p)) if p != 0.0 => ratio(d / p),
                _ => "-".into(),
            };
            let _ = write!(line, "{ratio:>14}");
        }
        out.push_str(&line);
        out.push('\n');
    }
    if let (Some(p), Some(d)) = (prosody, dmuc) {
        let per_cpu = d.deliveries_per_cpu_second() / p.deliveries_per_cpu_second();
        let _ = writeln!(
            out,
            "goal: deliveries per CPU-second >= 5x Prosody: {:.2}x, {}",
            per_cpu,
            if per_cpu >= 5.0 { "met" } else { "NOT met" }
        );
        let _ = match (d.p99_ms(), p.p99_ms()) {
            (Some(dp), Some(pp)) => writeln!(
                out,
                "goal: lower p99 than Prosody: {dp:.1} vs {pp:.1} ms, {}",
                if dp < pp { "met" } else { "NOT met" }
            ),
            _ => writeln!(out, "goal: lower p99 than Prosody: not measurable"),
        };
        if let (Some(db), Some(pb)) = (
            d.crossing_bytes_per_message(),
            p.crossing_bytes_per_message(),
        ) {
            let _ = writeln!(
                out,
                "goal: fewer bytes crossing domains than Prosody: {db:.0} vs {pb:.0} B per message, {}",
                if db < pb { "met" } else { "NOT met" }
            );
        }
    }
    for m in runs.iter().filter(|m| !m.direct_domains.is_empty()) {
        let _ = writeln!(
            out,
            "WARNING: {}: the master served {} directly, not through their peerhosts",
            m.label,
            m.direct_domains.join(", ")
        );
    }
    if counted {
        let _ = writeln!(
            out,
            "crossing: s2s into every server and gRPC into every peerhost, both ways, per room \
             message (warm-up and window, until drained); counted by relays in dmuc-bench (their \
             CPU, in the window, is in neither the servers' nor the load generator's)"
        );
    }
    out
}

/// A ratio with two decimals, or two significant digits below 0.1.
fn ratio(r: f64) -> String {
    if r != 0.0 && r.abs() < 0.1 {
        let decimals = (1.0 - r.abs().log10().floor()) as usize;
        format!("{r:.decimals$}x")
    } else {
        format!("{r:.2}x")
    }
}

/// Milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let p = Percentiles::of((1..=100).rev().map(ms).collect()).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (ms(50), ms(99), ms(100)));
        let p = Percentiles::of(vec![ms(3)]).unwrap();
        assert_eq!((p.p50, p.p99), (ms(3), ms(3)));
        assert!(Percentiles::of(Vec::new()).is_none());
    }

    #[test]
    fn ratios_keep_two_significant_digits_when_small() {
        assert_eq!(ratio(1.234), "1.23x");
        assert_eq!(ratio(0.5), "0.50x");
        assert_eq!(ratio(0.0123), "0.012x");
        assert_eq!(ratio(0.00123), "0.0012x");
        assert_eq!(ratio(0.0), "0.00x");
    }
}
