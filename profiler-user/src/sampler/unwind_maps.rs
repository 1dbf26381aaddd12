//! The kernel maps unwind tables go to: `UNWIND_ROWS` (every loaded file's
//! rows, by chunk), `UNWIND_CHUNK_PCS` (each chunk's first pc) and
//! `UNWIND_PROCESSES` (per process, its mappings' row runs). Owned by the
//! table loader's thread once sampling has started.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, Map, MapData};
use profiler_common::{UnwindChunk, UnwindProcess, UnwindRow, UNWIND_CHUNK_ROWS};

use super::bpf_calls::{delete, update_batch};

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
