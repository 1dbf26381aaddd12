//! `hostprof agent` end to end and under faults: metrics and health
//! endpoints; collector absent for the whole run; a collector that answers
//! 503 before it recovers; a slow collector; SIGTERM during an export; a
//! collector that rejects part of each request. The collector is the
//! official-types receiver of tests/e2e/otlp_receiver.py.
//!
//! Needs root (BPF) and python3 with `opentelemetry-proto` and `grpcio`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, wait_until, KillOnDrop, Receiver};

pub(crate) fn agent(endpoint: &str, protocol: &str, extra: &[&str]) -> KillOnDrop {
    KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args(["agent", "--interval", "500ms", "--otlp-protocol", protocol])
            .args(["--otlp-endpoint", endpoint])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hostprof agent"),
    )
}

/// Sends SIGTERM and returns (exit code, stderr).
pub(crate) fn terminate(child: KillOnDrop) -> (Option<i32>, String) {
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait for agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after `key` in the agent's final summary line.
pub(crate) fn summary_number(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("exported") && l.contains("dropped"))
        .unwrap_or_else(|| panic!("no summary line in:\n{log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == key).expect(key);
    words[at + 1]
        .trim_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap()
}

/// Every queued profile is accounted for exactly once in the summary.
pub(crate) fn assert_accounted(log: &str) {
    let queued = summary_number(log, "queued");
    let settled = summary_number(log, "exported")
        + summary_number(log, "dropped")
        + summary_number(log, "rejected")
        + summary_number(log, "failed");
    assert!(queued > 0, "{log}");
    assert_eq!(queued, settled, "profiles unaccounted for:\n{log}");
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `path` from 127.0.0.1:`port`; (status code, body).
pub(crate) fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of an unlabelled metric in Prometheus text.
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Polls until the agent's endpoint answers (it binds before sampling).
pub(crate) fn wait_for_endpoint(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "metrics endpoint never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_and_health_endpoints_report_the_pipeline() {
    if common::skip_bpf() {
        return;
    }
    // Whole-host agents run together would profile each other.
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), &[]);
    // A process sampled in every window, so the process gauge has one to
    // hold: on an idle runner a window can hold only the idle task's
    // samples, which belong to no process (CI saw `hostprof_processes 0`).
    let _busy = KillOnDrop::new(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("start a busy shell"),
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = agent(
        &format!("http://127.0.0.1:{}", receiver.grpc_port),
        "grpc",
        &["--metrics-addr", &addr],
    );
    wait_for_endpoint(port);
    // The endpoint is up before the BPF program is loaded and the first
    // window exported; how long that takes depends on the host (a CI
    // runner with other suites running took over 3 s), so wait for the
    // first export rather than for a fixed time.
    let mut text = String::new();
    wait_until(Duration::from_secs(60), "a first export", || {
        let (status, body) = get(port, "/metrics");
        assert_eq!(status, 200);
        text = body;
        metric(&text, "hostprof_profiles_exported_total") >= 1.0
    });
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/readyz").0, 200);
    assert_eq!(get(port, "/nope").0, 404);
    assert!(metric(&text, "hostprof_samples_total") > 0.0, "{text}");
    assert!(
        metric(&text, "hostprof_export_sent_bytes_total") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "hostprof_encodes_total") >= 1.0, "{text}");
    assert!(metric(&text, "hostprof_processes") >= 1.0, "{text}");
    assert!(
        metric(&text, "hostprof_resident_memory_bytes") > 0.0,
        "{text}"
    );
    assert!(metric(&text, "hostprof_cpu_seconds_total") > 0.0, "{text}");
    // The memory parts: the resident ones add up to the resident set
    // (statm, read in the same scrape), and the BPF maps are there.
    let part = |component: &str| {
        metric(
            &text,
            &format!("hostprof_memory_bytes{{component=\"{component}\"}}"),
        )
    };
    let resident = part("anonymous") + part("file") + part("shmem");
    let rss = metric(&text, "hostprof_resident_memory_bytes");
    assert!(
        (resident - rss).abs() < 4.0 * 1048576.0,
        "{resident} vs {rss}\n{text}"
    );
    assert!(part("bpf_maps") > 1048576.0, "{text}");
    // Windows of 500 ms: each ends with a drain, before one is scheduled
    // (1 s at the shortest).
    assert!(
        metric(&text, "hostprof_drains_total{cause=\"window\"}") >= 1.0,
        "{text}"
    );
    let interval = metric(&text, "hostprof_drain_interval_seconds");
    assert!((1.0..=4.0).contains(&interval), "{text}");
    assert!(
        text.contains("hostprof_samples_dropped_total{reason=\"map_full\"}"),
        "{text}"
    );
    let (code, log) = terminate(child);
    assert_eq!(code, Some(0), "{log}");
    assert_accounted(&log);
    assert_eq!(summary_number(&log, "dropped"), 0, "{log}");
}

#[test]
fn slow_collector_keeps_the_queue_bounded_and_shutdown_timely() {
    if common::skip_bpf() {
        return;
    }
    // Whole-host agents run together would profile each other.
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Each request takes 3 s to answer; the agent makes one every 500 ms.
    let receiver = Receiver::start(dir.path(), &["--delay", "3"]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = agent(
        &format!("http://127.0.0.1:{}", receiver.http_port),
        "http",
        &[
            "--metrics-addr",
            &addr,
            "--queue-max-requests",
            "3",
            "--queue-max-bytes",
            "200000",
            "--shutdown-timeout",
            "1s",
        ],
    );
    wait_for_endpoint(port);
    // What a slow collector can make the agent hold is the queue: it never
    // exceeds its bounds, in requests or in bytes.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let text = get(port, "/metrics").1;
        let requests = metric(&text, "hostprof_queue_requests");
        let bytes = metric(&text, "hostprof_queue_bytes");
        assert!(requests <= 3.0, "queue over its bound: {requests} requests");
        assert!(bytes <= 200_000.0, "queue over its bound: {bytes} bytes");
        std::thread::sleep(Duration::from_millis(250));
    }
    let final_text = get(port, "/metrics").1;
    assert!(
        metric(&final_text, "hostprof_profiles_dropped_total") > 0.0,
        "a collector 6x too slow must cost dropped profiles:\n{final_text}"
    );
    let sent = Instant::now();
    let (code, log) = terminate(child);
    assert_eq!(code, Some(0), "{log}");
    // The shutdown timeout (1 s) bounds the flush, however slow the collector.
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}:\n{log}",
        sent.elapsed()
    );
    assert_accounted(&log);
    assert!(
        log.lines()
            .filter(|l| l.contains("export queue full"))
            .count()
            <= 1,
        "drops are reported once a minute, not per drop:\n{log}"
    );
}

