//! The memory profile's programs: who allocates, and what stays allocated.
//!
//! Userspace attaches `mem_entry` (a uprobe) to each allocator entry point
//! of each selected process, the attach cookie saying which function it is
//! ([`alloc_fn`]), and `mem_return` (a uretprobe) to the allocating ones.
//!
//! - Sampling by bytes, in the allocating thread: each thread counts down
//!   a draw from the exponential distribution of mean `R` bytes (a
//!   Poisson process over the bytes it allocates, as tcmalloc and Go
//!   sample; userspace fills `MEMORY_GAPS` with the draws and weighs each
//!   sample with Go's unbiasing rule). An allocation that crosses zero is
//!   sampled: only it pays for a stack, taken at the entry with the chain
//!   every waiting kind shares ([`Waits`]), and held in the thread's
//!   task-local state until the call returns with its address.
//! - Nested allocator calls (`realloc(NULL, n)` calls `malloc`, the
//!   aligned allocators call it for small alignments) count once: the
//!   thread's depth says which call is outermost.
//! - A sampled allocation is tracked as live in `MEMORY_LIVE` by process
//!   and address; `free` (and `realloc` of an old block) of an address
//!   there sends its free; every other `free` costs one hash lookup. Each
//!   event goes on `MEMORY_EVENTS` in the order it happened; a free that
//!   does not fit waits in `MEMORY_FREES` for userspace, and a sampled
//!   allocation whose event does not fit is not tracked, so userspace never
//!   misses the free of an allocation it counts as in use.
//! - A probed process's fork (`mem_fork`) is marked in the same stream:
//!   from that point the child holds a copy of the parent's tracked
//!   allocations. Userspace copies them into the child's keys and probes
//!   the child at once (told on `PROCESS_EVENTS`, which userspace reads
//!   within its 20 ms batching delay).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_attach_cookie, bpf_get_current_task_btf, bpf_get_prandom_u32},
    },
    macros::{btf_map, btf_tracepoint, kprobe, map, uprobe, uretprobe},
    maps::{Array, HashMap, ProgramArray, RingBuf},
    programs::{BtfTracePointContext, ProbeContext, RetProbeContext},
    EbpfContext,
};
use profiler_common::{
    alloc_fn, names, AllocEvent, ForkEvent, FreeEvent, LiveKey, MemoryThread, ProcessEvent, Stat,
    WaitKey, ALLOC_TRACKED, ALLOC_UNTRACKED, FORK, FREE_TRACKED, MEMORY_GAPS,
};

use crate::exec;
use crate::files;
use crate::stack::{self, Kind};
use crate::task_storage::TaskStorage;
use crate::wait::Waits;

const MEMORY: Waits = Waits::MEMORY;
const KIND: Kind = Kind::MEMORY;

/// Mean gap when `MEMORY_GAPS` cannot be read (never, once userspace
/// filled it): 512 KiB.
const DEFAULT_GAP: u64 = 512 * 1024;

/// Deeper nesting than any allocator does: the thread's state is stale (a
/// call that never returned, `longjmp` out of a hook), start again.
const MAX_DEPTH: u32 = 8;

/// `mem_unwind` and `mem_store` (slots `TAIL_UNWIND_USER` and
/// `TAIL_UNWIND_STORE`) with the table unwinder, and `mem_files` (slot
/// `TAIL_RECORD_FILES`) where the kernel has `bpf_find_vma`.
#[map(name = "MEMORY_TAIL_CALLS")]
static MEMORY_TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(names::TAIL_SLOTS, 0);

/// Each thread's countdown and the allocation call it is in.
#[btf_map(name = "MEMORY_THREADS")]
static THREADS: TaskStorage<MemoryThread> = TaskStorage::new();

/// Sampled allocations still live (value: when allocated); userspace
/// sizes it (`--memory-max-live`) and deletes the entries of processes
/// that exit or exec.
#[map(name = "MEMORY_LIVE")]
static LIVE: HashMap<LiveKey, u64> = HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// Sampled allocations and frees of tracked ones, in order (userspace
/// sizes it when the kind is on).
#[map(name = "MEMORY_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Frees that did not fit in `EVENTS`, with when the block was allocated
/// (userspace applies one only to that allocation: the address may be
/// allocated again before it reads the map).
#[map(name = "MEMORY_FREES")]
static FREES: HashMap<LiveKey, u64> = HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// Processes whose forks are followed (tgid → 1): userspace adds each
/// process it probes and deletes those gone; `mem_fork` adds their
/// children.
#[map(name = "MEMORY_PROCESSES")]
static PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// Draws of the gap between sampled allocations, in bytes.
#[map(name = "MEMORY_GAPS")]
static GAPS: Array<u64> = Array::with_max_entries(MEMORY_GAPS, 0);

/// The current thread's state (created with `create`).
#[inline(always)]
fn thread(create: bool) -> Option<&'static mut MemoryThread> {
    // SAFETY: `bpf_get_current_task_btf` has no preconditions and returns
    // a trusted pointer, which task storage needs.
    let task = unsafe { bpf_get_current_task_btf() };
    let state = THREADS.get(task.cast(), create);
    // SAFETY: the current task's own storage; only its own probes touch
    // it, one at a time (a thread runs one probe at once).
    unsafe { state.as_mut() }
}

