//! Reads of `/proc/<pid>/…`: the only place the process table touches
//! procfs, so its rules ([`super::lifecycle`]) stay pure.

use std::fs::File;
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

/// The GNU build id of the ELF file `file`, read with bounded `pread`s
/// (the file is another process's: it may be truncated while read).
pub(crate) fn elf_build_id(file: &File) -> Option<Vec<u8>> {
    let reader = crate::pread::PreadFile::new(file.try_clone().ok()?).ok()?;
    let elf = object::File::parse(&reader).ok()?;
    object::Object::build_id(&elf)
        .ok()
        .flatten()
        .map(<[u8]>::to_vec)
}

/// Opens the file behind a mapping: through `map_files` (works across mount
/// namespaces and for deleted files), else through the process's root.
pub(crate) fn open_mapped_file(pid: u32, entry: &MapEntry, path: &Path) -> Option<File> {
    let by_mapping = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
    File::open(&by_mapping)
        .or_else(|_| {
            File::open(
                Path::new(&format!("/proc/{pid}/root"))
                    .join(path.strip_prefix("/").unwrap_or(path)),
            )
        })
        .map_err(|err| log::debug!("pid {pid}: cannot open {}: {err}", path.display()))
        .ok()
}

pub(crate) fn read_proc(path: &str, pid: u32) -> Result<String, ProcessError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ProcessError::Gone { pid },
        // A process exiting mid-read reports ESRCH.
        _ if source.raw_os_error() == Some(libc::ESRCH) => ProcessError::Gone { pid },
        _ => ProcessError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

pub(crate) fn read_start_time(pid: u32) -> Result<u64, ProcessError> {
    let path = format!("/proc/{pid}/stat");
    let text = read_proc(&path, pid)?;
    parse_start_time(&text).ok_or_else(|| ProcessError::Malformed {
        path,
        reason: "no start time field".into(),
    })
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so count from the last `)`.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at 3 (state); starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
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
    fn start_time_from_stat() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn own_identity_and_a_missing_pid() {
        let me = identity(std::process::id()).unwrap().unwrap();
        assert!(me.start_time > 0 && me.exe.is_some());
        assert_eq!(identity(u32::MAX - 1).unwrap(), None);
    }
}
