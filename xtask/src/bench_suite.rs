//! `cargo xtask bench`: issue 16's figures, all measured in one run, and
//! one table of them against the goals.
//!
//! Five parts, each the benchmark of its own module, which prints its
//! detailed report as it goes and returns its figures:
//!
//! 1. `steady-agent`: `hostprof agent` on a steady host, a busy loop per
//!    CPU (`bench-agent --load busy`): steady CPU share, RSS + BPF maps at
//!    every reading.
//! 2. `build-agent`: the same on a build host (`bench-agent --load build`).
//! 3. `perf`: one-shot `hostprof record` against `perf record -a -g` +
//!    `perf report` beside it on the same load: CPU seconds and peak RSS.
//! 4. `unwind`: BPF run time per sample with the `.eh_frame` tables and
//!    with frame pointers (`bench-unwind` without its Python and table
//!    build parts).
//! 5. `kept`: the share of samples kept at 1 kHz and the drop count
//!    ([`crate::bench_kept`]).
//!
//! A part that fails shows as failed in the table and the others still
//! run; the command then fails at the end. A goal not met is a verdict in
//! the table, not a failure.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::bench::Comparison;
use crate::bench_agent::{AgentBenchOptions, AgentFigures, Load};
use crate::bench_kept::KeptFigures;
use crate::bench_unwind::UnwindFigures;

/// Goal: the steady host's agent CPU, in percent of one core.
pub const STEADY_CPU_PERCENT: f64 = 0.25;
/// Goal: the build host's agent CPU, in percent of one core.
pub const BUILD_CPU_PERCENT: f64 = 1.0;
/// Goal: the agent's RSS + BPF maps at every reading, in MiB.
pub const FOOTPRINT_MIB: f64 = 64.0;
/// Goal: one-shot `hostprof record`'s CPU per CPU second of perf's.
pub const RECORD_CPU_PER_PERF: f64 = 0.5;
/// Goal: BPF run time per sample with frame pointers, in µs.
pub const FRAME_POINTERS_US: f64 = 3.0;
/// Goal: BPF run time per sample with the tables, in µs.
pub const TABLES_US: f64 = 5.0;
/// Goal: the samples kept at 1 kHz, in percent of those expected.
pub const KEPT_PERCENT: f64 = 99.0;

/// The agents' sampling frequency (hostprof's default), in Hz.
const AGENT_FREQUENCY: u32 = 99;
/// The agents' export interval (hostprof's default).
const AGENT_INTERVAL: Duration = Duration::from_secs(10);
/// The longest a failure's reason stands in the table, in characters.
const REASON_CHARS: usize = 160;

/// A part of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// `hostprof agent` on a steady host.
    SteadyAgent,
    /// `hostprof agent` on a build host.
    BuildAgent,
    /// One-shot `hostprof record` against `perf`.
    Perf,
    /// BPF run time per sample, both unwinders.
    Unwind,
    /// The share of samples kept at 1 kHz.
    Kept,
}

impl Part {
    /// Every part, in the order they run.
    const ALL: [Part; 5] = [
        Part::SteadyAgent,
        Part::BuildAgent,
        Part::Perf,
        Part::Unwind,
        Part::Kept,
    ];

    /// Its name in messages.
    fn title(self) -> &'static str {
        match self {
            Part::SteadyAgent => "steady host agent",
            Part::BuildAgent => "build host agent",
            Part::Perf => "one-shot record against perf",
            Part::Unwind => "BPF time per sample",
            Part::Kept => "samples kept at 1 kHz",
        }
    }
}

