//! Exec generations: which image of a process a sample was taken in.
//!
//! `exec` replaces a process's mappings under the same tgid. A sample taken
//! before it (a shell wrapper, a `gosu`-style launcher) and resolved
//! against the mappings after it names code of the wrong binary. So every
//! sample carries the process's exec generation, `EXEC_GEN[tgid]`, bumped
//! by these programs; userspace reads the same map around each snapshot of
//! `/proc/PID/maps` and only resolves a sample against a snapshot of its
//! own generation.
//!
//! - `raw_tp/sched_prepare_exec` (6.10+) bumps it as an exec begins, before
//!   the mappings change, and `raw_tp/sched_process_exec` once it is done:
//!   a snapshot that read the same generation before and after cannot mix
//!   two images. Without the first (older kernels) one bump remains; a
//!   snapshot taken during the few microseconds between the switch of the
//!   mappings and the tracepoint is then the only mix-up left.
//! - An exec that fails after `sched_prepare_exec` leaves one extra bump:
//!   samples after it get a new generation, and userspace snapshots again.
//! - The map is LRU (every exec and exit adds to it; nothing deletes): a
//!   process evicted from it reads generation 0 again, below the one
//!   userspace knows, which does not snapshot it again, so its samples
//!   resolve only through the files the kernel recorded. 16 Ki entries
//!   make that rare; userspace does not shrink this map.
//! - A process's exit bumps it too (`files_exit`, see [`crate::files`]):
//!   a later process reusing the pid never shares a generation with it,
//!   so the files recorded for one never resolve the other's frames. The
//!   exit also stamps the entry with the process's start
//!   ([`ExecGen::exited_ticks`], cleared by an exec): userspace then knows
//!   the process it holds exited without reading `/proc` (where a build
//!   host's hundreds of short-lived processes a second mostly fail).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};

use profiler_common::ExecGen;

use crate::files;
use crate::stack;

/// Processes whose generation is kept at most; the least recently sampled
/// go first (an LRU map is allocated whole: ~1.3 MiB).
const PROCESSES: u32 = 16_384;

#[map(name = "EXEC_GEN")]
static EXEC_GEN: LruHashMap<u32, ExecGen> = LruHashMap::with_max_entries(PROCESSES, 0);

/// An exec begins (`sched_prepare_exec(task, bprm)`, Linux 6.10+): the
/// old image's waiting frames are looked up while its mappings exist, its
/// file state goes, the generation moves on, and the `execve` call is
/// recorded for the samples taken inside it.
#[raw_tracepoint(tracepoint = "sched_prepare_exec")]
pub fn exec_begin(_ctx: RawTracePointContext) -> i32 {
    stack::entry(|_| {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let old = generation(tgid);
        files::flush(old);
        files::forget(tgid, old);
        bump();
        files::record_exec_call(generation(tgid));
        0
    })
}

/// An exec succeeded (`sched_process_exec(task, old_pid, bprm)`): the file
/// state of the image between the two bumps (samples inside `execve`) goes.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_done(_ctx: RawTracePointContext) -> i32 {
    stack::entry(|_| {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        files::forget(tgid, generation(tgid));
        bump();
        0
    })
}

/// Adds one to the current process's generation (an exec step: the exit
/// stamp of an earlier process of the same pid goes).
#[inline(always)]
pub fn bump() {
    bump_stamped(0);
}

/// The current process exits: its generation moves on, stamped with its
/// start (see [`ExecGen::exited_ticks`]).
#[inline(always)]
pub fn exited() {
    bump_stamped(stack::current_start_ticks());
}

/// Adds one to the current process's generation and sets its exit stamp
/// to `exited_ticks`. The tracepoints run in the exec'ing (or exiting)
/// task, whose tgid is the process's (after `de_thread`, the exec'ing
/// thread is the leader).
#[inline(always)]
fn bump_stamped(exited_ticks: u32) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(entry) = EXEC_GEN.get_ptr_mut(tgid) {
        // SAFETY: a live map value; only this process's own exec or exit
        // writes it, one at a time (an exec is one thread's; the exit is
        // the last thread's). The stamp first, in that order: userspace
        // copies the value unlocked, and an exec's new generation beside
        // an earlier holder's stamp would read as this process's exit.
        unsafe {
            core::ptr::addr_of_mut!((*entry).exited_ticks).write_volatile(exited_ticks);
            let generation = (*entry).generation.wrapping_add(1);
            core::ptr::addr_of_mut!((*entry).generation).write_volatile(generation);
        }
    } else {
        let entry = ExecGen {
            generation: 1,
            exited_ticks,
        };
        // Another exec of the same tgid cannot race this one.
        let _ = EXEC_GEN.insert(tgid, entry, BPF_NOEXIST as u64);
    }
}

/// The exec generation of `tgid` (0 before its first exec seen).
#[inline(always)]
pub fn generation(tgid: u32) -> u32 {
    // SAFETY: a plain read of a live map value.
    unsafe { EXEC_GEN.get(tgid) }.map_or(0, |entry| entry.generation)
}
