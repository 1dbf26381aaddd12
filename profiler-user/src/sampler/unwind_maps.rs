//! The kernel maps unwind tables go to: `UNWIND_ROWS` (every loaded file's
//! rows) and `UNWIND_PROCESSES` (per process, its mappings' row slices).
//! Owned by the table loader's thread once sampling has started.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, Map, MapData};
use profiler_common::{UnwindProcess, UnwindRow};

/// What the loader writes into the kernel.
pub trait UnwindMaps: Send + 'static {
    /// Writes `rows` at `start..start + rows.len()` of `UNWIND_ROWS`.
    fn write_rows(&mut self, start: u32, rows: &[UnwindRow]) -> io::Result<()>;
    /// Sets `tgid`'s entry in `UNWIND_PROCESSES`.
    fn set_process(&mut self, tgid: u32, entry: &UnwindProcess) -> io::Result<()>;
    /// Removes `tgid`'s entry (absent is fine).
    fn remove_process(&mut self, tgid: u32);
    /// Returns once no program run can still read rows that entries
    /// pointed to before the call.
    fn quiesce(&mut self);
}

/// Rows per `BPF_MAP_UPDATE_BATCH` call (1 MiB of keys, 512 KiB of rows).
const BATCH_ROWS: usize = 65_536;

/// `UNWIND_ROWS` and `UNWIND_PROCESSES`, written with BPF syscalls.
pub struct KernelUnwindMaps {
    /// Written with batched updates (see `write_rows`), so kept raw.
    rows: Map,
    processes: HashMap<MapData, u32, UnwindProcess>,
}

impl KernelUnwindMaps {
    pub(super) fn new(rows: Map, processes: HashMap<MapData, u32, UnwindProcess>) -> Self {
        Self { rows, processes }
    }

    fn rows_fd(&self) -> io::Result<i32> {
        match &self.rows {
            Map::Array(data) => Ok(data.fd().as_fd().as_raw_fd()),
            _ => Err(io::Error::other("UNWIND_ROWS is not an array map")),
        }
    }
}

impl UnwindMaps for KernelUnwindMaps {
    /// One `BPF_MAP_UPDATE_BATCH` call per chunk of rows: a large file's
    /// table loads in a few syscalls instead of one per row. Hand-written
    /// because aya 0.14 has no batch API (and libbpf-rs would bring in
    /// libbpf's C build for this one call).
    fn write_rows(&mut self, start: u32, rows: &[UnwindRow]) -> io::Result<()> {
        /// `union bpf_attr`'s `batch` member.
        #[repr(C)]
        struct BatchAttr {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

        let fd = self.rows_fd()?;
        let mut keys = Vec::with_capacity(rows.len().min(BATCH_ROWS));
        for (n, chunk) in rows.chunks(BATCH_ROWS).enumerate() {
            let first = start + (n * BATCH_ROWS) as u32;
            keys.clear();
            keys.extend(first..first + chunk.len() as u32);
            let mut attr = BatchAttr {
                in_batch: 0,
                out_batch: 0,
                keys: keys.as_ptr() as u64,
                values: chunk.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: fd as u32,
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: `attr` points at live key and value arrays of
            // `count` elements of the map's key and value sizes.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            if rc != 0 {
                let err = io::Error::last_os_error();
                return Err(io::Error::new(
                    err.kind(),
                    format!("writing UNWIND_ROWS[{first}..]: {err}"),
                ));
            }
        }
        Ok(())
    }

    fn set_process(&mut self, tgid: u32, entry: &UnwindProcess) -> io::Result<()> {
        self.processes
            .insert(tgid, entry, 0)
            .map_err(|err| io::Error::other(format!("writing UNWIND_PROCESSES: {err}")))
    }

    fn remove_process(&mut self, tgid: u32) {
        // Absent (never loaded) is fine.
        let _ = self.processes.remove(&tgid);
    }

    fn quiesce(&mut self) {
        super::quiesce();
    }
}
