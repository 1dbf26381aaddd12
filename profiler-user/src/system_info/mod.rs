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
    let mut checks = vec![kernel_check(), table_unwinder_check(), btf_check()];
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
/// `kptr_restrict` ≥ 1 sees zeros.
fn kallsyms_check() -> Check {
    let first = std::fs::read_to_string("/proc/kallsyms")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned));
    match first.as_deref().and_then(|l| l.split_whitespace().next()) {
        Some(addr) if addr.chars().any(|c| c != '0') => {
            Check::new("kallsyms", "addresses visible", Status::Ok)
        }
        Some(_) => Check::new("kallsyms", "addresses hidden (kptr_restrict)", Status::Warn).hint(
            "kernel frames will be unnamed; run as root, grant CAP_SYSLOG or set \
                 kernel.kptr_restrict=0",
        ),
        None => Check::new("kallsyms", "unreadable", Status::Warn)
            .hint("kernel frames will be unnamed; mount /proc"),
    }
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
