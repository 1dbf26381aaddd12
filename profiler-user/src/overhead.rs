//! The overhead budget (`--max-cpu`): what hostprof itself spends, and the
//! CPU profile's sampling frequency that keeps it under the budget.
//!
//! [`Governor`] is pure: it is told, drain by drain, how much CPU hostprof
//! used (its threads, from `getrusage`, plus its kernel programs' run time
//! from `bpf_stats`) over how much wall time, and decides every
//! [`Governor::DECIDE_EVERY`] whether the frequency changes. The cost of
//! sampling grows with the frequency; the rest (process snapshots,
//! symbolization, export) barely does. So the governor models the cost
//! as a fixed part plus a part per Hz: fitted through its last two
//! windows at different frequencies, or all per Hz before there are two
//! (in proportion). It lowers the frequency to the one the model puts at
//! 80 % of the budget once a window costs over 90 % of it, and raises it
//! in proportion (at most doubling, never past `--frequency`) only once
//! the cost is under half the budget: between the two it holds, so it does not
//! oscillate. A new frequency applies from the next drain, so the reading
//! of the drain interval it was decided in (still at the old one) is left
//! out, and the model's older point is forgotten after a minute. The margin is for the cost's own noise: at a constant rate
//! it moves by a third from one 10 s window to the next on a VM
//! (measured: a new process's tables and copies cost tens of
//! milliseconds). When even the lowest frequency exceeds the budget it
//! says so once and stays there: the rest of the cost is not the
//! sampling's.

use std::time::{Duration, Instant};

use crate::profiler::{Frequency, MaxCpu};

/// Decides the sampling frequency under a CPU budget.
#[derive(Debug)]
pub struct Governor {
    /// Share of one core hostprof may use.
    budget: f64,
    /// The frequency asked for: never exceeded.
    ceiling: Frequency,
    /// The frequency now.
    current: Frequency,
    /// CPU used and wall time since the last decision.
    used: Duration,
    elapsed: Duration,
    /// The cost share measured at the last decision.
    last_share: Option<f64>,
    /// The last window's (Hz, cost share) at a frequency other than the
    /// current one: with the current window's, the model's two points;
    /// and how many windows ago it was taken (forgotten past
    /// [`Self::OTHER_WINDOWS`]: the host has changed since).
    other: Option<(f64, f64, u32)>,
    /// Whether the next reading is left out: it ends the drain interval
    /// in which a new frequency was decided, still sampled at the old one.
    skip_next: bool,
    /// Whether the budget was found out of reach at the lowest frequency
    /// (said once).
    floor_reached: bool,
}

/// A change of frequency the governor decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The new frequency.
    pub frequency: Frequency,
    /// The cost, as a share of one core, that led to it.
    pub share: f64,
}

impl Governor {
    /// How much wall time a decision is taken over: the agent's default
    /// export interval, so that each holds one symbolization of a window.
    pub const DECIDE_EVERY: Duration = Duration::from_secs(10);
    /// Lowered to this share of the budget, by the model...
    const TARGET: f64 = 0.8;
    /// ... once a window costs over this share of it.
    const LOWER_ABOVE: f64 = 0.9;
    /// Raised only when the cost is under this share of the budget.
    const RAISE_BELOW: f64 = 0.5;
    /// Windows after which the model's older point is forgotten.
    const OTHER_WINDOWS: u32 = 6;

    /// A governor of `budget`, starting at (and never above) `frequency`.
    pub fn new(budget: MaxCpu, frequency: Frequency) -> Self {
        Self {
            budget: budget.share(),
            ceiling: frequency,
            current: frequency,
            used: Duration::ZERO,
            elapsed: Duration::ZERO,
            last_share: None,
            other: None,
            skip_next: false,
            floor_reached: false,
        }
    }

    /// The frequency now.
    #[cfg(test)]
    fn frequency(&self) -> Frequency {
        self.current
    }

    /// The cost at the last decision, as a share of one core.
    pub fn last_share(&self) -> Option<f64> {
        self.last_share
    }