/// The command line of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Length of the `record` and `perf record` captures, in seconds
    /// [default: 20].
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Sampling frequency of the `record` and `perf record` captures, in
    /// Hz.
    #[arg(long, default_value_t = 99)]
    pub frequency: u32,
    /// How long each agent runs, in seconds [default: 180 on the steady
    /// host, 150 on the build host].
    #[arg(long)]
    pub agent_seconds: Option<u64>,
    /// How long the build host's agent runs, in seconds [default:
    /// --agent-seconds, else 150].
    #[arg(long)]
    pub build_agent_seconds: Option<u64>,
    /// Length of each unwinder's capture (tables, then frame pointers), in
    /// seconds [default: 20].
    #[arg(long)]
    pub unwind_seconds: Option<u64>,
    /// Length of the 1 kHz capture, in seconds [default: 10].
    #[arg(long)]
    pub kept_seconds: Option<u64>,
    /// A smoke run of about 3 minutes: agents for 30 s, captures of 5 s
    /// (a length given above still counts).
    #[arg(long)]
    pub quick: bool,
    /// Leave a part out (repeatable).
    #[arg(long, value_enum, value_name = "PART")]
    pub skip: Vec<Part>,
    /// Run only this part (repeatable); the others show as skipped.
    #[arg(long, value_enum, value_name = "PART", conflicts_with = "skip")]
    pub only: Vec<Part>,
}

/// How long each part measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lengths {
    /// The steady host's agent.
    pub steady_agent: Duration,
    /// The build host's agent.
    pub build_agent: Duration,
    /// Each of `record` and `perf record`.
    pub perf: Duration,
    /// Each unwinder's capture.
    pub unwind: Duration,
    /// The 1 kHz capture.
    pub kept: Duration,
}

impl BenchArgs {
    /// Each part's length: the flag's when given, else `--quick`'s or the
    /// default.
    pub fn lengths(&self) -> Lengths {
        let pick = |flag: Option<u64>, quick: u64, default: u64| {
            Duration::from_secs(flag.unwrap_or(if self.quick { quick } else { default }))
        };
        Lengths {
            steady_agent: pick(self.agent_seconds, 30, 180),
            build_agent: pick(self.build_agent_seconds.or(self.agent_seconds), 30, 150),
            perf: pick(self.seconds, 5, 20),
            unwind: pick(self.unwind_seconds, 5, 20),
            kept: pick(self.kept_seconds, 5, 10),
        }
    }

    /// The parts to run, in order.
    pub fn parts(&self) -> Vec<Part> {
        Part::ALL
            .into_iter()
            .filter(|part| {
                if self.only.is_empty() {
                    !self.skip.contains(part)
                } else {
                    self.only.contains(part)
                }
            })
            .collect()
    }
}

/// What became of a part.
#[derive(Clone, Debug, PartialEq)]
enum Outcome<T> {
    /// Not run (`--skip`, `--only`).
    Skipped,
    /// It failed, for this reason (on one line).
    Failed(String),
    /// Its figures.
    Measured(T),
}

/// Every part's outcome.
#[derive(Clone, Debug)]
struct Results {
    /// The steady host's agent.
    steady_agent: Outcome<AgentFigures>,
    /// The build host's agent.
    build_agent: Outcome<AgentFigures>,
    /// `record` against `perf`.
    perf: Outcome<Comparison>,
    /// BPF time per sample.
    unwind: Outcome<UnwindFigures>,
    /// Samples kept at 1 kHz.
    kept: Outcome<KeptFigures>,
}

