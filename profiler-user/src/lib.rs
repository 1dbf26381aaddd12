//! hostprof: a whole-host CPU profiler built on eBPF.
//!
//! Data flows one way, one module per stage:
//! [`sampler`] (kernel program, map drain) → [`symbolize`] (with
//! [`process`] memory-map snapshots) → [`profile`] (aggregated model) →
//! [`pprof`] / [`flamegraph`] (encoders). [`profiler`] wires the stages
//! together; [`system_info`] checks what the host provides.

pub mod aggregate;
pub mod flamegraph;
pub mod pprof;
pub mod process;
pub mod profile;
pub mod profiler;
pub mod sampler;
pub mod summary;
pub mod symbolize;
pub mod system_info;
