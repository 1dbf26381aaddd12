//! Builds an [`UnwindTable`] from an ELF file's call frame information:
//! `.eh_frame` (and `.debug_frame` when present), evaluated with gimli into
//! one row per change of the CFA or rbp rule. Files mapped by other
//! processes are untrusted input: they are read with bounded `pread`s into
//! buffers of our own ([`crate::pread::PreadFile`]), never mapped, so a file
//! truncated, grown or replaced while it is read gives an error, not a
//! SIGBUS. Nothing but the table is kept.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use gimli::{
    BaseAddresses, CfaRule as GimliCfa, CieOrFde, DebugFrame, EhFrame, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{CompressionFormat, Object, ObjectSection, ObjectSegment, ReadRef};

use super::table::{CfaRule, RbpRule, UnwindRow, UnwindTable};
use crate::pread::PreadFile;

/// Why a file has no unwind table.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not an ELF file hostprof can read (corrupt, truncated, not ELF).
    #[error("{path} is not a readable ELF file: {reason}")]
    NotElf {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// The call frame information is malformed.
    #[error("{path}: malformed {section}: {source}")]
    Cfi {
        /// The file.
        path: String,
        /// `.eh_frame` or `.debug_frame`.
        section: &'static str,
        /// What gimli said.
        #[source]
        source: gimli::Error,
    },
}

/// A loadable segment: file offset, virtual address and size in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Offset in the file.
    pub offset: u64,
    /// Virtual address it is linked at.
    pub vaddr: u64,
    /// Bytes of the file it covers.
    pub size: u64,
    /// Mapped executable (`PF_X`).
    pub executable: bool,
}

/// What unwinding needs of one file: its table, and its segments to turn
/// a runtime address (through its file offset) into a table pc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileUnwind {
    /// The rows.
    pub table: UnwindTable,
    /// The file's `PT_LOAD` segments.
    pub segments: Vec<LoadSegment>,
}

/// Builds the unwind table of the ELF file at `path`. A file without
/// `.eh_frame` or `.debug_frame` gives an empty table (it is unwound with
/// frame pointers).
pub fn from_elf_file(path: &Path) -> Result<FileUnwind, BuildError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| BuildError::Read {
        path: shown.clone(),
        source,
    })?;
    from_open_file(&file, &shown)
}

/// Bytes of call frame information (`.eh_frame` and `.debug_frame`) in an
/// open ELF file: what building its table costs. 0 when it is not ELF.
pub fn cfi_size(file: &std::fs::File) -> u64 {
    let Ok(reader) = file.try_clone().and_then(PreadFile::new) else {
        return 0;
    };
    let Ok(elf) = object::File::parse(&reader) else {
        return 0;
    };
    [".eh_frame", ".debug_frame"]
        .iter()
        .filter_map(|name| elf.section_by_name(name))
        .map(|section| section.size())
        .sum()
}

/// Builds the unwind table of an open ELF file, read with bounded `pread`s
/// (only the headers and the CFI sections); `name` names it in errors.
pub fn from_open_file(file: &std::fs::File, name: &str) -> Result<FileUnwind, BuildError> {
    let reader = file
        .try_clone()
        .and_then(PreadFile::new)
        .map_err(|source| BuildError::Read {
            path: name.to_owned(),
            source,
        })?;
    from_elf_data(&reader, name)
}

