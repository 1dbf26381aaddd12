//! `cargo xtask bench-off-cpu` and `bench-page-faults`: what the off-CPU
//! and page-fault profiles cost, each against its own load.
//!
//! Page faults: a thread that maps fresh memory and touches every page
//! (`tests/workloads/fault_chain.c`, one CPU's worth of faults), one such
//! thread on every CPU (the whole host busy faulting, hostprof's CPU
//! too), and an idle host; runs with no profiler, `--profiles cpu` and `--profiles
//! cpu,page-faults`; the load's faults per second (its own count), the
//! host's (`pgfault` of `/proc/vmstat`), hostprof's CPU and its BPF run
//! time, as below.
//!
//! Off-CPU: three loads: a pipe ping-pong (`tests/workloads/pingpong.c`: two threads
//! pinned to one CPU hand a byte back and forth, so every hand-off is a
//! context switch, hundreds of thousands a second), the same paced at the
//! goal's 100 k switches/s, and an idle host. For each, three runs: no profiler, `hostprof record --profiles cpu` and
//! `--profiles cpu,off-cpu`. Once a capture has attached, over the same
//! window as the load: the load's round trips per second, the host's
//! context switches per second (`ctxt` of `/proc/stat`), hostprof's own
//! CPU (user + system from `/proc/<pid>/stat`) and the run time of each of
//! its BPF programs (`kernel.bpf_stats_enabled`, restored at the end). BPF
//! time is charged to whichever task the hook interrupts, not to hostprof,
//! so the cost of a kind is hostprof's CPU plus its programs' run time.
//! hostprof is pinned to CPU 0, the ping-pong to CPU 1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::bench_unwind::{BpfObjects, BpfStats};

/// Options of the benchmarks.
#[derive(Clone, Debug)]
pub struct KindBenchOptions {
    /// Length of each measurement.
    pub duration: Duration,
    /// `--off-cpu-max-rate` of the captures, if not hostprof's default.
    pub off_cpu_max_rate: Option<u32>,
    /// The release `hostprof` binary.
    pub hostprof: PathBuf,
    /// Scratch directory for the workload and the profiles.
    pub work_dir: PathBuf,
}

/// The CPU the ping-pong's two threads are pinned to.
const PINGPONG_CPU: &str = "1";
/// Round trips per second of the paced ping-pong: 100 k switches/s.
const PACED_ROUND_TRIPS: u32 = 50_000;
/// The CPU hostprof is pinned to, so its own work does not slow the
/// ping-pong down (its cost is measured, not felt by the load).
const HOSTPROF_CPU: &str = "0";

