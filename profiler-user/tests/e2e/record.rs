//! End to end: compile real workloads, run `hostprof record` on the host
//! while they run, and check the output with Google's `pprof` tool (an
//! independent decoder), not with our own.
//!
//! Needs root (BPF) and the pprof tool (`cargo xtask setup` builds it).
//! Fails with the reason when either is missing, unless
//! HOSTPROF_SKIP_BPF_TESTS=1 is set.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, pprof_tool, Traces, Workloads};

#[test]
fn record_whole_host_with_real_workloads() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["cpu_chain", "syscall_chain", "rust_chain", "short_lived"]);
    let mut children = vec![
        workloads.spawn("cpu_chain", 6000),
        workloads.spawn("syscall_chain", 6000),
        workloads.spawn("rust_chain", 6000),
    ];
    let output = workloads.path("host.pb.gz");
    let folded = workloads.path("host.folded");
    let mut record = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "4s", "--output"])
        .arg(&output)
        .arg("--folded")
        .arg(&folded)
        .spawn()
        .expect("start hostprof record");
    // A process that starts after the capture and exits well before its end.
    std::thread::sleep(Duration::from_millis(800));
    let mut short = workloads.spawn("short_lived", 1200);
    assert!(short.wait().unwrap().success());
    let status = record.wait().expect("wait for hostprof");
    for child in &mut children {
        child.kill().ok();
        child.wait().ok();
    }
    assert!(status.success(), "hostprof record failed: {status}");
    assert!(output.exists() && workloads.path("host.svg").exists() && folded.exists());

    // (e) Google's pprof reads the profile.
    let top = common::pprof(&pprof, &["-top", "-sample_index=samples"], &output);
    assert!(top.contains("hot_loop"), "pprof -top:\n{top}");

    // (a) + (b): the hot function holds the bulk of its process's samples,
    // under the whole chain up to main.
    let cpu = Traces::of(&pprof, &output, "cpu_chain");
    let total = cpu.total();
    assert!(total > 100, "cpu_chain got only {total} samples:\n{cpu:?}");
    let in_hot = cpu.count(|stack| stack.iter().any(|f| f == "hot_loop"));
    assert!(
        in_hot * 100 >= total * 85,
        "hot_loop should hold >=85% of cpu_chain's samples: {in_hot}/{total}\n{cpu:?}"
    );
    let full_chain =
        cpu.count(|stack| common::has_chain(stack, &["hot_loop", "level2", "level1", "main"]));
    assert!(
        full_chain * 100 >= in_hot * 95,
        "the chain hot_loop<-level2<-level1<-main must be whole in >=95% of hot samples: \
         {full_chain}/{in_hot}\n{cpu:?}"
    );

    // (c) kernel frames above the user frames of a syscall-heavy process.
    let sys = Traces::of(&pprof, &output, "syscall_chain");
    let kernel_over_user = sys.count(|stack| {
        let first_user = stack.iter().position(|f| f == "raw_getppid");
        first_user.is_some_and(|i| i > 0)
            && common::has_chain(stack, &["raw_getppid", "syscall_loop", "main"])
    });
    assert!(
        kernel_over_user * 100 >= sys.total() * 30,
        "expected kernel frames on top of raw_getppid<-syscall_loop<-main: \
         {kernel_over_user}/{}\n{sys:?}",
        sys.total()
    );

    // (d) a process that exited before the capture ended is symbolized.
    let short = Traces::of(&pprof, &output, "short_lived");
    let short_chain =
        short.count(|stack| common::has_chain(stack, &["hot_loop", "level2", "level1", "main"]));
    assert!(
        short.total() > 20 && short_chain * 100 >= short.total() * 80,
        "short_lived must be symbolized after exiting: {short_chain}/{}\n{short:?}",
        short.total()
    );

    // Rust: demangled path of the hot generic method (pprof's display drops
    // the `<8>` generic argument), under its whole chain.
    let rust = Traces::of(&pprof, &output, "rust_chain");
    let demangled = rust.count(|stack| {
        common::has_chain(
            stack,
            &[
                "rust_chain::engine::Hasher::crunch_numbers",
                "rust_chain::drive",
                "rust_chain::main",
            ],
        )
    });
    assert!(
        demangled * 100 >= rust.total() * 80 && rust.total() > 100,
        "rust_chain's hot method must appear demangled: {demangled}/{}\n{rust:?}",
        rust.total()
    );
    assert!(
        !rust
            .frames()
            .any(|f| f.starts_with("_ZN") || f.starts_with("_R")),
        "no mangled Rust names:\n{rust:?}"
    );

    // Folded output agrees on which processes were seen.
    let folded = std::fs::read_to_string(&folded).unwrap();
    let mut roots: HashMap<&str, u64> = HashMap::new();
    for line in folded.lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap();
        let root = stack.split(';').next().unwrap();
        *roots.entry(root).or_default() += count.parse::<u64>().unwrap();
    }
    for name in ["cpu_chain", "syscall_chain", "rust_chain", "short_lived"] {
        assert!(
            roots.contains_key(name),
            "{name} missing from folded roots {roots:?}"
        );
    }
}
