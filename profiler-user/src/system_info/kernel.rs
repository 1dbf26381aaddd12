//! The running kernel: its version, the minimum version of each thing
//! hostprof does, and the `bpf_probe_read_user()` freeze bug that rules out
//! the table (eh_frame) unwinder.
//!
//! # Versions
//!
//! [`RunningKernel`] reads `/proc/sys/kernel/osrelease` once per process
//! and refines its version from the distribution's own version strings
//! ([`stable_version`]). [`KERNEL_MINIMUMS`] is the one table of minimum
//! versions; the `kernel` and `table unwinder` rows of `hostprof
//! system-info`, [`super::preflight`] and [`check_running_kernel`] all read
//! it.
//!
//! # The `bpf_probe_read_user()` freeze bug
//!
//! The table unwinder reads user stacks with `bpf_probe_read_user()` from
//! the perf-event program, which runs in NMI context. On Linux 5.19 up to
//! 6.3.x that helper's `copy_from_user_nofault()` lacked the
//! `nmi_uaccess_okay()` check and used `access_ok()`, which is meant for task
//! context only; reading user memory from NMI could hang or freeze the whole
//! machine (Debian bug #1033398, parca-dev/parca-agent#1675). The upstream
//! fix is d319f344561de23e810515d109c7278919bff7b0, "mm: Fix
//! copy_from_user_nofault().", released in 6.4. It was backported to 6.1.36
//! and 6.3.10. The 5.19, 6.0 and 6.2 series had reached end of life and never
//! received it.
//!
//! ## Detection
//!
//! This follows opentelemetry-ebpf-profiler, which refuses such kernels
//! (`hasProbeReadBug` in `tracer/helper.go`, `checkForMaccessPatch` in
//! `tracer/maccess.go`, and `maccess/maccess_amd64.go`):
//!
//! 1. **Version table** ([`version_has_probe_read_bug`]). These versions are
//!    affected: 5.19.x, 6.0.x, 6.1.0–6.1.35, 6.2.x and 6.3.0–6.3.9. Every
//!    other version is unaffected: 5.18 and older, 6.1.36+, 6.3.10+, and 6.4
//!    and newer.
//! 2. **Distribution stable version** ([`stable_version`]). Debian's release
//!    string carries no stable patch level: "6.1.0-18-amd64" is Linux
//!    6.1.76. We take the upstream version from the "Debian 6.1.76-1" in
//!    `/proc/version`, or from Ubuntu's `/proc/version_signature` (its last
//!    field, e.g. "6.2.16"). Step 1 is then applied again to that version.
//!    The otel profiler has no such step: on such kernels it relies on step 3.
//! 3. **Machine-code check, x86-64 only**
//!    ([`super::kernel_code::inspect_running_kernel`]). Distribution kernels
//!    carry backports that their version does not show, so when the version
//!    is still in the range we look at the code itself: the fix adds a call
//!    from `copy_from_user_nofault()` to `nmi_uaccess_okay()`, found through
//!    `/proc/kallsyms` and `/proc/kcore`. The otel profiler reads the bytes
//!    with a BPF program instead of `/proc/kcore`.
//!
//! This check fails closed. If the version is in the range and the code
//! check cannot prove the fix is present, the kernel counts as affected.
//! That covers: kcore missing, kernel addresses hidden, lockdown, and other
//! architectures. The otel profiler does the same, but also decodes arm64
//! code.
//!
//! # API
//!
//! - [`KernelVersion`]: `major.minor.patch`, with [`KernelVersion::parse`]
//!   for `uname -r` strings and [`KernelVersion::running`].
//! - [`Feature`], [`KernelMinimum`] and [`KERNEL_MINIMUMS`]: the minimum
//!   kernel of each feature, and why.
//! - [`RunningKernel`]: the release string and versions of this host's
//!   kernel, read once.
//! - [`stable_version`], [`debian_upstream_version`] and
//!   [`ubuntu_upstream_version`] find the stable version a distribution
//!   reports outside the release string.
//! - [`version_has_probe_read_bug`] is the raw version table.
//! - [`FixEvidence`] records what inspecting the kernel's code showed.
//! - [`probe_read_user_hazard`] is the pure decision. It returns
//!   `Some(`[`ProbeReadHazard`]`)` when the table unwinder must be refused.
//! - [`check_table_unwinder`] applies the minimum version and the hazard
//!   decision to a [`RunningKernel`]; [`check_running_kernel`] does so for
//!   this host. Both return [`KernelCheckError`].

use std::fmt;
use std::sync::OnceLock;

