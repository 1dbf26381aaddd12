//! CPython frames walked in the kernel (issue 13): every interpreter at
//! hand runs `python_chain.py` twice, started before hostprof, with
//! stacks that are known: nested functions in two threads, and a
//! Python -> C (ctypes, libc `qsort`) -> Python chain. Read back with
//! Google's `pprof` (functions, then files and lines) and over OTLP with
//! the official OpenTelemetry types (frame type `cpython`).
//!
//! Needs root (BPF) and Debian's `/usr/bin/python3.11` (a static
//! interpreter: offsets from the table). `python3.12` (the table too) and
//! `python3.13` (its own `_Py_DebugOffsets`), both linking
//! `libpython3.x.so`, are tested when on the PATH (pyenv's on the test
//! machines), and the test says which were not found.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{self, has_chain, KillOnDrop, Receiver, Traces};

/// Debian's interpreter, always there on the test machines.
const PYTHON_3_11: &str = "/usr/bin/python3.11";

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

/// The interpreters to test: (executable, version), 3.11 first.
fn interpreters() -> Vec<(PathBuf, &'static str)> {
    assert!(
        Path::new(PYTHON_3_11).exists(),
        "{PYTHON_3_11} is needed (CPython 3.11 is on the test machines)"
    );
    let mut found = vec![(PathBuf::from(PYTHON_3_11), "3.11")];
    for version in ["3.12", "3.13"] {
        match other_python(version) {
            Some(path) => found.push((path, version)),
            None => eprintln!("no python{version} on the PATH or in pyenv: not tested"),
        }
    }
    found
}

/// The executable of CPython `version`: `python{version}` on the PATH,
/// else pyenv's (`$PYENV_ROOT`, or `~/.pyenv`, `versions/{version}.*`).
fn other_python(version: &str) -> Option<PathBuf> {
    let command = format!("python{version}");
    // The real executable (a pyenv shim is a script).
    let on_path = Command::new(&command)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    on_path.or_else(|| {
        let root = std::env::var_os("PYENV_ROOT")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".pyenv")))?;
        let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(&format!("{version}.")))
            })
            .map(|path| path.join("bin").join(&command))
            .filter(|path| path.exists())
            .collect();
        versions.sort();
        versions.pop()
    })
}

/// Starts `python_chain.py` in `mode` with `python`, in `dir`, running
/// well past the capture, once it has started.
fn start(python: &Path, dir: &Path, mode: &str) -> KillOnDrop {
    let mut child = Command::new(python)
        .arg(source())
        .args(["25000", mode])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("run {}: {err}", python.display()));
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
    assert!(total > 100, "too few samples of {what}: {total}");
    assert!(
        any * 100 >= total * 80,
        "{what}: nested Python functions in only {any} of {total} samples"
    );
    for chain in chains {
        let count = traces.count(|s| in_order(s, chain));
        assert!(count >= 20, "{what}: {chain:?} in {count} of {total}");
    }
}

/// Python -> C -> Python: libc's qsort between call_qsort and compare in
/// 80 % of the samples of `compare` (in the others the native unwind
/// stopped early, inside the interpreter: its Python frames are then
/// outermost, without the C frames between them).
fn assert_through_c(what: &str, sort: &Traces) {
    let compare = sort.count(|s| s.iter().any(|f| f == "compare"));
    let through_c = sort.count(|s| {
        let at = |name: &str| s.iter().position(|f| f == name);
        let qsort = s.iter().position(|f| f.contains("qsort") || f.contains("msort"));
        matches!((at("compare"), qsort, at("call_qsort")), (Some(a), Some(b), Some(c)) if a < b && b < c)
    });
    assert!(
        compare >= 20 && through_c * 10 >= compare * 8,
        "{what}: qsort between compare and call_qsort in {through_c} of {compare}"
    );
}

/// Each frame of the workload's functions in process `executable` at
/// the lines it runs (95 % of their samples).
fn assert_lines(pprof: &Path, output: &Path, executable: &str) {
    let marks = markers();
    let lines = Traces::with_lines(pprof, output, executable);
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
            "{executable}: {function}: {good} of {all} samples at {allowed:?}; seen {at_line:?}"
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
}

#[test]
fn python_functions_files_and_lines_are_in_the_stacks() {
    if common::skip_bpf() {
        return;
    }
    let interpreters = interpreters();
    let _serial = common::one_at_a_time();
    let pprof = common::pprof_tool();
    let dir = tempfile::tempdir().unwrap();
    // Started before hostprof: for each, (executable name, version, the
    // threads process, the sort process).
    let running: Vec<(String, &str, KillOnDrop, KillOnDrop)> = interpreters
        .iter()
        .map(|(python, version)| {
            let name = python.file_name().unwrap().to_string_lossy().into_owned();
            let threads = start(python, dir.path(), "threads");
            let sort = start(python, dir.path(), "sort");
            (name, *version, threads, sort)
        })
        .collect();

    let receiver = Receiver::start(dir.path(), &[]);
    let output = dir.path().join("python.pb.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "8s", "--no-flamegraph", "-o"])
        .arg(&output)
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{}", receiver.grpc_port))
        .env("RUST_LOG", "hostprof=info")
        .output()
        .expect("run hostprof");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hostprof failed:\n{stderr}");
    let received = receiver.received();
    assert_eq!(received.len(), 1, "one export");
    if let Some(keep) = std::env::var_os("HOSTPROF_KEEP_PROFILE") {
        std::fs::copy(&output, keep).unwrap();
    }

    for (name, version, threads, sort) in &running {
        for process in [threads, sort] {
            assert!(
                stderr.contains(&format!("process {}: Python {version}", process.id())),
                "{name} is found to run Python {version}:\n{stderr}"
            );
        }
        let of = |process: &KillOnDrop| Traces::of_pid(&pprof, &output, process.id());
        let (threads, sort) = (of(threads), of(sort));
        // Functions: every thread's chain, in order.
        assert_nested(&format!("{name} threads"), &threads, &[MAIN, WORKER]);
        assert_nested(&format!("{name} sort"), &sort, &[SORTER]);
        assert_through_c(name, &sort);
        // Consecutive where no C code runs between them (Python calls
        // Python without a C frame since 3.11).
        let main = threads.count(|s| in_order(s, MAIN));
        assert!(threads.count(|s| has_chain(s, MAIN)) * 10 >= main * 9);
        assert_lines(&pprof, &output, name);
        // OTLP, read with the official types: the frames are `cpython`.
        common::assert_frame_type(&received[0], name, "cpython");
    }
}
