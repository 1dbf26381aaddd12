//! End to end: the off-CPU profile of a workload whose waits are known
//! (`tests/workloads/off_cpu_chain.c`), read with Google's `pprof` tool.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, pprof_tool, KillOnDrop, Traces, Workloads};

#[test]
fn off_cpu_time_and_wait_classes_of_known_waits() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["off_cpu_chain"]);
    // Runs well past the capture: the sleeper sleeps through all of it.
    let child = KillOnDrop::new(workloads.spawn("off_cpu_chain", 20_000));
    std::thread::sleep(Duration::from_millis(300));
    let output = workloads.path("host.pb.gz");
    let stats = workloads.path("stats.json");
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args([
            "record",
            "--profiles",
            "off-cpu",
            "--duration",
            "5s",
            "--output",
        ])
        .arg(&output)
        .arg("--folded")
        .arg(workloads.path("host.folded"))
        .arg("--stats-json")
        .arg(&stats)
        .status()
        .expect("run hostprof record");
    drop(child);
    assert!(status.success(), "hostprof record failed: {status}");

    // Only the off-CPU profile was asked for: its files sit beside the
    // CPU profile's paths, with the kind in their names.
    let profile = workloads.path("host.off-cpu.pb.gz");
    for name in [
        "host.off-cpu.pb.gz",
        "host.off-cpu.svg",
        "host.off-cpu.folded",
    ] {
        assert!(workloads.path(name).exists(), "{name} written");
    }
    assert!(!output.exists(), "no CPU profile without --profiles cpu");

    // Google's pprof reads it, with Go's block-profile sample types.
    let top = common::pprof(&pprof, &["-top", "-sample_index=events"], &profile);
    assert!(top.contains("Type: events"), "{top}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let wall_ns = report["sampling_seconds"].as_f64().unwrap() * 1e9;

    // The sleeper is off the CPU nearly all of the capture, under
    // sleepy_function <- main_sleeper, sleeping, in class `sleep`.
    let sleeper = Traces::off_cpu(&pprof, &profile, "thread_name", "sleeper");
    let in_sleepy =
        sleeper.count(|stack| common::has_chain(stack, &["sleepy_function", "main_sleeper"]));
    let ratio = in_sleepy as f64 / wall_ns;
    eprintln!("off-CPU time under sleepy_function: {in_sleepy} ns of {wall_ns:.0} ns ({ratio:.3})");
    assert!(
        (0.85..=1.15).contains(&ratio),
        "off-CPU time under sleepy_function must be the wall time ±15 %: \
         {in_sleepy} ns of {wall_ns} ns ({ratio:.3})\n{sleeper:?}"
    );
    let sleeping = Traces::off_cpu(&pprof, &profile, "thread.state", "sleeping");
    assert!(
        sleeping.count(|stack| stack.iter().any(|f| f == "sleepy_function")) * 10 >= in_sleepy * 9,
        "the sleeper's waits are labelled thread.state=sleeping\n{sleeping:?}"
    );
    let sleep_class = Traces::off_cpu(&pprof, &profile, "wait.class", "sleep");
    assert!(
        sleep_class.count(|stack| stack.iter().any(|f| f == "sleepy_function")) * 10
            >= in_sleepy * 9,
        "nanosleep is wait class sleep\n{sleep_class:?}"
    );

    // The pipe reader waits in read() on the pipe: class `pipe`, with its
    // user frames under the kernel's.
    let pipe = Traces::off_cpu(&pprof, &profile, "wait.class", "pipe");
    let reading = pipe.count(|stack| {
        let user = stack.iter().position(|f| f == "pipe_reader_function");
        user.is_some_and(|i| i > 0)
            && common::has_chain(stack, &["pipe_reader_function", "main_piper"])
    });
    assert!(
        reading as f64 >= wall_ns * 0.5,
        "the pipe reader blocks most of the capture in class pipe: {reading} ns\n{pipe:?}"
    );
}