/// Runs the parts `args` asks for with the release `hostprof` of the
/// workspace at `root`, then prints the table; fails when a part failed.
pub fn run(args: &BenchArgs, hostprof: &Path, root: &Path) -> Result<()> {
    let lengths = args.lengths();
    let parts = args.parts();
    let work_dir = crate::bench::default_work_dir(root);
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "[bench] issue 16's figures on {cpus} CPUs: {}",
        parts
            .iter()
            .map(|&part| part.title())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let agent = |duration| AgentBenchOptions {
        duration,
        frequency: AGENT_FREQUENCY,
        interval: AGENT_INTERVAL,
        hostprof: hostprof.to_owned(),
        root: root.to_owned(),
        work_dir: work_dir.clone(),
    };
    let results = Results {
        steady_agent: attempt(&parts, Part::SteadyAgent, || {
            crate::bench_agent::run(&agent(lengths.steady_agent), Load::Busy)
        }),
        build_agent: attempt(&parts, Part::BuildAgent, || {
            crate::bench_agent::run(&agent(lengths.build_agent), Load::Build)
        }),
        perf: attempt(&parts, Part::Perf, || {
            crate::bench::run(&crate::bench::BenchOptions {
                duration: lengths.perf,
                frequency: args.frequency,
                hostprof: hostprof.to_owned(),
                work_dir: work_dir.clone(),
            })
        }),
        unwind: attempt(&parts, Part::Unwind, || {
            crate::bench_unwind::run(&crate::bench_unwind::UnwindBenchOptions {
                duration: lengths.unwind,
                hostprof: hostprof.to_owned(),
                root: root.to_owned(),
                work_dir: work_dir.clone(),
                record_args: Vec::new(),
                baseline: None,
                python: false,
                table_builds: false,
            })
        }),
        kept: attempt(&parts, Part::Kept, || {
            crate::bench_kept::run(&crate::bench_kept::KeptOptions {
                duration: lengths.kept,
                hostprof: hostprof.to_owned(),
                work_dir: work_dir.clone(),
            })
        }),
    };
    println!();
    println!("## Issue 16's figures\n");
    println!("{}\n", describe(&lengths, args.frequency, cpus));
    print!("{}", table(&results.rows()));
    let failed = results.failed();
    if !failed.is_empty() {
        bail!(
            "{} of the bench's parts failed: {} (their errors are above)",
            failed.len(),
            failed
                .iter()
                .map(|part| part.title())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Runs `part` when it is among `parts`, under a heading; its error
/// (printed whole) becomes its outcome.
fn attempt<T>(parts: &[Part], part: Part, run: impl FnOnce() -> Result<T>) -> Outcome<T> {
    if !parts.contains(&part) {
        return Outcome::Skipped;
    }
    println!("\n### {}\n", part.title());
    match run() {
        Ok(figures) => Outcome::Measured(figures),
        Err(err) => {
            eprintln!("[bench] {} failed: {err:#}", part.title());
            Outcome::Failed(one_line(&format!("{err:#}")))
        }
    }
}

/// What the run was, under the table's heading.
fn describe(lengths: &Lengths, frequency: u32, cpus: usize) -> String {
    format!(
        "{cpus} CPUs. Agents at {AGENT_FREQUENCY} Hz exporting every {} s: steady host {} s \
         (a busy loop per CPU), build host {} s (a compile loop per CPU and an exec probe); \
         steady state after the first minute. `record` and `perf record -a -g` + `perf \
         report`: {} s at {frequency} Hz each, every CPU busy. Unwinders: {} s each on \
         workloads without frame pointers (kernel.bpf_stats_enabled). Kept: {} s at {} Hz, \
         every CPU busy, against CPUs x {} x seconds.",
        AGENT_INTERVAL.as_secs(),
        lengths.steady_agent.as_secs(),
        lengths.build_agent.as_secs(),
        lengths.perf.as_secs(),
        lengths.unwind.as_secs(),
        lengths.kept.as_secs(),
        crate::bench_kept::FREQUENCY,
        crate::bench_kept::FREQUENCY,
    )
}

/// `text` on one line of at most [`REASON_CHARS`] characters, with no
/// `|` to break a markdown table.
fn one_line(text: &str) -> String {
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut line: String = words.chars().take(REASON_CHARS).collect();
    if line.len() < words.len() {
        line.push('…');
    }
    line.replace('|', "\\|")
}

/// A figure's verdict against its goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The goal is met.
    Met,
    /// The goal is not met (or the figure was not measured).
    NotMet,
    /// The figure has no goal: it stands beside another.
    NoGoal,
    /// Its part failed.
    Failed,
    /// Its part was not run.
    Skipped,
}

impl Verdict {
    /// `Met` when `met`, else `NotMet`.
    fn of(met: bool) -> Self {
        if met {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }

    /// Its cell in the table.
    fn cell(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::NotMet => "**no**",
            Verdict::NoGoal => "–",
            Verdict::Failed => "**failed**",
            Verdict::Skipped => "skipped",
        }
    }
}

/// A line of the table.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    /// What is measured.
    figure: String,
    /// Its value, or why there is none.
    measured: String,
    /// The goal for it.
    goal: String,
    /// Whether the value meets the goal.
    verdict: Verdict,
}

/// A figure of a part: its name, its goal and how its value and verdict
/// are read off the part's figures.
struct Figure<'a, T> {
    /// What is measured.
    name: &'a str,
    /// The goal, for people.
    goal: String,
    /// The value and its verdict.
    measure: &'a dyn Fn(&T) -> (String, Verdict),
}

