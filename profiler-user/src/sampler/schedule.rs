//! When to drain. A drain's cost is mostly per entry taken (each one a
//! copy out and a free in the kernel's BPF allocator) plus a fixed part
//! (flipping the sets, waiting for in-flight runs, the counters): on a
//! quiet host the same few stacks are taken again every second. So the
//! interval stretches while the maps stay nearly empty and shrinks as they
//! fill ([`DrainSchedule`]), and a CPU that fills the active set to half
//! its room asks for a drain at once (`SET_FILL`, [`Room::drain_soon_at`]),
//! so a burst between two drains does not fill the maps.
//!
//! The decisions are pure; [`SetFill`] holds the kernel's counter.

use std::time::{Duration, Instant};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use profiler_common::names;

use super::{map_err, SamplerError};

/// Entries of all the maps together counted as one more room: what they
/// hold costs the kernel's memory (a stack is 1 KiB), so a drain aims at
/// an eighth of this, ~4 Ki entries, whatever the maps' room (a build
/// host's many distinct stacks keep drains closer, as the maps' memory
/// grows with the interval).
const ENTRIES_ROOM: usize = 32 * 1024;

/// The share of its room the fullest map should reach by a scheduled
/// drain: an eighth, so a load that quadruples between two drains still
/// leaves half the room before the kernel asks for an early one.
const TARGET_FILL: f64 = 1.0 / 8.0;

/// Drains of the kernel's maps since the start, by what called for them,
/// and the interval the schedule is at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainCounts {
    /// Due by the schedule.
    pub scheduled: u64,
    /// Brought forward: a CPU filled its share of the maps.
    pub early: u64,
    /// At a window's end (and the last one, at the stop).
    pub window: u64,
    /// The interval to the next scheduled drain.
    pub interval: Duration,
}

/// What called for a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainCause {
    /// The schedule's interval passed.
    Scheduled,
    /// A CPU asked ([`DrainSchedule::requested`]).
    Early,
    /// A window ended, or sampling stopped.
    Window,
}

/// When the next drain is due: the interval between drains goes from
/// `shortest` (where it starts, and the least time between two drains,
/// early ones included) to `longest`; and what called for each drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainSchedule {
    shortest: Duration,
    longest: Duration,
    next: Duration,
    /// When the last drain was (or sampling started).
    last: Instant,
    /// A CPU asked for a drain since the last one.
    asked: bool,
    counts: DrainCounts,
}

impl DrainSchedule {
    /// A schedule between `shortest` and `longest` (at least `shortest`),
    /// counting from now.
    pub fn new(shortest: Duration, longest: Duration) -> Self {
        Self {
            shortest,
            longest: longest.max(shortest),
            next: shortest,
            last: Instant::now(),
            asked: false,
            counts: DrainCounts::default(),
        }
    }

    /// Counts the first interval from `at` (when sampling started).
    pub fn start_at(&mut self, at: Instant) {
        self.last = at;
    }

    /// A CPU asked for a drain: the next one is due as soon as the
    /// shortest interval allows.
    pub fn requested(&mut self) {
        self.asked = true;
    }

    /// When the next drain is due, and what calls for it then.
    pub fn due(&self) -> (Instant, DrainCause) {
        if self.asked {
            (self.last + self.shortest, DrainCause::Early)
        } else {
            (self.last + self.next, DrainCause::Scheduled)
        }
    }

    /// A drain for `cause` found the fullest map `fill` full (0 to 1):
    /// counts it and sets the next interval ([`Self::stretch`]).
    pub fn drained(&mut self, cause: DrainCause, fill: f64) {
        let now = Instant::now();
        self.stretch(fill, now.duration_since(self.last));
        (self.last, self.asked) = (now, false);
        self.count(cause);
    }

    /// Counts a drain for `cause` that sets no interval (the last one).
    pub fn count(&mut self, cause: DrainCause) {
        let counts = &mut self.counts;
        match cause {
            DrainCause::Scheduled => counts.scheduled += 1,
            DrainCause::Early => counts.early += 1,
            DrainCause::Window => counts.window += 1,
        }
    }

    /// The drains so far and the interval now.
    pub fn counts(&self) -> DrainCounts {
        DrainCounts {
            interval: self.next,
            ..self.counts
        }
    }

