//! `hostprof agent` under faults: collector absent for the whole run, and a
//! collector that answers 503 before it recovers. The collector is the
//! official-types receiver of tests/otlp_receiver.py.
//!
//! Needs root (BPF) and python3 with `opentelemetry-proto` and `grpcio`.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Receiver;

fn agent(endpoint: &str, protocol: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["agent", "--interval", "500ms", "--otlp-protocol", protocol])
        .args(["--otlp-endpoint", endpoint])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hostprof agent")
}

/// Sends SIGTERM and returns (exit code, stderr).
fn terminate(child: Child) -> (Option<i32>, String) {
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait for agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after `key` in the agent's final summary line.
fn summary_number(log: &str, key: &str) -> u64 {
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

#[test]
fn collector_absent_keeps_sampling_with_a_bounded_queue() {
    if common::skip_bpf() {
        return;
    }
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
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path(), 2);
    let child = agent(
        &format!("http://127.0.0.1:{}", receiver.http_port),
        "http",
        &["--shutdown-timeout", "5s"],
    );
    std::thread::sleep(Duration::from_secs(4));
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