use super::kernel_code::{self, CodeCheckError};

/// Where the running kernel's release string (`uname -r`) is read from.
pub const OSRELEASE_PATH: &str = "/proc/sys/kernel/osrelease";
/// `/proc/version`. On Debian its build description ends with the
/// package version, e.g. "Debian 6.1.76-1".
pub const PROC_VERSION_PATH: &str = "/proc/version";
/// Ubuntu's `/proc/version_signature`, e.g.
/// "Ubuntu 6.2.0-39.40~22.04.1-generic 6.2.16". Its last field is the
/// upstream stable version.
pub const VERSION_SIGNATURE_PATH: &str = "/proc/version_signature";
/// The upstream commit that fixed the bug: "mm: Fix copy_from_user_nofault()."
pub const FIX_COMMIT: &str = "d319f344561de23e810515d109c7278919bff7b0";

/// A kernel release parsed from `uname -r` / `/proc/sys/kernel/osrelease`,
/// e.g. "6.1.0-18-amd64", "5.19.17" or "6.18.44-fc-v657". Only the leading
/// `major.minor[.patch]` is kept. Versions order numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    /// The major version: 6 in 6.1.76.
    pub major: u32,
    /// The minor version: 1 in 6.1.76.
    pub minor: u32,
    /// The stable patch level: 76 in 6.1.76. It is 0 when the release has
    /// none ("6.4") or when a distribution leaves it out ("6.1.0-18-amd64").
    pub patch: u32,
}

impl KernelVersion {
    /// The version `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses the leading `major.minor[.patch]` of a release string and
    /// ignores what follows, e.g. "-18-amd64", "-300.fc39.x86_64", "+" or
    /// "-rc7". Returns `None` when the string does not start with at least
    /// `major.minor`.
    pub fn parse(release: &str) -> Option<Self> {
        let s = release.trim();
        let (major, rest) = leading_number(s)?;
        let rest = rest.strip_prefix('.')?;
        let (minor, rest) = leading_number(rest)?;
        let patch = match rest.strip_prefix('.').and_then(leading_number) {
            Some((patch, _)) => patch,
            None => 0,
        };
        Some(Self::new(major, minor, patch))
    }

    /// The running kernel's version, parsed from its release string (see
    /// [`RunningKernel::get`], which reads it once per process).
    pub fn running() -> Result<Self, KernelCheckError> {
        RunningKernel::get().map(|kernel| kernel.version)
    }

    /// Whether both versions are in the same stable series (same
    /// `major.minor`).
    pub const fn same_series(self, other: Self) -> bool {
        self.major == other.major && self.minor == other.minor
    }

    /// Whether `self` is at least `other`; usable in `const` contexts.
    const fn at_least(self, other: Self) -> bool {
        if self.major != other.major {
            return self.major > other.major;
        }
        if self.minor != other.minor {
            return self.minor > other.minor;
        }
        self.patch >= other.patch
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Splits off the decimal number at the start of `s`. Returns `None` when
/// `s` does not start with a digit or the number does not fit in a `u32`.
fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// Something hostprof does that needs a minimum kernel version; the index
/// of its row in [`KERNEL_MINIMUMS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Sampling at all, with either unwinder.
    Sampling,
    /// The table (eh_frame) unwinder, `--unwinder tables`.
    TableUnwinder,
    /// The kernel records the file of each sampled user frame, so frames
    /// of processes gone before they were read still resolve.
    RecordedFiles,
    /// The kernel names kernel frames itself (`%pS`), rather than
    /// hostprof reading `/proc/kallsyms`, whose addresses
    /// `kernel.kptr_restrict` can hide.
    KernelNames,
    /// Everything, on a kernel hostprof is tested on.
    Recommended,
}

impl Feature {
    /// This feature's row of [`KERNEL_MINIMUMS`].
    pub const fn minimum(self) -> &'static KernelMinimum {
        &KERNEL_MINIMUMS[self as usize]
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feature::Sampling => "sampling",
            Feature::TableUnwinder => "the table unwinder",
            Feature::RecordedFiles => "recording the files of sampled frames",
            Feature::KernelNames => "kernel frames named by the kernel",
            Feature::Recommended => "full support",
        })
    }
}

/// The oldest kernel a [`Feature`] runs on, and what it needs from that
/// kernel. Displays as e.g. "Linux 5.17+ for the table unwinder
/// (bpf_loop)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMinimum {
    /// What needs the version.
    pub feature: Feature,
    /// The oldest version it runs on.
    pub version: KernelVersion,
    /// What that version brought.
    pub why: &'static str,
}

