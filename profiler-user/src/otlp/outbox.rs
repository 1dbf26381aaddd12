//! Requests on their way out: an [`Outbox`] holds export requests in a
//! [`BoundedQueue`] and one task ([`Outbox::send`]) sends them in order,
//! retrying failures with [`Backoff`] as [`retry::classify`] allows.
//!
//! While the collector is slow or down, callers keep pushing; the queue
//! drops its oldest requests (counted) and sending resumes on its own.
//!
//! Failures are counted every time but logged once per outage: when the
//! first export fails (a warning when it will be retried, an error when it
//! is given up) and when one succeeds again ([`Outage`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hostprof_proto::otlp::collector::profiles::v1development::ExportProfilesServiceRequest;
use prost::Message;
use tokio::sync::{watch, Notify};

use super::export::Exporter;
use super::queue::{BoundedQueue, Dropped, QueueLimits};
use super::retry::{self, Backoff, Verdict};

/// What happened to the requests pushed into an [`Outbox`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Profiles the collector accepted.
    pub exported_profiles: u64,
    /// Profiles the collector rejected (`partial_success`; never retried).
    pub rejected_profiles: u64,
    /// Export attempts that failed.
    pub failed_attempts: u64,
    /// Profiles given up after a non-retryable error.
    pub failed_profiles: u64,
    /// Requests and profiles dropped because the queue was full, or
    /// abandoned unsent ([`Outbox::abandon`]).
    pub dropped: Dropped,
    /// Request bytes sent.
    pub bytes_sent: u64,
}

/// The exports that failed since the last one that worked, for the one
/// line that ends an outage.
#[derive(Debug)]
struct Outage {
    since: Instant,
    failed_attempts: u64,
    failed_profiles: u64,
}

impl Outage {
    /// Starts an outage with `err`, logged once: a warning when it will be
    /// retried, an error when it is given up.
    fn start(err: &super::ExportError, verdict: Verdict) -> Self {
        let later = "further failures are counted (hostprof_export_failures_total), \
                     not logged, until an export works again";
        match verdict {
            Verdict::Retry(_) => log::warn!("{err}; retrying with backoff; {later}"),
            Verdict::GiveUp => {
                log::error!("export failed and will not be retried: {err}; {later}")
            }
        }
        Self {
            since: Instant::now(),
            failed_attempts: 0,
            failed_profiles: 0,
        }
    }

    /// Counts one failed attempt, and the profiles given up with it.
    fn count(&mut self, given_up: u64) {
        self.failed_attempts += 1;
        self.failed_profiles += given_up;
    }

    /// Logs the end of the outage.
    fn end(self, endpoint: &str) {
        log::info!(
            "export to {endpoint} works again after {}s: {} failed attempts, \
             {} profiles given up",
            self.since.elapsed().as_secs(),
            self.failed_attempts,
            self.failed_profiles
        );
    }
}

/// A full queue is reported at most this often.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Export requests waiting to be sent, and the counters of the task that
/// sends them. Shared between the producer and [`Outbox::send`].
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<BoundedQueue<ExportProfilesServiceRequest>>,
    ready: Notify,
    /// Counters of [`Outbox::send`] and of [`Outbox::abandon`]; queue drops
    /// are added when read.
    stats: Mutex<SendStats>,
    /// Profiles of the request being sent.
    in_flight: Mutex<u64>,
    /// When a full queue was last reported, to keep logs quiet in an outage.
    last_drop_warning: Mutex<Option<Instant>>,
}