impl<'a, T> Figure<'a, T> {
    /// The figure `name`, whose goal is `goal`, read off by `measure`.
    fn new(
        name: &'a str,
        goal: impl Into<String>,
        measure: &'a dyn Fn(&T) -> (String, Verdict),
    ) -> Self {
        Figure {
            name,
            goal: goal.into(),
            measure,
        }
    }
}

/// The rows of `figures` for a part whose outcome is `outcome`.
fn rows_of<T>(outcome: &Outcome<T>, figures: &[Figure<'_, T>]) -> Vec<Row> {
    figures
        .iter()
        .map(|figure| {
            let (measured, verdict) = match outcome {
                Outcome::Skipped => ("skipped".to_owned(), Verdict::Skipped),
                Outcome::Failed(reason) => (format!("failed: {reason}"), Verdict::Failed),
                Outcome::Measured(figures) => (figure.measure)(figures),
            };
            Row {
                figure: figure.name.to_owned(),
                measured,
                goal: figure.goal.clone(),
                verdict,
            }
        })
        .collect()
}

/// An agent's rows: steady CPU against `cpu_goal` percent of a core, and
/// RSS + BPF maps at every reading.
fn agent_rows(host: &str, outcome: &Outcome<AgentFigures>, cpu_goal: f64) -> Vec<Row> {
    let cpu_name = format!("{host} agent: CPU in steady state");
    let memory_name = format!("{host} agent: RSS + BPF maps, every reading");
    let cpu = |f: &AgentFigures| {
        let per_process = f.per_new_process_us.map_or_else(String::new, |us| {
            format!(
                " ({us:.0} µs per new process start to exit, {:.0}/s)",
                f.new_processes_per_s
            )
        });
        (
            format!("{:.2} % of one core{per_process}", f.steady_cpu_percent),
            Verdict::of(f.steady_cpu_percent <= cpu_goal),
        )
    };
    let memory = |f: &AgentFigures| {
        (
            format!(
                "max {:.1} MiB (steady from {:.1} MiB)",
                f.footprint_max_mib, f.footprint_steady_min_mib
            ),
            Verdict::of(f.footprint_max_mib <= FOOTPRINT_MIB),
        )
    };
    rows_of(
        outcome,
        &[
            Figure::new(&cpu_name, format!("≤ {cpu_goal} % of one core"), &cpu),
            Figure::new(
                &memory_name,
                format!("≤ {FOOTPRINT_MIB} MiB at every reading"),
                &memory,
            ),
        ],
    )
}

/// The rows of `record` against `perf`: CPU (with its goal) and peak RSS.
fn perf_rows(outcome: &Outcome<Comparison>) -> Vec<Row> {
    let cpu = |c: &Comparison| {
        (
            format!(
                "{:.2}x perf ({:.2} s against {:.2} s)",
                c.cpu_ratio(),
                c.hostprof.cpu_seconds,
                c.perf.cpu_seconds
            ),
            Verdict::of(c.cpu_ratio() <= RECORD_CPU_PER_PERF),
        )
    };
    let rss = |c: &Comparison| {
        (
            format!(
                "{:.2}x perf ({:.1} MiB against {:.1} MiB)",
                c.rss_ratio(),
                c.hostprof.peak_rss_mib,
                c.perf.peak_rss_mib
            ),
            Verdict::NoGoal,
        )
    };
    rows_of(
        outcome,
        &[
            Figure::new(
                "one-shot record: CPU, against perf record + report",
                format!("≤ {RECORD_CPU_PER_PERF}x perf"),
                &cpu,
            ),
            Figure::new("one-shot record: peak RSS, against perf", "–", &rss),
        ],
    )
}

/// The rows of BPF time per sample: frame pointers (on the tables' load,
/// programs built without them, then on programs built with them), then
/// the tables (with their ratio to frame pointers on the same load).
fn unwind_rows(outcome: &Outcome<UnwindFigures>) -> Vec<Row> {
    let verdict = |ns: Option<f64>, goal_us: f64| match ns {
        Some(ns) => (
            format!("{:.2} µs", ns / 1e3),
            Verdict::of(ns / 1e3 <= goal_us),
        ),
        None => ("not measured (no samples)".to_owned(), Verdict::NotMet),
    };
    let frame_pointers = |u: &UnwindFigures| verdict(u.frame_pointers_ns, FRAME_POINTERS_US);
    let frame_pointers_built =
        |u: &UnwindFigures| verdict(u.frame_pointers_built_ns, FRAME_POINTERS_US);
    let tables = |u: &UnwindFigures| {
        let (mut measured, verdict) = verdict(u.tables_ns, TABLES_US);
        if let (Some(tables), Some(fp)) = (u.tables_ns, u.frame_pointers_ns) {
            measured += &format!(" ({:.2}x frame pointers)", tables / fp.max(f64::EPSILON));
        }
        if let Some(floor) = u.floor_ns {
            measured += &format!("; an empty program: {:.2} µs", floor / 1e3);
        }
        (measured, verdict)
    };
    rows_of(
        outcome,
        &[
            Figure::new(
                "BPF time per sample, frame pointers",
                format!("≤ {FRAME_POINTERS_US} µs"),
                &frame_pointers,
            ),
            Figure::new(
                "BPF time per sample, frame pointers, programs built with them",
                format!("≤ {FRAME_POINTERS_US} µs"),
                &frame_pointers_built,
            ),
            Figure::new(
                "BPF time per sample, tables",
                format!("≤ {TABLES_US} µs"),
                &tables,
            ),
        ],
    )
}

/// The row of the samples kept at 1 kHz.
fn kept_rows(outcome: &Outcome<KeptFigures>) -> Vec<Row> {
    let kept = |k: &KeptFigures| {
        (
            format!(
                "{:.2} % ({} of {:.0}); {} dropped, counted; {:.0} neither kept nor counted",
                k.share() * 100.0,
                k.samples,
                k.expected(),
                k.dropped,
                k.unaccounted()
            ),
            // In whole samples: 990 of 1000 is 99 %, with no rounding.
            Verdict::of(k.samples as f64 * 100.0 >= KEPT_PERCENT * k.expected()),
        )
    };
    rows_of(
        outcome,
        &[Figure::new(
            "samples kept at 1 kHz, every CPU busy",
            format!("≥ {KEPT_PERCENT} %, drops counted"),
            &kept,
        )],
    )
}

impl Results {
    /// The table's rows, part by part.
    fn rows(&self) -> Vec<Row> {
        let mut rows = agent_rows("steady host", &self.steady_agent, STEADY_CPU_PERCENT);
        rows.extend(agent_rows(
            "build host",
            &self.build_agent,
            BUILD_CPU_PERCENT,
        ));
        rows.extend(perf_rows(&self.perf));
        rows.extend(unwind_rows(&self.unwind));
        rows.extend(kept_rows(&self.kept));
        rows
    }

    /// The parts that failed.
    fn failed(&self) -> Vec<Part> {
        let failed = [
            matches!(self.steady_agent, Outcome::Failed(_)),
            matches!(self.build_agent, Outcome::Failed(_)),
            matches!(self.perf, Outcome::Failed(_)),
            matches!(self.unwind, Outcome::Failed(_)),
            matches!(self.kept, Outcome::Failed(_)),
        ];
        Part::ALL
            .into_iter()
            .zip(failed)
            .filter_map(|(part, failed)| failed.then_some(part))
            .collect()
    }
}

/// The rows as one markdown table.
fn table(rows: &[Row]) -> String {
    let mut out = String::from("| figure | measured | goal | met? |\n|---|---|---|---|\n");
    for row in rows {
        out += &format!(
            "| {} | {} | {} | {} |\n",
            row.figure,
            row.measured,
            row.goal,
            row.verdict.cell()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Usage;
    use clap::Parser as _;

    /// `cargo xtask bench`'s flags alone.
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(flags: &[&str]) -> Result<BenchArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn lengths_default_quick_and_given() {
        let secs = Duration::from_secs;
        let full = parse(&[]).unwrap().lengths();
        assert_eq!(
            full,
            Lengths {
                steady_agent: secs(180),
                build_agent: secs(150),
                perf: secs(20),
                unwind: secs(20),
                kept: secs(10),
            }
        );
        let quick = parse(&["--quick", "--kept-seconds", "10"]).unwrap();
        assert_eq!(
            quick.lengths(),
            Lengths {
                steady_agent: secs(30),
                build_agent: secs(30),
                perf: secs(5),
                unwind: secs(5),
                kept: secs(10),
            }
        );
        // --agent-seconds is both agents', unless the build host's is given.
        let both = parse(&["--agent-seconds", "60"]).unwrap().lengths();
        assert_eq!((both.steady_agent, both.build_agent), (secs(60), secs(60)));
        let apart = parse(&["--agent-seconds", "60", "--build-agent-seconds", "90"])
            .unwrap()
            .lengths();
        assert_eq!(
            (apart.steady_agent, apart.build_agent),
            (secs(60), secs(90))
        );
        assert_eq!(parse(&["--seconds", "7"]).unwrap().lengths().perf, secs(7));
    }

    #[test]
    fn parts_skipped_or_only() {
        assert_eq!(parse(&[]).unwrap().parts(), Part::ALL.to_vec());
        let skipped = parse(&["--skip", "perf", "--skip", "build-agent"]).unwrap();
        assert_eq!(
            skipped.parts(),
            [Part::SteadyAgent, Part::Unwind, Part::Kept]
        );
        let only = parse(&["--only", "kept", "--only", "steady-agent"]).unwrap();
        assert_eq!(only.parts(), [Part::SteadyAgent, Part::Kept]);
        assert!(parse(&["--only", "kept", "--skip", "perf"]).is_err());
        assert!(parse(&["--skip", "everything"]).is_err());
    }

    #[test]
    fn reasons_fit_on_one_line_of_a_table() {
        assert_eq!(
            one_line("starting \"perf\":\n  No such file | or directory"),
            "starting \"perf\": No such file \\| or directory"
        );
        let long = one_line(&"é".repeat(500));
        assert_eq!(long.chars().count(), REASON_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(
            one_line(&"a".repeat(REASON_CHARS)),
            "a".repeat(REASON_CHARS)
        );
    }

    /// An agent's figures with this steady CPU and largest footprint.
    fn agent(steady_cpu_percent: f64, footprint_max_mib: f64, per_process: bool) -> AgentFigures {
        AgentFigures {
            minutes: 3.0,
            cpu_percent: steady_cpu_percent * 2.0,
            steady_cpu_percent,
            steady_from: Duration::from_secs(60),
            rss_steady_mib: (40.0, 45.0),
            rss_max_mib: 50.0,
            footprint_steady_min_mib: 55.5,
            footprint_max_mib,
            footprint_growth_mib: 1.0,
            new_processes_per_s: 470.0,
            per_new_process_us: per_process.then_some(100.0),
        }
    }

    fn usage(cpu_seconds: f64, peak_rss_mib: f64) -> Usage {
        Usage {
            cpu_seconds,
            peak_rss_mib,
        }
    }

    fn measured_results() -> Results {
        Results {
            steady_agent: Outcome::Measured(agent(0.22, 62.6, false)),
            build_agent: Outcome::Measured(agent(3.57, 98.8, true)),
            perf: Outcome::Measured(Comparison {
                hostprof: usage(0.17, 29.6),
                perf: usage(0.34, 26.1),
            }),
            unwind: Outcome::Measured(UnwindFigures {
                tables_ns: Some(5_400.0),
                frame_pointers_ns: Some(2_700.0),
                frame_pointers_built_ns: Some(3_100.0),
                floor_ns: Some(400.0),
            }),
            kept: Outcome::Measured(KeptFigures {
                cpus: 2,
                frequency: 999,
                seconds: 10.0,
                samples: 19_880,
                dropped: 0,
                stack_errors: 0,
                sampling_seconds: 10.0,
                usage: usage(1.0, 40.0),
            }),
        }
    }

    #[test]
    fn table_has_a_row_a_figure_with_its_verdict() {
        let results = measured_results();
        assert!(results.failed().is_empty());
        let text = table(&results.rows());
        let expected = "\
| figure | measured | goal | met? |
|---|---|---|---|
| steady host agent: CPU in steady state | 0.22 % of one core | ≤ 0.25 % of one core | yes |
| steady host agent: RSS + BPF maps, every reading | max 62.6 MiB (steady from 55.5 MiB) | ≤ 64 MiB at every reading | yes |
| build host agent: CPU in steady state | 3.57 % of one core (100 µs per new process start to exit, 470/s) | ≤ 1 % of one core | **no** |
| build host agent: RSS + BPF maps, every reading | max 98.8 MiB (steady from 55.5 MiB) | ≤ 64 MiB at every reading | **no** |
| one-shot record: CPU, against perf record + report | 0.50x perf (0.17 s against 0.34 s) | ≤ 0.5x perf | yes |
| one-shot record: peak RSS, against perf | 1.13x perf (29.6 MiB against 26.1 MiB) | – | – |
| BPF time per sample, frame pointers | 2.70 µs | ≤ 3 µs | yes |
| BPF time per sample, frame pointers, programs built with them | 3.10 µs | ≤ 3 µs | **no** |
| BPF time per sample, tables | 5.40 µs (2.00x frame pointers); an empty program: 0.40 µs | ≤ 5 µs | **no** |
| samples kept at 1 kHz, every CPU busy | 99.50 % (19880 of 19980); 0 dropped, counted; 100 neither kept nor counted | ≥ 99 %, drops counted | yes |
";
        assert_eq!(text, expected);
    }

    #[test]
    fn failed_and_skipped_parts_show_in_every_row_of_theirs() {
        let results = Results {
            perf: Outcome::Failed("starting \"perf\": No such file or directory".into()),
            unwind: Outcome::Measured(UnwindFigures {
                tables_ns: Some(4_000.0),
                frame_pointers_ns: None,
                frame_pointers_built_ns: Some(2_000.0),
                floor_ns: None,
            }),
            kept: Outcome::Skipped,
            ..measured_results()
        };
        assert_eq!(results.failed(), [Part::Perf]);
        let rows = results.rows();
        assert_eq!(rows.len(), 10);
        let perf: Vec<&Row> = rows.iter().filter(|r| r.figure.contains("perf")).collect();
        assert_eq!(perf.len(), 2);
        for row in perf {
            assert_eq!(
                row.measured,
                "failed: starting \"perf\": No such file or directory"
            );
            assert_eq!(row.verdict, Verdict::Failed);
        }
        // A mode that was not measured misses its goal; the other keeps
        // its own verdict, without a ratio.
        assert_eq!(rows[6].measured, "not measured (no samples)");
        assert_eq!(rows[6].verdict, Verdict::NotMet);
        assert_eq!(rows[7].measured, "2.00 µs");
        assert_eq!(rows[7].verdict, Verdict::Met);
        assert_eq!(rows[8].measured, "4.00 µs");
        assert_eq!(rows[8].verdict, Verdict::Met);
        assert_eq!(rows[9].verdict, Verdict::Skipped);
        assert!(table(&rows).contains("| skipped | ≥ 99 %, drops counted | skipped |"));
    }

    #[test]
    fn verdicts_at_the_goals_edges() {
        let rows = agent_rows(
            "steady host",
            &Outcome::Measured(agent(0.25, 64.0, false)),
            STEADY_CPU_PERCENT,
        );
        assert_eq!(rows[0].verdict, Verdict::Met);
        assert_eq!(rows[1].verdict, Verdict::Met);
        let rows = agent_rows(
            "steady host",
            &Outcome::Measured(agent(0.26, 64.1, false)),
            STEADY_CPU_PERCENT,
        );
        assert_eq!(rows[0].verdict, Verdict::NotMet);
        assert_eq!(rows[1].verdict, Verdict::NotMet);
        let kept = |samples| {
            kept_rows(&Outcome::Measured(KeptFigures {
                cpus: 1,
                frequency: 1000,
                seconds: 1.0,
                samples,
                dropped: 1000 - samples,
                stack_errors: 0,
                sampling_seconds: 1.0,
                usage: Usage::default(),
            }))[0]
                .verdict
        };
        assert_eq!(kept(990), Verdict::Met);
        assert_eq!(kept(989), Verdict::NotMet);
    }
}