impl fmt::Display for KernelMinimum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let KernelVersion {
            major,
            minor,
            patch,
        } = self.version;
        write!(f, "Linux {major}.{minor}")?;
        if patch != 0 {
            write!(f, ".{patch}")?;
        }
        write!(f, "+ for {} ({})", self.feature, self.why)
    }
}

/// Every minimum kernel version hostprof has, one row per [`Feature`] in
/// its declaration order (use [`Feature::minimum`]).
///
/// - Sampling needs the BPF ring buffer (new processes are announced on
///   one) and the CAP_BPF and CAP_PERFMON capabilities: 5.8.
/// - The table unwinder steps one frame per `bpf_loop` iteration: 5.17.
/// - Recording the files of sampled frames looks them up with
///   `bpf_find_vma`: 5.17 too.
///   Its other helpers are older (`bpf_task_pt_regs` 5.15,
///   `bpf_get_current_task_btf` 5.11).
/// - Kernel frames named by the kernel (`bpf_snprintf`'s `%pS`, 5.13, in a
///   `bpf_loop`): 5.17; below it they are named from `/proc/kallsyms`.
/// - 6.1 is the oldest kernel hostprof is tested on.
pub const KERNEL_MINIMUMS: [KernelMinimum; 5] = [
    KernelMinimum {
        feature: Feature::Sampling,
        version: KernelVersion::new(5, 8, 0),
        why: "BPF ring buffer, CAP_BPF and CAP_PERFMON",
    },
    KernelMinimum {
        feature: Feature::TableUnwinder,
        version: KernelVersion::new(5, 17, 0),
        why: "bpf_loop",
    },
    KernelMinimum {
        feature: Feature::RecordedFiles,
        version: KernelVersion::new(5, 17, 0),
        why: "bpf_find_vma",
    },
    KernelMinimum {
        feature: Feature::KernelNames,
        version: KernelVersion::new(5, 17, 0),
        why: "bpf_snprintf and bpf_loop",
    },
    KernelMinimum {
        feature: Feature::Recommended,
        version: KernelVersion::new(6, 1, 0),
        why: "the oldest kernel hostprof is tested on",
    },
];

// Each row sits at its feature's index, and the minimums only go up.
const _: () = {
    let mut i = 0;
    while i < KERNEL_MINIMUMS.len() {
        assert!(KERNEL_MINIMUMS[i].feature as usize == i);
        assert!(
            i == 0
                || KERNEL_MINIMUMS[i]
                    .version
                    .at_least(KERNEL_MINIMUMS[i - 1].version)
        );
        i += 1;
    }
};

/// This host's kernel: its release string and versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningKernel {
    /// The release string as the kernel reports it, e.g. "6.1.0-18-amd64".
    pub release: String,
    /// The version parsed from [`Self::release`], e.g. 6.1.0.
    pub version: KernelVersion,
    /// The stable version, refined from distribution sources (see
    /// [`stable_version`]), e.g. 6.1.76.
    pub stable: KernelVersion,
}

impl RunningKernel {
    /// Builds the description from the contents of `osrelease` and, when
    /// present, `/proc/version` and `/proc/version_signature`. Pure.
    pub fn from_sources(
        release: &str,
        proc_version: Option<&str>,
        version_signature: Option<&str>,
    ) -> Result<Self, KernelCheckError> {
        let release = release.trim();
        let version = KernelVersion::parse(release)
            .ok_or_else(|| KernelCheckError::UnrecognisedRelease(release.to_owned()))?;
        Ok(Self {
            release: release.to_owned(),
            version,
            stable: stable_version(version, proc_version, version_signature),
        })
    }

    /// This host's kernel. The files are read on the first successful call
    /// only; later calls return the same value.
    pub fn get() -> Result<&'static Self, KernelCheckError> {
        static RUNNING: OnceLock<RunningKernel> = OnceLock::new();
        if let Some(kernel) = RUNNING.get() {
            return Ok(kernel);
        }
        let release =
            std::fs::read_to_string(OSRELEASE_PATH).map_err(KernelCheckError::ReadRelease)?;
        let proc_version = std::fs::read_to_string(PROC_VERSION_PATH).ok();
        let signature = std::fs::read_to_string(VERSION_SIGNATURE_PATH).ok();
        let kernel = Self::from_sources(&release, proc_version.as_deref(), signature.as_deref())?;
        if kernel.stable != kernel.version {
            log::debug!(
                "kernel release {} is stable version {}",
                kernel.release,
                kernel.stable
            );
        }
        Ok(RUNNING.get_or_init(|| kernel))
    }
}

