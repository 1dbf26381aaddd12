//! Which allocator entry points an ELF file defines, and where in the
//! file they start (pure: parses bytes, makes no syscall).
//!
//! A file is an allocator when it defines `malloc`, plainly or with a
//! known prefix (`je_`, `_rjem_` for Rust's jemallocator, `tc_`, `mi_`):
//! glibc's `libc.so.6`, `libjemalloc.so`, `libtcmalloc.so`, mimalloc, or
//! an executable that links one statically (found in its full symbol
//! table). In such a file every known entry point is probed, the C++
//! `operator new`/`delete` too (tcmalloc and jemalloc define their own;
//! glibc's `libstdc++` calls `malloc`, so they are not probed there).
//! Entry points at one address (glibc's `malloc` and `__libc_malloc`)
//! are probed once.

use object::elf::{PF_X, PT_LOAD};
use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{Endianness, Object as _, ObjectSymbol as _, ReadRef, SymbolKind};
use profiler_common::alloc_fn;

/// An entry point to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    /// Its symbol.
    pub name: String,
    /// Which function it is to the probes ([`alloc_fn`]).
    pub function: u64,
    /// Where it starts in the file.
    pub file_offset: u64,
}

impl EntryPoint {
    /// Whether it returns an allocation (gets the return probe too).
    pub fn allocates(&self) -> bool {
        self.function != alloc_fn::FREE
    }
}

/// Standard names, after a prefix.
const STANDARD: &[(&str, u64)] = &[
    ("malloc", alloc_fn::MALLOC),
    ("valloc", alloc_fn::MALLOC),
    ("pvalloc", alloc_fn::MALLOC),
    ("calloc", alloc_fn::CALLOC),
    ("realloc", alloc_fn::REALLOC),
    ("memalign", alloc_fn::MEMALIGN),
    ("aligned_alloc", alloc_fn::MEMALIGN),
    ("posix_memalign", alloc_fn::POSIX_MEMALIGN),
    ("free", alloc_fn::FREE),
    ("cfree", alloc_fn::FREE),
    // C23's sized frees (glibc 2.40+, mimalloc): the pointer first.
    ("free_sized", alloc_fn::FREE),
    ("free_aligned_sized", alloc_fn::FREE),
    // jemalloc's own API: size first, the pointer first.
    ("mallocx", alloc_fn::MALLOC),
    ("rallocx", alloc_fn::REALLOC),
    ("dallocx", alloc_fn::FREE),
    ("sdallocx", alloc_fn::FREE),
    // mimalloc's.
    ("zalloc", alloc_fn::MALLOC),
    ("malloc_aligned", alloc_fn::MALLOC),
    ("free_size", alloc_fn::FREE),
    ("free_size_aligned", alloc_fn::FREE),
    ("free_aligned", alloc_fn::FREE),
];

/// Prefixes of allocators that do not (or not only) take the standard
/// names.
const PREFIXES: &[&str] = &["", "je_", "_rjem_", "tc_", "mi_"];

/// The C++ allocation functions (Itanium names): `operator new(size_t)`,
/// `new[]`, their `nothrow` forms, and `operator delete` plain and sized.
const CXX: &[(&str, u64)] = &[
    ("_Znwm", alloc_fn::MALLOC),
    ("_Znam", alloc_fn::MALLOC),
    ("_ZnwmRKSt9nothrow_t", alloc_fn::MALLOC),
    ("_ZnamRKSt9nothrow_t", alloc_fn::MALLOC),
    ("_ZdlPv", alloc_fn::FREE),
    ("_ZdaPv", alloc_fn::FREE),
    ("_ZdlPvm", alloc_fn::FREE),
    ("_ZdaPvm", alloc_fn::FREE),
    // The aligned (`std::align_val_t`) deletes, plain and sized.
    ("_ZdlPvSt11align_val_t", alloc_fn::FREE),
    ("_ZdaPvSt11align_val_t", alloc_fn::FREE),
    ("_ZdlPvmSt11align_val_t", alloc_fn::FREE),
    ("_ZdaPvmSt11align_val_t", alloc_fn::FREE),
];

/// The function a symbol name is, if it is an entry point.
fn function_of(name: &str) -> Option<u64> {
    if let Some(&(_, function)) = CXX.iter().find(|(n, _)| *n == name) {
        return Some(function);
    }
    PREFIXES.iter().find_map(|prefix| {
        let rest = name.strip_prefix(prefix)?;
        STANDARD
            .iter()
            .find(|(n, _)| *n == rest)
            .map(|&(_, function)| function)
    })
}

/// Prefixes of symbolized function names that are the allocator or
/// allocation wrappers rather than the code asking for memory: glibc's
/// internals, C++'s operators, Rust's global allocator and `alloc`.
const ALLOCATOR_FRAMES: &[&str] = &[
    "__libc_",
    "__GI___libc_",
    "__GI_",
    "_int_",
    "operator new",
    "operator delete",
    "__rust_",
    "__rdl_",
    "__rg_",
    "alloc::",
    "<alloc::",
    "core::alloc::",
    "<core::alloc::",
    "std::alloc::",
    "<std::alloc::",
    "std::sys::alloc::",
    "std::sys::pal::unix::alloc::",
    "<std::sys::alloc::",
    "tcmalloc::",
    "je_",
    "_rjem_",
    "mi_",
];

/// Whether a symbolized frame named `name` is the allocator's (or an
/// allocation wrapper's): the memory summary names the first frame that
/// is not.
pub fn is_allocator_frame(name: &str) -> bool {
    function_of(name).is_some() || ALLOCATOR_FRAMES.iter().any(|p| name.starts_with(p))
}

