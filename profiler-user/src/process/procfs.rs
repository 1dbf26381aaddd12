//! Reads of `/proc/<pid>/…`: the only place the process table touches
//! procfs, so its rules ([`super::lifecycle`]) stay pure.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::lifecycle::Identity;
use super::maps::MapEntry;
use super::ProcessError;

/// The pid's identity now; `Ok(None)` when it has no `/proc` entry.
pub(crate) fn identity(pid: u32) -> Result<Option<Identity>, ProcessError> {
    match read_start_time(pid) {
        Ok(start_time) => Ok(Some(Identity {
            start_time,
            exe: exe_identity(pid),
        })),
        Err(ProcessError::Gone { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A perf map is read only up to this size (a long-running JVM writes
/// tens of MiB; more than this is not a perf map worth holding).
pub(crate) const MAX_PERF_MAP_BYTES: u64 = 64 << 20;

/// What [`read_perf_map`] read.
pub(crate) struct PerfMapRead {
    /// (device, inode) of the file.
    pub file: (u64, u64),
    /// Where the text starts in the file: the offset asked for, or 0 when
    /// the file is another one or shrank.
    pub from: u64,
    /// The file from `from` to its end.
    pub text: String,
}

/// Reads `pid`'s perf map (`/tmp/perf-PID.map` in its mount namespace,
/// with its pid there) from byte `from` on, or whole when it is not the
/// file `known`, shrank, or no longer holds `tail` (the last bytes read,
/// ending at `from`) there: the JVM's `Compiler.perfmap` truncates the
/// file and writes it again, larger, where V8 appends; `Ok(None)` when it
/// has none.
///
/// The file is the process's to write, so it is read as untrusted: not
/// through a symlink, only a regular file (a FIFO would block), only when
/// owned by the process's user or root (else a user could have hostprof
/// read a file only root may read into a profile they see), and at most
/// [`MAX_PERF_MAP_BYTES`].
pub(crate) fn read_perf_map(
    pid: u32,
    known: Option<(u64, u64)>,
    from: u64,
    tail: &[u8],
) -> std::io::Result<Option<PerfMapRead>> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    let status = read_text(format!("/proc/{pid}/status"))?;
    let (Some(nspid), Some(uid)) = (
        status_field(&status, "NSpid:"),
        status_field(&status, "Uid:"),
    ) else {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "no NSpid or Uid in status",
        ));
    };
    let path = format!("/proc/{pid}/root/tmp/perf-{nspid}.map");
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{path} is not a regular file"),
        ));
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{path} belongs to uid {}, not the process's {uid}",
                meta.uid()
            ),
        ));
    }
    if meta.len() > MAX_PERF_MAP_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{path} is larger than {} MiB", MAX_PERF_MAP_BYTES >> 20),
        ));
    }
    let identity = (meta.dev(), meta.ino());
    let read_from = |at: u64| -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; usize::try_from(meta.len().saturating_sub(at)).unwrap_or(0)];
        let mut filled = 0;
        while filled < bytes.len() {
            match FileExt::read_at(&file, &mut bytes[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        bytes.truncate(filled);
        Ok(bytes)
    };
    let check = tail.len() as u64;
    if known == Some(identity) && from <= meta.len() && check <= from {
        let bytes = read_from(from - check)?;
        if bytes.starts_with(tail) {
            return Ok(Some(PerfMapRead {
                file: identity,
                from,
                text: String::from_utf8_lossy(&bytes[tail.len()..]).into_owned(),
            }));
        }
    }
    Ok(Some(PerfMapRead {
        file: identity,
        from: 0,
        text: String::from_utf8_lossy(&read_from(0)?).into_owned(),
    }))
}

/// The last number of a `/proc/PID/status` line (`NSpid:` has the pid in
/// each nested namespace, innermost last) or, for `Uid:`, the effective one.
fn status_field(status: &str, name: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix(name))?;
    let mut fields = line.split_whitespace();
    if name == "Uid:" {
        fields.nth(1)?.parse().ok()
    } else {
        fields.last()?.parse().ok()
    }
}

/// Opens the file behind a mapping: through `map_files` (works across mount
/// namespaces and for deleted files), else through the process's root; the
/// error is the last way's ([`gone`] tells whether to try another process).
pub(crate) fn open_mapped_file(pid: u32, entry: &MapEntry, path: &Path) -> std::io::Result<File> {
    let by_mapping = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
    File::open(&by_mapping)
        .or_else(|_| {
            File::open(
                Path::new(&format!("/proc/{pid}/root"))
                    .join(path.strip_prefix("/").unwrap_or(path)),
            )
        })
        .inspect_err(|err| log::debug!("pid {pid}: cannot open {}: {err}", path.display()))
}

