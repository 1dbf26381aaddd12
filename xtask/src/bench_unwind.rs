//! `cargo xtask bench-unwind`: what the in-kernel `.eh_frame` unwinder
//! costs against frame pointers, both measured in one run on the same load.
//!
//! 1. Cost per sample. With `kernel.bpf_stats_enabled` on (the old value
//!    comes back at the end, also on errors), the kernel counts every BPF
//!    program's runs and the nanoseconds they took. While C and Rust
//!    workloads built without frame pointers (`profiler-user/tests/workloads`,
//!    by the recipes of its `recipes.rs`) keep every CPU busy, the release
//!    `hostprof record` runs twice, `--unwinder tables` then `--unwinder
//!    frame-pointers`. Until its capture ends, its programs' counters and its
//!    maps are read from `/proc/<pid>/fdinfo` of the descriptors whose link is
//!    `anon_inode:bpf-prog` or `anon_inode:bpf-map`, named through their ids
//!    with `bpf(2)`. A tail call runs inside its caller's run, so every
//!    program's run time summed over `sample_cpu`'s runs is the cost of one
//!    sample.
//! 2. Kernel memory. The `memlock` of every map hostprof holds, per mode
//!    (the table mode's `UNWIND_ROWS` array is allocated whole), the table
//!    rows the loader wrote (its `hostprof::unwind` debug log) and how many
//!    processes had tables (`UNWIND_PROCESSES` entries).
//! 3. Python frames. The same, with the tables unwinder, while CPython
//!    3.11 runs `python_chain.py threads` (two threads of nested Python
//!    functions) on every CPU: once walking Python frames (the default),
//!    once with `--no-python`; against the native load's cost, and with
//!    `hostprof record`'s own CPU time (user + system, read from
//!    `/proc/<pid>/stat` until it exits), which holds reading and naming
//!    the code objects.
//! 4. Build speed. The criterion bench `profiler-user/benches/unwind_table.rs`:
//!    time to build a library's table and its kernel size per MiB of CFI.
//!
//! The verdicts are ratios against the baseline of the same run, never
//! timed asserts.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

use crate::bench::while_running;
use crate::cmd;

/// Options of the unwinder benchmark.
#[derive(Clone, Debug)]
pub struct UnwindBenchOptions {
    /// Length of each capture.
    pub duration: Duration,
    /// The release `hostprof` binary.
    pub hostprof: PathBuf,
    /// The workspace root (the criterion bench).
    pub root: PathBuf,
    /// Scratch directory for the workloads and profiles.
    pub work_dir: PathBuf,
    /// More arguments for every `hostprof record` (e.g.
    /// `--trace-context-map none`, to compare a setting's cost).
    pub record_args: Vec<String>,
    /// Another revision's release `hostprof`, run at the same time as
    /// this one on the same load in every mode: the ratio between the two
    /// is free of the machine's drift between runs.
    pub baseline: Option<PathBuf>,
    /// Whether to measure Python frames too (part 3).
    pub python: bool,
    /// Whether to run the table build bench too (part 4).
    pub table_builds: bool,
}

/// What `cargo xtask bench` takes from this benchmark: BPF run time per
/// sample of this hostprof (never the baseline's) in each unwinder mode;
/// `None` where the mode was not measured or recorded no sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UnwindFigures {
    /// With the `.eh_frame` tables, in nanoseconds.
    pub tables_ns: Option<f64>,
    /// With frame pointers only, on the programs built without them that
    /// the tables are measured on (stacks of one real frame and garbage),
    /// in nanoseconds.
    pub frame_pointers_ns: Option<f64>,
    /// With frame pointers only, on programs built with them (the
    /// unwinder's own case), in nanoseconds.
    pub frame_pointers_built_ns: Option<f64>,
    /// An empty program's run on the same event, during the tables'
    /// capture: the machine's floor, in nanoseconds.
    pub floor_ns: Option<f64>,
}

impl UnwindFigures {
    /// The figures of `captures`.
    fn of(captures: &[Capture]) -> Self {
        UnwindFigures {
            tables_ns: ns_per_sample(captures, Mode::Tables, false),
            frame_pointers_ns: ns_per_sample(captures, Mode::FramePointers, false),
            frame_pointers_built_ns: ns_per_sample(captures, Mode::FramePointersBuilt, false),
            floor_ns: captures
                .iter()
                .find(|c| c.mode == Mode::Tables)
                .and_then(|c| c.floor_ns),
        }
    }
}

/// The switch of the kernel's per-program run-time statistics.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The perf-event program: one run per sample.
const SAMPLE_PROGRAM: &str = "sample_cpu";
/// The kernel's unwind rows, and the per-process table entries (map names
/// are cut to 15 bytes).
const ROWS_MAP: &str = "UNWIND_ROWS";
const PROCESSES_MAP: &str = "UNWIND_PROCESSE";
/// How often the running capture's BPF objects are read.
const POLL: Duration = Duration::from_millis(500);

/// Fails early, before building, where the benchmark `task` (which reads
/// BPF run-time statistics) cannot run.
pub fn preflight(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{task} needs root (it loads BPF programs, sets kernel.bpf_stats_enabled \
             and reads another process's /proc/<pid>/fdinfo): run it as root"
        );
    }
    if !Path::new(BPF_STATS).exists() {
        bail!("{BPF_STATS} is missing: BPF run-time statistics need Linux 5.1 or later");
    }
    Ok(())
}