    /// Takes in `used` CPU over `elapsed` wall time; returns a new
    /// frequency when one is due.
    pub fn observe(&mut self, used: Duration, elapsed: Duration) -> Option<Decision> {
        if std::mem::take(&mut self.skip_next) {
            return None;
        }
        self.used += used;
        self.elapsed += elapsed;
        if self.elapsed < Self::DECIDE_EVERY {
            return None;
        }
        let share = self.used.as_secs_f64() / self.elapsed.as_secs_f64();
        self.used = Duration::ZERO;
        self.elapsed = Duration::ZERO;
        self.last_share = Some(share);
        if let Some((_, _, age)) = &mut self.other {
            *age += 1;
            if *age > Self::OTHER_WINDOWS {
                self.other = None;
            }
        }
        let hz = f64::from(self.current.hz());
        if share > self.budget && self.current.hz() == Frequency::MIN {
            if !self.floor_reached {
                self.floor_reached = true;
                log::warn!(
                    "--max-cpu {:.3}% is out of reach: hostprof spends {:.3}% of a core even \
                     sampling at {}; the rest is process snapshots, symbolization and export \
                     (raise the budget, or profile fewer processes)",
                    self.budget * 100.0,
                    share * 100.0,
                    self.current
                );
            }
            return None;
        }
        let target = self.budget * Self::TARGET;
        // At the floor there is nothing to lower (between 90 % and all of
        // the budget it holds there).
        let at_floor = self.current.hz() == Frequency::MIN;
        let next = if share > self.budget * Self::LOWER_ABOVE && !at_floor {
            // All per Hz, the most the budget could allow: the model's
            // frequency is no higher, and (its fit being noisy) at least
            // half of it.
            let proportional = hz * target / share;
            let modelled = match self.fit(hz, share) {
                Some((fixed, per_hz)) => (target - fixed).max(0.0) / per_hz,
                None => proportional,
            };
            let lowered = modelled.clamp(proportional / 2.0, proportional).floor();
            lowered.clamp(f64::from(Frequency::MIN), hz - 1.0)
        } else if share < self.budget * Self::RAISE_BELOW && self.current < self.ceiling {
            // In proportion, not by the model: a cost this far under the
            // budget is mostly a quieter host, and the model's older point
            // was taken on the busier one. Too high a rate is lowered by
            // the model at the next window.
            let raised = (hz * target / share.max(f64::MIN_POSITIVE))
                .min(hz * 2.0)
                .ceil();
            raised.min(f64::from(self.ceiling.hz()))
        } else {
            hz
        };
        // `next` is within MIN..=ceiling: a valid frequency.
        let next = Frequency::new(next as u32).unwrap_or(self.current);
        if next == self.current {
            return None;
        }
        self.other = Some((hz, share, 0));
        self.current = next;
        self.skip_next = true;
        Some(Decision {
            frequency: next,
            share,
        })
    }
}

impl Governor {
    /// The cost model through the window at `other` and this one (`hz`,
    /// `share`): (fixed share, share per Hz). `None` without a second point,
    /// or when the two do not show the cost growing with the frequency
    /// (noise larger than the change): then all of it counts as per Hz.
    fn fit(&self, hz: f64, share: f64) -> Option<(f64, f64)> {
        let (other_hz, other_share, _) = self.other?;
        let per_hz = (other_share - share) / (other_hz - hz);
        if !per_hz.is_finite() || per_hz <= 0.0 {
            return None;
        }
        let fixed = (share - per_hz * hz).max(0.0);
        Some((fixed, per_hz))
    }
}

/// The budget at work: the governor, what it was last fed, and what it
/// did.
#[derive(Debug)]
pub struct Budget {
    governor: Governor,
    /// When the last reading was taken, and the process's and its kernel
    /// programs' CPU time then.
    last: (Instant, Duration, Duration),
    stats: OverheadStats,
}

/// What the budget did, for the summary and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct OverheadStats {
    /// `--max-cpu`, as a share of one core (0 without a budget).
    pub max_cpu_share: f64,
    /// hostprof's cost at the last decision, as a share of one core
    /// (threads and kernel programs; 0 before the first).
    pub cpu_share: f64,
    /// The CPU profile's sampling frequency now, Hz.
    pub frequency_hz: u32,
    /// The lowest frequency used, Hz.
    pub lowest_frequency_hz: u32,
    /// Times the frequency changed.
    pub frequency_changes: u64,
}

