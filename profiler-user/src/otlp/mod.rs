//! OTLP profiles export: [`builder`] turns a [`crate::profile::Profile`]
//! into an `ExportProfilesServiceRequest`, [`config`] resolves where and
//! how to send it, [`export`] sends it over gRPC or HTTP.

pub mod builder;
pub mod config;
pub mod export;

pub use builder::{build_request, HostIdentity};
pub use config::{ExporterConfig, ExporterFlags, Protocol};
pub use export::{ExportError, ExportOutcome, Exporter};

impl HostIdentity {
    /// This host's identity: `host.name` from the kernel, `host.id` from
    /// `/etc/machine-id`, `service.name` from `OTEL_SERVICE_NAME`,
    /// `k8s.node.name` from `node_name` (the resolved node name setting)
    /// and other attributes from `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn detect(node_name: Option<&str>) -> Result<Self, config::ConfigError> {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let mut extra = match std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
            Ok(v) => config::parse_headers(&v)?,
            Err(_) => Vec::new(),
        };
        if let Some(node) = node_name.filter(|s| !s.is_empty()) {
            extra.retain(|(k, _)| k != "k8s.node.name");
            extra.push(("k8s.node.name".into(), node.to_owned()));
        }
        if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
        {
            extra.retain(|(k, _)| k != "service.name");
            extra.push(("service.name".into(), name));
        }
        Ok(Self {
            host_name: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            host_id: read("/etc/machine-id"),
            extra,
        })
    }
}
