//! The stack corpus (issue 15): real programs whose stacks hostprof samples
//! while gdb snapshots every thread (`gdb_stacks.py`), compared two ways.
//!
//! - Complete: a sample's user stack ends in a frame that starts a process
//!   or thread (`_start`, `clone3`, a Go runtime entry, ...) and has no
//!   `[unknown]`, `[incomplete: ...]` or `[truncated]` frame.
//! - Same chain as gdb: for every whole gdb stack, some sample has exactly
//!   gdb's return addresses from the leaf's call site to the outermost
//!   frame. The off-CPU profile is recorded beside the CPU one for this:
//!   gdb stops every thread to read it, each stop is a wait (as long as
//!   gdb holds the process, so always kept), and that wait's stack is the
//!   very stack gdb reads. No chain is left out for want of a sample at
//!   the right moment. A gdb stack deeper than a stack keeps (519 frames:
//!   cc1plus's garbage collector, 920 deep) is found by a sample marked
//!   `[truncated]` with gdb's return addresses as far as it goes.
//!
//! `cargo xtask stacks` runs [`print_table`] over the whole corpus; the
//! other tests hold the bar (95 % of CPU samples complete, every gdb
//! chain found) for each program. `hostprof record --pid` starts sampling
//! once the program's unwind tables are in, as a user's would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, KillOnDrop};

/// Share of a program's samples that must be complete.
const COMPLETE_BAR: f64 = 0.95;

/// Outermost frames of a complete C, C++ or Rust stack (the main thread's
/// and other threads').
const NATIVE_ENDS: &[&str] = &["_start", "clone3", "__clone", "clone"];

/// One program of the corpus.
struct Program {
    /// Its name in the table.
    name: &'static str,
    /// Functions a complete stack ends in (a name, or a name's prefix
    /// ending in `*`).
    ends: &'static [&'static str],
    /// Whether gdb's stacks are an oracle for it: not for JIT code, and
    /// not at the level of return addresses where hostprof puts Python
    /// frames in place of the interpreter's.
    gdb: bool,
    /// Starts it, in `dir`, running for about `run` (its process is the
    /// one profiled: the real compiler, not a driver).
    start: fn(dir: &Path, run: Duration) -> Running,
    /// Called every half second while it is sampled (a JIT's symbol map).
    refresh: Option<fn(pid: u32)>,
}

/// A started program: the process to profile and what to kill after
/// (the process itself too: a compiler driver's child outlives it).
struct Running {
    pid: u32,
    _children: Vec<KillOnDrop>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only while the pid is still the compiler's (not reused since
        // it exited).
        if matches!(comm(self.pid).as_deref(), Some("cc1plus" | "rustc")) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        // The JIT programs' symbol maps (Node.js, the JVM).
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", self.pid));
    }
}