impl Budget {
    /// A budget of `max` at up to `frequency`; `kernel` is the sampler's
    /// programs' run time so far.
    pub fn new(max: MaxCpu, frequency: Frequency, kernel: Duration) -> Self {
        Self {
            governor: Governor::new(max, frequency),
            last: (Instant::now(), process_cpu_time(), kernel),
            stats: OverheadStats {
                max_cpu_share: max.share(),
                cpu_share: 0.0,
                frequency_hz: frequency.hz(),
                lowest_frequency_hz: frequency.hz(),
                frequency_changes: 0,
            },
        }
    }

    /// After a drain, with the sampler's programs' run time so far: a new
    /// frequency, when one is due.
    pub fn after_drain(&mut self, kernel: Duration) -> Option<Decision> {
        let now = (Instant::now(), process_cpu_time(), kernel);
        let used = now.1.saturating_sub(self.last.1) + now.2.saturating_sub(self.last.2);
        let elapsed = now.0 - self.last.0;
        self.last = now;
        let decision = self.governor.observe(used, elapsed);
        if let Some(share) = self.governor.last_share() {
            self.stats.cpu_share = share;
        }
        if let Some(decision) = decision {
            log::info!(
                "hostprof used {:.3}% of a core: CPU sampling at {} from now (--max-cpu {:.3}%)",
                decision.share * 100.0,
                decision.frequency,
                self.stats.max_cpu_share * 100.0
            );
            let hz = decision.frequency.hz();
            self.stats.frequency_hz = hz;
            self.stats.lowest_frequency_hz = self.stats.lowest_frequency_hz.min(hz);
            self.stats.frequency_changes += 1;
        }
        decision
    }

    /// What it did so far.
    pub fn stats(&self) -> OverheadStats {
        self.stats
    }
}

