//! `hostprof record`: one capture, written to local files.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hostprof::otlp::{Exporter, HostIdentity};
use hostprof::profile::Profile;
use hostprof::profiler::{PipelineStats, Profiler, ProfilerOptions, Progress};
use hostprof::settings::{CommandLine, LocalOutputs, RecordOnly, RecordSettings};
use hostprof::summary::{CaptureReport, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::check_pids_exist;

/// Runs a capture as `line` says and writes its outputs (or prints its
/// configuration).
pub fn run(line: CommandLine<RecordOnly>) -> anyhow::Result<ExitCode> {
    let options = line.settings()?.resolve(|name| std::env::var(name).ok())?;
    if line.print_config {
        print!("{}", RecordSettings::effective(&options).to_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    check_pids_exist(&options.profiler.policy.target)?;
    let exporter = options.exporter.map(Exporter::new).transpose()?;
    let host = HostIdentity::detect(options.profiler.node_name.as_deref())?;
    if let Some(local) = &options.local {
        check_output_dir("--output", &local.pprof)?;
        if let Some(path) = &local.flamegraph {
            check_output_dir("--flamegraph", path)?;
        }
        if let Some(path) = &local.folded {
            check_output_dir("--folded", path)?;
        }
    }
    if let Some(path) = &options.stats_json {
        check_output_dir("--stats-json", path)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let captured = runtime.block_on(capture(options.profiler, options.duration))?;
    let profiles = &captured.profiles;
    if let Some(local) = &options.local {
        for profile in profiles {
            write_outputs(profile, local)?;
        }
    }
    let summaries: Vec<Summary> = profiles
        .iter()
        .map(|profile| Summary::new(profile, 10).with_unwind_tables(captured.totals.unwind_tables))
        .collect();
    for summary in &summaries {
        print!("\n{summary}");
    }
    if let Some(path) = &options.stats_json {
        let report = CaptureReport {
            sampling_seconds: captured.sampling.as_secs_f64(),
            finishing_seconds: captured.finishing.as_secs_f64(),
            profiles: summaries,
        };
        report
            .write_json(create(path)?)
            .with_context(|| format!("writing --stats-json {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(exporter) = exporter {
        runtime.block_on(export(&exporter, profiles, &host))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(
    exporter: &Exporter,
    profiles: &[Profile],
    host: &HostIdentity,
) -> anyhow::Result<()> {
    let request = hostprof::otlp::build_request(profiles, host);
    let profiles = request.resource_profiles.len();
    let outcome = exporter.export(&request).await?;
    eprintln!(
        "exported {profiles} profiles ({} bytes) to {}",
        outcome.bytes_sent,
        exporter.config().endpoint
    );
    if outcome.rejected_profiles > 0 || !outcome.message.is_empty() {
        eprintln!(
            "warning: the collector rejected {} profiles: {}",
            outcome.rejected_profiles, outcome.message
        );
    }
    Ok(())
}

/// What a capture produced.
struct Captured {
    /// One profile per kind.
    profiles: Vec<Profile>,
    /// The pipeline totals just before the capture was finished (for the
    /// unwind tables, which `finish` lets go of).
    totals: PipelineStats,
    /// Time spent sampling.
    sampling: Duration,
    /// Time spent finishing: the last drain and symbolization.
    finishing: Duration,
}

async fn capture(options: ProfilerOptions, duration: Duration) -> anyhow::Result<Captured> {
    let mut profiler = Profiler::start(options)?;
    let bar = progress_bar(duration);
    let stop = async {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = tokio::signal::ctrl_c() => {
                bar.println("interrupted: stopping early and writing what was collected");
            }
        }
    };
    let started = Instant::now();
    profiler
        .run_until(stop, |progress| update(&bar, progress))
        .await?;
    let sampling = started.elapsed();
    bar.finish_and_clear();
    eprintln!("symbolizing...");
    let totals = profiler.totals();
    let profiles = profiler.finish()?;
    Ok(Captured {
        profiles,
        totals,
        sampling,
        finishing: started.elapsed() - sampling,
    })
}

fn progress_bar(duration: Duration) -> ProgressBar {
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("recording {bar:30} {elapsed:>4} / {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{}s", duration.as_secs_f64()));
    bar
}

fn update(bar: &ProgressBar, progress: &Progress) {
    bar.set_position(progress.elapsed.as_millis() as u64);
    bar.set_message(format!(
        "{} samples, {} processes, {} dropped",
        progress.samples, progress.processes, progress.stats.dropped
    ));
}

fn write_outputs(profile: &Profile, local: &LocalOutputs) -> anyhow::Result<()> {
    hostprof::pprof::write_file(profile, &local.pprof)?;
    eprintln!("wrote {}", local.pprof.display());
    if let Some(path) = &local.flamegraph {
        let out = create(path)?;
        hostprof::flamegraph::write_svg(profile, out, profile.kind.title())
            .with_context(|| format!("writing the flamegraph to {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &local.folded {
        let out = create(path)?;
        hostprof::flamegraph::write_folded(profile, out)
            .with_context(|| format!("writing folded stacks to {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Fails before sampling, rather than after, when an output cannot be written.
fn check_output_dir(flag: &str, path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "{flag} {}: the directory {} does not exist; create it or choose another path",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| {
        format!(
            "cannot create {}: check that the directory exists and is writable",
            path.display()
        )
    })?;
    Ok(BufWriter::new(file))
}
