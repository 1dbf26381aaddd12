//! A private, sealed copy of the parts of an ELF file that symbolization
//! reads ([`SealedElf`]).
//!
//! blazesym maps the files it reads. The files are other processes' — a
//! tenant can truncate its own executable while it is mapped here, and the
//! next read of a page past the new end kills the profiler with SIGBUS.
//! So blazesym never maps a tenant's file: it maps a memfd of ours, which
//! nobody else can open, sealed against shrinking, growing and writing.
//! The copy is sparse: only the ELF and program headers, the section
//! headers and the sections symbolization reads (symbol and string tables,
//! notes, debug information) are copied; code and data, the bulk of a
//! stripped binary, stay holes that read as zeros and take no memory.
//! Debug sections larger than a limit are left out too (names without
//! source lines), so one huge debug build cannot exhaust the profiler's
//! memory limit; compressed ones count at the size they inflate to, which
//! is what parsing them holds ([`SealedElf::weight`]). Reads are bounded `pread`s: a file that shrinks while it
//! is copied gives an error, never a fault.
//!
//! The copy has no links to other files: the sections that name one
//! (`.gnu_debuglink`, `.gnu_debugaltlink`, `.debug_sup`) lose their names
//! in it ([`LINKS`]). blazesym follows such a link even with no debug
//! directories, to the name joined to the linking file's directory, and
//! a name is the tenant's to write: `/run/fifo` would have the symbolizer
//! open a FIFO and wait forever, `../../secret` read a file of the
//! host's. Debug files are found by build id in root's directories
//! instead (`debug_file`).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, FileKind};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::pread::PreadFile;

/// Debug sections (`.debug_*`) of one file copied at most, at their
/// inflated size: past this, the file is symbolized from its symbol
/// tables alone. The copy is memory
/// the kernel cannot reclaim while it exists; 64 MiB fits the Helm
/// chart's default limit (256 MiB) beside everything else the agent holds.
pub(crate) const MAX_DEBUG_BYTES: u64 = 64 << 20;

/// The sections that name another file to read. In a copy their section
/// headers' names point at their own names' terminating zero (the empty
/// name; offset 0 of the name table is the tenant's to fill), so nothing
/// reading the copy finds them; their bytes are not copied.
const LINKS: [&[u8]; 3] = [b".gnu_debuglink", b".gnu_debugaltlink", b".debug_sup"];

/// Why a file could not be copied for symbolization.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    /// Not an ELF file we can read (or its headers are corrupt).
    #[error("not a readable ELF file")]
    NotElf,
    /// The file ended before a range its headers name (it was truncated
    /// while we read it, or its headers lie).
    #[error("the file changed or its headers point past its end")]
    Changed,
    /// A read or the memfd failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A sealed, sparse memfd copy of an ELF file's symbolization data.
#[derive(Debug)]
pub(crate) struct SealedElf {
    memfd: File,
    /// Bytes copied (the rest of the file is holes).
    copied: u64,
    /// What parsing the copy holds: the bytes copied, debug sections at
    /// their inflated size.
    weight: u64,
    /// True when debug sections were left out for their size.
    debug_left_out: bool,
    /// What the file says of itself, read while planning the copy.
    facts: ElfFacts,
}

/// What symbolization needs to know of a file besides its sections: its
/// build id, where its loaded bytes sit in its address space, and whether
/// its function names must come from elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ElfFacts {
    /// The GNU build id note's bytes.
    pub(crate) build_id: Option<Vec<u8>>,
    /// The loaded segments.
    pub(crate) segments: Segments,
    /// True when the file has neither a symbol table (`.symtab`) nor
    /// DWARF: stripped, its static functions named only by a separate
    /// debug file (its dynamic symbols name the exported ones).
    pub(crate) stripped: bool,
}

/// A file's loaded segments (`PT_LOAD`): the file bytes each holds and the
/// virtual offset they load at, to find a file offset's virtual offset.
/// A separate debug file has the same segments but no bytes in them, so
/// its symbols are looked up by virtual offset, from the original's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Segments(Vec<(Range<u64>, u64)>);

impl Segments {
    /// The virtual offset that `file_offset` loads at; `None` when no
    /// segment holds it.
    pub(crate) fn virtual_offset(&self, file_offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|(bytes, _)| bytes.contains(&file_offset))
            .and_then(|(bytes, vaddr)| vaddr.checked_add(file_offset - bytes.start))
    }
}