/// Whether a failure to open a process's file says the process (or its
/// mapping) was gone, which another process mapping the same file may
/// not be; not a refusal (`EACCES` from a FUSE mount without
/// `allow_other`) that every try would meet.
pub(crate) fn gone(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// Reads a procfs text file, bytes that are not UTF-8 replaced: tenants
/// name their processes, files and cgroups, and one such byte in a name
/// must not make the whole file unreadable (the process unprofiled).
pub(crate) fn read_text(path: impl AsRef<Path>) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

pub(crate) fn read_proc(path: &str, pid: u32) -> Result<String, ProcessError> {
    read_text(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ProcessError::Gone { pid },
        // A process exiting mid-read reports ESRCH.
        _ if source.raw_os_error() == Some(libc::ESRCH) => ProcessError::Gone { pid },
        _ => ProcessError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// A start time the kernel gave in ns since boot (`start_boottime`) in
/// the clock ticks `/proc/PID/stat` counts it in (its `nsec_to_clock_t`:
/// whole ticks of `1 / _SC_CLK_TCK` s, rounded down, exact where the tick
/// divides a second in whole ns, as Linux's 100 Hz does), so the two
/// compare. The sampler announces start times only where hostprof's time
/// namespace adds no boot-time offset to `stat`'s.
pub(crate) fn start_time_ticks(boottime_ns: u64) -> u64 {
    boottime_ns / crate::sampler::ns_per_tick()
}

pub(crate) fn read_start_time(pid: u32) -> Result<u64, ProcessError> {
    let path = format!("/proc/{pid}/stat");
    let text = read_proc(&path, pid)?;
    parse_start_time(&text).ok_or_else(|| ProcessError::Malformed {
        path,
        reason: "no start time field".into(),
    })
}

/// `pid`'s start time (see [`read_start_time`]) and command name (field 2
/// of `/proc/<pid>/stat`, the same `comm` `/proc/<pid>/comm` shows).
pub(crate) fn read_stat(pid: u32) -> Result<(u64, String), ProcessError> {
    let path = format!("/proc/{pid}/stat");
    let text = read_proc(&path, pid)?;
    let malformed = |reason: &str| ProcessError::Malformed {
        path: path.clone(),
        reason: reason.into(),
    };
    let start_time = parse_start_time(&text).ok_or_else(|| malformed("no start time field"))?;
    let comm = parse_comm(&text).ok_or_else(|| malformed("no command name field"))?;
    Ok((start_time, comm.to_owned()))
}

/// Field 2 (comm) of a `/proc/<pid>/stat` line: between the first `(`
/// and the last `)` (the name itself may hold either).
pub(crate) fn parse_comm(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// Field `n` (numbered from 1, as in proc(5)), of 3 or more, of a
/// `/proc/<pid>/stat` line as a number. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at 3 (state).
    after_comm
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)
}

/// The text of `/proc/<pid>/cgroup`.
pub(crate) fn read_cgroup(pid: u32) -> std::io::Result<String> {
    read_text(format!("/proc/{pid}/cgroup"))
}

/// Where the unified (v2) cgroup hierarchy is mounted: `/sys/fs/cgroup`,
/// or `/sys/fs/cgroup/unified` on a hybrid host; `None` when neither is.
pub(crate) fn cgroup2_root() -> Option<std::path::PathBuf> {
    /// `CGROUP2_SUPER_MAGIC` of linux/magic.h.
    const CGROUP2: libc::c_long = 0x6367_7270;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|root| {
            let Ok(path) = std::ffi::CString::new(*root) else {
                return false;
            };
            // SAFETY: `struct statfs` is plain integers, valid all zero.
            let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: statfs writes one `struct statfs` through a valid
            // pointer and reads a NUL-terminated path.
            let found = unsafe { libc::statfs(path.as_ptr(), &mut fs) } == 0;
            found && fs.f_type as libc::c_long == CGROUP2
        })
        .map(std::path::PathBuf::from)
}

/// The inode of the cgroup directory `path` (as `/proc/<pid>/cgroup`
/// names it, from `/`) under the unified hierarchy's `root`: the cgroup's
/// id. `None` for a path above this process's cgroup namespace (`/..`).
pub(crate) fn cgroup_inode(root: &Path, path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let relative = path.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return None;
    }
    std::fs::symlink_metadata(root.join(relative))
        .ok()
        .map(|m| m.ino())
}

