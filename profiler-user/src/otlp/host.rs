//! Who is reporting: the host's identity, detected once at start and put
//! on every exported resource by [`super::builder`].

use super::config::{env_value, parse_key_values, ConfigError};

/// What identifies the host (and the agent) on every resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostIdentity {
    /// `host.name`.
    pub host_name: String,
    /// `host.id` (the machine id), when known.
    pub host_id: Option<String>,
    /// Extra resource attributes (e.g. from `OTEL_RESOURCE_ATTRIBUTES`,
    /// `service.name` from `OTEL_SERVICE_NAME`), added to every resource.
    pub extra: Vec<(String, String)>,
}

impl HostIdentity {
    /// This host's identity: `host.name` from the kernel, `host.id` from
    /// `/etc/machine-id`, `service.name` from `OTEL_SERVICE_NAME`,
    /// `k8s.node.name` from `node_name` (the resolved node-name setting)
    /// and other attributes from `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn detect(node_name: Option<&str>) -> Result<Self, ConfigError> {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Self::from_sources(
            read("/proc/sys/kernel/hostname"),
            read("/etc/machine-id"),
            node_name,
            |name| std::env::var(name).ok(),
        )
    }

    /// The identity from the contents of the hostname and machine-id files
    /// (`None` when unreadable) and from the environment as `env` reports
    /// it; [`Self::detect`] without the I/O.
    fn from_sources(
        hostname: Option<String>,
        machine_id: Option<String>,
        node_name: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let clean = |s: Option<String>| {
            s.map(|s| s.trim().to_owned())
                .filter(|s: &String| !s.is_empty())
        };
        let mut extra = match env_value(&env, "OTEL_RESOURCE_ATTRIBUTES") {
            Some(v) => parse_key_values(&v, "OTEL_RESOURCE_ATTRIBUTES")?,
            None => Vec::new(),
        };
        // The specific settings win over the generic list.
        for (value, key) in [
            (node_name.map(str::to_owned), "k8s.node.name"),
            (env("OTEL_SERVICE_NAME"), "service.name"),
        ] {
            if let Some(value) = value.filter(|s| !s.is_empty()) {
                extra.retain(|(k, _)| k != key);
                extra.push((key.into(), value));
            }
        }
        Ok(Self {
            host_name: clean(hostname).unwrap_or_else(|| "unknown".into()),
            host_id: clean(machine_id),
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn identity(
        hostname: Option<&str>,
        machine_id: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<HostIdentity, ConfigError> {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        // The node-name setting, as `NODE_NAME` would give it.
        HostIdentity::from_sources(
            hostname.map(Into::into),
            machine_id.map(Into::into),
            vars.get("NODE_NAME").copied(),
            |name| vars.get(name).map(|v| (*v).to_owned()),
        )
    }

    #[test]
    fn files_are_trimmed_and_empty_ones_count_as_missing() {
        let id = identity(Some("node-1\n"), Some(" abc123\n"), &[]).unwrap();
        assert_eq!(
            id,
            HostIdentity {
                host_name: "node-1".into(),
                host_id: Some("abc123".into()),
                extra: vec![],
            }
        );
        let id = identity(None, Some("\n"), &[]).unwrap();
        assert_eq!(id.host_name, "unknown");
        assert_eq!(id.host_id, None);
    }

    #[test]
    fn specific_variables_override_resource_attributes() {
        let id = identity(
            Some("h"),
            None,
            &[
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=old,k8s.node.name=old,team=a%20b",
                ),
                ("NODE_NAME", "node-7"),
                ("OTEL_SERVICE_NAME", "checkout"),
            ],
        )
        .unwrap();
        assert_eq!(
            id.extra,
            [
                ("team".to_owned(), "a b".to_owned()),
                ("k8s.node.name".to_owned(), "node-7".to_owned()),
                ("service.name".to_owned(), "checkout".to_owned()),
            ]
        );
        let id = identity(
            Some("h"),
            None,
            &[
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=kept"),
                ("OTEL_SERVICE_NAME", ""),
            ],
        )
        .unwrap();
        assert_eq!(id.extra, [("service.name".to_owned(), "kept".to_owned())]);
    }

    #[test]
    fn malformed_resource_attributes_are_an_error() {
        let err = identity(Some("h"), None, &[("OTEL_RESOURCE_ATTRIBUTES", "novalue")]);
        assert!(
            matches!(err, Err(ConfigError::Invalid { ref value, .. }) if value == "novalue"),
            "{err:?}"
        );
        // The message names the variable, and what it should hold.
        let message = err.unwrap_err().to_string();
        assert!(
            message.starts_with(
                "invalid OTEL_RESOURCE_ATTRIBUTES entry \"novalue\": expected key=value"
            ),
            "{message}"
        );
        let err = identity(Some("h"), None, &[("OTEL_RESOURCE_ATTRIBUTES", "a=1,=2")]);
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("OTEL_RESOURCE_ATTRIBUTES"));
    }
}