/// Runs the benchmark, prints its tables and returns its figures.
pub fn run(options: &UnwindBenchOptions) -> Result<UnwindFigures> {
    preflight("bench-unwind")?;
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("creating {}", options.work_dir.display()))?;
    let (workloads, fp_workloads) = compile_workloads(&options.work_dir.join("unwind-workloads"))?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Every CPU busy and every workload running at least once.
    let instances = cpus.max(workloads.len());
    let unwinder_flag = has_unwinder_flag(&options.hostprof);
    if let Some(baseline) = &options.baseline {
        if !baseline.is_file() {
            bail!(
                "the baseline {} is not a file: build the other revision's release binary \
                 (e.g. `git worktree add /tmp/base REV && cd /tmp/base && cargo xtask \
                 build-ebpf && cargo build --release -p hostprof`) and pass its \
                 target/release/hostprof",
                baseline.display()
            );
        }
        if has_unwinder_flag(baseline) != unwinder_flag {
            bail!(
                "the baseline {} and this hostprof differ in `record --unwinder`: compare \
                 revisions that both have it",
                baseline.display()
            );
        }
    }
    let modes: &[Mode] = if unwinder_flag {
        &[Mode::Tables, Mode::FramePointers, Mode::FramePointersBuilt]
    } else {
        println!(
            "[bench-unwind] warning: this hostprof has no `record --unwinder` flag: \
             measuring its default (tables) only"
        );
        &[Mode::Tables]
    };
    let setup = Setup {
        seconds: options.duration.as_secs_f64(),
        cpus,
        instances,
        workloads: names(&workloads),
        fp_workloads: names(&fp_workloads),
        unwinder_flag,
    };
    println!(
        "[bench-unwind] {instances} workloads on {cpus} CPUs, {:.0} s captures: {}",
        setup.seconds,
        modes
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(", then ")
    );

    let python = options.python && Path::new("/usr/bin/python3.11").exists() && unwinder_flag;
    if options.python && !python {
        println!("[bench-unwind] warning: no /usr/bin/python3.11: Python frames not measured");
    }
    let captures = {
        let stats = BpfStats::enable()?;
        println!(
            "[bench-unwind] kernel.bpf_stats_enabled on (if interrupted, restore it with \
             `sysctl kernel.bpf_stats_enabled={}`)",
            stats.old
        );
        let run_ms = (options.duration + Duration::from_secs(300)).as_millis();
        let script = options
            .root
            .join("profiler-user/tests/workloads/python_chain.py");
        let python_modes: &[Mode] = if python {
            &[Mode::Python, Mode::PythonOff]
        } else {
            &[]
        };
        modes
            .iter()
            .chain(python_modes)
            .map(|&mode| {
                let load = (0..instances).map(|i| {
                    if mode.python_load() {
                        let mut python = Command::new("/usr/bin/python3.11");
                        python
                            .arg(&script)
                            .args([run_ms.to_string().as_str(), "threads"])
                            .stdout(Stdio::null());
                        python
                    } else {
                        let programs = if mode == Mode::FramePointersBuilt {
                            &fp_workloads
                        } else {
                            &workloads
                        };
                        let mut workload = Command::new(&programs[i % programs.len()]);
                        workload.arg(run_ms.to_string());
                        workload
                    }
                });
                while_running(load, || captures_of(options, mode, unwinder_flag))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
        // `stats` drops here: the old value is back before the table bench.
    };

    let builds = options.table_builds.then(|| {
        println!("[bench-unwind] table build speed: cargo bench -p hostprof --bench unwind_table");
        table_builds(&options.root)
    });
    let shown = match &builds {
        None => Builds::Skipped,
        Some(Ok(builds)) => Builds::Measured(builds),
        Some(Err(_)) => Builds::Failed,
    };
    println!();
    print!("{}", report(&setup, &captures, shown));
    match builds {
        Some(Err(err)) => Err(err),
        _ => Ok(UnwindFigures::of(&captures)),
    }
}

/// What the report says of table build speed.
#[derive(Clone, Copy, Debug)]
enum Builds<'a> {
    /// Not asked for: no section.
    Skipped,
    /// Asked for, and the bench failed.
    Failed,
    /// The bench's figures per library.
    Measured(&'a [LibraryBuild]),
}

/// An unwinder `hostprof record` can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `.eh_frame` tables in the kernel (the default).
    Tables,
    /// Frame pointers only: the baseline, on the same load as the tables
    /// (programs built without frame pointers).
    FramePointers,
    /// Frame pointers only, on programs built with them.
    FramePointersBuilt,
    /// Tables, on the Python load, walking Python frames.
    Python,
    /// Tables, on the Python load, `--no-python`.
    PythonOff,
}

impl Mode {
    /// The value of `--unwinder`.
    fn flag(self) -> &'static str {
        match self {
            Mode::Tables | Mode::Python | Mode::PythonOff => "tables",
            Mode::FramePointers | Mode::FramePointersBuilt => "frame-pointers",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Tables => "tables",
            Mode::FramePointers => "frame pointers",
            Mode::FramePointersBuilt => "frame pointers, programs built with them",
            Mode::Python => "python, frames walked",
            Mode::PythonOff => "python, --no-python",
        }
    }

    /// Its files' names.
    fn file(self) -> &'static str {
        match self {
            Mode::Tables => "tables",
            Mode::FramePointers => "frame-pointers",
            Mode::FramePointersBuilt => "frame-pointers-built",
            Mode::Python => "python",
            Mode::PythonOff => "no-python",
        }
    }

    /// Whether it runs on the Python load.
    fn python_load(self) -> bool {
        matches!(self, Mode::Python | Mode::PythonOff)
    }
}

/// Whether `hostprof record` takes `--unwinder`.
fn has_unwinder_flag(hostprof: &Path) -> bool {
    cmd::output(Command::new(hostprof).args(["record", "--help"]))
        .is_some_and(|help| help.contains("--unwinder"))
}

/// What the run was, for the report.
#[derive(Clone, Debug)]
struct Setup {
    seconds: f64,
    cpus: usize,
    instances: usize,
    workloads: Vec<String>,
    /// The programs built with frame pointers.
    fp_workloads: Vec<String>,
    unwinder_flag: bool,
}

/// Builds the workloads into `dir` and returns the programs to run: C
/// without frame pointers (27 calls deep, and 4), a frame-pointer program
/// calling through a library without them, and Rust without them; then
/// their twins built with frame pointers (the library's caller has none).
fn compile_workloads(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let build = |names: &[&str]| {
        crate::workloads::build(dir, names).map_err(|err| anyhow!("compiling the workloads: {err}"))
    };
    Ok((
        build(&["deep_chain", "nofp_chain", "lib_chain", "rust_nofp"])?,
        build(&["deep_fp", "cpu_chain", "rust_chain"])?,
    ))
}

/// The file names of `programs`.
fn names(programs: &[PathBuf]) -> Vec<String> {
    programs
        .iter()
        .filter_map(|w| Some(w.file_name()?.to_string_lossy().into_owned()))
        .collect()
}

/// `kernel.bpf_stats_enabled` switched on; dropping it writes the old value
/// back.
pub(crate) struct BpfStats {
    old: String,
}

impl BpfStats {
    pub(crate) fn enable() -> Result<Self> {
        let old = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(BPF_STATS, &self.old) {
            eprintln!(
                "warning: could not restore {BPF_STATS} to {}: {err}",
                self.old
            );
        }
    }
}

/// One `hostprof record` run.
#[derive(Clone, Debug)]
struct Capture {
    mode: Mode,
    /// Whether the baseline binary took it.
    baseline: bool,
    /// Its BPF objects, read last before sampling ended.
    objects: BpfObjects,
    /// The tables its loader wrote.
    tables: TableLoads,
    /// Its own CPU time, user + system, in seconds.
    cpu_s: f64,
    /// Nanoseconds per run of an empty program on the same event at the
    /// same time ([`bpf::EmptyProgram`]); `None` when not measured.
    floor_ns: Option<f64>,
}

impl Capture {
    /// Its column or row in the report.
    fn label(&self) -> String {
        if self.baseline {
            format!("{} (baseline)", self.mode.label())
        } else {
            self.mode.label().to_owned()
        }
    }
}

/// This hostprof's capture in `mode`, and the baseline's taken at the same
/// time when there is one.
fn captures_of(
    options: &UnwindBenchOptions,
    mode: Mode,
    unwinder_flag: bool,
) -> Result<Vec<Capture>> {
    let floor = match bpf::EmptyProgram::attach(FLOOR_HZ) {
        Ok(floor) => Some(floor),
        Err(err) => {
            println!("[bench-unwind] warning: the empty program's floor not measured: {err}");
            None
        }
    };
    let mut captures = captures_with_baseline(options, mode, unwinder_flag)?;
    let floor_ns = floor
        .and_then(|floor| floor.runs().ok())
        .and_then(|(runs, ns)| (runs > 0).then(|| ns as f64 / runs as f64));
    for capture in &mut captures {
        capture.floor_ns = floor_ns;
    }
    Ok(captures)
}