impl SealedElf {
    /// Copies what symbolization reads of `source`, debug sections only
    /// when they are `max_debug` bytes or less.
    pub(crate) fn copy(source: &File, max_debug: u64) -> Result<Self, SealError> {
        let reader = PreadFile::new(source.try_clone()?)?;
        let len = reader_len(&reader);
        let plan = plan(&reader, max_debug)?;
        let memfd: File = rustix::fs::memfd_create(
            "hostprof-symbols",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(io::Error::from)?
        .into();
        memfd.set_len(len)?;
        let mut copied = 0;
        let mut buf = vec![0u8; 1 << 20];
        for range in &plan.ranges {
            let mut at = range.start;
            while at < range.end {
                let n = usize::try_from((range.end - at).min(buf.len() as u64))
                    .expect("at most the buffer's length");
                reader
                    .read_exact_at(&mut buf[..n], at)
                    .map_err(|err| match err.kind() {
                        io::ErrorKind::UnexpectedEof => SealError::Changed,
                        _ => SealError::Io(err),
                    })?;
                memfd.write_all_at(&buf[..n], at)?;
                at += n as u64;
                copied += n as u64;
            }
        }
        for &(header_at, empty_name) in &plan.unlinked {
            // sh_name is a section header's first 4 bytes in either class,
            // little-endian (the only byte order `plan` takes).
            memfd.write_all_at(&empty_name.to_le_bytes(), header_at)?;
        }
        rustix::fs::fcntl_add_seals(
            &memfd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )
        .map_err(io::Error::from)?;
        Ok(Self {
            memfd,
            copied,
            weight: plan.weight,
            debug_left_out: plan.debug_left_out,
            facts: plan.facts,
        })
    }

    /// What the file says of itself.
    pub(crate) fn facts(&self) -> &ElfFacts {
        &self.facts
    }

    /// A path through which the copy can be opened (by blazesym).
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.memfd.as_raw_fd()))
    }

    /// Bytes copied.
    pub(crate) fn copied(&self) -> u64 {
        self.copied
    }

    /// What symbolizing from the copy holds, about: the bytes copied, with
    /// compressed debug sections at their inflated size (blazesym inflates
    /// them to parse them, and keeps them with the file).
    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// True when the file's debug sections were too large to copy.
    pub(crate) fn debug_left_out(&self) -> bool {
        self.debug_left_out
    }
}

fn reader_len(reader: &PreadFile) -> u64 {
    object::ReadRef::len(reader).unwrap_or(0)
}

/// The byte ranges of a file to copy, sorted and merged.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    ranges: Vec<Range<u64>>,
    /// The bytes of `ranges`, debug sections at their inflated size.
    weight: u64,
    debug_left_out: bool,
    /// The file offsets of the section headers of [`LINKS`] sections,
    /// and the name offset the copy gives each (the empty name).
    unlinked: Vec<(u64, u32)>,
    facts: ElfFacts,
}

/// What to copy of the ELF file `reader`, with at most `max_debug` bytes
/// of debug sections (inflated).
fn plan(reader: &PreadFile, max_debug: u64) -> Result<Plan, SealError> {
    match FileKind::parse(reader).map_err(|_| SealError::NotElf)? {
        FileKind::Elf32 => plan_of::<elf::FileHeader32<Endianness>>(reader, max_debug),
        FileKind::Elf64 => plan_of::<elf::FileHeader64<Endianness>>(reader, max_debug),
        _ => Err(SealError::NotElf),
    }
}

