//! The off-CPU profile's programs: where threads wait, and for how long.
//!
//! - `tp_btf/sched_switch` does the bookkeeping of every switch, in one
//!   run: it notes when the thread leaving the CPU (`prev`, the current
//!   one) left and in which state, and measures how long the thread
//!   getting the CPU (`next`) was away, `d`. Both live in task-local
//!   storage (`OFF_CPU_TASKS`), by task, never per CPU: a thread may come
//!   back on another CPU. The interval is kept with probability
//!   `min(1, d/P)` (`profiler_common::keep_wait`, Go's unbiased rule; `P`
//!   is `Config::off_cpu_period_ns`, adapted by userspace to the unwind
//!   budget), in [`crate::wait`].
//! - A kept interval needs the stacks of `next`, readable only in its own
//!   context: `sched_switch` leaves it in this CPU's slot of the kind,
//!   owned by `next`, and the switch-in hook at the end of the same
//!   `__schedule` (on the same CPU, which `next` cannot leave before) takes
//!   it when it owns it and records it: `tp_btf/sched_exit_tp` (Linux
//!   6.16+) where the kernel has it, else a kprobe on `finish_task_switch*`.
//!   Only kept intervals pay for stacks, with the code every waiting kind
//!   shares ([`crate::wait`]). Each hook has its own tail-call array: a
//!   program array holds one program type (and, for tracing programs, one
//!   hook).
//!
//! The common case, an interval not kept, costs one `sched_switch` run
//! (two task-storage lookups, a clock read, two counter bumps) and a
//! switch-in run that reads one per-CPU slot: `sched_switch` runs with the
//! run-queue lock held.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_current_task},
    macros::{btf_map, btf_tracepoint, kprobe, map},
    maps::ProgramArray,
    programs::{BtfTracePointContext, ProbeContext},
    EbpfContext,
};
use profiler_common::{names, OffCpuStart};

use crate::files;
use crate::stack;
use crate::task_storage::TaskStorage;
use crate::wait::Waits;

const WAITS: Waits = Waits::OFF_CPU;

/// Kernel frames above `__schedule` to leave out of the stack: at the
/// tracepoint, the BPF program and `bpf_trace_run2`; at the kprobe, none
/// (`finish_task_switch` stays, as in other off-CPU tools).
const TRACEPOINT_SKIP: u64 = 2;
const KPROBE_SKIP: u64 = 0;

/// When each thread left the CPU, and in which state: kept with the task,
/// freed with it.
#[btf_map(name = "OFF_CPU_TASKS")]
static OFF_CPU_TASKS: TaskStorage<OffCpuStart> = TaskStorage::new();

/// `off_cpu_unwind` and `off_cpu_store` (slots `TAIL_UNWIND_USER` and
/// `TAIL_UNWIND_STORE`), set by userspace with the table unwinder, and
/// `off_cpu_files` (slot `TAIL_RECORD_FILES`) where the kernel has
/// `bpf_find_vma`.
#[map(name = "OFF_CPU_TAIL_CALLS")]
static OFF_CPU_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(names::TAIL_SLOTS, 0);

/// The same for the kprobe switch-in (`off_kp_*` programs).
#[map(name = "OFF_CPU_KPROBE_TAIL_CALLS")]
static OFF_CPU_KPROBE_TAIL_CALLS: ProgramArray =
    ProgramArray::with_max_entries(names::TAIL_SLOTS, 0);

