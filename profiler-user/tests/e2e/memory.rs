//! End to end: the memory profile of a workload that counts the bytes it
//! asks for (`tests/workloads/alloc_chain.c`), read with Google's `pprof`
//! and, over OTLP, with the official OpenTelemetry Python types.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, pprof_tool, KillOnDrop, Receiver, Traces, Workloads};

/// What the workload said it asked for.
#[derive(Debug)]
struct Truth {
    /// Bytes `alloc_and_free` allocated (and freed at once).
    churned: u64,
    /// Bytes `keep_some` allocated.
    keeper: u64,
    /// Bytes `keep_some` kept.
    kept: u64,
}

#[test]
fn allocations_and_in_use_memory_of_a_workload_that_counts_its_own() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["alloc_chain"]);
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    // It waits for a line on stdin: hostprof is attached to it by then.
    let mut child = KillOnDrop::new(
        waiting(&workloads, "alloc_chain", "3000")
            .spawn()
            .expect("start alloc_chain"),
    );
    let pid = child.id();
    let output = workloads.path("host.pb.gz");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let mut record = Command::new(env!("CARGO_BIN_EXE_hostprof"));
    record
        .args(["record", "--profiles", "memory", "--duration", "8s"])
        .args(["--pid", &pid.to_string()])
        // A smaller mean than the default: more samples, so the ±20 %
        // bar holds with room (the estimate's spread is ~1/√samples).
        .args(["--memory-sample-bytes", "65536"])
        .args(["--otlp-endpoint", &endpoint, "--output"])
        .arg(&output)
        .arg("--folded")
        .arg(workloads.path("host.folded"))
        .arg("--stats-json")
        .arg(workloads.path("stats.json"));
    let captured = capture(record, &mut [&mut child], 1);
    let (summary, truth) = (&captured.summary, captured.truth(0));
    eprintln!("{truth:?}");

    // The bytes asked for, counted exactly in the kernel: each call once,
    // however allocator functions call each other (glibc's
    // `realloc(NULL, n)` tail-calls `malloc`). The program's own
    // allocations besides (stdio's buffer, thread stacks' bookkeeping)
    // are a few KiB.
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workloads.path("stats.json")).unwrap())
            .unwrap();
    let asked = stats["profiles"][0]["memory"]["bytes"].as_u64().unwrap();
    let counted = truth.churned + truth.keeper;
    assert!(
        asked >= counted && asked - counted < 1 << 20,
        "the kernel counted {asked} bytes asked for, the workload {counted}"
    );

    // The memory profile's files, named by kind.
    let profile = workloads.path("host.memory.pb.gz");
    for name in ["host.memory.pb.gz", "host.memory.svg", "host.memory.folded"] {
        assert!(workloads.path(name).exists(), "{name} written");
    }
    assert!(!output.exists(), "no CPU profile without --profiles cpu");

    // Google's pprof reads it as a heap profile: inuse_space by default,
    // period type space/bytes at the sampling mean.
    let top = common::pprof(&pprof, &["-top"], &profile);
    assert!(top.contains("Type: inuse_space"), "{top}");
    let raw = common::pprof(&pprof, &["-raw"], &profile);
    assert!(raw.contains("PeriodType: space bytes"), "{raw}");
    assert!(raw.contains("Period: 65536\n"), "{raw}");
    for index in ["alloc_objects", "alloc_space", "inuse_objects"] {
        let top = common::pprof(
            &pprof,
            &["-top", &format!("-sample_index={index}")],
            &profile,
        );
        assert!(top.contains(&format!("Type: {index}")), "{top}");
    }

    // Allocated: what each function asked for, ±20 %.
    let churner = Traces::bytes(&pprof, &profile, "thread_name", "churner", "alloc_space");
    let churned = churner.count(|stack| common::has_chain(stack, &["alloc_and_free", "churn"]));
    let keeper = Traces::bytes(&pprof, &profile, "thread_name", "keeper", "alloc_space");
    let keeper_bytes = keeper.count(|stack| common::has_chain(stack, &["keep_some", "keep"]));
    // In use at the end: what keep_some kept; alloc_and_free freed all.
    let held = Traces::bytes(&pprof, &profile, "process", "alloc_chain", "inuse_space");
    let kept = held.count(|stack| common::has_chain(stack, &["keep_some", "keep"]));
    let churned_held = held.count(|stack| stack.iter().any(|f| f == "alloc_and_free"));
    for (what, measured, known, traces) in [
        (
            "allocated under alloc_and_free",
            churned,
            truth.churned,
            &churner,
        ),
        (
            "allocated under keep_some",
            keeper_bytes,
            truth.keeper,
            &keeper,
        ),
        ("in use under keep_some", kept, truth.kept, &held),
    ] {
        let ratio = measured as f64 / known as f64;
        eprintln!("{what}: {measured} bytes, the workload counted {known} ({ratio:.3})");
        assert!(
            (0.8..=1.2).contains(&ratio),
            "{what} must be the workload's own count ±20 %: {measured} against {known} \
             ({ratio:.3})\n{traces:?}\n{summary}"
        );
    }
    assert!(
        churned_held <= truth.kept / 100,
        "freed memory is not in use: {churned_held} bytes under alloc_and_free\n{held:?}"
    );
    // The leak view names keep_some with what it holds.
    let leaks = summary
        .split_once("still held at the end, allocated in")
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("no leak view in the summary:\n{summary}"));
    assert!(
        leaks
            .lines()
            .nth(1)
            .is_some_and(|l| l.ends_with("keep_some")),
        "keep_some holds the most:\n{summary}"
    );

    // Over OTLP: a profile per sample type, agreeing with the pprof file.
    common::wait_until(Duration::from_secs(10), "the OTLP export", || {
        receiver.received_count() > 0
    });
    let (mut allocated, mut in_use) = (0, 0);
    for request in receiver.received() {
        let (a, i) = bytes_under(&request, "keep_some");
        allocated += a;
        in_use += i;
    }
    assert!(
        allocated.abs_diff(keeper_bytes) <= keeper_bytes / 100
            && in_use.abs_diff(kept) <= kept / 100,
        "OTLP and pprof agree under keep_some: allocated {allocated} against {keeper_bytes}, \
         in use {in_use} against {kept}"
    );
}

