//! Addresses to function names, source lines and inlined frames, with
//! blazesym: user code from the mapped ELF files (by file offset, so it
//! works after the process exited); kernel code named by the kernel, or
//! from kallsyms read here ([`kernel`]).
//!
//! blazesym maps what it reads; it is never given a tenant's file, only a
//! sealed copy of what symbolization needs of it ([`sealed`]), made when a
//! window has addresses in that file not yet cached. The most recently
//! used copies are kept, within [`KEPT_BYTES`] of what parsing them holds
//! (compressed debug info at its inflated size), so a busy library is
//! not copied and parsed again every window; the others are dropped after
//! their window.
//! hostprof's own executable is read in place: no tenant can change it.
//! A stripped file whose separate debug file is installed is named from
//! that file's symbol table, not its DWARF ([`debug_file`]).
//!
//! Results are cached per (module, file offset) and per kernel function, so
//! an address is symbolized once however many drains and processes it
//! appears in; a module's entries go when no process maps it any more
//! ([`Symbolizer::forget`]).

mod debug_file;
mod kallsyms;
mod kernel;
pub(crate) mod sealed;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blazesym::symbolize::evict::{self, Evict};
use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized};

use crate::process::ModuleId;

/// One function frame at an address; an address yields several when calls
/// were inlined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolFrame {
    /// Demangled function name.
    pub name: String,
    /// Source file, when debug info has it.
    pub file: Option<String>,
    /// Source line, when debug info has it.
    pub line: Option<u32>,
    /// True when the function is Rust code (from debug info or mangling).
    pub rust: bool,
}

/// Frames at one address, innermost (most deeply inlined) first; `None`
/// when the address has no symbol.
pub type Symbols = Option<Arc<[SymbolFrame]>>;

/// Cache counters, and what reading the files cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups not in the cache: read from a file (by blazesym, from a
    /// debug file's symbols, or from kallsyms), or, for kernel code the
    /// kernel names, each address not named before.
    pub misses: u64,
    /// Sealed copies made of mapped files, to symbolize them.
    pub files_copied: u64,
    /// Bytes copied into them (headers, symbol tables, debug info).
    pub bytes_copied: u64,
    /// Nanoseconds spent making them.
    pub copy_nanos: u64,
    /// Files left unsymbolized: not opened (the process was gone), not
    /// ELF, or changed while they were read.
    pub files_unreadable: u64,
    /// Files symbolized without source lines: debug info past the limit.
    pub debug_left_out: u64,
    /// Stripped files named from their separate debug file's symbol table.
    pub debug_files: u64,
}

/// Sealed copies kept between windows, at most, in what parsing them
/// holds ([`sealed::SealedElf::weight`]: compressed debug sections count
/// at their inflated size, as blazesym holds them). A trade: on the
/// bench-agent host, keeping none saved 14 MiB and cost 0.4 % of a core
/// (copies and DWARF parsed again each window); 32 MiB held 13 MiB more
/// than 16 and saved no CPU measurably (one 120 s run each: 0.35 % and
/// 0.30 % of a core).
const KEPT_BYTES: u64 = 16 << 20;

/// A stripped module's separate debug file.
struct Linked {
    /// Its functions (shared by the modules of one file).
    symbols: Arc<debug_file::DebugSymbols>,
    /// The stripped file's segments, to find a file offset's virtual offset
    /// (a debug file's segments hold no bytes).
    segments: sealed::Segments,
}

