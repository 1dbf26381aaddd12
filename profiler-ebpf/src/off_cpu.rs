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
//!   (`profiler_common::off_cpu_keep`, Go's unbiased rule; `P` is
//!   `Config::off_cpu_period_ns`, adapted by userspace to the unwind
//!   budget). Only kept intervals pay for stacks: the user stack with the
//!   table unwinder from the registers the thread saved when it entered
//!   the kernel (`bpf_task_pt_regs`), or frame pointers, and the kernel
//!   stack where it blocked, with `bpf_get_stack`. Each hook has its own
//!   tail-call array: a program array holds one program type (and, for
//!   tracing programs, one hook).
//!
//! Every path is bounded (the unwinder's `bpf_loop` at 520 frames) and the
//! common case, an interval not kept, is a lookup, a store and two counter
//! bumps: the kprobe runs with the run-queue lock held.

use aya_ebpf::{
    bindings::{BPF_F_SKIP_FIELD_MASK, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_get_prandom_u32,
    },
    macros::{btf_tracepoint, kprobe, map},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray},
    programs::{BtfTracePointContext, ProbeContext},
    EbpfContext,
};
use profiler_common::{
    names, off_cpu_keep, Config, OffCpuKey, OffCpuStart, OffCpuValue, StackHash, Stat, COMM_LEN,
};

use crate::stack::{self, Kind, EEXIST};
use crate::unwind::{self, Unwind};
use crate::{exec, files, trace};

/// Default capacity of each `OFF_CPU_COUNTS_*` map; userspace may resize
/// at load.
const COUNTS_ENTRIES: u32 = 16_384;
/// Threads whose switch-out time is kept at once; the least recently
/// switched go first (threads that exited).
const THREADS: u32 = 65_536;

const KIND: Kind = Kind::OFF_CPU;

/// Kernel frames above `__schedule` to leave out of the stack: at the
/// tracepoint, the BPF program and `bpf_trace_run1`; at the kprobe, none
/// (`finish_task_switch` stays, as in other off-CPU tools).
const TRACEPOINT_SKIP: u64 = 2;
const KPROBE_SKIP: u64 = 0;

#[map(name = "OFF_CPU_START")]
static OFF_CPU_START: LruHashMap<u32, OffCpuStart> = LruHashMap::with_max_entries(THREADS, 0);

#[map(name = "OFF_CPU_COUNTS_0")]
static OFF_CPU_COUNTS_0: PerCpuHashMap<OffCpuKey, OffCpuValue> =
    PerCpuHashMap::with_max_entries(COUNTS_ENTRIES, 0);
#[map(name = "OFF_CPU_COUNTS_1")]
static OFF_CPU_COUNTS_1: PerCpuHashMap<OffCpuKey, OffCpuValue> =
    PerCpuHashMap::with_max_entries(COUNTS_ENTRIES, 0);

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

/// A kept interval on its way through the tail calls, per CPU.
#[derive(Clone, Copy)]
struct Pending {
    nanos: u64,
    events_milli: u64,
    state: u32,
}