/// Builds the unwind table of an ELF image read through `data` (bytes in
/// memory, or a [`PreadFile`]); `name` names it in errors.
pub fn from_elf_data<'data, R: ReadRef<'data>>(
    data: R,
    name: &str,
) -> Result<FileUnwind, BuildError> {
    let elf = object::File::parse(data).map_err(|err| BuildError::NotElf {
        path: name.to_owned(),
        reason: err.to_string(),
    })?;
    let segments = elf
        .segments()
        .map(|segment| {
            let (offset, size) = segment.file_range();
            let executable = match segment.flags() {
                object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => false,
            };
            LoadSegment {
                offset,
                vaddr: segment.address(),
                size,
                executable,
            }
        })
        .collect();
    let mut bases = BaseAddresses::default();
    if let Some(text) = elf.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = elf.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut fdes = Vec::new();
    if let Some(section) = elf.section_by_name(".eh_frame") {
        let bytes = section_bytes(&section, name)?;
        let bases = bases.clone().set_eh_frame(section.address());
        let mut eh_frame = EhFrame::new(&bytes, LittleEndian);
        eh_frame.set_address_size(8);
        collect(&eh_frame, &bases, &mut fdes).map_err(|source| BuildError::Cfi {
            path: name.to_owned(),
            section: ".eh_frame",
            source,
        })?;
    }
    if let Some(section) = elf.section_by_name(".debug_frame") {
        let debug_frame = section_bytes(&section, name).and_then(|bytes| {
            let mut debug_frame = DebugFrame::new(&bytes, LittleEndian);
            debug_frame.set_address_size(8);
            let mut more = Vec::new();
            collect(&debug_frame, &bases, &mut more).map_err(|source| BuildError::Cfi {
                path: name.to_owned(),
                section: ".debug_frame",
                source,
            })?;
            Ok(more)
        });
        match debug_frame {
            Ok(more) => fdes.extend(more),
            // A `.debug_frame` hostprof cannot read (zstd-compressed,
            // corrupt) leaves the `.eh_frame` it has.
            Err(err) if !fdes.is_empty() => log::debug!("{err}; using .eh_frame alone"),
            Err(err) => return Err(err),
        }
    }
    Ok(FileUnwind {
        table: assemble(fdes),
        segments,
    })
}

/// Largest call frame section decompressed (a bomb must not take the
/// agent's memory; Go's is a few hundred KiB).
const MAX_INFLATED: u64 = 64 << 20;

/// A section's bytes, inflated when it is zlib-compressed
/// (`SHF_COMPRESSED`: Go compresses its `.debug_frame`, the only call
/// frame information it emits). flate2, already a dependency, inflates it
/// rather than object's `compression` feature, which would add a zstd
/// crate for sections no toolchain here writes.
fn section_bytes<'data, R: ReadRef<'data>>(
    section: &object::Section<'data, '_, R>,
    name: &str,
) -> Result<Cow<'data, [u8]>, BuildError> {
    let bad = |reason: String| BuildError::NotElf {
        path: name.to_owned(),
        reason,
    };
    let compressed = section
        .compressed_data()
        .map_err(|err| bad(err.to_string()))?;
    match compressed.format {
        CompressionFormat::None => Ok(Cow::Borrowed(compressed.data)),
        CompressionFormat::Zlib if compressed.uncompressed_size <= MAX_INFLATED => {
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(compressed.data)
                .take(compressed.uncompressed_size)
                .read_to_end(&mut inflated)
                .map_err(|err| bad(format!("inflating a compressed section: {err}")))?;
            if inflated.len() as u64 != compressed.uncompressed_size {
                return Err(bad("a compressed section inflates short".into()));
            }
            Ok(Cow::Owned(inflated))
        }
        format => Err(bad(format!(
            "a {format:?}-compressed section of {} bytes",
            compressed.uncompressed_size
        ))),
    }
}

/// The rows of one FDE and the end of its range.
struct FdeRows {
    rows: Vec<UnwindRow>,
    end: u64,
}

/// Evaluates every FDE of `section` into rows.
fn collect<'a, S: UnwindSection<gimli::EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    out: &mut Vec<FdeRows>,
) -> gimli::Result<()>
where
    S::Offset: gimli::UnwindOffset,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(S::cie_from_offset)?;
        if fde.len() == 0 {
            continue;
        }
        let mut table = fde.rows(section, bases, &mut ctx)?;
        let mut rows = Vec::new();
        while let Some(row) = table.next_row()? {
            let cfa = match row.cfa() {
                GimliCfa::RegisterAndOffset { register, offset } => {
                    register_cfa(*register, *offset)
                }
                GimliCfa::Expression(expression) => {
                    let bytes = expression.get(section)?.0;
                    expression_rule(bytes.slice())
                }
            };
            // An undefined return address marks the outermost frame; with
            // a register CFA the unwinder reads it at CFA - 8 only, so any
            // other place is no rule it can apply (a signal trampoline's
            // is in the ucontext, which its own rule reads).
            let cfa = match (cfa, row.register(X86_64::RA)) {
                (_, Some(RegisterRule::Undefined)) => CfaRule::End,
                (CfaRule::Rsp(_) | CfaRule::Rbp(_), Some(rule))
                    if rule != RegisterRule::Offset(-8) =>
                {
                    CfaRule::Unsupported
                }
                (cfa, _) => cfa,
            };
            rows.push(UnwindRow {
                pc: row.start_address(),
                cfa,
                rbp: rbp_rule(row.register(X86_64::RBP)),
            });
        }
        out.push(FdeRows {
            rows,
            end: fde.end_address(),
        });
    }
    Ok(())
}

