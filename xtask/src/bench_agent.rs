//! `cargo xtask bench-agent`: `hostprof agent` on a busy host for a few
//! minutes, exporting over HTTP/protobuf with gzip to the official-types
//! receiver (profiler-user/tests/e2e/otlp_receiver.py). Reports the agent's CPU
//! share and resident memory over the run (sampled from `/proc`), its start
//! to end totals (from `wait4`), bytes on the wire per minute and the time
//! to build one export request (from the agent's own `/metrics`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::bench::{usage_of, while_running, with_load};

/// What keeps the host busy while the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Load {
    /// A busy shell loop per CPU: a steady host with few processes.
    Busy,
    /// A compile loop per CPU (`gcc -O2` of a small C file: `gcc`, `cc1`,
    /// `as`, `collect2`, `ld`; then a short `python3 -c`) and an exec
    /// probe ten times a second (`sh -c` reading a file, as Kubernetes'
    /// exec probes do): a build host, many short-lived processes with
    /// large binaries.
    Build,
}

/// Options of the agent benchmark.
#[derive(Clone, Debug)]
pub struct AgentBenchOptions {
    /// How long the agent runs.
    pub duration: Duration,
    /// Sampling frequency in Hz.
    pub frequency: u32,
    /// Export interval.
    pub interval: Duration,
    /// The release `hostprof` binary.
    pub hostprof: PathBuf,
    /// The workspace root (for the receiver script).
    pub root: PathBuf,
    /// Scratch directory.
    pub work_dir: PathBuf,
}

/// One reading of the agent's `/proc` entries.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    at: Duration,
    cpu_seconds: f64,
    /// Resident memory.
    pub rss_mib: f64,
    /// Anonymous part of the RSS (heap, stacks): the agent's own data.
    anon_mib: f64,
    /// File-backed part (binaries and the ELF/DWARF files blazesym maps),
    /// which the kernel can reclaim.
    file_mib: f64,
    /// The agent's BPF maps (`hostprof_memory_bytes{component="bpf_maps"}`,
    /// scraped with the reading; 0 when not scraped).
    bpf_maps_mib: f64,
}

/// Runs the benchmark under `load`, prints its figures and returns them.
pub fn run(options: &AgentBenchOptions, load: Load) -> Result<AgentFigures> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let received = options.work_dir.join("agent-received.jsonl");
    let described = match load {
        Load::Busy => format!("{cpus} busy CPUs"),
        Load::Build => format!("{cpus} compile loops and an exec probe"),
    };
    println!(
        "[bench-agent] {described}, agent at {} Hz for {:?}, exporting every {:?} over HTTP/protobuf+gzip",
        options.frequency, options.duration, options.interval
    );
    let forks_before = processes_started()?;
    let (readings, metrics, total) = match load {
        Load::Busy => with_load(cpus, || run_agent(options, &received))?,
        Load::Build => while_running(build_load(options, cpus)?, || run_agent(options, &received))?,
    };
    let forks = processes_started()? - forks_before;
    report(options, load, &readings, &metrics, total, &received, forks)
}

/// The build host's load: a compile loop per CPU and an exec probe.
fn build_load(options: &AgentBenchOptions, cpus: usize) -> Result<Vec<Command>> {
    let workloads = options.root.join("profiler-user/tests/workloads");
    let source = workloads.join("cpu_chain.c");
    if !source.is_file() {
        bail!("{} is missing: run from the workspace", source.display());
    }
    let mut commands = Vec::new();
    for n in 0..cpus {
        let out = options.work_dir.join(format!("build-load-{n}"));
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(
                "while :; do gcc -O2 -I \"$1\" -o \"$3\" \"$2\" || exit 1; \
                 python3 -c 'import json, os; json.dumps(dict(os.environ))' || exit 1; done",
            )
            .arg("build-loop")
            .arg(&workloads)
            .arg(&source)
            .arg(&out);
        commands.push(sh);
    }
    let mut probe = Command::new("sh");
    probe.args([
        "-c",
        "while :; do sh -c 'cat /proc/loadavg > /dev/null'; sleep 0.1; done",
    ]);
    commands.push(probe);
    Ok(commands)
}

/// Processes (and threads) the host has started since boot.
fn processes_started() -> Result<u64> {
    crate::bench::host_counter("/proc/stat", "processes")
}

