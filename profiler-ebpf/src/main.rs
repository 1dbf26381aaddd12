//! hostprof's sampling program.
//!
//! Attached to a CPU-clock perf event on every online CPU. On each sample it
//! reads the user and kernel stacks of the interrupted task, stores each
//! distinct stack once under a 64-bit hash of its frames, and counts the
//! sample under (tgid, tid, comm, user stack, kernel stack) in the active map
//! set. Userspace drains the inactive set.
//!
//! User stacks of processes whose unwind tables userspace has loaded are
//! unwound from `.eh_frame` rows (see [`unwind`]), up to 519 frames
//! (`DEEP_STACK_DEPTH` slots, the last kept for the truncation mark); the
//! others, and every kernel stack, come from `bpf_get_stack` (frame
//! pointers, 127 frames).
//!
//! Why `bpf_get_stack` + our own hash map rather than a `STACK_TRACE` map and
//! `bpf_get_stackid`: a stack-trace map buckets stacks by a 32-bit hash
//! modulo its size and, without `BPF_F_REUSE_STACKID`, fails the sample's
//! stack on every bucket collision (with it, it silently overwrites a stack
//! other samples still point to). With a few hundred distinct stacks per
//! drain that loses roughly one stack in a few hundred. A hash map keyed by a
//! 64-bit hash of the frames has no buckets to collide in; two different
//! stacks share a key with probability ~n²/2⁶⁵, negligible here.
//!
//! Why aggregate in the kernel (stack hash → count per drain) rather than
//! stream every sample through a ring buffer: at 99 Hz a busy thread's
//! samples mostly repeat a handful of stacks, so a drain reads each distinct
//! stack once instead of once per sample, and the per-sample cost stays one
//! hash-map update. Measured on this design (see the README's unwinding
//! figures) the unwinder, not the store, dominates the program's run time;
//! deep stacks go to their own maps so the common short stack keeps its
//! 1 KiB entry.
#![no_std]
#![no_main]

mod unwind;

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
    Config, DeepStack, NewProcess, SampleKey, Stack, StackHash, Stat, COMM_LEN, DEEP_STACK_DEPTH,
    MAX_STACK_DEPTH,
};

use unwind::Unwind;

/// Default capacity of each `COUNTS_*` map; userspace may resize at load.
const COUNTS_ENTRIES: u32 = 16_384;
/// Default capacity of each `STACKS_*` map; userspace may resize at load.
const STACKS_ENTRIES: u32 = 16_384;
/// Capacity of each `DEEP_STACKS_*` map (stacks deeper than 127 frames).
const DEEP_STACKS_ENTRIES: u32 = 4_096;
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

// Stacks are 1 KiB each (deep ones 4 KiB): allocate on use rather than up front.
#[map(name = "STACKS_0")]
static STACKS_0: HashMap<StackHash, Stack> =
    HashMap::with_max_entries(STACKS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "STACKS_1")]
static STACKS_1: HashMap<StackHash, Stack> =
    HashMap::with_max_entries(STACKS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DEEP_STACKS_0")]
static DEEP_STACKS_0: HashMap<StackHash, DeepStack> =
    HashMap::with_max_entries(DEEP_STACKS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "DEEP_STACKS_1")]
