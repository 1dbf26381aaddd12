//! What hostprof needs from the host, checked: kernel version, BTF,
//! capabilities, perf and BPF features, CPUs, kernel symbol visibility, and
//! whether the table unwinder can run.
//!
//! [`collect`] gathers every check for `hostprof system-info`;
//! [`preflight`] runs before sampling and turns every failed check into one
//! error that names what is missing and how to fix it. Deciding a status is
//! pure (and tested); only reading the inputs touches the system.
//!
//! - [`kernel`] owns everything about the kernel's version: parsing it,
//!   the table of minimum versions ([`kernel::KERNEL_MINIMUMS`]) and the
//!   `bpf_probe_read_user()` freeze bug that rules out the table unwinder
//!   ([`kernel::check_running_kernel`]).
//! - [`capabilities`] says which capabilities each thing hostprof does
//!   needs, and what is lost without them.
//! - [`kernel_code`] reads the kernel's machine code (kallsyms, kcore) when
//!   the version alone cannot tell whether that bug was fixed.

pub mod capabilities;
pub mod kernel;
pub mod kernel_code;

use std::fmt;

use aya::maps::MapType;
use aya::programs::ProgramType;

use kernel::{Feature, KernelCheckError, KernelVersion, RunningKernel, KERNEL_MINIMUMS};

use crate::kind::ProfileKind;
use crate::sampler::trace_context::{self, TraceContextMap, TraceMapState};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with a limitation.
    Warn,
    /// hostprof cannot sample.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One thing hostprof depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// What was found.
    pub value: String,
    /// Verdict.
    pub status: Status,
    /// How to fix it, when not OK.
    pub hint: Option<String>,
}

impl Check {
    fn new(name: &'static str, value: impl Into<String>, status: Status) -> Self {
        Self {
            name,
            value: value.into(),
            status,
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        if self.status != Status::Ok {
            self.hint = Some(hint.into());
        }
        self
    }
}

/// A table of checks, for printing.
pub struct Report<'a>(pub &'a [Check]);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.0.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in self.0 {
            writeln!(
                f,
                "{:<width$}  {:<4}  {}",
                check.name, check.status, check.value
            )?;
            if let Some(hint) = &check.hint {
                writeln!(f, "{:<width$}        -> {hint}", "")?;
            }
        }
        Ok(())
    }
}

/// Everything that stops hostprof from sampling on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct PreflightError(pub Vec<Check>);

fn describe(failed: &[Check]) -> String {
    let mut text = String::from("hostprof cannot sample on this host:");
    for check in failed {
        text.push_str(&format!("\n  - {}: {}", check.name, check.value));
        if let Some(hint) = &check.hint {
            text.push_str(&format!(" ({hint})"));
        }
    }
    text.push_str("\nrun `hostprof system-info` for every check");
    text
}

/// A profile kind this host cannot take, and what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {kind} profile cannot run on Linux {kernel}: {missing}; drop {kind} from --profiles")]
pub struct KindUnsupported {
    /// The kind.
    pub kind: ProfileKind,
    /// The running kernel's release.
    pub kernel: String,
    /// What the kernel lacks, and how to get it.
    pub missing: String,
}

/// The oldest kernel the off-CPU profile runs on: `sched_switch` passes
/// the thread's state (`prev_state`) from 5.18.
pub const OFF_CPU_MINIMUM: KernelVersion = KernelVersion::new(5, 18, 0);