    /// After a drain that found the fullest map `fill` full (0 to 1) after
    /// `elapsed`: the interval that would fill it to [`TARGET_FILL`] at
    /// the same pace, at most twice the last one (a quiet moment does not
    /// jump straight to the longest).
    fn stretch(&mut self, fill: f64, elapsed: Duration) {
        let wanted = if fill > 0.0 {
            elapsed.mul_f64((TARGET_FILL / fill).min(1e6))
        } else {
            self.longest
        };
        self.next = wanted
            .min(self.next.saturating_mul(2))
            .clamp(self.shortest, self.longest);
    }
}

/// The room of the maps a drain empties, in entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Room {
    /// Entries of each `COUNTS_*` map.
    pub counts: u32,
    /// Entries of each `STACKS_*` map.
    pub stacks: u32,
    /// Entries of each `DEEP_STACKS_*` map (the kernel counts a deep stack
    /// as four short ones, its bytes, towards [`Room::drain_soon_at`]).
    pub deep_stacks: u32,
    /// Kept waits the `WAIT_EVENTS` ring holds; 0 without a waiting kind.
    pub waits: u32,
}

impl Room {
    /// The per-CPU count of added entries at which a CPU asks for a
    /// drain (`Config::drain_soon_at`): half the smallest room, shared
    /// between `cpus` CPUs. A CPU adding more than its share asks early,
    /// which costs a drain at most, never a sample; the other CPUs'
    /// entries are all under their shares, so the set is then at most
    /// half full.
    pub fn drain_soon_at(&self, cpus: usize) -> u32 {
        let smallest = [self.counts, self.stacks, self.waits]
            .into_iter()
            .filter(|&room| room > 0)
            .min()
            .unwrap_or(0);
        (u64::from(smallest) / 2 / (cpus.max(1) as u64)).max(1) as u32
    }

    /// How full the fullest map was with `taken` in them, the maps'
    /// entries together counting as one more of [`ENTRIES_ROOM`]: 0 to 1.
    pub fn fill(&self, taken: &Taken) -> f64 {
        let entries = taken.counts + taken.stacks + 4 * taken.deep_stacks + taken.waits;
        let share = |n: usize, room: u32| {
            if room == 0 {
                0.0
            } else {
                n as f64 / f64::from(room)
            }
        };
        share(taken.counts, self.counts)
            .max(share(taken.stacks, self.stacks))
            .max(share(taken.deep_stacks, self.deep_stacks))
            .max(share(taken.waits, self.waits))
            .max(entries as f64 / ENTRIES_ROOM as f64)
    }
}

/// What a drain took from one set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Taken {
    /// `COUNTS` entries.
    pub counts: usize,
    /// `STACKS` entries.
    pub stacks: usize,
    /// `DEEP_STACKS` entries.
    pub deep_stacks: usize,
    /// Kept waits read from the ring.
    pub waits: usize,
}

/// The kernel's per-CPU fill counters (`SET_FILL`), one per map set, and
/// how full the last drained set was.
pub(super) struct SetFill {
    map: PerCpuArray<MapData, u32>,
    room: Room,
    last: f64,
}

impl SetFill {
    pub(super) fn new(map: Map, room: Room) -> Result<Self, SamplerError> {
        Ok(Self {
            map: map.try_into().map_err(map_err(names::SET_FILL))?,
            room,
            last: 0.0,
        })
    }

    /// The maps' room.
    #[cfg(test)]
    pub(super) fn room(&self) -> Room {
        self.room
    }

    /// Set `index` was emptied, having held `taken`: its counters start
    /// again from zero (no program writes the set until it is active
    /// again).
    pub(super) fn emptied(&mut self, index: usize, taken: &Taken) -> Result<(), SamplerError> {
        self.last = self.room.fill(taken);
        let cpus = aya::util::nr_cpus()
            .map_err(|(path, source)| SamplerError::OnlineCpus { path, source })?;
        let zeros = PerCpuValues::try_from(vec![0u32; cpus]).map_err(|source| {
            SamplerError::OnlineCpus {
                path: "/sys/devices/system/cpu/possible",
                source,
            }
        })?;
        self.map
            .set(index as u32, zeros, 0)
            .map_err(map_err(names::SET_FILL))
    }