/// Errors reading a file's symbols.
#[derive(Debug, thiserror::Error)]
#[error("not a readable 64-bit ELF file: {0}")]
pub struct NotElf(#[from] object::read::Error);

/// The entry points `data` (a whole ELF file) defines: none unless it is
/// an allocator. Exported symbols first; the full symbol table only when
/// they have no `malloc` (a static executable).
pub fn entry_points<'a, R: ReadRef<'a>>(data: R) -> Result<Vec<EntryPoint>, NotElf> {
    let file = ElfFile64::<Endianness, R>::parse(data)?;
    let mut found = collect(&file, file.dynamic_symbols());
    if !is_allocator(&found) {
        found = collect(&file, file.symbols());
    }
    if !is_allocator(&found) {
        return Ok(Vec::new());
    }
    // One probe per address; the first name (exported first) names it.
    let mut seen = std::collections::HashSet::new();
    found.retain(|entry| seen.insert(entry.file_offset));
    Ok(found)
}

fn is_allocator(found: &[EntryPoint]) -> bool {
    found.iter().any(|entry| {
        PREFIXES
            .iter()
            .any(|prefix| entry.name.strip_prefix(prefix) == Some("malloc"))
    })
}

fn collect<'a, 'f, R: ReadRef<'a>>(
    file: &'f ElfFile64<'a, Endianness, R>,
    symbols: impl Iterator<Item = object::read::elf::ElfSymbol64<'a, 'f, Endianness, R>>,
) -> Vec<EntryPoint> {
    let mut found = Vec::new();
    for symbol in symbols {
        if symbol.kind() != SymbolKind::Text || symbol.is_undefined() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else {
            continue;
        };
        let Some(function) = function_of(name) else {
            continue;
        };
        if let Some(file_offset) = file_offset(file, symbol.address()) {
            found.push(EntryPoint {
                name: name.to_owned(),
                function,
                file_offset,
            });
        }
    }
    found
}

/// Where the code at virtual address `address` is in the file: in the
/// executable `PT_LOAD` segment that holds it.
fn file_offset<'a, R: ReadRef<'a>>(
    file: &ElfFile64<'a, Endianness, R>,
    address: u64,
) -> Option<u64> {
    let endian = file.endian();
    file.elf_program_headers().iter().find_map(|header| {
        let vaddr = header.p_vaddr(endian);
        let filesz = header.p_filesz(endian);
        (header.p_type(endian) == PT_LOAD
            && header.p_flags(endian) & PF_X != 0
            && (vaddr..vaddr.saturating_add(filesz)).contains(&address))
        .then(|| address - vaddr + header.p_offset(endian))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's glibc, wherever the loader found it.
    fn libc_path() -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|path| path.contains("/libc.so"))
            .map(str::to_owned)
    }

    #[test]
    fn glibc_is_an_allocator_with_every_entry_point_once() {
        let Some(path) = libc_path() else {
            eprintln!("no libc.so mapped: skipped");
            return;
        };
        let data = std::fs::read(&path).unwrap();
        let found = entry_points(&*data).unwrap();
        let names: Vec<&str> = found.iter().map(|e| e.name.as_str()).collect();
        // aligned_alloc is memalign's alias in glibc: one address, one probe.
        for name in [
            "malloc",
            "calloc",
            "realloc",
            "free",
            "posix_memalign",
            "memalign",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        let mut offsets: Vec<u64> = found.iter().map(|e| e.file_offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), found.len(), "one probe per address");
        // The offset is where malloc's code is: the same bytes as the
        // function this test process calls.
        let malloc = found.iter().find(|e| e.name == "malloc").unwrap();
        assert_eq!(malloc.function, alloc_fn::MALLOC);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapped = maps.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 6 && fields[5] == path && fields[1].contains('x')).then(|| {
                let (start, end) = fields[0].split_once('-').unwrap();
                let start = u64::from_str_radix(start, 16).unwrap();
                let end = u64::from_str_radix(end, 16).unwrap();
                let offset = u64::from_str_radix(fields[2], 16).unwrap();
                (start, end, offset)
            })
        });
        let (start, end, offset) = mapped.expect("libc's code is mapped");
        let address = start + malloc.file_offset - offset;
        assert!((start..end).contains(&address));
        assert_eq!(address, libc::malloc as *const () as usize as u64);
    }

    #[test]
    fn other_files_are_not_allocators() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        // This test binary links Rust's system allocator, which calls
        // malloc: it imports it, defines none.
        assert!(entry_points(&*exe).unwrap().is_empty());
        assert!(entry_points(&b"not an ELF file"[..]).is_err());
    }

    #[test]
    fn allocator_frames_are_told_from_the_code_that_allocates() {
        for name in [
            "malloc",
            "__libc_malloc",
            "__GI___libc_realloc",
            "operator new(unsigned long)",
            "__rust_alloc",
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
        ] {
            assert!(is_allocator_frame(name), "{name}");
        }
        for name in [
            "keep_some",
            "main",
            "alloc_chain::work",
            "std::rt::lang_start",
        ] {
            assert!(!is_allocator_frame(name), "{name}");
        }
    }

    #[test]
    fn names_map_to_functions() {
        assert_eq!(function_of("malloc"), Some(alloc_fn::MALLOC));
        assert_eq!(function_of("_rjem_sdallocx"), Some(alloc_fn::FREE));
        assert_eq!(function_of("je_rallocx"), Some(alloc_fn::REALLOC));
        assert_eq!(function_of("mi_calloc"), Some(alloc_fn::CALLOC));
        assert_eq!(function_of("_ZdlPvm"), Some(alloc_fn::FREE));
        assert_eq!(
            function_of("posix_memalign"),
            Some(alloc_fn::POSIX_MEMALIGN)
        );
        assert_eq!(function_of("mallocate"), None);
        assert_eq!(function_of("xmalloc"), None);
    }
}
