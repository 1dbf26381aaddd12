//! A simulation of one window's drains on hosts of many CPUs (issue 16's
//! scale goal: the drain and aggregate cost of a window grows with the
//! CPUs, not with their square).
//!
//! The kernel's part is modelled: each drain's `COUNTS` and `STACKS`
//! entries are laid out as `BPF_MAP_LOOKUP_AND_DELETE_BATCH` hands them
//! over (keys, then one value per entry, or one per possible CPU for a
//! per-CPU map) and copied a batch at a time into userspace's buffers, as
//! the kernel copies them. Userspace's part is the code the sampler runs on a real drain:
//! [`drain::sum_slots`], [`drain::assemble_counted`] and the
//! [`Aggregator`].
//!
//! The host: every CPU runs its own busy thread of its own process, each
//! with [`STACKS_PER_THREAD`] distinct stacks of [`STACK_DEPTH`] frames,
//! sampled at `hz` and drained every second for a 10 s window. Nothing is
//! shared between CPUs, the worst case for the maps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use profiler_common::{SampleKey as KernelKey, Stack, TraceContext, COMM_LEN, MAX_STACK_DEPTH};

use super::bpf_calls::TAKE_BATCH;
use super::drain;
use crate::aggregate::Aggregator;
use crate::kind::ProfileKind;
use crate::sampler::{Drained, KindStats};

/// Distinct stacks each thread cycles through.
const STACKS_PER_THREAD: u64 = 64;
/// Frames in each simulated stack.
const STACK_DEPTH: usize = 24;
/// Drains in a window (one a second, 10 s windows).
const DRAINS: u32 = 10;

/// The `COUNTS` layout drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CountsLayout {
    /// One value per entry, added to atomically (what the kernel side has).
    Shared,
    /// One value per possible CPU per entry (the earlier layout).
    PerCpu,
}

/// What one simulated window cost and produced.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    /// Samples taken in the window.
    pub samples: u64,
    /// Samples the aggregator holds at the window's end (all of them are
    /// kept: the simulated maps never fill).
    pub aggregated: u64,
    /// Distinct keys the aggregator holds.
    pub keys: usize,
    /// Bytes the kernel copies out over the window's drains.
    pub copied_bytes: u64,
    /// Userspace's time for the window: the copies, decoding and merging.
    pub elapsed: Duration,
}

fn key(cpu: u64, stack: u64) -> KernelKey {
    let mut comm = [0; COMM_LEN];
    comm[..6].copy_from_slice(b"worker");
    KernelKey {
        tgid: 1000 + cpu as u32,
        tid: 1000 + cpu as u32,
        user_stack: stack_hash(cpu, stack),
        kernel_stack: 0,
        comm,
        exec_gen: 1,
        kind: profiler_common::kernel_kind::CPU,
        trace: TraceContext::default(),
    }
}

fn stack_hash(cpu: u64, stack: u64) -> u64 {
    (cpu << 32) | (stack + 1)
}

fn stack(cpu: u64, stack: u64) -> Stack {
    let mut frames = [0; MAX_STACK_DEPTH];
    for (depth, frame) in frames.iter_mut().take(STACK_DEPTH).enumerate() {
        *frame = 0x40_0000 + (cpu << 20) + (stack << 8) + depth as u64;
    }
    Stack { frames }
}

/// Bytes the kernel copies out in one drain of `entries` count entries of
/// `slots` values each, and as many stacks.
fn drain_bytes(entries: usize, slots: usize) -> u64 {
    (entries
        * (size_of::<KernelKey>()
            + slots * size_of::<u64>()
            + size_of::<u64>()
            + size_of::<Stack>())) as u64
}