impl Outbox {
    /// An empty outbox bounded by `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            queue: Mutex::new(BoundedQueue::new(limits)),
            ready: Notify::new(),
            stats: Mutex::new(SendStats::default()),
            in_flight: Mutex::new(0),
            last_drop_warning: Mutex::new(None),
        }
    }

    /// Queues `request` for [`Outbox::send`], dropping the oldest waiting
    /// requests when the queue is full. A request without profiles is
    /// not queued.
    pub fn push(&self, request: ExportProfilesServiceRequest) {
        let profiles = request.resource_profiles.len() as u64;
        if profiles == 0 {
            return;
        }
        let bytes = request.encoded_len();
        let mut queue = self.queue.lock().expect("queue lock");
        let before = queue.dropped();
        queue.push(request, bytes, profiles);
        let after = queue.dropped();
        if after != before {
            let mut last = self.last_drop_warning.lock().expect("warning lock");
            if last.is_none_or(|at| at.elapsed() >= DROP_WARNING_INTERVAL) {
                *last = Some(Instant::now());
                log::warn!(
                    "export queue full ({} requests, {} bytes): dropping the oldest; \
                     {} profiles dropped so far",
                    queue.len(),
                    queue.bytes(),
                    after.profiles
                );
            }
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// Requests waiting and their encoded bytes.
    pub fn queued(&self) -> (usize, usize) {
        let queue = self.queue.lock().expect("queue lock");
        (queue.len(), queue.bytes())
    }

    /// The counters so far, queue drops included.
    pub fn stats(&self) -> SendStats {
        let mut stats = *self.stats.lock().expect("stats lock");
        let dropped = self.queue.lock().expect("queue lock").dropped();
        stats.dropped.requests += dropped.requests;
        stats.dropped.profiles += dropped.profiles;
        stats
    }

    /// Sends queued requests in order with `exporter` until `stopping`
    /// turns true and the queue is empty. A failed export is retried
    /// after a [`Backoff`] delay while [`retry::classify`] says it may
    /// succeed, else given up and counted; newer requests wait in the
    /// bounded queue meanwhile.
    ///
    /// It only yields between whole bookkeeping steps, so its task may be
    /// aborted at any await; [`Outbox::abandon`] then counts what it held.
    pub async fn send(
        &self,
        exporter: Exporter,
        backoff: Backoff,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut outage: Option<Outage> = None;
        loop {
            let next = self.queue.lock().expect("queue lock").pop();
            *self.in_flight.lock().expect("in-flight lock") = next.as_ref().map_or(0, |(_, p)| *p);
            let Some((request, profiles)) = next else {
                if *stopping.borrow() {
                    return;
                }
                tokio::select! {
                    () = self.ready.notified() => {}
                    _ = stopping.changed() => {}
                }
                continue;
            };
            let mut attempt = 0;
            loop {
                match exporter.export(&request).await {
                    Ok(outcome) => {
                        if let Some(outage) = outage.take() {
                            outage.end(&exporter.config().endpoint);
                        }
                        let rejected = outcome.rejected_profiles.max(0) as u64;
                        if rejected > 0 || !outcome.message.is_empty() {
                            log::warn!(
                                "the collector rejected {rejected} profiles: {}",
                                outcome.message
                            );
                        }
                        let mut stats = self.stats.lock().expect("stats lock");
                        stats.exported_profiles += profiles.saturating_sub(rejected);
                        stats.rejected_profiles += rejected;
                        stats.bytes_sent += outcome.bytes_sent as u64;
                        *self.in_flight.lock().expect("in-flight lock") = 0;
                        break;
                    }
                    Err(err) => {
                        self.stats.lock().expect("stats lock").failed_attempts += 1;
                        let verdict = retry::classify(&err);
                        // One line per outage, not one per attempt: the
                        // counters tell the rest.
                        let outage = outage.get_or_insert_with(|| Outage::start(&err, verdict));
                        match verdict {
                            Verdict::GiveUp => {
                                outage.count(profiles);
                                self.stats.lock().expect("stats lock").failed_profiles += profiles;
                                *self.in_flight.lock().expect("in-flight lock") = 0;
                                break;
                            }
                            Verdict::Retry(hint) => {
                                outage.count(0);
                                // Newer requests wait in the bounded queue
                                // meanwhile, which drops its oldest when full.
                                let delay = backoff.delay(attempt, rand::random::<f64>(), hint);
                                attempt += 1;
                                tokio::time::sleep(delay).await;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Gives up on everything unsent: the request [`Outbox::send`] was
    /// working on when it was stopped and every queued one are counted as
    /// dropped. Call only once `send` no longer runs.
    pub fn abandon(&self) {
        let mut queue = self.queue.lock().expect("queue lock");
        let mut stats = self.stats.lock().expect("stats lock");
        let in_flight = std::mem::take(&mut *self.in_flight.lock().expect("in-flight lock"));
        if in_flight > 0 {
            stats.dropped.requests += 1;
            stats.dropped.profiles += in_flight;
        }
        while let Some((_, profiles)) = queue.pop() {
            stats.dropped.requests += 1;
            stats.dropped.profiles += profiles;
        }
    }
}

#[cfg(test)]
mod tests {
    use hostprof_proto::otlp::profiles::v1development::ResourceProfiles;

    use super::*;

    fn request(profiles: usize) -> ExportProfilesServiceRequest {
        ExportProfilesServiceRequest {
            resource_profiles: vec![ResourceProfiles::default(); profiles],
            ..Default::default()
        }
    }

    #[test]
    fn empty_requests_are_not_queued() {
        let outbox = Outbox::new(QueueLimits::default());
        outbox.push(request(0));
        assert_eq!(outbox.queued(), (0, 0));
        assert_eq!(outbox.stats(), SendStats::default());
    }

    #[test]
    fn queue_drops_and_abandoned_requests_are_counted_once() {
        let outbox = Outbox::new(QueueLimits {
            max_requests: 2,
            max_bytes: 1 << 20,
        });
        outbox.push(request(1));
        outbox.push(request(2));
        outbox.push(request(3));
        assert_eq!(outbox.queued().0, 2);
        assert_eq!(
            outbox.stats().dropped,
            Dropped {
                requests: 1,
                profiles: 1
            }
        );
        *outbox.in_flight.lock().unwrap() = 4;
        outbox.abandon();
        assert_eq!(outbox.queued(), (0, 0));
        assert_eq!(
            outbox.stats().dropped,
            Dropped {
                requests: 4,
                profiles: 1 + 2 + 3 + 4
            }
        );
        outbox.abandon();
        assert_eq!(outbox.stats().dropped.requests, 4);
    }
}
