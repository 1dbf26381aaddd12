//! The kinds sampled by a perf event: the CPU profile (`sample_cpu`, a
//! CPU-clock event on every online CPU) and the page-fault profile
//! (`sample_faults`, the software `page-faults` event, one sample every N
//! faults on each CPU). They differ only in their event: both run the
//! same chain of tail calls (`unwind_user`, `unwind_store`, `cpu_files`),
//! which learn the kind from `SAMPLED_KIND`, and count into the same maps
//! with the kind in the key. Perf-event programs never nest on one CPU
//! (the kernel runs one only when no other BPF program of the kprobe or
//! perf-event families runs there, `bpf_prog_active`), so one per-CPU
//! slot names the kind of the chain under way.
//!
//! On each sample the chain reads the user and kernel stacks of the
//! interrupted task (for a page fault: the faulting task, its user stack
//! where it touched the page; no kernel stack when the event interrupted
//! user mode, which has none), stores each distinct stack once under a
//! 64-bit hash of its frames (see [`crate::stack`]), and counts the sample
//! under (kind, tgid, tid, comm, user stack, kernel stack) in the active
//! map set. Userspace drains the inactive set.
//!
//! User stacks of processes whose unwind tables userspace has loaded are
//! unwound from `.eh_frame` rows (see [`crate::unwind`]), up to 519 frames
//! (`DEEP_STACK_DEPTH` slots, the last kept for the truncation mark); the
//! others, and every kernel stack, come from `bpf_get_stack` (frame
//! pointers, 127 frames).
//!
//! Why aggregate in the kernel (stack hash → count per drain) rather than
//! stream every sample through a ring buffer: at 99 Hz a busy thread's
//! samples mostly repeat a handful of stacks, so a drain reads each distinct
//! stack once instead of once per sample, and the per-sample cost stays one
//! hash-map update. Measured on this design (see the README's unwinding
//! figures) the unwinder, not the store, dominates the program's run time;
//! deep stacks go to their own maps so the common short stack keeps its
//! 1 KiB entry.

use aya_ebpf::{
    bindings::{bpf_perf_event_data, pt_regs, BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, ProgramArray},
    programs::PerfEventContext,
    EbpfContext,
};
use profiler_common::{kernel_kind, names, Config, SampleKey, StackHash, Stat};

use crate::stack::{self, Kind, StackSet, EEXIST};
use crate::unwind::{self, Unwind};
use crate::{exec, files, trace};

/// Default capacity of each `COUNTS_*` map; userspace may resize at load.
const COUNTS_ENTRIES: u32 = 16_384;

// One value per key, which a sample adds one to atomically. Per-CPU
// values (one slot per possible CPU, each CPU adding to its own) cost a
// key `8 × possible CPUs` bytes, allocated as the key arrives and copied
// out at every drain: 4 KiB a key on a 512-CPU host, and a drain whose
// work grew with the square of the CPUs (more keys, each larger).
// Allocated as keys arrive: preallocated, a map holds its capacity (which
// grows with the CPUs) whatever is used.
#[map(name = "COUNTS_0")]
static COUNTS_0: HashMap<SampleKey, u64> =
    HashMap::with_max_entries(COUNTS_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "COUNTS_1")]
static COUNTS_1: HashMap<SampleKey, u64> =
    HashMap::with_max_entries(COUNTS_ENTRIES, BPF_F_NO_PREALLOC);

/// `unwind_user` and `unwind_store`, set by userspace with the table
/// unwinder (empty with frame pointers only), and `cpu_files` where the
/// kernel has `bpf_find_vma`.
#[map(name = "TAIL_CALLS")]
static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(names::TAIL_SLOTS, 0);

/// The kind (`kernel_kind`) whose chain runs on this CPU: written by the
/// entry program, read by the programs it tail-calls.
#[map(name = "SAMPLED_KIND")]
static SAMPLED_KIND: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The maps of the active set (picked where each is used, see
/// [`StackSet`]).
struct MapSetRef {
    config: &'static Config,
    index: u32,
    stacks: StackSet,
}

impl MapSetRef {
    /// The set's `COUNTS_*` map.
    #[inline(always)]
    fn counts(&self) -> &'static HashMap<SampleKey, u64> {
        stack::pick(&self.index, &COUNTS_0, &COUNTS_1)
    }
}

/// Takes one CPU sample: attached to the CPU-clock perf event of every CPU.
#[perf_event]
pub fn sample_cpu(ctx: PerfEventContext) -> u32 {
    sample(&ctx, Kind::CPU)
}

