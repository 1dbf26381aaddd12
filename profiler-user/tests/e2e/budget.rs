//! The CPU budget (`--max-cpu`): on a host whose CPUs are all busy,
//! `hostprof record --frequency 1000` with a budget it cannot meet at
//! 1 kHz lowers its frequency until it does (only the busy workloads are
//! profiled, so that other processes' arrivals do not move its cost). Its
//! cost is measured from the outside, as the kernel counts it (the
//! process's CPU time in `/proc/PID/stat`, its BPF programs' run time in
//! `/proc/PID/fdinfo`), and the profile's CPU time still adds up to nearly
//! the CPUs' wall time: each sample stands for the period it was taken at.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, pprof_tool, KillOnDrop, Workloads};

/// The budget, in percent of one core.
const BUDGET_PERCENT: f64 = 2.0;

/// The CPU time of `pid` so far, its threads' and its BPF programs'.
fn cost_so_far(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("hostprof's stat");
    // Fields after the command's closing parenthesis: utime is the 14th
    // field of the line, the 12th after it.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let threads = Duration::from_nanos(ticks * 1_000_000_000 / hz);
    let mut kernel = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        if !text.contains("prog_id:") {
            continue;
        }
        kernel += text
            .lines()
            .find_map(|line| line.strip_prefix("run_time_ns:"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    threads + Duration::from_nanos(kernel)
}

/// pprof's total of the `-top` view, in seconds ("... of 50.02s total").
fn total_seconds(top: &str) -> f64 {
    let total = top
        .split(" of ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no total in pprof -top:\n{top}"));
    let (number, unit) = total.split_at(
        total
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(total.len()),
    );
    let number: f64 = number.parse().unwrap();
    match unit {
        "s" => number,
        "ms" => number / 1e3,
        "mins" => number * 60.0,
        "hrs" => number * 3600.0,
        other => panic!("unit {other:?} in {total}"),
    }
}

#[test]
fn max_cpu_lowers_the_frequency_until_the_cost_fits() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let workloads = Workloads::build(&["deep_chain"]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let busy: Vec<KillOnDrop> = (0..cpus)
        .map(|_| {
            // 102 frames without frame pointers: each sample's unwinding
            // (from tables, in the kernel) is most of what it costs, so
            // the frequency, not the rest of hostprof's work, moves the
            // cost the budget weighs.
            KillOnDrop::new(
                Command::new(workloads.path("deep_chain"))
                    .args(["70000", "100"])
                    .spawn()
                    .expect("deep_chain"),
            )
        })
        .collect();
    // Only the busy workloads are profiled (filtered in the kernel; they
    // take nearly every sample anyway): a process that starts elsewhere on
    // the host (a CI runner's) would cost hostprof its tables and copies,
    // tens of milliseconds in one 10 s window, which is not the sampling
    // the budget steers.
    let pids: Vec<String> = busy.iter().map(|busy| busy.id().to_string()).collect();
    let output = workloads.path("host.pb.gz");
    let stats = workloads.path("stats.json");
    let capture = Duration::from_secs(50);
    let mut record = KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args([
                "record",
                "--no-flamegraph",
                "--frequency",
                "1000",
                "--max-cpu",
            ])
            .arg(BUDGET_PERCENT.to_string())
            .args(pids.iter().flat_map(|pid| ["--pid", pid.as_str()]))
            .arg("--duration")
            .arg(format!("{}s", capture.as_secs()))
            .arg("-o")
            .arg(&output)
            .arg("--stats-json")
            .arg(&stats)
            .env("RUST_LOG", "hostprof=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run hostprof record"),
    );
    let pid = record.id();
    let log = common::wait_for_line(record.stderr(), "recording for");
    let started = Instant::now();
    // Decisions come every 10 s; by 30 s the frequency has settled.
    std::thread::sleep(Duration::from_secs(30));
    let (from, at) = (cost_so_far(pid), Instant::now());
    std::thread::sleep(capture - Duration::from_secs(32));
    let (to, end) = (cost_so_far(pid), Instant::now());
    let status = record.wait_with_output().expect("hostprof").status;
    let log = log.join().unwrap();
    assert!(status.success(), "hostprof record failed:\n{log}");
    assert!(started.elapsed() >= capture);

    let cost = (to - from).as_secs_f64() / (end - at).as_secs_f64();
    eprintln!("cost once settled: {:.3} % of a core", cost * 100.0);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let overhead = &report["overhead"];
    eprintln!("overhead: {overhead}");
    let frequency = overhead["frequency_hz"].as_u64().unwrap();
    assert!(
        overhead["frequency_changes"].as_u64() >= Some(1) && frequency < 1000,
        "the frequency was lowered from 1000 Hz: {overhead}\n{log}"
    );
    // The kernel's clock ticks are 10 ms: a tick of slack over 18 s.
    assert!(
        cost <= BUDGET_PERCENT / 100.0 * 1.1 + 0.01 / 18.0,
        "hostprof's cost once settled: {:.3} % of a core, over the {BUDGET_PERCENT} % \
         budget\n{overhead}\n{log}",
        cost * 100.0
    );

    // Every sample stands for its own period: the CPU time the profile
    // holds (the workloads, which keep every CPU busy) is nearly the CPUs'
    // wall time, at whatever rates it was sampled.
    let top = common::pprof(&pprof_tool(), &["-top", "-sample_index=cpu"], &output);
    let total = total_seconds(&top);
    let wall = report["sampling_seconds"].as_f64().unwrap() * cpus as f64;
    eprintln!("profile CPU time {total:.2} s, CPUs' wall time {wall:.2} s");
    assert!(
        (total / wall - 1.0).abs() <= 0.1,
        "the profile's CPU time is {total:.2} s, the CPUs' wall time {wall:.2} s\n{top}"
    );
}