#[test]
fn sigterm_during_an_export_flushes_within_the_timeout() {
    if common::skip_bpf() {
        return;
    }
    // Whole-host agents run together would profile each other.
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Every answer takes 2 s.
    let receiver = Receiver::start(dir.path(), &["--delay", "2"]);
    let child = KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args(["agent", "--interval", "1s", "--otlp-protocol", "http"])
            .arg("--otlp-endpoint")
            .arg(format!("http://127.0.0.1:{}", receiver.http_port))
            .args(["--shutdown-timeout", "8s"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hostprof agent"),
    );
    // The first window is exported at ~1 s after start and answered 2 s
    // later: stop in between, while that export is in flight.
    wait_until(Duration::from_secs(60), "the first export", || {
        receiver.arrived_count() >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let (code, log) = terminate(child);
    assert_eq!(code, Some(0), "{log}");
    assert_accounted(&log);
    assert_eq!(summary_number(&log, "dropped"), 0, "{log}");
    let received = receiver.received();
    let profiles: u64 = received
        .iter()
        .map(|r| r["resources"].as_array().unwrap().len() as u64)
        .sum();
    assert!(
        received.len() >= 2,
        "the in-flight export and the final window: {received:?}"
    );
    assert_eq!(summary_number(&log, "exported"), profiles, "{log}");
}

#[test]
fn partial_success_is_logged_counted_and_not_retried() {
    if common::skip_bpf() {
        return;
    }
    // Whole-host agents run together would profile each other.
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), &["--reject", "1"]);
    let child = agent(
        &format!("http://127.0.0.1:{}", receiver.grpc_port),
        "grpc",
        &[],
    );
    // Two windows exported (the final one makes three).
    wait_until(Duration::from_secs(30), "two exports", || {
        receiver.received_count() >= 2
    });
    let (code, log) = terminate(child);
    assert_eq!(code, Some(0), "{log}");
    assert_accounted(&log);
    let requests = receiver.received().len() as u64;
    assert!(requests >= 3, "{log}");
    assert_eq!(
        summary_number(&log, "rejected"),
        requests,
        "one profile rejected per request, each request sent once:\n{log}"
    );
    assert!(
        log.contains("the collector rejected 1 profiles: rejected 1 profiles: test collector"),
        "{log}"
    );
    assert!(!log.contains("retrying"), "{log}");
}

#[test]
fn collector_absent_keeps_sampling_with_a_bounded_queue() {
    if common::skip_bpf() {
        return;
    }
    // Whole-host agents run together would profile each other.
    let _serial = common::one_at_a_time();
    // Nothing listens on port 1.
    let child = agent(
        "http://127.0.0.1:1",
        "grpc",
        &["--queue-max-requests", "2", "--shutdown-timeout", "1s"],
    );
    std::thread::sleep(Duration::from_secs(4));
    let (code, log) = terminate(child);
    assert_eq!(code, Some(0), "the agent exits 0 on SIGTERM:\n{log}");
    assert!(
        log.contains("cannot connect"),
        "the failure is named:\n{log}"
    );
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= 4,
        "no error storm, got {warnings} warnings:\n{log}"
    );
    assert_eq!(summary_number(&log, "exported"), 0);
    // ~8 intervals of one or more profiles each, all accounted as dropped.
    assert!(summary_number(&log, "dropped") >= 6, "{log}");
}