static DEEP_STACKS_1: HashMap<StackHash, DeepStack> =
    HashMap::with_max_entries(DEEP_STACKS_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-CPU scratch space for one stack (too large for the 512-byte BPF
/// stack). `bpf_get_stack` fills its first `Stack`-sized part; the
/// unwinder all of it.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<DeepStack> = PerCpuArray::with_max_entries(1, 0);

/// The maps of the active set.
struct MapSetRef {
    counts: &'static PerCpuHashMap<SampleKey, u64>,
    stacks: &'static HashMap<StackHash, Stack>,
    deep_stacks: &'static HashMap<StackHash, DeepStack>,
}

/// Takes one CPU sample: attached to the CPU-clock perf event of every CPU.
#[perf_event]
pub fn sample_cpu(ctx: PerfEventContext) -> u32 {
    bump(Stat::Invocations);
    record(&ctx);
    0
}

/// Unwinds the user stack of a process with tables, tail-called by
/// `sample_cpu`. A program of its own, loaded only with the table unwinder,
/// so `sample_cpu` needs neither `bpf_loop` (5.17+) nor
/// `bpf_task_pt_regs` (5.15+) and loads on older kernels.
#[perf_event]
pub fn unwind_user(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    match Unwind::start(&ctx, tgid, tid) {
        Some(mut unwind) => {
            unwind.run();
            unwind.store_in_tail_call(&ctx);
        }
        // No user context (a kernel thread), or the tables just went away.
        None => record_with_frame_pointers(&ctx, tgid, tid),
    }
    0
}

/// Records a sample whose user stack the unwinder finished: stores the
/// stack, reads the kernel stack, counts the sample. A program of its own
/// so the unwinding program stays small enough for the verifier.
#[perf_event]
pub fn unwind_store(ctx: PerfEventContext) -> u32 {
    let Some(unwind) = Unwind::resume() else {
        return 0;
    };
    let (tgid, tid) = unwind.thread();
    let depth = unwind.finish();
    let Some(set) = active_set() else {
        return 0;
    };
    let user_stack = save_unwound(&set, depth);
    finish(&ctx, &set, tgid, tid, user_stack);
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

    // With unwind tables, unwind in `unwind_user`; the tail call returns
    // only when that program is not loaded (frame pointers only).
    if tgid != 0 && unwind::has_tables(tgid) {
        unwind::unwind_in_tail_call(ctx);
    }
    record_with_frame_pointers(ctx, tgid, tid);
}

/// Records a sample with the user stack `bpf_get_stack` reads (frame
/// pointers).
#[inline(always)]
fn record_with_frame_pointers(ctx: &PerfEventContext, tgid: u32, tid: u32) {
    let Some(set) = active_set() else {
        return;
    };
    let user_stack = store_stack(
        ctx,
        set.stacks,
        BPF_F_USER_STACK as u64,
        Stat::UserStackError,
    );
    if user_stack != 0 && tgid != 0 {
        bump(Stat::UnwindNoTables);
    }
    finish(ctx, &set, tgid, tid, user_stack);
}

/// The maps of the set `CONFIG` names.
#[inline(always)]
fn active_set() -> Option<MapSetRef> {
    let Some(config) = CONFIG.get(0) else {
        bump(Stat::DroppedNoConfig);
        return None;
    };
    Some(if config.active_set == 0 {
        MapSetRef {
            counts: &COUNTS_0,
            stacks: &STACKS_0,
            deep_stacks: &DEEP_STACKS_0,
        }
    } else {
        MapSetRef {
            counts: &COUNTS_1,
            stacks: &STACKS_1,
            deep_stacks: &DEEP_STACKS_1,
        }
    })
}

/// Reads the kernel stack and counts the sample with `user_stack`.
#[inline(always)]
fn finish(ctx: &PerfEventContext, set: &MapSetRef, tgid: u32, tid: u32, user_stack: StackHash) {
    let key = SampleKey {
        tgid,
        tid,
        user_stack,
        kernel_stack: store_stack(ctx, set.stacks, 0, Stat::KernelStackError),
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    count(set.counts, &key);
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
    // SAFETY: `scratch` points at this CPU's map value, which nothing else
    // touches while this program runs on this CPU; its first
    // `size_of::<Stack>()` bytes are a `Stack` (the same frames array,
    // shorter). The helper zero-fills the buffer past the frames it writes.
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
    let stack = unsafe { &*scratch.cast::<Stack>() };
    insert_stack(stacks, hash_frames(&stack.frames), stack)
}

/// Stores the unwound stack of `depth` frames in this CPU's scratch space:
/// in the set's `STACKS` map when it fits a [`Stack`], else in its
/// `DEEP_STACKS` map. Returns its hash, 0 when there is none.
#[inline(always)]
fn save_unwound(set: &MapSetRef, depth: usize) -> StackHash {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    if depth == 0 {
        return 0;
    }
    if depth <= MAX_STACK_DEPTH {
        // SAFETY: this CPU's scratch value; a `Stack` is its prefix. The
        // unwinder ended the frames with a zero (or filled the prefix).
        let stack = unsafe { &*scratch.cast::<Stack>() };
        insert_stack(set.stacks, hash_frames(&stack.frames), stack)
    } else {
        // SAFETY: as above.
        let stack = unsafe { &*scratch };
        insert_stack(set.deep_stacks, hash_frames(&stack.frames), stack)
    }
}

/// Stores `stack` under `hash` unless a stack already has that hash.
#[inline(always)]
fn insert_stack<V>(stacks: &HashMap<StackHash, V>, hash: StackHash, stack: &V) -> StackHash {
    match stacks.insert(hash, stack, BPF_NOEXIST as u64) {
        Ok(()) => hash,
        Err(err) if err == -EEXIST => hash,
        Err(_) => {
            bump(Stat::StackMapFull);
            0
        }
    }
}

/// FNV-1a over the frame words up to the first zero, never 0 (0 means "no
/// stack").
#[inline(always)]
fn hash_frames<const N: usize>(frames: &[u64; N]) -> StackHash {
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

// The deep map is only for stacks the short one cannot hold.
const _: () = assert!(DEEP_STACK_DEPTH > MAX_STACK_DEPTH);

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