/// Runs the agent for `options.duration`, exporting to a fresh receiver
/// (what it receives goes to `received`); returns its `/proc` readings,
/// its final `/metrics` text and wait4's totals.
pub fn run_agent(
    options: &AgentBenchOptions,
    received: &Path,
) -> Result<(Vec<Reading>, String, crate::bench::Usage)> {
    std::fs::remove_file(received).ok();
    let (mut receiver, http_port) = start_receiver(
        &options.root,
        options.duration + Duration::from_secs(120),
        received,
    )?;
    let metrics_port = free_port()?;
    let result = (|| {
        let agent = Command::new(&options.hostprof)
            .args(["agent", "-F", &options.frequency.to_string()])
            .arg("--interval")
            .arg(format!("{}ms", options.interval.as_millis()))
            .args(["--otlp-protocol", "http", "--otlp-endpoint"])
            .arg(format!("http://127.0.0.1:{http_port}"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .stderr(Stdio::null())
            .spawn()
            .context("starting hostprof agent")?;
        observe(agent, options, metrics_port)
    })();
    receiver.kill().ok();
    receiver.wait().ok();
    result
}

/// Starts the official-types OTLP receiver of the end-to-end tests
/// (in the workspace at `root`) for `lasting`, writing what it receives
/// to `out`; returns it and its HTTP port.
pub(crate) fn start_receiver(root: &Path, lasting: Duration, out: &Path) -> Result<(Child, u16)> {
    let script = root.join("profiler-user/tests/e2e/otlp_receiver.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg("--out")
        .arg(out)
        .arg("--seconds")
        .arg(lasting.as_secs().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the OTLP receiver (python3)")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("reading the receiver's ports")?;
    let Some(http) = line
        .strip_prefix("PORTS ")
        .and_then(|ports| ports.split_whitespace().nth(1))
        .and_then(|p| p.trim().parse().ok())
    else {
        bail!("the OTLP receiver did not start ({line:?}); run `cargo xtask setup`");
    };
    Ok((child, http))
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Samples the agent every few seconds, scrapes its metrics, stops it with
/// SIGTERM and returns the readings, the metrics text and wait4's totals.
fn observe(
    agent: Child,
    options: &AgentBenchOptions,
    metrics_port: u16,
) -> Result<(Vec<Reading>, String, crate::bench::Usage)> {
    let pid = agent.id();
    let started = Instant::now();
    let mut readings = Vec::new();
    let mut next_report = Duration::from_secs(60);
    while started.elapsed() < options.duration {
        std::thread::sleep(Duration::from_secs(5));
        let mut reading = read_proc(pid, started.elapsed())
            .with_context(|| format!("the agent (pid {pid}) exited early"))?;
        if let Ok(text) = scrape(metrics_port) {
            reading.bpf_maps_mib =
                metric(&text, "hostprof_memory_bytes{component=\"bpf_maps\"}") / (1024.0 * 1024.0);
        }
        if reading.at >= next_report {
            println!(
                "[bench-agent] {:>4} s: CPU {:.2} s, RSS {:.1} MiB ({:.1} anon + {:.1} file), BPF maps {:.1} MiB",
                reading.at.as_secs(),
                reading.cpu_seconds,
                reading.rss_mib,
                reading.anon_mib,
                reading.file_mib,
                reading.bpf_maps_mib
            );
            next_report += Duration::from_secs(60);
        }
        readings.push(reading);
    }
    let metrics = scrape(metrics_port).context("scraping the agent's /metrics")?;
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; the pointers are valid.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if rc != pid as libc::pid_t || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("hostprof agent did not exit cleanly on SIGTERM (wait status {status})");
    }
    // Each a thread's wake-up or preemption; a VM pays for every one.
    let seconds = started.elapsed().as_secs_f64().max(1.0);
    println!(
        "[bench-agent] context switches, all threads, start to exit: {:.0}/s voluntary, {:.0}/s involuntary",
        usage.ru_nvcsw as f64 / seconds,
        usage.ru_nivcsw as f64 / seconds
    );
    Ok((readings, metrics, usage_of(&usage)))
}

pub(crate) fn read_proc(pid: u32, at: Duration) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm: state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mib = |key: &str| -> Option<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    };
    Some(Reading {
        at,
        cpu_seconds: ticks / hz,
        rss_mib: mib("VmRSS:")?,
        anon_mib: mib("RssAnon:")?,
        file_mib: mib("RssFile:")?,
        bpf_maps_mib: 0.0,
    })
}

fn scrape(port: u16) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The value of an unlabelled metric.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// What the readings of one run come to; `cargo xtask bench` takes its
/// figures from here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AgentFigures {
    /// Minutes from the start to the last reading.
    pub minutes: f64,
    /// The agent's CPU over the run, in percent of one core.
    pub cpu_percent: f64,
    /// Its CPU in steady state (after the first minute, or from the first
    /// reading in a shorter run), in percent of one core.
    pub steady_cpu_percent: f64,
    /// When the steady state starts.
    pub steady_from: Duration,
    /// Resident memory: the least and the most of the steady readings, in
    /// MiB.
    pub rss_steady_mib: (f64, f64),
    /// The most RSS of every reading, in MiB.
    pub rss_max_mib: f64,
    /// RSS + BPF maps (issue 16's measure): the least of the steady
    /// readings, in MiB.
    pub footprint_steady_min_mib: f64,
    /// RSS + BPF maps: the most of every reading, in MiB.
    pub footprint_max_mib: f64,
    /// RSS + BPF maps at the last reading less at the steady state's
    /// start, in MiB (growth per process seen would show here).
    pub footprint_growth_mib: f64,
    /// New processes (and threads) a second on the host.
    pub new_processes_per_s: f64,
    /// The agent's CPU from start to exit per new process on the host, in
    /// µs; `None` with fewer than one new process a second, where the
    /// agent's start-up would be divided by next to nothing.
    pub per_new_process_us: Option<f64>,
}

impl AgentFigures {
    /// The figures of `readings`, with wait4's `total` and the host's
    /// `forks` over the run.
    pub fn of(readings: &[Reading], total: crate::bench::Usage, forks: u64) -> Result<Self> {
        let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
            bail!("no readings: the run was shorter than 5 s");
        };
        let seconds = last.at.as_secs_f64();
        // Steady state: after the first minute (or the first reading).
        let settle = readings
            .iter()
            .position(|r| r.at >= Duration::from_secs(60))
            .unwrap_or(0);
        let steady = &readings[settle..];
        let steady_from = steady.first().unwrap_or(first);
        let steady_cpu = (last.cpu_seconds - steady_from.cpu_seconds)
            / (last.at - steady_from.at).as_secs_f64().max(1.0);
        let footprint = |r: &Reading| r.rss_mib + r.bpf_maps_mib;
        let least = |values: &mut dyn Iterator<Item = f64>| values.fold(f64::MAX, f64::min);
        let most = |values: &mut dyn Iterator<Item = f64>| values.fold(0.0, f64::max);
        Ok(AgentFigures {
            minutes: seconds / 60.0,
            cpu_percent: last.cpu_seconds / seconds.max(f64::EPSILON) * 100.0,
            steady_cpu_percent: steady_cpu * 100.0,
            steady_from: steady_from.at,
            rss_steady_mib: (
                least(&mut steady.iter().map(|r| r.rss_mib)),
                most(&mut steady.iter().map(|r| r.rss_mib)),
            ),
            rss_max_mib: most(&mut readings.iter().map(|r| r.rss_mib)),
            footprint_steady_min_mib: least(&mut steady.iter().map(footprint)),
            footprint_max_mib: most(&mut readings.iter().map(footprint)),
            footprint_growth_mib: footprint(last) - footprint(steady_from),
            new_processes_per_s: forks as f64 / seconds.max(1.0),
            per_new_process_us: (forks as f64 >= seconds)
                .then(|| total.cpu_seconds * 1e6 / forks as f64),
        })
    }
}