fn plan_of<Elf: FileHeader<Endian = Endianness>>(
    reader: &PreadFile,
    max_debug: u64,
) -> Result<Plan, SealError> {
    let len = reader_len(reader);
    let header = Elf::parse(reader).map_err(|_| SealError::NotElf)?;
    let endian = header.endian().map_err(|_| SealError::NotElf)?;
    let shoff: u64 = header.e_shoff(endian).into();
    // blazesym reads the headers as little-endian whatever the file says,
    // and a section table at offset 0 where `object` sees none: on such a
    // file the two would not see the same sections, and the links
    // removed below could be found in the copy after all.
    if endian != Endianness::Little || (shoff == 0 && header.e_shnum(endian) != 0) {
        return Err(SealError::NotElf);
    }
    let mut ranges: Vec<Range<u64>> = Vec::new();
    // The header itself, whatever its e_ehsize claims.
    ranges.push(0..std::mem::size_of::<Elf>() as u64);
    let phoff: u64 = header.e_phoff(endian).into();
    let phnum = u64::from(header.e_phnum(endian));
    let program_headers =
        phoff..phoff.saturating_add(phnum * u64::from(header.e_phentsize(endian)));
    // Past the end they are not read (below): nothing to copy.
    if program_headers.end <= len {
        ranges.push(program_headers);
    }
    let sections = header
        .sections(endian, reader)
        .map_err(|_| SealError::NotElf)?;
    let entry = u64::from(header.e_shentsize(endian));
    ranges.push(shoff..shoff.saturating_add(sections.len() as u64 * entry));
    let mut debug = Vec::new();
    let mut inflated_debug = 0u64;
    let mut has_symbols = false;
    let mut unlinked = Vec::new();
    for (index, section) in sections.iter().enumerate() {
        let kind = section.sh_type(endian);
        let flags: u64 = section.sh_flags(endian).into();
        let offset: u64 = section.sh_offset(endian).into();
        let size: u64 = section.sh_size(endian).into();
        let range = offset..offset.saturating_add(size);
        // A name that cannot be read might be a link's: the file is not
        // copied (blazesym, reading without a budget, could read it).
        let name = sections
            .section_name(endian, section)
            .map_err(|_| SealError::NotElf)?;
        if LINKS.contains(&name) {
            // The header is inside the section header table, itself inside
            // the file (object checked both when it read the table); the
            // name's terminating zero inside the name table, which is
            // copied (`SHT_STRTAB`).
            let empty_name = u32::try_from(name.len())
                .ok()
                .and_then(|len| section.sh_name(endian).checked_add(len))
                .ok_or(SealError::NotElf)?;
            unlinked.push((shoff + index as u64 * entry, empty_name));
            continue;
        }
        if kind == elf::SHT_NOBITS || size == 0 {
            continue;
        }
        if range.end > len {
            return Err(SealError::Changed);
        }
        has_symbols |= kind == elf::SHT_SYMTAB || name == b".debug_info" || name == b".zdebug_info";
        if name.starts_with(b".debug_") || name.starts_with(b".zdebug_") {
            let compressed = inflated_size::<Elf>(section, endian, reader, name);
            // A compressed one stays: blazesym inflates every section gimli
            // loads as it opens the file, and a hole would not inflate.
            if compressed.is_none() && !read_by_symbolization(name) {
                continue;
            }
            let inflated = compressed.unwrap_or(size);
            inflated_debug = inflated_debug.saturating_add(inflated);
            debug.push(range);
        } else if wanted(kind, flags) {
            ranges.push(range);
        }
    }
    let debug_left_out = inflated_debug > max_debug;
    let ranges = merged(ranges);
    let mut weight = ranges
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.end - r.start));
    let mut ranges = ranges;
    if !debug_left_out {
        weight = weight.saturating_add(inflated_debug);
        ranges.extend(debug);
        ranges = merged(ranges);
    }
    if ranges.iter().any(|r| r.end > len) {
        return Err(SealError::Changed);
    }
    // Only a debug file's lookups need them: program headers that cannot
    // be read leave the file symbolized from itself, not unsymbolized.
    let segments = header
        .program_headers(endian, reader)
        .unwrap_or_default()
        .iter()
        .filter(|phdr| phdr.p_type(endian) == elf::PT_LOAD)
        .map(|phdr| {
            let offset: u64 = phdr.p_offset(endian).into();
            let size: u64 = phdr.p_filesz(endian).into();
            (
                offset..offset.saturating_add(size),
                phdr.p_vaddr(endian).into(),
            )
        })
        .collect();
    Ok(Plan {
        ranges,
        weight,
        debug_left_out,
        unlinked,
        facts: ElfFacts {
            build_id: crate::build_id::in_sections(&sections, endian, reader),
            segments: Segments(segments),
            stripped: !has_symbols,
        },
    })
}

