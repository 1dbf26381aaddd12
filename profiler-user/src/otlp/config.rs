//! Exporter settings from the OpenTelemetry SDK environment variables and
//! command-line flags. Precedence, highest first: flag, the profiles-specific
//! variable (`OTEL_EXPORTER_OTLP_PROFILES_*`), the generic one
//! (`OTEL_EXPORTER_OTLP_*`), the default. A variable set to an empty value
//! counts as unset, as the OpenTelemetry specification says.

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
                what: "OTLP protocol".into(),
                value: other.to_owned(),
                expected: "grpc or http/protobuf".into(),
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
        /// Which setting: the variable or flag, when known.
        what: String,
        /// The value given.
        value: String,
        /// What would be accepted.
        expected: String,
    },
}

impl ConfigError {
    /// The error, said of `setting` (an environment variable, say).
    fn of(self, setting: &str) -> Self {
        match self {
            ConfigError::Invalid {
                value, expected, ..
            } => ConfigError::Invalid {
                what: setting.to_owned(),
                value,
                expected,
            },
        }
    }
}

/// The value of the variable `name` as `env` reads it, `None` when it is
/// unset or empty (the OpenTelemetry specification: an empty value means
/// unset).
pub fn env_value(env: impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// Checks that `endpoint` is an OTLP endpoint URL: `http://` or
/// `https://`, a host, and a port (when given) from 1 to 65535. The error
/// says what is expected.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP)";
    let url = match url::Url::parse(endpoint.trim()) {
        Ok(url) => url,
        Err(url::ParseError::InvalidPort) => {
            return Err(format!("a port from 1 to 65535, {EXAMPLE}"))
        }
        Err(err) => return Err(format!("a URL ({err}), {EXAMPLE}")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "a URL starting with http:// or https://, {EXAMPLE}"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("a URL with a host, {EXAMPLE}"));
    }
    if url.port() == Some(0) {
        return Err(format!("a port from 1 to 65535, {EXAMPLE}"));
    }
    Ok(())
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
    /// Settings from `flags` over the environment as read by `env`. An
    /// error names the variable (or the setting) at fault.
    pub fn resolve(
        flags: &ExporterFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // (value, variable, whether it is the profiles-specific one); an
        // empty specific variable defers to the generic one.
        let var = |name: &str| {
            let specific = format!("OTEL_EXPORTER_OTLP_PROFILES_{name}");
            let generic = format!("OTEL_EXPORTER_OTLP_{name}");
            env_value(&env, &specific)
                .map(|v| (v, specific, true))
                .or_else(|| env_value(&env, &generic).map(|v| (v, generic, false)))
        };
        let protocol = match (flags.protocol, var("PROTOCOL")) {
            (Some(p), _) => p,
            (None, Some((v, name, _))) => v.parse().map_err(|err: ConfigError| err.of(&name))?,
            (None, None) => Protocol::Grpc,
        };
        let (endpoint, from, path_included) = match (&flags.endpoint, var("ENDPOINT")) {
            (Some(e), _) => (e.clone(), ENDPOINT_SETTING.to_owned(), false),
            (None, Some((e, name, specific))) => {
                (e, name, specific && protocol == Protocol::HttpProtobuf)
            }
            (None, None) => match protocol {
                Protocol::Grpc => ("http://localhost:4317".to_owned(), String::new(), false),
                Protocol::HttpProtobuf => {
                    ("http://localhost:4318".to_owned(), String::new(), false)
                }
            },
        };
        if let Err(expected) = check_endpoint(&endpoint) {
            return Err(ConfigError::Invalid {
                what: from,
                value: endpoint,
                expected,
            });
        }
        let mut headers = match var("HEADERS") {
            Some((v, name, _)) => parse_key_values(&v, &name)?,
            None => Vec::new(),
        };
        headers.extend(flags.headers.iter().cloned());
        let gzip = match var("COMPRESSION") {
            None => true,
            Some((v, _, _)) if v.trim() == "gzip" => true,
            Some((v, _, _)) if v.trim() == "none" => false,
            Some((v, name, _)) => {
                return Err(ConfigError::Invalid {
                    what: name,
                    value: v,
                    expected: "gzip or none".into(),
                })
            }
        };
        let timeout = match var("TIMEOUT") {
            None => super::export::DEFAULT_TIMEOUT,
            Some((v, name, _)) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::Invalid {
                        what: name,
                        value: v,
                        expected: format!(
                            "a whole number of milliseconds above 0, e.g. {} (the default)",
                            super::export::DEFAULT_TIMEOUT.as_millis()
                        ),
                    })
                }
            },
        };
        let certificate = flags
            .certificate
            .clone()
            .or_else(|| var("CERTIFICATE").map(|(v, _, _)| PathBuf::from(v.trim())));
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

    /// True when an endpoint is set in `flags` or in the environment (an
    /// empty variable is unset).
    pub fn endpoint_configured(
        flags: &ExporterFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> bool {
        flags.endpoint.is_some()
            || env_value(&env, "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT").is_some()
            || env_value(&env, "OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
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

/// How errors name the endpoint setting of [`ExporterFlags`].
const ENDPOINT_SETTING: &str = "OTLP endpoint (--otlp-endpoint, otlp_endpoint)";

/// Parses `k1=v1,k2=v2` (W3C baggage style, values percent-decoded), the
/// format of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`;
/// an error names `setting`, where the list comes from.
pub fn parse_key_values(s: &str, setting: &str) -> Result<Vec<(String, String)>, ConfigError> {
    s.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| ConfigError::Invalid {
                    what: format!("{setting} entry"),
                    value: pair.to_owned(),
                    expected: "key=value, in a comma-separated list such as \
                               team=shop,env=prod (values may be percent-encoded)"
                        .into(),
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
        assert!(parse_key_values("novalue", "X").is_err());
        assert_eq!(percent_decode("a%2Cb%"), "a,b%");
    }

    /// The message of resolving with `vars` and no flags.
    fn error(vars: &[(&str, &str)]) -> String {
        resolve(&ExporterFlags::default(), vars)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        assert_eq!(
            error(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]),
            "invalid OTEL_EXPORTER_OTLP_TIMEOUT \"0\": expected a whole number of \
             milliseconds above 0, e.g. 10000 (the default)"
        );
        assert!(error(&[("OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT", "soon")])
            .starts_with("invalid OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT \"soon\""));
        assert_eq!(
            error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:99999")]),
            "invalid OTEL_EXPORTER_OTLP_ENDPOINT \"http://localhost:99999\": expected a port \
             from 1 to 65535, e.g. http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP)"
        );
        assert!(
            error(&[("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "http://h:0")])
                .contains("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT \"http://h:0\": expected a port")
        );
        assert!(error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://")]).contains("host"));
        assert!(error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://h:21")]).contains("http://"));
        assert!(error(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "udp")])
            .starts_with("invalid OTEL_EXPORTER_OTLP_PROTOCOL \"udp\""));
        assert!(error(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")])
            .starts_with("invalid OTEL_EXPORTER_OTLP_COMPRESSION \"zstd\""));
        assert!(error(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b")])
            .starts_with("invalid OTEL_EXPORTER_OTLP_HEADERS entry \"b\": expected key=value"));
        let flags = ExporterFlags {
            endpoint: Some("http://collector:99999".into()),
            ..ExporterFlags::default()
        };
        let err = resolve(&flags, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid OTLP endpoint (--otlp-endpoint, otlp_endpoint)"),
            "{err}"
        );
        assert!(check_endpoint("https://collector.example:4317/").is_ok());
        assert!(check_endpoint("http://[::1]:4318").is_ok());
        assert!(check_endpoint("http://localhost").is_ok());
    }

    #[test]
    fn empty_variables_are_unset() {
        let unset = ExporterConfig::resolve(&ExporterFlags::default(), |_| None).unwrap();
        for name in [
            "ENDPOINT",
            "PROTOCOL",
            "HEADERS",
            "COMPRESSION",
            "TIMEOUT",
            "CERTIFICATE",
        ] {
            for prefix in ["OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_PROFILES_"] {
                let var = format!("{prefix}{name}");
                for empty in ["", "  "] {
                    let c = resolve(&ExporterFlags::default(), &[(var.as_str(), empty)]);
                    assert_eq!(c.as_ref(), Ok(&unset), "{var}={empty:?}");
                }
            }
        }
        // An empty specific variable defers to the generic one.
        let c = resolve(
            &ExporterFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", ""),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ],
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://generic:4317");
        let vars: HashMap<&str, &str> = [("OTEL_EXPORTER_OTLP_ENDPOINT", "")].into();
        let env = |k: &str| vars.get(k).map(|v| v.to_string());
        assert!(!ExporterConfig::endpoint_configured(
            &ExporterFlags::default(),
            env
        ));
    }
}
