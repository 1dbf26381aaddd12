//! The kernel maps unwind tables go to: `UNWIND_ROWS` (every loaded file's
//! rows, by chunk), `UNWIND_CHUNK_PCS` (each chunk's first pc) and
//! `UNWIND_PROCESSES` (per process, its mappings' row runs). Owned by the
//! table loader's thread once sampling has started.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, Map, MapData};
use profiler_common::{UnwindChunk, UnwindProcess, UnwindRow, UNWIND_CHUNK_ROWS};

/// What the loader writes into the kernel.
pub trait UnwindMaps: Send + 'static {
    /// Writes `rows` at `start..start + rows.len()` of the table space
    /// (`start` starts a chunk).
    fn write_rows(&mut self, start: u32, rows: &[UnwindRow]) -> io::Result<()>;
    /// Gives back the memory of `rows` (freed, and no longer read).
    fn release_rows(&mut self, rows: Range<u32>);
    /// Sets `tgid`'s entry in `UNWIND_PROCESSES`.
    fn set_process(&mut self, tgid: u32, entry: &UnwindProcess) -> io::Result<()>;
    /// Removes `tgid`'s entry (absent is fine).
    fn remove_process(&mut self, tgid: u32);
    /// Returns once no program run can still read rows that entries
    /// pointed to before the call.
    fn quiesce(&mut self);
}

/// Chunks per `BPF_MAP_UPDATE_BATCH` call (~250 KiB of rows).
const BATCH_CHUNKS: usize = 64;

/// The chunks holding `rows` (chunk indices, the last one partly).
pub fn chunks_of(rows: Range<u32>) -> Range<u32> {
    rows.start / UNWIND_CHUNK_ROWS..rows.end.div_ceil(UNWIND_CHUNK_ROWS)
}

/// `rows` written from the chunk-aligned `start`: the chunks (zero past
/// the last row) and the pc of each one's first row.
pub fn chunked(start: u32, rows: &[UnwindRow]) -> io::Result<(Vec<UnwindChunk>, Vec<u32>)> {
    if !start.is_multiple_of(UNWIND_CHUNK_ROWS) {
        return Err(io::Error::other(format!(
            "unwind rows at {start} do not start a chunk of {UNWIND_CHUNK_ROWS}"
        )));
    }
    let chunks: Vec<UnwindChunk> = rows
        .chunks(UNWIND_CHUNK_ROWS as usize)
        .map(|part| {
            let mut chunk = UnwindChunk::default();
            chunk.rows[..part.len()].copy_from_slice(part);
            chunk
        })
        .collect();
    let pcs = chunks.iter().map(|chunk| chunk.rows[0].pc).collect();
    Ok((chunks, pcs))
}

/// `UNWIND_ROWS`, `UNWIND_CHUNK_PCS` and `UNWIND_PROCESSES`, written with
/// BPF syscalls.
pub struct KernelUnwindMaps {
    /// Written with batched updates (see `write_rows`), so kept raw.
    rows: Map,
    chunk_pcs: Map,
    processes: HashMap<MapData, u32, UnwindProcess>,
}

impl KernelUnwindMaps {
    pub(super) fn new(
        rows: Map,
        chunk_pcs: Map,
        processes: HashMap<MapData, u32, UnwindProcess>,
    ) -> Self {
        Self {
            rows,
            chunk_pcs,
            processes,
        }
    }
}

/// The descriptor of `map`, a hash or an array map.
fn fd_of(map: &Map) -> io::Result<i32> {
    match map {
        Map::HashMap(data) | Map::Array(data) => Ok(data.fd().as_fd().as_raw_fd()),
        _ => Err(io::Error::other("unexpected unwind map type")),
    }
}

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

/// `union bpf_attr`'s element member (lookup, update, delete).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `bpf(2)` command `cmd` with `attr`. Hand-written because aya 0.14
/// has no batch API (and libbpf-rs would bring in libbpf's C build for
/// these calls).
fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a live `union bpf_attr` member for `cmd`, and the
    // pointers it holds point at live arrays of the map's key and value
    // sizes (see the callers).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `values[i]` at `keys[i]` of the map `fd` in one
/// `BPF_MAP_UPDATE_BATCH` call (`V` the map's `repr(C)` value type, the
/// keys `u32`).
fn update_batch<V>(fd: i32, name: &str, keys: &[u32], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|err| {
        let first = keys.first().copied().unwrap_or(0);
        io::Error::new(err.kind(), format!("writing {name}[{first}..]: {err}"))
    })
}

/// Deletes `key` from the hash map `fd` (absent is fine).
fn delete(fd: i32, key: u32) {
    let mut attr = ElemAttr {
        map_fd: fd as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: 0,
        flags: 0,
    };
    let _ = bpf(BPF_MAP_DELETE_ELEM, &mut attr);
}

impl UnwindMaps for KernelUnwindMaps {
    /// One `BPF_MAP_UPDATE_BATCH` call per batch of chunks, then one for
    /// their first pcs: a large file's table loads in a few syscalls.
    fn write_rows(&mut self, start: u32, rows: &[UnwindRow]) -> io::Result<()> {
        let (chunks, pcs) = chunked(start, rows)?;
        let first = start / UNWIND_CHUNK_ROWS;
        let keys: Vec<u32> = (first..first + chunks.len() as u32).collect();
        let fd = fd_of(&self.rows)?;
        for (keys, chunks) in keys.chunks(BATCH_CHUNKS).zip(chunks.chunks(BATCH_CHUNKS)) {
            update_batch(fd, "UNWIND_ROWS", keys, chunks)?;
        }
        // The first pcs last: a search reaches a chunk only through them
        // (and an entry, written after this).
        update_batch(fd_of(&self.chunk_pcs)?, "UNWIND_CHUNK_PCS", &keys, &pcs)
    }

    fn release_rows(&mut self, rows: Range<u32>) {
        let Ok(fd) = fd_of(&self.rows) else {
            return;
        };
        for chunk in chunks_of(rows) {
            delete(fd, chunk);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pc: u32) -> UnwindRow {
        UnwindRow {
            pc,
            ..UnwindRow::default()
        }
    }

    #[test]
    fn rows_go_in_chunks_with_their_first_pcs() {
        let n = UNWIND_CHUNK_ROWS;
        let rows: Vec<UnwindRow> = (0..n + 3).map(|i| row(100 + i)).collect();
        let (chunks, pcs) = chunked(2 * n, &rows).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(pcs, vec![100, 100 + n]);
        assert_eq!(chunks[1].rows[2], row(100 + n + 2));
        assert_eq!(chunks[1].rows[3], UnwindRow::default(), "zero past the end");
        assert!(chunked(1, &rows).is_err(), "not at a chunk's start");
        assert_eq!(chunks_of(2 * n..3 * n + 3), 2..4);
        assert_eq!(chunks_of(0..n), 0..1);
    }
}
