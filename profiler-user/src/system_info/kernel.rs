//! Refuses eh_frame unwinding on kernels with the `bpf_probe_read_user()`
//! freeze bug.
//!
//! The eh_frame unwinder reads user stacks with `bpf_probe_read_user()` from
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
//! # Detection
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
//! 3. **Machine-code check, x86-64 only** ([`inspect_running_kernel`]).
//!    Distribution kernels carry backports that their version does not show,
//!    so when the version is still in the range we look at the code itself.
//!    `/proc/kallsyms` gives the addresses of `copy_from_user_nofault` and
//!    `nmi_uaccess_okay`. We read the function's bytes from `/proc/kcore`
//!    and look for a `call rel32` to `nmi_uaccess_okay`
//!    ([`x86_64_calls_function`]). The fix adds that call, and the
//!    unpatched function makes no such call. The otel profiler reads the
//!    bytes with a BPF program instead of `/proc/kcore`.
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
//! - [`stable_version`], [`debian_upstream_version`] and
//!   [`ubuntu_upstream_version`] find the stable version a distribution
//!   reports outside the release string.
//! - [`version_has_probe_read_bug`] is the raw version table.
//! - [`FixEvidence`] records what inspecting the kernel's code showed.
//! - [`probe_read_user_hazard`] is the pure decision. It returns
//!   `Some(`[`ProbeReadHazard`]`)` when eh_frame unwinding must be refused.
//! - [`check_running_kernel`] does all of the above for the running kernel.
//!   It returns [`KernelCheckError`], which wraps the hazard or an I/O
//!   failure.
//! - [`inspect_running_kernel`], [`parse_kallsyms_line`] and
//!   [`x86_64_calls_function`] are the pieces of the code check.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where the running kernel's release string (`uname -r`) is read from.
pub const OSRELEASE_PATH: &str = "/proc/sys/kernel/osrelease";
/// `/proc/version`. On Debian its build description ends with the
/// package version, e.g. "Debian 6.1.76-1".
pub const PROC_VERSION_PATH: &str = "/proc/version";
/// Ubuntu's `/proc/version_signature`, e.g.
/// "Ubuntu 6.2.0-39.40~22.04.1-generic 6.2.16". Its last field is the
/// upstream stable version.
pub const VERSION_SIGNATURE_PATH: &str = "/proc/version_signature";
/// The kernel symbol table: the address, type and name of each symbol.
pub const KALLSYMS_PATH: &str = "/proc/kallsyms";
/// The kernel's memory as an ELF core file. It is readable by root unless
/// the kernel is locked down.
pub const KCORE_PATH: &str = "/proc/kcore";
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

    /// Reads the running kernel's version from
    /// `/proc/sys/kernel/osrelease`. The error kind is `InvalidData` when
    /// the release string cannot be parsed.
    pub fn running() -> io::Result<Self> {
        let release = std::fs::read_to_string(OSRELEASE_PATH)?;
        Self::parse(&release).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unrecognised kernel release {:?}", release.trim()),
            )
        })
    }

    /// Whether both versions are in the same stable series (same
    /// `major.minor`).
    pub const fn same_series(self, other: Self) -> bool {
        self.major == other.major && self.minor == other.minor
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

/// Why eh_frame unwinding is refused on this kernel.
///
/// The eh_frame unwinder reads user memory with `bpf_probe_read_user()` in
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

/// Decides whether eh_frame unwinding must be refused.
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

/// Why [`check_running_kernel`] failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelCheckError {
    /// The running kernel has the bug, and eh_frame unwinding must not run.
    #[error(transparent)]
    Hazard(#[from] ProbeReadHazard),
    /// The running kernel's release could not be read or parsed.
    #[error("cannot determine the running kernel's version from /proc/sys/kernel/osrelease: {0}")]
    Release(#[source] io::Error),
    /// The running kernel lacks what the table unwinder's BPF program uses.
    #[error(
        "Linux {0} is too old for the table unwinder, which needs 5.17+ (bpf_loop); \
         upgrade the kernel or run with --unwinder frame-pointers"
    )]
    TooOld(KernelVersion),
}

/// The oldest kernel the table unwinder runs on: `bpf_loop` came in 5.17.
pub const TABLE_UNWINDER_MIN: KernelVersion = KernelVersion::new(5, 17, 0);

