//! Reading files with bounded `pread`s into buffers of our own, for
//! `object`'s parsers ([`PreadFile`]).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use object::ReadRef;

/// The longest string [`ReadRef::read_bytes_at_until`] looks through.
const MAX_STRING_LEN: u64 = 4096;

/// What [`ReadRef::read_bytes_at_until`] reads first for a string not in
/// a chunk already read: most symbol names fit; a longer one is read again
/// at [`MAX_STRING_LEN`].
const FIRST_STRING_READ: u64 = 256;

/// The most one reader keeps, whatever the file: see [`PreadFile::new`].
const MAX_KEPT_BYTES: u64 = 256 << 20;

/// Bytes read from the file: `len` bytes in 8-byte words.
struct Chunk {
    words: Box<[u64]>,
    len: usize,
}

/// A file as `object`'s [`ReadRef`], read with `pread` on demand.
///
/// Only the byte ranges `object` asks for are read, each into a buffer of
/// our own, kept until the file is dropped (`ReadRef` hands out slices that
/// live as long as the reader). Neither mapping nor reading whole fits the
/// files this reads: `/proc/kcore` is as large as the kernel's address
/// space and mostly unreadable, and ELF files mapped by other processes are
/// untrusted — one truncated while it is read would kill an mmap reader
/// with SIGBUS, while here the read just fails.
pub(crate) struct PreadFile {
    file: File,
    /// The file's size as `stat` reports it.
    len: u64,
    /// Every range read so far by its file offset (the latest read at an
    /// offset), as 8-byte words so that each starts 8-byte aligned, as
    /// `object`'s ELF64 structures require. Chunks are only ever added:
    /// never changed or removed before `self` is dropped (one read again at
    /// the same offset is kept aside in `replaced`).
    chunks: RefCell<BTreeMap<u64, Chunk>>,
    /// Chunks displaced from `chunks` by a read at the same offset, kept
    /// for the slices handed out of them.
    replaced: RefCell<Vec<Chunk>>,
    /// Bytes still to be kept before reads are refused.
    budget: Cell<u64>,
}

