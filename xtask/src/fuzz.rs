//! `cargo xtask fuzz`: builds the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer, AddressSanitizer, on the pinned nightly) and runs each for a
//! while, then reports per target the inputs it ran and whether it
//! crashed. A crash fails the task, naming the input libFuzzer saved.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::cmd;
use crate::setup::NIGHTLY;

/// The ELF file copied into the unwind-table target's corpus at run time:
/// a real binary is the best seed there, and none is committed.
const ELF_SEED: &str = "/bin/true";

/// The target whose corpus gets [`ELF_SEED`].
const ELF_TARGET: &str = "unwind_table";

/// What one target's run came to.
#[derive(Debug, Default, PartialEq, Eq)]
struct RunSummary {
    /// Inputs executed, as libFuzzer counted them.
    inputs: u64,
    /// The input libFuzzer saved when the target crashed, leaked, ran out
    /// of memory or timed out.
    artifact: Option<String>,
}

/// One target's figures, for the report.
struct Report {
    target: String,
    summary: RunSummary,
    seconds: f64,
    crashed: bool,
    log: PathBuf,
}

/// Runs every fuzz target (or only `only`) for `seconds` each.
pub fn run(root: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let fuzz_dir = root.join("fuzz");
    let targets = list_targets(root)?;
    let chosen: Vec<&str> = match only {
        Some(name) if targets.iter().any(|t| t == name) => vec![name],
        Some(name) => bail!(
            "no fuzz target {name:?}; the targets are {}",
            targets.join(", ")
        ),
        None => targets.iter().map(String::as_str).collect(),
    };
    // One build of every target first, its progress shown: the runs then
    // only check that it is current.
    let started = Instant::now();
    cmd::run(cargo_fuzz(root).arg("build"))
        .context("building the fuzz targets (run `cargo xtask setup` if tools are missing)")?;
    println!(
        "[fuzz] targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let logs = fuzz_dir.join("target/xtask-logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut reports = Vec::new();
    for target in chosen {
        seed_corpus(&fuzz_dir, target)?;
        println!("[fuzz] {target}: running for {seconds} s");
        let log = logs.join(format!("{target}.log"));
        let started = Instant::now();
        let crashed = !run_target(root, target, seconds, &log)?;
        let output = fs::read_to_string(&log).unwrap_or_default();
        let report = Report {
            target: target.to_owned(),
            summary: summarise(&output),
            seconds: started.elapsed().as_secs_f64(),
            crashed,
            log,
        };
        print_report(&report);
        reports.push(report);
    }
    let crashes: Vec<String> = reports
        .iter()
        .filter(|r| r.crashed)
        .map(|r| {
            format!(
                "{} (input: {}; log: {})",
                r.target,
                r.summary.artifact.as_deref().unwrap_or("none saved"),
                r.log.display()
            )
        })
        .collect();
    if !crashes.is_empty() {
        bail!(
            "{} fuzz target(s) failed: {}; reproduce with `cargo +{NIGHTLY} fuzz run <target> <input>`",
            crashes.len(),
            crashes.join("; ")
        );
    }
    Ok(())
}

/// `cargo fuzz` on the pinned nightly, in the workspace root (cargo-fuzz
/// finds `fuzz/` there).
fn cargo_fuzz(root: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", NIGHTLY, "cargo", "fuzz"])
        .current_dir(root)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    command
}

/// The targets `fuzz/Cargo.toml` declares.
fn list_targets(root: &Path) -> Result<Vec<String>> {
    let listed = cmd::output(cargo_fuzz(root).arg("list"))
        .context("`cargo fuzz list` failed (run `cargo xtask setup` to install cargo-fuzz)")?;
    let targets: Vec<String> = listed.split_whitespace().map(str::to_owned).collect();
    if targets.is_empty() {
        bail!("fuzz/Cargo.toml declares no fuzz target");
    }
    Ok(targets)
}

/// Puts [`ELF_SEED`] into the ELF target's corpus.
fn seed_corpus(fuzz_dir: &Path, target: &str) -> Result<()> {
    if target != ELF_TARGET {
        return Ok(());
    }
    let corpus = fuzz_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seed = corpus.join("host-true");
    if !seed.exists() {
        fs::copy(ELF_SEED, &seed)
            .with_context(|| format!("copying {ELF_SEED} to {}", seed.display()))?;
    }
    Ok(())
}

/// Runs `target` for `seconds`, its output into `log`; true when it ran
/// to the end without a failure.
fn run_target(root: &Path, target: &str, seconds: u64, log: &Path) -> Result<bool> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = cargo_fuzz(root)
        .args(["run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::from(
            file.try_clone().context("duplicating the log file")?,
        ))
        .stderr(Stdio::from(file))
        .status()
        .context("could not start `cargo fuzz run`")?;
    Ok(status.success())
}

fn print_report(report: &Report) {
    let verdict = if report.crashed {
        format!(
            "CRASHED, input {}",
            report.summary.artifact.as_deref().unwrap_or("not saved")
        )
    } else {
        "0 crashes".to_owned()
    };
    println!(
        "[fuzz] {}: {} inputs in {:.0} s, {verdict} (log: {})",
        report.target,
        report.summary.inputs,
        report.seconds,
        report.log.display()
    );
}

/// Reads libFuzzer's output: the inputs run (`stat::number_of_executed_units`,
/// else `Done N runs`, else the last `#N` status line) and the input it
/// saved on a failure (`Test unit written to PATH`).
fn summarise(output: &str) -> RunSummary {
    let mut summary = RunSummary::default();
    let mut final_count = None;
    for line in output.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            final_count = n.trim().parse().ok().or(final_count);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                final_count = final_count.or(Some(n));
            }
        } else if let Some(rest) = line.strip_prefix('#') {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                summary.inputs = n;
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            summary.artifact = Some(path.trim().to_owned());
        }
    }
    if let Some(n) = final_count {
        summary.inputs = n;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_counts_its_inputs() {
        let output = "\
INFO: Seed: 1234
#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb
#524288\tpulse  cov: 90 ft: 200 corp: 40/900b lim: 4096 exec/s: 174762 rss: 60Mb
#1000000\tDONE   cov: 90 ft: 200 corp: 40/900b lim: 4096 exec/s: 99000 rss: 61Mb
Done 1000000 runs in 11 second(s)
stat::number_of_executed_units: 1000001
stat::average_exec_per_sec:     90909
";
        assert_eq!(
            summarise(output),
            RunSummary {
                inputs: 1_000_001,
                artifact: None
            }
        );
        let without_stats = "#77\tNEW cov: 1\nDone 80 runs in 1 second(s)\n";
        assert_eq!(summarise(without_stats).inputs, 80);
    }

    #[test]
    fn a_crash_names_its_input() {
        let output = "\
#4096\tpulse  cov: 90 ft: 200 corp: 40/900b exec/s: 2048 rss: 60Mb
thread '<unnamed>' panicked at profiler-user/src/x.rs:1:1:
==42== ERROR: libFuzzer: deadly signal
MS: 2 ChangeBit-InsertByte-; base unit: 0000
artifact_prefix='/w/fuzz/artifacts/proc_maps/'; Test unit written to /w/fuzz/artifacts/proc_maps/crash-abc
Base64: AAAA
";
        assert_eq!(
            summarise(output),
            RunSummary {
                inputs: 4096,
                artifact: Some("/w/fuzz/artifacts/proc_maps/crash-abc".into())
            }
        );
    }
}