/// (device, inode) of the process's executable, to notice exec.
pub(crate) fn exe_identity(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_utf8_is_read_with_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        std::fs::write(&path, b"7 (a\xffb) S 1\n").unwrap();
        assert_eq!(read_text(&path).unwrap(), "7 (a\u{fffd}b) S 1\n");
        std::fs::write(&path, "7 (ok) S 1\n").unwrap();
        assert_eq!(read_text(&path).unwrap(), "7 (ok) S 1\n");
    }

    #[test]
    fn only_a_process_gone_is_worth_opening_its_file_again() {
        use std::io::{Error, ErrorKind};
        assert!(gone(&Error::from(ErrorKind::NotFound)));
        assert!(gone(&Error::from_raw_os_error(libc::ESRCH)));
        assert!(gone(&Error::from_raw_os_error(libc::ENOENT)));
        assert!(!gone(&Error::from_raw_os_error(libc::EACCES)));
        assert!(!gone(&Error::from_raw_os_error(libc::EPERM)));
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tnode\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t4242\t7\n";
        assert_eq!(status_field(status, "NSpid:"), Some(7));
        assert_eq!(status_field(status, "Uid:"), Some(1001));
        assert_eq!(status_field(status, "Gid:"), None);
    }

    /// Our own perf map: read whole, then only what was appended; a
    /// symlink, a FIFO and another user's file are refused unread.
    #[test]
    fn perf_maps_are_read_incrementally_and_only_when_safe() {
        let me = std::process::id();
        let path = format!("/tmp/perf-{me}.map");
        let _ = std::fs::remove_file(&path);
        assert!(read_perf_map(me, None, 0, b"").unwrap().is_none());
        std::fs::write(&path, "1000 10 a\n").unwrap();
        let first = read_perf_map(me, None, 0, b"").unwrap().unwrap();
        assert_eq!((first.from, first.text.as_str()), (0, "1000 10 a\n"));
        // Appended to (V8): only the new lines are read.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"2000 10 b\n").unwrap();
        let next = read_perf_map(me, Some(first.file), 10, b" a\n")
            .unwrap()
            .unwrap();
        assert_eq!((next.from, next.text.as_str()), (10, "2000 10 b\n"));
        // Written again in place, larger (the JVM): read whole.
        std::fs::write(&path, "0500 10 z\n1000 10 a\n2000 10 b\n").unwrap();
        let rewritten = read_perf_map(me, Some(first.file), 20, b" b\n")
            .unwrap()
            .unwrap();
        assert_eq!(rewritten.from, 0);
        assert!(rewritten.text.starts_with("0500 10 z"));
        // Another file under the same name is read from its start.
        let again = read_perf_map(me, Some((0, 0)), 10, b"").unwrap().unwrap();
        assert_eq!(again.from, 0);

        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(
            read_perf_map(me, None, 0, b"").is_err(),
            "followed a symlink"
        );
        std::fs::remove_file(&path).unwrap();
        let fifo = std::ffi::CString::new(path.clone()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(read_perf_map(me, None, 0, b"").is_err(), "read a FIFO");
        std::fs::remove_file(&path).unwrap();
        if running_as_root() {
            std::fs::write(&path, "1000 10 a\n").unwrap();
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            assert!(
                read_perf_map(me, None, 0, b"").is_err(),
                "read another user's file"
            );
            std::fs::remove_file(&path).unwrap();
        }
    }

    fn running_as_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| status_field(&s, "Uid:"))
            == Some(0)
    }

    #[test]
    fn start_time_from_stat() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
        assert_eq!(parse_comm(stat), Some("my (odd) name"));
        assert_eq!(parse_comm("1 () S"), Some(""));
        assert_eq!(parse_comm("1 )x( S"), None);
        assert_eq!(parse_comm("garbage"), None);
    }

    #[test]
    fn own_identity_and_a_missing_pid() {
        let me = identity(std::process::id()).unwrap().unwrap();
        assert!(me.start_time > 0 && me.exe.is_some());
        assert_eq!(identity(u32::MAX - 1).unwrap(), None);
    }
}
