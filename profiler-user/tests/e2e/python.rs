//! CPython frames walked in the kernel (issue 13): the machine's Python
//! 3.11 runs `python_chain.py` twice, started before hostprof, with
//! stacks that are known: nested functions in two threads, and a
//! Python -> C (ctypes, libc `qsort`) -> Python chain. Read back with
//! Google's `pprof` (functions, then files and lines) and over OTLP with
//! the official OpenTelemetry types (frame type `cpython`).
//!
//! Needs root (BPF) and `/usr/bin/python3.11`.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{self, has_chain, KillOnDrop, Receiver, Traces};

/// The interpreter: the test machines have Debian's 3.11.
const PYTHON: &str = "/usr/bin/python3.11";

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/python_chain.py")
}

/// The workload's `# line:NAME` markers: name -> line number.
fn markers() -> HashMap<String, u32> {
    let text = std::fs::read_to_string(source()).unwrap();
    text.lines()
        .zip(1..)
        .filter_map(|(line, number)| {
            let name = line.split("# line:").nth(1)?;
            Some((name.trim().to_owned(), number))
        })
        .collect()
}

/// Whether `stack` (leaf first) holds `names` in this order, not
/// necessarily next to each other.
fn in_order(stack: &[String], names: &[&str]) -> bool {
    let mut at = 0;
    names.iter().all(
        |name| match stack[at..].iter().position(|frame| frame == name) {
            Some(i) => {
                at += i + 1;
                true
            }
            None => false,
        },
    )
}

/// The Python chains of the threads, leaf first.
const MAIN: &[&str] = &["inner_hot", "middle", "outer", "main"];
const WORKER: &[&str] = &["thread_leaf", "thread_worker", "Thread.run"];
const SORTER: &[&str] = &["call_qsort", "main"];

/// Starts `python_chain.py` in `mode` in `dir`, running well past the
/// capture, once it has started.
fn start(dir: &Path, mode: &str) -> KillOnDrop {
    let mut child = Command::new(PYTHON)
        .arg(source())
        .args(["15000", mode])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3.11");
    let mut started = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut started)
        .unwrap();
    assert_eq!(started.trim(), "started");
    KillOnDrop::new(child)
}

/// Asserts that at least 80 % of `traces` (all of one process) hold one
/// of `chains` in order, and each of them 20 samples or more.
fn assert_nested(what: &str, traces: &Traces, chains: &[&[&str]]) {
    let total = traces.total();
    let any = traces.count(|s| chains.iter().any(|chain| in_order(s, chain)));
    eprintln!("{what}: {any} of {total} samples nested\n{traces:?}");
    assert!(total > 150, "too few samples of {what}: {total}");
    assert!(
        any * 100 >= total * 80,
        "{what}: nested Python functions in only {any} of {total} samples"
    );
    for chain in chains {
        let count = traces.count(|s| in_order(s, chain));
        assert!(count >= 20, "{what}: {chain:?} in {count} of {total}");
    }
}

#[test]
fn python_functions_files_and_lines_are_in_the_stacks() {
    if common::skip_bpf() {
        return;
    }
    if !Path::new(PYTHON).exists() {
        panic!("{PYTHON} is needed (CPython 3.11 is on the test machines)");
    }
    let _serial = common::one_at_a_time();
    let pprof = common::pprof_tool();
    let dir = tempfile::tempdir().unwrap();
    // Started before hostprof.
    let threads = start(dir.path(), "threads");
    let sort = start(dir.path(), "sort");

    let receiver = Receiver::start(dir.path(), &[]);
    let output = dir.path().join("python.pb.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "4s", "--no-flamegraph", "-o"])
        .arg(&output)
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{}", receiver.grpc_port))
        .env("RUST_LOG", "hostprof=info")
        .output()
        .expect("run hostprof");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hostprof failed:\n{stderr}");
    for process in [&threads, &sort] {
        assert!(
            stderr.contains(&format!("process {}: Python 3.11", process.id())),
            "the process is found to run Python 3.11:\n{stderr}"
        );
    }
    let of = |process: &KillOnDrop| Traces::of_pid(&pprof, &output, process.id());
    let (threads, sort) = (of(&threads), of(&sort));

    // Functions: every thread's chain, in order.
    assert_nested("the threads process", &threads, &[MAIN, WORKER]);
    assert_nested("the sort process", &sort, &[SORTER]);
    let traces = sort;
    // Python -> C -> Python: libc's qsort between call_qsort and compare.
    let compare = traces.count(|s| s.iter().any(|f| f == "compare"));
    let through_c = traces.count(|s| {
        let at = |name: &str| s.iter().position(|f| f == name);
        let qsort = s.iter().position(|f| f.contains("qsort") || f.contains("msort"));
        matches!((at("compare"), qsort, at("call_qsort")), (Some(a), Some(b), Some(c)) if a < b && b < c)
    });
    assert!(
        compare >= 20 && through_c * 10 >= compare * 9,
        "qsort between compare and call_qsort in {through_c} of {compare}"
    );
    // Consecutive where no C code runs between them (3.11 calls Python
    // from Python without a C frame).
    let main = threads.count(|s| in_order(s, MAIN));
    assert!(threads.count(|s| has_chain(s, MAIN)) * 10 >= main * 9);

    // Lines: each frame at the line it runs.
    let marks = markers();
    let lines = Traces::with_lines(&pprof, &output, "python3.11");
    let mut at_line: HashMap<(String, u32), u64> = HashMap::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (count, stack) in &lines.0 {
        for frame in stack {
            // `function file:line`
            let Some((function, place)) = frame.rsplit_once(' ') else {
                continue;
            };
            let Some((file, line)) = place.rsplit_once(':') else {
                continue;
            };
            if !file.ends_with("python_chain.py") {
                continue;
            }
            *seen.entry(function.to_owned()).or_default() += count;
            if let Ok(line) = line.parse::<u32>() {
                *at_line.entry((function.to_owned(), line)).or_default() += count;
            }
        }
    }
    let share = |function: &str, allowed: &[&str]| {
        let good: u64 = allowed
            .iter()
            .map(|mark| {
                at_line
                    .get(&(function.to_owned(), marks[*mark]))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        let all = seen.get(function).copied().unwrap_or(0);
        assert!(
            all > 0 && good * 100 >= all * 95,
            "{function}: {good} of {all} samples at {allowed:?}; seen {at_line:?}"
        );
    };
    share("inner_hot", &["inner_loop", "inner_body"]);
    share("middle", &["middle_call"]);
    share("outer", &["outer_call"]);
    share("main", &["main_call", "sort_call"]);
    share("thread_leaf", &["leaf_loop", "leaf_body"]);
    share("thread_worker", &["worker_call"]);
    share("compare", &["compare_loop", "compare_body"]);
    share("call_qsort", &["qsort_call"]);

    // OTLP, read with the official types: the frames are `cpython`.
    let received = receiver.received();
    assert_eq!(received.len(), 1, "one export");
    common::assert_frame_type(&received[0], "python3.11", "cpython");
}