impl Running {
    fn one(child: Child) -> Running {
        Running {
            pid: child.id(),
            _children: vec![KillOnDrop::new(child)],
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
struct Row {
    samples: u64,
    complete: u64,
    /// Whole gdb stacks (the leaf's call site known).
    comparable: usize,
    /// Those with a sample of the same whole chain.
    matched: usize,
    /// gdb stacks seen (threads).
    gdb_stacks: usize,
    /// The commonest ends of incomplete stacks, for the table.
    broken: Vec<(u64, String)>,
}

impl Row {
    fn complete_share(&self) -> f64 {
        self.complete as f64 / self.samples.max(1) as f64
    }
}

/// A sampled user stack: (address, function) leaf first, the address
/// `None` for the mark frames; callers' addresses are return address - 1
/// (as pprof shows them).
struct Sample {
    count: u64,
    frames: Vec<(Option<u64>, String)>,
}

fn workload(dir: &Path, name: &str) -> PathBuf {
    common::build_workloads(dir, &[name]);
    dir.join(name)
}

fn millis(run: Duration) -> String {
    run.as_millis().to_string()
}

/// Builds workload `name` and runs it for `run` with `args` after the run
/// time, its output discarded.
fn run_workload(dir: &Path, name: &str, run: Duration, args: &[&str]) -> Running {
    Running::one(
        Command::new(workload(dir, name))
            .arg(millis(run))
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn small_threads(dir: &Path, run: Duration) -> Running {
    run_workload(dir, "stacks_small_threads", run, &[])
}

fn deep_recursion(dir: &Path, run: Duration) -> Running {
    run_workload(dir, "deep_chain", run, &["300"])
}

fn sigaltstack(dir: &Path, run: Duration) -> Running {
    run_workload(dir, "stacks_sigaltstack", run, &[])
}

fn coroutines(dir: &Path, run: Duration) -> Running {
    run_workload(dir, "stacks_ucontext", run, &[])
}

fn go(dir: &Path, run: Duration) -> Running {
    run_workload(dir, "stacks_go", run, &[])
}

fn python(_dir: &Path, run: Duration) -> Running {
    let code = format!(
        "import time\n\
         def leaf(n):\n    return sum(i * i for i in range(n))\n\
         def middle(n):\n    return leaf(n)\n\
         end = time.monotonic() + {}\n\
         while time.monotonic() < end:\n    middle(10000)\n",
        run.as_secs_f64()
    );
    Running::one(Command::new("python3").args(["-c", &code]).spawn().unwrap())
}

/// Rust source of `count` generic functions, each used: minutes of
/// `rustc -O` work in the front end and LLVM.
fn generated_rust(count: usize) -> String {
    let mut source = String::from("use std::collections::HashMap;\n");
    for i in 0..count {
        source.push_str(&format!(
            "pub struct S{i}<T> {{ v: Vec<T>, m: HashMap<String, T> }}\n\
             impl<T: Clone + std::fmt::Debug + PartialEq + Default> S{i}<T> {{\n\
             pub fn f(&self, x: T) -> Vec<T> {{ let mut r = self.v.clone(); r.push(x); \
             r.iter().filter(|y| **y != T::default()).cloned().collect() }}\n\
             pub fn g<U: Into<T> + Clone>(&mut self, u: U) -> Option<T> {{ \
             self.m.insert(format!(\"{{:?}}\", u.clone().into()), u.into()) }}\n}}\n\
             pub fn use{i}() -> usize {{ let mut s = S{i}::<u64> {{ v: vec![1, 2], m: HashMap::new() }}; \
             s.g(3u32); s.f(4).len() + S{i}::<String> {{ v: vec![], m: HashMap::new() }}.f(\"a\".into()).len() }}\n"
        ));
    }
    source
}

fn rustc(dir: &Path, _run: Duration) -> Running {
    let source = dir.join("corpus.rs");
    std::fs::write(&source, generated_rust(600)).unwrap();
    // The real compiler, not rustup's proxy.
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    Running::one(
        Command::new(Path::new(&sysroot).join("bin/rustc"))
            .args(["-O", "--crate-type=lib", "-o"])
            .arg(dir.join("corpus.rlib"))
            .arg(&source)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// C++ of `count` functions, each sorting with a lambda of its own (a
/// `std::sort` instantiation each): seconds of cc1plus's front end and
/// optimizer.
fn generated_cxx(count: usize) -> String {
    let mut source = String::from(
        "#include <algorithm>\n#include <map>\n#include <string>\n#include <vector>\n",
    );
    for i in 0..count {
        source.push_str(&format!(
            "int f{i}(std::vector<int>& v) {{ std::map<int, std::string> m; \
             for (size_t j = 0; j < v.size(); ++j) m[v[j] * {i}] = std::to_string(j); \
             std::sort(v.begin(), v.end(), [](int a, int b) {{ return (a ^ {i}) < (b ^ {i}); }}); \
             return (int)m.size(); }}\n"
        ));
    }
    source
}

fn cc1plus(dir: &Path, _run: Duration) -> Running {
    let source = dir.join("corpus.cc");
    std::fs::write(&source, generated_cxx(150)).unwrap();
    // The driver's temporary assembly file goes in `dir`: cc1plus is
    // killed before it ends, and the driver then leaves the file behind.
    let driver = Command::new("g++")
        .env("TMPDIR", dir)
        .args(["-O2", "-c", "-o"])
        .arg(dir.join("corpus.o"))
        .arg(&source)
        .spawn()
        .unwrap();
    let driver_pid = driver.id();
    let driver = KillOnDrop::new(driver);
    // The compiler proper is the driver's child.
    let mut pid = None;
    common::wait_until(Duration::from_secs(10), "cc1plus to start", || {
        pid = children(driver_pid)
            .into_iter()
            .find(|&child| comm(child).as_deref() == Some("cc1plus"));
        pid.is_some()
    });
    Running {
        pid: pid.unwrap(),
        _children: vec![driver],
    }
}

fn node(dir: &Path, run: Duration) -> Running {
    let code = format!(
        "function leaf(n) {{ let s = 0; for (let i = 0; i < n; i++) s += i * i; return s; }}\n\
         function middle(n) {{ return leaf(n); }}\n\
         const end = Date.now() + {};\n\
         while (Date.now() < end) middle(100000);\n",
        run.as_millis()
    );
    Running::one(
        Command::new("node")
            .current_dir(dir)
            .args(["--perf-basic-prof", "-e", &code])
            .spawn()
            .unwrap(),
    )
}

/// A JIT-compiled hot loop on OpenJDK 17, frame pointers kept in compiled
/// code (as profilers ask of Java programs).
fn jvm(dir: &Path, run: Duration) -> Running {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/JitHot.java");
    let javac = Command::new("javac")
        .arg("-d")
        .arg(dir)
        .arg(source)
        .status()
        .expect("javac (OpenJDK 17 is on the test machine)");
    assert!(javac.success(), "javac failed");
    Running::one(
        Command::new("java")
            .args(["-XX:+PreserveFramePointer", "-cp"])
            .arg(dir)
            .arg("JitHot")
            .arg(run.as_millis().to_string())
            .spawn()
            .unwrap(),
    )
}

/// Has the JVM write its map of compiled code (`/tmp/perf-PID.map`), as a
/// user of `jcmd` does; again and again while sampling, since methods are
/// compiled again (tier by tier) at new addresses.
fn jvm_perf_map(pid: u32) {
    let _ = Command::new("jcmd")
        .args([&pid.to_string(), "Compiler.perfmap"])
        .stdout(Stdio::null())
        .status();
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim().to_owned())
}

/// The corpus, in table order.
fn corpus() -> Vec<Program> {
    let go_ends: &'static [&'static str] = &[
        "runtime.goexit*",
        "runtime.mstart*",
        "runtime.rt0_go*",
        "runtime.mcall*",
        "runtime.clone*",
    ];
    vec![
        Program {
            name: "small thread stacks (C)",
            ends: NATIVE_ENDS,
            gdb: true,
            start: small_threads,
            refresh: None,
        },
        Program {
            name: "deep recursion, 300 (C)",
            ends: NATIVE_ENDS,
            gdb: true,
            start: deep_recursion,
            refresh: None,
        },
        Program {
            name: "signal handler on sigaltstack (C)",
            ends: NATIVE_ENDS,
            gdb: true,
            start: sigaltstack,
            refresh: None,
        },
        Program {
            name: "makecontext coroutines (C)",
            ends: &["_start", "__start_context"],
            gdb: true,
            start: coroutines,
            refresh: None,
        },
        Program {
            name: "Go 1.19 goroutines",
            ends: go_ends,
            gdb: true,
            start: go,
            refresh: None,
        },
        Program {
            name: "CPython 3.11",
            ends: NATIVE_ENDS,
            gdb: false,
            start: python,
            refresh: None,
        },
        Program {
            name: "cc1plus -O2 (C++)",
            ends: NATIVE_ENDS,
            gdb: true,
            start: cc1plus,
            refresh: None,
        },
        Program {
            name: "rustc -O (Rust, LLVM)",
            ends: NATIVE_ENDS,
            gdb: true,
            start: rustc,
            refresh: None,
        },
        Program {
            name: "OpenJDK 17 (JIT)",
            ends: NATIVE_ENDS,
            gdb: false,
            start: jvm,
            refresh: Some(jvm_perf_map),
        },
        Program {
            name: "Node.js 20 (JIT)",
            ends: NATIVE_ENDS,
            gdb: false,
            start: node,
            refresh: None,
        },
    ]
}

/// Whether `name` is one of `ends` (`*` ends a prefix).
fn is_end(name: &str, ends: &[&str]) -> bool {
    ends.iter().any(|end| match end.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *end,
    })
}

/// Whether a user stack is complete: it ends in one of `ends`, with no
/// frame hostprof could not name or follow.
fn is_complete(frames: &[(Option<u64>, String)], ends: &[&str]) -> bool {
    frames.last().is_some_and(|(_, name)| is_end(name, ends))
        && !frames.iter().any(|(_, name)| name.starts_with('['))
}

/// Kernel addresses start here (x86-64).
const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// Parses `pprof -traces -addresses -sample_index=samples`: the user
/// frames of each sample.
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for block in text.split("-----------+") {
        let mut count = None;
        let mut frames = Vec::new();
        for line in block.lines() {
            if line.len() <= 13 || line.get(10..13) != Some("   ") {
                continue;
            }
            let value = line[..10].trim();
            if !value.is_empty() {
                count = value.parse::<u64>().ok();
            }
            let rest = line[13..].trim();
            // A function inlined into the next frame: same address.
            if rest.ends_with("(inline)") {
                continue;
            }
            let (address, name) = match rest.split_once(' ') {
                Some((word, name)) if word.len() == 16 => match u64::from_str_radix(word, 16) {
                    Ok(address) => (Some(address), name.trim()),
                    Err(_) => (None, rest),
                },
                _ => (None, rest),
            };
            if address.is_some_and(|a| a >= KERNEL_START) {
                continue;
            }
            // The function, without pprof's file:line.
            let name = name.split(' ').next().unwrap_or_default();
            let name = if rest.starts_with('[') { rest } else { name };
            frames.push((address, name.to_owned()));
        }
        if let Some(count) = count {
            if !frames.is_empty() {
                samples.push(Sample { count, frames });
            }
        }
    }
    samples
}

/// gdb's whole stacks, each the return addresses of its callers (from the
/// leaf's caller's return address out; `None` where gdb had the exact pc
/// of a frame a signal interrupted, which varies from sample to sample).
/// Panics when gdb could not attach.
fn gdb_chains(snapshot: &str) -> Vec<Vec<Option<u64>>> {
    let mut chains = Vec::new();
    for line in snapshot.lines().filter(|line| line.starts_with('{')) {
        let Ok(thread) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if thread["summary"].as_bool() == Some(true) {
            // Attaching failed (an error at detach leaves good stacks).
            assert!(
                thread["error"].is_null() || thread["threads"].as_u64() > Some(0),
                "gdb: {}",
                thread["error"]
            );
            continue;
        }
        if !thread["error"].is_null() {
            continue;
        }
        let Some(frames) = thread["frames"].as_array() else {
            continue;
        };
        let mut chain = Vec::new();
        let mut after_signal = false;
        // gdb found the outermost frame, or one of the two ends its stop
        // reason does not name (below).
        let mut whole = thread["stop"].as_str() == Some("outermost");
        for frame in frames {
            let kind = frame["type"].as_str().unwrap_or_default();
            if kind == "INLINE" || kind == "TAILCALL" {
                continue;
            }
            let pc = frame["pc"]
                .as_str()
                .and_then(|pc| u64::from_str_radix(pc.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0);
            if pc == 0 {
                whole = true; // Go's outermost goroutine frames
                break;
            }
            let planted = frame["return_to_entry"].as_bool() == Some(true);
            chain.push(if after_signal {
                None
            } else if planted {
                // hostprof names a planted return at its own address, not
                // the call before it (compared as its address + 1).
                Some(pc + 1)
            } else {
                Some(pc)
            });
            after_signal = kind == "SIGTRAMP";
            if planted {
                whole = true; // makecontext: what gdb finds past here is garbage
                break;
            }
        }
        if whole && chain.len() >= 2 {
            chains.push(chain.split_off(1));
        }
    }
    chains
}

/// Compares gdb's chains with the samples: (comparable, matched).
fn compare<'a>(
    chains: &[Vec<Option<u64>>],
    samples: impl Iterator<Item = &'a Sample>,
) -> (usize, usize) {
    // Each sample's callers' return addresses, and whether it was cut at
    // the depth a stack keeps.
    let sampled: Vec<(Vec<u64>, bool)> = samples
        .map(|sample| {
            let callers: Vec<u64> = sample.frames[1..]
                .iter()
                .map_while(|(address, _)| address.map(|a| a + 1))
                .collect();
            // Cut at the depth limit: every frame but the mark has an
            // address (no Python frames, no other mark).
            let truncated = sample
                .frames
                .last()
                .is_some_and(|(_, name)| name == "[truncated]")
                && callers.len() + 2 == sample.frames.len();
            (callers, truncated)
        })
        .collect();
    let (mut comparable, mut matched) = (0, 0);
    for chain in chains {
        let Some(Some(first)) = chain.first() else {
            continue;
        };
        comparable += 1;
        let same_site: Vec<&Vec<u64>> = sampled
            .iter()
            .filter(|(s, _)| s.first() == Some(first))
            .map(|(s, _)| s)
            .collect();
        // The same chain; or, where gdb's is deeper than a stack keeps (a
        // garbage collector's recursion), a sample marked `[truncated]`
        // whose frames are gdb's as far as it goes.
        let same_chain = |(s, truncated): &&(Vec<u64>, bool)| {
            let whole = s.len() == chain.len() || (*truncated && s.len() < chain.len());
            whole
                && s.iter()
                    .zip(chain)
                    .all(|(ours, theirs)| theirs.is_none_or(|pc| pc == *ours))
        };
        if sampled
            .iter()
            .filter(|(s, _)| s.first() == Some(first))
            .any(|sample| same_chain(&sample))
        {
            matched += 1;
        } else {
            // For the log: gdb's chain and the longest of ours from there.
            let hex = |pcs: Vec<String>| pcs.join(" ");
            let theirs = chain
                .iter()
                .map(|pc| pc.map_or("*".into(), |pc| format!("{pc:x}")));
            let ours = same_site.iter().max_by_key(|s| s.len()).map_or_else(
                || "(no sample from this call site)".to_owned(),
                |s| hex(s.iter().map(|pc| format!("{pc:x}")).collect()),
            );
            eprintln!(
                "gdb chain not sampled:\n  gdb  {}\n  ours {ours}",
                hex(theirs.collect()),
            );
        }
    }
    (comparable, matched)
}

/// Runs `program`: hostprof samples it for `record` while gdb takes
/// snapshots; returns what they show.
fn measure(program: &Program, dir: &Path) -> Row {
    let record = Duration::from_secs(5);
    let running = (program.start)(dir, record * 3);
    let pid = running.pid;
    // Let it start up (threads, JIT, the compiler past its driver).
    std::thread::sleep(Duration::from_millis(1500));
    let output = dir.join("stacks.pb.gz");
    let mut hostprof = KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args(["record", "--no-flamegraph", "--duration"])
            .arg(format!("{}ms", record.as_millis()))
            // The most samples there can be, and the waits gdb causes.
            .args(["--frequency", "1000", "--profiles", "cpu,off-cpu"])
            .arg("--pid")
            .arg(pid.to_string())
            .arg("-o")
            .arg(&output)
            .env("RUST_LOG", "hostprof=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hostprof"),
    );
    // Sampling starts once the program's unwind tables are in.
    let log = common::wait_for_line(hostprof.stderr(), "recording for");
    let mut snapshots = String::new();
    if program.gdb {
        let started = Instant::now();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(500));
            // gdb holds the process up to a second (reading a large
            // program's symbols): the wait it causes must end, and be
            // sampled, before the capture does.
            if started.elapsed() + Duration::from_millis(1500) > record
                || !Path::new(&format!("/proc/{pid}")).exists()
            {
                break;
            }
            let out = Command::new("gdb")
                .args(["-nx", "-batch", "-x"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/gdb_stacks.py"))
                .env("GDB_STACKS_PID", pid.to_string())
                .stderr(Stdio::null())
                .output()
                .expect("gdb (`cargo xtask setup` installs it)");
            snapshots.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    } else if let Some(refresh) = program.refresh {
        let started = Instant::now();
        while started.elapsed() + Duration::from_millis(700) < record {
            refresh(pid);
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let status = hostprof.wait_with_output().expect("hostprof").status;
    let log = log.join().expect("hostprof's log");
    assert!(status.success(), "hostprof record failed:\n{log}");
    drop(running);
    let focus = format!("-tagfocus=pid={pid}");
    let traces = |index: &str, profile: &Path| {
        let text = common::pprof(
            &common::pprof_tool(),
            &["-traces", "-addresses", index, &focus],
            profile,
        );
        parse_samples(&text)
    };
    let samples = traces("-sample_index=samples", &output);
    let waits = traces("-sample_index=events", &dir.join("stacks.off-cpu.pb.gz"));
    let mut row = Row::default();
    let mut broken: HashMap<String, u64> = HashMap::new();
    for sample in &samples {
        row.samples += sample.count;
        if is_complete(&sample.frames, program.ends) {
            row.complete += sample.count;
        } else {
            let tail: Vec<&str> = sample
                .frames
                .iter()
                .rev()
                .take(2)
                .map(|(_, n)| n.as_str())
                .collect();
            *broken.entry(tail.join(" <- ")).or_default() += sample.count;
        }
    }
    let chains = gdb_chains(&snapshots);
    row.gdb_stacks = chains.len();
    (row.comparable, row.matched) = compare(&chains, samples.iter().chain(&waits));
    let mut broken: Vec<(u64, String)> = broken.into_iter().map(|(k, v)| (v, k)).collect();
    broken.sort_unstable_by(|a, b| b.cmp(a));
    broken.truncate(3);
    row.broken = broken;
    row
}

/// Asserts the bar for `name`.
fn holds_the_bar(name: &str) {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let program = corpus().into_iter().find(|p| p.name == name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let row = measure(&program, dir.path());
    eprintln!("{name}: {row:?}");
    assert!(row.samples >= 100, "{name}: only {} samples", row.samples);
    assert!(
        row.complete_share() >= COMPLETE_BAR,
        "{name}: {} of {} samples complete (want >= 95 %); broken ends: {:?}",
        row.complete,
        row.samples,
        row.broken
    );
    if program.gdb {
        assert!(
            row.matched == row.comparable && row.comparable >= 1,
            "{name}: gdb's caller chain found for {} of {} whole gdb stacks (want all, and one \
             at least)",
            row.matched,
            row.comparable,
        );
    }
}

#[test]
fn threads_on_small_stacks_are_complete_and_match_gdb() {
    holds_the_bar("small thread stacks (C)");
}

#[test]
fn deep_recursion_is_complete_and_matches_gdb() {
    holds_the_bar("deep recursion, 300 (C)");
}

#[test]
fn signal_handlers_on_sigaltstack_are_complete_and_match_gdb() {
    holds_the_bar("signal handler on sigaltstack (C)");
}

#[test]
fn makecontext_coroutines_are_complete_and_match_gdb() {
    holds_the_bar("makecontext coroutines (C)");
}

#[test]
fn go_goroutines_are_complete_and_match_gdb() {
    holds_the_bar("Go 1.19 goroutines");
}

#[test]
fn cpython_is_complete() {
    holds_the_bar("CPython 3.11");
}

#[test]
fn cc1plus_is_complete_and_matches_gdb() {
    holds_the_bar("cc1plus -O2 (C++)");
}

#[test]
fn rustc_is_complete_and_matches_gdb() {
    holds_the_bar("rustc -O (Rust, LLVM)");
}

#[test]
fn node_is_complete() {
    holds_the_bar("Node.js 20 (JIT)");
}

#[test]
fn jvm_is_complete() {
    holds_the_bar("OpenJDK 17 (JIT)");
}

/// The whole corpus as a table (`cargo xtask stacks`): complete share and
/// gdb chains matched per program. Ignored in `cargo xtask test`: the
/// tests above hold the bar for each program.
#[test]
#[ignore]
fn print_table() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let only = std::env::var("HOSTPROF_STACKS_ONLY").ok();
    let mut lines = vec![
        "| program | samples | complete | gdb chains matched | commonest broken ends |".to_owned(),
        "|---|---|---|---|---|".to_owned(),
    ];
    for program in corpus() {
        if only
            .as_deref()
            .is_some_and(|only| !program.name.contains(only))
        {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let row = measure(&program, dir.path());
        let gdb = if program.gdb {
            format!("{} of {}", row.matched, row.comparable)
        } else {
            "(no oracle)".to_owned()
        };
        let broken: Vec<String> = row
            .broken
            .iter()
            .map(|(n, end)| format!("{n}× `{end}`"))
            .collect();
        lines.push(format!(
            "| {} | {} | {:.1} % | {} | {} |",
            program.name,
            row.samples,
            100.0 * row.complete_share(),
            gdb,
            broken.join("; ")
        ));
        eprintln!("{}", lines.last().unwrap());
    }
    println!("\n{}", lines.join("\n"));
}