/// Stacks from frame pointers alone (`--unwinder frame-pointers`, as
/// before a process's tables are loaded): at the allocator's entry the
/// frame-pointer walk skips the allocating function, which the probe puts
/// back from the stack pointer; the bytes under it are its own count.
#[test]
fn frame_pointers_alone_name_the_allocating_function() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["alloc_chain"]);
    let mut child = KillOnDrop::new(
        waiting(&workloads, "alloc_chain", "2000")
            .spawn()
            .expect("start alloc_chain"),
    );
    let pid = child.id();
    let mut record = Command::new(env!("CARGO_BIN_EXE_hostprof"));
    record
        .args(["record", "--profiles", "memory", "--duration", "5s"])
        .args(["--unwinder", "frame-pointers", "--pid", &pid.to_string()])
        .args(["--memory-sample-bytes", "65536", "--no-flamegraph"])
        .arg("--output")
        .arg(workloads.path("host.pb.gz"));
    let truth = capture(record, &mut [&mut child], 1).truth(0);
    let profile = workloads.path("host.memory.pb.gz");
    let allocated = Traces::bytes(&pprof, &profile, "process", "alloc_chain", "alloc_space");
    for (what, chain, known) in [
        ("alloc_and_free", ["alloc_and_free", "churn"], truth.churned),
        ("keep_some", ["keep_some", "keep"], truth.keeper),
    ] {
        let measured = allocated.count(|stack| common::has_chain(stack, &chain));
        let ratio = measured as f64 / known as f64;
        eprintln!("allocated under {what}: {measured} bytes, it counted {known} ({ratio:.3})");
        assert!(
            (0.8..=1.2).contains(&ratio),
            "allocated under {what} with frame pointers must be its own count ±20 %: \
             {measured} against {known} ({ratio:.3})\n{allocated:?}"
        );
    }
}

