//! Merges decoded samples as they are drained: samples with equal
//! [`SampleKey`]s add up their values. Pure bookkeeping, no I/O; turning
//! the result into profiles is [`crate::resolve`]'s job.
//!
//! Trace links are bounded here, per window: each process keeps its first
//! [`LinkBudget`] distinct links; a sample over budget keeps its stack and
//! values and loses its link, counted in [`CaptureStats::links`].

use std::collections::{BTreeMap, BTreeSet};

use crate::kind::{Event, ProfileKind};
use crate::profile::CaptureStats;
use crate::sampler::{Drained, KindStats, RawSample, SampleKey};
use crate::trace_link::LinkBudget;
use crate::FastMap;

/// Values and event times of the samples that share a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Element-wise sums of the samples' values; `values[0]` is the count.
    pub values: Vec<u64>,
    /// Every event, in drain order (kinds that record them).
    pub events: Vec<Event>,
}

/// What an [`Aggregator`] collected: merged samples of every kind and each
/// kind's loss counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregated {
    /// Merged samples by key.
    pub samples: FastMap<SampleKey, Merged>,
    /// Loss and filter counters of each kind.
    pub stats: KindStats,
}

/// Accumulates drained samples until a profile is wanted.
#[derive(Debug, Default)]
pub struct Aggregator {
    merged: Aggregated,
    links: LinkBudget,
    /// Waits measured and kept by each waiting kind since the start (not
    /// reset by [`Aggregator::take`]).
    waits: BTreeMap<ProfileKind, WaitTotals>,
    /// Samples and processes merged since the last take, kept as they
    /// come: progress asks after every drain, and counting them over the
    /// merged samples grew with the capture.
    samples_total: u64,
    processes: BTreeSet<u32>,
}

/// Waits of one kind since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitTotals {
    /// Waits measured, kept or not.
    pub measured: u64,
    /// Their total time, in nanoseconds.
    pub nanos: u64,
    /// Waits kept (and unwound).
    pub kept: u64,
}

impl Aggregator {
    /// An empty aggregator keeping at most `max_links` distinct trace
    /// links per process and window.
    pub fn with_link_limit(max_links: usize) -> Self {
        Self {
            merged: Aggregated::default(),
            links: LinkBudget::new(max_links),
            waits: BTreeMap::new(),
            samples_total: 0,
            processes: BTreeSet::new(),
        }
    }

    /// Adds one drain's samples and loss counters.
    pub fn ingest(&mut self, drained: Drained) {
        for (kind, stats) in &drained.stats {
            self.merged.stats.entry(*kind).or_default().add(stats);
            if kind.measures_waits() {
                let totals = self.waits.entry(*kind).or_default();
                totals.measured += stats.intervals;
                totals.nanos += stats.interval_ns;
                totals.kept += stats.recorded;
            }
        }
        for RawSample {
            mut key,
            values,
            events,
        } in drained.samples
        {
            if let Some(link) = key.link {
                let count = values.first().copied().unwrap_or(0);
                let links = &mut self.merged.stats.entry(key.kind).or_default().links;
                if self.links.admit(key.thread.tgid, link) {
                    links.linked += count;
                } else {
                    links.dropped += count;
                    key.link = None;
                }
            }
            self.samples_total += values.first().copied().unwrap_or(0);
            self.processes.insert(key.thread.tgid);
            let merged = self.merged.samples.entry(key).or_default();
            if merged.values.is_empty() {
                merged.values = values;
            } else {
                for (sum, value) in merged.values.iter_mut().zip(values) {
                    *sum += value;
                }
            }
            merged.events.extend(events);
        }
    }

    /// Samples (or events) so far, all kinds.
    pub fn total_samples(&self) -> u64 {
        self.samples_total
    }

    /// Distinct sample keys so far.
    pub fn stack_count(&self) -> usize {
        self.merged.samples.len()
    }

    /// Distinct processes so far.
    pub fn process_count(&self) -> usize {
        self.processes.len()
    }

    /// The waits of `kind` since the start.
    pub fn wait_totals(&self, kind: ProfileKind) -> WaitTotals {
        self.waits.get(&kind).copied().unwrap_or_default()
    }

    /// Loss counters so far, summed over kinds.
    pub fn stats(&self) -> CaptureStats {
        let mut total = CaptureStats::default();
        for stats in self.merged.stats.values() {
            total.add(stats);
        }
        total
    }

