//! Names for a stripped file from its separate debug file, found by build
//! id in the host's debug directories (`/usr/lib/debug/.build-id/ab/cdef….debug`,
//! where Debian's `-dbg` and Fedora's `-debuginfo` packages put them).
//!
//! Only the debug file's symbol table is read, never its DWARF: every
//! function's name, static ones included, but no source lines or inlined
//! calls. The trade is memory: libc6-dbg's DWARF for libc alone held about
//! 20 MiB in the agent (10 MiB of sections inflated, 6.7 MiB of line
//! tables, 4 MiB of the file mapped), for a library that is in nearly every
//! window; the table kept here is a few hundred KiB.
//!
//! The table is read here rather than by blazesym, which names an address
//! after the first of its function's aliases in the table: libc's
//! `nanosleep` would read `__GI___nanosleep`. Here the name a caller would
//! write wins ([`rank`]). The file is read with bounded `pread`s and
//! closed; the host's debug directories are root's (in a container, the
//! agent image's), not a tenant's, and its build id must match.

use std::fs::File;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::{Endianness, FileKind};

use crate::pread::PreadFile;

/// Where debug files are looked for, by build id (blazesym's defaults).
pub(crate) const DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

/// The debug file for `build_id` in `dirs` (`.build-id/ab/cdef….debug`)
/// whose own build id is `build_id`; `None` when there is none.
pub(crate) fn find(dirs: &[PathBuf], build_id: &[u8]) -> Option<PathBuf> {
    // Shorter ids are not real build ids (blazesym skips them too).
    if build_id.len() < 8 {
        return None;
    }
    let hex = crate::build_id::hex(build_id);
    let (first, rest) = hex.split_at(2);
    dirs.iter()
        .map(|dir| {
            dir.join(".build-id")
                .join(first)
                .join(format!("{rest}.debug"))
        })
        .find(|path| matches(path, build_id))
}

/// Whether the file at `path` is an ELF file with build id `build_id`.
fn matches(path: &Path, build_id: &[u8]) -> bool {
    File::open(path).is_ok_and(|file| crate::build_id::read(&file).as_deref() == Some(build_id))
}

/// A function symbol as the table has it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Function {
    start: u64,
    size: u64,
    /// The end of its section: a sizeless symbol reaches no further (the
    /// `.init` section's `_init` would name the PLT after it).
    section_end: u64,
    /// Local to its file (`STB_LOCAL`).
    local: bool,
    name: String,
}

/// A debug file's functions by address, one name each.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DebugSymbols {
    path: PathBuf,
    /// (start, end, name), sorted by start, starts distinct; a sizeless
    /// symbol ends where the next starts or its section ends.
    functions: Vec<(u64, u64, Box<str>)>,
}

impl DebugSymbols {
    /// Reads the function symbols of the debug file at `path`; `None` when
    /// it cannot be read or has none.
    pub(crate) fn read(path: &Path) -> Option<Self> {
        let reader = PreadFile::new(File::open(path).ok()?).ok()?;
        let functions = match FileKind::parse(&reader).ok()? {
            FileKind::Elf32 => functions::<elf::FileHeader32<Endianness>>(&reader)?,
            FileKind::Elf64 => functions::<elf::FileHeader64<Endianness>>(&reader)?,
            _ => return None,
        };
        let functions = by_address(functions);
        (!functions.is_empty()).then(|| Self {
            path: path.to_owned(),
            functions,
        })
    }

    /// The file read.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The function at virtual offset `address`.
    pub(crate) fn name(&self, address: u64) -> Option<&str> {
        let after = self
            .functions
            .partition_point(|(start, _, _)| *start <= address);
        let (_, end, name) = self.functions.get(after.checked_sub(1)?)?;
        (address < *end).then_some(&**name)
    }
}

/// The defined function symbols of `.symtab` in the ELF file `reader`.
fn functions<Elf: FileHeader<Endian = Endianness>>(reader: &PreadFile) -> Option<Vec<Function>> {
    let header = Elf::parse(reader).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, reader).ok()?;
    let symbols = sections.symbols(endian, reader, elf::SHT_SYMTAB).ok()?;
    Some(
        symbols
            .iter()
            .filter(|sym| {
                matches!(sym.st_type(), elf::STT_FUNC | elf::STT_GNU_IFUNC)
                    && sym.st_shndx(endian) != elf::SHN_UNDEF
            })
            .filter_map(|sym| {
                let name = symbols.symbol_name(endian, sym).ok()?;
                let section = sections
                    .section(object::SectionIndex(sym.st_shndx(endian).into()))
                    .ok();
                let section_end = section.map_or(u64::MAX, |section| {
                    let start: u64 = section.sh_addr(endian).into();
                    start.saturating_add(section.sh_size(endian).into())
                });
                Some(Function {
                    start: sym.st_value(endian).into(),
                    size: sym.st_size(endian).into(),
                    section_end,
                    local: sym.st_bind() == elf::STB_LOCAL,
                    name: String::from_utf8_lossy(name).into_owned(),
                })
            })
            .collect(),
    )
}