/// `hostprof agent`: in-use memory carries over from window to window.
/// `alloc_chain` allocates for 1.5 s and then holds what it kept; every
/// window that starts after that (by its own start time) has the kept bytes in use under
/// `keep_some` (±20 %) and nothing newly allocated there, and each
/// allocation counts in one window only (the windows' `alloc_space` under
/// `keep_some` adds up to what the program allocated, ±20 %).
#[test]
fn the_agent_carries_in_use_memory_from_window_to_window() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let workloads = Workloads::build(&["alloc_chain"]);
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    let mut child = KillOnDrop::new(
        waiting(&workloads, "alloc_chain", "1500")
            .spawn()
            .expect("start alloc_chain"),
    );
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let mut agent = KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args(["agent", "--interval", "1s", "--otlp-endpoint", &endpoint])
            .args(["--profiles", "memory", "--pid", &child.id().to_string()])
            .args(["--memory-sample-bytes", "65536"])
            .env("RUST_LOG", "hostprof=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hostprof agent"),
    );
    let log = common::wait_for_line(agent.stderr(), "probes on");
    // Its unwind tables load meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    child.stdin().write_all(b"go\n").unwrap();
    let mut done = String::new();
    BufReader::new(child.stdout())
        .read_line(&mut done)
        .expect("alloc_chain reports");
    let truth = parse_done(&done);
    // It allocated nothing after it wrote that line: a window that started
    // after we read it is wholly after its allocations. Which window that
    // is comes from the windows' own start times: one that closed before
    // may still be on its way (symbolized, encoded, sent) for a while.
    let stopped = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let after = |received: &[serde_json::Value]| -> Vec<usize> {
        (0..received.len())
            .filter(|&i| window_start(&received[i]) >= stopped)
            .collect()
    };
    common::wait_until(Duration::from_secs(30), "three windows after it", || {
        after(&receiver.received()).len() >= 3
    });
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait_with_output().expect("the agent stops").status;
    let log = log.join().unwrap();
    assert!(status.success(), "hostprof agent failed: {status}\n{log}");

    // (allocated, in use) bytes under keep_some in each window.
    let received = receiver.received();
    let windows: Vec<(u64, u64)> = received
        .iter()
        .map(|request| bytes_under(request, "keep_some"))
        .collect();
    eprintln!("{truth:?}\nwindows (allocated, in use): {windows:?}");
    let checked: Vec<usize> = after(&received).into_iter().take(3).collect();
    eprintln!("windows wholly after its allocations: {checked:?}");
    for i in checked {
        let (allocated, in_use) = windows[i];
        let ratio = in_use as f64 / truth.kept as f64;
        assert!(
            (0.8..=1.2).contains(&ratio) && allocated <= truth.keeper / 100,
            "window {i}, after the program stopped allocating: {in_use} bytes in use under \
             keep_some against the {} it kept ({ratio:.3}), {allocated} allocated\n{log}",
            truth.kept
        );
    }
    let allocated: u64 = windows.iter().map(|w| w.0).sum();
    let ratio = allocated as f64 / truth.keeper as f64;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "the windows' allocations under keep_some add up to {allocated} bytes against the {} \
         it allocated ({ratio:.3})",
        truth.keeper
    );
}

/// A probed process forks (`tests/workloads/alloc_fork.c`): after the
/// fork the parent frees half of what it kept and the child the other
/// half, then allocates its own. Only the parent is named (`--pid`): the
/// child is followed, inherits the parent's live allocations, and each
/// process's in-use bytes under each function are its own count ±20 %.
#[test]
fn a_forked_child_inherits_the_heap_and_is_followed() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["alloc_fork"]);
    let mut parent = KillOnDrop::new(
        waiting(&workloads, "alloc_fork", "1500")
            .spawn()
            .expect("start alloc_fork"),
    );
    let mut record = Command::new(env!("CARGO_BIN_EXE_hostprof"));
    record
        .args(["record", "--profiles", "memory", "--duration", "6s"])
        .args(["--pid", &parent.id().to_string()])
        .args(["--memory-sample-bytes", "65536", "--no-flamegraph"])
        .arg("--output")
        .arg(workloads.path("host.pb.gz"))
        .env("RUST_LOG", "hostprof=debug");
    let captured = capture(record, &mut [&mut parent], 2);
    // "parent <pid> <held>", "child <pid> <inherited held> <own>", in
    // either order.
    let report = |who: &str| -> Vec<u64> {
        let line = captured.reports[0]
            .iter()
            .find(|l| l.starts_with(who))
            .unwrap_or_else(|| panic!("no {who} report: {:?}", captured.reports));
        line.split_whitespace()
            .skip(1)
            .map(|w| w.parse().unwrap())
            .collect()
    };
    let (parent_report, child_report) = (report("parent "), report("child "));
    let (parent_pid, child_pid) = (parent_report[0] as u32, child_report[0] as u32);
    let profile = workloads.path("host.memory.pb.gz");
    let held = |pid| Traces::bytes_of_pid(&pprof, &profile, pid, "inuse_space");
    let (parent_held, child_held) = (held(parent_pid), held(child_pid));
    for (what, measured, known, traces) in [
        (
            "parent: in use under keep_some",
            parent_held.count(|s| s.iter().any(|f| f == "keep_some")),
            parent_report[1],
            &parent_held,
        ),
        (
            "child: inherited, in use under keep_some",
            child_held.count(|s| s.iter().any(|f| f == "keep_some")),
            child_report[1],
            &child_held,
        ),
        (
            "child: its own, in use under child_keep",
            child_held.count(|s| s.iter().any(|f| f == "child_keep")),
            child_report[2],
            &child_held,
        ),
    ] {
        let ratio = measured as f64 / known as f64;
        eprintln!("{what}: {measured} bytes, it counted {known} ({ratio:.3})");
        assert!(
            (0.8..=1.2).contains(&ratio),
            "{what} must be its own count ±20 %: {measured} against {known} ({ratio:.3})\n\
             {traces:?}\n{}",
            captured.log
        );
    }
    assert!(
        captured
            .log
            .lines()
            .any(|l| l.contains(&format!("process {child_pid}:")) && l.contains("probes on")),
        "the child is probed:\n{}",
        captured.log
    );
}

