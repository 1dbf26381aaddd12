//! Sends export requests to an OTLP profiles endpoint over gRPC (tonic,
//! `ProfilesService/Export`) or HTTP/protobuf (`POST /v1development/profiles`),
//! gzip-compressed by default.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::FutureExt as _;
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
    /// A header (`--otlp-header`, `OTEL_EXPORTER_OTLP_HEADERS`) the
    /// transport cannot send.
    #[error(
        "the OTLP header {name:?} cannot be sent over {protocol}: {reason} \
         (fix it in --otlp-header or OTEL_EXPORTER_OTLP_HEADERS, where values are percent-encoded)"
    )]
    Header {
        /// The header's name (its value may be a secret and is not shown).
        name: String,
        /// The transport.
        protocol: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A response larger than [`MAX_RESPONSE_BYTES`]: an export response
    /// is a few bytes, so whatever sent it is not a working collector.
    #[error(
        "the OTLP endpoint {endpoint} answered with more than {}, the most hostprof reads \
         of a response (an export response is a few bytes): is it an OTLP collector?",
        crate::input::size(*limit)
    )]
    ResponseTooLarge {
        /// Where.
        endpoint: String,
        /// The limit in bytes.
        limit: usize,
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

/// Most bytes of a collector's response that are read: an
/// `ExportProfilesServiceResponse` is a few bytes (a `partial_success`
/// message at most), so a larger one is refused rather than held.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Most bytes of an error response's body that are read, for the message.
const ERROR_BODY_BYTES: usize = 1 << 10;

/// Bytes of an error response's body shown in the message.
const ERROR_BODY_SHOWN: usize = 200;

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
    /// An exporter for `config`; checks the headers and reads the custom
    /// CA now (so a bad header or file is reported at start) and connects
    /// on the first export.
    pub fn new(config: ExporterConfig) -> Result<Self, ExportError> {
        check_headers(&config)?;
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
        let mut client =
            ProfilesServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
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
        // tonic panics on a status whose details header is not base64
        // (grpc/grpc-rust#2618): whatever a collector answers must not end
        // the task that exports.
        let response = AssertUnwindSafe(client.export(call))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::internal(
                    "the collector answered with a malformed gRPC status",
                ))
            })
            .map_err(|source| grpc_error(endpoint, source))?
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
        let mut response = builder.body(body).send().await.map_err(http_err)?;
        let status = response.status();
        if !status.is_success() {
            // The start of the body is enough for the message; the rest is
            // left unread (and the connection closed).
            let bytes = match read_body(&mut response, ERROR_BODY_BYTES).await {
                Ok(Body::Whole(bytes) | Body::Cut(bytes)) => bytes,
                Err(_) => Vec::new(),
            };
            let retry_after = response.headers().get("retry-after");
            return Err(http_refusal(url, status, retry_after, &bytes));
        }
        let bytes = match read_body(&mut response, MAX_RESPONSE_BYTES)
            .await
            .map_err(http_err)?
        {
            Body::Whole(bytes) => bytes,
            Body::Cut(_) => {
                return Err(ExportError::ResponseTooLarge {
                    endpoint: url,
                    limit: MAX_RESPONSE_BYTES,
                })
            }
        };
        decode_outcome(url, &bytes, bytes_sent)
    }
}

/// The error of an HTTP export answered with the failure `status`, its
/// `Retry-After` header (if any) and the start of its body.
pub(crate) fn http_refusal(
    url: String,
    status: reqwest::StatusCode,
    retry_after: Option<&reqwest::header::HeaderValue>,
    body: &[u8],
) -> ExportError {
    ExportError::HttpStatus {
        url,
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_SHOWN)]).into_owned(),
        retry_after: retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after),
    }
}

/// The outcome of an HTTP export accepted with the response body `body`.
pub(crate) fn decode_outcome(
    url: String,
    body: &[u8],
    bytes_sent: usize,
) -> Result<ExportOutcome, ExportError> {
    let response = ExportProfilesServiceResponse::decode(body)
        .map_err(|source| ExportError::Decode { url, source })?;
    Ok(outcome(response, bytes_sent))
}

/// Why a header value cannot be sent.
const BAD_VALUE: &str =
    "its value holds control characters (such as a newline) a header cannot carry";

/// Fails on the first header the configured transport cannot send: an
/// invalid name, or a value with control characters (a newline would
/// split the request).
fn check_headers(config: &ExporterConfig) -> Result<(), ExportError> {
    use reqwest::header::{HeaderName, HeaderValue};
    use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
    for (name, value) in &config.headers {
        let (protocol, bad_name, bad_value, name_rule) = match config.protocol {
            Protocol::Grpc => (
                "gRPC",
                AsciiMetadataKey::from_bytes(name.as_bytes()).is_err(),
                value.parse::<AsciiMetadataValue>().is_err(),
                "not a metadata key (letters, digits, `-`, `_`, `.`, and no `-bin` suffix)",
            ),
            Protocol::HttpProtobuf => (
                "HTTP",
                HeaderName::from_bytes(name.as_bytes()).is_err(),
                HeaderValue::from_str(value).is_err(),
                "not a header name (letters, digits and `!#$%&'*+-.^_`|~`)",
            ),
        };
        let reason = if bad_name {
            name_rule
        } else if bad_value {
            BAD_VALUE
        } else {
            continue;
        };
        return Err(ExportError::Header {
            name: name.clone(),
            protocol,
            reason,
        });
    }
    Ok(())
}