/// Takes one page-fault sample: attached to the `page-faults` software
/// event of every CPU, which fires every N faults (the period userspace
/// chose) in the faulting task.
#[perf_event]
pub fn sample_faults(ctx: PerfEventContext) -> u32 {
    sample(&ctx, Kind::PAGE_FAULTS)
}

#[inline(always)]
fn sample(ctx: &PerfEventContext, kind: Kind) -> u32 {
    stack::entry(|_| {
        kind.bump(Stat::Invocations);
        if let Some(slot) = SAMPLED_KIND.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; perf-event programs do not nest on
            // one CPU (see the module's doc).
            unsafe { *slot = kind.index() };
        }
        record(ctx, kind);
        0
    })
}

/// The kind whose chain runs on this CPU (see [`SAMPLED_KIND`]).
#[inline(always)]
fn sampled_kind() -> Kind {
    // As read, not matched against the kinds: a value the verifier knows
    // nothing of, so the chain is checked once for both kinds rather than
    // once per kind. A kind's maps are indexed by it (bounds-checked
    // lookups), and the entry program wrote one of its two kinds.
    Kind::from_index(SAMPLED_KIND.get(0).copied().unwrap_or(kernel_kind::CPU))
}

/// Unwinds the user stack of a sampled process (from its tables, or with
/// frame pointers until they are loaded), tail-called by `sample_cpu`. A program of its own, loaded only with the table unwinder,
/// so `sample_cpu` needs neither `bpf_loop` (5.17+) nor
/// `bpf_task_pt_regs` (5.15+) and loads on older kernels.
#[perf_event]
pub fn unwind_user(ctx: PerfEventContext) -> u32 {
    stack::tail(|| {
        let kind = sampled_kind();
        let pid_tgid = bpf_get_current_pid_tgid();
        let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
        if let Some(mut unwind) = Unwind::of_thread(user_regs(&ctx), kind, tgid, tid) {
            unwind.store_in_tail_call(&ctx, &TAIL_CALLS, names::TAIL_UNWIND_STORE);
        }
        0
    })
}

/// Records the file mappings of a counted sample's user frames, tail-called
/// by the programs above once the sample is counted (see [`crate::files`]).
#[perf_event]
pub fn cpu_files(_ctx: PerfEventContext) -> u32 {
    stack::tail(|| {
        files::record(sampled_kind());
        0
    })
}

/// Records a sample whose user stack the unwinder finished: stores the
/// stack, reads the kernel stack, counts the sample. A program of its own
/// so the unwinding program stays small enough for the verifier.
#[perf_event]
pub fn unwind_store(ctx: PerfEventContext) -> u32 {
    stack::tail(|| {
        let kind = sampled_kind();
        let Some(unwind) = Unwind::resume(kind) else {
            return 0;
        };
        let (tgid, tid) = unwind.thread();
        let depth = unwind.finish();
        let Some(set) = active_set(kind) else {
            return 0;
        };
        let user_stack = stack::save_unwound(&set.stacks, depth, kind);
        finish::<true>(&ctx, &set, kind, tgid, tid, user_stack);
        0
    })
}

#[inline(always)]
fn record(ctx: &PerfEventContext, kind: Kind) {
    let Some(config) = kind.config() else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;

    if tgid == 0 && config.flags & Config::SKIP_IDLE != 0 {
        kind.bump(Stat::Filtered);
        return;
    }
    if !stack::pid_wanted(config, tgid) {
        kind.bump(Stat::Filtered);
        return;
    }
    if tgid != 0 {
        stack::announce(tgid, kind);
    }
    if stack::tables_loaded() {
        // Every sample goes on in `unwind_user` (tables loaded for the
        // process or not; kernel threads and the idle task as an empty
        // user stack). The frame-pointer path below is then no code of
        // this program: the verifier skips it (see `Features`).
        unwind::chain_on(ctx, &TAIL_CALLS, names::TAIL_UNWIND_USER, kind);
        return;
    }
    record_with_frame_pointers(ctx, kind, tgid, tid);
}

/// The user registers of the sampled task: from the perf event when it
/// interrupted user mode, else (a syscall, a fault) from the top of the
/// task's kernel stack. `None` for kernel threads.
#[inline(always)]
fn user_regs(ctx: &PerfEventContext) -> Option<pt_regs> {
    if in_user_mode(ctx) {
        // SAFETY: a perf-event program's context is a `bpf_perf_event_data`.
        return Some(unsafe { (*(ctx.as_ptr() as *const bpf_perf_event_data)).regs });
    }
    unwind::current_user_regs()
}

/// Whether the event interrupted user mode (its registers' privilege
/// level is 3): the sample then has no kernel frames.
#[inline(always)]
fn in_user_mode(ctx: &PerfEventContext) -> bool {
    // SAFETY: a perf-event program's context is a `bpf_perf_event_data`;
    // only its code segment is read.
    unsafe { (*(ctx.as_ptr() as *const bpf_perf_event_data)).regs.cs & 3 == 3 }
}