/// `record`'s default frequency, at which the empty program runs too.
const FLOOR_HZ: u64 = 99;

/// This hostprof's capture in `mode`, and the baseline's taken at the
/// same time when there is one.
fn captures_with_baseline(
    options: &UnwindBenchOptions,
    mode: Mode,
    unwinder_flag: bool,
) -> Result<Vec<Capture>> {
    let Some(baseline) = &options.baseline else {
        return Ok(vec![capture(
            options,
            &options.hostprof,
            false,
            mode,
            unwinder_flag,
        )?]);
    };
    std::thread::scope(|scope| {
        let theirs = scope.spawn(|| capture(options, baseline, true, mode, unwinder_flag));
        let ours = capture(options, &options.hostprof, false, mode, unwinder_flag);
        let theirs = theirs
            .join()
            .map_err(|_| anyhow!("the baseline's capture panicked"))?;
        Ok(vec![ours?, theirs?])
    })
}

/// Runs `hostprof record` (`hostprof`, the baseline's when `baseline`) in
/// `mode`, reading its BPF objects until its capture ends.
fn capture(
    options: &UnwindBenchOptions,
    hostprof: &Path,
    baseline: bool,
    mode: Mode,
    unwinder_flag: bool,
) -> Result<Capture> {
    let prefix = if baseline { "baseline-" } else { "" };
    println!(
        "[bench-unwind] hostprof record, {}{}",
        mode.label(),
        if baseline { " (baseline)" } else { "" }
    );
    let stats_json = options
        .work_dir
        .join(format!("{prefix}unwind-{}.json", mode.file()));
    let mut record = Command::new(hostprof);
    record
        .args(["record", "--no-flamegraph", "--duration"])
        .arg(format!("{}ms", options.duration.as_millis()))
        .arg("--output")
        .arg(
            options
                .work_dir
                .join(format!("{prefix}unwind-{}.pb.gz", mode.file())),
        )
        .arg("--stats-json")
        .arg(&stats_json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if unwinder_flag {
        record.args(["--unwinder", mode.flag()]);
    }
    if mode == Mode::PythonOff {
        record.arg("--no-python");
    }
    record.args(&options.record_args);
    let mut child = record
        .spawn()
        .with_context(|| format!("starting {record:?}"))?;
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut last = None;
    let mut cpu_s = 0.0;
    while child.try_wait()?.is_none() {
        cpu_s = crate::bench::cpu_seconds(pid).unwrap_or(cpu_s);
        // Descriptors come and go while it starts and exits: keep the last
        // reading that found the sampling program.
        if let Ok(objects) = BpfObjects::of(pid) {
            if objects.program(SAMPLE_PROGRAM).is_some() {
                last = Some(objects);
            }
        }
        std::thread::sleep(POLL);
    }
    let status = child.wait().context("waiting for hostprof record")?;
    let log = log
        .join()
        .map_err(|_| anyhow!("reading hostprof's stderr panicked"))?;
    if !status.success() {
        let tail = log[log.len().saturating_sub(20)..].join("\n");
        bail!("{record:?} failed ({status}):\n{tail}");
    }
    let objects = last.with_context(|| {
        format!("found no {SAMPLE_PROGRAM} program among hostprof's descriptors (/proc/{pid}/fd)")
    })?;
    Ok(Capture {
        mode,
        baseline,
        objects,
        tables: TableLoads::from_stats_json(&stats_json)?,
        cpu_s,
        floor_ns: None,
    })
}

/// The BPF programs and maps a process holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct BpfObjects {
    pub(crate) programs: Vec<Program>,
    maps: Vec<Map>,
}

/// A BPF program and its run-time statistics.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Program {
    pub(crate) id: u32,
    pub(crate) name: String,
    prog_type: u32,
    tag: String,
    /// Nanoseconds in its runs (while `bpf_stats_enabled` was on).
    pub(crate) run_time_ns: u64,
    /// Its runs; tail calls into it are not counted.
    pub(crate) run_cnt: u64,
}

/// A BPF map and its kernel memory.
#[derive(Clone, Debug, PartialEq)]
struct Map {
    id: u32,
    name: String,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    /// Bytes of kernel memory charged to it.
    memlock: u64,
    /// Entries, counted only for `UNWIND_PROCESSES`.
    entries: Option<u64>,
}

impl BpfObjects {
    /// The BPF objects `pid` holds descriptors of.
    pub(crate) fn of(pid: u32) -> std::io::Result<Self> {
        let mut objects = BpfObjects::default();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let path = entry?.path();
            // A descriptor closed since the listing is skipped.
            let Ok(link) = std::fs::read_link(&path) else {
                continue;
            };
            let Some(fd) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
                continue;
            };
            match link.to_str() {
                Some("anon_inode:bpf-prog") => {
                    if let Some(program) = Program::from_fdinfo(&info) {
                        if !objects.programs.iter().any(|p| p.id == program.id) {
                            objects.programs.push(program);
                        }
                    }
                }
                Some("anon_inode:bpf-map") => {
                    if let Some(map) = Map::from_fdinfo(&info) {
                        if !objects.maps.iter().any(|m| m.id == map.id) {
                            objects.maps.push(map);
                        }
                    }
                }
                _ => {}
            }
        }
        for program in &mut objects.programs {
            program.name = bpf::program_name(program.id)
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("prog {}", program.id));
        }
        for map in &mut objects.maps {
            map.name = bpf::map_name(map.id)
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("map {}", map.id));
            if map.name == PROCESSES_MAP {
                map.entries = bpf::count_keys(map.id, map.key_size as usize, map.max_entries).ok();
            }
        }
        Ok(objects)
    }

    pub(crate) fn program(&self, name: &str) -> Option<&Program> {
        self.programs.iter().find(|p| p.name == name)
    }

    fn map(&self, name: &str) -> Option<&Map> {
        self.maps.iter().find(|m| m.name == name)
    }

    /// Nanoseconds of every program per run of `sample_cpu`.
    fn ns_per_sample(&self) -> Option<f64> {
        let samples = self.program(SAMPLE_PROGRAM)?.run_cnt;
        let total: u64 = self.programs.iter().map(|p| p.run_time_ns).sum();
        (samples > 0).then(|| total as f64 / samples as f64)
    }

    pub(crate) fn memlock(&self) -> u64 {
        self.maps.iter().map(|m| m.memlock).sum()
    }
}

/// The `key:\tvalue` fields of a `/proc/<pid>/fdinfo/<fd>` file.
fn fdinfo_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn fdinfo_number<T: std::str::FromStr>(info: &str, key: &str) -> Option<T> {
    fdinfo_field(info, key)?.parse().ok()
}

impl Program {
    /// A program from its fdinfo (named later, from its id). The run-time
    /// fields are there only while `bpf_stats_enabled` is on.
    fn from_fdinfo(info: &str) -> Option<Self> {
        Some(Program {
            id: fdinfo_number(info, "prog_id")?,
            name: String::new(),
            prog_type: fdinfo_number(info, "prog_type")?,
            tag: fdinfo_field(info, "prog_tag")?.to_owned(),
            run_time_ns: fdinfo_number(info, "run_time_ns").unwrap_or(0),
            run_cnt: fdinfo_number(info, "run_cnt").unwrap_or(0),
        })
    }
}

