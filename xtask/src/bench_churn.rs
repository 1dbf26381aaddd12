//! `cargo xtask bench-churn`: what process churn costs symbolization
//! (issue 14, finding 3). For each rate, a spawner starts the `short_lived`
//! workload that many times a second, each living a few milliseconds of
//! CPU, while `hostprof record` captures the host; the figures are the
//! share of the short-lived processes' samples with a user frame whose
//! leaf user frame is symbolized (named, not `file+0x…` or `[unknown]`;
//! samples with no user frame, taken in `execve` or `exit`, have nothing
//! to symbolize and are counted apart), and hostprof's CPU seconds and
//! peak RSS (from `wait4`). Then, at each rate, `hostprof agent` runs
//! (`--agent-seconds`), exporting to the official-types receiver, and its
//! resident memory is read from `/proc` every 5 s: memory must follow the
//! live processes, not every process ever seen. Figures, not asserts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::bench::{measure, Usage};

/// Options of the benchmark.
#[derive(Clone, Debug)]
pub struct ChurnBenchOptions {
    /// Capture length at each rate.
    pub duration: Duration,
    /// New processes per second, one capture each.
    pub rates: Vec<u32>,
    /// How long each process runs, in milliseconds.
    pub lifetime_ms: u32,
    /// How long the agent runs at each rate (0: not at all).
    pub agent_duration: Duration,
    /// The release `hostprof` binary.
    pub hostprof: PathBuf,
    /// The workspace root (for the OTLP receiver script).
    pub root: PathBuf,
    /// Scratch directory.
    pub work_dir: PathBuf,
}

/// The agent's memory over its run at one rate.
struct AgentMemory {
    /// RSS at the first reading (5 s in) and at the last, in MiB.
    first_mib: f64,
    last_mib: f64,
    /// The highest reading.
    peak_mib: f64,
    /// Processes whose snapshots it held at the end (`hostprof_processes`).
    processes: f64,
}

/// One capture's figures.
struct Row {
    rate: u32,
    achieved: f64,
    /// Samples of the short-lived processes.
    samples: u64,
    /// Of those, samples with a user frame.
    with_user: u64,
    symbolized: u64,
    usage: Usage,
    agent: Option<AgentMemory>,
}

/// Runs a capture per rate and prints the table.
pub fn run(options: &ChurnBenchOptions) -> Result<()> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    let workload = crate::workloads::build(&options.work_dir, &["short_lived"])
        .map_err(anyhow::Error::msg)?
        .remove(0);
    let mut rows = Vec::new();
    for &rate in &options.rates {
        println!(
            "[bench-churn] {rate} processes/s of {} ms each, {} s",
            options.lifetime_ms,
            options.duration.as_secs()
        );
        rows.push(capture(options, &workload, rate)?);
    }
    println!();
    println!(
        "{:>8} {:>9} {:>9} {:>10} {:>11} {:>8} {:>13}",
        "rate/s", "achieved", "samples", "with user", "symbolized", "CPU s", "peak RSS MiB"
    );
    for row in &rows {
        println!(
            "{:>8} {:>9.0} {:>9} {:>10} {:>10.1}% {:>8.2} {:>13.1}",
            row.rate,
            row.achieved,
            row.samples,
            row.with_user,
            100.0 * row.symbolized as f64 / row.with_user.max(1) as f64,
            row.usage.cpu_seconds,
            row.usage.peak_rss_mib
        );
    }
    println!("\n(symbolized: of the samples with a user frame; goal: >= 95 % at 1000 processes/s)");
    if rows.iter().any(|row| row.agent.is_some()) {
        println!(
            "\n{:>8} {:>22} {:>13} {:>15}",
            "rate/s", "agent RSS MiB, 5 s/end", "peak RSS MiB", "processes held"
        );
        for row in &rows {
            if let Some(agent) = &row.agent {
                println!(
                    "{:>8} {:>11.1} / {:>8.1} {:>13.1} {:>15.0}",
                    row.rate, agent.first_mib, agent.last_mib, agent.peak_mib, agent.processes
                );
            }
        }
    }
    Ok(())
}