impl PreadFile {
    /// Opens the file at `path`.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Self::new(File::open(path)?)
    }

    /// Reads `file`, whose size is taken now: a file that shrinks later
    /// gives read errors, never a fault.
    ///
    /// What the reader keeps is bounded: twice the file's size and 1 MiB,
    /// at most [`MAX_KEPT_BYTES`]; reads past that fail. Parsing reads a
    /// file's bytes about once, but the file is a tenant's and its headers
    /// steer the reads: a symbol table of a million entries whose names all
    /// miss the chunks read before would otherwise have each read anew.
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            chunks: RefCell::new(BTreeMap::new()),
            replaced: RefCell::new(Vec::new()),
            budget: Cell::new(
                len.saturating_mul(2)
                    .saturating_add(1 << 20)
                    .min(MAX_KEPT_BYTES),
            ),
        })
    }

    /// Reads exactly `buf.len()` bytes at `offset`, not kept.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Reads `size` bytes at `offset` into a new chunk and returns them.
    fn read_chunk(&self, offset: u64, size: u64) -> Result<&[u8], ()> {
        if size == 0 {
            return Ok(&[]);
        }
        // A range past the end cannot be read: refuse it before allocating
        // for it, as a header may claim any size (a panic or an abort on
        // allocation failure otherwise).
        if offset.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(());
        }
        // Over budget: refused too, before allocating.
        let Some(left) = self.budget.get().checked_sub(size) else {
            self.over_budget();
            return Err(());
        };
        self.budget.set(left);
        let size = usize::try_from(size).map_err(|_| ())?;
        // Read straight into 8-byte words: one copy, from the kernel.
        let mut words: Box<[u64]> = vec![0u64; size.div_ceil(8)].into_boxed_slice();
        // SAFETY: the words' allocation holds `size.div_ceil(8) * 8 >= size`
        // initialized bytes; u8 needs no alignment and any byte written
        // into a u64 leaves it a valid u64. The view ends before `words` is
        // used again.
        let view = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), size) };
        self.file.read_exact_at(view, offset).map_err(|_| ())?;
        let start = words.as_ptr().cast::<u8>();
        let chunk = Chunk { words, len: size };
        if let Some(old) = self.chunks.borrow_mut().insert(offset, chunk) {
            self.replaced.borrow_mut().push(old);
        }
        // SAFETY: `start` points at the heap allocation of `words`, which
        // holds at least `size` initialized bytes (above). Moving the box
        // into `chunks` does not move its allocation, and `chunks` never
        // drops or mutates a chunk before `self` is dropped (one displaced
        // from the map moves to `replaced`), which the returned slice's
        // lifetime (that of `&self`) rules out. u8 needs no alignment.
        Ok(unsafe { std::slice::from_raw_parts(start, size) })
    }

    /// Says, once in the agent's life (then at debug level), that a file's
    /// reads ran past the budget: its parse fails (no unwind table, no
    /// symbols of it) — a crafted file, or one far larger than any binary.
    fn over_budget(&self) {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let path = std::fs::read_link(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .unwrap_or_default();
        let text = format!(
            "{}: reading it needed more than twice its size (or 256 MiB): left unread \
             (a crafted file, or a binary larger than any this was sized for)",
            // A tenant names its files: escaped for the log line.
            crate::text::escape(&path.to_string_lossy())
        );
        if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::debug!("{text}");
        } else {
            log::warn!("{text}");
        }
    }

    /// The bytes from `offset` to the end of the chunk read last at or
    /// before it that holds `offset`, if any: a string table's names are
    /// found in the chunk the first name read, not read again each.
    fn read_bytes(&self, offset: u64) -> Option<&[u8]> {
        let chunks = self.chunks.borrow();
        let (&start, chunk) = chunks.range(..=offset).next_back()?;
        let skip = usize::try_from(offset - start).ok()?;
        if skip >= chunk.len {
            return None;
        }
        let bytes = chunk.words.as_ptr().cast::<u8>();
        // SAFETY: `bytes` points at a chunk's heap allocation, of at least
        // `chunk.len > skip` initialized bytes. Chunks are never dropped or
        // mutated before `self` is (see `read_chunk`), and the slice lives
        // as long as `&self`. u8 needs no alignment.
        Some(unsafe { std::slice::from_raw_parts(bytes.add(skip), chunk.len - skip) })
    }
}