impl Map {
    /// A map from its fdinfo (named later, from its id).
    fn from_fdinfo(info: &str) -> Option<Self> {
        Some(Map {
            id: fdinfo_number(info, "map_id")?,
            name: String::new(),
            map_type: fdinfo_number(info, "map_type")?,
            key_size: fdinfo_number(info, "key_size")?,
            value_size: fdinfo_number(info, "value_size")?,
            max_entries: fdinfo_number(info, "max_entries")?,
            memlock: fdinfo_number(info, "memlock")?,
            entries: None,
        })
    }
}

/// `enum bpf_prog_type` names of the numbers in fdinfo.
fn program_type(prog_type: u32) -> String {
    match prog_type {
        1 => "socket_filter".into(),
        2 => "kprobe".into(),
        5 => "tracepoint".into(),
        7 => "perf_event".into(),
        17 => "raw_tracepoint".into(),
        26 => "tracing".into(),
        other => format!("type {other}"),
    }
}

/// `enum bpf_map_type` names of the numbers in fdinfo.
fn map_type(map_type: u32) -> String {
    match map_type {
        1 => "hash".into(),
        2 => "array".into(),
        3 => "prog_array".into(),
        4 => "perf_event_array".into(),
        5 => "percpu_hash".into(),
        6 => "percpu_array".into(),
        7 => "stack_trace".into(),
        9 => "lru_hash".into(),
        10 => "lru_percpu_hash".into(),
        27 => "ringbuf".into(),
        other => format!("type {other}"),
    }
}

/// The tables hostprof's loader wrote, from `record --stats-json`.
#[derive(Clone, Debug, Default, PartialEq)]
struct TableLoads {
    /// Tables written (a file evicted and loaded again counts twice).
    loads: u64,
    /// Files whose tables were in the kernel when sampling ended.
    files: u64,
    /// Rows written, over all loads.
    rows: u64,
}

impl TableLoads {
    /// The table figures of `hostprof record --stats-json`'s report: the
    /// loader's totals when sampling ended (zero with frame pointers).
    fn from_stats_json(path: &Path) -> Result<Self> {
        Ok(Self::from_report(&crate::bench::read_stats_json(path)?))
    }

    /// The table figures of the parsed report.
    fn from_report(report: &serde_json::Value) -> Self {
        let tables = &report["profiles"][0]["unwind_tables"];
        let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
        TableLoads {
            loads: number(&tables["tables_built"]),
            files: number(&tables["registry"]["files_loaded"]),
            rows: number(&tables["rows_built"]),
        }
    }
}

/// One library of the criterion bench: its own summary line and
/// criterion's estimates.
#[derive(Clone, Debug, Default, PartialEq)]
struct LibraryBuild {
    name: String,
    /// The bench's line about the library, verbatim.
    summary: String,
    cfi_mib: f64,
    rows: u64,
    kernel_mib: f64,
    /// Bytes of kernel table per byte of CFI (from unrounded sizes).
    kernel_per_cfi: f64,
    /// Build time, criterion's middle estimate, in milliseconds.
    time_ms: Option<f64>,
    /// MiB of CFI built per second, criterion's middle estimate.
    mib_per_s: Option<f64>,
}

/// Runs the criterion bench of table builds and parses what it printed.
fn table_builds(root: &Path) -> Result<Vec<LibraryBuild>> {
    let out = cmd::cargo_stdout(
        root,
        &[
            "bench",
            "-p",
            "hostprof",
            "--bench",
            "unwind_table",
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "5",
        ],
    )
    .context("the table build bench (profiler-user/benches/unwind_table.rs)")?;
    let builds = parse_criterion(&out);
    if builds.is_empty() {
        bail!("the table build bench printed no library (none of libc, libstdc++, libm found?):\n{out}");
    }
    Ok(builds)
}

/// Parses `unwind_table`'s output: its line per library
/// (`libc.so.6: 0.15 MiB of CFI -> 28275 rows, 0.22 MiB in the kernel's
/// encoding (...); ...`), then criterion's `unwind_table/<lib>` with
/// `time: [lo mid hi]` and `thrpt: [lo mid hi]`.
fn parse_criterion(out: &str) -> Vec<LibraryBuild> {
    let mut builds: Vec<LibraryBuild> = Vec::new();
    for line in out.lines() {
        if let Some(build) = parse_library_line(line) {
            builds.push(build);
            continue;
        }
        let Some(current) = builds.last_mut() else {
            continue;
        };
        if let Some(time) = middle_estimate(line, "time:") {
            current.time_ms = parse_time_ms(&time);
        } else if let Some(thrpt) = middle_estimate(line, "thrpt:") {
            current.mib_per_s = parse_mib_per_s(&thrpt);
        }
    }
    builds
}

fn parse_library_line(line: &str) -> Option<LibraryBuild> {
    let (name, rest) = line.split_once(": ")?;
    let (cfi, rest) = rest.split_once(" MiB of CFI -> ")?;
    let (rows, rest) = rest.split_once(" rows, ")?;
    let (kernel, rest) = rest.split_once(" MiB in the kernel's encoding (")?;
    let (ratio, _) = rest.split_once(" MiB per MiB of CFI)")?;
    Some(LibraryBuild {
        name: name.to_owned(),
        summary: line.to_owned(),
        cfi_mib: cfi.parse().ok()?,
        rows: rows.parse().ok()?,
        kernel_mib: kernel.parse().ok()?,
        kernel_per_cfi: ratio.parse().ok()?,
        time_ms: None,
        mib_per_s: None,
    })
}

/// The middle of criterion's `<label> [lo unit mid unit hi unit]`.
fn middle_estimate(line: &str, label: &str) -> Option<String> {
    let (_, rest) = line.split_once(label)?;
    let inside = rest.trim().strip_prefix('[')?.strip_suffix(']')?;
    let words: Vec<&str> = inside.split_whitespace().collect();
    match words.as_slice() {
        [_, _, value, unit, _, _] => Some(format!("{value} {unit}")),
        _ => None,
    }
}

fn parse_time_ms(estimate: &str) -> Option<f64> {
    let (value, unit) = estimate.split_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let scale = match unit {
        "ps" => 1e-9,
        "ns" => 1e-6,
        "µs" | "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        _ => return None,
    };
    Some(value * scale)
}

fn parse_mib_per_s(estimate: &str) -> Option<f64> {
    let (value, unit) = estimate.split_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let scale = match unit {
        "B/s" => 1.0 / 1048576.0,
        "KiB/s" => 1.0 / 1024.0,
        "MiB/s" => 1.0,
        "GiB/s" => 1024.0,
        _ => return None,
    };
    Some(value * scale)
}

/// A byte count for people: B, KiB or MiB.
fn size(bytes: u64) -> String {
    let bytes_f = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes_f / 1024.0)
    } else {
        format!("{:.2} MiB", bytes_f / 1048576.0)
    }
}

/// The whole report, in markdown.
fn report(setup: &Setup, captures: &[Capture], builds: Builds<'_>) -> String {
    let mut out = String::new();
    cost_section(&mut out, setup, captures);
    memory_section(&mut out, captures);
    build_section(&mut out, builds);
    out
}

