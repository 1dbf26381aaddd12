//! Exporter settings from the OpenTelemetry SDK environment variables and
//! command-line flags. Precedence, highest first: flag, the profiles-specific
//! variable (`OTEL_EXPORTER_OTLP_PROFILES_*`), the generic one
//! (`OTEL_EXPORTER_OTLP_*`), the default.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Wire protocol of the exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Protocol {
    /// gRPC, `ProfilesService/Export` (default port 4317).
    Grpc,
    /// HTTP with a protobuf body, `POST /v1development/profiles` (default port 4318).
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            other => Err(ConfigError::Invalid {
                what: "OTLP protocol",
                value: other.to_owned(),
                expected: "grpc or http/protobuf",
            }),
        }
    }
}

impl TryFrom<String> for Protocol {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

impl From<Protocol> for String {
    fn from(protocol: Protocol) -> String {
        protocol.to_string()
    }
}

/// A setting that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value of the wrong form.
    #[error("invalid {what} {value:?}: expected {expected}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
}

/// Where and how to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterConfig {
    /// Endpoint URL (`http://host:port`, or a full URL for HTTP when
    /// `path_included`).
    pub endpoint: String,
    /// True when `endpoint` already names the HTTP path.
    pub path_included: bool,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Extra headers (authentication, tenancy).
    pub headers: Vec<(String, String)>,
    /// Compress requests with gzip.
    pub gzip: bool,
    /// Time one export may take.
    pub timeout: Duration,
    /// PEM file of the CA that signed the collector's certificate (for
    /// `https://` endpoints signed by a private CA); the system's roots
    /// are trusted either way.
    pub certificate: Option<PathBuf>,
}

/// Settings given on the command line; `None` defers to the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExporterFlags {
    /// `--otlp-endpoint`.
    pub endpoint: Option<String>,
    /// `--otlp-protocol`.
    pub protocol: Option<Protocol>,
    /// `--otlp-header K=V`, added to the environment's headers.
    pub headers: Vec<(String, String)>,
    /// `--otlp-certificate PATH`.
    pub certificate: Option<PathBuf>,
}

/// Path of the profiles signal for HTTP.
pub const HTTP_PATH: &str = "/v1development/profiles";

impl ExporterConfig {
    /// Settings from `flags` over the environment as read by `env`.
    pub fn resolve(
        flags: &ExporterFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let var = |name: &str| {
            env(&format!("OTEL_EXPORTER_OTLP_PROFILES_{name}"))
                .map(|v| (v, true))
                .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{name}")).map(|v| (v, false)))
                .filter(|(v, _)| !v.trim().is_empty())
        };
        let protocol = match (flags.protocol, var("PROTOCOL")) {
            (Some(p), _) => p,
            (None, Some((v, _))) => v.parse()?,
            (None, None) => Protocol::Grpc,
        };
        let (endpoint, path_included) = match (&flags.endpoint, var("ENDPOINT")) {
            (Some(e), _) => (e.clone(), false),
            (None, Some((e, specific))) => (e, specific && protocol == Protocol::HttpProtobuf),
            (None, None) => match protocol {
                Protocol::Grpc => ("http://localhost:4317".to_owned(), false),
                Protocol::HttpProtobuf => ("http://localhost:4318".to_owned(), false),
            },
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                what: "OTLP endpoint",
                value: endpoint,
                expected: "a URL starting with http:// or https://, e.g. http://localhost:4317",
            });
        }
        let mut headers = match var("HEADERS") {
            Some((v, _)) => parse_headers(&v)?,
            None => Vec::new(),
        };
        headers.extend(flags.headers.iter().cloned());
        let gzip = match var("COMPRESSION").map(|(v, _)| v) {
            None => true,
            Some(v) if v.trim() == "gzip" => true,
            Some(v) if v.trim() == "none" => false,
            Some(v) => {
                return Err(ConfigError::Invalid {
                    what: "OTLP compression",
                    value: v,
                    expected: "gzip or none",
                })
            }
        };
        let timeout = match var("TIMEOUT") {
            None => super::export::DEFAULT_TIMEOUT,
            Some((v, _)) => {
                Duration::from_millis(v.trim().parse().map_err(|_| ConfigError::Invalid {
                    what: "OTLP timeout",
                    value: v.clone(),
                    expected: "a whole number of milliseconds",
                })?)
            }
        };
        let certificate = flags
            .certificate
            .clone()
            .or_else(|| var("CERTIFICATE").map(|(v, _)| PathBuf::from(v.trim())));
        Ok(Self {
            endpoint,
            path_included,
            protocol,
            headers,
            gzip,
            timeout,
            certificate,
        })
    }

    /// The URL HTTP exports are posted to.
    pub fn http_url(&self) -> String {
        if self.path_included || self.endpoint.trim_end_matches('/').ends_with(HTTP_PATH) {
            self.endpoint.clone()
        } else {
            format!("{}{HTTP_PATH}", self.endpoint.trim_end_matches('/'))
        }
    }
}

/// Parses `k1=v1,k2=v2` (W3C baggage style, values percent-decoded), the
/// format of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    s.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| ConfigError::Invalid {
                what: "key=value list entry",
                value: pair.to_owned(),
                expected: "key=value",
            })?;
            Ok((percent_decode(k.trim()), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(
        flags: &ExporterFlags,
        vars: &[(&str, &str)],
    ) -> Result<ExporterConfig, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ExporterConfig::resolve(flags, |k| vars.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = resolve(&ExporterFlags::default(), &[]).unwrap();
        assert_eq!(c.endpoint, "http://localhost:4317");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert!(c.gzip);
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c = resolve(
            &ExporterFlags::default(),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
        )
        .unwrap();
        assert_eq!(c.http_url(), "http://localhost:4318/v1development/profiles");
    }

    #[test]
    fn precedence_flag_then_specific_then_generic() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
                "http://specific:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20x,tenant=a",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/env/ca.pem"),
        ];
        let c = resolve(&ExporterFlags::default(), &vars).unwrap();
        assert_eq!(
            c.http_url(),
            "http://specific:4318/custom",
            "specific URL used as is"
        );
        assert_eq!(
            c.headers,
            vec![
                ("authorization".into(), "Bearer x".into()),
                ("tenant".into(), "a".into())
            ]
        );
        assert!(!c.gzip);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.certificate, Some(PathBuf::from("/env/ca.pem")));
        let generic = resolve(&ExporterFlags::default(), &vars[..1]).unwrap();
        assert_eq!(generic.endpoint, "http://generic:4318");
        let flags = ExporterFlags {
            endpoint: Some("http://flag:4317".into()),
            protocol: Some(Protocol::Grpc),
            headers: vec![("x".into(), "y".into())],
            certificate: Some("/flag/ca.pem".into()),
        };
        let c = resolve(&flags, &vars).unwrap();
        assert_eq!(c.endpoint, "http://flag:4317");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.headers.last(), Some(&("x".into(), "y".into())));
        assert_eq!(c.certificate, Some(PathBuf::from("/flag/ca.pem")));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = resolve(
            &ExporterFlags::default(),
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("grpc or http/protobuf"), "{err}");
        let err = resolve(
            &ExporterFlags::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        assert!(resolve(
            &ExporterFlags::default(),
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]
        )
        .is_err());
        assert!(resolve(
            &ExporterFlags::default(),
            &[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]
        )
        .is_err());
        assert!(parse_headers("novalue").is_err());
        assert_eq!(percent_decode("a%2Cb%"), "a,b%");
    }
}
