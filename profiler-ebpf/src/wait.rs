//! What the kinds that measure waits share: the off-CPU profile (switch-out
//! to switch-in) and the kernel-lock profile (`contention_begin` to
//! `contention_end`); the memory profile records its sampled allocations
//! with the same chain ([`crate::memory`]: no duration, no kernel stack,
//! and the key goes to the allocating thread rather than the ring). Each kind's hook measures a wait of `d` ns in the
//! context of the thread that waited and hands it to [`Waits::measured`],
//! which keeps it with probability `min(1, d/P)`
//! (`profiler_common::keep_wait`, Go's unbiased rule; `P` is the kind's
//! period in `Config`, adapted by userspace to the unwind budget). Only
//! kept waits pay for stacks: the user stack with the table unwinder from
//! the registers the thread saved as it entered the kernel
//! (`bpf_task_pt_regs`), or frame pointers, then the kernel stack where it
//! waited, with `bpf_get_stack`.
//!
//! The chain runs through the hook's own tail-call array (a program array
//! holds one program type and, for tracing programs, one hook): each kind
//! defines its programs as one-line calls into [`Waits`], so the code is
//! written once.

use aya_ebpf::{
    bindings::{BPF_F_SKIP_FIELD_MASK, BPF_F_USER_STACK},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_prandom_u32},
    macros::map,
    maps::{PerCpuArray, ProgramArray, RingBuf},
    EbpfContext,
};
use profiler_common::{keep_wait, kernel_kind, names, Config, StackHash, Stat, WaitEvent, WaitKey};

use crate::stack::{self, Kind};
use crate::unwind::{self, Unwind};
use crate::{exec, files, memory, trace};

/// Kept waits, one event each: 104 bytes and the ring's 8-byte header, so
/// 256 KiB hold ~2,300 (the default budget keeps 250 a second per CPU;
/// userspace sizes it to the budget and the CPUs at load).
#[map(name = "WAIT_EVENTS")]
static WAIT_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// A kept wait on its way to its stacks.
#[derive(Clone, Copy)]
struct Pending {
    nanos: u64,
    events_milli: u64,
    state: u32,
    /// The `task_struct` address of the thread that waited, while the wait
    /// is handed from the hook that measured it to the one in the thread's
    /// context (off-CPU: `sched_switch` to the end of the same
    /// `__schedule`); 0 once taken.
    owner: u64,
    /// The CPU's xorshift64 state for the keep decisions (0: not seeded).
    rng: u64,
}

/// One slot per kind and CPU: a lock contention inside an off-CPU program
/// (a contended map bucket) runs the locks programs nested in it.
#[map(name = "WAIT_PENDING")]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(kernel_kind::COUNT, 0);

/// A kind that measures waits.
#[derive(Clone, Copy)]
pub struct Waits(Kind);

impl Waits {
    pub const OFF_CPU: Waits = Waits(Kind::OFF_CPU);
    pub const LOCKS: Waits = Waits(Kind::LOCKS);
    pub const MEMORY: Waits = Waits(Kind::MEMORY);

    /// The kind whose counters and scratch space the waits use.
    #[inline(always)]
    pub fn kind(self) -> Kind {
        self.0
    }

    /// The kind's sampling period `P`.
    #[inline(always)]
    fn period(self, config: &Config) -> u64 {
        if self.0.index() == kernel_kind::LOCKS {
            config.lock_period_ns
        } else {
            config.off_cpu_period_ns
        }
    }

    /// Takes a wait of `waited` ns of the current thread, in `state`
    /// (what the kind says of it), and records it when it is kept;
    /// `tail_calls` is the hook's own program array, `skip` its kernel
    /// frames to leave out.
    #[inline(always)]
    pub fn measured<C: EbpfContext>(
        self,
        ctx: &C,
        tail_calls: &ProgramArray,
        waited: u64,
        state: u32,
        skip: u64,
    ) {
        let Some(config) = self.0.config() else {
            return;
        };
        if self.keep(config, waited, state, 0) {
            self.record(ctx, tail_calls, skip);
        }
    }