/// BPF run time per sample, per program and mode, and the ratio.
fn cost_section(w: &mut String, setup: &Setup, captures: &[Capture]) {
    let _ = writeln!(w, "## Unwinder cost per sample\n");
    let _ = writeln!(
        w,
        "kernel.bpf_stats_enabled, {:.0} s `hostprof record` at its default frequency, \
         {} workload processes built without frame pointers ({}; lib_chain calls through \
         libhop.so) on {} CPUs; frame pointers also on their twins built with them ({}). \
         A tail-called program's run counts in its caller's, so \
         ns per sample = every program's run time / sample_cpu's runs.\n",
        setup.seconds,
        setup.instances,
        setup.workloads.join(", "),
        setup.cpus,
        setup.fp_workloads.join(", "),
    );
    let _ = writeln!(
        w,
        "| mode | program | type | tag | runs | run time (ms) | ns per run | ns per sample |"
    );
    let _ = writeln!(w, "|---|---|---|---|---:|---:|---:|---:|");
    for capture in captures {
        let objects = &capture.objects;
        let samples = objects.program(SAMPLE_PROGRAM).map_or(0, |p| p.run_cnt);
        let per = |ns: u64, runs: u64| {
            if runs == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", ns as f64 / runs as f64)
            }
        };
        for program in &objects.programs {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {:.3} | {} | {} |",
                capture.label(),
                program.name,
                program_type(program.prog_type),
                program.tag,
                program.run_cnt,
                program.run_time_ns as f64 / 1e6,
                per(program.run_time_ns, program.run_cnt),
                per(program.run_time_ns, samples),
            );
        }
        let total: u64 = objects.programs.iter().map(|p| p.run_time_ns).sum();
        let _ = writeln!(
            w,
            "| **{}** | **total** | | | {samples} samples | {:.3} | | **{}** |",
            capture.label(),
            total as f64 / 1e6,
            per(total, samples),
        );
    }
    let cost_of = |mode, baseline| ns_per_sample(captures, mode, baseline);
    let cost = |mode| cost_of(mode, false);
    let _ = writeln!(w);
    match (cost(Mode::Tables), cost(Mode::FramePointers)) {
        (Some(tables), Some(fp)) => {
            let _ = writeln!(
                w,
                "**tables / frame pointers: {:.2}x per sample** ({tables:.0} ns against {fp:.0} ns, \
                 {:+.0} ns per sample)",
                tables / fp.max(f64::EPSILON),
                tables - fp
            );
        }
        _ if !setup.unwinder_flag => {
            let _ = writeln!(
                w,
                "Frame pointers not measured: this hostprof has no `record --unwinder` flag."
            );
        }
        _ => {
            let _ = writeln!(w, "No ratio: a mode recorded no samples.");
        }
    }
    if let Some(built) = cost(Mode::FramePointersBuilt) {
        let _ = writeln!(
            w,
            "\n**Frame pointers on programs built with them: {built:.0} ns per sample**"
        );
    }
    if let (Some(walked), Some(off)) = (cost(Mode::Python), cost(Mode::PythonOff)) {
        let native = cost(Mode::Tables).unwrap_or(f64::NAN);
        let _ = writeln!(
            w,
            "\n**Python frames: {walked:.0} ns per sample walked, {off:.0} ns with \
             `--no-python` ({:+.0} ns, {:.2}x); native load with tables {native:.0} ns \
             ({:.2}x)**",
            walked - off,
            walked / off.max(f64::EPSILON),
            walked / native,
        );
    }
    let _ = writeln!(w, "\n`hostprof record`'s own CPU time (user + system):\n");
    for capture in captures {
        let _ = writeln!(w, "- {}: {:.2} s", capture.label(), capture.cpu_s);
    }
    floor_section(w, captures);
    baseline_section(w, captures, cost_of);
}