/// A caching symbolizer for user and kernel addresses.
pub struct Symbolizer {
    blazesym: blazesym::symbolize::Symbolizer,
    /// Copies kept between windows, least recently used first.
    copies: Vec<(ModuleId, sealed::SealedElf)>,
    /// (device, inode) of hostprof's own executable.
    own_executable: Option<(u64, u64)>,
    /// Debug sections copied at most per file.
    max_debug_bytes: u64,
    /// Where separate debug files are looked for.
    debug_dirs: Vec<PathBuf>,
    /// Stripped modules named from a separate debug file.
    linked: HashMap<ModuleId, Linked>,
    user: HashMap<(ModuleId, u64), Symbols>,
    /// Kernel frames.
    kernel: kernel::KernelFrames,
    stats: CacheStats,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer that demangles and reports source lines and inlined calls.
    pub fn new() -> Self {
        let blazesym = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(false)
            // Debug files are found here, by build id in root's
            // directories, not by blazesym: it would read the linked
            // file's DWARF ([`debug_file`]). The copies it reads have no
            // debug links to follow ([`sealed`]).
            .set_debug_dirs(Some(Vec::<PathBuf>::new()))
            .build();
        Self {
            blazesym,
            copies: Vec::new(),
            own_executable: std::fs::metadata("/proc/self/exe")
                .ok()
                .map(|m| (m.dev(), m.ino())),
            max_debug_bytes: sealed::MAX_DEBUG_BYTES,
            debug_dirs: debug_file::DEBUG_DIRS.iter().map(PathBuf::from).collect(),
            linked: HashMap::new(),
            user: HashMap::new(),
            kernel: kernel::KernelFrames::new(crate::system_info::kernel_code::KALLSYMS_PATH),
            stats: CacheStats::default(),
        }
    }

