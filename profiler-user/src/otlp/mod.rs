//! OTLP profiles export: [`builder`] turns a [`crate::profile::Profile`]
//! into an `ExportProfilesServiceRequest` for the [`host`] it comes from,
//! [`config`] resolves where and how to send it, [`export`] sends it over
//! gRPC or HTTP. [`outbox`] keeps sending requests as they come: they
//! wait in a [`queue`] bounded in count and bytes, and [`retry`] decides
//! whether and when a failed export is sent again.
//!
//! Nothing here depends on the `agent` module: the agent hands requests
//! to this one, never the other way round.

pub mod builder;
pub mod config;
pub mod export;
pub mod host;
pub mod outbox;
pub mod queue;
pub mod retry;

pub use builder::build_request;
pub use config::{ExporterConfig, ExporterFlags, Protocol};
pub use export::{ExportError, ExportOutcome, Exporter};
pub use host::HostIdentity;