/// How a caller would rather see a function named, among aliases at one
/// address (lower first): exported before local, then fewer leading
/// underscores (`nanosleep` before `__nanosleep` before
/// `__GI___nanosleep`), then the shorter, then by name (stable).
fn rank(function: &Function) -> (bool, usize, usize, &str) {
    let underscores = function.name.len() - function.name.trim_start_matches('_').len();
    (
        function.local,
        underscores,
        function.name.len(),
        &function.name,
    )
}

/// `functions` as (start, end, name), one per start (its best-ranked
/// alias, the largest size among them), sorted.
fn by_address(mut functions: Vec<Function>) -> Vec<(u64, u64, Box<str>)> {
    functions.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| rank(a).cmp(&rank(b))));
    // (start, end, name, section end)
    let mut out: Vec<(u64, u64, Box<str>, u64)> = Vec::new();
    for function in functions {
        let end = function.start.saturating_add(function.size);
        match out.last_mut() {
            Some((start, last_end, _, _)) if *start == function.start => {
                *last_end = (*last_end).max(end);
            }
            _ => out.push((
                function.start,
                end,
                function.name.into_boxed_str(),
                function.section_end,
            )),
        }
    }
    // Sizeless ones reach the next function, within their section.
    for i in 0..out.len() {
        if out[i].1 == out[i].0 {
            let next = out.get(i + 1).map_or(u64::MAX, |next| next.0);
            out[i].1 = next.min(out[i].3).max(out[i].0.saturating_add(1));
        }
    }
    out.into_iter()
        .map(|(start, end, name, _)| (start, end, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(start: u64, size: u64, local: bool, name: &str) -> Function {
        Function {
            start,
            size,
            section_end: u64::MAX,
            local,
            name: name.into(),
        }
    }

    #[test]
    fn aliases_give_the_name_a_caller_would_write() {
        let table = by_address(vec![
            function(0x100, 0x20, true, "__GI___nanosleep"),
            function(0x100, 0x20, false, "__nanosleep"),
            function(0x100, 0x20, false, "nanosleep"),
            function(0x200, 0x10, true, "__GI___clone3"),
            function(0x200, 0x10, true, "__clone3"),
            function(0x200, 0x10, true, "clone3"),
            function(0x300, 0, true, "_start"),
            function(0x400, 0x10, false, "last"),
        ]);
        let symbols = DebugSymbols {
            path: PathBuf::new(),
            functions: table,
        };
        assert_eq!(symbols.name(0x0ff), None);
        assert_eq!(symbols.name(0x100), Some("nanosleep"));
        assert_eq!(symbols.name(0x11f), Some("nanosleep"));
        assert_eq!(symbols.name(0x120), None, "padding between functions");
        assert_eq!(symbols.name(0x205), Some("clone3"));
        // Sizeless: up to the next function.
        assert_eq!(symbols.name(0x3ff), Some("_start"));
        assert_eq!(symbols.name(0x40f), Some("last"));
        assert_eq!(symbols.name(0x410), None);
    }

    /// `_init` is sizeless and alone in `.init`; the PLT follows it.
    #[test]
    fn a_sizeless_function_ends_with_its_section() {
        let mut init = function(0x1000, 0, true, "_init");
        init.section_end = 0x101b;
        let table = by_address(vec![init, function(0x1100, 0x10, false, "after_plt")]);
        let symbols = DebugSymbols {
            path: PathBuf::new(),
            functions: table,
        };
        assert_eq!(symbols.name(0x101a), Some("_init"));
        assert_eq!(symbols.name(0x1020), None, "the PLT is not _init");
        assert_eq!(symbols.name(0x1105), Some("after_plt"));
    }

    #[test]
    fn short_or_unknown_build_ids_find_nothing() {
        let dirs = [PathBuf::from("/nonexistent-hostprof-debug")];
        assert_eq!(find(&dirs, &[0xab; 4]), None);
        assert_eq!(find(&dirs, &[0xab; 20]), None);
    }

    /// Where `find` looks for `id` under `dir`, created.
    fn place(dir: &Path, id: &[u8]) -> PathBuf {
        let hex = crate::build_id::hex(id);
        let at = dir.join(".build-id").join(&hex[..2]);
        std::fs::create_dir_all(&at).unwrap();
        at.join(format!("{}.debug", &hex[2..]))
    }

    #[test]
    fn a_debug_file_is_found_by_build_id_and_must_match_it() {
        let dir = tempfile::tempdir().unwrap();
        let own = File::open("/proc/self/exe").unwrap();
        let Some(id) = crate::build_id::read(&own) else {
            panic!("the test binary has no build id note; it is linked with one by default");
        };
        let dirs = [
            PathBuf::from("/nonexistent-hostprof-debug"),
            dir.path().into(),
        ];
        // Not ELF: not taken.
        let path = place(dir.path(), &id);
        std::fs::write(&path, b"not an ELF file").unwrap();
        assert_eq!(find(&dirs, &id), None);
        // An ELF file with this build id: taken.
        std::fs::copy("/proc/self/exe", &path).unwrap();
        assert_eq!(find(&dirs, &id), Some(path));
        // The same file where another id's would be: not taken.
        let mut other = id.clone();
        other[0] ^= 0xff;
        std::fs::copy("/proc/self/exe", place(dir.path(), &other)).unwrap();
        assert_eq!(find(&dirs, &other), None);
    }
}