    /// Cache counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Symbolizes `offsets` (file offsets) in module `module`, the ELF
    /// file open as `file` (`None`: it could not be opened). Returns one
    /// entry per offset.
    pub fn user(&mut self, module: ModuleId, file: Option<&File>, offsets: &[u64]) -> Vec<Symbols> {
        let missing = unique_missing(offsets, |o| self.user.contains_key(&(module, o)));
        if missing.is_empty() {
            self.stats.hits += offsets.len() as u64;
            return lookup(&self.user, offsets, |o| (module, o));
        }
        let own = file
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| Some((m.dev(), m.ino())) == self.own_executable);
        if own {
            return self.read_elf(module, Path::new("/proc/self/exe"), offsets);
        }
        if self.linked.contains_key(&module) {
            return self.read_linked(module, offsets);
        }
        let copy = match self.copies.iter().position(|(m, _)| *m == module) {
            Some(at) => self.copies.remove(at).1,
            None => match self.fresh_copy(module, file) {
                Some(copy) => match self.debug_file_of(&copy) {
                    Some(linked) => {
                        self.stats.debug_files += 1;
                        self.linked.insert(module, linked);
                        return self.read_linked(module, offsets);
                    }
                    None => copy,
                },
                // Not cached: the next window tries again.
                None => return lookup(&self.user, offsets, |o| (module, o)),
            },
        };
        let symbols = self.read_elf(module, &copy.path(), offsets);
        self.keep(module, copy);
        symbols
    }

    /// The separate debug file that names the functions of `copy`'s file,
    /// when that file is stripped and the debug file is installed (read
    /// once however many modules it names).
    fn debug_file_of(&self, copy: &sealed::SealedElf) -> Option<Linked> {
        let facts = copy.facts();
        if !facts.stripped {
            return None;
        }
        let path = debug_file::find(&self.debug_dirs, facts.build_id.as_deref()?)?;
        let symbols = match self.linked.values().find(|l| l.symbols.path() == path) {
            Some(linked) => Arc::clone(&linked.symbols),
            None => Arc::new(debug_file::DebugSymbols::read(&path)?),
        };
        Some(Linked {
            symbols,
            segments: facts.segments.clone(),
        })
    }

    /// A new sealed copy of `module`'s `file`, counted; `None` (counted as
    /// unreadable) when there is no file or it cannot be copied.
    fn fresh_copy(&mut self, module: ModuleId, file: Option<&File>) -> Option<sealed::SealedElf> {
        let started = std::time::Instant::now();
        let copy = file.map(|f| sealed::SealedElf::copy(f, self.max_debug_bytes));
        self.stats.copy_nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match copy {
            Some(Ok(copy)) => {
                log::debug!(
                    "module {module:?}: sealed copy of {} bytes (weight {})",
                    copy.copied(),
                    copy.weight()
                );
                self.stats.files_copied += 1;
                self.stats.bytes_copied += copy.copied();
                self.stats.debug_left_out += u64::from(copy.debug_left_out());
                Some(copy)
            }
            failed => {
                if let Some(Err(err)) = failed {
                    log::debug!("module {module:?} left unsymbolized: {err}");
                }
                self.stats.files_unreadable += 1;
                None
            }
        }
    }

    /// Keeps `copy` as the most recently used, dropping the least recently
    /// used copies past [`KEPT_BYTES`] (`copy` too when it alone is).
    fn keep(&mut self, module: ModuleId, copy: sealed::SealedElf) {
        if copy.weight() > KEPT_BYTES {
            // Kept, it would push out every other copy and still not fit.
            log::debug!("module {module:?}: sealed copy too large to keep");
            self.drop_copy(copy);
            return;
        }
        self.copies.push((module, copy));
        let mut kept: u64 = self.copies.iter().map(|(_, c)| c.weight()).sum();
        while kept > KEPT_BYTES && !self.copies.is_empty() {
            let (dropped_module, dropped) = self.copies.remove(0);
            log::debug!(
                "module {dropped_module:?}: sealed copy (weight {}) dropped for module \
                 {module:?}'s",
                dropped.weight()
            );
            kept -= dropped.weight();
            self.drop_copy(dropped);
        }
    }

    /// Closes `copy`, first making blazesym let go of it: its descriptor's
    /// path will name another file.
    fn drop_copy(&mut self, copy: sealed::SealedElf) {
        let path = copy.path();
        if let Err(err) = self.blazesym.evict(&Evict::Elf(evict::Elf::new(&path))) {
            log::debug!("evicting {}: {err}", path.display());
        }
    }

    /// Names `offsets` of `module` from its debug file's symbols, through
    /// the cache.
    fn read_linked(&mut self, module: ModuleId, offsets: &[u64]) -> Vec<Symbols> {
        let linked = &self.linked[&module];
        let missing = unique_missing(offsets, |o| self.user.contains_key(&(module, o)));
        self.stats.misses += missing.len() as u64;
        self.stats.hits += (offsets.len() - missing.len()) as u64;
        for offset in missing {
            let name = linked
                .segments
                .virtual_offset(offset)
                .and_then(|address| linked.symbols.name(address));
            let symbols = name.map(|name| Arc::from([frame(name, None)]));
            self.user.insert((module, offset), symbols);
        }
        lookup(&self.user, offsets, |o| (module, o))
    }

    /// Symbolizes `offsets` of `module` with blazesym reading the ELF file
    /// at `path`, through the cache.
    fn read_elf(&mut self, module: ModuleId, path: &Path, offsets: &[u64]) -> Vec<Symbols> {
        let source = || {
            let mut elf = Elf::new(path);
            elf.debug_syms = true;
            Source::Elf(elf)
        };
        cached_symbolize(
            &self.blazesym,
            &mut self.user,
            &mut self.stats,
            offsets,
            |offset| (module, offset),
            source,
            |offsets| Input::FileOffset(offsets),
        )
    }

    /// Drops everything cached for `modules`, whose files are closing.
    pub fn forget(&mut self, modules: &[ModuleId]) {
        if modules.is_empty() {
            return;
        }
        let ids: std::collections::HashSet<ModuleId> = modules.iter().copied().collect();
        self.user.retain(|(module, _), _| !ids.contains(module));
        self.linked.retain(|module, _| !ids.contains(module));
        let (gone, kept) = std::mem::take(&mut self.copies)
            .into_iter()
            .partition(|(module, _)| ids.contains(module));
        self.copies = kept;
        for (module, copy) in gone {
            log::debug!("module {module:?}: sealed copy dropped, the module is gone");
            self.drop_copy(copy);
        }
    }

    /// Names kernel code with `names` (the kernel's own symbol table)
    /// rather than `/proc/kallsyms`, from now on; kallsyms again if it
    /// fails.
    pub fn name_kernel_code_with(&mut self, names: Box<dyn crate::sampler::KernelCodeNames>) {
        self.kernel.use_program(names);
    }

    /// Symbolizes kernel `addrs`. Returns one entry per address.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Symbols> {
        self.kernel.frames(addrs, &mut self.stats)
    }
}

