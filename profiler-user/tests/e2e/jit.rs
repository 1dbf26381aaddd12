//! JIT code by name (issue 13): Node.js with `--perf-basic-prof` and Java
//! 17 with `-XX:+PreserveFramePointer` (its perf map written by `jcmd PID
//! Compiler.perfmap`) burn CPU in one function; hostprof must name it, from
//! the perf map, in at least 60 % of the process's samples (read with
//! Google's pprof).
//!
//! Needs root (BPF), and the machine's `node` and `java`/`javac`/`jcmd`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, KillOnDrop, Receiver, Traces};

/// The workloads' sources.
fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(name)
}

/// Waits until `pid`'s perf map names `function`.
fn wait_for_perf_map(pid: u32, function: &str) {
    let path = format!("/tmp/perf-{pid}.map");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&path).is_ok_and(|text| text.contains(function)) {
        assert!(Instant::now() < deadline, "{path} never named {function}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Records the host for 3 s and returns (samples of `process`, samples
/// with `function` in their stack).
fn record_share(dir: &Path, process: &str, function: &str) -> (u64, u64) {
    let output = dir.join("jit.pb.gz");
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "3s", "--no-flamegraph", "-o"])
        .arg(&output)
        .status()
        .expect("run hostprof");
    assert!(status.success(), "hostprof record failed");
    let traces = Traces::of(&common::pprof_tool(), &output, process);
    let total = traces.0.iter().map(|(count, _)| count).sum();
    let named = traces
        .0
        .iter()
        .filter(|(_, stack)| stack.iter().any(|frame| frame == function))
        .map(|(count, _)| count)
        .sum();
    eprintln!("{process}: {function} in {named} of {total} samples\n{traces:?}");
    (total, named)
}

fn assert_share(process: &str, function: &str, (total, named): (u64, u64)) {
    assert!(
        total > 50 && named * 100 >= total * 60,
        "{process}: {function} named in {named} of {total} samples (want >= 60 %)"
    );
}

#[test]
fn node_functions_are_named_from_its_perf_map() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let node = KillOnDrop::new(
        Command::new("node")
            // Node writes isolate logs into its working directory.
            .current_dir(dir.path())
            .arg("--perf-basic-prof")
            // TurboFan may inline hotFunction into outer, and then its
            // samples are outer's by the perf map's truth (a CI run saw
            // 20 % of them so); the workload's truth must be one function.
            .arg("--no-turbo-inlining")
            .arg(source("jit_hot.js"))
            .arg("20000")
            .spawn()
            .expect("run node (Node.js 20 is on the test machine)"),
    );
    let pid = node.id();
    wait_for_perf_map(pid, "hotFunction");
    let share = record_share(dir.path(), "node", "hotFunction");
    // Over OTLP, read with the official types, its frames are `v8js`.
    let receiver = Receiver::start(dir.path(), &[]);
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args([
            "record",
            "--duration",
            "2s",
            "--no-local",
            "--otlp-protocol",
            "http",
        ])
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{}", receiver.http_port))
        .status()
        .expect("run hostprof");
    assert!(status.success(), "export failed");
    drop(node);
    let received = receiver.received();
    common::assert_frame_type(&received[0], "node", "v8js");
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    assert_share("node", "hotFunction", share);
}

#[test]
fn java_methods_are_named_from_its_perf_map() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let javac = Command::new("javac")
        .arg("-d")
        .arg(dir.path())
        .arg(source("JitHot.java"))
        .status()
        .expect("run javac (OpenJDK 17 is on the test machine)");
    assert!(javac.success(), "javac failed");
    let java = KillOnDrop::new(
        Command::new("java")
            .args(["-XX:+PreserveFramePointer", "-cp"])
            .arg(dir.path())
            .args(["JitHot", "12000"])
            .spawn()
            .expect("run java"),
    );
    // Let the JIT compile the hot method, then have the JVM write its map.
    let pid = java.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let perfmap = Command::new("jcmd")
            .args([&pid, "Compiler.perfmap"])
            .output()
            .expect("run jcmd");
        let written = std::fs::read_to_string(format!("/tmp/perf-{pid}.map"))
            .is_ok_and(|text| text.contains("JitHot.hotMethod"));
        if perfmap.status.success() && written {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jcmd {pid} Compiler.perfmap never named JitHot.hotMethod: {}",
            String::from_utf8_lossy(&perfmap.stderr)
        );
    }
    let share = record_share(dir.path(), "java", "JitHot.hotMethod(long)");
    drop(java);
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    assert_share("java", "JitHot.hotMethod(long)", share);
}