/// Records a sample with the user stack `bpf_get_stack` reads (frame
/// pointers; the programs of the frame-pointer unwinder, which need no
/// `bpf_loop`).
#[inline(always)]
fn record_with_frame_pointers(ctx: &PerfEventContext, kind: Kind, tgid: u32, tid: u32) {
    let Some(set) = active_set(kind) else {
        return;
    };
    let user_stack = stack::store_stack::<false, _>(
        ctx,
        set.stacks.stacks(),
        BPF_F_USER_STACK as u64,
        kind,
        Stat::UserStackError,
    );
    if user_stack != 0 && tgid != 0 {
        kind.bump(Stat::UnwindNoTables);
    }
    finish::<false>(ctx, &set, kind, tgid, tid, user_stack);
}

/// The maps of the set `CONFIG` names.
#[inline(always)]
fn active_set(kind: Kind) -> Option<MapSetRef> {
    let config = kind.config()?;
    Some(MapSetRef {
        config,
        index: config.active_set,
        stacks: stack::stack_set(config),
    })
}

/// Reads the kernel stack (if the event interrupted the kernel), counts
/// the sample with `user_stack`, and hands
/// the user stack to `cpu_files` (`LOOPS`: see [`stack::store_stack`]).
#[inline(always)]
fn finish<const LOOPS: bool>(
    ctx: &PerfEventContext,
    set: &MapSetRef,
    kind: Kind,
    tgid: u32,
    tid: u32,
    user_stack: StackHash,
) {
    let exec_gen = exec::generation(tgid);
    // Interrupted in user mode, the sample has no kernel frames: the
    // helper would say so after zero-filling a whole stack of scratch.
    let kernel_stack = if in_user_mode(ctx) {
        0
    } else {
        stack::store_stack::<LOOPS, _>(ctx, set.stacks.stacks(), 0, kind, Stat::KernelStackError)
    };
    let comm = stack::current_comm();
    let trace = trace::current(set.config);
    let key = SampleKey {
        tgid,
        tid,
        user_stack,
        kernel_stack,
        comm,
        exec_gen,
        kind: kind.index(),
        trace,
    };
    // A key already counted in this set had its user frames walked when
    // it was first counted (same process image, same stack): it needs the
    // walk again only when that walk left frames unsent. A busy thread's
    // repeated stacks then skip the tail call, the stack's copy and the
    // frame loop.
    // (No user frames, or the idle task: nothing to walk either way.)
    if count(set.counts(), kind, &key) == Counted::Existing
        && (tgid == 0 || user_stack == 0 || !files::walk_again(tgid, exec_gen, set.index))
    {
        return;
    }
    files::walk_in_tail_call(
        ctx,
        &TAIL_CALLS,
        kind,
        tgid,
        exec_gen,
        user_stack,
        set.index,
    );
}

/// How [`count`] went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// The key's entry was created.
    New,
    /// Added to the entry the key had.
    Existing,
    /// Lost: the map is full.
    Dropped,
}

/// Adds one sample to `key`'s count, creating the entry when needed.
#[inline(always)]
fn count(counts: &HashMap<SampleKey, u64>, kind: Kind, key: &SampleKey) -> Counted {
    if let Some(value) = counts.get_ptr_mut(key) {
        add_one(value);
        kind.bump(Stat::Recorded);
        return Counted::Existing;
    }
    match counts.insert(key, 1, BPF_NOEXIST as u64) {
        Ok(()) => {
            kind.bump(Stat::Recorded);
            stack::added_entry();
            Counted::New
        }
        // Another CPU created the entry between our lookup and insert
        // (and walks its frames).
        Err(err) if err == -EEXIST => match counts.get_ptr_mut(key) {
            Some(value) => {
                add_one(value);
                kind.bump(Stat::Recorded);
                Counted::Existing
            }
            None => {
                kind.bump(Stat::DroppedCountsFull);
                Counted::Dropped
            }
        },
        Err(_) => {
            kind.bump(Stat::DroppedCountsFull);
            Counted::Dropped
        }
    }
}

#[inline(always)]
fn add_one(value: *mut u64) {
    // SAFETY: `value` points to a live map value (the map keeps it until
    // it is deleted, which only a drained set's entries are); other CPUs
    // may add to it at the same time, hence the atomic add (the BPF
    // target's `core` has no `AtomicU64::fetch_add`: its atomics are load
    // and store only; the intrinsic becomes BPF's atomic add).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            value, 1,
        )
    };
}