/// What runs during a window.
#[derive(Clone, Copy)]
enum Load<'a> {
    /// The ping-pong: its program and pace (round trips per second, 0 for
    /// flat out).
    PingPong(&'a Path, u32),
    /// The fault workload's toucher thread alone, beside hostprof's CPU.
    Faults(&'a Path),
    /// A toucher on every CPU, hostprof's too: the whole host busy.
    FaultsEverywhere(&'a Path),
    /// Nothing.
    Idle,
}

/// What a kind's cost is counted per: the host's context switches or page
/// faults.
#[derive(Clone, Copy)]
enum PerEvent {
    Switch,
    Fault,
}

/// What one window measured.
#[derive(Clone, Debug, Default)]
struct Window {
    /// The load's rate: round trips per second of the ping-pong, faults
    /// per second of the toucher (0 at idle).
    load_rate: f64,
    /// Context switches per second, host-wide.
    switches: f64,
    /// Page faults per second, host-wide.
    faults: f64,
    /// hostprof's user + system CPU, in cores.
    hostprof_cores: f64,
    /// Per BPF program: (name, runs per second, ns per run, cores).
    programs: Vec<(String, f64, f64, f64)>,
}

impl Window {
    /// Everything the capture cost, in cores: hostprof plus its programs.
    fn total_cores(&self) -> f64 {
        self.hostprof_cores + self.programs.iter().map(|p| p.3).sum::<f64>()
    }
}

/// Runs the off-CPU benchmark and prints its table.
pub fn run_off_cpu(options: &KindBenchOptions) -> Result<()> {
    let pingpong = build(options, "pingpong")?;
    let _stats = BpfStats::enable()?;
    println!(
        "[bench-off-cpu] {} s windows; ping-pong pinned to CPU {PINGPONG_CPU}",
        options.duration.as_secs()
    );
    // Flat out (as many switches as one CPU makes), paced at the goal's
    // 100 k switches/s, and idle.
    let loads = [
        ("ping-pong", Load::PingPong(&pingpong, 0)),
        ("100k/s", Load::PingPong(&pingpong, PACED_ROUND_TRIPS)),
        ("idle", Load::Idle),
    ];
    for (name, load) in loads {
        compare(
            options,
            name,
            load,
            ("off-CPU", "cpu,off-cpu"),
            PerEvent::Switch,
        )?;
    }
    Ok(())
}

/// Runs the page-fault benchmark and prints its table.
pub fn run_page_faults(options: &KindBenchOptions) -> Result<()> {
    let faults = build(options, "fault_chain")?;
    let _stats = BpfStats::enable()?;
    println!(
        "[bench-page-faults] {} s windows; the toucher on CPU {PINGPONG_CPU}, hostprof on CPU \
         {HOSTPROF_CPU}",
        options.duration.as_secs()
    );
    for (name, load) in [
        ("faults", Load::Faults(&faults)),
        ("all-cpus", Load::FaultsEverywhere(&faults)),
        ("idle", Load::Idle),
    ] {
        compare(
            options,
            name,
            load,
            ("page faults", "cpu,page-faults"),
            PerEvent::Fault,
        )?;
    }
    Ok(())
}

/// Compiles the workload `name` into the work directory.
fn build(options: &KindBenchOptions, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    Ok(crate::workloads::build(&options.work_dir, &[name])
        .map_err(|err| anyhow!("compiling {name}: {err}"))?
        .remove(0))
}

/// Three windows of `load`: no profiler, `--profiles cpu` and `--profiles
/// <with>` (the kind `what`); prints each and what the kind adds, per
/// host event and, with a load, to the load's own time per unit of work.
fn compare(
    options: &KindBenchOptions,
    name: &str,
    load: Load,
    (what, with): (&str, &str),
    per: PerEvent,
) -> Result<()> {
    let mut none = None;
    let mut cpu_only = None;
    for profiles in [None, Some("cpu"), Some(with)] {
        let window = measure(options, load, profiles)?;
        print_window(name, profiles.unwrap_or("none"), &window);
        match profiles {
            None => none = Some(window),
            Some("cpu") => cpu_only = Some(window),
            Some(_) => {
                let (Some(base), Some(none)) = (&cpu_only, &none) else {
                    continue;
                };
                let extra = window.total_cores() - base.total_cores();
                let (events, unit, units) = match per {
                    PerEvent::Switch => (window.switches, "switch", "switches"),
                    PerEvent::Fault => (window.faults, "fault", "faults"),
                };
                println!(
                    "  => {what} adds {:.2} % of one core at {events:.0} {units}/s \
                     ({:.0} ns per {unit})",
                    extra * 100.0,
                    extra * 1e9 / events.max(1.0)
                );
                if none.load_rate > 0.0 && window.load_rate > 0.0 {
                    println!(
                        "     the load: {:.0} ns per unit of work without a profiler, {:.0} ns \
                         with {with} ({:.3}x)",
                        1e9 / none.load_rate,
                        1e9 / window.load_rate,
                        none.load_rate / window.load_rate
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_window(load: &str, profiles: &str, w: &Window) {
    println!(
        "{load:<9} {profiles:<16} load {:>9.0}/s  host {:>9.0} switches/s {:>9.0} faults/s  \
         hostprof {:>5.2} % + BPF {:>5.2} % of a core",
        w.load_rate,
        w.switches,
        w.faults,
        w.hostprof_cores * 100.0,
        (w.total_cores() - w.hostprof_cores) * 100.0
    );
    for (name, runs, ns, cores) in &w.programs {
        println!(
            "{:<23} {name:<22} {runs:>9.0} runs/s {ns:>7.0} ns/run {:>5.2} %",
            "",
            cores * 100.0
        );
    }
}

/// One window of `options.duration` with `load`, under `hostprof record
/// --profiles <profiles>` (or nothing).
fn measure(options: &KindBenchOptions, load: Load, profiles: Option<&str>) -> Result<Window> {
    let mut record = match profiles {
        Some(profiles) => Some(start_record(options, profiles)?),
        None => None,
    };
    let result = (|| {
        let before = reading(record.as_ref())?;
        let load_rate = match load {
            Load::PingPong(program, pace) => run_pingpong(program, pace, options.duration)?,
            Load::Faults(program) => run_faults(program, &[PINGPONG_CPU], options.duration)?,
            Load::FaultsEverywhere(program) => {
                let cpus: Vec<String> = (0..online_cpus()).map(|c| c.to_string()).collect();
                let cpus: Vec<&str> = cpus.iter().map(String::as_str).collect();
                run_faults(program, &cpus, options.duration)?
            }
            Load::Idle => {
                std::thread::sleep(options.duration);
                0.0
            }
        };
        let after = reading(record.as_ref())?;
        Ok(window(&before, &after, load_rate))
    })();
    if let Some(child) = &mut record {
        // SIGINT ends the capture early; it still writes its files.
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().context("waiting for hostprof record")?;
        if !status.success() {
            bail!("hostprof record --profiles {profiles:?} failed: {status}");
        }
    }
    result
}

/// Starts `hostprof record --profiles <profiles>` and returns once it
/// says sampling has begun ("recording for"), and 2 s more.
fn start_record(options: &KindBenchOptions, profiles: &str) -> Result<Child> {
    // taskset execs hostprof: the child's pid is hostprof's.
    let mut command = Command::new("taskset");
    command
        .args(["-c", HOSTPROF_CPU])
        .arg(&options.hostprof)
        .args(["record", "--no-flamegraph", "--profiles", profiles]);
    if let Some(rate) = options.off_cpu_max_rate {
        command.args(["--off-cpu-max-rate", &rate.to_string()]);
    }
    let mut child = command
        .arg("--duration")
        .arg(format!("{}s", options.duration.as_secs() * 4 + 60))
        .arg("--output")
        .arg(options.work_dir.join("bench-kinds.pb.gz"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting hostprof record")?;
    // Its programs run (filtered) while it loads the tables of the
    // processes on the CPU; "recording for" says sampling has begun. The
    // rest of its log is read and dropped, so it never blocks on the pipe.
    let wait = crate::bench::watch_for(child.stderr.take().expect("piped"), "recording for");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("hostprof record --profiles {profiles} exited early: {status}");
        }
        if wait.recv_timeout(Duration::from_millis(200)).is_ok() {
            // Let the first drain and table loads pass.
            std::thread::sleep(Duration::from_secs(2));
            return Ok(child);
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            bail!("hostprof record --profiles {profiles} did not start sampling within 60 s");
        }
    }
}

/// Runs the ping-pong for `duration` and returns its round trips per second.
fn run_pingpong(program: &Path, pace: u32, duration: Duration) -> Result<f64> {
    let out = Command::new(program)
        .arg(duration.as_millis().to_string())
        .arg(PINGPONG_CPU)
        .arg(pace.to_string())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("the ping-pong printed {text:?}"))
}

/// Runs one fault workload's toucher pinned to each of `cpus`, at once,
/// for `duration`, and returns their faults per second (their own
/// counts).
fn run_faults(program: &Path, cpus: &[&str], duration: Duration) -> Result<f64> {
    let started = Instant::now();
    let children = cpus
        .iter()
        .map(|cpu| {
            Command::new("taskset")
                .args(["-c", cpu])
                .arg(program)
                .arg(duration.as_millis().to_string())
                .arg("0")
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", program.display()))
        })
        .collect::<Result<Vec<Child>>>()?;
    let mut faults = 0.0;
    for child in children {
        let out = child
            .wait_with_output()
            .with_context(|| format!("running {}", program.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        faults += text
            .lines()
            .last()
            .and_then(|line| line.split_whitespace().nth(2))
            .and_then(|n| n.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("the fault workload printed {:?}", text.lines().last()))?;
    }
    Ok(faults / started.elapsed().as_secs_f64())
}

/// CPUs online.
fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What is read at each end of a window.
struct Reading {
    at: Instant,
    switches: u64,
    faults: u64,
    /// hostprof's user + system CPU seconds.
    hostprof_seconds: f64,
    programs: BpfObjects,
}

fn reading(record: Option<&Child>) -> Result<Reading> {
    let switches = crate::bench::host_counter("/proc/stat", "ctxt")?;
    let faults = crate::bench::host_counter("/proc/vmstat", "pgfault")?;
    let (hostprof_seconds, programs) = match record {
        Some(child) => (
            crate::bench::cpu_seconds(child.id())?,
            BpfObjects::of(child.id()).context("reading hostprof's BPF programs")?,
        ),
        None => (0.0, BpfObjects::default()),
    };
    Ok(Reading {
        at: Instant::now(),
        switches,
        faults,
        hostprof_seconds,
        programs,
    })
}

fn window(before: &Reading, after: &Reading, load_rate: f64) -> Window {
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let programs = after
        .programs
        .programs
        .iter()
        .filter_map(|p| {
            let earlier = before.programs.programs.iter().find(|e| e.id == p.id);
            let runs = p.run_cnt - earlier.map_or(0, |e| e.run_cnt);
            let ns = p.run_time_ns - earlier.map_or(0, |e| e.run_time_ns);
            (runs > 0).then(|| {
                (
                    p.name.clone(),
                    runs as f64 / seconds,
                    ns as f64 / runs as f64,
                    ns as f64 / 1e9 / seconds,
                )
            })
        })
        .collect();
    Window {
        load_rate,
        switches: (after.switches - before.switches) as f64 / seconds,
        faults: (after.faults - before.faults) as f64 / seconds,
        hostprof_cores: (after.hostprof_seconds - before.hostprof_seconds) / seconds,
        programs,
    }
}
