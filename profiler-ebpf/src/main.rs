//! hostprof's sampling program.
//!
//! Attached to a CPU-clock perf event on every online CPU. On each sample it
//! reads the user and kernel stacks of the interrupted task with
//! `bpf_get_stack`, stores each distinct stack once under a 64-bit hash of
//! its frames, and counts the sample under (tgid, tid, comm, user stack,
//! kernel stack) in the active map set. Userspace drains the inactive set.
//!
//! Why `bpf_get_stack` + our own hash map rather than a `STACK_TRACE` map and
//! `bpf_get_stackid`: a stack-trace map buckets stacks by a 32-bit hash
//! modulo its size and, without `BPF_F_REUSE_STACKID`, fails the sample's
//! stack on every bucket collision (with it, it silently overwrites a stack
//! other samples still point to). With a few hundred distinct stacks per
//! drain that loses roughly one stack in a few hundred. A hash map keyed by a
//! 64-bit hash of the frames has no buckets to collide in; two different
//! stacks share a key with probability ~n²/2⁶⁵, negligible here.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_get_stack},
    macros::{map, perf_event},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::PerfEventContext,
    EbpfContext,
};
use profiler_common::{
    Config, NewProcess, SampleKey, Stack, StackHash, Stat, COMM_LEN, MAX_STACK_DEPTH,
};

/// Default capacity of each `COUNTS_*` map; userspace may resize at load.
const COUNTS_ENTRIES: u32 = 16_384;
/// Default capacity of each `STACKS_*` map; userspace may resize at load.
const STACKS_ENTRIES: u32 = 16_384;
const EEXIST: i32 = 17;

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

#[map(name = "PID_FILTER")]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[map(name = "KNOWN_PROCESSES")]
static KNOWN_PROCESSES: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65_536, 0);

#[map(name = "NEW_PROCESSES")]
static NEW_PROCESSES: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

// Per-CPU values: each CPU bumps its own slot with a plain add (the BPF
// target has no 64-bit atomic add in stable `core`), userspace sums them.
#[map(name = "COUNTS_0")]
static COUNTS_0: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(COUNTS_ENTRIES, 0);
#[map(name = "COUNTS_1")]
static COUNTS_1: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(COUNTS_ENTRIES, 0);

// Stacks are 1 KiB each: allocate on use rather than up front.
#[map(name = "STACKS_0")]
static STACKS_0: HashMap<StackHash, Stack> =
    HashMap::with_max_entries(STACKS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "STACKS_1")]
static STACKS_1: HashMap<StackHash, Stack> =
    HashMap::with_max_entries(STACKS_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU scratch space for one stack (too large for the 512-byte BPF stack).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Stack> = PerCpuArray::with_max_entries(1, 0);

#[perf_event]
pub fn sample_cpu(ctx: PerfEventContext) -> u32 {
    bump(Stat::Invocations);
    record(&ctx);
    0
}

#[inline(always)]
fn record(ctx: &PerfEventContext) {
    let Some(config) = CONFIG.get(0) else {
        bump(Stat::DroppedNoConfig);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;

    if tgid == 0 && config.flags & Config::SKIP_IDLE != 0 {
        bump(Stat::Filtered);
        return;
    }
    // SAFETY: plain lookup; the value is never dereferenced.
    if config.flags & Config::FILTER_PIDS != 0 && unsafe { PID_FILTER.get(tgid) }.is_none() {
        bump(Stat::Filtered);
        return;
    }
    if tgid != 0 {
        announce(tgid);
    }

    let (counts, stacks) = if config.active_set == 0 {
        (&COUNTS_0, &STACKS_0)
    } else {
        (&COUNTS_1, &STACKS_1)
    };

    let key = SampleKey {
        tgid,
        tid,
        user_stack: store_stack(ctx, stacks, BPF_F_USER_STACK as u64, Stat::UserStackError),
        kernel_stack: store_stack(ctx, stacks, 0, Stat::KernelStackError),
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    count(counts, &key);
}

/// Adds one sample to `key`'s count, creating the entry when needed.
#[inline(always)]
fn count(counts: &PerCpuHashMap<SampleKey, u64>, key: &SampleKey) {
    if let Some(value) = counts.get_ptr_mut(key) {
        add_one(value);
        bump(Stat::Recorded);
        return;
    }
    match counts.insert(key, 1, BPF_NOEXIST as u64) {
        Ok(()) => bump(Stat::Recorded),
        // Another CPU created the entry between our lookup and insert; our
        // own slot of it is zero.
        Err(err) if err == -EEXIST => match counts.get_ptr_mut(key) {
            Some(value) => {
                add_one(value);
                bump(Stat::Recorded);
            }
            None => bump(Stat::DroppedCountsFull),
        },
        Err(_) => bump(Stat::DroppedCountsFull),
    }
}

/// Reads one stack into scratch space, stores it in `stacks` under its hash
/// and returns the hash; 0 when the task has no such stack.
#[inline(always)]
fn store_stack(
    ctx: &PerfEventContext,
    stacks: &HashMap<StackHash, Stack>,
    flags: u64,
    error: Stat,
) -> StackHash {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        bump(error);
        return 0;
    };
    // SAFETY: `scratch` points at this CPU's `Stack`-sized map value, which
    // nothing else touches while this program runs on this CPU. The helper
    // zero-fills the buffer past the frames it writes.
    let len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            scratch.cast(),
            size_of::<Stack>() as u32,
            flags,
        )
    };
    if len < 0 {
        bump(error);
        return 0;
    }
    if len == 0 {
        return 0;
    }
    // SAFETY: see above; the helper has returned.
    let stack = unsafe { &*scratch };
    let hash = hash_frames(&stack.frames);
    match stacks.insert(hash, stack, BPF_NOEXIST as u64) {
        Ok(()) => hash,
        Err(err) if err == -EEXIST => hash,
        Err(_) => {
            bump(Stat::StackMapFull);
            0
        }
    }
}

/// FNV-1a over the frame words, never 0 (0 means "no stack").
#[inline(always)]
fn hash_frames(frames: &[u64; MAX_STACK_DEPTH]) -> StackHash {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &ip in frames.iter() {
        if ip == 0 {
            break;
        }
        hash = (hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
    }
    if hash == 0 {
        1
    } else {
        hash
    }
}

/// Tells userspace about a process the first time it is sampled.
#[inline(always)]
fn announce(tgid: u32) {
    // SAFETY: plain lookup; the value is never dereferenced.
    if unsafe { KNOWN_PROCESSES.get(tgid) }.is_some() {
        return;
    }
    if KNOWN_PROCESSES.insert(tgid, 1, BPF_NOEXIST as u64).is_err() {
        return; // another CPU announced it first
    }
    if NEW_PROCESSES.output(NewProcess { tgid }, 0).is_err() {
        bump(Stat::NewProcessLost);
        // Forget it so the next sample tries again.
        let _ = KNOWN_PROCESSES.remove(tgid);
    }
}

#[inline(always)]
fn add_one(value: *mut u64) {
    // SAFETY: `value` is this CPU's slot of a live per-CPU map value; the
    // program does not nest on one CPU, so nothing else writes it now.
    unsafe { *value += 1 };
}

#[inline(always)]
fn bump(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU value; this program does not nest on one CPU.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
