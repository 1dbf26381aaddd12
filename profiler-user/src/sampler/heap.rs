//! The memory profile's bookkeeping, with no kernel: sampled allocations
//! and the frees of tracked ones, in the order they happened, become each
//! drain's allocation samples (`alloc_objects`, `alloc_space`) and each
//! window's in-use snapshot (`inuse_objects`, `inuse_space`: what is still
//! live as it ends).
//!
//! Weights are Go's (`runtime/pprof`'s `scaleHeapSample`): allocations are
//! sampled by bytes as a Poisson process of mean `R` bytes, so one of `s`
//! bytes is sampled with probability `1 - exp(-s/R)`, and a sample stands
//! for `1 / (1 - exp(-s/R))` allocations of its size: totals are right in
//! expectation.
//!
//! An allocation's stack is in the map set it was sampled in, which may not
//! be drained yet when its event is read (the set flipped between the
//! call's entry and return): it waits, and its frees are applied in order
//! meanwhile, so a free is never read before its allocation is known.
//!
//! A fork copies the parent's live allocations to the child at the point
//! of the fork in the stream: the child's are its own from there on, with
//! the same stacks and ages, attributed to the child.

use std::collections::HashMap;
use std::sync::Arc;

use profiler_common::{AllocEvent, ForkEvent, LiveKey, StackHash, WaitKey, ALLOC_TRACKED};

use super::drain::{decode_key, RawSample, SampleKey};
use crate::kind::{Label, ProfileKind};

/// The label of an in-use sample naming how long ago its allocations
/// were made, as the window ends: `<1m`, `1m-10m`, `10m-1h`, `>1h`.
pub const ALLOCATION_AGE: &str = "allocation.age";

/// The label of an in-use sample giving the age, in whole seconds, of the
/// oldest live allocation it stands for, as the window ends (the leak
/// view's "held since").
pub const OLDEST_AGE: &str = "allocation.oldest_age_s";

/// The age buckets of [`ALLOCATION_AGE`]: upper bounds in seconds.
const AGE_BUCKETS: &[(u64, &str)] = &[(60, "<1m"), (600, "1m-10m"), (3600, "10m-1h")];
const OLDEST_BUCKET: &str = ">1h";

/// The bucket of an allocation `age_ns` old.
pub fn age_bucket(age_ns: u64) -> &'static str {
    let seconds = age_ns / 1_000_000_000;
    AGE_BUCKETS
        .iter()
        .find(|(bound, _)| seconds < *bound)
        .map_or(OLDEST_BUCKET, |(_, name)| name)
}

/// How many allocations a sample of `size` bytes stands for, with a mean
/// of `mean` bytes between samples (Go's unbiasing).
pub fn scale(size: u64, mean: u64) -> f64 {
    if size == 0 || mean == 0 {
        return 1.0;
    }
    let p = 1.0 - (-(size as f64) / mean as f64).exp();
    if p <= 0.0 {
        1.0
    } else {
        1.0 / p
    }
}

/// The exponential distribution of mean `mean` bytes as `n` draws: the
/// midpoints of `n` equal-probability slices (`-mean * ln(1 - (i+½)/n)`),
/// which the kernel picks from at random. Their mean is `mean` within a
/// fraction of a percent for `n` = 1024 (the tail past the last slice is
/// cut).
pub fn exponential_gaps(mean: u64, n: u32) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let u = (f64::from(i) + 0.5) / f64::from(n);
            (-(mean as f64) * (1.0 - u).ln()).round().max(1.0) as u64
        })
        .collect()
}

/// What became of a deferred free ([`Heap::deferred_free`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeferredFree {
    /// Its allocation is freed.
    Applied,
    /// Another allocation has the address: the free was of an earlier one.
    Stale,
    /// Its allocation is not known yet.
    Waiting,
}

/// One event of the memory profile, as read from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapEvent {
    /// A sampled allocation (tracked or not).
    Alloc(AllocEvent),
    /// The free of a tracked allocation.
    Free(LiveKey),
    /// A probed process forked.
    Fork(ForkEvent),
}

/// Whose stack: a key the kernel sent, decoded once its set is drained.
#[derive(Clone, Debug)]
enum Key {
    Waiting { key: WaitKey, set: u32 },
    Known(Arc<SampleKey>),
}

