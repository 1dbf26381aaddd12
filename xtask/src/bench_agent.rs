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

/// Runs the benchmark under `load` and prints its figures.
pub fn run(options: &AgentBenchOptions, load: Load) -> Result<()> {
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

fn report(
    options: &AgentBenchOptions,
    load: Load,
    readings: &[Reading],
    metrics: &str,
    total: crate::bench::Usage,
    received: &Path,
    forks: u64,
) -> Result<()> {
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        bail!("no readings: the run was shorter than 5 s");
    };
    let minutes = last.at.as_secs_f64() / 60.0;
    // Steady state: after the first minute (or the first reading).
    let settle = readings
        .iter()
        .position(|r| r.at >= Duration::from_secs(60))
        .unwrap_or(0);
    let steady = &readings[settle..];
    let steady_from = steady.first().unwrap_or(first);
    let steady_cpu = (last.cpu_seconds - steady_from.cpu_seconds)
        / (last.at - steady_from.at).as_secs_f64().max(1.0);
    let rss_max = readings.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
    let rss_steady_min = steady.iter().map(|r| r.rss_mib).fold(f64::MAX, f64::min);
    let rss_steady_max = steady.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
    // The issue-16 measure: resident set plus BPF maps, at every reading.
    let footprint = |r: &Reading| r.rss_mib + r.bpf_maps_mib;
    let footprint_max = readings.iter().map(footprint).fold(0.0, f64::max);
    let footprint_steady_min = steady.iter().map(footprint).fold(f64::MAX, f64::min);
    let sent = metric(metrics, "hostprof_export_sent_bytes_total");
    let encodes = metric(metrics, "hostprof_encodes_total").max(1.0);
    let encode_ms = metric(metrics, "hostprof_encode_seconds_total") / encodes * 1e3;
    let profiles = metric(metrics, "hostprof_profiles_exported_total");
    let samples = metric(metrics, "hostprof_samples_total");
    let requests = std::fs::read_to_string(received)
        .map(|s| s.lines().count())
        .unwrap_or(0);

    // Flat over time: the footprint's last reading against its first
    // steady one (growth per process seen would show here).
    let footprint_growth = footprint(last) - footprint(steady_from);

    println!();
    println!(
        "hostprof agent, {:.1} min at {} Hz, interval {:?}, load {:?} ({:.0} new processes/s on the host):",
        minutes,
        options.frequency,
        options.interval,
        load,
        forks as f64 / (minutes * 60.0).max(1.0)
    );
    println!(
        "  CPU: {:.2} % of one CPU over the run, {:.2} % in steady state; {:.2} CPU s start to exit",
        last.cpu_seconds / last.at.as_secs_f64() * 100.0,
        steady_cpu * 100.0,
        total.cpu_seconds
    );
    // Only where new processes drive the cost: a few forks of a steady host
    // would divide its whole start-up by next to nothing.
    if forks as f64 >= minutes * 60.0 {
        println!(
            "  per new process on the host: {:.0} µs of the agent's CPU (start to exit)",
            total.cpu_seconds * 1e6 / forks as f64
        );
    }
    println!(
        "  RSS: steady {:.1}..{:.1} MiB, max sampled {:.1} MiB, peak (wait4) {:.1} MiB",
        rss_steady_min, rss_steady_max, rss_max, total.peak_rss_mib
    );
    println!(
        "       at the end {:.1} MiB anonymous + {:.1} MiB file-backed (binaries and mapped debug info)",
        last.anon_mib, last.file_mib
    );
    println!(
        "  RSS + BPF maps: steady from {:.1} MiB, max {:.1} MiB over every reading (BPF maps {:.1} MiB at the end); {:+.1} MiB from {} s to the end",
        footprint_steady_min,
        footprint_max,
        last.bpf_maps_mib,
        footprint_growth,
        steady_from.at.as_secs()
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
    Ok(())
}