/// A draw of the gap to the next sampled allocation.
#[inline(always)]
fn draw() -> i64 {
    // SAFETY: `bpf_get_prandom_u32` has no preconditions.
    let index = unsafe { bpf_get_prandom_u32() } % MEMORY_GAPS;
    let gap = GAPS.get(index).copied().unwrap_or(DEFAULT_GAP).max(1);
    gap.min(i64::MAX as u64) as i64
}

/// `n * size`, or 0 when it overflows (such a `calloc` fails: nothing is
/// allocated). The check divides: BPF has no 128-bit multiply.
#[inline(always)]
fn calloc_size(n: u64, size: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    // Volatile: LLVM would turn the division back into an overflowing
    // multiply, a call BPF cannot make.
    // SAFETY: a read of a local.
    let limit = unsafe { core::ptr::read_volatile(&(u64::MAX / size)) };
    if n > limit {
        0
    } else {
        n * size
    }
}

/// The free of `addr` in the current process: sends it if it was tracked.
#[inline(always)]
fn freed(addr: u64) {
    if addr == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = LiveKey { tgid, pad: 0, addr };
    // One hash operation for the common free, of an untracked address.
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(&allocated) = (unsafe { LIVE.get(&key) }) else {
        return;
    };
    if LIVE.remove(&key).is_err() {
        return; // another thread freed it first
    }
    let event = FreeEvent {
        tag: FREE_TRACKED,
        tgid,
        addr,
    };
    if EVENTS.output::<FreeEvent>(&event, 0).is_err() {
        if FREES.insert(&key, &allocated, 0).is_ok() {
            KIND.bump(Stat::FreesDeferred);
        } else {
            KIND.bump(Stat::FreesLost);
        }
    }
}

/// An allocator function's entry (the cookie says which).
#[uprobe]
pub fn mem_entry(ctx: ProbeContext) -> u32 {
    // SAFETY: the context is this program's; the cookie is the one
    // userspace attached it with (0 without one).
    let function = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let arg = |n: usize| ctx.arg::<u64>(n).unwrap_or(0);
    if function == alloc_fn::FREE {
        freed(arg(0));
        return 0;
    }
    // A realloc frees its old block at whatever depth (freeing is
    // idempotent).
    if function == alloc_fn::REALLOC {
        freed(arg(0));
    }
    let Some(thread) = thread(true) else {
        return 0;
    };
    // SAFETY: a uprobe's context is the probed thread's user registers.
    let sp = unsafe { (*ctx.regs).rsp };
    // A call entered above the outermost call's stack pointer is not
    // nested in it: that call left without returning through its probe.
    // (At the same stack pointer it may be: an allocator function that
    // tail-calls another, glibc's `realloc(NULL, n)` → `malloc`.) Too
    // deep: stale as well.
    if thread.depth >= MAX_DEPTH || (thread.depth > 0 && sp > thread.entry_sp) {
        thread.depth = 0;
        thread.sampled = 0;
    }
    thread.depth += 1;
    if thread.depth != 1 {
        return 0;
    }
    thread.entry_sp = sp;
    let (size, out_ptr) = match function {
        alloc_fn::MALLOC => (arg(0), 0),
        alloc_fn::CALLOC => (calloc_size(arg(0), arg(1)), 0),
        alloc_fn::REALLOC => (arg(1), 0),
        alloc_fn::MEMALIGN => (arg(1), 0),
        alloc_fn::POSIX_MEMALIGN => (arg(2), arg(0)),
        _ => return 0,
    };
    KIND.bump(Stat::AllocCalls);
    KIND.add(Stat::AllocBytes, size);
    if thread.countdown == 0 {
        thread.countdown = draw();
    }
    thread.countdown = thread
        .countdown
        .saturating_sub(size.min(i64::MAX as u64) as i64);
    if thread.countdown > 0 {
        return 0;
    }
    thread.countdown = draw();
    thread.sampled = 2;
    thread.size = size;
    thread.out_ptr = out_ptr;
    thread.function = function as u32;
    stack::entry(|_| MEMORY.record(&ctx, &MEMORY_TAIL_CALLS, 0));
    0
}

/// Holds the stack key of the current thread's sampled allocation until
/// the call returns (the end of [`Waits`]' chain for this kind).
#[inline(always)]
pub fn hold(key: &WaitKey, set: u32) {
    if let Some(thread) = thread(false) {
        if thread.sampled == 2 {
            thread.key = *key;
            thread.set = set;
            thread.sampled = 1;
        }
    }
}