impl<'a> ReadRef<'a> for &'a PreadFile {
    fn len(self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        self.read_chunk(offset, size)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        let within = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
        if let Some(bytes) = self.read_bytes(range.start) {
            let bytes = &bytes[..bytes.len().min(within)];
            if let Some(end) = bytes.iter().position(|&b| b == delimiter) {
                return Ok(&bytes[..end]);
            }
        }
        let most = range
            .end
            .checked_sub(range.start)
            .ok_or(())?
            .min(self.len.saturating_sub(range.start));
        let mut size = most.min(FIRST_STRING_READ);
        loop {
            let bytes = self.read_chunk(range.start, size)?;
            if let Some(end) = bytes.iter().position(|&b| b == delimiter) {
                return Ok(&bytes[..end]);
            }
            if size == most.min(MAX_STRING_LEN) {
                return Err(());
            }
            size = most.min(MAX_STRING_LEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pread_file_hands_out_aligned_ranges() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(temp.path(), b"\x01abc\0defgh\0tail").unwrap();
        let file = PreadFile::open(temp.path()).unwrap();
        let reader = &file;
        assert_eq!(reader.len(), Ok(15));
        let odd = reader.read_bytes_at(1, 3).unwrap();
        let whole = reader.read_bytes_at(0, 15).unwrap();
        // Earlier slices stay valid while more are read.
        assert_eq!(odd, b"abc");
        assert_eq!(&whole[11..], b"tail");
        for slice in [odd, whole] {
            assert_eq!(slice.as_ptr() as usize % 8, 0);
        }
        assert_eq!(reader.read_bytes_at(5, 0), Ok(&[][..]));
        assert_eq!(reader.read_bytes_at(12, 4), Err(()));
        // Sizes an ELF header may claim, far past the end: refused, not
        // allocated (found by the unwind_table fuzz target).
        assert_eq!(reader.read_bytes_at(8, u64::MAX), Err(()));
        assert_eq!(reader.read_bytes_at(u64::MAX, 2), Err(()));
        assert_eq!(reader.read_bytes_at(0, 1 << 40), Err(()));
        assert_eq!(reader.read_bytes_at_until(5..15, 0), Ok(&b"defgh"[..]));
        assert_eq!(reader.read_bytes_at_until(11..15, 0), Err(()));
        assert_eq!(reader.read_bytes_at_until(11..99, 0), Err(()));
    }

    #[test]
    fn strings_are_found_in_chunks_already_read() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(temp.path(), b"\0one\0two\0three\0four").unwrap();
        let file = PreadFile::open(temp.path()).unwrap();
        let reader = &file;
        assert_eq!(reader.read_bytes_at_until(1..20, 0), Ok(&b"one"[..]));
        let chunks = || file.chunks.borrow().len() + file.replaced.borrow().len();
        assert_eq!(chunks(), 1);
        // Inside the first chunk: no new read.
        assert_eq!(reader.read_bytes_at_until(5..20, 0), Ok(&b"two"[..]));
        assert_eq!(reader.read_bytes_at_until(9..20, 0), Ok(&b"three"[..]));
        assert_eq!(chunks(), 1);
        // The range bounds the search, as for a fresh read.
        assert_eq!(reader.read_bytes_at_until(9..12, 0), Err(()));
        // Past the chunk's last delimiter: read anew, earlier slices intact.
        let one = reader.read_bytes_at_until(1..20, 0).unwrap();
        assert_eq!(reader.read_bytes_at_until(15..20, 0), Err(()));
        let all = reader.read_bytes_at(0, 19).unwrap();
        assert_eq!(reader.read_bytes_at_until(1..20, 0), Ok(&b"one"[..]));
        assert_eq!((one, &all[15..]), (&b"one"[..], &b"four"[..]));
    }

    #[test]
    fn a_long_string_is_read_again_whole() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        let mut text = vec![b'x'; 1000];
        text.push(0);
        std::fs::write(temp.path(), &text).unwrap();
        let file = PreadFile::open(temp.path()).unwrap();
        let reader = &file;
        assert_eq!(reader.read_bytes_at_until(0..1001, 0), Ok(&text[..1000]));
        // Past the longest string looked for: not found.
        let temp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(temp.path(), vec![b'x'; 5000]).unwrap();
        let file = PreadFile::open(temp.path()).unwrap();
        assert_eq!((&file).read_bytes_at_until(0..5000, 0), Err(()));
    }

    /// Names read in the order that misses every chunk read before (from
    /// the end back): what is kept stays within twice the file and 1 MiB,
    /// and reads past that are refused.
    #[test]
    fn what_a_reader_keeps_is_bounded() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        let len = 256 << 10;
        let mut text = vec![b'n'; len];
        text[len - 1] = 0;
        std::fs::write(temp.path(), &text).unwrap();
        let file = PreadFile::open(temp.path()).unwrap();
        let reader = &file;
        let mut found = 0;
        for start in (0..len as u64 - 1).rev() {
            if reader.read_bytes_at_until(start..len as u64, 0).is_ok() {
                found += 1;
            }
        }
        let kept: usize = file.chunks.borrow().values().map(|c| c.len).sum::<usize>()
            + file.replaced.borrow().iter().map(|c| c.len).sum::<usize>();
        assert!(kept as u64 <= 2 * len as u64 + (1 << 20), "kept {kept}");
        assert!(found > 1000, "the budget allows normal reading: {found}");
        assert!(found < len - 1, "the budget ran out: {found}");
        assert_eq!(reader.read_bytes_at(0, 8192), Err(()));
    }
}
