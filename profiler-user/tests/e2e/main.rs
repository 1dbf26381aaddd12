//! The privileged end-to-end tests, one test binary: each suite is a module
//! and `common` holds what they share. They load the real eBPF program
//! (root), compile the workloads of `tests/workloads` (gcc, rustc) and check
//! the output with independent decoders: Google's `pprof` tool, and the
//! official OpenTelemetry Python types (`otlp_receiver.py`). Without BPF
//! they fail with the reason, unless HOSTPROF_SKIP_BPF_TESTS=1 is set.
//!
//! Every test holds [`common::one_at_a_time`]: each profiles the whole host,
//! so it would see the others' workloads and agents.

mod common;
#[path = "../workloads/recipes.rs"]
mod workloads;

mod agent;
mod budget;
mod capabilities;
mod churn;
mod container;
mod hostile;
mod jit;
mod k8s;
mod locks;
mod memory;
mod off_cpu;
mod otlp;
mod page_faults;
mod python;
mod record;
mod stacks;
mod tenant;
mod trace;
mod unwind;