/// A tracked allocation still live.
#[derive(Clone, Debug)]
struct Live {
    key: Key,
    size: u64,
    /// `CLOCK_MONOTONIC` ns when it was made.
    time_ns: u64,
}

/// Sampled allocations in flight and the tracked ones still live.
#[derive(Debug)]
pub struct Heap {
    /// `R`: the mean bytes between two sampled allocations.
    mean: u64,
    live: HashMap<(u32, u64), Live>,
    /// Sampled allocations whose stacks are in a set not drained yet.
    waiting: Vec<AllocEvent>,
}

impl Heap {
    /// An empty heap for a mean of `mean` bytes between samples.
    pub fn new(mean: u64) -> Self {
        Self {
            mean,
            live: HashMap::new(),
            waiting: Vec::new(),
        }
    }

    /// Tracked allocations live now.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Takes one event, in the order the kernel sent them; a fork returns
    /// the allocations the child inherited, as (address, time), for the
    /// kernel's live table.
    pub fn apply(&mut self, event: HeapEvent) -> Vec<(u64, u64)> {
        match event {
            HeapEvent::Alloc(alloc) => {
                if alloc.tag == ALLOC_TRACKED && alloc.addr != 0 {
                    self.live.insert(
                        (alloc.key.tgid, alloc.addr),
                        Live {
                            key: Key::Waiting {
                                key: alloc.key,
                                set: alloc.set,
                            },
                            size: alloc.size,
                            time_ns: alloc.time_ns,
                        },
                    );
                }
                self.waiting.push(alloc);
            }
            HeapEvent::Free(key) => {
                self.live.remove(&(key.tgid, key.addr));
            }
            HeapEvent::Fork(fork) => return self.fork(&fork),
        }
        Vec::new()
    }

    /// Copies the parent's live allocations to the child of `fork`.
    fn fork(&mut self, fork: &ForkEvent) -> Vec<(u64, u64)> {
        // One copy of each decoded key, however many allocations share it.
        let mut keys: HashMap<*const SampleKey, Arc<SampleKey>> = HashMap::new();
        let copies: Vec<((u32, u64), Live)> = self
            .live
            .iter()
            .filter(|((tgid, _), _)| *tgid == fork.parent)
            .map(|(&(_, addr), live)| {
                let key = match &live.key {
                    Key::Waiting { key, set } => Key::Waiting {
                        key: WaitKey {
                            tgid: fork.child,
                            tid: fork.child,
                            exec_gen: fork.exec_gen,
                            ..*key
                        },
                        set: *set,
                    },
                    Key::Known(key) => Key::Known(
                        keys.entry(Arc::as_ptr(key))
                            .or_insert_with(|| {
                                let mut key = SampleKey::clone(key);
                                key.thread.tgid = fork.child;
                                key.thread.tid = fork.child;
                                key.thread.exec_gen = fork.exec_gen;
                                Arc::new(key)
                            })
                            .clone(),
                    ),
                };
                let copy = Live {
                    key,
                    size: live.size,
                    time_ns: live.time_ns,
                };
                ((fork.child, addr), copy)
            })
            .collect();
        let inherited = copies
            .iter()
            .map(|((_, addr), live)| (*addr, live.time_ns))
            .collect();
        self.live.extend(copies);
        inherited
    }

    /// Forgets one live allocation (the kernel could not track it).
    pub fn remove(&mut self, tgid: u32, addr: u64) {
        self.live.remove(&(tgid, addr));
    }

    /// A free that waited in the kernel's overflow map, of the allocation
    /// of `key` made at `time_ns`: applied when that allocation is live
    /// here, dropped when another has its address now (that one was made
    /// after the free), kept waiting when none is (its allocation's event
    /// was not read yet).
    pub fn deferred_free(&mut self, key: LiveKey, time_ns: u64) -> DeferredFree {
        match self.live.get(&(key.tgid, key.addr)) {
            Some(live) if live.time_ns == time_ns => {
                self.live.remove(&(key.tgid, key.addr));
                DeferredFree::Applied
            }
            Some(_) => DeferredFree::Stale,
            None => DeferredFree::Waiting,
        }
    }