/// All FDEs' rows in one table, with a gap row wherever an FDE ends and no
/// other begins.
fn assemble(fdes: Vec<FdeRows>) -> UnwindTable {
    // Gap markers first: at an equal pc, a real row given later wins.
    let mut rows: Vec<UnwindRow> = fdes
        .iter()
        .map(|fde| UnwindRow {
            pc: fde.end,
            cfa: CfaRule::Missing,
            rbp: RbpRule::Unchanged,
        })
        .collect();
    rows.extend(fdes.into_iter().flat_map(|fde| fde.rows));
    UnwindTable::new(rows)
}

fn register_cfa(register: gimli::Register, offset: i64) -> CfaRule {
    let Ok(offset) = i32::try_from(offset) else {
        return CfaRule::Unsupported;
    };
    match register {
        X86_64::RSP => CfaRule::Rsp(offset),
        X86_64::RBP => CfaRule::Rbp(offset),
        _ => CfaRule::Unsupported,
    }
}

/// Recognizes the two CFA expressions x86-64 code carries in practice:
/// the PLT stubs', as GNU ld emits it for `.plt` (threshold 11) and for
/// second-PLT stubs (threshold 10): `DW_OP_breg7 (rsp) 8; DW_OP_breg16
/// (rip) 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<threshold>; DW_OP_ge;
/// DW_OP_lit3; DW_OP_shl; DW_OP_plus`; and the signal trampoline's
/// (glibc's `__restore_rt`): `DW_OP_breg7 (rsp) 160; DW_OP_deref`, the
/// saved rsp in the `ucontext_t`. Any other expression is unsupported.
fn expression_rule(expression: &[u8]) -> CfaRule {
    const BREG7: u8 = 0x77;
    const DEREF: u8 = 0x06;
    const BREG16: u8 = 0x80;
    const LIT0: u8 = 0x30;
    const AND: u8 = 0x1a;
    const GE: u8 = 0x2a;
    const SHL: u8 = 0x24;
    const PLUS: u8 = 0x22;
    match expression {
        [BREG7, 8, BREG16, 0, lit15, AND, lit_threshold, GE, lit3, SHL, PLUS]
            if *lit15 == LIT0 + 15
                && *lit3 == LIT0 + 3
                && (LIT0 + 10..=LIT0 + 11).contains(lit_threshold) =>
        {
            CfaRule::Plt {
                threshold: lit_threshold - LIT0,
            }
        }
        // 160 as a signed LEB128: 0xa0 0x01.
        [BREG7, 0xa0, 0x01, DEREF] => CfaRule::Signal,
        _ => CfaRule::Unsupported,
    }
}

