//! The command line: what to run and how hard.

use std::path::PathBuf;
use std::time::Duration;

/// `dmuc-bench --help`.
pub const USAGE: &str = "\
usage: dmuc-bench [--master PATH] [options]

Drives one room with N occupants (half on a.test, half on b.test) at a fixed
message rate, on Prosody's mod_muc and on dmuc-master, each on a fresh
testbed, and prints deliveries/s, time to the last recipient (p50/p99), CPU
per delivery, peak memory and their ratios.

  --master PATH         the dmuc-master binary (needed unless --system prosody)
  --occupants N         room size, at least 2 (default 100)
  --rate R              room messages per second (default 100)
  --seconds S           measured window (default 10)
  --warmup W            seconds of load before the window (default 2)
  --senders K           occupants that send, spread over both domains
                        (default min(10, N))
  --system S            both | prosody | dmuc (default both)
  --join-concurrency C  joins in flight while filling the room (default 20)
  --prosody-archive     keep Prosody's MUC archive on (muc_log_by_default)
  -h, --help            this text
";

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Prosody's own `mod_muc`, as `muc.a.test`.
    Prosody,
    /// `dmuc-master` as the external component `conference.a.test`.
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
        let mut master = None;
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
        if occupants < 2 {
            return Err(bad("--occupants must be at least 2".into()));
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
        Ok(Self {
            master,
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

    /// Time between two messages.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
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
    }
}
