//! `hostprof record`: one capture, written to local files.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hostprof::otlp::{Exporter, HostIdentity};
use hostprof::profile::Profile;
use hostprof::profiler::{PipelineStats, Profiler, ProfilerOptions, Progress};
use hostprof::settings::{CommandLine, LocalOutputs, RecordOnly, RecordSettings};
use hostprof::summary::{CaptureReport, Summary};
use hostprof::text::escape;
use hostprof::ProfileKind;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::check_pids_exist;
use crate::output::{check_distinct, PendingFile};

/// Runs a capture as `line` says and writes its outputs (or prints its
/// configuration).
///
/// Everything that can be checked is checked before sampling: the output
/// files are reserved (see [`PendingFile`]), the pids, the exporter's
/// settings. SIGTERM or SIGINT ends sampling early; what was collected is
/// written all the same and the exit status is success.
pub fn run(line: CommandLine<RecordOnly>) -> anyhow::Result<ExitCode> {
    let options = line.settings()?.resolve(|name| std::env::var(name).ok())?;
    if line.print_config {
        print!("{}", RecordSettings::effective(&options).to_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    let outputs = Outputs::reserve(
        options.local.as_ref(),
        &options.profiler.profiles,
        options.stats_json.as_deref(),
    )?;
    check_pids_exist(&options.profiler.policy.target)?;
    let exporter = options.exporter.map(Exporter::new).transpose()?;
    let host = HostIdentity::detect(options.profiler.node_name.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let captured = runtime.block_on(capture(options.profiler, options.duration))?;
    let profiles = &captured.profiles;
    // Each output is written whole or not at all; one that fails does not
    // keep the others from being written.
    let mut failed = Vec::new();
    let mut done = |result: anyhow::Result<()>| {
        if let Err(err) = result {
            failed.push(err);
        }
    };
    for files in outputs.kinds {
        // One profile per kind asked for, each with its own files.
        let Some(profile) = profiles.iter().find(|p| p.kind == files.kind) else {
            continue;
        };
        if let Some(pending) = files.pprof {
            done(write_and_report(pending, |out| {
                Ok(hostprof::pprof::write_gzip(profile, out)?)
            }));
        }
        if let Some(pending) = files.flamegraph {
            done(write_and_report(pending, |out| {
                Ok(hostprof::flamegraph::write_svg(
                    profile,
                    out,
                    profile.kind.title(),
                )?)
            }));
        }
        if let Some(pending) = files.folded {
            done(write_and_report(pending, |out| {
                Ok(hostprof::flamegraph::write_folded(profile, out)?)
            }));
        }
    }
    let summaries: Vec<Summary> = profiles
        .iter()
        .map(|profile| Summary::new(profile, 10).with_unwind_tables(captured.totals.unwind_tables))
        .collect();
    for summary in &summaries {
        print!("\n{summary}");
    }
    if let Some(pending) = outputs.stats_json {
        let report = CaptureReport {
            sampling_seconds: captured.sampling.as_secs_f64(),
            finishing_seconds: captured.finishing.as_secs_f64(),
            symbolization: captured.totals.symbol_cache,
            profiles: summaries,
            overhead: captured.totals.overhead,
        };
        done(write_and_report(pending, |out| Ok(report.write_json(out)?)));
    }
    if let Some(exporter) = exporter {
        done(runtime.block_on(export(&exporter, profiles, &host)));
    }
    match failed.len() {
        0 => Ok(ExitCode::SUCCESS),
        1 => Err(failed.remove(0)),
        n => {
            for err in &failed[..n - 1] {
                eprintln!("error: {}", escape(&format!("{err:#}")));
            }
            Err(failed.remove(n - 1))
        }
    }
}

/// The files a capture writes, reserved before it starts.
struct Outputs {
    /// Each kind's files (none with `--no-local`).
    kinds: Vec<KindFiles>,
    stats_json: Option<PendingFile>,
}

/// The local files of one kind's profile.
struct KindFiles {
    kind: ProfileKind,
    pprof: Option<PendingFile>,
    flamegraph: Option<PendingFile>,
    folded: Option<PendingFile>,
}

impl Outputs {
    /// Reserves every output of every kind of `kinds` (the CPU profile at
    /// the paths given, the others beside them, see
    /// [`LocalOutputs::for_kind`]): fails, naming the flag, the path and
    /// the fix, when one cannot be written or two share a path.
    fn reserve(
        local: Option<&LocalOutputs>,
        kinds: &[ProfileKind],
        stats_json: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let per_kind: Vec<(ProfileKind, LocalOutputs)> = local
            .map(|local| kinds.iter().map(|&k| (k, local.for_kind(k))).collect())
            .unwrap_or_default();
        let mut named: Vec<(&'static str, &Path)> = Vec::new();
        for (_, local) in &per_kind {
            named.push(("--output", &local.pprof));
            if let Some(path) = &local.flamegraph {
                named.push(("--flamegraph", path));
            }
            if let Some(path) = &local.folded {
                named.push(("--folded", path));
            }
        }
        if let Some(path) = stats_json {
            named.push(("--stats-json", path));
        }
        check_distinct(&named)?;
        let reserve = |flag, path: Option<&Path>| {
            path.map(|path| PendingFile::reserve(flag, path))
                .transpose()
        };
        let mut files = Vec::new();
        for (kind, local) in &per_kind {
            files.push(KindFiles {
                kind: *kind,
                pprof: reserve("--output", Some(&local.pprof))?,
                flamegraph: reserve("--flamegraph", local.flamegraph.as_deref())?,
                folded: reserve("--folded", local.folded.as_deref())?,
            });
        }
        Ok(Self {
            kinds: files,
            stats_json: reserve("--stats-json", stats_json)?,
        })
    }
}

/// Writes the file with `write`, puts it in place and says so.
fn write_and_report(
    pending: PendingFile,
    write: impl FnOnce(&mut BufWriter<&File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let path = pending.path().to_owned();
    pending.write_and_commit(write)?;
    eprintln!("wrote {}", path.display());
    Ok(())
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
            outcome.rejected_profiles,
            escape(&outcome.message)
        );
    }
    Ok(())
}

/// What a capture produced.
struct Captured {
    /// One profile per kind.
    profiles: Vec<Profile>,
    /// The pipeline totals once the capture was finished.
    totals: PipelineStats,
    /// Time spent sampling.
    sampling: Duration,
    /// Time spent finishing: the last drain and symbolization.
    finishing: Duration,
}

async fn capture(options: ProfilerOptions, duration: Duration) -> anyhow::Result<Captured> {
    // Installed before the profiler starts, so a signal while it loads
    // ends the capture (with what there is) rather than the process.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut profiler = Profiler::start(options)?;
    let bar = progress_bar(duration);
    if bar.is_hidden() {
        // No terminal for the bar: one line says sampling has begun (logs
        // of a Job, scripts waiting to start their workload).
        eprintln!(
            "recording for {}s (SIGINT or SIGTERM stops early)",
            duration.as_secs_f64()
        );
    }
    let stop = async {
        let signal = tokio::select! {
            () = tokio::time::sleep(duration) => return,
            _ = term.recv() => "terminated (SIGTERM)",
            _ = int.recv() => "interrupted",
        };
        // Said even without a terminal (where the bar, and its println, are
        // hidden): logs of a stopped Job show why the capture is short.
        bar.suspend(|| eprintln!("{signal}: stopping early and writing what was collected"));
    };
    let started = Instant::now();
    profiler
        .run_until(stop, |progress| update(&bar, progress))
        .await?;
    let sampling = started.elapsed();
    bar.finish_and_clear();
    eprintln!("symbolizing...");
    let (profiles, totals) = profiler.finish_with_totals()?;
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
