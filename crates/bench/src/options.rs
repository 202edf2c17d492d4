//! The command line: what to run and how hard.

use std::path::PathBuf;
use std::time::Duration;

/// `dmuc-bench --help`.
pub const USAGE: &str = "\
usage: dmuc-bench [--master PATH] [options]

Drives one room with N occupants, spread evenly over a.test, b.test, ... at a
fixed message rate, on Prosody's mod_muc and on dmuc, each on a fresh
testbed, and prints deliveries/s, time to the last recipient (p50/p99), CPU
per delivery, peak memory, cross-domain traffic per message (when counted)
and their ratios.

  --master PATH         the dmuc-master binary (needed unless --system prosody)
  --domains D           domains a.test, b.test, ..., from 2 to 10 (default 2);
                        the MUC (muc.a.test or conference.a.test) is on a.test
  --peerhosts           dmuc runs a dmuc-peerhost on every domain but a.test
                        (the distributed system); implies --count-crossing
  --peerhost PATH       the dmuc-peerhost binary (default: next to --master)
  --count-crossing      route s2s (and gRPC) through counting relays in this
                        process: cross-domain bytes and stanzas per message
  --occupants N         room size, at least 2 and at least D (default 100)
  --rate R              room messages per second (default 100)
  --seconds S           measured window (default 10)
  --warmup W            seconds of load before the window (default 2)
  --senders K           occupants that send, spread over all domains
                        (default min(10, N))
  --system S            both | prosody | dmuc (default both)
  --join-concurrency C  joins in flight while filling the room (default 20)
  --prosody-archive     keep Prosody's MUC archive on (muc_log_by_default)
  -h, --help            this text
";

/// The most domains `--domains` accepts (a.test to j.test).
pub const MAX_DOMAINS: usize = 10;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Prosody's own `mod_muc`, as `muc.a.test`.
    Prosody,
    /// `dmuc-master` as the external component `conference.a.test`, with
    /// or without peerhosts (see [`Options::peerhost`]).
    Dmuc,
}

impl System {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Prosody => "prosody",
            System::Dmuc => "dmuc",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `dmuc-master` binary.
    pub master: Option<PathBuf>,
    /// The `dmuc-peerhost` binary, when dmuc runs with peerhosts on every
    /// domain but the first (`--peerhosts`).
    pub peerhost: Option<PathBuf>,
    /// The domains, `a.test` first (the MUC's); occupant `i` lives on
    /// `domains[i % domains.len()]`.
    pub domains: Vec<String>,
    /// Cross-domain traffic goes through counting relays.
    pub count_crossing: bool,
    /// Room size N.
    pub occupants: usize,
    /// Room messages per second.
    pub rate: f64,
    /// The measured window.
    pub window: Duration,
    /// Load before the window.
    pub warmup: Duration,
    /// How many occupants send.
    pub senders: usize,
    /// The systems, in run order.
    pub systems: Vec<System>,
    /// Joins in flight while the room fills.
    pub join_concurrency: usize,
    /// Prosody's MUC archives messages (off by default, as in PERF.md's
    /// baseline).
    pub prosody_archive: bool,
}