/// Whether `version`, a full stable version, has the
/// `bpf_probe_read_user()` freeze bug according to its number alone.
/// Affected: 5.19.x, 6.0.x, 6.1.0–6.1.35, 6.2.x and 6.3.0–6.3.9.
pub fn version_has_probe_read_bug(version: KernelVersion) -> bool {
    match (version.major, version.minor) {
        (5, minor) => minor >= 19,
        (6, 0) | (6, 2) => true,
        // Backported to 6.1.36 (stable commit 2e7ad879e1b0).
        (6, 1) => version.patch < 36,
        // Backported to 6.3.10 (stable commit 3acb3dd3145b).
        (6, 3) => version.patch < 10,
        // 6.4 and later carry the fix; 4.x and older never had the bug.
        _ => false,
    }
}

/// The upstream version in a Debian `/proc/version` line, e.g. 6.1.76 from
/// "... #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)". The compiler
/// description earlier in the line ("gcc-12 (Debian 12.2.0-14) 12.2.0") also
/// contains "Debian ", so the last match that parses wins.
pub fn debian_upstream_version(proc_version: &str) -> Option<KernelVersion> {
    proc_version
        .match_indices("Debian ")
        .filter_map(|(at, marker)| KernelVersion::parse(&proc_version[at + marker.len()..]))
        .last()
}

/// The upstream version in Ubuntu's `/proc/version_signature`, e.g. 6.2.16
/// from "Ubuntu 6.2.0-39.40~22.04.1-generic 6.2.16". This is its last
/// field.
pub fn ubuntu_upstream_version(version_signature: &str) -> Option<KernelVersion> {
    let last = version_signature.split_whitespace().last()?;
    let version = KernelVersion::parse(last)?;
    // Require the whole field to be a version, not a release like
    // "6.2.0-39-generic".
    let plain = last.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    plain.then_some(version)
}

/// The stable version of a kernel whose release string parses as
/// `release`.
///
/// Distribution sources come from `/proc/version` (Debian) and
/// `/proc/version_signature` (Ubuntu). A source counts only if it names the
/// same `major.minor` series. Among those, the highest patch level wins;
/// with none, `release` is returned.
pub fn stable_version(
    release: KernelVersion,
    proc_version: Option<&str>,
    version_signature: Option<&str>,
) -> KernelVersion {
    let debian = proc_version.and_then(debian_upstream_version);
    let ubuntu = version_signature.and_then(ubuntu_upstream_version);
    [debian, ubuntu]
        .into_iter()
        .flatten()
        .filter(|v| v.same_series(release))
        .fold(release, |best, v| best.max(v))
}

/// What inspecting the running kernel's `copy_from_user_nofault()` showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FixEvidence {
    /// The code was not inspected, or inspecting it failed. Only the
    /// version counts.
    NotInspected,
    /// The machine code calls `nmi_uaccess_okay()`: the fix is present even
    /// though the version is in the affected range.
    Patched,
    /// The machine code was read and has no call to `nmi_uaccess_okay()`.
    Unpatched,
}

/// Why the table unwinder is refused on this kernel.
///
/// The table unwinder reads user memory with `bpf_probe_read_user()` in
/// the perf-event program, and on this kernel that can freeze the machine.
/// The `Display` text names the kernel version, the bug and both ways out:
/// a fixed kernel, or `--unwinder frame-pointers`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ProbeReadHazard {
    /// The stable version that was judged (see [`stable_version`]).
    pub version: KernelVersion,
    /// The release string as the kernel reports it, when known.
    pub release: Option<String>,
    /// What inspecting the kernel's code showed.
    pub evidence: FixEvidence,
}

impl fmt::Display for ProbeReadHazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Linux {}", self.version)?;
        if let Some(release) = &self.release {
            write!(f, " (release {release})")?;
        }
        write!(
            f,
            " has a known bug: bpf_probe_read_user() called from a \
             perf-event (NMI) program can hang or freeze the machine. Until \
             the fix, Linux 5.19 through 6.3.x had a \
             copy_from_user_nofault() without the nmi_uaccess_okay() check. hostprof's eh_frame unwinder reads \
             user stacks this way, so it refuses to run"
        )?;
        match self.evidence {
            FixEvidence::Unpatched => write!(
                f,
                ". The kernel's copy_from_user_nofault() has no call to \
                 nmi_uaccess_okay(), so the fix is missing"
            )?,
            FixEvidence::NotInspected => write!(
                f,
                ". The kernel's code could not be checked for a backported \
                 fix"
            )?,
            FixEvidence::Patched => {}
        }
        write!(
            f,
            ". The upstream fix is commit {} (\"mm: Fix \
             copy_from_user_nofault().\"), in Linux 6.4 and later. Stable \
             6.1.36+ and 6.3.10+ also have it; 5.19, 6.0 and 6.2 never got \
             it. Upgrade to a fixed kernel, or run with `--unwinder \
             frame-pointers`, which leaves user stacks to the kernel's \
             bpf_get_stack()",
            &FIX_COMMIT[..12]
        )
    }
}