/// Checks that the table unwinder can run on this kernel: recent enough
/// ([`TABLE_UNWINDER_MIN`]) and free of the `bpf_probe_read_user()`
/// freeze bug.
///
/// The steps for the bug:
/// 1. Read `/proc/sys/kernel/osrelease`.
/// 2. Refine the version from `/proc/version` and `/proc/version_signature`
///    when present.
/// 3. If the version is in the affected range, inspect the kernel's code
///    through `/proc/kallsyms` and `/proc/kcore`. Failures are logged and
///    count as [`FixEvidence::NotInspected`].
///
/// Returns `Ok(())` when eh_frame unwinding is safe.
pub fn check_running_kernel() -> Result<(), KernelCheckError> {
    let release = std::fs::read_to_string(OSRELEASE_PATH).map_err(KernelCheckError::Release)?;
    let release = release.trim();
    let parsed = KernelVersion::parse(release).ok_or_else(|| {
        KernelCheckError::Release(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unrecognised kernel release {release:?}"),
        ))
    })?;
    let proc_version = std::fs::read_to_string(PROC_VERSION_PATH).ok();
    let signature = std::fs::read_to_string(VERSION_SIGNATURE_PATH).ok();
    if parsed < TABLE_UNWINDER_MIN {
        return Err(KernelCheckError::TooOld(parsed));
    }
    let version = stable_version(parsed, proc_version.as_deref(), signature.as_deref());
    if version != parsed {
        log::debug!("kernel release {release} is stable version {version}");
    }
    if !version_has_probe_read_bug(version) {
        return Ok(());
    }

    let evidence = match inspect_running_kernel() {
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
                "Linux {version} (release {release}) carries the backported \
                 copy_from_user_nofault() fix; eh_frame unwinding is safe"
            );
            Ok(())
        }
        Some(mut hazard) => {
            hazard.release = Some(release.to_owned());
            Err(hazard.into())
        }
    }
}

/// How many bytes of `copy_from_user_nofault()` are read when its size is
/// unknown. In patched builds the call to `nmi_uaccess_okay()` comes within
/// the first ~0x40 bytes.
const DEFAULT_CODE_LEN: u64 = 256;
/// The most bytes read whatever size kallsyms suggests.
const MAX_CODE_LEN: u64 = 1024;

/// Inspects the running kernel's `copy_from_user_nofault()` for the fix.
///
/// Addresses come from `/proc/kallsyms` and code from `/proc/kcore`. Both
/// need root; kcore also needs CONFIG_PROC_KCORE and no lockdown.
/// - Returns [`FixEvidence::Patched`] or [`FixEvidence::Unpatched`] on
///   x86-64.
/// - Returns [`FixEvidence::NotInspected`] on other architectures.
/// - Returns an error when a file cannot be read or kernel addresses are
///   hidden.
pub fn inspect_running_kernel() -> io::Result<FixEvidence> {
    if std::env::consts::ARCH != "x86_64" {
        return Ok(FixEvidence::NotInspected);
    }
    let symbols = KernelSymbols::read(Path::new(KALLSYMS_PATH))?;
    let (Some(function), Some(callee)) = (symbols.copy_from_user_nofault, symbols.nmi_uaccess_okay)
    else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "copy_from_user_nofault or nmi_uaccess_okay is missing from /proc/kallsyms, \
             or kernel addresses are hidden (kptr_restrict)",
        ));
    };
    let len = symbols
        .function_end
        .map(|end| end.saturating_sub(function).clamp(1, MAX_CODE_LEN))
        .unwrap_or(DEFAULT_CODE_LEN);
    let code = read_kcore(Path::new(KCORE_PATH), function, len)?;
    let patched = x86_64_calls_function(&code, function, callee);
    log::debug!(
        "copy_from_user_nofault at {function:#x} ({} bytes read) {} nmi_uaccess_okay at {callee:#x}",
        code.len(),
        if patched { "calls" } else { "does not call" }
    );
    Ok(if patched {
        FixEvidence::Patched
    } else {
        FixEvidence::Unpatched
    })
}

