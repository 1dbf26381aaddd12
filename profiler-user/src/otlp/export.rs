//! Sends export requests to an OTLP profiles endpoint over gRPC (tonic,
//! `ProfilesService/Export`) or HTTP/protobuf (`POST /v1development/profiles`),
//! gzip-compressed by default.

use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use hostprof_proto::otlp::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use hostprof_proto::otlp::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use prost::Message;
use std::io::Write;
use tonic::transport::{Channel, ClientTlsConfig};

use super::config::{ExporterConfig, Protocol};
use super::retry::parse_retry_after;

/// Errors of one export attempt.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The endpoint is not a valid URL.
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The collector could not be reached or failed the gRPC call.
    #[error(
        "OTLP gRPC export to {endpoint} failed (is the collector running and listening there?)"
    )]
    Grpc {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::Status,
    },
    /// The gRPC channel could not be opened.
    #[error("cannot connect to the OTLP gRPC endpoint {endpoint} (is the collector running and listening there?)")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The HTTP request failed before a response.
    #[error("OTLP HTTP export to {url} failed (is the collector running and listening there?)")]
    Http {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP endpoint answered with an error status.
    #[error("OTLP HTTP export to {url} was refused with {status}: {body}")]
    HttpStatus {
        /// Where.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the response body.
        body: String,
        /// The server's `Retry-After`, when it sent one in seconds.
        retry_after: Option<std::time::Duration>,
    },
    /// The TLS settings cannot be used.
    #[error("cannot use the CA certificate {path}: {reason} (give a PEM file with --otlp-certificate or OTEL_EXPORTER_OTLP_CERTIFICATE)")]
    Certificate {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A response that is not an `ExportProfilesServiceResponse`.
    #[error("the OTLP endpoint {url} answered with something that is not an export response")]
    Decode {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
}

/// What the collector said about an accepted request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    /// Profiles the collector rejected (from `partial_success`).
    pub rejected_profiles: i64,
    /// The collector's message about the rejection, if any.
    pub message: String,
    /// Request size in bytes: over HTTP as sent (after gzip); over gRPC the
    /// encoded message before tonic compresses it.
    pub bytes_sent: usize,
}

/// An OTLP profiles exporter for one endpoint.
pub struct Exporter {
    config: ExporterConfig,
    http: reqwest::Client,
    /// The custom CA (PEM), for gRPC's TLS settings.
    ca_pem: Option<Vec<u8>>,
    /// The gRPC channel, opened by the first export that connects and then
    /// reused (tonic reconnects it on its own).
    channel: tokio::sync::OnceCell<Channel>,
}

impl Exporter {
    /// An exporter for `config`; reads the custom CA now (so a bad file is
    /// reported at start) and connects on the first export.
    pub fn new(config: ExporterConfig) -> Result<Self, ExportError> {
        // reqwest's rustls takes the process-wide crypto provider; keep one
        // the embedding program installed, else install ring (as tonic uses).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder();
        let mut ca_pem = None;
        if let Some(path) = &config.certificate {
            let bad = |reason: String| ExportError::Certificate {
                path: path.clone(),
                reason,
            };
            let pem = crate::input::read_file(path, crate::input::MAX_CERTIFICATE_BYTES)
                .map_err(|err| bad(err.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| bad(format!("not PEM certificates: {err}")))?;
            if certs.is_empty() {
                return Err(bad("it holds no PEM certificate".into()));
            }
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
            ca_pem = Some(pem);
        }
        let http = http.build().map_err(|source| ExportError::Http {
            url: config.http_url(),
            source,
        })?;
        Ok(Self {
            config,
            http,
            ca_pem,
            channel: tokio::sync::OnceCell::new(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ExporterConfig {
        &self.config
    }

    /// Sends one request.
    pub async fn export(
        &self,
        request: &ExportProfilesServiceRequest,
    ) -> Result<ExportOutcome, ExportError> {
        match self.config.protocol {
            Protocol::Grpc => self.export_grpc(request).await,
            Protocol::HttpProtobuf => self.export_http(request).await,
        }
    }

    async fn export_grpc(
        &self,
        request: &ExportProfilesServiceRequest,
    ) -> Result<ExportOutcome, ExportError> {
        let endpoint = self.config.endpoint.clone();
        let channel = self
            .channel
            .get_or_try_init(|| self.connect_grpc())
            .await?
            .clone();
        let mut client = ProfilesServiceClient::new(channel);
        if self.config.gzip {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        let mut call = tonic::Request::new(request.clone());
        for (key, value) in &self.config.headers {
            let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) else {
                return Err(ExportError::Endpoint {
                    endpoint,
                    reason: format!("header {key:?} is not a valid gRPC metadata entry"),
                });
            };
            call.metadata_mut().insert(key, value);
        }
        let bytes_sent = request.encoded_len();
        let response = client
            .export(call)
            .await
            .map_err(|source| ExportError::Grpc { endpoint, source })?
            .into_inner();
        Ok(outcome(response, bytes_sent))
    }

    async fn connect_grpc(&self) -> Result<Channel, ExportError> {
        let endpoint = &self.config.endpoint;
        let invalid = |reason: String| ExportError::Endpoint {
            endpoint: endpoint.clone(),
            reason,
        };
        let mut channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|err| invalid(err.to_string()))?
            .timeout(self.config.timeout)
            .connect_timeout(self.config.timeout);
        if channel.uri().scheme_str() == Some("https") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = &self.ca_pem {
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            channel = channel
                .tls_config(tls)
                .map_err(|err| invalid(format!("TLS settings: {err}")))?;
        }
        channel
            .connect()
            .await
            .map_err(|source| ExportError::Connect {
                endpoint: endpoint.clone(),
                source,
            })
    }

    async fn export_http(
        &self,
        request: &ExportProfilesServiceRequest,
    ) -> Result<ExportOutcome, ExportError> {
        let url = self.config.http_url();
        let mut body = request.encode_to_vec();
        let mut builder = self
            .http
            .post(&url)
            .timeout(self.config.timeout)
            .header("content-type", "application/x-protobuf");
        if self.config.gzip {
            body = gzip(&body);
            builder = builder.header("content-encoding", "gzip");
        }
        for (key, value) in &self.config.headers {
            builder = builder.header(key.as_str(), value.as_str());
        }
        let bytes_sent = body.len();
        let http_err = |source| ExportError::Http {
            url: url.clone(),
            source,
        };
        let response = builder.body(body).send().await.map_err(http_err)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(ExportError::HttpStatus {
                url,
                status,
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                retry_after,
            });
        }
        let response = ExportProfilesServiceResponse::decode(bytes)
            .map_err(|source| ExportError::Decode { url, source })?;
        Ok(outcome(response, bytes_sent))
    }
}

fn outcome(response: ExportProfilesServiceResponse, bytes_sent: usize) -> ExportOutcome {
    let partial = response.partial_success.unwrap_or_default();
    ExportOutcome {
        rejected_profiles: partial.rejected_profiles,
        message: partial.error_message,
        bytes_sent,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .expect("writing to a Vec cannot fail")
}

/// Default time one export may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