/// An allocating function's return: the sampled allocation's address.
#[uretprobe]
pub fn mem_return(ctx: RetProbeContext) -> u32 {
    let Some(thread) = thread(false) else {
        return 0;
    };
    if thread.depth == 0 {
        return 0; // entered before the probes were attached
    }
    thread.depth -= 1;
    if thread.depth != 0 || thread.sampled == 0 {
        return 0;
    }
    let held = thread.sampled == 1;
    thread.sampled = 0;
    if !held {
        return 0; // the stack chain did not finish: counted there
    }
    let returned: u64 = ctx.ret();
    let addr = if thread.function == alloc_fn::POSIX_MEMALIGN as u32 {
        // 0 on success, the address in *ptr.
        if returned == 0 {
            stack::read_user(thread.out_ptr).unwrap_or(0)
        } else {
            0
        }
    } else {
        returned
    };
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // The sets flipped during the call: userspace may read this event
    // after it drained the set the stack went to, so the stack moves to
    // the set active now (a slow call that outlived that drain too loses
    // its stack).
    let mut set = thread.set;
    if let Some(config) = KIND.config() {
        if config.active_set != set
            && stack::carry(thread.key.user_stack, set, config.active_set, KIND)
        {
            set = config.active_set;
        }
    }
    let key = LiveKey {
        tgid: thread.key.tgid,
        pad: 0,
        addr,
    };
    let tracked = addr != 0 && LIVE.insert(&key, &now, 0).is_ok();
    if addr != 0 && !tracked {
        KIND.bump(Stat::AllocUntracked);
    }
    let event = AllocEvent {
        tag: if tracked {
            ALLOC_TRACKED
        } else {
            ALLOC_UNTRACKED
        },
        set,
        key: thread.key,
        addr,
        size: thread.size,
        time_ns: now,
    };
    if EVENTS.output::<AllocEvent>(&event, 0).is_ok() {
        KIND.bump(Stat::Recorded);
    } else {
        // Untracked again: its free must not go to a userspace that
        // never saw it.
        if tracked {
            let _ = LIVE.remove(&key);
        }
        KIND.bump(Stat::DroppedCountsFull);
    }
    0
}

/// A task was created (`sched_process_fork(parent, child)`, run by the
/// parent before the child first runs): when a followed process made a
/// new process (not a thread), the child's copy of its heap starts here.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn mem_fork(ctx: BtfTracePointContext) -> i32 {
    stack::entry(|_| {
        let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
        // SAFETY: plain lookup; the value is never dereferenced.
        if unsafe { PROCESSES.get(&parent) }.is_none() {
            return 0;
        }
        let Some(config) = KIND.config() else {
            return 0;
        };
        if config.task_tgid == 0 {
            return 0;
        }
        let Some(child) = task_field::<u32>(&ctx, CHILD, config.task_tgid) else {
            return 0;
        };
        if child == parent || child == 0 {
            return 0; // a thread
        }
        // A child sharing its parent's memory (vfork, posix_spawn) execs
        // at once and holds nothing of its own: not followed.
        if config.task_mm != 0 {
            let mm = |task| task_field::<u64>(&ctx, task, config.task_mm);
            if mm(PARENT) == mm(CHILD) {
                return 0;
            }
        }
        let exec_gen = exec::generation(child);
        let fork = ForkEvent {
            tag: FORK,
            parent,
            child,
            exec_gen,
        };
        if EVENTS.output::<ForkEvent>(&fork, 0).is_err() {
            KIND.bump(Stat::ForksLost);
            return 0;
        }
        let _ = PROCESSES.insert(&child, &1, 0);
        let sent = stack::send_event(ProcessEvent::FORK, child, |event| {
            event.exec_gen = exec_gen;
        });
        if !sent {
            // Probed at the next drain instead: its frees until then
            // are not seen.
            KIND.bump(Stat::NewProcessLost);
        }
        0
    })
}

/// `sched_process_fork`'s arguments: the parent's and the child's
/// `task_struct`.
const PARENT: usize = 0;
const CHILD: usize = 1;

/// The field at byte `offset` of the `task_struct` that is the fork
/// tracepoint's argument `task`.
#[inline(always)]
fn task_field<T>(ctx: &BtfTracePointContext, task: usize, offset: u32) -> Option<T> {
    // SAFETY: the argument is a `task_struct` pointer (see `PARENT`);
    // bpf_probe_read_kernel checks the address it reads.
    unsafe {
        let task: u64 = ctx.arg(task);
        bpf_probe_read_kernel((task + u64::from(offset)) as *const T).ok()
    }
}

/// Process `tgid` exited: its forks are not followed any more (a process
/// reusing the pid is not followed unless probed).
#[inline(always)]
pub fn exited(tgid: u32) {
    let _ = PROCESSES.remove(&tgid);
}

/// [`Waits::unwind_user`] for the memory profile, by tail call.
#[kprobe]
pub fn mem_unwind(ctx: ProbeContext) -> u32 {
    stack::tail(|| {
        MEMORY.unwind_user(&ctx, &MEMORY_TAIL_CALLS);
        0
    })
}

/// [`Waits::store`] for the memory profile, by tail call.
#[kprobe]
pub fn mem_store(ctx: ProbeContext) -> u32 {
    stack::tail(|| {
        MEMORY.store(&ctx, &MEMORY_TAIL_CALLS, 0);
        0
    })
}

/// The file mappings of a sampled allocation's user frames, by tail call.
#[kprobe]
pub fn mem_files(_ctx: ProbeContext) -> u32 {
    stack::tail(|| {
        files::record(MEMORY.kind());
        0
    })
}