/// One `/proc/kallsyms` line split into address, type letter and name,
/// e.g. `(0xffffffff815987b0, 'T', "copy_from_user_nofault")`. The module
/// suffix (`\t[ext4]`) is dropped. An unprivileged reader sees 0 for every
/// address.
pub fn parse_kallsyms_line(line: &str) -> Option<(u64, char, &str)> {
    let mut fields = line.split_whitespace();
    let address = u64::from_str_radix(fields.next()?, 16).ok()?;
    let mut kind = fields.next()?.chars();
    let kind_char = kind.next()?;
    if kind.next().is_some() {
        return None;
    }
    let name = fields.next()?;
    Some((address, kind_char, name))
}

/// The kallsyms entries the code check needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct KernelSymbols {
    copy_from_user_nofault: Option<u64>,
    /// The next higher symbol address after `copy_from_user_nofault`, which
    /// bounds its code.
    function_end: Option<u64>,
    nmi_uaccess_okay: Option<u64>,
}

impl KernelSymbols {
    fn read(path: &Path) -> io::Result<Self> {
        let reader = BufReader::new(open_with_context(path)?);
        let mut symbols = Self::default();
        for line in reader.lines() {
            symbols.add(&line?);
            if symbols.complete() {
                break;
            }
        }
        Ok(symbols)
    }

    /// Takes in one kallsyms line. Zero addresses (hidden pointers) are
    /// ignored.
    fn add(&mut self, line: &str) {
        let Some((address, kind, name)) = parse_kallsyms_line(line) else {
            return;
        };
        if address == 0 {
            return;
        }
        if let Some(start) = self.copy_from_user_nofault {
            if address > start && self.function_end.is_none_or(|end| address < end) {
                self.function_end = Some(address);
            }
        }
        if !matches!(kind, 't' | 'T') {
            return;
        }
        match name {
            "copy_from_user_nofault" => self.copy_from_user_nofault = Some(address),
            "nmi_uaccess_okay" => self.nmi_uaccess_okay = Some(address),
            _ => {}
        }
    }

    fn complete(&self) -> bool {
        self.copy_from_user_nofault.is_some()
            && self.function_end.is_some()
            && self.nmi_uaccess_okay.is_some()
    }
}

/// Whether x86-64 machine code loaded at `code_addr` contains a direct
/// `call rel32` (opcode E8) to `callee`.
///
/// Every E8 byte is tried as an instruction start. A false match would need
/// the four bytes after a stray E8 to encode this exact target, which is
/// negligible.
///
/// Besides `callee` itself, targets up to 16 bytes before it and 4 bytes
/// after it also count:
/// - before: call-depth tracking (`retbleed=stuff`) redirects direct calls
///   to a thunk in the callee's padding;
/// - after: with IBT, a call may skip the 4-byte ENDBR64.
pub fn x86_64_calls_function(code: &[u8], code_addr: u64, callee: u64) -> bool {
    code.windows(5).enumerate().any(|(at, insn)| {
        if insn[0] != 0xe8 {
            return false;
        }
        let rel = i32::from_le_bytes([insn[1], insn[2], insn[3], insn[4]]);
        let next = code_addr.wrapping_add(at as u64 + 5);
        let target = next.wrapping_add(rel as i64 as u64);
        target >= callee.wrapping_sub(16) && target <= callee.wrapping_add(4)
    })
}

/// Opens `path`; an error names the file.
fn open_with_context(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))
}

/// ELF `PT_LOAD`.
const PT_LOAD: u32 = 1;
/// `e_phnum` when the real count is in section header 0's `sh_info`.
const PN_XNUM: u16 = 0xffff;

/// Reads up to `len` bytes of kernel memory at virtual address `addr` from
/// an ELF64 little-endian core file such as `/proc/kcore`. The read stops
/// at the end of the segment holding `addr`.
fn read_kcore(path: &Path, addr: u64, len: u64) -> io::Result<Vec<u8>> {
    let file = open_with_context(path)?;
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };

    let mut ehdr = [0u8; 64];
    file.read_exact_at(&mut ehdr, 0)?;
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(invalid("not a little-endian ELF64 file"));
    }
    let phoff = u64_at(&ehdr, 0x20);
    let shoff = u64_at(&ehdr, 0x28);
    let phentsize = u64::from(u16_at(&ehdr, 0x36));
    let mut phnum = u64::from(u16_at(&ehdr, 0x38));
    if phnum == u64::from(PN_XNUM) {
        let mut shdr = [0u8; 64];
        file.read_exact_at(&mut shdr, shoff)?;
        phnum = u64::from(u32_at(&shdr, 0x2c));
    }
    if phentsize < 56 {
        return Err(invalid("program header entries too small"));
    }

    let mut phdr = [0u8; 56];
    for index in 0..phnum {
        file.read_exact_at(&mut phdr, phoff + index * phentsize)?;
        let Some(range) = segment_file_range(&phdr, addr, len) else {
            continue;
        };
        let mut code = vec![0u8; range.1 as usize];
        file.read_exact_at(&mut code, range.0)?;
        return Ok(code);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no segment maps address {addr:#x}", path.display()),
    ))
}

