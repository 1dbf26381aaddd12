//! The trace context of the sampled thread: which trace and span it was
//! running in, so a profile sample links to the request it served.
//!
//! Source: the OpenTelemetry eBPF instrumentation's shared map
//! (`traces_ctx_v1`, `pid_tgid` → trace id + span id). Userspace reuses the
//! node's pinned map, or creates and pins it so an instrumentation started
//! later fills it; with [`Config::TRACE_CONTEXT_MAP`] clear (turned off, or
//! a pinned map of another shape) nothing is looked up.
//!
//! One lookup per sample, in the context of the sampled thread (the CPU
//! program runs in the interrupted task, the off-CPU switch-in in the task
//! that got the CPU back).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};
use profiler_common::{Config, TraceContext, TRACE_CONTEXT_MAP_ENTRIES};

/// Userspace points this at the pinned map when there is one (the loader
/// opens the pin instead of creating the map).
#[map(name = "traces_ctx_v1")]
static TRACES_CTX: LruHashMap<u64, TraceContext> =
    LruHashMap::with_max_entries(TRACE_CONTEXT_MAP_ENTRIES, 0);

/// The current thread's trace context, zero when none is known.
#[inline(always)]
pub fn current(config: &Config) -> TraceContext {
    if config.flags & Config::TRACE_CONTEXT_MAP != 0 {
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: the value is copied out at once; an instrumentation
        // rewriting it meanwhile can at worst give a torn (trace, span)
        // pair for this one sample, never an invalid read.
        if let Some(context) = unsafe { TRACES_CTX.get(&pid_tgid) } {
            return *context;
        }
    }
    TraceContext::default()
}