    /// Everything collected, leaving the aggregator empty; the next
    /// window's link budget starts afresh.
    pub fn take(&mut self) -> Aggregated {
        self.links.reset();
        self.samples_total = 0;
        self.processes.clear();
        std::mem::take(&mut self.merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::drain::Thread;

    fn sample(count: u64, labels: Vec<(&'static str, String)>) -> RawSample {
        RawSample {
            key: SampleKey {
                kind: ProfileKind::Cpu,
                thread: Thread {
                    tgid: 1,
                    tid: 2,
                    comm: "x".into(),
                    exec_gen: 0,
                },
                user_stack: vec![1, 2],
                user_stop: None,
                python_frames: vec![],
                kernel_stack: vec![],
                labels,
                link: None,
            },
            values: vec![count, count * 10],
            events: vec![Event {
                time_unix_nano: count,
                values: vec![count, count * 10],
            }],
        }
    }

    fn cpu_stats(stats: CaptureStats) -> KindStats {
        KindStats::from([(ProfileKind::Cpu, stats)])
    }

    #[test]
    fn wait_totals_add_up_per_kind_across_windows() {
        let mut aggregator = Aggregator::default();
        let waits = |intervals, interval_ns, recorded| CaptureStats {
            intervals,
            interval_ns,
            recorded,
            ..Default::default()
        };
        for _ in 0..2 {
            aggregator.ingest(Drained {
                samples: vec![],
                stats: KindStats::from([
                    (ProfileKind::Cpu, waits(0, 0, 99)),
                    (ProfileKind::OffCpu, waits(100, 5_000, 7)),
                    (ProfileKind::Locks, waits(10, 300, 2)),
                ]),
            });
            aggregator.take(); // a window ends: totals go on
        }
        let totals = |measured, nanos, kept| WaitTotals {
            measured,
            nanos,
            kept,
        };
        assert_eq!(
            aggregator.wait_totals(ProfileKind::OffCpu),
            totals(200, 10_000, 14)
        );
        assert_eq!(
            aggregator.wait_totals(ProfileKind::Locks),
            totals(20, 600, 4)
        );
        assert_eq!(
            aggregator.wait_totals(ProfileKind::Cpu),
            WaitTotals::default(),
            "CPU samples are no waits"
        );
    }

    #[test]
    fn ingest_merges_equal_samples() {
        let mut aggregator = Aggregator::default();
        aggregator.ingest(Drained {
            samples: vec![sample(2, vec![]), sample(3, vec![])],
            stats: cpu_stats(CaptureStats {
                recorded: 5,
                ..Default::default()
            }),
        });
        aggregator.ingest(Drained {
            samples: vec![sample(1, vec![]), sample(4, vec![("state", "io".into())])],
            stats: cpu_stats(CaptureStats {
                recorded: 1,
                dropped: 2,
                ..Default::default()
            }),
        });
        assert_eq!(aggregator.total_samples(), 10);
        assert_eq!(aggregator.stack_count(), 2, "labels keep samples apart");
        assert_eq!(aggregator.process_count(), 1);
        assert_eq!(aggregator.stats().recorded, 6);
        assert_eq!(aggregator.stats().dropped, 2);
        let taken = aggregator.take();
        let plain = &taken.samples[&sample(0, vec![]).key];
        assert_eq!(plain.values, vec![6, 60]);
        let times: Vec<u64> = plain.events.iter().map(|e| e.time_unix_nano).collect();
        assert_eq!(times, vec![2, 3, 1]);
        assert_eq!(taken.stats[&ProfileKind::Cpu].recorded, 6);
        assert_eq!(aggregator.total_samples(), 0, "taking empties it");
        assert_eq!(aggregator.process_count(), 0);
    }

    #[test]
    fn links_keep_samples_apart_within_each_processes_budget() {
        use crate::trace_link::TraceLink;
        use profiler_common::TraceContext;
        let linked = |n: u8, count| {
            let mut s = sample(count, vec![]);
            s.key.link = TraceLink::from_context(&TraceContext {
                trace_id: [n; 16],
                span_id: [n; 8],
            });
            s
        };
        let mut aggregator = Aggregator::with_link_limit(2);
        aggregator.ingest(Drained {
            samples: vec![linked(1, 2), linked(2, 3), linked(3, 4), sample(1, vec![])],
            stats: KindStats::new(),
        });
        assert_eq!(aggregator.stack_count(), 3, "two links and the unlinked");
        let links = aggregator.stats().links;
        assert_eq!((links.linked, links.dropped), (5, 4));
        let taken = aggregator.take();
        assert_eq!(
            taken.samples[&sample(0, vec![]).key].values[0],
            5,
            "the dropped link's samples join the unlinked ones"
        );
        aggregator.ingest(Drained {
            samples: vec![linked(3, 1)],
            stats: KindStats::new(),
        });
        assert_eq!(aggregator.stats().links.linked, 1, "a new window");
    }
}