/// Notes when the thread leaving the CPU left, and measures how long the
/// one getting it was away.
#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu_out(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(config) = WAITS.kind().config() else {
        return 0;
    };
    // sched_switch(bool preempt, prev, next, unsigned int prev_state).
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // The idle task is never blocked; filtered processes get no entry.
    if tid != 0 && stack::pid_wanted(config, tgid) {
        let preempt: u64 = ctx.arg(0);
        let prev_state: u64 = ctx.arg(3);
        // Preempted: still runnable, waiting on the run queue.
        let state = if preempt & 1 != 0 {
            0
        } else {
            prev_state as u32
        };
        let prev: *mut core::ffi::c_void = ctx.arg(1);
        let entry = OFF_CPU_TASKS.get(prev, true);
        if !entry.is_null() {
            // SAFETY: prev's entry; only its switches touch it, and they
            // run one at a time (it is on this CPU until this one ends).
            unsafe {
                (*entry).start_ns = now;
                (*entry).state = state;
            }
        }
    }
    let next: *mut core::ffi::c_void = ctx.arg(2);
    let entry = OFF_CPU_TASKS.get(next, false);
    if entry.is_null() {
        return 0; // never left while the program was attached, or filtered
    }
    // SAFETY: next's entry; it is not running, and only its switches
    // touch it.
    let (began, state) = unsafe { ((*entry).start_ns, (*entry).state) };
    if began == 0 || now <= began {
        return 0;
    }
    // Consumed: a missed switch-out can never pair with a stale time.
    // SAFETY: as above.
    unsafe { (*entry).start_ns = 0 };
    WAITS.keep(config, now - began, state, next as u64);
    0
}

/// The switch-in at the end of `__schedule` (Linux 6.16+).
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_in(ctx: BtfTracePointContext) -> i32 {
    switch_in(&ctx, &OFF_CPU_TAIL_CALLS, TRACEPOINT_SKIP);
    0
}

/// [`Waits::unwind_user`] for the tracepoint switch-in, by tail call.
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_unwind(ctx: BtfTracePointContext) -> i32 {
    stack::tail(|| {
        WAITS.unwind_user(&ctx, &OFF_CPU_TAIL_CALLS);
        0
    })
}

/// [`Waits::store`] for the tracepoint switch-in, by tail call.
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_store(ctx: BtfTracePointContext) -> i32 {
    stack::tail(|| {
        WAITS.store(&ctx, &OFF_CPU_TAIL_CALLS, TRACEPOINT_SKIP);
        0
    })
}

/// The file mappings of a kept interval's user frames for the tracepoint
/// switch-in, by tail call (see [`crate::files`]).
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_files(_ctx: BtfTracePointContext) -> i32 {
    stack::tail(|| {
        files::record(WAITS.kind());
        0
    })
}

/// The switch-in as a kprobe on `finish_task_switch*` (older kernels).
#[kprobe]
pub fn off_kp_in(ctx: ProbeContext) -> u32 {
    switch_in(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS, KPROBE_SKIP);
    0
}

/// [`Waits::unwind_user`] for the kprobe switch-in, by tail call.
#[kprobe]
pub fn off_kp_unwind(ctx: ProbeContext) -> u32 {
    stack::tail(|| {
        WAITS.unwind_user(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS);
        0
    })
}

/// [`Waits::store`] for the kprobe switch-in, by tail call.
#[kprobe]
pub fn off_kp_store(ctx: ProbeContext) -> u32 {
    stack::tail(|| {
        WAITS.store(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS, KPROBE_SKIP);
        0
    })
}

/// The file mappings of a kept interval's user frames for the kprobe
/// switch-in, by tail call.
#[kprobe]
pub fn off_kp_files(_ctx: ProbeContext) -> u32 {
    stack::tail(|| {
        files::record(WAITS.kind());
        0
    })
}

/// Records the interval `sched_switch` kept for the thread getting the CPU
/// back, if it kept one; `tail_calls` is the hook's own program array,
/// `skip` its kernel frames to leave out.
#[inline(always)]
fn switch_in<C: EbpfContext>(ctx: &C, tail_calls: &ProgramArray, skip: u64) {
    // SAFETY: `bpf_get_current_task` has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    // Most runs end here, having taken no lock: no chain to count.
    if WAITS.take_owned(task) {
        stack::entry(|_| WAITS.record(ctx, tail_calls, skip));
    }
}
