//! The trace context of the sampled thread: which trace and span it was
//! running in, so a profile sample links to the request it served.
//!
//! Sources, in order:
//! 1. The OpenTelemetry eBPF instrumentation's shared map (`traces_ctx_v1`,
//!    `pid_tgid` → trace id + span id). Userspace reuses the node's pinned
//!    map, or creates and pins it so an instrumentation started later
//!    fills it; with [`Config::TRACE_CONTEXT_MAP`] clear (turned off, or a
//!    pinned map of another shape) nothing is looked up.
//! 2. The thread context an OpenTelemetry SDK publishes in the process
//!    (OTEP 4947): a thread-local pointer `otel_thread_ctx_v1` to a record
//!    that starts with the trace id, the span id and a `valid` byte.
//!    Userspace finds where each publishing process keeps the pointer
//!    (`THREAD_CONTEXTS`); here it is read from the thread's own TLS, in
//!    static TLS at a fixed offset from the thread pointer or through the
//!    thread's DTV. The spec asks readers to read only a stopped or
//!    interrupted thread: the CPU program interrupts it, the off-CPU
//!    switch-in runs before it returns to user space.
//!
//! Lookups run in the context of the sampled thread (the CPU program runs
//! in the interrupted task, the off-CPU switch-in in the task that got the
//! CPU back).

use crate::exec;
use crate::stack::{self, read_user};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
};
use profiler_common::{
    Config, ThreadContextLocation, TraceContext, THREAD_CONTEXT_HEADER, THREAD_CONTEXT_VALID,
    TRACE_CONTEXT_MAP_ENTRIES,
};

/// Userspace points this at the pinned map when there is one (the loader
/// opens the pin instead of creating the map).
#[map(name = "traces_ctx_v1")]
static TRACES_CTX: LruHashMap<u64, TraceContext> =
    LruHashMap::with_max_entries(TRACE_CONTEXT_MAP_ENTRIES, 0);

/// Processes that publish thread context, by tgid (set by userspace):
/// allocated as they are added, as few processes publish any.
#[map(name = "THREAD_CONTEXTS")]
static THREAD_CONTEXTS: HashMap<u32, ThreadContextLocation> =
    HashMap::with_max_entries(TRACE_CONTEXT_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// glibc x86-64: `tcbhead_t.dtv`, the thread's DTV pointer, 8 bytes past
/// the thread pointer; each DTV entry is 16 bytes (block pointer, then
/// the pointer to free).
const DTV_POINTER: u64 = 8;
const DTV_ENTRY: u64 = 16;
/// glibc's `TLS_DTV_UNALLOCATED`: the module's block is not allocated for
/// this thread yet.
const DTV_UNALLOCATED: u64 = u64::MAX;

/// The current thread's trace context, zero when none is known.
#[inline(always)]
pub fn current(config: &Config) -> TraceContext {
    let pid_tgid = bpf_get_current_pid_tgid();
    if config.flags & Config::TRACE_CONTEXT_MAP != 0 {
        // SAFETY: the value is copied out at once; an instrumentation
        // rewriting it meanwhile can at worst give a torn (trace, span)
        // pair for this one sample, never an invalid read.
        if let Some(context) = unsafe { TRACES_CTX.get(&pid_tgid) } {
            // An all-zero trace id is no context (W3C): the next source
            // may have one.
            let context = *context;
            if context.trace_id.iter().fold(0, |any, byte| any | byte) != 0 {
                return context;
            }
        }
    }
    if config.flags & Config::THREAD_CONTEXT != 0 {
        if let Some(context) = thread_context(config, (pid_tgid >> 32) as u32) {
            return context;
        }
    }
    TraceContext::default()
}

/// The context the SDK of process `tgid` published for the current
/// thread, if it publishes one and the thread's record is valid.
#[inline(always)]
fn thread_context(config: &Config, tgid: u32) -> Option<TraceContext> {
    // SAFETY: copied out at once; userspace only replaces whole entries.
    let location = unsafe { *THREAD_CONTEXTS.get(&tgid)? };
    if location.exec_gen != exec::generation(tgid) {
        return None; // found in the image before an exec
    }
    let fsbase = stack::thread_pointer(config)?;
    let variable = match location.kind {
        ThreadContextLocation::STATIC => fsbase.wrapping_add(location.tp_offset as u64),
        ThreadContextLocation::DTV => {
            let dtv = read_user(fsbase.wrapping_add(DTV_POINTER))?;
            let block = read_user(dtv.wrapping_add(location.module_id.wrapping_mul(DTV_ENTRY)))?;
            if block == 0 || block == DTV_UNALLOCATED {
                return None;
            }
            block.wrapping_add(location.offset)
        }
        _ => return None,
    };
    let record = read_user(variable)?;
    if record == 0 {
        return None; // the thread runs in no span now
    }
    // SAFETY: bpf_probe_read_user copies from user memory and fails
    // (rather than faulting) on an address it cannot read.
    let header: [u8; THREAD_CONTEXT_HEADER] =
        unsafe { bpf_probe_read_user(record as *const [u8; THREAD_CONTEXT_HEADER]) }.ok()?;
    if header[THREAD_CONTEXT_VALID] != 1 {
        return None; // being written, or reserved: ignored (OTEP 4947)
    }
    let mut context = TraceContext::default();
    context.trace_id.copy_from_slice(&header[..16]);
    context.span_id.copy_from_slice(&header[16..24]);
    Some(context)
}