/// Prints the run's figures and what the agent's metrics say; returns
/// the figures.
fn report(
    options: &AgentBenchOptions,
    load: Load,
    readings: &[Reading],
    metrics: &str,
    total: crate::bench::Usage,
    received: &Path,
    forks: u64,
) -> Result<AgentFigures> {
    let figures = AgentFigures::of(readings, total, forks)?;
    let last = readings.last().expect("AgentFigures::of found readings");
    let minutes = figures.minutes;
    let sent = metric(metrics, "hostprof_export_sent_bytes_total");
    let encodes = metric(metrics, "hostprof_encodes_total").max(1.0);
    let encode_ms = metric(metrics, "hostprof_encode_seconds_total") / encodes * 1e3;
    let profiles = metric(metrics, "hostprof_profiles_exported_total");
    let samples = metric(metrics, "hostprof_samples_total");
    let requests = std::fs::read_to_string(received)
        .map(|s| s.lines().count())
        .unwrap_or(0);

    println!();
    println!(
        "hostprof agent, {:.1} min at {} Hz, interval {:?}, load {:?} ({:.0} new processes/s on the host):",
        minutes, options.frequency, options.interval, load, figures.new_processes_per_s
    );
    println!(
        "  CPU: {:.2} % of one CPU over the run, {:.2} % in steady state; {:.2} CPU s start to exit",
        figures.cpu_percent, figures.steady_cpu_percent, total.cpu_seconds
    );
    // Only where new processes drive the cost.
    if let Some(us) = figures.per_new_process_us {
        println!("  per new process on the host: {us:.0} µs of the agent's CPU (start to exit)");
    }
    println!(
        "  RSS: steady {:.1}..{:.1} MiB, max sampled {:.1} MiB, peak (wait4) {:.1} MiB",
        figures.rss_steady_mib.0, figures.rss_steady_mib.1, figures.rss_max_mib, total.peak_rss_mib
    );
    println!(
        "       at the end {:.1} MiB anonymous + {:.1} MiB file-backed (binaries and mapped debug info)",
        last.anon_mib, last.file_mib
    );
    println!(
        "  RSS + BPF maps: steady from {:.1} MiB, max {:.1} MiB over every reading (BPF maps {:.1} MiB at the end); {:+.1} MiB from {} s to the end",
        figures.footprint_steady_min_mib,
        figures.footprint_max_mib,
        last.bpf_maps_mib,
        figures.footprint_growth_mib,
        figures.steady_from.as_secs()
    );
    println!(
        "  wire: {:.0} bytes/min of gzip HTTP bodies ({} requests received, {:.0} resource profiles, {:.0} samples)",
        sent / minutes,
        requests,
        profiles,
        samples
    );
    println!(
        "  encode: {:.2} ms per export request ({:.1} resource profiles each)",
        encode_ms,
        profiles / encodes
    );
    println!(
        "  symbols: {:.0} sealed copies made ({:.1} MiB, {:.2} s), {:.0} lookups read a binary",
        metric(metrics, "hostprof_symbol_files_copied_total"),
        metric(metrics, "hostprof_symbol_copied_bytes_total") / (1024.0 * 1024.0),
        metric(metrics, "hostprof_symbol_copy_seconds_total"),
        metric(metrics, "hostprof_symbol_cache_misses_total")
    );
    let drains = |cause: &str| {
        metric(
            metrics,
            &format!("hostprof_drains_total{{cause=\"{cause}\"}}"),
        )
    };
    println!(
        "  drains: {:.0} scheduled, {:.0} early, {:.0} at a window's end; interval at the end {:.1} s",
        drains("scheduled"),
        drains("early"),
        drains("window"),
        metric(metrics, "hostprof_drain_interval_seconds")
    );
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Usage;

    /// A reading `at` seconds in: the agent's CPU seconds so far, its RSS
    /// and its BPF maps.
    fn reading(at: u64, cpu_seconds: f64, rss_mib: f64, bpf_maps_mib: f64) -> Reading {
        Reading {
            at: Duration::from_secs(at),
            cpu_seconds,
            rss_mib,
            anon_mib: rss_mib / 2.0,
            file_mib: rss_mib / 2.0,
            bpf_maps_mib,
        }
    }

    #[test]
    fn figures_take_the_steady_state_after_the_first_minute() {
        let readings = [
            reading(30, 0.5, 60.0, 10.0),
            reading(60, 0.6, 50.0, 10.0),
            reading(120, 0.9, 52.0, 11.0),
        ];
        let total = Usage {
            cpu_seconds: 1.2,
            peak_rss_mib: 70.0,
        };
        let figures = AgentFigures::of(&readings, total, 24_000).unwrap();
        assert_eq!(figures.minutes, 2.0);
        assert!((figures.cpu_percent - 0.75).abs() < 1e-9);
        // 0.3 CPU s over the 60 s from the first steady reading.
        assert!((figures.steady_cpu_percent - 0.5).abs() < 1e-9);
        assert_eq!(figures.steady_from, Duration::from_secs(60));
        assert_eq!(figures.rss_steady_mib, (50.0, 52.0));
        assert_eq!(figures.rss_max_mib, 60.0);
        // The start-up reading counts for the maximum, not the steady least.
        assert_eq!(figures.footprint_max_mib, 70.0);
        assert_eq!(figures.footprint_steady_min_mib, 60.0);
        assert_eq!(figures.footprint_growth_mib, 3.0);
        assert_eq!(figures.new_processes_per_s, 200.0);
        assert_eq!(figures.per_new_process_us, Some(50.0));
    }

    #[test]
    fn a_short_quiet_run_is_steady_from_its_first_reading() {
        let readings = [reading(5, 0.1, 40.0, 8.0), reading(30, 0.2, 41.0, 8.0)];
        let figures = AgentFigures::of(&readings, Usage::default(), 10).unwrap();
        assert_eq!(figures.steady_from, Duration::from_secs(5));
        assert!((figures.steady_cpu_percent - 0.4).abs() < 1e-9);
        // Fewer new processes than seconds: no cost per process.
        assert_eq!(figures.per_new_process_us, None);
        assert!(AgentFigures::of(&[], Usage::default(), 0).is_err());
    }
}
