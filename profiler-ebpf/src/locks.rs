//! The kernel-lock contention profile's programs: which kernel locks
//! threads wait for, where, and for how long.
//!
//! - `tp_btf/contention_begin(lock, flags)` (Linux 5.19+) notes, by
//!   (thread, lock), when the wait began and the lock's `LCB_F_*` flags. A
//!   second begin for the same lock within 10 ms (a mutex that spins,
//!   then sleeps) keeps the first: the wait is the whole of it.
//! - `tp_btf/contention_end(lock, ret)` runs in the waiter's context as it
//!   gets the lock (or gives up): it takes the entry out and hands the
//!   wait to [`Waits::measured`], duration-sampled like off-CPU intervals
//!   with its own period (`Config::lock_period_ns`), and unwound with the
//!   same code. Spinning waits count too: they are on the CPU, but they
//!   are contention.
//!
//! Both do nothing while another program of hostprof's runs on the CPU
//! (they would run inside its lock contention, and could take its lock
//! again): such waits are counted as filtered.
//!
//! User-space locks (futexes) are not here: they are off-CPU waits, which
//! userspace classifies into the locks profile by their stacks.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, ProgramArray},
    programs::BtfTracePointContext,
};
use profiler_common::{names, LockStart, LockWaiter, Stat};

use crate::files;
use crate::stack;
use crate::wait::Waits;

/// Contentions under way at once; the least recently begun go first
/// (an end that never came).
const WAITERS: u32 = 16_384;

const WAITS: Waits = Waits::LOCKS;

/// Kernel frames above the lock function to leave out of the stack: the
/// BPF program and `bpf_trace_run2`.
const SKIP: u64 = 2;

/// A second begin of the same (thread, lock) within this time continues
/// the first wait (a mutex spins, then sleeps: two begins, one end).
const SAME_WAIT_NS: u64 = 10_000_000;

#[map(name = "LOCK_START")]
static LOCK_START: LruHashMap<LockWaiter, LockStart> = LruHashMap::with_max_entries(WAITERS, 0);

/// `lock_unwind`, `lock_store` and `lock_files`, in the slots the
/// off-CPU arrays use.
#[map(name = "LOCK_TAIL_CALLS")]
static LOCK_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(names::TAIL_SLOTS, 0);

/// Whether this chain, `depth` deep, is the only one of ours on the CPU;
/// when it is not (it runs inside another program's lock contention, see
/// `stack::entry`), the wait is counted as filtered.
#[inline(always)]
fn alone(depth: u32) -> bool {
    if depth > 1 {
        WAITS.kind().bump(Stat::Filtered);
    }
    depth <= 1
}

/// Notes when the current thread began to wait for `lock`.
#[btf_tracepoint(function = "contention_begin")]
pub fn lock_begin(ctx: BtfTracePointContext) -> i32 {
    stack::entry(|depth| {
        if !alone(depth) {
            return 0;
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
        if tid == 0 {
            return 0; // the idle task: an interrupt's spin, no one to blame
        }
        let Some(config) = WAITS.kind().config() else {
            return 0;
        };
        if !stack::pid_wanted(config, tgid) {
            return 0;
        }
        // contention_begin(void *lock, unsigned int flags).
        let lock: u64 = ctx.arg(0);
        let flags: u64 = ctx.arg(1);
        let waiter = LockWaiter { tid, pad: 0, lock };
        // SAFETY: `bpf_ktime_get_ns` has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: a copy is taken at once; only this thread's begin and
        // end touch its entry.
        if let Some(begun) = unsafe { LOCK_START.get(&waiter) }.copied() {
            // A begin moments ago is this wait's first phase (a mutex that
            // spun, now sleeps): the wait runs from there. An older one
            // lost its end (skipped nested in another program): replaced.
            if now.saturating_sub(begun.start_ns) < SAME_WAIT_NS {
                return 0;
            }
        }
        let start = LockStart {
            start_ns: now,
            flags: flags as u32,
            pad: 0,
        };
        let _ = LOCK_START.insert(&waiter, &start, 0);
        0
    })
}

/// Measures the wait for `lock` that just ended.
#[btf_tracepoint(function = "contention_end")]
pub fn lock_end(ctx: BtfTracePointContext) -> i32 {
    stack::entry(|depth| {
        if !alone(depth) {
            return 0;
        }
        // SAFETY: `bpf_ktime_get_ns` has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let tid = bpf_get_current_pid_tgid() as u32;
        if tid == 0 {
            return 0;
        }
        // contention_end(void *lock, int ret).
        let lock: u64 = ctx.arg(0);
        let waiter = LockWaiter { tid, pad: 0, lock };
        // SAFETY: a copy is taken at once; only this thread's begin and end
        // touch its entry.
        let Some(start) = (unsafe { LOCK_START.get(&waiter) }).copied() else {
            return 0; // began before the program was attached, or filtered
        };
        let _ = LOCK_START.remove(&waiter);
        if now > start.start_ns {
            WAITS.measured(
                &ctx,
                &LOCK_TAIL_CALLS,
                now - start.start_ns,
                start.flags,
                SKIP,
            );
        }
        0
    })
}

/// [`Waits::unwind_user`] for the locks programs, by tail call.
#[btf_tracepoint(function = "contention_end")]
pub fn lock_unwind(ctx: BtfTracePointContext) -> i32 {
    stack::tail(|| {
        WAITS.unwind_user(&ctx, &LOCK_TAIL_CALLS);
        0
    })
}

/// [`Waits::store`] for the locks programs, by tail call.
#[btf_tracepoint(function = "contention_end")]
pub fn lock_store(ctx: BtfTracePointContext) -> i32 {
    stack::tail(|| {
        WAITS.store(&ctx, &LOCK_TAIL_CALLS, SKIP);
        0
    })
}

/// The file mappings of a kept wait's user frames, by tail call (see
/// [`crate::files`]).
#[btf_tracepoint(function = "contention_end")]
pub fn lock_files(_ctx: BtfTracePointContext) -> i32 {
    stack::tail(|| {
        files::record(WAITS.kind());
        0
    })
}
