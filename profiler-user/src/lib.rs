//! hostprof: a whole-host continuous profiler built on eBPF.
//!
//! Data flows one way, one stage per module, each handing the next a
//! narrow type: the kernel programs → `sampler` (exact map drain, decoded
//! samples of a [`kind::ProfileKind`]) → `process` (memory-map snapshots)
//! → [`filter`] → `aggregate` (merge) → `resolve` (symbolize) →
//! [`profile`] (the model, one [`Profile`] per kind) → encoders
//! ([`pprof`], [`flamegraph`], [`summary`], [`otlp`]) → the OTLP
//! [`otlp::Exporter`]. [`Profiler`] wires the stages together and is the
//! entry point; [`agent`] runs it continuously.
//!
//! Capture the whole host for ten seconds, write pprof and export over
//! OTLP:
//!
//! ```no_run
//! # async fn capture() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use hostprof::otlp::{build_request, Exporter, ExporterConfig, ExporterFlags, HostIdentity};
//! use hostprof::{Profiler, ProfilerOptions};
//!
//! let mut profiler = Profiler::start(ProfilerOptions::default())?;
//! profiler
//!     .run_until(tokio::time::sleep(Duration::from_secs(10)), |_progress| {})
//!     .await?;
//! // One profile per kind asked for: the CPU profile by default.
//! let profiles = profiler.finish()?;
//! hostprof::pprof::write_file(&profiles[0], "host.pb.gz".as_ref())?;
//!
//! let flags = ExporterFlags {
//!     endpoint: Some("http://localhost:4317".into()),
//!     ..ExporterFlags::default()
//! };
//! // Flags over the `OTEL_EXPORTER_OTLP_*` environment.
//! let config = ExporterConfig::resolve(&flags, |name| std::env::var(name).ok())?;
//! let request = build_request(&profiles, &HostIdentity::detect(None)?);
//! Exporter::new(config)?.export(&request).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`settings`] is the one model of every setting of `hostprof record` and
//! `hostprof agent` (flags, config file, environment, defaults).
//!
//! [`system_info`] checks what the host provides; [`input`] reads the
//! files it is pointed at within a size limit.
//!
//! [`text`] escapes the names tenants control (symbols, process, thread
//! and file names) for every text output.

pub mod agent;
mod aggregate;
mod build_id;
pub mod container;
pub mod filter;
pub mod flamegraph;
// The fuzz targets' entry points (fuzz/), not part of the interface.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod input;
pub mod k8s;
pub mod kind;
pub mod locks;
mod memory;
pub mod otlp;
mod overhead;
pub mod pprof;
mod pread;
mod process;
pub mod profile;
pub mod profiler;
mod resolve;
mod sampler;
pub mod settings;
pub mod summary;
mod symbolize;
pub mod system_info;
pub mod text;
pub mod trace_link;
pub mod unwind;
pub mod wait;

pub use kind::ProfileKind;

/// The hash map of the per-sample and per-frame paths: foldhash, seeded
/// per process (std's SipHash cost 4-5 % of the agent's CPU there).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use profile::Profile;
pub use profiler::{Profiler, ProfilerError, ProfilerOptions};