/// The size a debug section `name` inflates to: from its compression
/// header (`SHF_COMPRESSED`), or the size after a `.zdebug_` section's
/// `ZLIB` magic (the older GNU form); `None` when it is not compressed or
/// its header cannot be read.
fn inflated_size<Elf: FileHeader<Endian = Endianness>>(
    section: &Elf::SectionHeader,
    endian: Endianness,
    reader: &PreadFile,
    name: &[u8],
) -> Option<u64> {
    use object::read::elf::CompressionHeader;
    use object::ReadRef;
    if let Ok(Some((header, _, _))) = section.compression(endian, reader) {
        return Some(header.ch_size(endian).into());
    }
    if name.starts_with(b".zdebug_") {
        let offset: u64 = section.sh_offset(endian).into();
        let head = reader.read_bytes_at(offset, 12).ok()?;
        if head.starts_with(b"ZLIB") {
            return Some(u64::from_be_bytes(head[4..12].try_into().ok()?));
        }
    }
    None
}

/// Whether the debug section `name` (`.debug_*` or `.zdebug_*`) can be
/// read by symbolization. Left out when not compressed, as holes:
/// variable locations (`.debug_loc`, `.debug_loclists`: a fifth of a
/// typical C library's DWARF), macros, call frame information (the
/// unwinder reads `.eh_frame` and `.debug_frame` from the file itself)
/// and the name indexes blazesym does not use. gimli still finds them in
/// the section headers and reads zeros if anything asks; nothing on the
/// path from an address to its functions, inlined calls and lines does.
fn read_by_symbolization(name: &[u8]) -> bool {
    let base = name
        .strip_prefix(b".debug_")
        .or_else(|| name.strip_prefix(b".zdebug_"))
        .unwrap_or(name);
    !matches!(
        base,
        b"loc"
            | b"loclists"
            | b"macro"
            | b"macinfo"
            | b"frame"
            | b"pubnames"
            | b"pubtypes"
            | b"gnu_pubnames"
            | b"gnu_pubtypes"
    )
}

/// Whether a (non-debug) section is read by symbolization: everything
/// not loaded (symbol and string tables, `.gnu_debuglink`, compressed
/// debug data) and, of what is loaded, the dynamic symbols and strings and
/// the notes (the build id). Loaded code and data (`SHT_PROGBITS`,
/// `.eh_frame`, relocations, arrays) are not.
fn wanted(kind: u32, flags: u64) -> bool {
    flags & u64::from(elf::SHF_ALLOC) == 0
        || matches!(
            kind,
            elf::SHT_DYNSYM
                | elf::SHT_STRTAB
                | elf::SHT_NOTE
                | elf::SHT_GNU_VERSYM
                | elf::SHT_GNU_VERDEF
                | elf::SHT_GNU_VERNEED
        )
}