/// CPU time this process has used so far, all threads, user and system
/// (`getrusage(RUSAGE_SELF)`).
pub(crate) fn process_cpu_time() -> Duration {
    // SAFETY: `usage` is a valid, writable rusage; getrusage only writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF cannot fail with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: &str) -> MaxCpu {
        percent.parse().unwrap()
    }

    fn hz(value: u32) -> Frequency {
        Frequency::new(value).unwrap()
    }

    /// A host where hostprof costs `fixed` plus `per_hz` for each Hz, in
    /// shares of a core; runs `seconds` of one-second drains.
    /// A decided frequency applies from the next drain on, as the
    /// sampler's does.
    fn run(governor: &mut Governor, seconds: u32, cost: impl Fn(u32) -> f64) -> Vec<u32> {
        let mut rates = Vec::new();
        let mut applied = governor.frequency().hz();
        for _ in 0..seconds {
            let share = cost(applied);
            applied = governor.frequency().hz();
            let used = Duration::from_secs_f64(share);
            if let Some(decision) = governor.observe(used, Duration::from_secs(1)) {
                rates.push(decision.frequency.hz());
            }
        }
        rates
    }

    #[test]
    fn lowers_the_frequency_until_the_cost_fits_and_holds_it() {
        let mut governor = Governor::new(budget("0.1"), hz(1000));
        // 0.02 % fixed, 0.001 % per Hz: 1.02 % at 1 kHz.
        let cost = |hz: u32| 0.0002 + 0.000_01 * f64::from(hz);
        let rates = run(&mut governor, 240, cost);
        let settled = governor.frequency().hz();
        assert!(cost(settled) <= 0.001, "{rates:?}: {}", cost(settled));
        // As much as the budget allows: twice the rate would not fit.
        assert!(cost(settled * 2) > 0.001, "{rates:?}");
        assert!(rates.len() <= 4, "settles in a few steps: {rates:?}");
        // Then holds.
        assert!(run(&mut governor, 120, cost).is_empty());
    }

    #[test]
    fn a_large_fixed_cost_is_fitted_from_two_windows() {
        // As measured with `record --pid` of two busy loops: 1.4 % at
        // 1 kHz, a third of it whatever the frequency.
        let mut governor = Governor::new(budget("1"), hz(1000));
        let cost = |hz: u32| 0.0047 + 0.000_009_3 * f64::from(hz);
        let rates = run(&mut governor, 120, cost);
        // In proportion first (to 571 Hz, still 1.0 %), then by the fit.
        assert_eq!(rates.len(), 2, "{rates:?}");
        let settled = cost(governor.frequency().hz());
        assert!((0.0075..=0.0081).contains(&settled), "{rates:?}: {settled}");
    }

    #[test]
    fn a_fit_against_the_frequency_counts_all_of_the_cost_per_hz() {
        let mut governor = Governor::new(budget("1"), hz(1000));
        governor.other = Some((1000.0, 0.010, 1));
        // Cheaper at the higher rate: noise, not a model.
        assert_eq!(governor.fit(500.0, 0.012), None);
        assert_eq!(governor.fit(1000.0, 0.012), None, "one frequency");
        let (fixed, per_hz) = governor.fit(500.0, 0.006).unwrap();
        assert!((fixed - 0.002).abs() < 1e-12 && (per_hz - 0.000_008).abs() < 1e-12);
    }

    #[test]
    fn raises_it_again_when_the_load_drops_but_never_past_the_ceiling() {
        let mut governor = Governor::new(budget("0.5"), hz(99));
        let busy = |hz: u32| 0.0005 + 0.0002 * f64::from(hz);
        run(&mut governor, 60, busy);
        let lowered = governor.frequency().hz();
        assert!(lowered < 99 && busy(lowered) <= 0.005, "{lowered}");
        let quiet = |hz: u32| 0.000_01 * f64::from(hz);
        let rates = run(&mut governor, 120, quiet);
        assert_eq!(governor.frequency().hz(), 99, "{rates:?}");
        assert!(rates.iter().all(|&r| r <= 99), "{rates:?}");
    }

    #[test]
    fn waits_for_a_whole_decision_period() {
        let mut governor = Governor::new(budget("0.1"), hz(99));
        let over = Duration::from_millis(100); // 10 % of a core
        for _ in 0..9 {
            assert_eq!(governor.observe(over, Duration::from_secs(1)), None);
        }
        let decision = governor.observe(over, Duration::from_secs(1)).unwrap();
        assert!((decision.share - 0.1).abs() < 1e-9);
        assert!(decision.frequency.hz() < 99);
    }

    #[test]
    fn the_drain_still_at_the_old_frequency_is_left_out() {
        let mut governor = Governor::new(budget("0.1"), hz(99));
        let over = Duration::from_millis(100); // 10 % of a core
        let decided = (0..10).find_map(|_| governor.observe(over, Duration::from_secs(1)));
        assert!(decided.is_some());
        // The drain interval the decision fell in, at the old frequency.
        let old = Duration::from_millis(900);
        assert_eq!(governor.observe(old, Duration::from_secs(1)), None);
        let under = Duration::from_micros(700); // 0.07 %: holds
        for _ in 0..10 {
            assert_eq!(governor.observe(under, Duration::from_secs(1)), None);
        }
        let share = governor.last_share().unwrap();
        assert!((share - 0.0007).abs() < 1e-9, "{share}");
    }

    #[test]
    fn the_older_point_of_the_model_is_forgotten() {
        let mut governor = Governor::new(budget("1"), hz(1000));
        governor.other = Some((500.0, 0.004, 0));
        for _ in 0..Governor::OTHER_WINDOWS {
            for _ in 0..10 {
                governor.observe(Duration::from_millis(6), Duration::from_secs(1));
            }
        }
        assert!(governor.other.is_some());
        for _ in 0..10 {
            governor.observe(Duration::from_millis(6), Duration::from_secs(1));
        }
        assert_eq!(governor.other, None);
    }

    #[test]
    fn stays_at_the_floor_when_the_budget_is_out_of_reach() {
        let mut governor = Governor::new(budget("0.01"), hz(10));
        let fixed = |_: u32| 0.01; // 1 % whatever the frequency
        let rates = run(&mut governor, 120, fixed);
        assert_eq!(governor.frequency().hz(), 1, "{rates:?}");
        assert_eq!(rates.last(), Some(&1));
        assert!(run(&mut governor, 60, fixed).is_empty());
    }

    #[test]
    fn holds_at_the_floor_just_under_the_budget() {
        let mut governor = Governor::new(budget("1"), hz(1));
        // 95 % of the budget at 1 Hz: over the point where it lowers, but
        // there is no lower rate.
        let rates = run(&mut governor, 60, |_| 0.0095);
        assert!(rates.is_empty(), "{rates:?}");
        assert_eq!(governor.frequency().hz(), 1);
    }

    #[test]
    fn own_cpu_time_grows() {
        let before = process_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time() > before);
    }
}
