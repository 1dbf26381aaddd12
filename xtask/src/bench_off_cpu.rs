//! `cargo xtask bench-off-cpu`: what the off-CPU profile costs.
//!
//! Three loads: a pipe ping-pong (`tests/workloads/pingpong.c`: two threads
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

/// Options of the off-CPU benchmark.
#[derive(Clone, Debug)]
pub struct OffCpuBenchOptions {
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

/// What one window measured.
#[derive(Clone, Debug, Default)]
struct Window {
    /// Round trips per second of the ping-pong (0 at idle).
    round_trips: f64,
    /// Context switches per second, host-wide.
    switches: f64,
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

/// Runs the benchmark and prints its table.
pub fn run(options: &OffCpuBenchOptions) -> Result<()> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    let pingpong = crate::workloads::build(&options.work_dir, &["pingpong"])
        .map_err(|err| anyhow!("compiling the ping-pong: {err}"))?
        .remove(0);
    let _stats = BpfStats::enable()?;
    println!(
        "[bench-off-cpu] {} s windows; ping-pong pinned to CPU {PINGPONG_CPU}",
        options.duration.as_secs()
    );
    // Flat out (as many switches as one CPU makes), paced at the goal's
    // 100 k switches/s, and idle.
    let loads = [
        ("ping-pong", Some((pingpong.as_path(), 0))),
        ("100k/s", Some((pingpong.as_path(), PACED_ROUND_TRIPS))),
        ("idle", None),
    ];
    for (load, pingpong) in loads {
        let mut cpu_only = None;
        for profiles in [None, Some("cpu"), Some("cpu,off-cpu")] {
            let window = measure(options, pingpong, profiles)?;
            print_window(load, profiles.unwrap_or("none"), &window);
            match profiles {
                Some("cpu") => cpu_only = Some(window),
                Some(_) => {
                    if let Some(base) = &cpu_only {
                        let extra = window.total_cores() - base.total_cores();
                        let per_switch = extra * 1e9 / window.switches.max(1.0);
                        println!(
                            "  => off-CPU adds {:.2} % of one core at {:.0} switches/s \
                             ({per_switch:.0} ns per switch)",
                            extra * 100.0,
                            window.switches
                        );
                    }
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn print_window(load: &str, profiles: &str, w: &Window) {
    println!(
        "{load:<9} {profiles:<12} {:>9.0} round trips/s {:>9.0} switches/s  \
         hostprof {:>5.2} % + BPF {:>5.2} % of a core",
        w.round_trips,
        w.switches,
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

/// One window of `options.duration` with the ping-pong (its program and
/// pace, 0 for flat out) or idle, under `hostprof record --profiles
/// <profiles>` (or nothing).
fn measure(
    options: &OffCpuBenchOptions,
    pingpong: Option<(&Path, u32)>,
    profiles: Option<&str>,
) -> Result<Window> {
    let mut record = match profiles {
        Some(profiles) => Some(start_record(options, profiles)?),
        None => None,
    };
    let result = (|| {
        let before = reading(record.as_ref())?;
        let round_trips = match pingpong {
            Some((program, pace)) => run_pingpong(program, pace, options.duration)?,
            None => {
                std::thread::sleep(options.duration);
                0.0
            }
        };
        let after = reading(record.as_ref())?;
        Ok(window(&before, &after, round_trips))
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

/// Starts `hostprof record --profiles <profiles>` and returns once its
/// programs are attached.
fn start_record(options: &OffCpuBenchOptions, profiles: &str) -> Result<Child> {
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
        .arg(options.work_dir.join("bench-off-cpu.pb.gz"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting hostprof record")?;
    let wanted = if profiles.contains("off-cpu") {
        "off_cpu_out"
    } else {
        "sample_cpu"
    };
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("hostprof record --profiles {profiles} exited early: {status}");
        }
        let attached = BpfObjects::of(child.id())
            .map(|objects| objects.program(wanted).is_some_and(|p| p.run_cnt > 0))
            .unwrap_or(false);
        if attached {
            // Let the first drain and table loads pass.
            std::thread::sleep(Duration::from_secs(2));
            return Ok(child);
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            bail!("hostprof record --profiles {profiles} did not attach {wanted} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
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

/// What is read at each end of a window.
struct Reading {
    at: Instant,
    switches: u64,
    /// hostprof's user + system CPU seconds.
    hostprof_seconds: f64,
    programs: BpfObjects,
}

fn reading(record: Option<&Child>) -> Result<Reading> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let switches = stat
        .lines()
        .find_map(|line| line.strip_prefix("ctxt "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("/proc/stat has no ctxt line"))?;
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
        hostprof_seconds,
        programs,
    })
}

fn window(before: &Reading, after: &Reading, round_trips: f64) -> Window {
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
        round_trips,
        switches: (after.switches - before.switches) as f64 / seconds,
        hostprof_cores: (after.hostprof_seconds - before.hostprof_seconds) / seconds,
        programs,
    }
}
