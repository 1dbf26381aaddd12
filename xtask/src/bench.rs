//! `cargo xtask bench`: hostprof's overhead against `perf`, side by side in
//! one run on a busy host.
//!
//! Both tools produce a symbolized whole-host CPU profile with call stacks
//! at the same frequency for the same duration while the same load runs:
//! `hostprof record` (pprof + flamegraph) against `perf record -F N -a -g`
//! followed by `perf report` (symbolized text). Each side's CPU seconds
//! (user + system, its children included) and peak RSS come from `wait4`'s
//! rusage, so start-up costs count. The verdict is a ratio, not a timed assert.
//!
//! This module also holds what the other benchmarks share: loads, resource
//! use of a process (tree) and `hostprof record --stats-json`'s report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// Resource use of one process tree.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds, reaped children included.
    pub cpu_seconds: f64,
    /// Peak resident set size of the largest process, in MiB.
    pub peak_rss_mib: f64,
}

impl Usage {
    /// Usage of two steps run one after the other.
    fn then(self, next: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds + next.cpu_seconds,
            peak_rss_mib: self.peak_rss_mib.max(next.peak_rss_mib),
        }
    }
}

/// What one run of the comparison measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    /// `hostprof record` (pprof + flamegraph).
    pub hostprof: Usage,
    /// `perf record -a -g` then `perf report --stdio`.
    pub perf: Usage,
}

impl Comparison {
    /// hostprof's CPU seconds per second of perf's.
    pub fn cpu_ratio(&self) -> f64 {
        self.hostprof.cpu_seconds / self.perf.cpu_seconds.max(f64::EPSILON)
    }

    /// hostprof's peak RSS per MiB of perf's.
    pub fn rss_ratio(&self) -> f64 {
        self.hostprof.peak_rss_mib / self.perf.peak_rss_mib.max(f64::EPSILON)
    }
}

/// Options of the benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Capture length.
    pub duration: Duration,
    /// Sampling frequency in Hz.
    pub frequency: u32,
    /// The release `hostprof` binary.
    pub hostprof: PathBuf,
    /// Scratch directory for outputs.
    pub work_dir: PathBuf,
}

/// Runs the comparison, prints its table and returns its figures.
pub fn run(options: &BenchOptions) -> Result<Comparison> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let secs = options.duration.as_secs().to_string();
    let hz = options.frequency.to_string();

    println!("[bench] {cpus} busy CPUs, {secs} s captures at {hz} Hz; hostprof first, then perf");
    let hostprof = with_load(cpus, || {
        let out = options.work_dir.join("bench.pb.gz");
        measure(
            Command::new(&options.hostprof)
                .args(["record", "--duration", &format!("{secs}s"), "-F", &hz, "-o"])
                .arg(&out)
                .stdout(Stdio::null()),
        )
    })?;

    let perf_data = options.work_dir.join("perf.data");
    let perf_record = with_load(cpus, || {
        measure(
            Command::new("perf")
                .args(["record", "-F", &hz, "-a", "-g", "-q", "-o"])
                .arg(&perf_data)
                .args(["--", "sleep", &secs]),
        )
    })?;
    let perf_report = measure(
        Command::new("perf")
            .args(["report", "--stdio", "-q", "-i"])
            .arg(&perf_data)
            .stdout(Stdio::null()),
    )?;
    let perf = perf_record.then(perf_report);
    let comparison = Comparison { hostprof, perf };

    println!();
    println!("{:<44} {:>10} {:>14}", "", "CPU s", "peak RSS MiB");
    print_row("hostprof record (pprof + flamegraph)", hostprof);
    print_row("perf record -a -g", perf_record);
    print_row("perf report --stdio", perf_report);
    print_row("perf total", perf);
    println!();
    println!(
        "hostprof / perf CPU: {:.2}x   (issue 16's goal <= {:.2})",
        comparison.cpu_ratio(),
        crate::bench_suite::RECORD_CPU_PER_PERF
    );
    println!(
        "hostprof peak RSS: {:.1} MiB   (target <= 40)",
        hostprof.peak_rss_mib
    );
    Ok(comparison)
}

/// Prints one line of the table: `name`'s CPU seconds and peak RSS.
fn print_row(name: &str, usage: Usage) {
    println!(
        "{:<44} {:>10.3} {:>14.1}",
        name, usage.cpu_seconds, usage.peak_rss_mib
    );
}

/// Runs `step` while `cpus` busy loops keep every CPU loaded.
pub(crate) fn with_load<T>(cpus: usize, step: impl FnOnce() -> Result<T>) -> Result<T> {
    let busy_loop = || {
        let mut sh = Command::new("sh");
        sh.args(["-c", "while :; do :; done"]);
        sh
    };
    while_running((0..cpus).map(|_| busy_loop()), step)
}