    /// The allocation samples whose stacks are in set `set`, drained now
    /// into `stacks`; the live allocations of that set learn their keys.
    pub fn drained(&mut self, set: u32, stacks: &HashMap<StackHash, Vec<u64>>) -> Vec<RawSample> {
        let mut decoded: HashMap<WaitKey, Arc<SampleKey>> = HashMap::new();
        let mut decode = |key: &WaitKey| {
            decoded
                .entry(*key)
                .or_insert_with(|| {
                    Arc::new(decode_key(
                        ProfileKind::Memory,
                        (key.tgid, key.tid, key.exec_gen, &key.comm, &key.trace),
                        key.user_stack,
                        0,
                        stacks,
                        Vec::new(),
                    ))
                })
                .clone()
        };
        let mut allocated: HashMap<Arc<SampleKey>, (f64, f64)> = HashMap::new();
        let mut waiting = Vec::new();
        for alloc in self.waiting.drain(..) {
            if alloc.set != set {
                waiting.push(alloc);
                continue;
            }
            if alloc.addr == 0 {
                continue; // it failed: nothing was allocated
            }
            let key = decode(&alloc.key);
            let weight = scale(alloc.size, self.mean);
            let sums = allocated.entry(key).or_default();
            sums.0 += weight;
            sums.1 += weight * alloc.size as f64;
        }
        self.waiting = waiting;
        for live in self.live.values_mut() {
            if let Key::Waiting { key, set: s } = &live.key {
                if *s == set {
                    live.key = Key::Known(decode(key));
                }
            }
        }
        allocated
            .into_iter()
            .map(|(key, (objects, bytes))| RawSample {
                key: (*key).clone(),
                values: vec![round(objects), round(bytes), 0, 0],
                events: Vec::new(),
            })
            .collect()
    }