/// Decides whether the table unwinder must be refused.
///
/// `version` is the kernel's stable version (see [`stable_version`]) and
/// `evidence` is what inspecting its code showed. Returns `None` if:
/// - the version is outside the affected range ([`version_has_probe_read_bug`]),
///   whatever the evidence says, or
/// - the code is proven patched ([`FixEvidence::Patched`]).
///
/// Otherwise returns the hazard.
pub fn probe_read_user_hazard(
    version: KernelVersion,
    evidence: FixEvidence,
) -> Option<ProbeReadHazard> {
    if !version_has_probe_read_bug(version) || evidence == FixEvidence::Patched {
        return None;
    }
    Some(ProbeReadHazard {
        version,
        release: None,
        evidence,
    })
}

/// Why the running kernel cannot be judged, or cannot run the table
/// unwinder. Each message names the way out.
#[derive(Debug, thiserror::Error)]
pub enum KernelCheckError {
    /// The running kernel has the bug, and the table unwinder must not run.
    #[error(transparent)]
    Hazard(#[from] ProbeReadHazard),
    /// `/proc/sys/kernel/osrelease` could not be read.
    #[error(
        "cannot read the running kernel's release from {OSRELEASE_PATH}: mount procfs at /proc, \
         or run with --unwinder frame-pointers, which does not check the kernel's version"
    )]
    ReadRelease(#[source] std::io::Error),
    /// The release string does not start with `major.minor`.
    #[error(
        "cannot determine the running kernel's version from {OSRELEASE_PATH}: unrecognised \
         release {0:?}; run with --unwinder frame-pointers, which does not check the kernel's \
         version"
    )]
    UnrecognisedRelease(String),
    /// The running kernel is older than a feature's minimum.
    #[error(
        "Linux {version} is too old: hostprof needs {needs}; upgrade the kernel or run with \
         --unwinder frame-pointers"
    )]
    TooOld {
        /// The running kernel's version.
        version: KernelVersion,
        /// The minimum it is below.
        needs: &'static KernelMinimum,
    },
}

/// Checks that the table unwinder can run on this host: the kernel is
/// recent enough ([`Feature::TableUnwinder`]) and free of the
/// `bpf_probe_read_user()` freeze bug, inspecting its code with
/// [`kernel_code::inspect_running_kernel`] when the version alone cannot
/// tell.
///
/// Returns `Ok(())` when the table unwinder is safe.
pub fn check_running_kernel() -> Result<(), KernelCheckError> {
    check_table_unwinder(RunningKernel::get()?, kernel_code::inspect_running_kernel)
}