/// `ranges` sorted, without empty ones, overlapping or touching ones joined.
fn merged(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_sorted_and_skip_empty() {
        assert_eq!(
            merged(vec![10..20, 0..5, 5..8, 15..30, 40..40, 50..60]),
            vec![0..8, 10..30, 50..60]
        );
    }

    #[test]
    fn loaded_code_and_data_are_left_out() {
        let alloc = u64::from(elf::SHF_ALLOC);
        let exec = u64::from(elf::SHF_EXECINSTR);
        assert!(!wanted(elf::SHT_PROGBITS, alloc | exec));
        assert!(!wanted(elf::SHT_PROGBITS, alloc));
        assert!(wanted(elf::SHT_SYMTAB, 0));
        assert!(wanted(elf::SHT_PROGBITS, 0)); // .gnu_debuglink, .comment
        assert!(wanted(elf::SHT_DYNSYM, alloc));
        assert!(wanted(elf::SHT_NOTE, alloc));
    }

    fn own_binary() -> File {
        File::open("/proc/self/exe").unwrap()
    }

    #[test]
    fn a_copy_is_sealed_sparse_and_the_size_of_the_file() {
        let source = own_binary();
        let copy = SealedElf::copy(&source, MAX_DEBUG_BYTES).unwrap();
        let len = source.metadata().unwrap().len();
        assert_eq!(copy.memfd.metadata().unwrap().len(), len);
        assert!(copy.copied() > 0 && copy.copied() < len);
        // Sealed: it can be neither shrunk nor written.
        assert!(copy.memfd.set_len(0).is_err());
        assert!(copy.memfd.write_all_at(b"x", 0).is_err());
        // The headers are the file's.
        let mut ours = [0u8; 64];
        let mut theirs = [0u8; 64];
        File::open(copy.path())
            .unwrap()
            .read_exact_at(&mut ours, 0)
            .unwrap();
        source.read_exact_at(&mut theirs, 0).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn debug_sections_symbolization_never_reads_are_left_out() {
        for unread in [
            ".debug_loclists",
            ".zdebug_loc",
            ".debug_macro",
            ".debug_frame",
        ] {
            assert!(!read_by_symbolization(unread.as_bytes()), "{unread}");
        }
        for read in [
            ".debug_info",
            ".zdebug_line",
            ".debug_rnglists",
            ".debug_str",
            ".debug_aranges",
        ] {
            assert!(read_by_symbolization(read.as_bytes()), "{read}");
        }
        // A program built with -O1 -g has location lists: the copy has
        // none of their bytes.
        let (plan, (start, len), compressed) = location_lists(false);
        assert!(!compressed);
        assert!(
            plan.ranges
                .iter()
                .all(|r| r.end <= start || r.start >= start + len),
            "{:?} overlaps {start}+{len}",
            plan.ranges
        );
    }

    /// The plan for a program built with `-O1 -g` (with `compressed`,
    /// `-gz`), the file range of its location lists, and whether they are
    /// compressed.
    fn location_lists(compressed: bool) -> (Plan, (u64, u64), bool) {
        use object::{Object as _, ObjectSection as _};
        let dir = tempfile::tempdir().unwrap();
        let file = debug_program(dir.path(), "locations", compressed);
        let plan = plan(&PreadFile::new(file).unwrap(), u64::MAX).unwrap();
        let elf = std::fs::read(dir.path().join("locations")).unwrap();
        let parsed = object::File::parse(&*elf).unwrap();
        let loclists = parsed
            .section_by_name(".debug_loclists")
            .or_else(|| parsed.section_by_name(".debug_loc"))
            .expect("gcc -O1 -g writes location lists");
        let zlib = matches!(
            loclists.compressed_file_range().map(|r| r.format),
            Ok(object::CompressionFormat::Zlib)
        );
        (plan, loclists.file_range().unwrap(), zlib)
    }

    /// A compressed section stays, read or not: blazesym inflates every
    /// section gimli loads when it opens a file, and fails the whole file
    /// on one that does not inflate (a hole). Go 1.19 compresses its
    /// `.debug_loc` and `.debug_frame`.
    #[test]
    fn compressed_debug_sections_are_copied_read_or_not() {
        let (plan, (start, len), compressed) = location_lists(true);
        assert!(compressed, "-gz compresses them");
        assert!(
            plan.ranges
                .iter()
                .any(|r| r.start <= start && start + len <= r.end),
            "{:?} lacks {start}+{len}",
            plan.ranges
        );
    }

    #[test]
    fn debug_sections_past_the_limit_are_left_out() {
        let reader = PreadFile::new(own_binary()).unwrap();
        let whole = plan(&reader, u64::MAX).unwrap();
        let lean = plan(&reader, 0).unwrap();
        assert!(!whole.debug_left_out);
        assert!(lean.debug_left_out, "a test binary has debug info");
        let bytes = |p: &Plan| p.ranges.iter().map(|r| r.end - r.start).sum::<u64>();
        assert!(bytes(&lean) < bytes(&whole));
        assert_eq!(lean.weight, bytes(&lean), "nothing compressed");
        assert_eq!(whole.weight, bytes(&whole));
    }

    /// A program with `lines` functions, built with debug info; with
    /// `compressed`, its debug sections zlib-compressed (`-gz`).
    fn debug_program(dir: &std::path::Path, name: &str, compressed: bool) -> File {
        let source = dir.join("many.c");
        let body: String = (0..300)
            .map(|i| format!("int f{i}(int x) {{ return x * {i} + 1; }}\n"))
            .collect();
        std::fs::write(&source, body + "int main(void) { return f7(2); }\n").unwrap();
        let out = dir.join(name);
        let mut gcc = std::process::Command::new("gcc");
        gcc.args(["-O1", "-g"]);
        if compressed {
            gcc.arg("-gz=zlib");
        }
        let status = gcc
            .arg("-o")
            .arg(&out)
            .arg(&source)
            .status()
            .expect("gcc (`cargo xtask setup` installs it)");
        assert!(status.success());
        File::open(out).unwrap()
    }

    #[test]
    fn compressed_debug_sections_weigh_what_they_inflate_to() {
        let dir = tempfile::tempdir().unwrap();
        let plain = SealedElf::copy(&debug_program(dir.path(), "plain", false), u64::MAX).unwrap();
        let small = SealedElf::copy(&debug_program(dir.path(), "gz", true), u64::MAX).unwrap();
        assert!(
            small.copied() < plain.copied(),
            "compressed: {} bytes copied, plain {}",
            small.copied(),
            plain.copied()
        );
        assert_eq!(plain.weight(), plain.copied());
        // The same debug info, inflated: about the plain copy's weight
        // (the compressed file's headers and tables differ a little).
        let ratio = small.weight() as f64 / plain.weight() as f64;
        assert!(
            (0.9..1.1).contains(&ratio),
            "{} vs {}",
            small.weight(),
            plain.weight()
        );
        // The limit counts inflated bytes: the compressed file's debug
        // info is left out where the plain one's would be.
        let limit = plain.copied() / 2;
        let compressed = debug_program(dir.path(), "gz2", true);
        assert!(SealedElf::copy(&compressed, limit)
            .unwrap()
            .debug_left_out());
    }

    /// Section sizes that overflow when added up (found by the
    /// `unwind_table` fuzz target): an error, not a panic.
    #[test]
    fn section_sizes_from_a_hostile_header_cannot_overflow() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            temp.path(),
            include_bytes!("../../../fuzz/corpus/unwind_table/seed-debug-sizes-overflow"),
        )
        .unwrap();
        assert!(SealedElf::copy(temp.as_file(), MAX_DEBUG_BYTES).is_err());
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_fault() {
        let temp = tempfile::NamedTempFile::new().unwrap();
        let elf = std::fs::read("/proc/self/exe").unwrap();
        // The headers survive; the section header table, at the end, does not.
        std::fs::write(temp.path(), &elf[..elf.len() / 2]).unwrap();
        let err = SealedElf::copy(temp.as_file(), MAX_DEBUG_BYTES)
            .err()
            .unwrap();
        assert!(
            matches!(err, SealError::Changed | SealError::NotElf),
            "{err}"
        );
        std::fs::write(temp.path(), b"#!/bin/sh\n").unwrap();
        assert!(matches!(
            SealedElf::copy(temp.as_file(), MAX_DEBUG_BYTES),
            Err(SealError::NotElf)
        ));
    }

    /// Headers that blazesym would read otherwise than `object` (it reads
    /// little-endian whatever the file says, and a section table at offset
    /// 0 where `object` sees none) are refused, not copied.
    #[test]
    fn headers_blazesym_would_read_differently_are_refused() {
        let elf = std::fs::read("/proc/self/exe").unwrap();
        let temp = tempfile::NamedTempFile::new().unwrap();
        let refused = |bytes: &[u8]| {
            std::fs::write(temp.path(), bytes).unwrap();
            matches!(
                SealedElf::copy(temp.as_file(), MAX_DEBUG_BYTES),
                Err(SealError::NotElf)
            )
        };
        assert!(!refused(&elf), "the test binary itself is copied");
        let mut big_endian = elf.clone();
        big_endian[5] = elf::ELFDATA2MSB;
        assert!(refused(&big_endian));
        // e_shoff (ELF64: bytes 40..48) zero, e_shnum still set.
        let mut table_at_zero = elf.clone();
        table_at_zero[40..48].fill(0);
        assert!(refused(&table_at_zero));
    }

    /// A link section keeps its header in the copy, its name pointing at
    /// its own name's terminating zero: nothing finds it by name, whatever
    /// the name table holds at offset 0.
    #[test]
    fn a_link_section_has_no_name_in_the_copy() {
        use object::{Object as _, ObjectSection as _};
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("linked");
        let out = std::process::Command::new("objcopy")
            .arg("--add-gnu-debuglink=/proc/self/exe")
            .arg("/proc/self/exe")
            .arg(&program)
            .output()
            .expect("objcopy (binutils: `cargo xtask setup`)");
        assert!(out.status.success(), "{out:?}");
        let original = std::fs::read(&program).unwrap();
        let original = object::File::parse(&*original).unwrap();
        let link = original.section_by_name(".gnu_debuglink").expect("added");
        let copy = SealedElf::copy(&File::open(&program).unwrap(), MAX_DEBUG_BYTES).unwrap();
        let copied = std::fs::read(copy.path()).unwrap();
        let copied = object::File::parse(&*copied).unwrap();
        assert!(copied.section_by_name(".gnu_debuglink").is_none());
        let renamed = copied.section_by_index(link.index()).unwrap();
        assert_eq!(renamed.name(), Ok(""));
        assert_eq!(copied.sections().count(), original.sections().count());
    }
}