#[test]
fn collector_that_fails_then_recovers_gets_everything_once() {
    if common::skip_bpf() {
        return;
    }
    // Whole-host agents run together would profile each other.
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), &["--fail-first", "2"]);
    let child = agent(
        &format!("http://127.0.0.1:{}", receiver.http_port),
        "http",
        &["--shutdown-timeout", "5s"],
    );
    // Three windows through after the two failures (the final one makes four).
    wait_until(
        Duration::from_secs(30),
        "three exports after recovery",
        || receiver.received_count() >= 3,
    );
    let (code, log) = terminate(child);
    assert_eq!(code, Some(0), "{log}");

    let received = receiver.received();
    let mut seen = HashSet::new();
    let mut profiles = 0;
    for request in &received {
        assert_eq!(
            request["errors"],
            serde_json::json!([]),
            "{}",
            request["errors"]
        );
        for resource in request["resources"].as_array().unwrap() {
            profiles += 1;
            let pid = resource["attributes"]["process.pid"].clone();
            for time in resource["times"].as_array().unwrap() {
                assert!(
                    seen.insert((pid.to_string(), time.to_string())),
                    "profile of pid {pid} at {time} delivered twice"
                );
            }
        }
    }
    assert!(
        received.len() >= 4,
        "expected the windows of ~4 s after recovery: {received:?}"
    );
    assert_eq!(summary_number(&log, "dropped"), 0, "{log}");
    assert_eq!(summary_number(&log, "exported"), profiles, "{log}");
    assert!(log.contains("works again"), "recovery is logged:\n{log}");
}