    /// How full the fullest map of the last drained set was (0 to 1).
    pub(super) fn last(&self) -> f64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_quiet_host_stretches_to_the_longest_a_step_at_a_time() {
        let mut schedule = DrainSchedule::new(S, 4 * S);
        assert_eq!(schedule.counts().interval, S);
        // 1 % full after a second: 12.5 s would reach an eighth.
        schedule.stretch(0.01, S);
        assert_eq!(schedule.counts().interval, 2 * S, "at most twice the last");
        schedule.stretch(0.02, 2 * S);
        assert_eq!(schedule.counts().interval, 4 * S);
        schedule.stretch(0.04, 4 * S);
        assert_eq!(schedule.counts().interval, 4 * S, "never past the longest");
        schedule.stretch(0.0, 4 * S);
        assert_eq!(schedule.counts().interval, 4 * S, "empty maps: the longest");
    }

    #[test]
    fn filling_maps_shrink_it_at_once() {
        let mut schedule = DrainSchedule::new(S, 4 * S);
        schedule.stretch(0.0, S);
        schedule.stretch(0.0, 2 * S);
        assert_eq!(schedule.counts().interval, 4 * S);
        // A quarter full in 4 s: 2 s reach an eighth.
        schedule.stretch(0.25, 4 * S);
        assert_eq!(schedule.counts().interval, 2 * S);
        // Half full after an early drain: the shortest, not less.
        schedule.stretch(0.5, Duration::from_millis(300));
        assert_eq!(schedule.counts().interval, S);
    }

    #[test]
    fn a_fixed_schedule_stays_fixed() {
        let mut schedule = DrainSchedule::new(S, S);
        schedule.stretch(0.0, S);
        assert_eq!(schedule.counts().interval, S);
        let mut schedule = DrainSchedule::new(2 * S, S);
        schedule.stretch(0.9, S);
        assert_eq!(
            schedule.counts().interval,
            2 * S,
            "longest is at least shortest"
        );
    }

    #[test]
    fn a_request_brings_the_next_drain_to_the_shortest_and_drains_are_counted() {
        let mut schedule = DrainSchedule::new(S, 4 * S);
        let start = Instant::now();
        schedule.start_at(start);
        schedule.stretch(0.0, S);
        assert_eq!(schedule.due(), (start + 2 * S, DrainCause::Scheduled));
        schedule.requested();
        assert_eq!(schedule.due(), (start + S, DrainCause::Early));
        schedule.drained(DrainCause::Early, 0.5);
        assert_eq!(
            schedule.due().1,
            DrainCause::Scheduled,
            "the request is served"
        );
        schedule.count(DrainCause::Window);
        let counts = schedule.counts();
        assert_eq!((counts.scheduled, counts.early, counts.window), (0, 1, 1));
        assert_eq!(counts.interval, S);
    }

    #[test]
    fn each_cpu_asks_at_its_share_of_half_the_smallest_room() {
        let room = Room {
            counts: 16_384,
            stacks: 32_768,
            deep_stacks: 4_096,
            waits: 0,
        };
        assert_eq!(room.drain_soon_at(2), 4_096, "deep stacks weigh four");
        assert_eq!(room.drain_soon_at(0), 8_192);
        let waits = Room {
            waits: 2_000,
            ..room
        };
        assert_eq!(waits.drain_soon_at(2), 500);
        assert_eq!(waits.drain_soon_at(4_096), 1, "at least one");
        let none = Room {
            counts: 0,
            stacks: 0,
            deep_stacks: 0,
            waits: 0,
        };
        assert_eq!(none.drain_soon_at(2), 1);
    }

    #[test]
    fn fill_is_the_fullest_maps() {
        let room = Room {
            counts: 1_000,
            stacks: 4_000,
            deep_stacks: 100,
            waits: 0,
        };
        let big = Room {
            counts: 100_000,
            stacks: 100_000,
            deep_stacks: 4_096,
            waits: 0,
        };
        let taken = |counts, stacks, deep_stacks, waits| Taken {
            counts,
            stacks,
            deep_stacks,
            waits,
        };
        assert_eq!(room.fill(&taken(100, 100, 0, 7)), 0.1, "no ring: no share");
        assert_eq!(room.fill(&taken(100, 800, 0, 0)), 0.2);
        assert_eq!(room.fill(&taken(100, 800, 50, 0)), 0.5);
        assert_eq!(room.fill(&Taken::default()), 0.0);
        assert_eq!(
            big.fill(&taken(8_192, 8_192, 0, 0)),
            0.5,
            "the entries together: half of 32 Ki"
        );
    }
}
