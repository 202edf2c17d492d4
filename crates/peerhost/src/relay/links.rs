//! How a link to another peerhost is, from the pings sent over it (pure:
//! the probe task in [`super::probe`] feeds it and reports what it says).
//!
//! Each ping is answered (with a round trip) or not (an error or a
//! timeout). The round trip is smoothed (each answer moves the estimate
//! a quarter of the way, as TCP's SRTT does by an eighth, to follow a
//! route change within a few probes); the loss is the share of the last
//! [`SAMPLES`] pings left unanswered; the link is reachable while any of
//! the last [`REACHABLE_WITHIN`] pings was answered.
//!
//! The master hears of a link only when it changed enough since it was
//! last told ([`changed_enough`]), so a steady link costs no frames.

use std::collections::VecDeque;
use std::time::Duration;

/// Pings the loss is counted over.
pub const SAMPLES: usize = 12;
/// A link is reachable while one of this many last pings was answered.
pub const REACHABLE_WITHIN: usize = 3;
/// The smallest round-trip change worth telling the master, in ms, and
/// as a share of the round trip told (in percent): the larger applies.
const RTT_CHANGE_MS: u32 = 10;
const RTT_CHANGE_PERCENT: u32 = 20;
/// The smallest loss change worth telling the master, per thousand.
const LOSS_CHANGE_PERMILLE: u16 = 50;

/// What a link's pings say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Smoothed round trip (0 if no ping was ever answered).
    pub rtt_ms: u32,
    /// Unanswered pings among the recent ones, per thousand.
    pub loss_permille: u16,
    pub reachable: bool,
}

/// One link's pings so far.
#[derive(Clone, Debug, Default)]
pub struct Estimator {
    /// The smoothed round trip, in µs.
    srtt_us: Option<u64>,
    /// The last [`SAMPLES`] pings, newest last: answered or not.
    recent: VecDeque<bool>,
}

impl Estimator {
    /// A ping came back after `rtt`.
    pub fn answered(&mut self, rtt: Duration) {
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.srtt_us = Some(match self.srtt_us {
            None => sample,
            Some(srtt) if sample >= srtt => srtt + (sample - srtt) / 4,
            Some(srtt) => srtt - (srtt - sample) / 4,
        });
        self.push(true);
    }

    /// A ping failed or timed out.
    pub fn unanswered(&mut self) {
        self.push(false);
    }

    fn push(&mut self, answered: bool) {
        if self.recent.len() == SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(answered);
    }

    /// What the pings say, once there was one.
    pub fn estimate(&self) -> Option<Estimate> {
        if self.recent.is_empty() {
            return None;
        }
        let lost = self.recent.iter().filter(|a| !**a).count();
        Some(Estimate {
            rtt_ms: self.srtt_us.map_or(0, |us| {
                u32::try_from(us.div_ceil(1000)).unwrap_or(u32::MAX).max(1)
            }),
            loss_permille: (lost * 1000 / self.recent.len()) as u16,
            reachable: self.recent.iter().rev().take(REACHABLE_WITHIN).any(|a| *a),
        })
    }
}