/// The CPUs of a kernel CPU list (`/sys/devices/system/cpu/online`:
/// `0-3,5,7-8`); `None` when it does not parse.
fn cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (first.parse::<u32>().ok()?, last.parse::<u32>().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The empty program's cost per run beside each mode's captures.
fn floor_section(w: &mut String, captures: &[Capture]) {
    let mut floors = captures
        .iter()
        .filter(|c| !c.baseline)
        .filter_map(|c| Some((c.mode, c.floor_ns?)))
        .peekable();
    if floors.peek().is_none() {
        return;
    }
    let _ = writeln!(
        w,
        "\nThe floor: an empty perf_event program (`r0 = 0; exit`) on its own CPU-clock \
         event at {FLOOR_HZ} Hz on every CPU (record's default frequency, whatever \
         --record-arg says), attached during each mode's captures: what `bpf_stats` counts \
         for a program that does nothing, run from the same kind of interrupt on this machine \
         (the run-time clock's reads, a cold fetch of its code). Not a constant to subtract: \
         the cold share grows with the code and data a program touches.\n"
    );
    for (mode, ns) in floors {
        let _ = writeln!(w, "- {}: {ns:.0} ns per run", mode.label());
    }
}

/// BPF nanoseconds per sample of the capture in `mode` (the baseline's
/// when `baseline`), if it recorded samples.
fn ns_per_sample(captures: &[Capture], mode: Mode, baseline: bool) -> Option<f64> {
    captures
        .iter()
        .find(|c| c.mode == mode && c.baseline == baseline)
        .and_then(|c| c.objects.ns_per_sample())
}

/// This hostprof against the baseline taken at the same time, per mode.
fn baseline_section(
    w: &mut String,
    captures: &[Capture],
    cost_of: impl Fn(Mode, bool) -> Option<f64>,
) {
    if !captures.iter().any(|c| c.baseline) {
        return;
    }
    let _ = writeln!(
        w,
        "\n**Against the baseline**, both sampling at the same time on the same load \
         (each one's programs counted alone):\n"
    );
    let _ = writeln!(
        w,
        "| mode | this, ns per sample | baseline, ns per sample | this / baseline |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|");
    for capture in captures.iter().filter(|c| !c.baseline) {
        let mode = capture.mode;
        let (Some(ours), Some(theirs)) = (cost_of(mode, false), cost_of(mode, true)) else {
            continue;
        };
        let _ = writeln!(
            w,
            "| {} | {ours:.0} | {theirs:.0} | **{:.2}x** |",
            mode.label(),
            ours / theirs.max(f64::EPSILON)
        );
    }
}

/// Every map's memlock per mode, the table rows used and the processes
/// with tables.
fn memory_section(w: &mut String, captures: &[Capture]) {
    let _ = writeln!(w, "\n## BPF map memory (memlock)\n");
    let mut names: Vec<&str> = Vec::new();
    for capture in captures {
        for map in &capture.objects.maps {
            if !names.contains(&map.name.as_str()) {
                names.push(&map.name);
            }
        }
    }
    // Largest first, by the largest of the modes.
    let largest = |name: &str| {
        captures
            .iter()
            .filter_map(|c| c.objects.map(name))
            .map(|m| m.memlock)
            .max()
            .unwrap_or(0)
    };
    names.sort_by_key(|name| std::cmp::Reverse(largest(name)));
    let _ = write!(w, "| map | type |");
    for capture in captures {
        let label = capture.label();
        let _ = write!(w, " {label}: max entries | {label}: memlock |");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "|---|---|{}", "---:|---:|".repeat(captures.len()));
    for name in &names {
        let kind = captures
            .iter()
            .find_map(|c| c.objects.map(name))
            .map_or_else(String::new, |m| map_type(m.map_type));
        let _ = write!(w, "| {name} | {kind} |");
        for capture in captures {
            match capture.objects.map(name) {
                Some(map) => {
                    let _ = write!(w, " {} | {} |", map.max_entries, size(map.memlock));
                }
                None => {
                    let _ = write!(w, " - | - |");
                }
            }
        }
        let _ = writeln!(w);
    }
    let _ = write!(w, "| **total** | {} maps |", names.len());
    for capture in captures {
        let _ = write!(w, " | **{}** |", size(capture.objects.memlock()));
    }
    let _ = writeln!(w, "\n");
    for capture in captures.iter().filter(|c| c.mode == Mode::Tables) {
        // 8-byte rows, in chunks (the map's values) of a few hundred.
        let row_bytes = 8;
        let budget = capture
            .objects
            .map(ROWS_MAP)
            .map_or(0, |m| u64::from(m.max_entries) * u64::from(m.value_size));
        let memlock = capture.objects.map(ROWS_MAP).map_or(0, |m| m.memlock);
        let processes = capture
            .objects
            .map(PROCESSES_MAP)
            .and_then(|m| m.entries)
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        let tables = &capture.tables;
        let _ = writeln!(
            w,
            "Tables used{}: {} rows x {row_bytes} B = **{}** of the {} {ROWS_MAP} budget \
             ({:.2} %; the map holds {} for them, allocated by chunk as used), in {} loads of {} \
             files; {processes} processes had tables at the end ({PROCESSES_MAP}S entries).",
            if capture.baseline { " (baseline)" } else { "" },
            tables.rows,
            size(tables.rows * row_bytes),
            size(budget),
            (tables.rows * row_bytes) as f64 / budget.max(1) as f64 * 100.0,
            size(memlock),
            tables.loads,
            tables.files,
        );
    }
    let ours = |mode| captures.iter().find(|c| c.mode == mode && !c.baseline);
    if let (Some(first), Some(second)) = (ours(Mode::Tables), ours(Mode::FramePointers)) {
        let (more, less) = (first.objects.memlock(), second.objects.memlock());
        let _ = writeln!(
            w,
            "\n**{} / {}: {:.1}x the map memory** ({} more).",
            first.label(),
            second.label(),
            more as f64 / less.max(1) as f64,
            size(more.saturating_sub(less)),
        );
    }
}

/// The criterion bench's figures per library.
fn build_section(w: &mut String, builds: Builds<'_>) {
    if let Builds::Skipped = builds {
        return;
    }
    let _ = writeln!(
        w,
        "\n## Table build speed (criterion, profiler-user/benches/unwind_table.rs)\n"
    );
    let Builds::Measured(builds) = builds else {
        let _ = writeln!(w, "Not measured: the bench failed (see the error below).");
        return;
    };
    let _ = writeln!(
        w,
        "| library | CFI | rows | kernel table | kernel bytes per CFI byte | build time (ms) | CFI MiB/s | ms per MiB of CFI |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let opt =
        |v: Option<f64>, digits: usize| v.map_or_else(|| "?".into(), |v| format!("{v:.digits$}"));
    for build in builds {
        let _ = writeln!(
            w,
            "| {} | {:.2} MiB | {} | {:.2} MiB | {:.2} | {} | {} | {} |",
            build.name,
            build.cfi_mib,
            build.rows,
            build.kernel_mib,
            build.kernel_per_cfi,
            opt(build.time_ms, 3),
            opt(build.mib_per_s, 1),
            opt(build.mib_per_s.map(|r| 1e3 / r.max(f64::EPSILON)), 1),
        );
    }
    let _ = writeln!(w, "\nThe bench's own lines:\n");
    let _ = writeln!(w, "```");
    for build in builds {
        let _ = writeln!(w, "{}", build.summary);
    }
    let _ = writeln!(w, "```");
}

/// The few `bpf(2)` commands that name another process's BPF objects: a
/// descriptor of our own from the id in its fdinfo, then the object's info.
mod bpf {
    use std::io;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    const MAP_GET_NEXT_KEY: libc::c_int = 4;
    const PROG_GET_FD_BY_ID: libc::c_int = 13;
    const MAP_GET_FD_BY_ID: libc::c_int = 14;
    const OBJ_GET_INFO_BY_FD: libc::c_int = 15;
    /// `BPF_OBJ_NAME_LEN`.
    const NAME_LEN: usize = 16;

    /// `bpf(cmd, attr, sizeof(attr))`.
    ///
    /// # Safety
    ///
    /// `attr` must be `cmd`'s part of `union bpf_attr`, with valid pointers.
    unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: as the caller promises.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// `union bpf_attr` of `BPF_*_GET_FD_BY_ID`.
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }

    /// `union bpf_attr` of `BPF_OBJ_GET_INFO_BY_FD`.
    #[repr(C)]
    struct GetInfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// `union bpf_attr` of `BPF_MAP_GET_NEXT_KEY`.
    #[repr(C)]
    struct GetNextKey {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }

    fn fd_by_id(cmd: libc::c_int, id: u32) -> io::Result<OwnedFd> {
        let mut attr = GetFdById {
            id,
            next_id: 0,
            open_flags: 0,
        };
        // SAFETY: `attr` is this command's attribute struct.
        let fd = unsafe { bpf(cmd, &mut attr) }?;
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    /// The name at byte `at` of the first `info.len()` bytes of `fd`'s info.
    fn name(fd: &OwnedFd, info: &mut [u8], at: usize) -> io::Result<String> {
        let mut attr = GetInfoByFd {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: info.len() as u32,
            info: info.as_mut_ptr() as u64,
        };
        // SAFETY: `attr` is this command's attribute struct; `info` is
        // writable for `info_len` bytes.
        unsafe { bpf(OBJ_GET_INFO_BY_FD, &mut attr) }?;
        let name = &info[at..at + NAME_LEN];
        let end = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        Ok(String::from_utf8_lossy(&name[..end]).into_owned())
    }

    /// The name of program `id` (`struct bpf_prog_info`: `name` at byte 64).
    pub fn program_name(id: u32) -> io::Result<String> {
        let fd = fd_by_id(PROG_GET_FD_BY_ID, id)?;
        name(&fd, &mut [0; 64 + NAME_LEN], 64)
    }

    /// The name of map `id` (`struct bpf_map_info`: `name` at byte 24).
    pub fn map_name(id: u32) -> io::Result<String> {
        let fd = fd_by_id(MAP_GET_FD_BY_ID, id)?;
        name(&fd, &mut [0; 24 + NAME_LEN], 24)
    }

    const PROG_LOAD: libc::c_int = 5;
    /// `BPF_PROG_TYPE_PERF_EVENT`.
    const PROG_TYPE_PERF_EVENT: u32 = 7;
    /// `PERF_EVENT_IOC_SET_BPF`, `_IOW('$', 8, __u32)`.
    const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
    /// `PERF_FLAG_FD_CLOEXEC` (not in `libc`).
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

    /// `union bpf_attr` of `BPF_PROG_LOAD`, up to the name (the kernel
    /// takes the fields it knows; the rest are zero).
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; NAME_LEN],
    }

    /// An empty perf-event program (`r0 = 0; exit`) attached to its own
    /// CPU-clock event on every online CPU: what `bpf_stats` counts for
    /// a program that does nothing, run from that kind of interrupt on
    /// this machine (the run-time clock's reads, a cold fetch of its
    /// code). Detached when dropped.
    pub struct EmptyProgram {
        program: OwnedFd,
        _events: Vec<OwnedFd>,
    }

    impl EmptyProgram {
        /// Loads it and attaches it at `frequency` samples per second per CPU.
        pub fn attach(frequency: u64) -> io::Result<Self> {
            // mov64 r0, 0; exit.
            let insns: [u64; 2] = [0xb7, 0x95];
            let license = b"GPL\0";
            let mut name = [0u8; NAME_LEN];
            name[..5].copy_from_slice(b"floor");
            let mut attr = ProgLoad {
                prog_type: PROG_TYPE_PERF_EVENT,
                insn_cnt: insns.len() as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: 0,
                log_size: 0,
                log_buf: 0,
                kern_version: 0,
                prog_flags: 0,
                prog_name: name,
            };
            // SAFETY: `attr` is this command's attribute struct; its
            // pointers are to `insns` and `license`, alive meanwhile.
            let fd = unsafe { bpf(PROG_LOAD, &mut attr) }?;
            // SAFETY: a new descriptor that nothing else owns.
            let program = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
            let online = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
            let cpus = super::cpu_list(&online).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unreadable online CPU list {online:?}"),
                )
            })?;
            let mut events = Vec::new();
            for cpu in cpus {
                // Every online CPU or none: a floor from some CPUs only
                // would not be the one hostprof's programs run on.
                events.push(cpu_clock(cpu as libc::c_int, frequency, &program)?);
            }
            Ok(EmptyProgram {
                program,
                _events: events,
            })
        }

        /// Its runs and their nanoseconds so far (while
        /// `kernel.bpf_stats_enabled` is on).
        pub fn runs(&self) -> io::Result<(u64, u64)> {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.program.as_raw_fd()))?;
            Ok((
                super::fdinfo_number(&info, "run_cnt").unwrap_or(0),
                super::fdinfo_number(&info, "run_time_ns").unwrap_or(0),
            ))
        }
    }

    /// A CPU-clock event on `cpu` at `frequency`, running `program`.
    fn cpu_clock(cpu: libc::c_int, frequency: u64, program: &OwnedFd) -> io::Result<OwnedFd> {
        // `struct perf_event_attr` (128 bytes, PERF_ATTR_SIZE_VER7) as
        // words: type PERF_TYPE_SOFTWARE and size, config
        // PERF_COUNT_SW_CPU_CLOCK, sample_freq, and the `freq` bit of the
        // flags word.
        let mut attr = [0u64; 16];
        attr[0] = 1 | (128 << 32);
        attr[2] = frequency;
        attr[5] = 1 << 10;
        // SAFETY: `attr` is a `perf_event_attr` of the size it says.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                -1 as libc::pid_t,
                cpu,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        // SAFETY: the ioctl takes the program's descriptor by value.
        if unsafe {
            libc::ioctl(
                event.as_raw_fd(),
                PERF_EVENT_IOC_SET_BPF,
                program.as_raw_fd(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(event)
    }

    /// The keys of map `id`, at most `limit` (keys deleted while walking can
    /// restart the walk).
    pub fn count_keys(id: u32, key_size: usize, limit: u32) -> io::Result<u64> {
        let fd = fd_by_id(MAP_GET_FD_BY_ID, id)?;
        let mut key = vec![0u8; key_size];
        let mut next = vec![0u8; key_size];
        let mut count = 0;
        while count < u64::from(limit) {
            let mut attr = GetNextKey {
                map_fd: fd.as_raw_fd() as u32,
                _pad: 0,
                // No key: the first one.
                key: if count == 0 { 0 } else { key.as_ptr() as u64 },
                next_key: next.as_mut_ptr() as u64,
            };
            // SAFETY: `attr` is this command's attribute struct; both
            // buffers hold `key_size` bytes.
            match unsafe { bpf(MAP_GET_NEXT_KEY, &mut attr) } {
                Ok(_) => {
                    count += 1;
                    std::mem::swap(&mut key, &mut next);
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
                Err(err) => return Err(err),
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROG_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2074\n\
        prog_type:\t7\nprog_jited:\t1\nprog_tag:\t0123456789abcdef\nmemlock:\t8192\n\
        prog_id:\t42\nrun_time_ns:\t1500000\nrun_cnt:\t300\nrecursion_misses:\t0\n\
        verified_insns:\t1234\n";

    const MAP_FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2074\n\
        map_type:\t2\nkey_size:\t4\nvalue_size:\t8\nmax_entries:\t8388608\n\
        map_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t67112960\nmap_id:\t7\nfrozen:\t0\n";

    #[test]
    fn parses_fdinfo() {
        let program = Program::from_fdinfo(PROG_FDINFO).unwrap();
        assert_eq!(
            program,
            Program {
                id: 42,
                name: String::new(),
                prog_type: 7,
                tag: "0123456789abcdef".into(),
                run_time_ns: 1_500_000,
                run_cnt: 300,
            }
        );
        let map = Map::from_fdinfo(MAP_FDINFO).unwrap();
        assert_eq!(map.id, 7);
        assert_eq!(map.max_entries, 8_388_608);
        assert_eq!(map.memlock, 67_112_960);
        assert_eq!(map.value_size, 8);
        // Without bpf_stats the run fields are absent.
        let quiet = PROG_FDINFO.replace("run_time_ns:\t1500000\nrun_cnt:\t300\n", "");
        assert_eq!(Program::from_fdinfo(&quiet).unwrap().run_cnt, 0);
        assert!(Map::from_fdinfo(PROG_FDINFO).is_none());
    }

    #[test]
    fn cost_per_sample_sums_every_program() {
        let program = |name: &str, ns, runs| Program {
            id: 0,
            name: name.into(),
            prog_type: 7,
            tag: String::new(),
            run_time_ns: ns,
            run_cnt: runs,
        };
        let objects = BpfObjects {
            programs: vec![
                program("sample_cpu", 3_000, 10),
                program("unwind_store", 1_000, 0),
            ],
            maps: Vec::new(),
        };
        assert_eq!(objects.ns_per_sample(), Some(400.0));
        assert_eq!(BpfObjects::default().ns_per_sample(), None);
    }

    #[test]
    fn reads_table_loads_from_the_stats_report() {
        let report = r#"{"sampling_seconds": 10.0, "finishing_seconds": 0.4, "profiles": [
            {"kind": "cpu", "samples": 990, "unwind_tables": {"registry": {"processes": 3,
             "files_loaded": 2, "rows_used": 28315, "rows_capacity": 8388608, "evictions": 0,
             "out_of_room": 0}, "queued": 0, "tables_built": 3, "build_errors": 1,
             "rows_built": 28355, "busy": 0.004}}]}"#;
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        let loads = TableLoads::from_report(&json(report));
        assert_eq!(loads.loads, 3);
        assert_eq!(loads.rows, 28_355);
        assert_eq!(loads.files, 2);
        let frame_pointers = r#"{"profiles": [{"kind": "cpu", "unwind_tables": null}]}"#;
        assert_eq!(
            TableLoads::from_report(&json(frame_pointers)),
            TableLoads::default()
        );
    }

    const CRITERION: &str = "\
libc.so.6: 0.15 MiB of CFI -> 28275 rows, 0.22 MiB in the kernel's encoding (1.48 MiB per MiB of CFI); 24682 rsp, 181 rbp
unwind_table/libc.so.6  time:   [2.8294 ms 2.8762 ms 2.9305 ms]
                        thrpt:  [49.888 MiB/s 50.828 MiB/s 51.669 MiB/s]
Found 8 outliers among 100 measurements (8.00%)
  4 (4.00%) high mild
libstdc++.so.6: 0.19 MiB of CFI -> 34371 rows, 0.26 MiB in the kernel's encoding (1.37 MiB per MiB of CFI); 29931 rsp
unwind_table/libstdc++.so.6
                        time:   [3.5318 ms 3.5883 ms 3.6555 ms]
                        thrpt:  [52.488 MiB/s 53.472 MiB/s 54.327 MiB/s]
libm.so.6: 0.03 MiB of CFI -> 6271 rows, 0.05 MiB in the kernel's encoding (1.43 MiB per MiB of CFI); 5425 rsp
unwind_table/libm.so.6  time:   [613.19 µs 631.39 µs 653.24 µs]
                        thrpt:  [51.243 MiB/s 53.017 MiB/s 54.590 MiB/s]
";

    #[test]
    fn parses_criterion_output() {
        let builds = parse_criterion(CRITERION);
        assert_eq!(builds.len(), 3);
        assert_eq!(builds[0].name, "libc.so.6");
        assert_eq!(builds[0].rows, 28_275);
        assert_eq!(builds[0].cfi_mib, 0.15);
        assert_eq!(builds[0].kernel_mib, 0.22);
        assert_eq!(builds[0].kernel_per_cfi, 1.48);
        assert_eq!(builds[0].time_ms, Some(2.8762));
        assert_eq!(builds[1].mib_per_s, Some(53.472));
        assert!((builds[2].time_ms.unwrap() - 0.63139).abs() < 1e-9);
        assert!(builds[2].summary.starts_with("libm.so.6: 0.03 MiB"));
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(4096), "4.0 KiB");
        assert_eq!(size(64 << 20), "64.00 MiB");
    }

    #[test]
    fn names_our_own_bpf_objects() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // No object has id 0: the lookups fail cleanly, closing nothing
        // they do not own.
        assert!(bpf::program_name(0).is_err());
        assert!(bpf::map_name(0).is_err());
    }

    /// A capture whose `sample_cpu` ran 100 times for `ns` in all, with
    /// `maps`.
    fn fake_capture(mode: Mode, baseline: bool, ns: u64, maps: Vec<Map>, cpu_s: f64) -> Capture {
        Capture {
            mode,
            baseline,
            objects: BpfObjects {
                programs: vec![Program {
                    id: 1,
                    name: SAMPLE_PROGRAM.into(),
                    prog_type: 7,
                    tag: "t".into(),
                    run_time_ns: ns,
                    run_cnt: 100,
                }],
                maps,
            },
            tables: TableLoads::default(),
            cpu_s,
            floor_ns: Some(400.0),
        }
    }

    fn fake_setup() -> Setup {
        Setup {
            seconds: 10.0,
            cpus: 2,
            instances: 4,
            workloads: vec!["deep_chain".into()],
            fp_workloads: vec!["deep_fp".into()],
            unwinder_flag: true,
        }
    }

    #[test]
    fn report_has_ratio_and_totals() {
        let capture = |mode, ns, memlock| {
            let rows = Map {
                id: 2,
                name: ROWS_MAP.into(),
                map_type: 2,
                key_size: 4,
                value_size: 8,
                max_entries: 8,
                memlock,
                entries: None,
            };
            fake_capture(mode, false, ns, vec![rows], 1.5)
        };
        let setup = fake_setup();
        let text = report(
            &setup,
            &[
                capture(Mode::Tables, 300_000, 64 << 20),
                capture(Mode::FramePointers, 100_000, 4096),
                capture(Mode::Python, 500_000, 64 << 20),
                capture(Mode::PythonOff, 400_000, 64 << 20),
            ],
            Builds::Measured(&parse_criterion(CRITERION)),
        );
        assert!(
            text.contains("**tables / frame pointers: 3.00x per sample**"),
            "{text}"
        );
        assert!(
            text.contains("| **total** | 1 maps | | **64.00 MiB** | | **4.0 KiB** |"),
            "{text}"
        );
        assert!(text.contains("| libc.so.6 | 0.15 MiB | 28275 |"), "{text}");
        assert!(
            text.contains(
                "**Python frames: 5000 ns per sample walked, 4000 ns with `--no-python` \
                 (+1000 ns, 1.25x); native load with tables 3000 ns (1.67x)**"
            ),
            "{text}"
        );
        assert!(text.contains("- python, --no-python: 1.50 s"), "{text}");
    }

    #[test]
    fn report_compares_with_the_baseline_taken_at_the_same_time() {
        let capture = |mode, baseline, ns| fake_capture(mode, baseline, ns, Vec::new(), 1.0);
        let setup = fake_setup();
        let text = report(
            &setup,
            &[
                capture(Mode::Tables, false, 300_000),
                capture(Mode::Tables, true, 250_000),
                capture(Mode::FramePointers, false, 200_000),
                capture(Mode::FramePointers, true, 250_000),
            ],
            Builds::Failed,
        );
        // This build's own ratio ignores the baseline's captures.
        assert!(
            text.contains("**tables / frame pointers: 1.50x per sample**"),
            "{text}"
        );
        assert!(
            text.contains("| tables | 3000 | 2500 | **1.20x** |"),
            "{text}"
        );
        assert!(
            text.contains("| frame pointers | 2000 | 2500 | **0.80x** |"),
            "{text}"
        );
        assert!(text.contains("- tables (baseline): 1.00 s"), "{text}");
        assert!(text.contains("Not measured: the bench failed"), "{text}");
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(cpu_list("3"), Some(vec![3]));
        assert_eq!(cpu_list("2-1"), None);
        assert_eq!(cpu_list(""), None);
    }

    #[test]
    fn figures_are_this_builds_and_builds_can_be_left_out() {
        let capture = |mode, baseline, ns| fake_capture(mode, baseline, ns, Vec::new(), 1.0);
        let captures = [
            capture(Mode::Tables, true, 900_000),
            capture(Mode::Tables, false, 300_000),
            capture(Mode::Python, false, 500_000),
        ];
        assert_eq!(
            UnwindFigures::of(&captures),
            UnwindFigures {
                tables_ns: Some(3000.0),
                frame_pointers_ns: None,
                frame_pointers_built_ns: None,
                floor_ns: Some(400.0),
            }
        );
        let text = report(&fake_setup(), &captures, Builds::Skipped);
        assert!(!text.contains("Table build speed"), "{text}");
        // The floor is this build's modes', once each.
        assert!(text.contains("- tables: 400 ns per run"), "{text}");
        assert!(
            text.contains("- python, frames walked: 400 ns per run"),
            "{text}"
        );
        assert_eq!(text.matches("ns per run\n").count(), 2, "{text}");
    }
}