/// Runs `step` while the processes `commands` start keep running (their
/// stdout discarded), then kills them, also when starting one or `step`
/// fails.
pub(crate) fn while_running<T>(
    commands: impl IntoIterator<Item = Command>,
    step: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mut children: Vec<Child> = Vec::new();
    let mut started = Ok(());
    for mut command in commands {
        match command.stdout(Stdio::null()).spawn() {
            Ok(child) => children.push(child),
            Err(err) => {
                started = Err(err).with_context(|| format!("starting {command:?}"));
                break;
            }
        }
    }
    let result = started.and_then(|()| step());
    for child in &mut children {
        child.kill().ok();
        child.wait().ok();
    }
    result
}

/// Reads `output` (a child's log) to its end on a thread, dropping it;
/// the receiver hears once per line that contains `marker`.
pub(crate) fn watch_for(
    output: impl std::io::Read + Send + 'static,
    marker: &'static str,
) -> std::sync::mpsc::Receiver<()> {
    use std::io::{BufRead as _, BufReader};
    let (seen, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if line.contains(marker) {
                let _ = seen.send(());
            }
        }
    });
    wait
}

/// The counter `name` of a `name value` line of the kernel's text file
/// `path` (`/proc/stat`'s `ctxt` or `processes`, `/proc/vmstat`'s
/// `pgfault`).
pub(crate) fn host_counter(path: &str, name: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{path} has no {name} line"))
}

/// Runs `cmd` to completion and returns its resource use.
pub(crate) fn measure(cmd: &mut Command) -> Result<Usage> {
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped; the pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!("wait4 for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (wait status {status})");
    }
    Ok(usage_of(&usage))
}

/// The CPU seconds and peak RSS of a `wait4` rusage.
pub(crate) fn usage_of(usage: &libc::rusage) -> Usage {
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Usage {
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        // ru_maxrss is in KiB on Linux.
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    }
}

/// User + system CPU seconds of `pid`, from `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesized command name: utime is the 12th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no field {i}"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// The report `hostprof record --stats-json` wrote at `path`, parsed.
pub(crate) fn read_stats_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading hostprof's --stats-json {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// Default scratch directory under the target dir.
pub fn default_work_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_counters_are_read_by_name() {
        assert!(host_counter("/proc/stat", "ctxt").unwrap() > 0);
        assert!(host_counter("/proc/stat", "processes").unwrap() > 0);
        // `pgfault`, not `pgfault_…` or a prefix of another name.
        assert!(host_counter("/proc/vmstat", "pgfault").unwrap() > 0);
        assert!(host_counter("/proc/stat", "proc").is_err());
    }

    #[test]
    fn usage_conversion_and_sum() {
        // SAFETY: all-zero rusage is valid.
        let mut raw: libc::rusage = unsafe { std::mem::zeroed() };
        raw.ru_utime.tv_sec = 1;
        raw.ru_utime.tv_usec = 500_000;
        raw.ru_stime.tv_usec = 250_000;
        raw.ru_maxrss = 2048;
        let usage = usage_of(&raw);
        assert_eq!(usage.cpu_seconds, 1.75);
        assert_eq!(usage.peak_rss_mib, 2.0);
        let total = usage.then(Usage {
            cpu_seconds: 0.25,
            peak_rss_mib: 5.0,
        });
        assert_eq!(total.cpu_seconds, 2.0);
        assert_eq!(total.peak_rss_mib, 5.0);
    }

    #[test]
    fn comparison_ratios() {
        let usage = |cpu_seconds, peak_rss_mib| Usage {
            cpu_seconds,
            peak_rss_mib,
        };
        let comparison = Comparison {
            hostprof: usage(0.17, 30.0),
            perf: usage(0.34, 20.0),
        };
        assert_eq!(comparison.cpu_ratio(), 0.5);
        assert_eq!(comparison.rss_ratio(), 1.5);
    }

    #[test]
    fn reads_the_stats_report() {
        let path = std::env::temp_dir().join(format!("xtask-stats-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"sampling_seconds": 10.0}"#).unwrap();
        assert_eq!(read_stats_json(&path).unwrap()["sampling_seconds"], 10.0);
        std::fs::write(&path, "symbolizing...").unwrap();
        let err = read_stats_json(&path).unwrap_err();
        assert!(format!("{err:#}").contains("not JSON"), "{err:#}");
        std::fs::remove_file(&path).unwrap();
        assert!(read_stats_json(&path).is_err());
    }

    #[test]
    fn measures_a_real_child() {
        let usage = measure(Command::new("true").stdout(Stdio::null())).unwrap();
        assert!(usage.peak_rss_mib > 0.0);
        assert!(measure(&mut Command::new("false")).is_err());
    }
}