/// Answers `values` from `cache`, symbolizing the values it lacks in one
/// blazesym call. A source that cannot be read (not ELF, gone) leaves its
/// values unsymbolized, to be shown as module+offset.
fn cached_symbolize<K: Copy + Eq + std::hash::Hash>(
    blazesym: &blazesym::symbolize::Symbolizer,
    cache: &mut HashMap<K, Symbols>,
    stats: &mut CacheStats,
    values: &[u64],
    key: impl Fn(u64) -> K,
    source: impl FnOnce() -> Source<'static>,
    input: fn(&[u64]) -> Input<&[u64]>,
) -> Vec<Symbols> {
    let missing = unique_missing(values, |v| cache.contains_key(&key(v)));
    stats.misses += missing.len() as u64;
    stats.hits += (values.len() - missing.len()) as u64;
    if !missing.is_empty() {
        let results = blazesym.symbolize(&source(), input(&missing));
        if let Err(err) = &results {
            log::debug!("symbolization failed: {err}");
        }
        for (i, value) in missing.iter().enumerate() {
            let symbols = results
                .as_ref()
                .ok()
                .and_then(|r| r.get(i))
                .and_then(frames_of);
            cache.insert(key(*value), symbols);
        }
    }
    lookup(cache, values, key)
}

/// `values` as `cache` has them (`None` when not cached).
fn lookup<K: Eq + std::hash::Hash>(
    cache: &HashMap<K, Symbols>,
    values: &[u64],
    key: impl Fn(u64) -> K,
) -> Vec<Symbols> {
    values
        .iter()
        .map(|v| cache.get(&key(*v)).cloned().flatten())
        .collect()
}

/// The distinct values of `values` for which `cached` is false, in first-seen order.
fn unique_missing(values: &[u64], cached: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    values
        .iter()
        .copied()
        .filter(|v| !cached(*v) && seen.insert(*v))
        .collect()
}

fn frames_of(symbolized: &Symbolized<'_>) -> Symbols {
    match symbolized {
        Symbolized::Sym(sym) => Some(frames_from_sym(sym).into()),
        Symbolized::Unknown(_) => None,
    }
}

/// Frames of a blazesym symbol, innermost first.
///
/// blazesym reports the outer function in `sym` and inlined callees in
/// `sym.inlined`, outermost first, each with the code location *inside*
/// that function; pprof wants the reverse order.
fn frames_from_sym(sym: &Sym<'_>) -> Vec<SymbolFrame> {
    let outer = frame(&sym.name, sym.code_info.as_deref());
    let mut frames: Vec<SymbolFrame> = sym
        .inlined
        .iter()
        .rev()
        .map(|inlined| frame(&inlined.name, inlined.code_info.as_ref()))
        .collect();
    frames.push(outer);
    frames
}

fn frame(raw: &str, code_info: Option<&CodeInfo<'_>>) -> SymbolFrame {
    let (name, rust) = demangle(raw);
    SymbolFrame {
        rust,
        name,
        file: code_info.map(|ci| ci.to_path().to_string_lossy().into_owned()),
        line: code_info.and_then(|ci| ci.line),
    }
}