/// Simulates one window on `cpus` CPUs sampled at `hz`, `COUNTS` laid out
/// as `layout`.
pub(super) fn window(cpus: u64, hz: u64, layout: CountsLayout) -> Window {
    let slots = match layout {
        CountsLayout::Shared => 1,
        CountsLayout::PerCpu => cpus as usize,
    };
    let distinct = STACKS_PER_THREAD.min(hz);
    let entries = (cpus * distinct) as usize;
    // What the kernel's maps hold at each drain: every thread's samples
    // spread over its distinct stacks, each count in the slot of the CPU
    // that took it.
    let mut kernel_keys = Vec::with_capacity(entries);
    let mut kernel_values = vec![0u64; entries * slots];
    let mut kernel_stacks = Vec::with_capacity(entries);
    for cpu in 0..cpus {
        for s in 0..distinct {
            let index = kernel_keys.len();
            let count = hz / distinct + u64::from(s < hz % distinct);
            let slot = match layout {
                CountsLayout::Shared => 0,
                CountsLayout::PerCpu => cpu as usize,
            };
            kernel_values[index * slots + slot] = count;
            kernel_keys.push(key(cpu, s));
            kernel_stacks.push((stack_hash(cpu, s), stack(cpu, s)));
        }
    }
    let mut aggregator = Aggregator::with_link_limit(16);
    let mut copied_bytes = 0;
    let started = Instant::now();
    for _ in 0..DRAINS {
        // The kernel's copies, a batch at a time into buffers reused
        // between batches, as `bpf_calls::take_all` reads a map; then what
        // `Sampler::take_set` does with each entry.
        let mut counts = Vec::with_capacity(entries);
        let mut key_buf = vec![kernel_keys[0]; TAKE_BATCH];
        let mut value_buf = vec![0u64; TAKE_BATCH * slots];
        for (keys, values) in kernel_keys
            .chunks(TAKE_BATCH)
            .zip(kernel_values.chunks(TAKE_BATCH * slots))
        {
            key_buf[..keys.len()].copy_from_slice(keys);
            value_buf[..values.len()].copy_from_slice(values);
            counts.extend(
                key_buf[..keys.len()]
                    .iter()
                    .zip(value_buf.chunks_exact(slots))
                    .map(|(key, values)| drain::sum_slots(key, values)),
            );
        }
        let mut stacks = HashMap::new();
        let mut stack_buf = vec![kernel_stacks[0]; TAKE_BATCH];
        for batch in kernel_stacks.chunks(TAKE_BATCH) {
            stack_buf[..batch.len()].copy_from_slice(batch);
            for (hash, stack) in &stack_buf[..batch.len()] {
                stacks.insert(*hash, stack.frames().to_vec());
            }
        }
        copied_bytes += drain_bytes(entries, slots);
        let samples = drain::assemble_counted(counts, &stacks, |kind| {
            (kind == profiler_common::kernel_kind::CPU).then_some((ProfileKind::Cpu, 10_101_010))
        });
        aggregator.ingest(Drained {
            samples,
            stats: KindStats::new(),
        });
    }
    let aggregated = aggregator.take();
    let elapsed = started.elapsed();
    Window {
        samples: cpus * hz * u64::from(DRAINS),
        aggregated: aggregated.samples.values().map(|m| m.values[0]).sum(),
        keys: aggregated.samples.len(),
        copied_bytes,
        elapsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample of every CPU is kept and counted once, whatever the
    /// layout and the CPU count.
    #[test]
    fn every_sample_is_aggregated_once() {
        for layout in [CountsLayout::Shared, CountsLayout::PerCpu] {
            for (cpus, hz) in [(2, 99), (16, 1000), (128, 99)] {
                let window = window(cpus, hz, layout);
                assert_eq!(window.aggregated, window.samples, "{layout:?} {cpus} {hz}");
                assert_eq!(window.keys as u64, cpus * STACKS_PER_THREAD.min(hz));
            }
        }
    }

    /// With shared counts, the bytes a drain copies per CPU do not depend
    /// on the CPU count; with per-CPU counts they grow with it.
    #[test]
    fn copied_bytes_per_cpu_are_flat_with_shared_counts() {
        let per_cpu = |cpus: usize, slots: usize| drain_bytes(cpus * 64, slots) / cpus as u64;
        assert_eq!(per_cpu(2, 1), per_cpu(512, 1));
        let (small, large) = (per_cpu(2, 2), per_cpu(512, 512));
        assert_eq!(large - small, 64 * 510 * 8, "{small} {large}");
        // And the simulated window counts what the drains copy.
        let window = window(4, 99, CountsLayout::PerCpu);
        assert_eq!(
            window.copied_bytes,
            u64::from(DRAINS) * drain_bytes(4 * 64, 4)
        );
    }

    /// Prints the simulated window's cost at 2 to 512 CPUs, both layouts
    /// (`cargo xtask bench-scale`; a figure, not a test).
    #[test]
    #[ignore = "a benchmark: run by `cargo xtask bench-scale`"]
    fn print_table() {
        println!("| CPUs | Hz | layout | samples/window | copied MiB/window | userspace ms/window | µs per CPU | ns per sample |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for hz in [99, 1000] {
            for layout in [CountsLayout::Shared, CountsLayout::PerCpu] {
                for cpus in [2, 16, 128, 512] {
                    // The best of three: the least disturbed by the host.
                    let best = (0..3)
                        .map(|_| window(cpus, hz, layout))
                        .min_by_key(|w| w.elapsed)
                        .expect("three runs");
                    println!(
                        "| {cpus} | {hz} | {layout:?} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
                        best.samples,
                        best.copied_bytes as f64 / (1024.0 * 1024.0),
                        best.elapsed.as_secs_f64() * 1e3,
                        best.elapsed.as_secs_f64() * 1e6 / cpus as f64,
                        best.elapsed.as_secs_f64() * 1e9 / best.samples as f64
                    );
                }
            }
        }
    }
}