#[map(name = "OFF_CPU_PENDING")]
static OFF_CPU_PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Notes when the thread leaving the CPU left, and in which state.
#[btf_tracepoint(function = "sched_switch")]
pub fn off_cpu_out(ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tid == 0 {
        return 0; // the idle task is never blocked
    }
    let Some(config) = KIND.config() else {
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

/// [`unwind_user`] for the tracepoint switch-in, by tail call.
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_unwind(ctx: BtfTracePointContext) -> i32 {
    unwind_user(&ctx, &OFF_CPU_TAIL_CALLS, TRACEPOINT_SKIP);
    0
}

/// [`store`] for the tracepoint switch-in, by tail call.
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_store(ctx: BtfTracePointContext) -> i32 {
    store(&ctx, &OFF_CPU_TAIL_CALLS, TRACEPOINT_SKIP);
    0
}

/// The file mappings of a kept interval's user frames for the tracepoint
/// switch-in, by tail call (see [`crate::files`]).
#[btf_tracepoint(function = "sched_exit_tp")]
pub fn off_cpu_files(_ctx: BtfTracePointContext) -> i32 {
    files::record(KIND);
    0
}

/// The switch-in as a kprobe on `finish_task_switch*` (older kernels).
#[kprobe]
pub fn off_kp_in(ctx: ProbeContext) -> u32 {
    switch_in(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS, KPROBE_SKIP);
    0
}

/// [`unwind_user`] for the kprobe switch-in, by tail call.
#[kprobe]
pub fn off_kp_unwind(ctx: ProbeContext) -> u32 {
    unwind_user(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS, KPROBE_SKIP);
    0
}

/// [`store`] for the kprobe switch-in, by tail call.
#[kprobe]
pub fn off_kp_store(ctx: ProbeContext) -> u32 {
    store(&ctx, &OFF_CPU_KPROBE_TAIL_CALLS, KPROBE_SKIP);
    0
}

/// The file mappings of a kept interval's user frames for the kprobe
/// switch-in, by tail call.
#[kprobe]
pub fn off_kp_files(_ctx: ProbeContext) -> u32 {
    files::record(KIND);
    0
}

/// Measures how long the thread getting the CPU back was away, and
/// records the interval when it is kept; `tail_calls` is the hook's own
/// program array, `skip` its kernel frames to leave out.
#[inline(always)]
fn switch_in<C: EbpfContext>(ctx: &C, tail_calls: &ProgramArray, skip: u64) {
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
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
    let blocked = now - began;
    KIND.bump(Stat::OffCpuIntervals);
    KIND.add(Stat::OffCpuNanos, blocked);
    let Some(config) = KIND.config() else {
        return;
    };
    // SAFETY: `bpf_get_prandom_u32` has no preconditions.
    let random =
        unsafe { (u64::from(bpf_get_prandom_u32()) << 32) | u64::from(bpf_get_prandom_u32()) };
    let Some(weight) = off_cpu_keep(blocked, config.off_cpu_period_ns, random) else {
        return;
    };
    let Some(pending) = OFF_CPU_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value; the off-CPU programs do not nest in each
    // other on a CPU and the CPU program does not use it.
    unsafe {
        *pending = Pending {
            nanos: weight.nanos,
            events_milli: weight.events_milli,
            state,
        }
    };
    KIND.bump(Stat::Invocations);
    stack::announce(tgid, KIND);
    // With unwind tables, unwind in the hook's unwinding program; the tail
    // call returns only when it is not loaded (frame pointers only).
    if unwind::has_tables(tgid) {
        // SAFETY: the slot holds the unwinding program of this hook (same
        // type and attach point as the caller), or nothing.
        let _ = unsafe { tail_calls.tail_call(ctx, names::TAIL_UNWIND_USER) };
    }
    record_with_frame_pointers(ctx, tail_calls, tgid, tid, skip);
}

/// Unwinds the user stack of a kept interval's thread from tables.
#[inline(always)]
fn unwind_user<C: EbpfContext>(ctx: &C, tail_calls: &ProgramArray, skip: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    match unwind::current_user_regs().and_then(|regs| Unwind::start(&regs, KIND, tgid, tid)) {
        Some(mut unwind) => {
            unwind.run();
            unwind.store_in_tail_call(ctx, tail_calls, names::TAIL_UNWIND_STORE);
        }
        // A kernel thread, or the tables just went away.
        None => record_with_frame_pointers(ctx, tail_calls, tgid, tid, skip),
    }
}

/// Records a kept interval whose user stack the unwinder finished.
#[inline(always)]
fn store<C: EbpfContext>(ctx: &C, tail_calls: &ProgramArray, skip: u64) {
    let Some(unwind) = Unwind::resume(KIND) else {
        return;
    };
    let (tgid, tid) = unwind.thread();
    let depth = unwind.finish();
    // A copy: the set must not flip between storing the stacks and the
    // interval (userspace drains the set it left once this run is over).
    let Some(&config) = KIND.config() else {
        return;
    };
    let user_stack = stack::save_unwound(&stack::stack_set(&config), depth, KIND);
    finish(ctx, tail_calls, &config, tgid, tid, user_stack, skip);
}

/// Records a kept interval with the user stack `bpf_get_stack` reads
/// (frame pointers, from the registers saved at kernel entry).
#[inline(always)]
fn record_with_frame_pointers<C: EbpfContext>(
    ctx: &C,
    tail_calls: &ProgramArray,
    tgid: u32,
    tid: u32,
    skip: u64,
) {
    // A copy, as in `store`.
    let Some(&config) = KIND.config() else {
        return;
    };
    let user_stack = stack::store_stack(
        ctx,
        stack::stack_set(&config).stacks,
        BPF_F_USER_STACK as u64,
        KIND,
        Stat::UserStackError,
    );
    if user_stack != 0 {
        KIND.bump(Stat::UnwindNoTables);
    }
    finish(ctx, tail_calls, &config, tgid, tid, user_stack, skip);
}

/// Reads the kernel stack (where the thread blocked), adds the pending
/// interval under its key, and hands the user stack to the hook's files
/// program.
#[inline(always)]
fn finish<C: EbpfContext>(
    ctx: &C,
    tail_calls: &ProgramArray,
    config: &Config,
    tgid: u32,
    tid: u32,
    user_stack: StackHash,
    skip: u64,
) {
    let Some(pending) = OFF_CPU_PENDING.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's value, written by the switch-in of this chain.
    let pending = unsafe { *pending };
    let set = stack::stack_set(config);
    let key = OffCpuKey {
        tgid,
        tid,
        user_stack,
        kernel_stack: stack::store_stack(
            ctx,
            set.stacks,
            skip & BPF_F_SKIP_FIELD_MASK as u64,
            KIND,
            Stat::KernelStackError,
        ),
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        state: pending.state,
        exec_gen: exec::generation(tgid),
        trace: trace::current(config),
    };
    let counts = if config.active_set == 0 {
        &OFF_CPU_COUNTS_0
    } else {
        &OFF_CPU_COUNTS_1
    };
    let value = OffCpuValue {
        kept: 1,
        events_milli: pending.events_milli,
        nanos: pending.nanos,
    };
    count(counts, &key, &value);
    files::walk_in_tail_call(
        ctx,
        tail_calls,
        KIND,
        tgid,
        key.exec_gen,
        user_stack,
        config.active_set,
    );
}

/// Adds `value` under `key`, creating the entry when needed.
#[inline(always)]
fn count(counts: &PerCpuHashMap<OffCpuKey, OffCpuValue>, key: &OffCpuKey, value: &OffCpuValue) {
    if let Some(slot) = counts.get_ptr_mut(key) {
        add(slot, value);
        KIND.bump(Stat::Recorded);
        return;
    }
    match counts.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => KIND.bump(Stat::Recorded),
        // Another CPU created the entry between our lookup and insert; our
        // own slot of it is zero.
        Err(err) if err == -EEXIST => match counts.get_ptr_mut(key) {
            Some(slot) => {
                add(slot, value);
                KIND.bump(Stat::Recorded);
            }
            None => KIND.bump(Stat::DroppedCountsFull),
        },
        Err(_) => KIND.bump(Stat::DroppedCountsFull),
    }
}

#[inline(always)]
fn add(slot: *mut OffCpuValue, value: &OffCpuValue) {
    // SAFETY: this CPU's slot of a live per-CPU map value; the off-CPU
    // programs do not nest on one CPU, so nothing else writes it now.
    unsafe {
        (*slot).kept += value.kept;
        (*slot).events_milli += value.events_milli;
        (*slot).nanos += value.nanos;
    }
}