/// Demangles a symbol name, Rust first (legacy and v0, hash suffix left
/// out), then C++; says whether it was a Rust name. Done here rather than
/// by blazesym, whose output does not say which language a name was in.
fn demangle(raw: &str) -> (String, bool) {
    if let Ok(rust) = rustc_demangle::try_demangle(raw) {
        return (format!("{rust:#}"), true);
    }
    let cpp = cpp_demangle::Symbol::new(raw)
        .ok()
        .and_then(|symbol| symbol.demangle().ok());
    (cpp.unwrap_or_else(|| raw.to_owned()), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn demangles_rust_and_cpp_and_tells_them_apart() {
        assert_eq!(
            demangle("_ZN10rust_chain6engine6Hasher14crunch_numbers17h0123456789abcdefE"),
            (
                "rust_chain::engine::Hasher::crunch_numbers".to_owned(),
                true
            )
        );
        assert_eq!(
            demangle("_RNvCs1234_7mycrate4main"),
            ("mycrate::main".to_owned(), true)
        );
        assert_eq!(demangle("_ZN3foo3barEv"), ("foo::bar()".to_owned(), false));
        assert_eq!(demangle("hot_loop"), ("hot_loop".to_owned(), false));
    }

    #[test]
    fn unique_missing_keeps_order_and_skips_cached() {
        assert_eq!(unique_missing(&[3, 1, 3, 2, 1], |v| v == 2), vec![3, 1]);
    }

    #[test]
    fn symbolizes_own_function_by_file_offset_and_caches() {
        let table_pid = std::process::id();
        let mut processes = crate::process::ProcessTable::new();
        processes.observe(table_pid).expect("snapshot self");
        let addr = marker_function_for_symbolizer_test as *const () as u64;
        let crate::process::Resolved::Module {
            module,
            file_offset,
            ..
        } = processes.resolve(table_pid, 0, addr)
        else {
            panic!("own code must resolve to a module");
        };
        let file = processes.module(module).open_file();
        let mut symbolizer = Symbolizer::new();
        let symbols = symbolizer.user(module, file.as_ref(), &[file_offset, file_offset]);
        let frames = symbols[0].as_ref().expect("symbol found");
        assert!(
            frames
                .iter()
                .any(|f| f.name.ends_with("marker_function_for_symbolizer_test")),
            "{frames:?}"
        );
        let stats = symbolizer.stats();
        // hostprof's own executable (the test binary here) is read in place.
        assert_eq!((stats.hits, stats.misses, stats.files_copied), (1, 1, 0));
        symbolizer.user(module, file.as_ref(), &[file_offset]);
        assert_eq!(symbolizer.stats().hits, 2);
        // A file that cannot be read is counted and tried again later.
        let not_elf = File::open("/proc/self/status").unwrap();
        assert_eq!(symbolizer.user(module, Some(&not_elf), &[7]), vec![None]);
        assert_eq!(symbolizer.stats().files_unreadable, 1);
    }

    /// Offsets every `stride` bytes through the executable segments of
    /// the ELF file at `path`.
    fn code_offsets(path: &str, stride: u64) -> Vec<u64> {
        use object::{Object, ObjectSegment};
        let data = std::fs::read(path).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        elf.segments()
            .filter(|s| s.flags() == object::SegmentFlags::Elf { p_flags: 5 })
            .flat_map(|s| {
                let (start, len) = s.file_range();
                (start..start + len).step_by(stride as usize)
            })
            .collect()
    }

    /// A copy serves the next windows until its module is forgotten.
    #[test]
    fn copies_are_kept_between_windows_until_forgotten() {
        let libc = "/lib/x86_64-linux-gnu/libc.so.6";
        let offsets = code_offsets(libc, 4099);
        let (first, second) = offsets.split_at(offsets.len() / 2);
        let module = crate::process::ModuleId::for_tests(3);
        let file = File::open(libc).unwrap();
        let mut symbolizer = Symbolizer::new();
        // Copies, not a debug file libc may have here.
        symbolizer.debug_dirs.clear();
        symbolizer.user(module, Some(&file), first);
        symbolizer.user(module, Some(&file), second);
        assert_eq!(symbolizer.stats().files_copied, 1);
        assert_eq!(symbolizer.copies.len(), 1);
        symbolizer.forget(&[module]);
        assert!(symbolizer.copies.is_empty());
        // Forgotten: its addresses are symbolized from a new copy.
        symbolizer.user(module, Some(&file), first);
        assert_eq!(symbolizer.stats().files_copied, 2);
    }

    /// The sealed copy answers as the file itself does, names, lines and
    /// inlined frames alike (blazesym on the original file is the oracle).
    #[test]
    fn a_sealed_copy_symbolizes_like_the_file_itself() {
        let test_binary = std::fs::read_link("/proc/self/exe").unwrap();
        for path in [
            test_binary.to_str().unwrap(),
            "/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            let offsets = code_offsets(path, 4099);
            assert!(offsets.len() > 100, "{path}: {}", offsets.len());
            // The copy, not a debug file libc may have here.
            let mut ours = Symbolizer::new();
            ours.debug_dirs.clear();
            let module = crate::process::ModuleId::for_tests(1);
            let got = ours.user(module, Some(&File::open(path).unwrap()), &offsets);
            let want = Symbolizer::new().read_elf(module, Path::new(path), &offsets);
            let named = want.iter().filter(|s| s.is_some()).count();
            // Stripped libc names its exported functions only (its static
            // ones come from its debug file: tested below).
            assert!(named * 4 > offsets.len(), "{path}: {named} named");
            assert_eq!(got, want, "{path}");
            // Without its debug sections a file still gives names (libc
            // from its debug file's symbol table, when it is installed).
            let mut lean = Symbolizer::new();
            lean.max_debug_bytes = 0;
            let got = lean.user(module, Some(&File::open(path).unwrap()), &offsets);
            let named_lean = got.iter().filter(|s| s.is_some()).count();
            assert!(named_lean * 2 > offsets.len(), "{path}: {named_lean} named");
        }
    }

    /// Runs `program` with `args`, which must succeed.
    fn run(program: &str, args: &[&std::ffi::OsStr]) -> String {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("{program} (binutils, gcc: `cargo xtask setup`): {err}"));
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Builds `dir/name` with gcc `-O1` and `flags`: a program whose main
    /// calls the static function `name_static`.
    fn static_function_program(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
        let source = dir.join(format!("{name}.c"));
        std::fs::write(
            &source,
            format!(
                "static __attribute__((noinline)) int {name}_static(int x) {{ return x * 3 + 1; }}\n\
                 int main(int argc, char **argv) {{ (void)argv; return {name}_static(argc); }}\n"
            ),
        )
        .unwrap();
        let program = dir.join(name);
        let mut args: Vec<&std::ffi::OsStr> = vec!["-O1".as_ref(), "-o".as_ref()];
        args.push(program.as_os_str());
        args.push(source.as_os_str());
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        run("gcc", &args);
        program
    }

    /// The address of the local function `function`, by binutils' reading
    /// of the symbol table of `file`.
    fn nm_address(file: &Path, function: &str) -> u64 {
        let nm = run("nm", &[file.as_os_str()]);
        nm.lines()
            .find_map(|line| line.strip_suffix(&format!(" t {function}")))
            .map(|hex| u64::from_str_radix(hex, 16).unwrap())
            .unwrap_or_else(|| panic!("no {function} in {}:\n{nm}", file.display()))
    }

    #[test]
    fn a_stripped_file_is_named_from_its_debug_files_symbol_table() {
        let dir = tempfile::tempdir().unwrap();
        // Not position-independent: code loads at 0x400000 past its file
        // offset, so a symbol's address is not its file offset.
        let program = static_function_program(dir.path(), "hidden", &["-g", "-no-pie"]);
        let debug = dir.path().join("hidden.debug");
        let (p, d) = (program.as_os_str(), debug.as_os_str());
        run("objcopy", &["--only-keep-debug".as_ref(), p, d]);
        run("strip", &["--strip-all".as_ref(), p]);
        // Where the function is, by the debug file.
        let address = nm_address(&debug, "hidden_static");
        let file = File::open(&program).unwrap();
        let copy = sealed::SealedElf::copy(&file, sealed::MAX_DEBUG_BYTES).unwrap();
        assert!(copy.facts().stripped);
        let id = copy.facts().build_id.clone().expect("gcc links a build id");
        // The file offset, by object's reading of the program headers.
        let offset = {
            use object::{Object, ObjectSegment};
            let data = std::fs::read(&program).unwrap();
            let elf = object::File::parse(&*data).unwrap();
            elf.segments()
                .find(|s| (s.address()..s.address() + s.size()).contains(&address))
                .map(|s| address - s.address() + s.file_range().0)
                .expect("a segment holds the function")
        };
        assert_ne!(offset, address);
        assert_eq!(copy.facts().segments.virtual_offset(offset), Some(address));
        let hex = crate::build_id::hex(&id);
        let at = dir.path().join("debug/.build-id").join(&hex[..2]);
        std::fs::create_dir_all(&at).unwrap();
        std::fs::copy(&debug, at.join(format!("{}.debug", &hex[2..]))).unwrap();

        let module = crate::process::ModuleId::for_tests(5);
        let mut symbolizer = Symbolizer::new();
        symbolizer.debug_dirs = vec![dir.path().join("debug")];
        let got = symbolizer.user(module, Some(&file), &[offset + 1]);
        let frames = got[0].as_ref().expect("named from the debug file");
        assert_eq!(frames[0].name, "hidden_static");
        assert_eq!(frames[0].line, None, "names only: no DWARF read");
        assert_eq!(symbolizer.stats().debug_files, 1);
        assert!(symbolizer.copies.is_empty(), "the copy is not kept");
        symbolizer.forget(&[module]);
        assert!(symbolizer.linked.is_empty());
        // Without the debug file, the stripped file cannot name it.
        let mut without = Symbolizer::new();
        without.debug_dirs.clear();
        let got = without.user(module, Some(&file), &[offset + 1]);
        let name = got[0].as_ref().map(|frames| frames[0].name.clone());
        assert_ne!(name.as_deref(), Some("hidden_static"));
    }

    /// A tenant's `.gnu_debuglink` naming a FIFO by absolute path: blazesym
    /// would open it (and wait for a writer forever) were the link in the
    /// copy it reads. The copy has none; the file is named from its own
    /// symbol table.
    #[test]
    fn a_debug_link_naming_a_fifo_is_not_followed() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = static_function_program(dir.path(), "linked", &[]);
        let p = program.as_os_str();
        let fifo = dir.path().join("link.fifo");
        run("mkfifo", &[fifo.as_os_str()]);
        // The section: the name, NUL, padding to 4 bytes, a CRC-32.
        let mut link = fifo.as_os_str().as_encoded_bytes().to_vec();
        link.push(0);
        link.resize(link.len().next_multiple_of(4) + 4, 0);
        let content = dir.path().join("link.section");
        std::fs::write(&content, link).unwrap();
        let mut section = std::ffi::OsString::from(".gnu_debuglink=");
        section.push(&content);
        run("objcopy", &["--add-section".as_ref(), &section, p]);
        let address = nm_address(&program, "linked_static");

        let file = File::open(&program).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut symbolizer = Symbolizer::new();
            symbolizer.debug_dirs.clear();
            let module = crate::process::ModuleId::for_tests(6);
            let _ = tx.send(symbolizer.user(module, Some(&file), &[address + 1]));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        if got.is_err() {
            // Let the symbolizer's open of the FIFO return before failing.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
        }
        let got = got.expect("the symbolizer followed the debug link to the FIFO");
        let frames = got[0].as_ref().expect("named from its symbol table");
        assert_eq!(frames[0].name, "linked_static");
    }

    #[test]
    fn kernel_symbols_resolve_from_kallsyms() {
        // Any text symbol's address from kallsyms must come back with its name.
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("read kallsyms");
        let Some((addr, name)) = kallsyms.lines().find_map(|line| {
            let mut parts = line.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.next()?;
            (addr != 0 && kind == "T" && name == "schedule").then(|| (addr, name.to_owned()))
        }) else {
            panic!("kallsyms hides addresses (kptr_restrict?) or lacks `schedule`; run as root");
        };
        let mut symbolizer = Symbolizer::new();
        let symbols = symbolizer.kernel(&[addr + 1]);
        let frames = symbols[0].as_ref().expect("kernel symbol found");
        assert_eq!(frames.last().unwrap().name, name);
    }
}