/// Whether `now` is worth telling a master that was last told `told`
/// (`None`: nothing yet): reachability flipped, the round trip moved by
/// 10 ms and 20% or more, or the loss by 5% or more.
pub fn changed_enough(told: Option<&Estimate>, now: &Estimate) -> bool {
    let Some(told) = told else { return true };
    let rtt_step = RTT_CHANGE_MS.max(told.rtt_ms * RTT_CHANGE_PERCENT / 100);
    told.reachable != now.reachable
        || told.rtt_ms.abs_diff(now.rtt_ms) >= rtt_step
        || told.loss_permille.abs_diff(now.loss_permille) >= LOSS_CHANGE_PERMILLE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nothing_before_the_first_ping() {
        assert_eq!(Estimator::default().estimate(), None);
        let mut lost = Estimator::default();
        lost.unanswered();
        assert_eq!(
            lost.estimate(),
            Some(Estimate {
                rtt_ms: 0,
                loss_permille: 1000,
                reachable: false
            })
        );
    }

    #[test]
    fn the_round_trip_is_smoothed_a_quarter_at_a_time() {
        let mut e = Estimator::default();
        e.answered(ms(100));
        assert_eq!(e.estimate().unwrap().rtt_ms, 100);
        // One slow ping moves it a quarter of the way.
        e.answered(ms(500));
        assert_eq!(e.estimate().unwrap().rtt_ms, 200);
        // A route that got faster is followed within a few pings.
        for _ in 0..12 {
            e.answered(ms(10));
        }
        let rtt = e.estimate().unwrap().rtt_ms;
        assert!((10..=20).contains(&rtt), "{rtt}");
        // A sub-millisecond link is 1 ms, not "never answered".
        let mut fast = Estimator::default();
        fast.answered(Duration::from_micros(200));
        assert_eq!(fast.estimate().unwrap().rtt_ms, 1);
    }

    #[test]
    fn loss_is_over_the_recent_pings_and_reachability_over_the_last_few() {
        let mut e = Estimator::default();
        for _ in 0..SAMPLES {
            e.answered(ms(20));
        }
        e.unanswered();
        e.unanswered();
        let now = e.estimate().unwrap();
        // 2 of the last 12.
        assert_eq!(now.loss_permille, 166);
        assert!(now.reachable);
        e.unanswered();
        let now = e.estimate().unwrap();
        assert_eq!((now.loss_permille, now.reachable), (250, false));
        // Failures do not move the round trip.
        assert_eq!(now.rtt_ms, 20);
        e.answered(ms(20));
        assert!(e.estimate().unwrap().reachable);
        // Old failures age out of the window.
        for _ in 0..SAMPLES {
            e.answered(ms(20));
        }
        assert_eq!(e.estimate().unwrap().loss_permille, 0);
    }

    #[test]
    fn only_meaningful_changes_are_told() {
        let told = Estimate {
            rtt_ms: 100,
            loss_permille: 0,
            reachable: true,
        };
        let with = |rtt_ms, loss_permille, reachable| Estimate {
            rtt_ms,
            loss_permille,
            reachable,
        };
        assert!(changed_enough(None, &told));
        assert!(!changed_enough(Some(&told), &told));
        // 20% of 100 ms.
        assert!(!changed_enough(Some(&told), &with(119, 0, true)));
        assert!(changed_enough(Some(&told), &with(120, 0, true)));
        assert!(changed_enough(Some(&told), &with(80, 0, true)));
        // At least 10 ms on a fast link: 2 ms to 5 ms is noise.
        let fast = with(2, 0, true);
        assert!(!changed_enough(Some(&fast), &with(5, 0, true)));
        assert!(changed_enough(Some(&fast), &with(12, 0, true)));
        assert!(!changed_enough(Some(&told), &with(100, 49, true)));
        assert!(changed_enough(Some(&told), &with(100, 50, true)));
        assert!(changed_enough(Some(&told), &with(100, 0, false)));
    }

    /// One ping, then what the master is told: whether it is.
    fn ping(e: &mut Estimator, told: &mut Option<Estimate>, rtt: Option<u64>) -> bool {
        match rtt {
            Some(rtt) => e.answered(ms(rtt)),
            None => e.unanswered(),
        }
        let now = e.estimate().unwrap();
        let tell = changed_enough(told.as_ref(), &now);
        if tell {
            *told = Some(now);
        }
        tell
    }

    /// What a master is told over a run of pings: a steady link once, then
    /// only its real changes.
    #[test]
    fn a_steady_link_is_told_once() {
        let mut e = Estimator::default();
        let mut told = None;
        let steady = (0..50)
            .filter(|i| ping(&mut e, &mut told, Some(40 + i % 5)))
            .count();
        assert_eq!(steady, 1);
        // Cut: the master hears of the loss as it grows, and that the
        // link is unreachable by the third unanswered ping.
        let cut = (0..3).filter(|_| ping(&mut e, &mut told, None)).count();
        assert_eq!(cut, 3);
        assert_eq!(
            told,
            Some(Estimate {
                rtt_ms: 43,
                loss_permille: 250,
                reachable: false
            })
        );
    }
}