/// Decides whether the table unwinder can run on `kernel`:
/// 1. Its release must be at least [`Feature::TableUnwinder`]'s minimum.
/// 2. Its stable version ([`RunningKernel::stable`]) is looked up in the
///    bug's version table; outside the affected range it is safe.
/// 3. In the range, `inspect` looks at the kernel's code. A failure is
///    logged and counts as [`FixEvidence::NotInspected`].
///
/// Returns the hazard unless the code proves the fix is present.
pub fn check_table_unwinder(
    kernel: &RunningKernel,
    inspect: impl FnOnce() -> Result<FixEvidence, CodeCheckError>,
) -> Result<(), KernelCheckError> {
    let needs = Feature::TableUnwinder.minimum();
    if kernel.version < needs.version {
        return Err(KernelCheckError::TooOld {
            version: kernel.version,
            needs,
        });
    }
    let version = kernel.stable;
    if !version_has_probe_read_bug(version) {
        return Ok(());
    }
    let evidence = match inspect() {
        Ok(evidence) => evidence,
        Err(err) => {
            log::warn!(
                "Linux {version} is in the range affected by the bpf_probe_read_user() \
                 freeze bug, and its code could not be checked for a backported fix: {err}"
            );
            FixEvidence::NotInspected
        }
    };
    match probe_read_user_hazard(version, evidence) {
        None => {
            log::info!(
                "Linux {version} (release {}) carries the backported \
                 copy_from_user_nofault() fix; the table unwinder is safe",
                kernel.release
            );
            Ok(())
        }
        Some(mut hazard) => {
            hazard.release = Some(kernel.release.clone());
            Err(hazard.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion::new(major, minor, patch)
    }

    #[test]
    fn parses_real_release_strings() {
        let cases = [
            ("6.1.0-18-amd64", v(6, 1, 0)),
            ("5.15.0-91-generic", v(5, 15, 0)),
            ("6.5.6-300.fc39.x86_64", v(6, 5, 6)),
            ("6.18.44-fc-v657", v(6, 18, 44)),
            ("4.19.0", v(4, 19, 0)),
            ("5.19.17", v(5, 19, 17)),
            ("6.1.56-82.125.amzn2023.x86_64", v(6, 1, 56)),
            ("5.14.0-362.8.1.el9_3.x86_64", v(5, 14, 0)),
            ("6.1.21-v8+", v(6, 1, 21)),
            ("6.4-rc7", v(6, 4, 0)),
            ("6.4", v(6, 4, 0)),
            ("6.8.0-1015-azure\n", v(6, 8, 0)),
            ("2.6.32.27-0.2-default", v(2, 6, 32)),
        ];
        for (release, want) in cases {
            assert_eq!(KernelVersion::parse(release), Some(want), "{release}");
        }
    }

    #[test]
    fn rejects_non_versions() {
        for release in [
            "",
            "6",
            "6.",
            "six.one",
            "v6.1.0",
            "6.x.1",
            "99999999999.1.0",
        ] {
            assert_eq!(KernelVersion::parse(release), None, "{release:?}");
        }
    }

    #[test]
    fn versions_order_numerically() {
        assert!(v(6, 10, 0) > v(6, 9, 99));
        assert!(v(5, 19, 0) > v(5, 18, 19));
        assert_eq!(v(6, 1, 76).to_string(), "6.1.76");
    }

    #[test]
    fn affected_versions() {
        for version in [
            v(5, 19, 0),
            v(5, 19, 17),
            v(6, 0, 0),
            v(6, 0, 19),
            v(6, 1, 0),
            v(6, 1, 25),
            v(6, 1, 35),
            v(6, 2, 0),
            v(6, 2, 16),
            v(6, 3, 0),
            v(6, 3, 9),
        ] {
            assert!(version_has_probe_read_bug(version), "{version}");
        }
    }

    #[test]
    fn unaffected_versions() {
        for version in [
            v(4, 19, 0),
            v(5, 4, 0),
            v(5, 15, 0),
            v(5, 18, 0),
            v(5, 18, 19),
            v(6, 1, 36),
            v(6, 1, 76),
            v(6, 3, 10),
            v(6, 3, 13),
            v(6, 4, 0),
            v(6, 5, 6),
            v(6, 18, 0),
            v(6, 18, 44),
            v(7, 0, 0),
        ] {
            assert!(!version_has_probe_read_bug(version), "{version}");
        }
    }

    #[test]
    fn hazard_decision() {
        // Affected version: refused unless the code proves the backport.
        for version in [v(5, 19, 0), v(6, 0, 5), v(6, 3, 9)] {
            let hazard = probe_read_user_hazard(version, FixEvidence::NotInspected)
                .expect("affected version must be refused");
            assert_eq!(hazard.version, version);
            assert_eq!(hazard.evidence, FixEvidence::NotInspected);
            assert!(probe_read_user_hazard(version, FixEvidence::Unpatched).is_some());
            assert_eq!(probe_read_user_hazard(version, FixEvidence::Patched), None);
        }
        // Unaffected version: allowed whatever the evidence.
        for version in [
            v(5, 18, 19),
            v(6, 1, 36),
            v(6, 3, 10),
            v(6, 4, 0),
            v(6, 18, 44),
        ] {
            for evidence in [
                FixEvidence::NotInspected,
                FixEvidence::Unpatched,
                FixEvidence::Patched,
            ] {
                assert_eq!(probe_read_user_hazard(version, evidence), None, "{version}");
            }
        }
    }

    #[test]
    fn hazard_message_names_version_bug_and_fixes() {
        let mut hazard = probe_read_user_hazard(v(6, 1, 20), FixEvidence::Unpatched).unwrap();
        hazard.release = Some("6.1.0-7-amd64".to_owned());
        let text = hazard.to_string();
        for needle in [
            "Linux 6.1.20",
            "6.1.0-7-amd64",
            "bpf_probe_read_user()",
            "freeze",
            "nmi_uaccess_okay()",
            "d319f344561d",
            "6.4",
            "6.1.36",
            "6.3.10",
            "--unwinder frame-pointers",
            "no call to",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
        let not_inspected = probe_read_user_hazard(v(6, 2, 16), FixEvidence::NotInspected)
            .unwrap()
            .to_string();
        assert!(
            not_inspected.contains("could not be checked"),
            "{not_inspected}"
        );
        let err: KernelCheckError = hazard.clone().into();
        assert_eq!(err.to_string(), hazard.to_string());
    }

    const DEBIAN_PROC_VERSION: &str =
        "Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) \
         (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) \
         #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)\n";

    #[test]
    fn debian_version_from_proc_version() {
        assert_eq!(
            debian_upstream_version(DEBIAN_PROC_VERSION),
            Some(v(6, 1, 76))
        );
        let backport = "Linux version 6.1.0-0.deb11.7-amd64 (debian-kernel@lists.debian.org) \
             (gcc-10 (Debian 10.2.1-6) 10.2.1 20210110, GNU ld (GNU Binutils for Debian) 2.35.2) \
             #1 SMP PREEMPT_DYNAMIC Debian 6.1.20-2~bpo11+1 (2023-04-23)";
        assert_eq!(debian_upstream_version(backport), Some(v(6, 1, 20)));
        let experimental = "Linux version 6.4.0-rc7-amd64 (debian-kernel@lists.debian.org) \
             (gcc-12 (Debian 12.3.0-4) 12.3.0) #1 SMP PREEMPT_DYNAMIC Debian 6.4~rc7-1~exp1 (2023-06-19)";
        assert_eq!(debian_upstream_version(experimental), Some(v(6, 4, 0)));
        let ubuntu = "Linux version 5.15.0-91-generic (buildd@lcy02-amd64-045) \
             (gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0, GNU ld (GNU Binutils for Ubuntu) 2.38) \
             #101-Ubuntu SMP Tue Nov 14 13:30:08 UTC 2023";
        assert_eq!(debian_upstream_version(ubuntu), None);
        let here = "Linux version 6.18.44-fc-v657 (builder@sandboxing) (gcc (GCC) 15.3.0, \
             GNU ld (GNU Binutils) 2.46) #1 SMP PREEMPT_DYNAMIC @0";
        assert_eq!(debian_upstream_version(here), None);
    }

    #[test]
    fn ubuntu_version_from_signature() {
        assert_eq!(
            ubuntu_upstream_version("Ubuntu 6.2.0-39.40~22.04.1-generic 6.2.16\n"),
            Some(v(6, 2, 16))
        );
        assert_eq!(
            ubuntu_upstream_version("Ubuntu 5.15.0-91.101-generic 5.15.131"),
            Some(v(5, 15, 131))
        );
        assert_eq!(ubuntu_upstream_version("Ubuntu 6.2.0-39.40-generic"), None);
        assert_eq!(ubuntu_upstream_version(""), None);
    }

    #[test]
    fn stable_version_prefers_distribution_patch_level() {
        // Debian 12's 6.1.0-18 is 6.1.76: fixed, though "6.1.0" is not.
        let release = KernelVersion::parse("6.1.0-18-amd64").unwrap();
        assert!(version_has_probe_read_bug(release));
        let stable = stable_version(release, Some(DEBIAN_PROC_VERSION), None);
        assert_eq!(stable, v(6, 1, 76));
        assert_eq!(
            probe_read_user_hazard(stable, FixEvidence::NotInspected),
            None
        );

        // Debian 12's 6.1.0-7 was 6.1.20: still affected.
        let old = DEBIAN_PROC_VERSION.replace("6.1.76-1", "6.1.20-2");
        assert_eq!(stable_version(release, Some(&old), None), v(6, 1, 20));

        // Ubuntu's HWE 6.2 kernel: 6.2.16, a series that never got the fix.
        let release = KernelVersion::parse("6.2.0-39-generic").unwrap();
        let stable = stable_version(
            release,
            None,
            Some("Ubuntu 6.2.0-39.40~22.04.1-generic 6.2.16"),
        );
        assert_eq!(stable, v(6, 2, 16));
        assert!(probe_read_user_hazard(stable, FixEvidence::NotInspected).is_some());

        // A source from another series (or the compiler's version) is
        // ignored; with no source the release stands.
        let release = v(6, 3, 0);
        assert_eq!(
            stable_version(
                release,
                Some("... (Debian 12.2.0-14) ... Debian 6.1.76-1"),
                None
            ),
            release
        );
        assert_eq!(stable_version(release, None, None), release);
        // A source never lowers the release's own patch level.
        assert_eq!(
            stable_version(v(6, 1, 40), Some("#1 SMP Debian 6.1.3-1"), None),
            v(6, 1, 40)
        );
    }

    #[test]
    fn minimums_table() {
        assert_eq!(Feature::Sampling.minimum().version, v(5, 8, 0));
        assert_eq!(Feature::TableUnwinder.minimum().version, v(5, 17, 0));
        assert_eq!(Feature::RecordedFiles.minimum().version, v(5, 17, 0));
        assert_eq!(Feature::KernelNames.minimum().version, v(5, 17, 0));
        assert_eq!(Feature::Recommended.minimum().version, v(6, 1, 0));
        for (index, row) in KERNEL_MINIMUMS.iter().enumerate() {
            assert_eq!(row.feature as usize, index, "{row}");
        }
        assert_eq!(
            Feature::TableUnwinder.minimum().to_string(),
            "Linux 5.17+ for the table unwinder (bpf_loop)"
        );
        let with_patch = KernelMinimum {
            feature: Feature::Sampling,
            version: v(6, 1, 36),
            why: "a fix",
        };
        assert_eq!(with_patch.to_string(), "Linux 6.1.36+ for sampling (a fix)");
    }

    #[test]
    fn running_kernel_from_sources() {
        let kernel =
            RunningKernel::from_sources("6.1.0-18-amd64\n", Some(DEBIAN_PROC_VERSION), None)
                .unwrap();
        assert_eq!(kernel.release, "6.1.0-18-amd64");
        assert_eq!(kernel.version, v(6, 1, 0));
        assert_eq!(kernel.stable, v(6, 1, 76));

        let err = RunningKernel::from_sources("weird\n", None, None).unwrap_err();
        assert!(
            matches!(&err, KernelCheckError::UnrecognisedRelease(release) if release == "weird"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("--unwinder frame-pointers"), "{text}");
    }

    #[test]
    fn table_unwinder_decision() {
        let kernel = |release: &str, proc_version: Option<&str>| {
            RunningKernel::from_sources(release, proc_version, None).unwrap()
        };
        let never = || -> Result<FixEvidence, CodeCheckError> { panic!("code inspected") };

        // Too old for bpf_loop: refused before anything else.
        let err = check_table_unwinder(&kernel("5.15.0-91-generic", None), never).unwrap_err();
        assert!(
            matches!(
                err,
                KernelCheckError::TooOld { version, needs }
                    if version == v(5, 15, 0) && needs.feature == Feature::TableUnwinder
            ),
            "{err:?}"
        );
        let text = err.to_string();
        for needle in [
            "Linux 5.15.0",
            "5.17+",
            "bpf_loop",
            "--unwinder frame-pointers",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }

        // Outside the bug's range, by release or by distribution version:
        // the code is not inspected.
        check_table_unwinder(&kernel("6.18.44-fc-v657", None), never).unwrap();
        check_table_unwinder(&kernel("6.1.0-18-amd64", Some(DEBIAN_PROC_VERSION)), never).unwrap();

        // In the range: the code decides, and a failed inspection fails
        // closed.
        let affected = kernel("6.1.0-7-amd64", None);
        check_table_unwinder(&affected, || Ok(FixEvidence::Patched)).unwrap();
        let err = check_table_unwinder(&affected, || Ok(FixEvidence::Unpatched)).unwrap_err();
        let KernelCheckError::Hazard(hazard) = err else {
            panic!("{err:?}");
        };
        assert_eq!(hazard.version, v(6, 1, 0));
        assert_eq!(hazard.release.as_deref(), Some("6.1.0-7-amd64"));
        assert_eq!(hazard.evidence, FixEvidence::Unpatched);
        let err =
            check_table_unwinder(&affected, || Err(CodeCheckError::SymbolsMissing)).unwrap_err();
        assert!(
            matches!(
                err,
                KernelCheckError::Hazard(ProbeReadHazard {
                    evidence: FixEvidence::NotInspected,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn running_kernel_parses_and_check_agrees_with_table() {
        let running = KernelVersion::running().expect("osrelease readable on Linux");
        let result = check_running_kernel();
        if !version_has_probe_read_bug(running) {
            // This includes the 6.18 development machine.
            assert!(result.is_ok(), "{result:?}");
        }
    }
}