/// A response body as read by [`read_body`].
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// All of it.
    Whole(Vec<u8>),
    /// It is longer than the limit: its first `limit` bytes at most (none
    /// when its declared length already says so).
    Cut(Vec<u8>),
}

/// Reads `response`'s body chunk by chunk, holding at most `limit` bytes:
/// a body declared or found to be longer is cut there and not read on.
async fn read_body(response: &mut reqwest::Response, limit: usize) -> reqwest::Result<Body> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Ok(Body::Cut(Vec::new()));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > limit - bytes.len() {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Body::Cut(bytes));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body::Whole(bytes))
}

/// A failed gRPC call: [`ExportError::ResponseTooLarge`] when tonic refused
/// a response over [`MAX_RESPONSE_BYTES`] (as sent, or once decompressed),
/// else [`ExportError::Grpc`].
pub(crate) fn grpc_error(endpoint: String, source: tonic::Status) -> ExportError {
    let message = source.message();
    let too_large = match source.code() {
        tonic::Code::OutOfRange => message.contains("decoded message length too large"),
        tonic::Code::ResourceExhausted => {
            message.contains("size limit") && message.contains("decompressing")
        }
        _ => false,
    };
    if too_large {
        ExportError::ResponseTooLarge {
            endpoint,
            limit: MAX_RESPONSE_BYTES,
        }
    } else {
        ExportError::Grpc { endpoint, source }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hostprof_proto::otlp::collector::profiles::v1development::profiles_service_server::{
        ProfilesService, ProfilesServiceServer,
    };
    use hostprof_proto::otlp::collector::profiles::v1development::ExportProfilesPartialSuccess;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// How the stand-in collector answers every request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200` with a valid export response.
        Ok,
        /// `200` declaring a 512 MiB body, then sending it.
        Huge,
        /// `200` with a chunked body that never ends.
        Endless,
        /// `200` with a chunked body one byte over the limit.
        JustOver,
        /// `400` with a chunked body that never ends.
        RefusedEndless,
    }

    /// Serves HTTP/1.1 on a local port, answering every request `answer`.
    async fn http_collector(answer: Answer) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer_requests(stream, answer));
            }
        });
        addr
    }

    /// Reads each request on `stream` and answers it; returns when the
    /// client goes away.
    async fn answer_requests(mut stream: TcpStream, answer: Answer) -> std::io::Result<()> {
        loop {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                if stream.read(&mut byte).await? == 0 {
                    return Ok(());
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await?;
            let chunk = vec![b'x'; 64 << 10];
            match answer {
                Answer::Ok => {
                    let body = ExportProfilesServiceResponse::default().encode_to_vec();
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    stream.write_all(head.as_bytes()).await?;
                    stream.write_all(&body).await?;
                }
                Answer::Huge => {
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 536870912\r\n\r\n")
                        .await?;
                    for _ in 0..(512 << 20) / chunk.len() {
                        stream.write_all(&chunk).await?;
                    }
                }
                Answer::Endless | Answer::RefusedEndless | Answer::JustOver => {
                    let status = match answer {
                        Answer::RefusedEndless => "400 Bad Request",
                        _ => "200 OK",
                    };
                    let head = format!("HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n");
                    stream.write_all(head.as_bytes()).await?;
                    let mut sent = 0;
                    loop {
                        if matches!(answer, Answer::JustOver) && sent == MAX_RESPONSE_BYTES {
                            stream.write_all(b"1\r\nx\r\n0\r\n\r\n").await?;
                            break;
                        }
                        stream
                            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await?;
                        stream.write_all(&chunk).await?;
                        stream.write_all(b"\r\n").await?;
                        sent += chunk.len();
                    }
                }
            }
        }
    }

    fn exporter(protocol: Protocol, addr: SocketAddr) -> Exporter {
        Exporter::new(ExporterConfig {
            endpoint: format!("http://{addr}"),
            path_included: false,
            protocol,
            headers: Vec::new(),
            gzip: false,
            // Long, so that only the size limit can end an endless body.
            timeout: Duration::from_secs(120),
            certificate: None,
        })
        .unwrap()
    }

    /// Exports once, failing the test if that takes longer than a minute.
    async fn export_once(exporter: &Exporter) -> Result<ExportOutcome, ExportError> {
        let request = ExportProfilesServiceRequest::default();
        tokio::time::timeout(Duration::from_secs(60), exporter.export(&request))
            .await
            .expect("the export ends well before its timeout")
    }

    #[tokio::test]
    async fn http_responses_are_read_up_to_the_limit() {
        let ok = exporter(Protocol::HttpProtobuf, http_collector(Answer::Ok).await);
        assert!(export_once(&ok).await.is_ok());
        for answer in [Answer::Huge, Answer::Endless, Answer::JustOver] {
            let exporter = exporter(Protocol::HttpProtobuf, http_collector(answer).await);
            let err = export_once(&exporter).await.unwrap_err();
            assert!(
                matches!(err, ExportError::ResponseTooLarge { limit, .. } if limit == MAX_RESPONSE_BYTES),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .contains("more than 4 MiB (4194304 bytes), the most hostprof reads"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn error_responses_are_cut_to_their_start() {
        let exporter = exporter(
            Protocol::HttpProtobuf,
            http_collector(Answer::RefusedEndless).await,
        );
        match export_once(&exporter).await.unwrap_err() {
            ExportError::HttpStatus { status, body, .. } => {
                assert_eq!(status.as_u16(), 400);
                assert_eq!(body.len(), ERROR_BODY_SHOWN);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A gRPC collector whose every answer carries a `partial_success`
    /// message of this many bytes.
    struct Verbose(usize);

    #[tonic::async_trait]
    impl ProfilesService for Verbose {
        async fn export(
            &self,
            _: tonic::Request<ExportProfilesServiceRequest>,
        ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
            Ok(tonic::Response::new(ExportProfilesServiceResponse {
                partial_success: Some(ExportProfilesPartialSuccess {
                    rejected_profiles: 0,
                    error_message: "x".repeat(self.0),
                }),
            }))
        }
    }

    async fn grpc_collector(message_bytes: usize) -> SocketAddr {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        // One service, so no router: it answers every path.
        tokio::spawn(
            tonic::transport::Server::builder()
                .serve_with_incoming(ProfilesServiceServer::new(Verbose(message_bytes)), incoming),
        );
        addr
    }

    #[tokio::test]
    async fn grpc_responses_are_decoded_up_to_the_limit() {
        let small = exporter(Protocol::Grpc, grpc_collector(1000).await);
        assert_eq!(export_once(&small).await.unwrap().message.len(), 1000);
        let huge = exporter(Protocol::Grpc, grpc_collector(64 << 20).await);
        let err = export_once(&huge).await.unwrap_err();
        assert!(
            matches!(err, ExportError::ResponseTooLarge { limit, .. } if limit == MAX_RESPONSE_BYTES),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_malformed_grpc_status_is_an_error_not_a_panic() {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        // Every answer is a failure whose details are not base64, which
        // tonic's client panics on (found by the otlp_response fuzz target).
        let bad_details = tower::util::MapResponseLayer::new(
            |mut response: tonic::codegen::http::Response<tonic::body::Body>| {
                response.headers_mut().insert(
                    "grpc-status",
                    tonic::codegen::http::HeaderValue::from_static("14"),
                );
                response.headers_mut().insert(
                    "grpc-status-details-bin",
                    tonic::codegen::http::HeaderValue::from_static("!"),
                );
                response
            },
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(bad_details)
                .serve_with_incoming(ProfilesServiceServer::new(Verbose(0)), incoming),
        );
        let err = export_once(&exporter(Protocol::Grpc, addr))
            .await
            .unwrap_err();
        match &err {
            ExportError::Grpc { source, .. } => {
                assert_eq!(source.code(), tonic::Code::Internal, "{source:?}");
                assert!(source.message().contains("malformed gRPC status"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            crate::otlp::retry::classify(&err),
            crate::otlp::retry::Verdict::GiveUp
        );
    }

    fn config(protocol: Protocol, headers: &[(&str, &str)]) -> ExporterConfig {
        let flags = crate::otlp::ExporterFlags {
            endpoint: Some("http://127.0.0.1:4317".into()),
            protocol: Some(protocol),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            certificate: None,
        };
        ExporterConfig::resolve(&flags, |_| None).unwrap()
    }

    #[test]
    fn headers_are_checked_before_any_export_and_values_are_not_shown() {
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let good = config(
                protocol,
                &[("Authorization", "Bearer abc"), ("x-tenant", "a b")],
            );
            assert!(Exporter::new(good).is_ok(), "{protocol:?}");
            let newline = config(protocol, &[("authorization", "Bearer s3cret\nX-Evil: 1")]);
            let err = Exporter::new(newline).err().expect("a newline is refused");
            let text = err.to_string();
            assert!(
                text.contains("\"authorization\"") && text.contains("newline"),
                "{text}"
            );
            assert!(
                !text.contains("s3cret"),
                "the value may be a secret: {text}"
            );
            assert!(matches!(
                crate::otlp::retry::classify(&err),
                crate::otlp::retry::Verdict::GiveUp
            ));
            let name = config(protocol, &[("bad name", "v")]);
            assert!(Exporter::new(name).is_err(), "{protocol:?}");
        }
        let binary = config(Protocol::Grpc, &[("trace-bin", "v")]);
        assert!(Exporter::new(binary).is_err());
        let delete = config(Protocol::HttpProtobuf, &[("x-name", "a\x7f")]);
        assert!(Exporter::new(delete).is_err());
    }
}