/// Why the command line was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum UsageError {
    /// `--help` was asked for.
    Help,
    /// The command line is wrong; the message says how.
    Invalid(String),
}

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, UsageError> {
        let bad = |msg: String| UsageError::Invalid(msg);
        let (mut master, mut peerhost, mut peerhosts) = (None, None, false);
        let (mut domains, mut count_crossing) = (2usize, false);
        let (mut occupants, mut rate, mut seconds, mut warmup) = (100usize, 100.0, 10.0, 2.0);
        let (mut senders, mut system, mut join_concurrency) = (None, "both".to_owned(), 20usize);
        let mut prosody_archive = false;
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| bad(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "-h" | "--help" => return Err(UsageError::Help),
                "--master" => master = Some(PathBuf::from(value()?)),
                "--domains" => domains = number(&flag, &value()?)?,
                "--peerhosts" => peerhosts = true,
                "--peerhost" => peerhost = Some(PathBuf::from(value()?)),
                "--count-crossing" => count_crossing = true,
                "--occupants" => occupants = number(&flag, &value()?)?,
                "--rate" => rate = number(&flag, &value()?)?,
                "--seconds" => seconds = number(&flag, &value()?)?,
                "--warmup" => warmup = number(&flag, &value()?)?,
                "--senders" => senders = Some(number(&flag, &value()?)?),
                "--system" => system = value()?,
                "--join-concurrency" => join_concurrency = number(&flag, &value()?)?,
                "--prosody-archive" => prosody_archive = true,
                other => return Err(bad(format!("unknown argument {other}"))),
            }
        }
        let systems = match system.as_str() {
            "both" => vec![System::Prosody, System::Dmuc],
            "prosody" => vec![System::Prosody],
            "dmuc" => vec![System::Dmuc],
            other => {
                return Err(bad(format!(
                    "--system {other}: expected both, prosody or dmuc"
                )));
            }
        };
        let senders = senders.unwrap_or(occupants.min(10));
        if !(2..=MAX_DOMAINS).contains(&domains) {
            return Err(bad(format!(
                "--domains must be between 2 and {MAX_DOMAINS}"
            )));
        }
        if occupants < domains {
            return Err(bad(format!(
                "--occupants must be at least 2 and at least --domains ({domains})"
            )));
        }
        if !(rate > 0.0 && seconds > 0.0 && warmup >= 0.0) {
            return Err(bad(
                "--rate and --seconds must be positive, --warmup not negative".into(),
            ));
        }
        if !(1..=occupants).contains(&senders) {
            return Err(bad(format!("--senders must be between 1 and {occupants}")));
        }
        if join_concurrency == 0 {
            return Err(bad("--join-concurrency must be at least 1".into()));
        }
        match &master {
            None if systems.contains(&System::Dmuc) => {
                return Err(bad("--master PATH is needed to run dmuc".into()));
            }
            Some(path) if !path.is_file() => {
                return Err(bad(format!("--master {}: no such file", path.display())));
            }
            _ => {}
        }
        let peerhost = match (peerhosts, peerhost, &master) {
            (false, None, _) => None,
            (false, Some(_), _) => return Err(bad("--peerhost PATH needs --peerhosts".into())),
            (true, Some(path), _) => Some(path),
            (true, None, Some(master)) => Some(master.with_file_name("dmuc-peerhost")),
            (true, None, None) => None,
        };
        match &peerhost {
            Some(path) if systems.contains(&System::Dmuc) && !path.is_file() => {
                return Err(bad(format!(
                    "--peerhosts: {} is not built (cargo build --release -p dmuc-peerhost), \
                     or name it with --peerhost PATH",
                    path.display()
                )));
            }
            _ => {}
        }
        Ok(Self {
            master,
            peerhost,
            domains: (0..domains).map(domain_name).collect(),
            count_crossing: count_crossing || peerhosts,
            occupants,
            rate,
            window: Duration::from_secs_f64(seconds),
            warmup: Duration::from_secs_f64(warmup),
            senders,
            systems,
            join_concurrency,
            prosody_archive,
        })
    }

    /// Messages sent in all: warm-up and window.
    pub fn total_messages(&self) -> usize {
        self.first_measured() + (self.rate * self.window.as_secs_f64()).round() as usize
    }

    /// The number of the first message sent in the window.
    pub fn first_measured(&self) -> usize {
        (self.rate * self.warmup.as_secs_f64()).round() as usize
    }

    /// Whether dmuc runs with peerhosts.
    pub fn peerhosts(&self) -> bool {
        self.peerhost.is_some()
    }

    /// Occupants on domain `d` (occupant `i` is on domain `i mod D`).
    pub fn occupants_on(&self, d: usize) -> usize {
        let k = self.domains.len();
        self.occupants / k + usize::from(d < self.occupants % k)
    }

    /// Time between two messages.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

/// The `i`-th domain: `a.test`, `b.test`, ...
fn domain_name(i: usize) -> String {
    format!("{}.test", char::from(b'a' + i as u8))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, UsageError> {
    value
        .parse()
        .map_err(|_| UsageError::Invalid(format!("{flag} {value}: not a valid number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Options, UsageError> {
        Options::parse(args.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn defaults_and_overrides() {
        let o = parse("--system prosody").unwrap();
        assert_eq!((o.occupants, o.rate, o.senders), (100, 100.0, 10));
        assert_eq!((o.first_measured(), o.total_messages()), (200, 1200));
        let o =
            parse("--system prosody --occupants 1000 --rate 10 --seconds 5 --warmup 1 --senders 4")
                .unwrap();
        assert_eq!(
            (
                o.occupants,
                o.senders,
                o.first_measured(),
                o.total_messages()
            ),
            (1000, 4, 10, 60)
        );
        assert_eq!(o.period(), Duration::from_millis(100));
        assert_eq!(o.systems, vec![System::Prosody]);
        assert_eq!(o.domains, ["a.test", "b.test"]);
        assert!(!o.count_crossing && !o.peerhosts());
    }

    #[test]
    fn domains_and_peerhosts() {
        let o = parse("--system prosody --domains 5 --occupants 1000 --peerhosts").unwrap();
        assert_eq!(
            o.domains,
            ["a.test", "b.test", "c.test", "d.test", "e.test"]
        );
        assert!(o.count_crossing, "--peerhosts counts what crosses");
        assert_eq!(o.occupants_on(0), 200);
        let o = parse("--system prosody --domains 3 --occupants 10 --count-crossing").unwrap();
        assert_eq!(
            (0..3).map(|d| o.occupants_on(d)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert!(o.count_crossing && !o.peerhosts());
    }

    #[test]
    fn rejects_bad_lines() {
        assert_eq!(parse("--help").unwrap_err(), UsageError::Help);
        let invalid = |args: &str| matches!(parse(args), Err(UsageError::Invalid(_)));
        assert!(invalid(""), "dmuc needs --master");
        assert!(invalid("--master /nonexistent/dmuc-master"));
        assert!(invalid("--system prosody --occupants 1"));
        assert!(invalid("--system prosody --senders 0"));
        assert!(invalid("--system prosody --rate x"));
        assert!(invalid("--system prosody --bogus"));
        assert!(invalid("--system nope"));
        assert!(invalid("--system prosody --domains 1"));
        assert!(invalid("--system prosody --domains 11"));
        assert!(invalid("--system prosody --domains 5 --occupants 4"));
        assert!(invalid("--system prosody --peerhost /x/dmuc-peerhost"));
    }
}