fn capture(options: &ChurnBenchOptions, workload: &Path, rate: u32) -> Result<Row> {
    let folded = options.work_dir.join(format!("churn-{rate}.folded"));
    let output = options.work_dir.join(format!("churn-{rate}.pb.gz"));
    let secs = format!("{}s", options.duration.as_secs());
    let (recorded, spawned) = while_spawning(options, workload, rate, || {
        measure(
            Command::new(&options.hostprof)
                .args(["record", "--duration", &secs, "--no-flamegraph", "-o"])
                .arg(&output)
                .arg("--folded")
                .arg(&folded)
                .stdout(Stdio::null()),
        )
    })?;
    let usage = recorded?;
    let text = std::fs::read_to_string(&folded)
        .with_context(|| format!("reading {}", folded.display()))?;
    let (samples, with_user, symbolized) = symbolized_share(&text, "short_lived");
    let agent = if options.agent_duration.is_zero() {
        None
    } else {
        Some(agent_memory(options, workload, rate)?)
    };
    Ok(Row {
        rate,
        achieved: spawned.0 as f64 / spawned.1.as_secs_f64().max(f64::EPSILON),
        samples,
        with_user,
        symbolized,
        usage,
        agent,
    })
}

/// Runs the agent while the spawner runs at `rate`, and reads its memory.
fn agent_memory(options: &ChurnBenchOptions, workload: &Path, rate: u32) -> Result<AgentMemory> {
    println!(
        "[bench-churn] agent, {rate} processes/s, {} s",
        options.agent_duration.as_secs()
    );
    let (ran, _) = while_spawning(options, workload, rate, || {
        crate::bench_agent::run_agent(
            &crate::bench_agent::AgentBenchOptions {
                duration: options.agent_duration,
                frequency: 99,
                interval: Duration::from_secs(10),
                hostprof: options.hostprof.clone(),
                root: options.root.clone(),
                work_dir: options.work_dir.clone(),
            },
            &options.work_dir.join(format!("churn-agent-{rate}.jsonl")),
        )
    })?;
    let (readings, metrics, _) = ran?;
    let rss: Vec<f64> = readings.iter().map(|r| r.rss_mib).collect();
    Ok(AgentMemory {
        first_mib: rss.first().copied().unwrap_or(0.0),
        last_mib: rss.last().copied().unwrap_or(0.0),
        peak_mib: rss.iter().copied().fold(0.0, f64::max),
        processes: crate::bench_agent::metric(&metrics, "hostprof_processes"),
    })
}

/// Runs `measured` while a spawner starts the workload `rate` times a
/// second; returns what it returned and what [`spawn_at`] did.
fn while_spawning<T>(
    options: &ChurnBenchOptions,
    workload: &Path,
    rate: u32,
    measured: impl FnOnce() -> T,
) -> Result<(T, (u64, Duration))> {
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = Arc::clone(&stop);
        let workload = workload.to_owned();
        let lifetime = options.lifetime_ms.to_string();
        std::thread::spawn(move || spawn_at(&workload, &lifetime, rate, &stop))
    };
    let result = measured();
    stop.store(true, Ordering::Relaxed);
    let spawned = spawner
        .join()
        .map_err(|_| anyhow::anyhow!("the spawner panicked"))??;
    Ok((result, spawned))
}

/// Starts `workload LIFETIME` `rate` times a second until `stop`, reaping
/// as it goes; returns how many it started and over how long.
fn spawn_at(
    workload: &Path,
    lifetime: &str,
    rate: u32,
    stop: &AtomicBool,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let interval = Duration::from_secs(1) / rate.max(1);
    let mut children: Vec<Child> = Vec::new();
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started + interval * u32::try_from(count).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        children.push(
            Command::new(workload)
                .arg(lifetime)
                .spawn()
                .with_context(|| format!("starting {}", workload.display()))?,
        );
        count += 1;
        children.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
    }
    let elapsed = started.elapsed();
    for mut child in children {
        child.wait().ok();
    }
    Ok((count, elapsed))
}

/// (samples, samples with a user frame, those whose leaf user frame is
/// named) of `process` in a folded file (`process;root;…;leaf COUNT`,
/// kernel frames marked `_[k]`).
fn symbolized_share(folded: &str, process: &str) -> (u64, u64, u64) {
    let (mut samples, mut with_user, mut named) = (0, 0, 0);
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let mut frames = stack.split(';');
        if frames.next() != Some(process) {
            continue;
        }
        samples += count;
        let Some(leaf) = frames.rfind(|f| !f.ends_with("_[k]")) else {
            continue;
        };
        with_user += count;
        if !leaf.contains("+0x") && leaf != "[unknown]" {
            named += count;
        }
    }
    (samples, with_user, named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_user_frames_decide() {
        let folded = "short_lived;_start;main;level1;level2;hot_loop 7\n\
                      short_lived;short_lived+0x1139 3\n\
                      short_lived;[unknown];do_syscall_64_[k] 2\n\
                      short_lived;_start;main;exit_[k] 1\n\
                      short_lived;do_exit_[k] 4\n\
                      other;main 5\n";
        assert_eq!(symbolized_share(folded, "short_lived"), (17, 13, 8));
    }
}