/// What the off-CPU profile lacks on a kernel of `version` with (or
/// without) BTF, given the switch-in hook it offers (`None`: neither the
/// `sched_exit_tp` tracepoint nor kprobes on `finish_task_switch`).
/// `None` when nothing is missing.
pub fn off_cpu_missing(
    version: Option<KernelVersion>,
    btf: bool,
    switch_in: Option<&str>,
) -> Option<String> {
    let mut missing = Vec::new();
    if version.is_some_and(|v| v < OFF_CPU_MINIMUM) {
        missing.push(format!(
            "sched_switch without the thread state (needs Linux {OFF_CPU_MINIMUM}+)"
        ));
    }
    if !btf {
        missing.push(
            "no BTF (/sys/kernel/btf/vmlinux; boot a kernel with CONFIG_DEBUG_INFO_BTF=y)".into(),
        );
    }
    if btf && switch_in.is_none() {
        missing.push(
            "no switch-in hook: neither the sched_exit_tp tracepoint (Linux 6.16+) nor a \
             finish_task_switch symbol with kprobes (CONFIG_KPROBES=y)"
                .into(),
        );
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The oldest kernel the memory profile runs on: uprobes attached with a
/// cookie (`bpf_get_attach_cookie`) came in 5.15; task storage and
/// `bpf_get_current_task_btf` in kprobe-type programs before.
pub const MEMORY_MINIMUM: KernelVersion = KernelVersion::new(5, 15, 0);

/// What the memory profile lacks on a kernel of `version`, with or
/// without the uprobe perf event source. `None` when nothing is missing.
pub fn memory_missing(version: Option<KernelVersion>, uprobes: bool) -> Option<String> {
    let mut missing = Vec::new();
    if version.is_some_and(|v| v < MEMORY_MINIMUM) {
        missing.push(format!(
            "uprobes with a BPF cookie (needs Linux {MEMORY_MINIMUM}+)"
        ));
    }
    if !uprobes {
        missing.push(
            "no uprobe event source (/sys/bus/event_source/devices/uprobe; boot a kernel \
             with CONFIG_UPROBE_EVENTS=y)"
                .to_owned(),
        );
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// What the memory profile lacks on the running kernel.
fn memory_probe() -> Option<String> {
    memory_missing(
        RunningKernel::get().ok().map(|k| k.version),
        std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists(),
    )
}

/// Whether the memory profile can run.
fn memory_check() -> Check {
    match memory_probe() {
        None => Check::new(
            "memory profile",
            "supported (uprobes on each selected process's allocator)",
            Status::Ok,
        ),
        Some(missing) => Check::new(
            "memory profile",
            format!("unsupported: {missing}"),
            Status::Warn,
        )
        .hint("the page-fault profile still shows where resident memory grows"),
    }
}

/// What the locks profile lacks, given what the off-CPU profile (which
/// it runs on for user-space locks) lacks and whether the kernel's BTF
/// has the contention tracepoints. `None` when nothing is missing.
pub fn locks_missing(off_cpu_missing: Option<String>, contention: bool) -> Option<String> {
    let mut missing: Vec<String> = off_cpu_missing.into_iter().collect();
    if !contention {
        missing.push(
            "no contention_begin/contention_end tracepoints (kernel locks; Linux 5.19+ with BTF)"
                .into(),
        );
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Whether this host can take profiles of `kind`; the error names the
/// kernel and what it lacks.
pub fn kind_support(kind: ProfileKind) -> Result<(), KindUnsupported> {
    let missing = match kind {
        // Software perf events, like the CPU clock.
        ProfileKind::Cpu | ProfileKind::PageFaults => None,
        ProfileKind::OffCpu => off_cpu_probe().1,
        ProfileKind::Locks => locks_probe(),
        ProfileKind::Memory => memory_probe(),
    };
    match missing {
        None => Ok(()),
        Some(missing) => Err(KindUnsupported {
            kind,
            kernel: RunningKernel::get()
                .map(|k| k.release.clone())
                .unwrap_or_else(|_| "(unknown)".into()),
            missing,
        }),
    }
}

/// What the locks profile lacks on the running kernel.
fn locks_probe() -> Option<String> {
    let contention = aya::Btf::from_sys_fs()
        .ok()
        .is_some_and(|btf| crate::sampler::has_contention_tracepoints(&btf));
    locks_missing(off_cpu_probe().1, contention)
}

/// Whether the locks profile can run.
fn locks_check() -> Check {
    match locks_probe() {
        None => Check::new(
            "locks profile",
            "supported (tp_btf/contention_begin, contention_end; user locks from off-CPU waits)",
            Status::Ok,
        ),
        Some(missing) => Check::new(
            "locks profile",
            format!("unsupported: {missing}"),
            Status::Warn,
        )
        .hint("the CPU profile still works; leave locks out of --profiles"),
    }
}

/// The off-CPU switch-in hook this host offers (for the report) and what
/// is missing, read from the running kernel.
fn off_cpu_probe() -> (Option<String>, Option<String>) {
    let version = RunningKernel::get().ok().map(|k| k.version);
    let btf = aya::Btf::from_sys_fs().ok();
    let hook = btf
        .as_ref()
        .and_then(|btf| crate::sampler::switch_in_hook(btf).ok())
        .map(|hook| match hook {
            crate::sampler::SwitchIn::Tracepoint => "tp_btf/sched_exit_tp".to_owned(),
            crate::sampler::SwitchIn::Kprobe(symbols) => {
                format!("kprobe on {}", symbols.join(", "))
            }
        });
    let missing = off_cpu_missing(version, btf.is_some(), hook.as_deref());
    (hook, missing)
}

/// Whether the off-CPU profile can run, and on which switch-in hook.
fn off_cpu_check() -> Check {
    match off_cpu_probe() {
        (Some(hook), None) => Check::new(
            "off-CPU profile",
            format!("supported (switch-in: {hook})"),
            Status::Ok,
        ),
        (_, missing) => Check::new(
            "off-CPU profile",
            format!("unsupported: {}", missing.unwrap_or_default()),
            Status::Warn,
        )
        .hint("the CPU profile still works; leave off-cpu out of --profiles"),
    }
}

/// Whether frames of short-lived and exec'ing processes resolve: the kernel
/// records the files of sampled frames, and samples carry the exec
/// generation. Pure: `version` of the kernel, whether the struct offsets
/// were found in its BTF (`offsets`), and which exec tracepoints it has.
fn process_tracking(
    version: Option<KernelVersion>,
    offsets: Result<(), String>,
    prepare_exec: bool,
    process_exec: bool,
) -> Check {
    const NAME: &str = "short-lived processes";
    let needs = Feature::RecordedFiles.minimum();
    let missing = match (version, offsets) {
        (Some(version), _) if version < needs.version => Some(needs.to_string()),
        (_, Err(why)) => Some(why),
        _ => None,
    };
    let exec = match (prepare_exec, process_exec) {
        (true, true) => "exec tracked (sched_prepare_exec, sched_process_exec)",
        (false, true) => "exec tracked at sched_process_exec only (6.10+ adds sched_prepare_exec)",
        _ => "exec not tracked (no sched_process_exec tracepoint)",
    };
    match missing {
        None if process_exec => Check::new(
            NAME,
            format!("files of sampled frames recorded (bpf_find_vma); {exec}"),
            Status::Ok,
        ),
        None => Check::new(NAME, format!("files of sampled frames recorded; {exec}"), Status::Warn)
            .hint("samples taken before an exec stay unresolved unless their files were recorded"),
        Some(why) => Check::new(NAME, format!("files of sampled frames not recorded: {why}; {exec}"), Status::Warn)
            .hint("frames of processes that exit before hostprof reads /proc/PID/maps stay [unknown] (counted as unresolved)"),
    }
}

/// Where samples' trace links come from (at the default pin; `record`
/// and `agent` take `--trace-context-map`).
fn trace_links(state: &TraceMapState) -> Check {
    const NAME: &str = "trace links";
    match state {
        TraceMapState::Reused(path) => Check::new(
            NAME,
            format!("trace-context map pinned at {}: read", path.display()),
            Status::Ok,
        ),
        TraceMapState::Created(path) => Check::new(
            NAME,
            format!(
                "no trace-context map at {} yet: hostprof pins one for an instrumentation to fill",
                path.display()
            ),
            Status::Ok,
        ),
        TraceMapState::Off => Check::new(NAME, "off", Status::Ok),
        TraceMapState::Unusable { .. } => Check::new(NAME, state.to_string(), Status::Warn)
            .hint("samples carry no trace links; fix the pin or give --trace-context-map"),
    }
}

/// [`process_tracking`] on this host.
fn process_tracking_check() -> Check {
    let version = RunningKernel::get().ok().map(|k| k.version);
    let offsets = crate::sampler::kernel_btf::running_file_offsets()
        .map(|_| ())
        .map_err(|err| err.to_string());
    let btf = aya::Btf::from_sys_fs().ok();
    let has = |tracepoint: &str| {
        btf.as_ref().is_some_and(|btf| {
            btf.id_by_type_name_kind(
                &format!("btf_trace_{tracepoint}"),
                aya_obj::btf::BtfKind::Typedef,
            )
            .is_ok()
        })
    };
    process_tracking(
        version,
        offsets,
        has(profiler_common::names::EXEC_BEGIN_TRACEPOINT),
        has(profiler_common::names::EXEC_DONE_TRACEPOINT),
    )
}

/// Checks that must pass before loading the program (no BPF syscalls).
pub fn preflight() -> Result<(), PreflightError> {
    let failed: Vec<Check> = [kernel_check(), btf_check()]
        .into_iter()
        .chain(capability_checks())
        .filter(|c| c.status == Status::Fail)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(PreflightError(failed))
    }
}

/// Every check, for `hostprof system-info`.
pub fn collect() -> Vec<Check> {
    let mut checks = vec![
        kernel_check(),
        table_unwinder_check(),
        off_cpu_check(),
        locks_check(),
        Check::new(
            "page-fault profile",
            "supported (the software page-faults perf event, as the CPU profile's clock)",
            Status::Ok,
        ),
        memory_check(),
        process_tracking_check(),
        trace_links(&trace_context::inspect(&TraceContextMap::default())),
        btf_check(),
    ];
    checks.extend(capability_checks());
    checks.push(paranoid_check());
    checks.push(program_check());
    for (name, map) in [
        ("BPF map hash", MapType::Hash),
        ("BPF map percpu_hash", MapType::PerCpuHash),
        ("BPF map lru_hash", MapType::LruHash),
        ("BPF map ringbuf", MapType::RingBuf),
    ] {
        checks.push(map_check(name, map));
    }
    checks.push(cpus_check());
    checks.push(kallsyms_check());
    checks.push(bpf_stats_check());
    checks
}

/// Below the sampling minimum hostprof cannot run; below the recommended
/// one it runs untested, maybe without the table unwinder.
fn kernel_status(version: KernelVersion) -> Status {
    if version < Feature::Sampling.minimum().version {
        Status::Fail
    } else if version < Feature::Recommended.minimum().version {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// The kernel's release (and its stable version when a distribution
/// reports one), judged against [`KERNEL_MINIMUMS`].
fn kernel_check() -> Check {
    let minimums: Vec<String> = KERNEL_MINIMUMS.iter().map(|m| m.to_string()).collect();
    let hint = format!("hostprof needs {}", minimums.join(", "));
    match RunningKernel::get() {
        Ok(kernel) => {
            let mut value = kernel.release.clone();
            if kernel.stable != kernel.version {
                value.push_str(&format!(" (stable {})", kernel.stable));
            }
            Check::new("kernel", value, kernel_status(kernel.version)).hint(hint)
        }
        Err(err) => Check::new("kernel", err.to_string(), Status::Warn).hint(hint),
    }
}

/// Whether the default unwinder, the table unwinder, can run: see
/// [`kernel::check_running_kernel`].
fn table_unwinder_check() -> Check {
    match kernel::check_running_kernel() {
        Ok(()) => Check::new("table unwinder", "supported", Status::Ok),
        Err(err) => table_unwinder_refused(&err),
    }
}

/// The check row for a kernel that cannot run the table unwinder. It is a
/// warning: `--unwinder frame-pointers` still samples.
fn table_unwinder_refused(err: &KernelCheckError) -> Check {
    const WAY_OUT: &str = "run with --unwinder frame-pointers";
    match err {
        KernelCheckError::Hazard(hazard) => Check::new(
            "table unwinder",
            format!(
                "refused: Linux {} has the bpf_probe_read_user() freeze bug",
                hazard.version
            ),
            Status::Warn,
        )
        .hint(format!(
            "{WAY_OUT}, or upgrade to a fixed kernel: Linux 6.1.36+, 6.3.10+ or 6.4+"
        )),
        KernelCheckError::TooOld { version, needs } => Check::new(
            "table unwinder",
            format!("refused: Linux {version} is too old"),
            Status::Warn,
        )
        .hint(format!("{WAY_OUT}, or upgrade: hostprof needs {needs}")),
        KernelCheckError::ReadRelease(_) | KernelCheckError::UnrecognisedRelease(_) => {
            Check::new("table unwinder", err.to_string(), Status::Warn).hint(WAY_OUT)
        }
    }
}

fn btf_check() -> Check {
    let present = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    Check::new(
        "BTF",
        if present {
            "/sys/kernel/btf/vmlinux"
        } else {
            "missing"
        },
        if present { Status::Ok } else { Status::Fail },
    )
    .hint("boot a kernel built with CONFIG_DEBUG_INFO_BTF=y")
}

/// What the capabilities hostprof holds leave out, one line per thing it
/// can do without (empty as root), for a warning at start.
pub fn degraded_capabilities() -> Vec<String> {
    own_cap_eff().map_or_else(Vec::new, capabilities::degraded)
}

fn own_cap_eff() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(capabilities::parse_cap_eff)
}

/// One row per [`capabilities::NEEDS`]: failed when hostprof cannot
/// sample, a warning when it samples with less.
fn capability_checks() -> Vec<Check> {
    let Some(cap_eff) = own_cap_eff() else {
        return vec![Check::new(
            "capabilities",
            "cannot read CapEff",
            Status::Warn,
        )];
    };
    capabilities::NEEDS
        .iter()
        .map(|need| capability_row(need, cap_eff))
        .collect()
}

fn capability_row(need: &capabilities::Need, cap_eff: u64) -> Check {
    let missing = need.missing(cap_eff);
    if missing.is_empty() {
        return Check::new(need.what, "held", Status::Ok);
    }
    let (status, lost) = match need.without {
        None => (Status::Fail, "hostprof cannot sample".to_owned()),
        Some(lost) => (Status::Warn, lost.to_owned()),
    };
    Check::new(
        need.what,
        format!("missing {}", missing.join(" and ")),
        status,
    )
    .hint(format!(
        "{lost}; run as root, or grant them: `sudo setcap {} $(which hostprof)`",
        capabilities::setcap_all()
    ))
}

fn paranoid_check() -> Check {
    let value = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    // With CAP_PERFMON (or root) the setting does not restrict hostprof.
    Check::new("perf_event_paranoid", value, Status::Ok)
}

fn program_check() -> Check {
    match aya::sys::is_program_supported(ProgramType::PerfEvent) {
        Ok(true) => Check::new("BPF program perf_event", "supported", Status::Ok),
        Ok(false) => Check::new("BPF program perf_event", "not supported", Status::Fail)
            .hint("the kernel lacks CONFIG_BPF_EVENTS"),
        Err(err) => Check::new(
            "BPF program perf_event",
            format!("probe failed: {err}"),
            Status::Warn,
        )
        .hint("probing needs CAP_BPF; run as root"),
    }
}

fn map_check(name: &'static str, map: MapType) -> Check {
    match aya::sys::is_map_supported(map) {
        Ok(true) => Check::new(name, "supported", Status::Ok),
        Ok(false) => Check::new(name, "not supported", Status::Fail).hint(format!(
            "upgrade the kernel: hostprof needs {}",
            Feature::Sampling.minimum()
        )),
        Err(err) => Check::new(name, format!("probe failed: {err}"), Status::Warn)
            .hint("probing needs CAP_BPF; run as root"),
    }
}

fn cpus_check() -> Check {
    match aya::util::online_cpus() {
        Ok(cpus) => Check::new("online CPUs", cpus.len().to_string(), Status::Ok),
        Err((path, err)) => Check::new("online CPUs", format!("{path}: {err}"), Status::Fail)
            .hint("mount sysfs at /sys"),
    }
}

/// Whether kallsyms shows real addresses: an unprivileged reader with
/// `kptr_restrict` ≥ 1 sees zeros. Only where the kernel cannot name
/// kernel code itself (the `kernel_names` program, Linux 5.17+) are
/// kernel frames named from kallsyms; the table unwinder's code check
/// reads it on the kernels whose version alone does not tell.
fn kallsyms_check() -> Check {
    use std::io::BufRead as _;
    // The first line only: the kernel formats every line read.
    let first = std::fs::File::open(kernel_code::KALLSYMS_PATH)
        .ok()
        .and_then(|file| {
            let mut line = String::new();
            std::io::BufReader::new(file)
                .read_line(&mut line)
                .ok()
                .map(|_| line)
        });
    match first.as_deref().and_then(|l| l.split_whitespace().next()) {
        Some(addr) if addr.chars().any(|c| c != '0') => {
            Check::new("kallsyms", "addresses visible", Status::Ok)
        }
        // Read only where the kernel cannot name its frames itself.
        _ if names_kernel_frames() => Check::new(
            "kallsyms",
            "addresses hidden or unreadable; not needed: the kernel names kernel frames",
            Status::Ok,
        ),
        Some(_) => Check::new("kallsyms", "addresses hidden (kptr_restrict)", Status::Warn).hint(
            "kernel frames will be unnamed; run as root, grant CAP_SYSLOG or set \
             kernel.kptr_restrict=0",
        ),
        None => Check::new("kallsyms", "unreadable", Status::Warn)
            .hint("kernel frames will be unnamed; mount /proc"),
    }
}

/// Whether this kernel is new enough for the `kernel_names` program.
fn names_kernel_frames() -> bool {
    RunningKernel::get()
        .is_ok_and(|kernel| kernel.version >= Feature::KernelNames.minimum().version)
}

fn bpf_stats_check() -> Check {
    let value = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| if s.trim() == "1" { "on" } else { "off" }.to_owned())
        .unwrap_or_else(|_| "unknown".into());
    Check::new("kernel.bpf_stats_enabled", value, Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_tracking_names_what_is_missing() {
        let v = |major, minor| Some(KernelVersion::new(major, minor, 0));
        let ok = process_tracking(v(6, 18), Ok(()), true, true);
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.value.contains("bpf_find_vma") && ok.value.contains("sched_prepare_exec"));
        let old = process_tracking(v(5, 15), Ok(()), false, true);
        assert_eq!(old.status, Status::Warn);
        assert!(
            old.value.contains("Linux 5.17+") && old.value.contains("bpf_find_vma"),
            "{}",
            old.value
        );
        assert!(old.value.contains("sched_process_exec only"));
        let no_btf = process_tracking(None, Err("no struct file".into()), false, false);
        assert_eq!(no_btf.status, Status::Warn);
        assert!(no_btf.value.contains("no struct file") && no_btf.value.contains("not tracked"));
        assert!(no_btf.hint.unwrap().contains("[unknown]"));
    }

    #[test]
    fn trace_links_row_warns_only_when_the_pin_cannot_be_used() {
        let pin = std::path::PathBuf::from("/sys/fs/bpf/otel/traces_ctx_v1");
        let created = trace_links(&TraceMapState::Created(pin.clone()));
        assert_eq!(created.status, Status::Ok);
        assert!(created.value.contains("/sys/fs/bpf/otel/traces_ctx_v1"));
        assert_eq!(
            trace_links(&TraceMapState::Reused(pin.clone())).status,
            Status::Ok
        );
        let bad = trace_links(&TraceMapState::Unusable {
            path: pin,
            reason: "key size 4 (expected 8)".into(),
        });
        assert_eq!(bad.status, Status::Warn);
        assert!(bad.value.contains("key size 4"), "{bad:?}");
        assert!(bad.hint.unwrap().contains("--trace-context-map"));
    }

    #[test]
    fn this_host_tracks_short_lived_processes() {
        // The test machines run 6.18 with BTF: everything is there.
        let check = process_tracking_check();
        if RunningKernel::get().is_ok_and(|k| k.version >= KernelVersion::new(6, 10, 0))
            && std::path::Path::new(crate::sampler::kernel_btf::VMLINUX_BTF).exists()
        {
            assert_eq!(check.status, Status::Ok, "{check:?}");
        }
    }

    #[test]
    fn locks_support_needs_off_cpu_and_the_contention_tracepoints() {
        assert_eq!(locks_missing(None, true), None);
        let no_tracepoints = locks_missing(None, false).unwrap();
        assert!(
            no_tracepoints.contains("contention_begin"),
            "{no_tracepoints}"
        );
        assert!(no_tracepoints.contains("5.19"), "{no_tracepoints}");
        let both = locks_missing(Some("no BTF".into()), false).unwrap();
        assert!(both.starts_with("no BTF, no contention_begin"), "{both}");
    }

    #[test]
    fn off_cpu_support_names_what_is_missing() {
        let v = |major, minor| Some(KernelVersion::new(major, minor, 0));
        assert_eq!(
            off_cpu_missing(v(6, 18), true, Some("tp_btf/sched_exit_tp")),
            None
        );
        assert_eq!(
            off_cpu_missing(None, true, Some("kprobe")),
            None,
            "unknown version"
        );
        let old = off_cpu_missing(v(5, 15), true, Some("kprobe")).unwrap();
        assert!(old.contains("needs Linux 5.18.0+"), "{old}");
        let no_btf = off_cpu_missing(v(6, 1), false, None).unwrap();
        assert!(no_btf.contains("CONFIG_DEBUG_INFO_BTF=y"), "{no_btf}");
        assert!(!no_btf.contains("switch-in"), "{no_btf}");
        let no_hook = off_cpu_missing(v(6, 1), true, None).unwrap();
        assert!(no_hook.contains("sched_exit_tp") && no_hook.contains("CONFIG_KPROBES"));
        let err = KindUnsupported {
            kind: ProfileKind::OffCpu,
            kernel: "6.1.0".into(),
            missing: no_hook,
        }
        .to_string();
        assert!(
            err.starts_with("the off-cpu profile cannot run on Linux 6.1.0: no switch-in hook")
                && err.ends_with("; drop off-cpu from --profiles"),
            "{err}"
        );
    }

    #[test]
    fn kernel_versions() {
        let status = |release| kernel_status(KernelVersion::parse(release).unwrap());
        assert_eq!(status("4.19.0"), Status::Fail);
        assert_eq!(status("5.15.0-91-generic"), Status::Warn);
        assert_eq!(status("6.1.0-18-amd64"), Status::Ok);
    }

    #[test]
    fn table_unwinder_rows() {
        let hazard = kernel::probe_read_user_hazard(
            KernelVersion::new(6, 2, 16),
            kernel::FixEvidence::NotInspected,
        )
        .unwrap();
        let row = table_unwinder_refused(&hazard.into());
        assert_eq!(row.status, Status::Warn);
        assert!(row.value.contains("Linux 6.2.16"), "{row:?}");
        let hint = row.hint.unwrap();
        assert!(
            hint.contains("--unwinder frame-pointers") && hint.contains("6.1.36+"),
            "{hint}"
        );

        let too_old = KernelCheckError::TooOld {
            version: KernelVersion::new(5, 15, 0),
            needs: Feature::TableUnwinder.minimum(),
        };
        let row = table_unwinder_refused(&too_old);
        assert_eq!(row.status, Status::Warn);
        assert!(row.value.contains("5.15.0"), "{row:?}");
        let hint = row.hint.unwrap();
        assert!(
            hint.contains("Linux 5.17+") && hint.contains("bpf_loop"),
            "{hint}"
        );
    }

    #[test]
    fn capability_rows_fail_or_warn_with_what_is_lost() {
        use capabilities::NEEDS;
        let root = 0x1ff_ffff_ffff;
        assert_eq!(capability_row(&NEEDS[0], root).status, Status::Ok);
        let none = capability_row(&NEEDS[0], 0);
        assert_eq!(none.status, Status::Fail);
        assert_eq!(none.value, "missing CAP_BPF and CAP_PERFMON");
        let bpf_perfmon = (1 << 39) | (1 << 38);
        let others = capability_row(&NEEDS[1], bpf_perfmon);
        assert_eq!(others.status, Status::Warn);
        let hint = others.hint.unwrap();
        assert!(
            hint.starts_with("processes of other users get no unwind tables"),
            "{hint}"
        );
        assert!(hint.contains("cap_sys_ptrace"), "{hint}");
    }

    #[test]
    fn preflight_error_names_everything_missing() {
        let err = PreflightError(vec![Check::new(
            "capabilities",
            "missing CAP_BPF",
            Status::Fail,
        )
        .hint("run as root")]);
        let text = err.to_string();
        assert!(
            text.contains("missing CAP_BPF") && text.contains("run as root"),
            "{text}"
        );
    }

    #[test]
    fn collect_on_this_host() {
        let checks = collect();
        assert!(checks.iter().any(|c| c.name == "kernel"));
        assert!(checks.iter().any(|c| c.name == "table unwinder"));
        let report = Report(&checks).to_string();
        assert!(report.contains("online CPUs"), "{report}");
    }
}
