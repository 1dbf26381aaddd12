//! Bounded reads of files hostprof is pointed at (the config file, a CA
//! certificate): a path given by someone else may name a device, a pipe or
//! a huge file, and hostprof runs as root beside every tenant's code, so
//! such a read takes a regular file of at most a known size, or fails
//! saying which limit it hit.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Most bytes read from the config file (`--config`).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Most bytes read from a PEM certificate file (`--otlp-certificate`); a
/// full bundle of public roots is a few hundred KiB.
pub const MAX_CERTIFICATE_BYTES: usize = 1 << 20;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The path names something other than a regular file.
    #[error("it is {kind}, not a regular file")]
    NotRegular {
        /// What it is instead, e.g. "a character device".
        kind: &'static str,
    },
    /// The file holds more than the limit.
    #[error("it is larger than {}, the most hostprof reads from it", size(*limit))]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The file is not UTF-8 text.
    #[error("it is not UTF-8 text")]
    NotText,
}

/// Reads the regular file at `path` whole, failing without reading on
/// anything else (a device, a FIFO, a directory) and after `limit + 1`
/// bytes on a file larger than `limit` (also when its size was not known
/// up front, as in `/proc`).
pub fn read_file(path: &Path, limit: usize) -> Result<Vec<u8>, ReadError> {
    // Non-blocking, so that opening a FIFO without a writer does not hang;
    // regular files ignore the flag.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular {
            kind: if kind.is_dir() {
                "a directory"
            } else if kind.is_char_device() {
                "a character device"
            } else if kind.is_block_device() {
                "a block device"
            } else if kind.is_fifo() {
                "a pipe (FIFO)"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a special file"
            },
        });
    }
    if metadata.len() > limit as u64 {
        return Err(ReadError::TooLarge { limit });
    }
    read_at_most(file, metadata.len() as usize, limit)
}

/// [`read_file`], as UTF-8 text.
pub fn read_text_file(path: &Path, limit: usize) -> Result<String, ReadError> {
    String::from_utf8(read_file(path, limit)?).map_err(|_| ReadError::NotText)
}

fn read_at_most(file: File, expected: usize, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::with_capacity(expected.min(limit));
    file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// `limit` bytes for messages: `1 MiB (1048576 bytes)`.
pub fn size(limit: usize) -> String {
    const MIB: usize = 1 << 20;
    const KIB: usize = 1 << 10;
    if limit >= MIB && limit.is_multiple_of(MIB) {
        format!("{} MiB ({limit} bytes)", limit / MIB)
    } else if limit >= KIB && limit.is_multiple_of(KIB) {
        format!("{} KiB ({limit} bytes)", limit / KIB)
    } else {
        format!("{limit} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_file(&path, 5).unwrap(), b"12345");
        let err = read_file(&path, 4).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit: 4 }), "{err}");
        assert_eq!(
            err.to_string(),
            "it is larger than 4 bytes, the most hostprof reads from it"
        );
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(matches!(read_text_file(&path, 5), Err(ReadError::NotText)));
        let missing = read_file(&dir.path().join("missing"), 5).unwrap_err();
        assert!(matches!(missing, ReadError::Io(_)), "{missing}");
    }

    #[test]
    fn devices_pipes_and_directories_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        // /dev/zero never ends: refused before a byte is read.
        let err = read_file(Path::new("/dev/zero"), MAX_CONFIG_BYTES).unwrap_err();
        assert_eq!(
            err.to_string(),
            "it is a character device, not a regular file"
        );
        let err = read_file(dir.path(), MAX_CONFIG_BYTES).unwrap_err();
        assert!(matches!(
            err,
            ReadError::NotRegular {
                kind: "a directory"
            }
        ));
        // A FIFO without a writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path and a mode.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = read_file(&fifo, MAX_CONFIG_BYTES).unwrap_err();
        assert!(matches!(
            err,
            ReadError::NotRegular {
                kind: "a pipe (FIFO)"
            }
        ));
    }

    #[test]
    fn files_without_a_size_are_cut_at_the_limit() {
        // procfs reports size 0 for files that hold more.
        let err = read_file(Path::new("/proc/self/maps"), 16).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { limit: 16 }), "{err}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(1 << 20), "1 MiB (1048576 bytes)");
        assert_eq!(size(4 << 10), "4 KiB (4096 bytes)");
        assert_eq!(size(1000), "1000 bytes");
    }
}