/// The same workload in C++ (`new[]`/`delete[]` through libstdc++ to
/// glibc), in Rust (the system allocator), in C with jemalloc, tcmalloc or
/// mimalloc preloaded (`LD_PRELOAD`) and in C with jemalloc linked in, all
/// in one container-style cgroup that `--cgroup` selects: each process's
/// bytes under `keep_some`, allocated and still in use, within ±20 % of
/// its own count.
#[test]
fn every_allocator_and_language_in_a_selected_cgroup() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let lib = |name: &str| format!("/usr/lib/x86_64-linux-gnu/{name}");
    let preloads = [
        ("alloc_chain", lib("libjemalloc.so.2"), "libjemalloc-dev"),
        (
            "alloc_tcmalloc",
            lib("libtcmalloc_minimal.so.4"),
            "libtcmalloc-minimal4",
        ),
        ("alloc_mimalloc", lib("libmimalloc.so.2"), "libmimalloc2.0"),
    ];
    for (_, library, package) in &preloads {
        assert!(
            std::path::Path::new(library).exists(),
            "{library} is missing: run `cargo xtask setup` (it installs {package})"
        );
    }
    let names = [
        "alloc_cxx",
        "alloc_rust",
        "alloc_chain",
        "alloc_jemalloc",
        "alloc_tcmalloc",
        "alloc_mimalloc",
    ];
    let workloads = Workloads::build(&names);
    let container_id = format!("a11c{:012x}", std::process::id()).repeat(4);
    let fake = common::FakeContainer::create(&container_id, "6f1d2c3b-4a5e-4f60-8b7c-9d0e1f2a3b4c");
    let mut children: Vec<(&str, KillOnDrop)> = Vec::new();
    for name in names {
        let mut command = waiting(&workloads, name, "2000");
        if let Some((_, library, _)) = preloads.iter().find(|(n, _, _)| *n == name) {
            command.env("LD_PRELOAD", library);
        }
        let child = KillOnDrop::new(command.spawn().expect("start a workload"));
        fake.adopt(child.id());
        children.push((name, child));
    }
    let output = workloads.path("host.pb.gz");
    let mut record = Command::new(env!("CARGO_BIN_EXE_hostprof"));
    record
        .args(["record", "--profiles", "memory", "--duration", "9s"])
        .arg("--cgroup")
        .arg(fake.leaf())
        .args([
            "--memory-sample-bytes",
            "65536",
            "--no-flamegraph",
            "--output",
        ])
        .arg(&output)
        // The probes attached to each process are logged at info.
        .env("RUST_LOG", "hostprof=info");
    let mut running: Vec<&mut KillOnDrop> = children.iter_mut().map(|(_, c)| c).collect();
    let captured = capture(record, &mut running, 1);
    let log = &captured.log;
    let truths: Vec<(&str, Truth)> = children
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, captured.truth(i)))
        .collect();
    let profile = workloads.path("host.memory.pb.gz");
    // Rust names its functions by path (alloc_rust::keep_some), C++ with
    // their parameters (keep_some(unsigned long, unsigned long)).
    let under = |stack: &[String], name: &str| {
        stack.iter().any(|f| {
            f == name || f.ends_with(&format!("::{name}")) || f.starts_with(&format!("{name}("))
        })
    };
    for (name, truth) in &truths {
        let allocated = Traces::bytes(&pprof, &profile, "process", name, "alloc_space");
        let held = Traces::bytes(&pprof, &profile, "process", name, "inuse_space");
        for (what, measured, known, traces) in [
            (
                "allocated under keep_some",
                allocated.count(|s| under(s, "keep_some")),
                truth.keeper,
                &allocated,
            ),
            (
                "allocated under alloc_and_free",
                allocated.count(|s| under(s, "alloc_and_free")),
                truth.churned,
                &allocated,
            ),
            (
                "in use under keep_some",
                held.count(|s| under(s, "keep_some")),
                truth.kept,
                &held,
            ),
        ] {
            let ratio = measured as f64 / known as f64;
            eprintln!("{name}: {what}: {measured} bytes, it counted {known} ({ratio:.3})");
            assert!(
                (0.8..=1.2).contains(&ratio),
                "{name}: {what} must be its own count ±20 %: {measured} against {known} \
                 ({ratio:.3})\n{traces:?}\n{log}"
            );
        }
    }
    // Each process's allocator was found where it is.
    for (name, file) in [
        ("alloc_cxx", "libc.so.6"),
        ("alloc_rust", "libc.so.6"),
        ("alloc_chain", "libjemalloc.so.2"),
        ("alloc_jemalloc", "alloc_jemalloc"),
        ("alloc_tcmalloc", "libtcmalloc_minimal.so.4"),
        ("alloc_mimalloc", "libmimalloc.so.2"),
    ] {
        let pid = children.iter().find(|(n, _)| *n == name).unwrap().1.id();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("process {pid}:")) && l.contains(file)),
            "{name}'s probes on {file}:\n{log}"
        );
    }
}

