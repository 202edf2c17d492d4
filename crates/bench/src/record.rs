//! What every occupant saw, shared by all receive loops: per message, how
//! many deliveries and when the last one arrived; overall, how many
//! deliveries and stanzas.
//!
//! A benchmark body is `BENCH|<seq>|<sent µs>|`: the message number and its
//! send time in microseconds since the recorder's epoch (one clock, one
//! process, so sender and receivers agree).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use memchr::memmem;
use tokio::time::Instant;

use crate::frame;

/// The marker that opens every benchmark body.
const MARKER: &[u8] = b"BENCH|";

/// Shared delivery records of one run.
#[derive(Debug)]
pub struct Recorder {
    epoch: Instant,
    /// Per message: deliveries seen.
    counts: Box<[AtomicU32]>,
    /// Per message: send time from its body, µs since `epoch`.
    sent: Box<[AtomicU64]>,
    /// Per message: latest delivery, µs since `epoch`.
    last: Box<[AtomicU64]>,
    /// Per domain of the recipient, per message: first and latest
    /// delivery, µs since `epoch` (first is `u64::MAX` until one arrives).
    first_by_domain: Box<[Box<[AtomicU64]>]>,
    last_by_domain: Box<[Box<[AtomicU64]>]>,
    deliveries: AtomicU64,
    delivered_bytes: AtomicU64,
    stanzas: AtomicU64,
    malformed: AtomicU64,
    disconnects: AtomicU64,
}

/// Counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    /// Benchmark messages received, by all occupants.
    pub deliveries: u64,
    /// Their size as received, in bytes.
    pub delivered_bytes: u64,
    /// Stanzas of any kind received after joining.
    pub stanzas: u64,
    /// Benchmark bodies that did not parse or named no sent message.
    pub malformed: u64,
    /// Occupants whose connection closed.
    pub disconnects: u64,
}

/// The fate of one message.
#[derive(Debug, Clone)]
pub struct Fate {
    /// How many occupants received it.
    pub deliveries: u32,
    /// From the send time in its body to the last delivery.
    pub to_last: Duration,
    /// Per recipient domain: to its first and to its last delivery (`None`
    /// if none arrived there).
    pub by_domain: Vec<Option<(Duration, Duration)>>,
}

impl Recorder {
    /// Room for messages `0..messages` to recipients on `domains`
    /// domains; time counts from now.
    pub fn new(messages: usize, domains: usize) -> Self {
        let zeros = |_| AtomicU64::new(0);
        Self {
            epoch: Instant::now(),
            counts: (0..messages).map(|_| AtomicU32::new(0)).collect(),
            sent: (0..messages).map(zeros).collect(),
            last: (0..messages).map(zeros).collect(),
            first_by_domain: (0..domains)
                .map(|_| (0..messages).map(|_| AtomicU64::new(u64::MAX)).collect())
                .collect(),
            last_by_domain: (0..domains)
                .map(|_| (0..messages).map(zeros).collect())
                .collect(),
            deliveries: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            stanzas: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
        }
    }

    /// The body of message `seq` sent at `at`.
    pub fn body(&self, seq: usize, at: Instant) -> String {
        format!("BENCH|{seq}|{}|", self.micros(at))
    }

    /// Records a stanza an occupant of domain `domain` (an index below
    /// the number of domains) received at `at`.
    pub fn stanza(&self, domain: usize, stanza: &[u8], at: Instant) {
        self.stanzas.fetch_add(1, Relaxed);
        if frame::name(stanza) != b"message" {
            return;
        }
        let Some(i) = memmem::find(stanza, MARKER) else {
            return;
        };
        match parse_body(&stanza[i + MARKER.len()..]) {
            Some((seq, sent)) if seq < self.counts.len() => {
                let at = self.micros(at);
                self.sent[seq].store(sent, Relaxed);
                self.last[seq].fetch_max(at, Relaxed);
                self.first_by_domain[domain][seq].fetch_min(at, Relaxed);
                self.last_by_domain[domain][seq].fetch_max(at, Relaxed);
                self.counts[seq].fetch_add(1, Relaxed);
                self.deliveries.fetch_add(1, Relaxed);
                self.delivered_bytes.fetch_add(stanza.len() as u64, Relaxed);
            }
            _ => {
                self.malformed.fetch_add(1, Relaxed);
            }
        }
    }

    /// Records that an occupant's connection closed.
    pub fn disconnected(&self) {
        self.disconnects.fetch_add(1, Relaxed);
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        Counters {
            deliveries: self.deliveries.load(Relaxed),
            delivered_bytes: self.delivered_bytes.load(Relaxed),
            stanzas: self.stanzas.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
        }
    }

    /// Deliveries seen of message `seq`.
    pub fn deliveries_of(&self, seq: usize) -> u32 {
        self.counts[seq].load(Relaxed)
    }

    /// The fate of message `seq`.
    pub fn fate(&self, seq: usize) -> Fate {
        let deliveries = self.counts[seq].load(Relaxed);
        let (sent, last) = (self.sent[seq].load(Relaxed), self.last[seq].load(Relaxed));
        let since = |t: u64| Duration::from_micros(t.saturating_sub(sent));
        Fate {
            deliveries,
            to_last: since(last),
            by_domain: self
                .first_by_domain
                .iter()
                .zip(&self.last_by_domain)
                .map(|(first, last)| {
                    let first = first[seq].load(Relaxed);
                    (first != u64::MAX).then(|| (since(first), since(last[seq].load(Relaxed))))
                })
                .collect(),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// `<seq>|<sent>|…` → `(seq, sent)`.
fn parse_body(rest: &[u8]) -> Option<(usize, u64)> {
    let mut fields = rest.splitn(3, |&b| b == b'|');
    let number = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
    let seq = number(fields.next()?)?;
    let sent = number(fields.next()?)?;
    fields.next()?;
    Some((usize::try_from(seq).ok()?, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_deliveries_from_bodies() {
        let recorder = Recorder::new(3, 2);
        let sent = recorder.epoch + Duration::from_millis(5);
        let body = recorder.body(1, sent);
        assert_eq!(body, "BENCH|1|5000|");
        let message =
            format!("<message type='groupchat' from='r@m/o1'><body>{body}</body></message>");
        recorder.stanza(0, message.as_bytes(), sent + Duration::from_millis(2));
        recorder.stanza(0, message.as_bytes(), sent + Duration::from_millis(7));
        recorder.stanza(1, b"<presence from='r@m/o2'/>", sent);
        recorder.stanza(1, b"<message><body>BENCH|9|1|</body></message>", sent);
        let fate = recorder.fate(1);
        assert_eq!(fate.deliveries, 2);
        assert_eq!(fate.to_last, Duration::from_millis(7));
        assert_eq!(
            fate.by_domain,
            [
                Some((Duration::from_millis(2), Duration::from_millis(7))),
                None
            ]
        );
        let c = recorder.counters();
        assert_eq!((c.deliveries, c.stanzas, c.malformed), (2, 4, 1));
    }

    #[test]
    fn parses_bodies_strictly() {
        assert_eq!(parse_body(b"12|345|</body>"), Some((12, 345)));
        assert_eq!(parse_body(b"12|345"), None);
        assert_eq!(parse_body(b"x|345|"), None);
    }
}
