//! `cargo xtask bench-memory`: what the memory profile costs the program it
//! profiles, and the agent.
//!
//! The load is a loop of `malloc(64)` + `free` pairs
//! (`tests/workloads/malloc_loop.c`), pinned to CPU 1, the agent to CPU 0.
//! Interleaved rounds, each a run with no profiler and a run under
//! `hostprof agent --profiles memory --pid <load>` (exporting over
//! HTTP/protobuf to the official-types receiver): the load's nanoseconds
//! per pair (its own count), the BPF run time of each probe per call
//! (`kernel.bpf_stats_enabled`, restored at the end; a probe's run time is
//! charged to the program it interrupts, the load), and the agent's CPU and
//! resident memory over the load's run. Medians over the rounds.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::bench_agent::{free_port, read_proc, start_receiver};
use crate::bench_unwind::{BpfObjects, BpfStats};

/// Options of the benchmark.
#[derive(Clone, Debug)]
pub struct MemoryBenchOptions {
    /// Length of each run of the load.
    pub duration: Duration,
    /// Rounds (a run without and a run with the profiler each).
    pub rounds: usize,
    /// The release `hostprof` binary.
    pub hostprof: PathBuf,
    /// The workspace root (for the receiver script).
    pub root: PathBuf,
    /// Scratch directory.
    pub work_dir: PathBuf,
}

/// The CPU the load is pinned to.
const LOAD_CPU: &str = "1";
/// The CPU the agent is pinned to.
const AGENT_CPU: &str = "0";
/// Bytes per allocation of the load.
const SIZE: &str = "64";

/// What one run under the agent measured.
#[derive(Clone, Debug, Default)]
struct Profiled {
    ns_per_pair: f64,
    /// Each probe program's runs and ns per run.
    probes: Vec<(String, u64, f64)>,
    /// The agent's CPU over the load's run, in cores.
    agent_cores: f64,
    /// Its resident memory at the end of the run, and at its peak, MiB.
    agent_rss_mib: (f64, f64),
    /// Kernel memory of its BPF maps, MiB.
    maps_mib: f64,
}

