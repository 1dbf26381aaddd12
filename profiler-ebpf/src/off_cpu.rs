//! The off-CPU profile's programs: where threads wait, and for how long.
//!
//! - Switch-out, `tp_btf/sched_switch`: runs in the context of the thread
//!   leaving the CPU (the tracepoint fires before the switch), and notes
//!   in `OFF_CPU_START`, by tid, when it left and in which state. The map
//!   is keyed by thread, not per CPU: the thread may come back on another
//!   CPU.
//! - Switch-in, in the context of the thread getting the CPU back:
//!   `tp_btf/sched_exit_tp` (the end of `__schedule`, Linux 6.16+) where
//!   the kernel has it, else a kprobe on `finish_task_switch*`. The same
//!   code behind either hook computes how long the thread was away, `d`,
//!   and keeps the interval with probability `min(1, d/P)`
//!   (`profiler_common::keep_wait`, Go's unbiased rule; `P` is
//!   `Config::off_cpu_period_ns`, adapted by userspace to the unwind
//!   budget). Only kept intervals pay for stacks: the user stack with the
//!   table unwinder from the registers the thread saved when it entered
//!   the kernel (`bpf_task_pt_regs`), or frame pointers, and the kernel
//!   stack where it blocked, with `bpf_get_stack`; all of it in
//!   [`crate::wait`], shared with the locks profile. Each hook has its own
//!   tail-call array: a program array holds one program type (and, for
//!   tracing programs, one hook).
//!
//! Every path is bounded (the unwinder's `bpf_loop` at 520 frames) and the
//! common case, an interval not kept, is a lookup, a store and two counter
//! bumps: the kprobe runs with the run-queue lock held.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, kprobe, map},
    maps::{LruHashMap, ProgramArray},
    programs::{BtfTracePointContext, ProbeContext},
    EbpfContext,
};
use profiler_common::{names, OffCpuStart};

use crate::files;
use crate::stack;
use crate::wait::Waits;

/// Threads whose switch-out time is kept at once; the least recently
/// switched go first (threads that exited).
const THREADS: u32 = 65_536;

const WAITS: Waits = Waits::OFF_CPU;

/// Kernel frames above `__schedule` to leave out of the stack: at the
/// tracepoint, the BPF program and `bpf_trace_run1`; at the kprobe, none
/// (`finish_task_switch` stays, as in other off-CPU tools).
const TRACEPOINT_SKIP: u64 = 2;
const KPROBE_SKIP: u64 = 0;

#[map(name = "OFF_CPU_START")]
static OFF_CPU_START: LruHashMap<u32, OffCpuStart> = LruHashMap::with_max_entries(THREADS, 0);

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

/// Notes when the thread leaving the CPU left, and in which state.
#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu_out(ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tid == 0 {
        return 0; // the idle task is never blocked
    }
    let Some(config) = WAITS.kind().config() else {
        return 0;
    };
    if !stack::pid_wanted(config, tgid) {
        return 0;
    }
    // sched_switch(bool preempt, prev, next, unsigned int prev_state).
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    // Preempted: still runnable, waiting on the run queue.
    let state = if preempt & 1 != 0 {
        0
    } else {
        prev_state as u32
    };
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = OFF_CPU_START.get_ptr_mut(tid) {
        // SAFETY: only this thread's switch-out and its next switch-in
        // touch its entry, and the switch-in cannot start before this
        // switch has finished (the thread is still on this CPU).
        unsafe {
            (*entry).start_ns = start_ns;
            (*entry).state = state;
        }
    } else {
        let entry = OffCpuStart {
            start_ns,
            state,
            pad: 0,
        };
        let _ = OFF_CPU_START.insert(tid, entry, 0);
    }
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
    WAITS.unwind_user(&ctx, &OFF_CPU_TAIL_CALLS, TRACEPOINT_SKIP);
    0
}

/// [`Waits::store`] for the tracepoint switch-in, by tail call.
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_store(ctx: BtfTracePointContext) -> i32 {
    WAITS.store(&ctx, &OFF_CPU_TAIL_CALLS, TRACEPOINT_SKIP);
    0
}

/// The file mappings of a kept interval's user frames for the tracepoint
/// switch-in, by tail call (see [`crate::files`]).
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_files(_ctx: BtfTracePointContext) -> i32 {
    files::record(WAITS.kind());
    0
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
    WAITS.unwind_user(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS, KPROBE_SKIP);
    0
}

/// [`Waits::store`] for the kprobe switch-in, by tail call.
#[kprobe]
pub fn off_kp_store(ctx: ProbeContext) -> u32 {
    WAITS.store(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS, KPROBE_SKIP);
    0
}

/// The file mappings of a kept interval's user frames for the kprobe
/// switch-in, by tail call.
#[kprobe]
pub fn off_kp_files(_ctx: ProbeContext) -> u32 {
    files::record(WAITS.kind());
    0
}

/// Measures how long the thread getting the CPU back was away and hands
/// the interval to [`Waits::measured`]; `tail_calls` is the hook's own
/// program array, `skip` its kernel frames to leave out.
#[inline(always)]
fn switch_in<C: EbpfContext>(ctx: &C, tail_calls: &ProgramArray, skip: u64) {
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let tid = bpf_get_current_pid_tgid() as u32;
    if tid == 0 {
        return;
    }
    let Some(entry) = OFF_CPU_START.get_ptr_mut(tid) else {
        return; // left before the program was attached, or filtered
    };
    // SAFETY: this thread's entry; see `off_cpu_out`.
    let (began, state) = unsafe { ((*entry).start_ns, (*entry).state) };
    if began == 0 || now <= began {
        return;
    }
    // Consumed: a missed switch-out can never pair with a stale time.
    // SAFETY: as above.
    unsafe { (*entry).start_ns = 0 };
    WAITS.measured(ctx, tail_calls, now - began, state, skip);
}
