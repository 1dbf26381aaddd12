//! Stacks without frame pointers, unwound in the kernel from `.eh_frame`:
//! C compiled `-O2 -fomit-frame-pointer` with the hot function 4 and 27
//! calls deep, a frame-pointer program calling back through a shared
//! library built without them, and a Rust release binary without frame
//! pointers. At least 95 % of the hot function's samples must carry its
//! exact full chain up to `main`. Checked with Google's pprof tool.
//!
//! Needs root (BPF).

mod common;

use std::path::Path;
use std::process::{Child, Command};

use common::{run, Traces};

const NO_FP: [&str; 5] = [
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-fno-optimize-sibling-calls",
    "-fasynchronous-unwind-tables",
];

fn workloads(out: &Path) {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workloads"));
    for (source, binary) in [
        ("cpu_chain.c", "nofp_chain"),
        ("deep_chain.c", "deep_chain"),
    ] {
        run(Command::new("gcc")
            .args(NO_FP)
            .arg("-o")
            .arg(out.join(binary))
            .arg(src.join(source)));
    }
    run(Command::new("gcc")
        .args(NO_FP)
        .args(["-shared", "-fPIC", "-o"])
        .arg(out.join("libhop.so"))
        .arg(src.join("libhop.c")));
    // The program itself keeps frame pointers: a mixed stack.
    run(Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ])
        .arg("-o")
        .arg(out.join("lib_chain"))
        .arg(src.join("lib_chain.c"))
        .arg(format!("-L{}", out.display()))
        .arg("-lhop")
        .arg(format!("-Wl,-rpath,{}", out.display())));
    run(Command::new("rustc")
        .args(["-C", "opt-level=3", "-C", "force-frame-pointers=no", "-g"])
        .arg("-o")
        .arg(out.join("rust_nofp"))
        .arg(src.join("rust_chain.rs")));
}

fn spawn(dir: &Path, name: &str) -> Child {
    Command::new(dir.join(name))
        .arg("6000")
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {name}: {err}"))
}

/// Samples of `traces` whose stack holds `hot`, and those of them with the
/// whole `chain` (leaf first, starting at `hot`).
fn share(traces: &Traces, hot: &str, chain: &[&str]) -> (u64, u64) {
    let with_hot = traces.count(|stack| stack.iter().any(|f| f == hot));
    let full = traces.count(|stack| common::has_chain(stack, chain));
    (full, with_hot)
}

fn assert_full_chains(traces: &Traces, name: &str, hot: &str, chain: &[&str]) {
    let (full, with_hot) = share(traces, hot, chain);
    let broken = Traces(
        traces
            .0
            .iter()
            .filter(|(_, s)| s.iter().any(|f| f == hot) && !common::has_chain(s, chain))
            .cloned()
            .collect(),
    );
    assert!(
        with_hot > 50 && full * 100 >= with_hot * 95,
        "{name}: the full chain in {full} of {with_hot} samples of {hot}\n\
         without it:\n{broken:?}\nall:\n{traces:?}"
    );
}

#[test]
fn stacks_without_frame_pointers_are_complete() {
    if common::skip_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    workloads(dir.path());
    let mut children: Vec<Child> = ["nofp_chain", "deep_chain", "lib_chain", "rust_nofp"]
        .into_iter()
        .map(|name| spawn(dir.path(), name))
        .collect();
    let output = dir.path().join("nofp.pb.gz");
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "4s", "--no-flamegraph", "-o"])
        .arg(&output)
        .status()
        .expect("run hostprof");
    for child in &mut children {
        child.kill().ok();
        child.wait().ok();
    }
    assert!(status.success());
    let pprof = common::pprof_tool();

    let traces = Traces::of(&pprof, &output, "nofp_chain");
    assert_full_chains(
        &traces,
        "nofp_chain",
        "hot_loop",
        &["hot_loop", "level2", "level1", "main"],
    );

    let traces = Traces::of(&pprof, &output, "deep_chain");
    let mut deep = vec!["hot_loop"];
    deep.extend(std::iter::repeat_n("descend", 26));
    deep.push("main");
    assert_full_chains(&traces, "deep_chain", "hot_loop", &deep);

    let traces = Traces::of(&pprof, &output, "lib_chain");
    assert_full_chains(
        &traces,
        "lib_chain",
        "hot_loop",
        &["hot_loop", "level2", "hop", "level1", "main"],
    );

    let traces = Traces::of(&pprof, &output, "rust_nofp");
    assert_full_chains(
        &traces,
        "rust_nofp",
        "rust_chain::engine::Hasher::crunch_numbers",
        &[
            "rust_chain::engine::Hasher::crunch_numbers",
            "rust_chain::drive",
            "rust_chain::main",
        ],
    );
}