    /// Counts a wait of `waited` ns in `state` and decides whether it is
    /// kept; a kept wait waits in this CPU's slot of the kind for
    /// [`Self::record`], owned by the task at `owner` (0: the current
    /// one, recorded at once).
    #[inline(always)]
    pub fn keep(self, config: &Config, waited: u64, state: u32, owner: u64) -> bool {
        let kind = self.0;
        kind.bump(Stat::WaitIntervals);
        kind.add(Stat::WaitNanos, waited);
        let period = self.period(config);
        let Some(pending) = PENDING.get_ptr_mut(kind.index()) else {
            return false;
        };
        // SAFETY: this CPU's slot of the kind; a kind's programs do not
        // nest in each other on a CPU.
        let pending = unsafe { &mut *pending };
        // Only a wait shorter than the period needs the coin: xorshift64,
        // seeded once per CPU from the kernel's generator (two helper
        // calls a switch saved; a Bernoulli draw needs no more).
        let random = if waited >= period {
            0
        } else {
            let mut x = pending.rng;
            if x == 0 {
                // SAFETY: `bpf_get_prandom_u32` has no preconditions.
                x = unsafe {
                    (u64::from(bpf_get_prandom_u32()) << 32) | u64::from(bpf_get_prandom_u32())
                } | 1;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pending.rng = x;
            x
        };
        let Some(weight) = keep_wait(waited, period, random) else {
            return false;
        };
        pending.nanos = weight.nanos;
        pending.events_milli = weight.events_milli;
        pending.state = state;
        pending.owner = owner;
        true
    }

    /// Whether this CPU's slot holds a kept wait owned by the current
    /// task (`task`, its `task_struct` address); the slot is released
    /// either way, so a stale wait is never recorded.
    #[inline(always)]
    pub fn take_owned(self, task: u64) -> bool {
        let Some(pending) = PENDING.get_ptr_mut(self.0.index()) else {
            return false;
        };
        // SAFETY: this CPU's slot of the kind (see `keep`).
        unsafe {
            let owner = (*pending).owner;
            if owner == 0 {
                return false;
            }
            (*pending).owner = 0;
            if owner != task {
                // Its thread came back some other way: lost, and said so.
                self.0.bump(Stat::DroppedCountsFull);
                return false;
            }
            true
        }
    }

    /// Records the kept wait in this CPU's slot with the current thread's
    /// stacks: unwinds its user stack (in the hook's unwinding program,
    /// by tail call) or reads it with frame pointers, then its kernel
    /// stack, and counts it.
    #[inline(always)]
    pub fn record<C: EbpfContext>(self, ctx: &C, tail_calls: &ProgramArray, skip: u64) {
        let pid_tgid = bpf_get_current_pid_tgid();
        let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
        let kind = self.0;
        kind.bump(Stat::Invocations);
        if tgid != 0 {
            stack::announce(tgid, kind);
        }
        let memory = kind.index() == kernel_kind::MEMORY;
        if stack::tables_loaded() && !memory {
            // With the table unwinder, every wait goes on in the hook's
            // unwinding program (tables loaded for the process or not;
            // kernel threads and the idle task as an empty user stack):
            // the frame-pointer path below is then no code of this
            // program (see `Features`).
            unwind::chain_on(ctx, tail_calls, names::TAIL_UNWIND_USER, kind);
            return;
        }
        // At an allocator's entry, unwound only with the process's tables:
        // without them the caller at the stack pointer is read directly
        // (below), which a frame-pointer step would skip. The tail call
        // returns only when the slot is empty (frame pointers only).
        if tgid != 0 && memory && unwind::has_tables(tgid) {
            // SAFETY: as above, or an empty slot.
            let _ = unsafe { tail_calls.tail_call(ctx, names::TAIL_UNWIND_USER) };
        }
        self.record_with_frame_pointers(ctx, tail_calls, tgid, tid, skip);
    }

    /// Unwinds the user stack of a kept wait's thread from tables (the
    /// body of the hook's `TAIL_UNWIND_USER` program).
    #[inline(always)]
    pub fn unwind_user<C: EbpfContext>(self, ctx: &C, tail_calls: &ProgramArray) {
        let pid_tgid = bpf_get_current_pid_tgid();
        let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
        let regs = unwind::current_user_regs();
        if let Some(mut unwind) = Unwind::of_thread(regs, self.0, tgid, tid) {
            unwind.store_in_tail_call(ctx, tail_calls, names::TAIL_UNWIND_STORE);
        }
    }

    /// Records a kept wait whose user stack the unwinder finished (the
    /// body of the hook's `TAIL_UNWIND_STORE` program).
    #[inline(always)]
    pub fn store<C: EbpfContext>(self, ctx: &C, tail_calls: &ProgramArray, skip: u64) {
        let Some(unwind) = Unwind::resume(self.0) else {
            return;
        };
        let (tgid, tid) = unwind.thread();
        // Another thread's probe may have taken the kind's unwind state
        // meanwhile (see `stack::still_owned_by`).
        if !stack::still_owned_by(tid) {
            self.0.bump(Stat::UnwindRaced);
            return;
        }
        let depth = unwind.finish();
        // A copy: the set must not flip between storing the stacks and the
        // wait (userspace drains the set it left once this run is over).
        let Some(&config) = self.0.config() else {
            return;
        };
        let user_stack = stack::save_unwound(&stack::stack_set(&config), depth, self.0);
        self.finish::<true, _>(ctx, tail_calls, &config, tgid, tid, user_stack, skip);
    }

    /// Records a kept wait with the user stack `bpf_get_stack` reads
    /// (frame pointers, from the registers saved at kernel entry).
    #[inline(always)]
    fn record_with_frame_pointers<C: EbpfContext>(
        self,
        ctx: &C,
        tail_calls: &ProgramArray,
        tgid: u32,
        tid: u32,
        skip: u64,
    ) {
        // A copy, as in `store`.
        let Some(&config) = self.0.config() else {
            return;
        };
        let set = stack::stack_set(&config);
        let user_stack = if tgid == 0 {
            0
        } else if self.0.index() == kernel_kind::MEMORY {
            // At the allocator's entry: its caller is at the stack pointer.
            match unwind::current_user_regs().and_then(|regs| stack::read_user(regs.rsp)) {
                Some(caller) => stack::store_entry_stack(ctx, set.stacks(), self.0, caller),
                None => {
                    self.0.bump(Stat::UserStackError);
                    0
                }
            }
        } else {
            stack::store_stack::<false, _>(
                ctx,
                set.stacks(),
                BPF_F_USER_STACK as u64,
                self.0,
                Stat::UserStackError,
            )
        };
        if user_stack != 0 {
            self.0.bump(Stat::UnwindNoTables);
        }
        self.finish::<false, _>(ctx, tail_calls, &config, tgid, tid, user_stack, skip);
    }

    /// Reads the kernel stack (where the thread waited), adds the pending
    /// wait under its key, and hands the user stack to the hook's files
    /// program (`LOOPS`: the caller is a store program of the table
    /// unwinder, which may use `bpf_loop`; see [`stack::store_stack`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn finish<const LOOPS: bool, C: EbpfContext>(
        self,
        ctx: &C,
        tail_calls: &ProgramArray,
        config: &Config,
        tgid: u32,
        tid: u32,
        user_stack: StackHash,
        skip: u64,
    ) {
        let kind = self.0;
        let Some(pending) = PENDING.get_ptr(kind.index()) else {
            return;
        };
        // SAFETY: this CPU's slot, written by the measurement of this chain.
        let pending = unsafe { *pending };
        let set = stack::stack_set(config);
        // An allocation is made in user space: no kernel stack (the
        // probe's own would be all there is).
        let memory = kind.index() == kernel_kind::MEMORY;
        let key = WaitKey {
            tgid,
            tid,
            user_stack,
            kernel_stack: if memory {
                0
            } else {
                stack::store_stack::<LOOPS, _>(
                    ctx,
                    set.stacks(),
                    skip & BPF_F_SKIP_FIELD_MASK as u64,
                    kind,
                    Stat::KernelStackError,
                )
            },
            comm: stack::current_comm(),
            state: pending.state,
            exec_gen: exec::generation(tgid),
            trace: trace::current(config),
        };
        if memory {
            memory::hold(&key, config.active_set);
        } else {
            self.output(&key, &pending, config);
        }
        files::walk_in_tail_call(
            ctx,
            tail_calls,
            kind,
            tgid,
            key.exec_gen,
            user_stack,
            config.active_set,
        );
    }

    /// Sends a kept wait on `WAIT_EVENTS`.
    #[inline(always)]
    fn output(self, key: &WaitKey, pending: &Pending, config: &Config) {
        let kind = self.0;
        let event = WaitEvent {
            key: *key,
            // SAFETY: `bpf_ktime_get_ns` has no preconditions.
            time_ns: unsafe { bpf_ktime_get_ns() },
            events_milli: pending.events_milli,
            nanos: pending.nanos,
            kind: kind.index(),
            set: config.active_set,
        };
        match WAIT_EVENTS.output::<WaitEvent>(&event, 0) {
            Ok(()) => {
                kind.bump(Stat::Recorded);
                stack::added_entry();
            }
            Err(_) => kind.bump(Stat::DroppedCountsFull),
        }
    }
}