/// For an ELF64 program header: if it is a `PT_LOAD` segment whose file
/// image holds `addr`, returns the file offset of `addr` and how many of
/// the `len` bytes the segment holds.
fn segment_file_range(phdr: &[u8; 56], addr: u64, len: u64) -> Option<(u64, u64)> {
    if u32_at(phdr, 0) != PT_LOAD {
        return None;
    }
    let offset = u64_at(phdr, 0x08);
    let vaddr = u64_at(phdr, 0x10);
    let filesz = u64_at(phdr, 0x20);
    let skip = addr.checked_sub(vaddr)?;
    if skip >= filesz {
        return None;
    }
    Some((offset.checked_add(skip)?, len.min(filesz - skip)))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
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
    fn kallsyms_lines() {
        assert_eq!(
            parse_kallsyms_line("ffffffff815987b0 T copy_from_user_nofault"),
            Some((0xffff_ffff_8159_87b0, 'T', "copy_from_user_nofault"))
        );
        assert_eq!(
            parse_kallsyms_line("ffffffffc0a01000 t ext4_fill_super\t[ext4]"),
            Some((0xffff_ffff_c0a0_1000, 't', "ext4_fill_super"))
        );
        assert_eq!(
            parse_kallsyms_line("0000000000000000 T nmi_uaccess_okay"),
            Some((0, 'T', "nmi_uaccess_okay"))
        );
        assert_eq!(parse_kallsyms_line("garbage"), None);
        assert_eq!(parse_kallsyms_line("ffffffff81000000 TT x"), None);
    }

    #[test]
    fn kallsyms_collects_needed_symbols() {
        let mut symbols = KernelSymbols::default();
        for line in [
            "ffffffff81343910 T nmi_uaccess_okay",
            "ffffffff815987a0 t __cfi_copy_from_user_nofault",
            "ffffffff815987b0 T copy_from_user_nofault",
            "ffffffff815988a0 t __cfi_copy_to_user_nofault",
            "ffffffff815988b0 T copy_to_user_nofault",
        ] {
            symbols.add(line);
        }
        assert_eq!(
            symbols,
            KernelSymbols {
                copy_from_user_nofault: Some(0xffff_ffff_8159_87b0),
                function_end: Some(0xffff_ffff_8159_88a0),
                nmi_uaccess_okay: Some(0xffff_ffff_8134_3910),
            }
        );
        assert!(symbols.complete());

        // Hidden addresses (kptr_restrict) yield nothing.
        let mut hidden = KernelSymbols::default();
        hidden.add("0000000000000000 T copy_from_user_nofault");
        hidden.add("0000000000000000 T nmi_uaccess_okay");
        assert_eq!(hidden, KernelSymbols::default());
    }

    /// Encodes `call target` as if placed at `at`.
    fn call(at: u64, target: u64) -> [u8; 5] {
        let rel = target.wrapping_sub(at + 5) as i64 as i32;
        let mut insn = [0xe8, 0, 0, 0, 0];
        insn[1..].copy_from_slice(&rel.to_le_bytes());
        insn
    }

    #[test]
    fn finds_call_to_nmi_uaccess_okay() {
        let base = 0xffff_ffff_8159_87b0u64;
        let callee = 0xffff_ffff_8134_3910u64; // below: negative rel32
        let fentry = 0xffff_ffff_8107_1200u64;

        // Shaped like a patched build: call __fentry__, a bounds check,
        // then the call to nmi_uaccess_okay and `test al, al`.
        let mut code = Vec::new();
        code.extend_from_slice(&call(base, fentry));
        code.extend_from_slice(&[0x48, 0xb8, 0x00, 0xf0, 0xff, 0xff, 0xff, 0x7f, 0, 0]); // movabs
        code.extend_from_slice(&[0x48, 0x39, 0xd0, 0x73, 0x0c]); // cmp; jae
        code.extend_from_slice(&[0x49, 0x89, 0xfd]); // mov r13, rdi
        let at = base + code.len() as u64;
        code.extend_from_slice(&call(at, callee));
        code.extend_from_slice(&[0x84, 0xc0, 0x74, 0x46]); // test al, al; je
        assert!(x86_64_calls_function(&code, base, callee));

        // The same code without that call: unpatched.
        let unpatched: Vec<u8> = code[..code.len() - 9]
            .iter()
            .copied()
            .chain([0x84, 0xc0, 0x74, 0x46])
            .collect();
        assert!(!x86_64_calls_function(&unpatched, base, callee));
        // Same bytes, but judged at another load address: no match.
        assert!(!x86_64_calls_function(&code, base + 0x1000, callee));

        // Call-depth thunk in the callee's padding, and an ENDBR skip.
        assert!(x86_64_calls_function(
            &call(base, callee - 16),
            base,
            callee
        ));
        assert!(x86_64_calls_function(&call(base, callee + 4), base, callee));
        assert!(!x86_64_calls_function(
            &call(base, callee - 17),
            base,
            callee
        ));
        assert!(!x86_64_calls_function(
            &call(base, callee + 5),
            base,
            callee
        ));

        // A forward call (positive rel32) and truncated input.
        let high = base + 0x4000;
        assert!(x86_64_calls_function(&call(base, high), base, high));
        assert!(!x86_64_calls_function(&call(base, high)[..4], base, high));
        assert!(!x86_64_calls_function(&[], base, high));
    }

    /// Builds a minimal ELF64 core file with the given `(vaddr, bytes)`
    /// PT_LOAD segments, plus a PT_NOTE first as in /proc/kcore.
    fn fake_kcore(segments: &[(u64, &[u8])]) -> Vec<u8> {
        let phnum = segments.len() + 1;
        let mut data_offset = 64 + 56 * phnum as u64;
        let mut file = vec![0u8; 64];
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 2; // ELFCLASS64
        file[5] = 1; // ELFDATA2LSB
        file[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        file[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        file[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes()); // e_phnum
        let mut note = [0u8; 56];
        note[..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        file.extend_from_slice(&note);
        for (vaddr, bytes) in segments {
            let mut phdr = [0u8; 56];
            phdr[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            phdr[0x08..0x10].copy_from_slice(&data_offset.to_le_bytes());
            phdr[0x10..0x18].copy_from_slice(&vaddr.to_le_bytes());
            phdr[0x20..0x28].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            phdr[0x28..0x30].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            file.extend_from_slice(&phdr);
            data_offset += bytes.len() as u64;
        }
        for (_, bytes) in segments {
            file.extend_from_slice(bytes);
        }
        file
    }

    #[test]
    fn reads_kernel_bytes_from_core_file() {
        let low: Vec<u8> = (0..64).collect();
        let text: Vec<u8> = (0..=255).rev().collect();
        let image = fake_kcore(&[
            (0xffff_8880_0000_0000, &low),
            (0xffff_ffff_8100_0000, &text),
        ]);
        let path = std::env::temp_dir().join(format!(
            "hostprof-kernel-test-kcore-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, image).unwrap();

        let got = read_kcore(&path, 0xffff_ffff_8100_0010, 4).unwrap();
        assert_eq!(got, [239, 238, 237, 236]);
        // Clamped at the end of the segment.
        let tail = read_kcore(&path, 0xffff_ffff_8100_00fe, 16).unwrap();
        assert_eq!(tail, [1, 0]);
        let first = read_kcore(&path, 0xffff_8880_0000_0000, 3).unwrap();
        assert_eq!(first, [0, 1, 2]);
        // Unmapped address.
        let err = read_kcore(&path, 0xffff_ffff_a000_0000, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);

        std::fs::write(&path, [b'x'; 64]).unwrap();
        let err = read_kcore(&path, 0xffff_ffff_8100_0010, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn running_kernel_symbols_when_visible() {
        // Environment-dependent: only checked when kallsyms shows addresses.
        let Ok(symbols) = KernelSymbols::read(Path::new(KALLSYMS_PATH)) else {
            return;
        };
        if let (Some(start), Some(end)) = (symbols.copy_from_user_nofault, symbols.function_end) {
            assert!(end > start && end - start < 4096, "{start:#x}..{end:#x}");
        }
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
