//! hostprof's kernel side: one BPF object, one module per profile kind,
//! sharing the stack store and the unwinder.
//!
//! - [`sampled`]: the kinds a perf event samples: the CPU profile (CPU
//!   clock) and the page-fault profile (software `page-faults`), one chain
//!   of programs for both.
//! - [`off_cpu`]: the off-CPU profile, `tp_btf/sched_switch` (the
//!   bookkeeping of both threads of a switch) and `tp_btf/sched_exit_tp`
//!   or a kprobe on `finish_task_switch` (the stacks of a kept interval).
//! - [`locks`]: the kernel-lock contention profile,
//!   `tp_btf/contention_begin` and `contention_end`.
//! - [`memory`]: the memory profile, uprobes on each selected process's
//!   allocator: allocations sampled by bytes, and the live ones tracked
//!   until freed.
//! - [`wait`]: what the off-CPU and locks kinds share: duration sampling
//!   and recording a kept wait with its stacks (the memory kind records
//!   its sampled allocations with it too).
//! - [`stack`]: what every kind shares: the configuration, the counters, the
//!   process announcements and the double-buffered stack maps.
//! - [`unwind`]: the table unwinder of user stacks, shared too.
//! - [`files`]: the file mapping of each sampled user frame, for
//!   every kind, by tail call.
//! - [`exec`]: exec generations, which image of a process a sample was
//!   taken in.
//! - [`trace`]: the trace and span the sampled thread runs in.
//! - [`python`]: the CPython frames of a sampled thread, appended to its
//!   unwound user stack.
//! - [`kernel_names`]: names of kernel code addresses for userspace's
//!   kernel frames, run by userspace rather than attached.
//!
//! Every kind writes into the map set `CONFIG` names; userspace flips it
//! and drains the other set (stacks are shared, so a stack seen by several
//! kinds is stored once).
#![no_std]
#![no_main]
// The atomic add of a sample's count (`sampled::add_one`): the BPF
// target's `core` atomics are load and store only.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod exec;
mod files;
mod kernel_names;
mod locks;
mod memory;
mod off_cpu;
mod python;
mod sampled;
mod stack;
mod task_storage;
mod trace;
mod unwind;
mod wait;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
