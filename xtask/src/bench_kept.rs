//! The share of samples `hostprof record` keeps at 1 kHz (issue 16): a
//! whole-host capture at 999 Hz while a busy loop per CPU keeps every CPU
//! busy, so every CPU's timer fires 999 times a second and each firing
//! should become a sample. The samples in the CPU profile and the samples
//! the kernel dropped come from `record --stats-json`; the kept share is
//! the samples over CPUs × frequency × seconds, and what neither the
//! profile nor the drop count holds (the kernel's throttling, timers that
//! did not fire) is shown apart, so the drop count can be checked exact.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::bench::{measure, read_stats_json, with_load, Usage};

/// The frequency of the capture: the highest `hostprof record` takes
/// below 1 kHz, off the kernel's 1000 Hz tick.
pub const FREQUENCY: u32 = 999;

/// Options of the capture.
#[derive(Clone, Debug)]
pub struct KeptOptions {
    /// Capture length.
    pub duration: Duration,
    /// The release `hostprof` binary.
    pub hostprof: PathBuf,
    /// Scratch directory for the profile and its report.
    pub work_dir: PathBuf,
}

/// What one capture kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeptFigures {
    /// CPUs sampled (all of the host's).
    pub cpus: usize,
    /// The capture's frequency in Hz.
    pub frequency: u32,
    /// The capture's length asked for, in seconds.
    pub seconds: f64,
    /// The CPU profile's samples.
    pub samples: u64,
    /// Samples the kernel dropped (counted in the BPF program).
    pub dropped: u64,
    /// Samples whose stacks could not be read or stored (kept all the
    /// same).
    pub stack_errors: u64,
    /// How long hostprof sampled, by its own clock.
    pub sampling_seconds: f64,
    /// `hostprof record`'s resource use, start to exit.
    pub usage: Usage,
}

impl KeptFigures {
    /// Samples the timers should have taken: CPUs × frequency × seconds.
    pub fn expected(&self) -> f64 {
        self.cpus as f64 * f64::from(self.frequency) * self.seconds
    }

    /// The samples kept, as a share of those expected.
    pub fn share(&self) -> f64 {
        self.samples as f64 / self.expected().max(1.0)
    }

    /// Samples expected that are neither in the profile nor counted as
    /// dropped (negative when there are more than expected: a capture
    /// longer than asked for).
    pub fn unaccounted(&self) -> f64 {
        self.expected() - self.samples as f64 - self.dropped as f64
    }

    /// The CPU profile's figures of `record --stats-json`'s `report`,
    /// for a capture on `cpus` CPUs at `frequency` for `seconds`.
    fn from_report(
        report: &serde_json::Value,
        cpus: usize,
        frequency: u32,
        seconds: f64,
        usage: Usage,
    ) -> Result<Self> {
        let cpu = report["profiles"]
            .as_array()
            .and_then(|profiles| profiles.iter().find(|p| p["kind"] == "cpu"))
            .context("the report has no CPU profile")?;
        let number = |value: &serde_json::Value, name: &str| {
            value[name]
                .as_u64()
                .with_context(|| format!("the CPU profile's report has no {name}"))
        };
        Ok(KeptFigures {
            cpus,
            frequency,
            seconds,
            samples: number(cpu, "samples")?,
            dropped: number(cpu, "dropped")?,
            stack_errors: number(cpu, "stack_errors")?,
            sampling_seconds: report["sampling_seconds"].as_f64().unwrap_or(0.0),
            usage,
        })
    }
}

/// Runs the capture with every CPU busy, prints what it kept and returns
/// it.
pub fn run(options: &KeptOptions) -> Result<KeptFigures> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stats_json = options.work_dir.join("kept.json");
    println!(
        "[bench-kept] {cpus} busy CPUs, a {:?} whole-host capture at {FREQUENCY} Hz",
        options.duration
    );
    let usage = with_load(cpus, || {
        measure(
            Command::new(&options.hostprof)
                .args(["record", "--no-flamegraph", "-F", &FREQUENCY.to_string()])
                .arg("--duration")
                .arg(format!("{}ms", options.duration.as_millis()))
                .arg("--output")
                .arg(options.work_dir.join("kept.pb.gz"))
                .arg("--stats-json")
                .arg(&stats_json)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    })?;
    let figures = KeptFigures::from_report(
        &read_stats_json(&stats_json)?,
        cpus,
        FREQUENCY,
        options.duration.as_secs_f64(),
        usage,
    )?;
    println!();
    print!("{}", report(&figures));
    Ok(figures)
}

/// The capture's figures, for people.
fn report(figures: &KeptFigures) -> String {
    format!(
        "hostprof record at {} Hz on {} busy CPUs for {:.0} s ({:.2} s sampled):\n  \
         kept {} samples of {:.0} expected ({:.2} %); dropped {} (counted), \
         {:.0} neither kept nor counted; {} with stack errors\n  \
         record's own CPU {:.2} s, peak RSS {:.1} MiB\n",
        figures.frequency,
        figures.cpus,
        figures.seconds,
        figures.sampling_seconds,
        figures.samples,
        figures.expected(),
        figures.share() * 100.0,
        figures.dropped,
        figures.unaccounted(),
        figures.stack_errors,
        figures.usage.cpu_seconds,
        figures.usage.peak_rss_mib,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report as `record --stats-json --profiles cpu,off-cpu` writes it,
    /// cut to what is read here.
    const REPORT: &str = r#"{"sampling_seconds": 10.02, "finishing_seconds": 0.4,
        "profiles": [
          {"kind": "off-cpu", "samples": 123456789, "dropped": 5, "stack_errors": 0},
          {"kind": "cpu", "samples": 19900, "dropped": 40, "stack_errors": 3,
           "unwind_tables": null}
        ]}"#;

    fn figures(report: &str) -> Result<KeptFigures> {
        let report: serde_json::Value = serde_json::from_str(report).unwrap();
        KeptFigures::from_report(&report, 2, 1000, 10.0, Usage::default())
    }

    #[test]
    fn reads_the_cpu_profile_of_the_report() {
        let kept = figures(REPORT).unwrap();
        assert_eq!(kept.samples, 19_900);
        assert_eq!(kept.dropped, 40);
        assert_eq!(kept.stack_errors, 3);
        assert_eq!(kept.sampling_seconds, 10.02);
        assert_eq!(kept.expected(), 20_000.0);
        assert_eq!(kept.share(), 0.995);
        assert_eq!(kept.unaccounted(), 60.0);
        let text = report(&kept);
        assert!(
            text.contains(
                "kept 19900 samples of 20000 expected (99.50 %); dropped 40 (counted), 60 neither"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_report_without_the_cpu_profile_or_a_count_is_an_error() {
        let err = figures(r#"{"profiles": [{"kind": "off-cpu", "samples": 1}]}"#).unwrap_err();
        assert!(err.to_string().contains("no CPU profile"), "{err:#}");
        let err = figures(r#"{"profiles": [{"kind": "cpu", "samples": 1}]}"#).unwrap_err();
        assert!(err.to_string().contains("no dropped"), "{err:#}");
        assert!(figures("{}").is_err());
    }
}