fn rbp_rule<T: gimli::ReaderOffset>(rule: Option<RegisterRule<T>>) -> RbpRule {
    let Some(rule) = rule else {
        return RbpRule::Unchanged;
    };
    match rule {
        RegisterRule::Undefined | RegisterRule::SameValue => RbpRule::Unchanged,
        RegisterRule::Offset(offset) => match i32::try_from(offset) {
            Ok(offset) => RbpRule::CfaOffset(offset),
            Err(_) => RbpRule::Unsupported,
        },
        _ => RbpRule::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    /// `(loc, cfa, rbp, ra)` for every row `readelf --debug-dump=frames-interp`
    /// prints, as readelf spells the rules (`rsp+8`, `exp`, `c-16`, `u`).
    fn readelf_rows(path: &Path) -> Vec<(u64, String, String, String)> {
        let out = Command::new("readelf")
            .args(["--debug-dump=frames-interp", "-W"])
            .arg(path)
            .output()
            .expect("readelf (binutils) must be installed");
        // readelf exits 1 for files whose separate debug info it cannot
        // find, after printing everything; the row count is checked below.
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        let mut in_fde = false;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if line.contains(" FDE ") {
                in_fde = true;
                columns.clear();
            } else if line.contains(" CIE ") || line.starts_with("Contents of") {
                in_fde = false;
            } else if words.first() == Some(&"LOC") {
                columns = words.iter().map(|w| w.to_string()).collect();
            } else if in_fde && words.len() == columns.len() && !columns.is_empty() {
                let Ok(loc) = u64::from_str_radix(words[0], 16) else {
                    continue;
                };
                let rbp = columns
                    .iter()
                    .position(|c| c == "rbp")
                    .map_or("u".to_owned(), |i| words[i].to_owned());
                let ra = columns
                    .iter()
                    .position(|c| c == "ra")
                    .map_or("c-8".to_owned(), |i| words[i].to_owned());
                rows.push((loc, words[1].to_owned(), rbp, ra));
            }
        }
        rows
    }

    /// Our row as readelf would print it; an unsupported rule agrees with
    /// whatever readelf shows that we do not evaluate (an expression, or a
    /// register other than rsp and rbp, like the r11 of stack probes or the
    /// rdx of signal trampolines).
    fn spelled(row: &UnwindRow, readelf_cfa: &str, readelf_rbp: &str) -> (String, String) {
        let cfa = match row.cfa {
            CfaRule::Rsp(n) => format!("rsp+{n}"),
            CfaRule::Rbp(n) => format!("rbp+{n}"),
            CfaRule::Plt { .. } | CfaRule::Signal => "exp".to_owned(),
            CfaRule::Unsupported
                if !readelf_cfa.starts_with("rsp") && !readelf_cfa.starts_with("rbp") =>
            {
                readelf_cfa.to_owned()
            }
            CfaRule::Unsupported => "unsupported".to_owned(),
            CfaRule::Missing => "missing".to_owned(),
            // Checked against readelf's ra column below.
            CfaRule::End => readelf_cfa.to_owned(),
        };
        let rbp = match row.rbp {
            RbpRule::Unchanged => "u".to_owned(),
            RbpRule::CfaOffset(n) => format!("c{n:+}"),
            RbpRule::Unsupported if !readelf_rbp.starts_with('c') && readelf_rbp != "u" => {
                readelf_rbp.to_owned()
            }
            RbpRule::Unsupported => "unsupported".to_owned(),
        };
        (cfa, rbp)
    }

    /// Every row readelf prints for `path` agrees with our table.
    fn agrees_with_readelf(path: &Path) -> UnwindTable {
        let table = from_elf_file(path).unwrap().table;
        let expected = readelf_rows(path);
        assert!(
            expected.len() > 100,
            "{}: readelf printed {} rows",
            path.display(),
            expected.len()
        );
        let mut mismatches = Vec::new();
        for (loc, cfa, rbp, ra) in &expected {
            let row = table.lookup(*loc);
            let outermost = row.is_some_and(|r| r.cfa == CfaRule::End);
            if outermost != (ra == "u") {
                mismatches.push(format!("{loc:#x}: readelf ra {ra}, ours {row:?}"));
                continue;
            }
            let got = row.map(|row| spelled(row, cfa, rbp));
            if got.as_ref() != Some(&(cfa.clone(), rbp.clone())) {
                mismatches.push(format!("{loc:#x}: readelf {cfa} {rbp}, ours {got:?}"));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{}: {} of {} rows differ:\n{}",
            path.display(),
            mismatches.len(),
            expected.len(),
            mismatches[..mismatches.len().min(20)].join("\n")
        );
        table
    }

    fn system_library(name: &str) -> PathBuf {
        [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/lib64",
        ]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found"))
    }

    #[test]
    fn libc_agrees_with_readelf() {
        let table = agrees_with_readelf(&system_library("libc.so.6"));
        let stats = table.stats();
        // __restore_rt's rule is the signal frame's, not "no rule" (its
        // return address is read from the ucontext, not at CFA - 8).
        assert!(
            stats.rsp > 1000 && stats.plt >= 1 && stats.signal >= 1,
            "{stats}"
        );
    }

    #[test]
    fn libstdcxx_agrees_with_readelf() {
        agrees_with_readelf(&system_library("libstdc++.so.6"));
    }

    #[test]
    fn own_test_binary_agrees_with_readelf() {
        let exe = std::env::current_exe().unwrap();
        agrees_with_readelf(&exe);
        // Our own code's file offset maps to its linked address.
        let file = from_elf_file(&exe).unwrap();
        let text = file
            .segments
            .iter()
            .find(|s| s.size > 0 && s.offset > 0)
            .expect("a loadable segment past the headers");
        assert_eq!(
            crate::unwind::registry::vaddr_delta(&file.segments, text.offset),
            Some(text.vaddr.wrapping_sub(text.offset))
        );
    }

    #[test]
    fn a_compressed_debug_frame_is_inflated() {
        // C with its call frame information in .debug_frame only (as Go
        // has), then the same with that section zlib-compressed.
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("f.c");
        std::fs::write(
            &source,
            "int f(int x) { return x * 3; }\nint main(void) { return f(2); }\n",
        )
        .unwrap();
        let plain = dir.path().join("plain");
        let status = Command::new("gcc")
            .args([
                "-O1",
                "-g",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
                "-o",
            ])
            .arg(&plain)
            .arg(&source)
            .status()
            .expect("gcc (`cargo xtask setup` installs it)");
        assert!(status.success());
        let compressed = dir.path().join("compressed");
        let status = Command::new("objcopy")
            .arg("--compress-debug-sections=zlib")
            .arg(&plain)
            .arg(&compressed)
            .status()
            .expect("objcopy (binutils) must be installed");
        assert!(status.success());
        let flags = Command::new("readelf")
            .arg("-SW")
            .arg(&compressed)
            .output()
            .unwrap();
        let flags = String::from_utf8_lossy(&flags.stdout);
        let line = flags.lines().find(|l| l.contains(".debug_frame")).unwrap();
        // The section's flags column: C for compressed.
        assert!(line.split_whitespace().any(|word| word == "C"), "{line}");
        let plain = from_elf_file(&plain).unwrap().table;
        let inflated = from_elf_file(&compressed).unwrap().table;
        assert!(plain.stats().rsp > 0, "{}", plain.stats());
        assert_eq!(inflated.rows(), plain.rows());
    }

    #[test]
    fn plt_expressions_are_recognized() {
        let plt = [0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
        assert_eq!(expression_rule(&plt), CfaRule::Plt { threshold: 11 });
        let mut plt_sec = plt;
        plt_sec[6] = 0x3a;
        assert_eq!(expression_rule(&plt_sec), CfaRule::Plt { threshold: 10 });
        assert_eq!(expression_rule(&plt[..10]), CfaRule::Unsupported);
        assert_eq!(expression_rule(&[]), CfaRule::Unsupported);
        assert_eq!(expression_rule(&[0x77, 0xa0, 0x01, 0x06]), CfaRule::Signal);
        assert_eq!(expression_rule(&[0x77, 0xa0, 0x01]), CfaRule::Unsupported);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let err = from_elf_data(&b"not an elf file at all"[..], "junk").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("junk is not a readable ELF file"),
            "{err}"
        );
        let libc = std::fs::read(system_library("libc.so.6")).unwrap();
        // Cut inside the section headers: still an error, never a panic.
        let cut = &libc[..libc.len() - 100];
        assert!(from_elf_data(cut, "cut").is_err());
        let err = from_elf_file(Path::new("/nonexistent/lib.so")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lib.so"), "{err}");
    }

    /// A tenant truncates a file while hostprof reads it: the build fails
    /// with an error (it would be a SIGBUS through mmap), and the file that
    /// grows back is read whole.
    #[test]
    fn a_file_truncated_while_read_is_an_error_not_a_fault() {
        let libc = std::fs::read(system_library("libc.so.6")).unwrap();
        let copy = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(copy.path(), &libc).unwrap();
        let file = std::fs::File::open(copy.path()).unwrap();
        assert!(cfi_size(&file) > 0);
        // The reader takes the size at the start, as the loader does.
        let reader = PreadFile::new(file.try_clone().unwrap()).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(copy.path())
            .unwrap()
            .set_len(4096)
            .unwrap();
        let err = from_elf_data(&reader, "truncated").unwrap_err();
        assert!(err.to_string().starts_with("truncated"), "{err}");
        assert_eq!(cfi_size(&file), 0, "a cut file has no readable CFI");
        std::fs::write(copy.path(), &libc).unwrap();
        let whole = from_open_file(&file, "restored").unwrap();
        assert!(!whole.table.rows().is_empty());
    }
}
