//! The agent's HTTP endpoint: `/metrics` (Prometheus text), `/healthz`
//! (liveness: the profiling loop drained recently) and `/readyz`
//! (readiness: sampling has started). Plain HTTP/1.1 on hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// Whether the agent is live and ready, asked on every probe.
pub trait Health: Send + Sync + 'static {
    /// True while the profiling loop makes progress.
    fn live(&self) -> bool;
    /// True once sampling runs.
    fn ready(&self) -> bool;
}

/// Binds `addr`; the error names the address and the flag to change it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot serve metrics on {addr}: {err} (choose another --metrics-addr)"),
        )
    })
}

/// Serves requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<dyn Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                log::debug!("metrics endpoint: accept failed: {err}");
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = respond(request.uri().path(), &metrics, health.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("metrics endpoint: connection failed: {err}");
            }
        });
    }
}

fn respond(path: &str, metrics: &Metrics, health: &dyn Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" if health.live() => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the profiling loop is stalled\n".into(),
        ),
        "/readyz" if health.ready() => (StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "sampling has not started\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::metrics::Snapshot;

    struct Fixed(bool, bool);

    impl Health for Fixed {
        fn live(&self) -> bool {
            self.0
        }
        fn ready(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn routes() {
        let metrics = Metrics::new(Arc::new(Snapshot::default));
        let status = |path, health: &Fixed| respond(path, &metrics, health).status();
        assert_eq!(status("/metrics", &Fixed(true, true)), StatusCode::OK);
        assert_eq!(status("/healthz", &Fixed(true, false)), StatusCode::OK);
        assert_eq!(
            status("/healthz", &Fixed(false, true)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status("/readyz", &Fixed(true, false)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status("/readyz", &Fixed(true, true)), StatusCode::OK);
        assert_eq!(status("/nope", &Fixed(true, true)), StatusCode::NOT_FOUND);
    }
}