    /// The in-use snapshot as samples: one per stack and age bucket
    /// ([`ALLOCATION_AGE`]), with the age of its oldest allocation
    /// ([`OLDEST_AGE`]).
    pub fn in_use_samples(&self, now_ns: u64) -> Vec<RawSample> {
        let mut by_key: HashMap<(&Arc<SampleKey>, &'static str), (f64, f64, u64)> = HashMap::new();
        for live in self.live.values() {
            let Key::Known(key) = &live.key else {
                continue;
            };
            let weight = scale(live.size, self.mean);
            let age = now_ns.saturating_sub(live.time_ns);
            let sums = by_key.entry((key, age_bucket(age))).or_default();
            sums.0 += weight;
            sums.1 += weight * live.size as f64;
            sums.2 = sums.2.max(age);
        }
        by_key
            .into_iter()
            .map(|((key, bucket), (objects, bytes, oldest))| {
                let mut key = (**key).clone();
                let labels: [Label; 2] = [
                    (ALLOCATION_AGE, bucket.to_owned()),
                    (OLDEST_AGE, (oldest / 1_000_000_000).to_string()),
                ];
                key.labels.extend(labels);
                RawSample {
                    key,
                    values: vec![0, 0, round(objects), round(bytes)],
                    events: Vec::new(),
                }
            })
            .collect()
    }

    /// Forgets the live allocations `gone` says are gone (their process
    /// exited, or exec'd: `gone(tgid, exec_gen)`); returns their kernel
    /// keys, to delete from the kernel's live map too.
    pub fn forget(&mut self, mut gone: impl FnMut(u32, u32) -> bool) -> Vec<LiveKey> {
        let mut removed = Vec::new();
        self.live.retain(|&(tgid, addr), live| {
            let exec_gen = match &live.key {
                Key::Waiting { key, .. } => key.exec_gen,
                Key::Known(key) => key.thread.exec_gen,
            };
            let keep = !gone(tgid, exec_gen);
            if !keep {
                removed.push(LiveKey { tgid, pad: 0, addr });
            }
            keep
        });
        // Allocations still waiting for their stacks stay: they were
        // made, and count in `alloc_*` at the next drain.
        removed
    }

    /// Processes with live allocations.
    #[cfg(test)]
    fn processes(&self) -> Vec<u32> {
        let mut tgids: Vec<u32> = self.live.keys().map(|&(tgid, _)| tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }
}

fn round(value: f64) -> u64 {
    value.round().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::{TraceContext, ALLOC_UNTRACKED, COMM_LEN};

    const MEAN: u64 = 512 * 1024;

    fn key(tgid: u32, stack: StackHash) -> WaitKey {
        WaitKey {
            tgid,
            tid: tgid,
            user_stack: stack,
            kernel_stack: 0,
            comm: [b'a'; COMM_LEN],
            state: 0,
            exec_gen: 0,
            trace: TraceContext::default(),
        }
    }

    fn alloc(tgid: u32, stack: StackHash, addr: u64, size: u64, set: u32) -> HeapEvent {
        HeapEvent::Alloc(AllocEvent {
            tag: ALLOC_TRACKED,
            set,
            key: key(tgid, stack),
            addr,
            size,
            time_ns: 1_000,
        })
    }

    fn free(tgid: u32, addr: u64) -> HeapEvent {
        HeapEvent::Free(LiveKey { tgid, pad: 0, addr })
    }

    fn stacks() -> HashMap<StackHash, Vec<u64>> {
        HashMap::from([(7, vec![0x1000, 0x2000]), (9, vec![0x3000])])
    }

    #[test]
    fn scale_is_gos_unbiasing() {
        // A huge allocation is always sampled: it stands for itself.
        assert!((scale(100 * MEAN, MEAN) - 1.0).abs() < 1e-9);
        // A small one stands for about R/s of its kind.
        let small = scale(64, MEAN);
        assert!(
            (small - MEAN as f64 / 64.0).abs() / small < 0.001,
            "{small}"
        );
        assert_eq!(scale(0, MEAN), 1.0);
    }

    #[test]
    fn gaps_have_the_mean_asked_for() {
        let gaps = exponential_gaps(MEAN, 1024);
        assert_eq!(gaps.len(), 1024);
        let mean = gaps.iter().sum::<u64>() as f64 / 1024.0;
        assert!((mean / MEAN as f64 - 1.0).abs() < 0.01, "{mean}");
        assert!(gaps.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn allocations_and_frees_become_alloc_and_in_use_values() {
        let mut heap = Heap::new(MEAN);
        heap.apply(alloc(1, 7, 0xa0, MEAN, 0));
        heap.apply(alloc(1, 7, 0xb0, MEAN, 0));
        heap.apply(alloc(1, 9, 0xc0, MEAN, 0));
        heap.apply(free(1, 0xb0));
        heap.apply(free(1, 0xdead)); // never tracked: nothing happens
        let mut samples = heap.drained(0, &stacks());
        samples.sort_by_key(|s| s.key.user_stack.clone());
        let weight = scale(MEAN, MEAN);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].key.user_stack, vec![0x1000, 0x2000]);
        assert_eq!(
            samples[0].values,
            vec![
                (2.0 * weight).round() as u64,
                (2.0 * weight * MEAN as f64).round() as u64,
                0,
                0
            ]
        );
        assert_eq!(samples[0].key.kind, ProfileKind::Memory);
        assert!(samples[0].key.kernel_stack.is_empty());

        let in_use = heap.in_use_samples(2_000);
        assert_eq!(in_use.len(), 2);
        let total: u64 = in_use.iter().map(|s| s.values[3]).sum();
        let expected = (2.0 * weight * MEAN as f64).round() as u64;
        assert!(
            total.abs_diff(expected) <= 1,
            "{total} vs {expected}: rounded per sample"
        );
        assert!(in_use.iter().all(|s| s.key.labels
            == vec![
                (ALLOCATION_AGE, "<1m".to_owned()),
                (OLDEST_AGE, "0".to_owned())
            ]));
        // Snapshots do not consume: the next window sees them again.
        assert_eq!(heap.in_use_samples(2_000).len(), 2);
    }

    #[test]
    fn an_allocation_of_the_other_set_waits_for_its_stacks_and_frees_keep_their_order() {
        let mut heap = Heap::new(MEAN);
        heap.apply(alloc(1, 7, 0xa0, 1024, 1));
        heap.apply(alloc(1, 9, 0xb0, 1024, 1));
        heap.apply(free(1, 0xa0));
        // Set 0 drained: nothing of set 1 yet, and nothing in use known.
        assert!(heap.drained(0, &HashMap::new()).is_empty());
        assert!(heap.in_use_samples(0).is_empty());
        assert_eq!(heap.live_count(), 1);
        let samples = heap.drained(1, &stacks());
        assert_eq!(samples.len(), 2, "both allocations are counted");
        let in_use = heap.in_use_samples(0);
        assert_eq!(in_use.len(), 1, "the freed one is not in use");
        assert_eq!(in_use[0].key.user_stack, vec![0x3000]);
    }

    #[test]
    fn untracked_allocations_count_as_allocated_never_in_use() {
        let mut heap = Heap::new(MEAN);
        let HeapEvent::Alloc(mut event) = alloc(1, 7, 0xa0, MEAN, 0) else {
            unreachable!()
        };
        event.tag = ALLOC_UNTRACKED;
        heap.apply(HeapEvent::Alloc(event));
        assert_eq!(heap.drained(0, &stacks()).len(), 1);
        assert!(heap.in_use_samples(0).is_empty());
    }

    #[test]
    fn a_deferred_free_frees_only_its_own_allocation() {
        let mut heap = Heap::new(MEAN);
        let key = LiveKey {
            tgid: 1,
            pad: 0,
            addr: 0xa0,
        };
        // Its allocation not read yet: it waits.
        assert_eq!(heap.deferred_free(key, 1_000), DeferredFree::Waiting);
        heap.apply(alloc(1, 7, 0xa0, 64, 0)); // made at 1_000
        assert_eq!(heap.deferred_free(key, 999), DeferredFree::Stale);
        assert_eq!(
            heap.live_count(),
            1,
            "a newer allocation at the address stays"
        );
        assert_eq!(heap.deferred_free(key, 1_000), DeferredFree::Applied);
        assert_eq!(heap.live_count(), 0);
    }

    #[test]
    fn a_failed_allocation_counts_nowhere() {
        let mut heap = Heap::new(MEAN);
        heap.apply(alloc(1, 7, 0, MEAN, 0)); // returned NULL
        assert!(heap.drained(0, &stacks()).is_empty());
        assert!(heap.in_use_samples(0).is_empty());
    }

    #[test]
    fn exited_processes_are_forgotten_with_their_kernel_keys() {
        let mut heap = Heap::new(MEAN);
        heap.apply(alloc(1, 7, 0xa0, 64, 0));
        heap.apply(alloc(2, 7, 0xb0, 64, 0));
        heap.drained(0, &stacks());
        let removed = heap.forget(|tgid, _| tgid == 2);
        assert_eq!(
            removed,
            vec![LiveKey {
                tgid: 2,
                pad: 0,
                addr: 0xb0
            }]
        );
        assert_eq!(heap.processes(), vec![1]);
    }

    #[test]
    fn a_child_inherits_what_its_parent_held_at_the_fork() {
        let mut heap = Heap::new(MEAN);
        heap.apply(alloc(1, 7, 0xa0, 64, 0));
        heap.drained(0, &stacks()); // 0xa0's stack is known
        heap.apply(alloc(1, 9, 0xb0, 64, 1)); // 0xb0's is not yet
        heap.apply(alloc(1, 9, 0xc0, 64, 1));
        heap.apply(free(1, 0xc0)); // freed before the fork: not inherited
        let mut inherited = heap.apply(HeapEvent::Fork(ForkEvent {
            tag: profiler_common::FORK,
            parent: 1,
            child: 2,
            exec_gen: 5,
        }));
        inherited.sort_unstable();
        assert_eq!(inherited, vec![(0xa0, 1_000), (0xb0, 1_000)]);
        // After the fork each frees its own copy.
        heap.apply(free(1, 0xa0));
        heap.apply(alloc(1, 7, 0xd0, 64, 1)); // the parent's alone
        heap.drained(1, &stacks());
        let mut in_use: Vec<(u32, u32, Vec<u64>)> = heap
            .in_use_samples(2_000)
            .into_iter()
            .map(|s| (s.key.thread.tgid, s.key.thread.exec_gen, s.key.user_stack))
            .collect();
        in_use.sort();
        assert_eq!(
            in_use,
            vec![
                (1, 0, vec![0x1000, 0x2000]),
                (1, 0, vec![0x3000]),
                (2, 5, vec![0x1000, 0x2000]),
                (2, 5, vec![0x3000]),
            ]
        );
        // The child's go with its image, not with the parent's.
        let removed = heap.forget(|tgid, exec_gen| tgid == 2 && exec_gen == 5);
        assert_eq!(removed.len(), 2);
        assert_eq!(heap.processes(), vec![1]);
    }

    #[test]
    fn ages_fall_in_buckets() {
        let s = 1_000_000_000;
        assert_eq!(age_bucket(0), "<1m");
        assert_eq!(age_bucket(59 * s), "<1m");
        assert_eq!(age_bucket(60 * s), "1m-10m");
        assert_eq!(age_bucket(3599 * s), "10m-1h");
        assert_eq!(age_bucket(3600 * s), ">1h");
    }
}
