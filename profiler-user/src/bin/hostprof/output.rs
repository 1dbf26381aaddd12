//! `record`'s output files, written atomically: each is reserved before
//! sampling (a temporary file created beside it, so an unwritable path is
//! found in the first second, not after the capture) and, once written,
//! renamed over its path. A reader sees the old file or the whole new one,
//! never half of it, and a failed output leaves no partial file behind.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Seek as _, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// An output file: its final path and the temporary file its content is
/// written to. Dropped without [`PendingFile::commit`], it removes the
/// temporary file and leaves the path as it was.
pub struct PendingFile {
    /// The flag that named it, for messages (`--folded`).
    flag: &'static str,
    path: PathBuf,
    temp: PathBuf,
    file: File,
    /// Renamed into place: nothing to clean up.
    committed: bool,
}

impl PendingFile {
    /// Checks that `path` (given with `flag`) can be written and creates
    /// its temporary sibling, `.<name>.<random>.tmp` in the same directory
    /// (so the final rename stays on one file system). The temporary file
    /// is created exclusively: a symlink or file planted under its name is
    /// neither followed nor overwritten.
    pub fn reserve(flag: &'static str, path: &Path) -> anyhow::Result<Self> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "{flag} {}: the directory {} does not exist; create it or choose another path",
                path.display(),
                dir.display()
            );
        }
        let Some(name) = path.file_name() else {
            bail!(
                "{flag} {}: not a file name; give the path of a file",
                path.display()
            );
        };
        if path.is_dir() {
            bail!(
                "{flag} {}: is a directory; give the path of a file in it",
                path.display()
            );
        }
        let name = name.to_string_lossy();
        let mut attempts = 0;
        loop {
            let temp = dir.join(format!(".{name}.{:08x}.tmp", rand::random::<u32>()));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Self {
                        flag,
                        path: path.to_owned(),
                        temp,
                        file,
                        committed: false,
                    })
                }
                Err(err) if err.kind() == ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(err) => bail!(
                    "{flag} {}: cannot create a file in {} ({err}); make the directory \
                     writable or give {flag} a path in a writable directory",
                    path.display(),
                    dir.display()
                ),
            }
        }
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the content with `write`, replacing what an earlier call
    /// wrote; the path itself is untouched until [`Self::commit`].
    pub fn write(
        &mut self,
        write: impl FnOnce(&mut BufWriter<&File>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        let mut out = BufWriter::new(&self.file);
        write(&mut out)?;
        out.flush()?;
        Ok(())
    }

    /// Makes the written content durable and renames it over the path.
    pub fn commit(mut self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.temp, &self.path))
            .with_context(|| {
                format!(
                    "moving {} over {}",
                    self.temp.display(),
                    self.path.display()
                )
            })?;
        self.committed = true;
        Ok(())
    }

    /// Writes the content with `write` and renames it over the path; on
    /// failure the path is left as it was.
    pub fn write_and_commit(
        mut self,
        write: impl FnOnce(&mut BufWriter<&File>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let (flag, path) = (self.flag, self.path.clone());
        self.write(write)
            .and_then(|()| self.commit())
            .with_context(|| format!("writing {flag} {}", path.display()))
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Fails when two outputs name the same file (`flags` pairs each flag with
/// its path).
pub fn check_distinct(outputs: &[(&'static str, &Path)]) -> anyhow::Result<()> {
    for (i, (flag, path)) in outputs.iter().enumerate() {
        if let Some((other, _)) = outputs[..i].iter().find(|(_, p)| p == path) {
            bail!(
                "{other} and {flag} both name {}; give each output its own path",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_committed_file_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.folded");
        std::fs::write(&path, "old\n").unwrap();
        let mut pending = PendingFile::reserve("--folded", &path).unwrap();
        pending
            .write(|out| Ok(out.write_all(b"a long first version\n")?))
            .unwrap();
        // Not visible before the commit.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        pending.write(|out| Ok(out.write_all(b"new\n")?)).unwrap();
        pending.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(leftovers(dir.path()), ["out.folded"]);
    }

    #[test]
    fn a_failed_write_leaves_the_path_as_it_was_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.pb.gz");
        std::fs::write(&path, "old").unwrap();
        let pending = PendingFile::reserve("--output", &path).unwrap();
        let err = pending
            .write_and_commit(|out| {
                out.write_all(b"half")?;
                bail!("the disk is full")
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("--output"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(leftovers(dir.path()), ["host.pb.gz"]);
        // Never committed: nothing at all.
        drop(PendingFile::reserve("--folded", &dir.path().join("new")).unwrap());
        assert_eq!(leftovers(dir.path()), ["host.pb.gz"]);
    }

    #[test]
    fn a_symlink_at_the_path_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "precious").unwrap();
        let path = dir.path().join("out.svg");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        PendingFile::reserve("--flamegraph", &path)
            .unwrap()
            .write_and_commit(|out| Ok(out.write_all(b"<svg/>")?))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn unusable_paths_are_refused_with_the_flag_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/host.pb.gz");
        let err = PendingFile::reserve("--output", &missing).err().unwrap();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = PendingFile::reserve("--folded", dir.path()).err().unwrap();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn two_outputs_cannot_share_a_path() {
        let (a, b) = (Path::new("x/host.pb.gz"), Path::new("x/host.svg"));
        check_distinct(&[("--output", a), ("--flamegraph", b)]).unwrap();
        let err = check_distinct(&[("--output", a), ("--flamegraph", b), ("--folded", a)])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--output and --folded both name"), "{err}");
    }
}