/// Runs the benchmark and prints its figures.
pub fn run(options: &MemoryBenchOptions) -> Result<()> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    let load = crate::workloads::build(&options.work_dir, &["malloc_loop"])
        .map_err(|err| anyhow!("compiling malloc_loop: {err}"))?
        .remove(0);
    let _stats = BpfStats::enable()?;
    println!(
        "[bench-memory] {} rounds of {} s: malloc({SIZE}) + free in a loop on CPU {LOAD_CPU}, \
         alone and under `hostprof agent --profiles memory --pid` on CPU {AGENT_CPU}",
        options.rounds,
        options.duration.as_secs()
    );
    let mut alone = Vec::new();
    let mut profiled = Vec::new();
    for round in 1..=options.rounds {
        let bare = run_alone(options, &load)?;
        let with = run_profiled(options, &load)?;
        println!(
            "round {round}: {bare:.1} ns per pair alone, {:.1} ns under the agent; agent {:.2} % \
             of a core, RSS {:.1} MiB (peak {:.1}), BPF maps {:.1} MiB",
            with.ns_per_pair,
            with.agent_cores * 100.0,
            with.agent_rss_mib.0,
            with.agent_rss_mib.1,
            with.maps_mib
        );
        for (name, runs, ns) in &with.probes {
            println!("         {name:<12} {runs:>10} runs {ns:>8.0} ns/run");
        }
        alone.push(bare);
        profiled.push(with);
    }
    let bare = median(alone);
    let with = median(profiled.iter().map(|p| p.ns_per_pair).collect());
    println!(
        "=> a malloc/free pair: {bare:.1} ns alone, {with:.1} ns with the probes ({:.0}x, +{:.0} \
         ns per pair)",
        with / bare,
        with - bare
    );
    for name in ["mem_entry", "mem_return"] {
        let ns = median(
            profiled
                .iter()
                .filter_map(|p| p.probes.iter().find(|(n, ..)| n == name).map(|p| p.2))
                .collect(),
        );
        println!("   {name}: {ns:.0} ns of BPF per run (median)");
    }
    println!(
        "   the agent: {:.2} % of a core, RSS {:.1} MiB, BPF maps {:.1} MiB (medians)",
        median(profiled.iter().map(|p| p.agent_cores * 100.0).collect()),
        median(profiled.iter().map(|p| p.agent_rss_mib.0).collect()),
        median(profiled.iter().map(|p| p.maps_mib).collect())
    );
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Starts the load, waiting for its go line.
fn start_load(options: &MemoryBenchOptions, load: &std::path::Path) -> Result<Child> {
    Command::new("taskset")
        .args(["-c", LOAD_CPU])
        .arg(load)
        .arg(options.duration.as_millis().to_string())
        .arg(SIZE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting malloc_loop")
}

/// Starts the waiting load and returns its nanoseconds per pair.
fn go(load: &mut Child) -> Result<f64> {
    load.stdin
        .as_mut()
        .expect("piped")
        .write_all(b"go\n")
        .context("starting the load")?;
    let mut line = String::new();
    BufReader::new(load.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("reading the load's count")?;
    load.wait().ok();
    let mut words = line.split_whitespace().skip(1);
    let mut next = || -> Option<f64> { words.next()?.parse().ok() };
    match (next(), next()) {
        (Some(pairs), Some(ns)) if pairs > 0.0 => Ok(ns / pairs),
        _ => bail!("malloc_loop printed {line:?}"),
    }
}

fn run_alone(options: &MemoryBenchOptions, load: &std::path::Path) -> Result<f64> {
    let mut child = start_load(options, load)?;
    go(&mut child)
}

fn run_profiled(options: &MemoryBenchOptions, load: &std::path::Path) -> Result<Profiled> {
    let mut child = start_load(options, load)?;
    let received = options.work_dir.join("memory-received.jsonl");
    std::fs::remove_file(&received).ok();
    let (mut receiver, http_port) = start_receiver(
        &options.root,
        options.duration * 2 + Duration::from_secs(120),
        &received,
    )?;
    let result = (|| {
        let metrics_port = free_port()?;
        // taskset execs hostprof: the child's pid is the agent's.
        let mut agent = Command::new("taskset")
            .args(["-c", AGENT_CPU])
            .arg(&options.hostprof)
            .args(["agent", "--profiles", "memory", "--interval", "2s"])
            .args(["--pid", &child.id().to_string()])
            .args(["--otlp-protocol", "http", "--otlp-endpoint"])
            .arg(format!("http://127.0.0.1:{http_port}"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "hostprof=info")
            .stderr(Stdio::piped())
            .spawn()
            .context("starting hostprof agent")?;
        let measured = measure(&mut agent, &mut child);
        // SAFETY: kill takes a pid and a signal number; the agent is our child.
        unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
        agent.wait().ok();
        measured
    })();
    receiver.kill().ok();
    receiver.wait().ok();
    child.kill().ok();
    child.wait().ok();
    result
}

/// Waits for the agent to probe the load, then runs the load and reads the
/// agent around it.
fn measure(agent: &mut Child, load: &mut Child) -> Result<Profiled> {
    let wait = crate::bench::watch_for(agent.stderr.take().expect("piped"), "probes on");
    wait.recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("hostprof agent did not probe the load within 60 s"))?;
    // Its unwind tables loaded, the first export's work done.
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.id();
    let started = Instant::now();
    let before_cpu = crate::bench::cpu_seconds(pid)?;
    let before = BpfObjects::of(pid).context("reading the agent's BPF programs")?;
    let ns_per_pair = go(load)?;
    let after = BpfObjects::of(pid).context("reading the agent's BPF programs")?;
    let agent_cores =
        (crate::bench::cpu_seconds(pid)? - before_cpu) / started.elapsed().as_secs_f64();
    let reading = read_proc(pid, started.elapsed())
        .ok_or_else(|| anyhow!("the agent exited during the run"))?;
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0;
    let probes = ["mem_entry", "mem_return"]
        .into_iter()
        .filter_map(|name| {
            let now = after.program(name)?;
            let then = before.program(name);
            let runs = now.run_cnt - then.map_or(0, |p| p.run_cnt);
            let ns = now.run_time_ns - then.map_or(0, |p| p.run_time_ns);
            (runs > 0).then(|| (name.to_owned(), runs, ns as f64 / runs as f64))
        })
        .collect();
    Ok(Profiled {
        ns_per_pair,
        probes,
        agent_cores,
        agent_rss_mib: (reading.rss_mib, peak),
        maps_mib: after.memlock() as f64 / (1 << 20) as f64,
    })
}
