//! When to retry a failed export and how long to wait: exponential backoff
//! with full jitter, overridden by the server's own hint (HTTP
//! `Retry-After`, gRPC `RetryInfo`). Pure, testable without a network.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use super::export::ExportError;

/// Whether a failed export may succeed if sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send again, after at least this long when the server said so.
    Retry(Option<Duration>),
    /// Sending again cannot help (bad request, unauthorized, ...).
    GiveUp,
}

/// Classifies an export error per the OTLP specification's retry rules.
pub fn classify(error: &ExportError) -> Verdict {
    match error {
        ExportError::Connect { .. } | ExportError::Http { .. } => Verdict::Retry(None),
        ExportError::Grpc { source, .. } => {
            let hint = source
                .get_details_retry_info()
                .and_then(|info| info.retry_delay);
            match source.code() {
                Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::Unavailable
                | Code::DataLoss => Verdict::Retry(hint),
                // Only retryable when the server says when.
                Code::ResourceExhausted if hint.is_some() => Verdict::Retry(hint),
                _ => Verdict::GiveUp,
            }
        }
        ExportError::HttpStatus {
            status,
            retry_after,
            ..
        } => match status.as_u16() {
            429 | 502 | 503 | 504 => Verdict::Retry(*retry_after),
            _ => Verdict::GiveUp,
        },
        // A response too large or not an export response: whatever
        // answers is no working collector, and the request may have been
        // taken already.
        ExportError::Endpoint { .. }
        | ExportError::Certificate { .. }
        | ExportError::Header { .. }
        | ExportError::ResponseTooLarge { .. }
        | ExportError::Decode { .. } => Verdict::GiveUp,
    }
}

/// Parses an HTTP `Retry-After` value given in seconds.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The longest a server's retry hint is followed: a collector (or
/// anything answering in its place) asking for days would otherwise stall
/// every export until the agent stops.
pub const MAX_SERVER_HINT: Duration = Duration::from_secs(300);

/// Exponential backoff with full jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Ceiling of any delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (0-based): uniform in
    /// `[0, min(max, initial * 2^attempt)]` scaled by `unit` in `[0, 1)`,
    /// but never shorter than the server's `hint` (itself followed up to
    /// [`MAX_SERVER_HINT`]).
    pub fn delay(&self, attempt: u32, unit: f64, hint: Option<Duration>) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        hint.map_or(jittered, |h| h.min(MAX_SERVER_HINT).max(jittered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes() {
        let grpc = |code| ExportError::Grpc {
            endpoint: "e".into(),
            source: tonic::Status::new(code, "x"),
        };
        assert_eq!(classify(&grpc(Code::Unavailable)), Verdict::Retry(None));
        assert_eq!(classify(&grpc(Code::InvalidArgument)), Verdict::GiveUp);
        assert_eq!(classify(&grpc(Code::ResourceExhausted)), Verdict::GiveUp);
        assert_eq!(classify(&grpc(Code::Unauthenticated)), Verdict::GiveUp);
    }

    #[test]
    fn responses_over_the_limit_are_not_retried() {
        let too_large = ExportError::ResponseTooLarge {
            endpoint: "e".into(),
            limit: 4 << 20,
        };
        assert_eq!(classify(&too_large), Verdict::GiveUp);
    }

    #[test]
    fn http_statuses_and_retry_after() {
        let http = |code, retry_after| ExportError::HttpStatus {
            url: "u".into(),
            status: reqwest::StatusCode::from_u16(code).unwrap(),
            body: String::new(),
            retry_after,
        };
        assert_eq!(classify(&http(503, None)), Verdict::Retry(None));
        let hint = Some(Duration::from_secs(7));
        assert_eq!(classify(&http(429, hint)), Verdict::Retry(hint));
        assert_eq!(classify(&http(400, None)), Verdict::GiveUp);
        assert_eq!(parse_retry_after(" 7 "), hint);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn backoff_grows_caps_and_respects_hints() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 1.0, None), Duration::from_millis(500));
        assert_eq!(b.delay(3, 1.0, None), Duration::from_secs(4));
        assert_eq!(b.delay(30, 1.0, None), Duration::from_secs(30));
        assert_eq!(b.delay(3, 0.0, None), Duration::ZERO);
        // A hint of a year is followed for five minutes.
        let year = parse_retry_after("31536000");
        assert_eq!(b.delay(0, 1.0, year), MAX_SERVER_HINT);
        assert_eq!(
            parse_retry_after("18446744073709551615").map(|h| b.delay(0, 0.0, Some(h))),
            Some(MAX_SERVER_HINT)
        );
        assert_eq!(
            b.delay(0, 0.5, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
    }
}
