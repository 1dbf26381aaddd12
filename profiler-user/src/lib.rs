//! hostprof: a whole-host CPU profiler built on eBPF.
//!
//! Data flows one way, one module per stage:
//! [`sampler`] (kernel program, exact map drain) → [`aggregate`] (merge
//! raw samples; at the end resolve addresses with [`process`] memory-map
//! snapshots and [`symbolize`] them) → [`profile`] (the symbolized model) →
//! [`pprof`] / [`flamegraph`] / [`summary`] (outputs).
//!
//! [`profiler::Profiler`] wires the stages together and is the entry point:
//!
//! ```no_run
//! # async fn capture() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use hostprof::profiler::{Profiler, ProfilerOptions};
//!
//! let mut profiler = Profiler::start(ProfilerOptions::default())?;
//! profiler
//!     .run_until(tokio::time::sleep(Duration::from_secs(10)), |_progress| {})
//!     .await?;
//! let profile = profiler.finish()?;
//! hostprof::pprof::write_file(&profile, "host.pb.gz".as_ref())?;
//! # Ok(())
//! # }
//! ```
//!
//! [`settings`] is the one model of every setting of `hostprof record` and
//! `hostprof agent` (flags, config file, environment, defaults).
//!
//! [`system_info`] checks what the host provides.

pub mod agent;
pub mod aggregate;
pub mod container;
pub mod filter;
pub mod flamegraph;
pub mod k8s;
pub mod kind;
pub mod otlp;
pub mod pprof;
pub mod process;
pub mod profile;
pub mod profiler;
pub mod sampler;
pub mod settings;
pub mod summary;
pub mod symbolize;
pub mod system_info;
pub mod unwind;