/// The workload `name`, to run for `millis` ms once it reads a line on
/// stdin ([`capture`] writes it), then report on stdout.
fn waiting(workloads: &Workloads, name: &str, millis: &str) -> Command {
    let mut command = Command::new(workloads.path(name));
    command
        .arg(millis)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    command
}

/// The bytes allocated and in use under `function` in one OTLP request,
/// as the receiver summarized it (every sample a memory sample).
fn bytes_under(request: &serde_json::Value, function: &str) -> (u64, u64) {
    assert_eq!(request["errors"], serde_json::json!([]), "{request}");
    let (mut allocated, mut in_use) = (0, 0);
    for resource in request["resources"].as_array().unwrap() {
        for sample in resource["samples"].as_array().unwrap() {
            assert_eq!(sample["profile"], "space", "{sample}");
            let stack = sample["stack"].as_array().unwrap();
            if !stack.iter().any(|f| f == function) {
                continue;
            }
            let bytes = sample["time"].as_u64().unwrap();
            match sample["kind"].as_str().unwrap() {
                "alloc_objects" => allocated += bytes,
                "inuse_objects" => in_use += bytes,
                other => panic!("unexpected sample kind {other}"),
            }
        }
    }
    (allocated, in_use)
}

/// When a window exported by the agent started (Unix ns): the earliest
/// start of its profiles.
fn window_start(request: &serde_json::Value) -> u64 {
    request["resources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|resource| resource["times"].as_array().unwrap())
        .map(|time| time.as_u64().unwrap())
        .min()
        .unwrap_or(0)
}

/// What a capture printed, and what each workload said it did.
struct Captured {
    /// hostprof's standard output: the summary.
    summary: String,
    /// Its standard error.
    log: String,
    /// Each workload's report lines, in the order given.
    reports: Vec<Vec<String>>,
}

impl Captured {
    /// What `alloc_chain` (or a build of it), workload `i`, reported.
    fn truth(&self, i: usize) -> Truth {
        parse_done(&self.reports[i][0])
    }
}

/// Runs `record` (a `hostprof record` command) over `workloads`, which
/// wait for a line on stdin: starts them once hostprof is recording and
/// has loaded their unwind tables (until then, stacks come from frame
/// pointers: the Rust workload's standard library has none), and reads
/// `lines` lines of report from each.
fn capture(mut record: Command, workloads: &mut [&mut KillOnDrop], lines: usize) -> Captured {
    let mut record = record
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hostprof record");
    let log = common::wait_for_line(record.stderr.take().unwrap(), "recording for");
    std::thread::sleep(Duration::from_secs(1));
    for workload in workloads.iter_mut() {
        workload.stdin().write_all(b"go\n").unwrap();
    }
    let reports = workloads
        .iter_mut()
        .map(|workload| {
            let mut reader = BufReader::new(workload.stdout());
            (0..lines)
                .map(|_| {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("a workload reports");
                    line
                })
                .collect()
        })
        .collect();
    let mut summary = String::new();
    std::io::Read::read_to_string(&mut record.stdout.take().unwrap(), &mut summary).unwrap();
    let status = record.wait().expect("hostprof record ran");
    let log = log.join().unwrap();
    assert!(status.success(), "hostprof record failed: {status}\n{log}");
    eprintln!("{summary}");
    Captured {
        summary,
        log,
        reports,
    }
}

/// The workload's report: `done <churned> <keeper> <kept> <blocks>`.
fn parse_done(line: &str) -> Truth {
    let numbers: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        line.starts_with("done ") && numbers.len() == 4,
        "alloc_chain's report: {line:?}"
    );
    Truth {
        churned: numbers[0],
        keeper: numbers[1],
        kept: numbers[2],
    }
}
