//! Addresses to function names, source lines and inlined frames, with
//! blazesym: user code from the mapped ELF files (by file offset, so it
//! works after the process exited), kernel code from kallsyms.
//!
//! Results are cached per (module, file offset) and per kernel address, so
//! an address is symbolized once however many drains and processes it
//! appears in; a module's entries go when no process maps it any more
//! ([`Symbolizer::forget`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use blazesym::symbolize::evict::{self, Evict};
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized};
use blazesym::MaybeDefault;

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

/// Cache counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to blazesym.
    pub misses: u64,
}

/// A caching symbolizer for user and kernel addresses.
pub struct Symbolizer {
    blazesym: blazesym::symbolize::Symbolizer,
    user: HashMap<(ModuleId, u64), Symbols>,
    kernel: HashMap<u64, Symbols>,
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
            .build();
        Self {
            blazesym,
            user: HashMap::new(),
            kernel: HashMap::new(),
            stats: CacheStats::default(),
        }
    }

    /// Cache counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Symbolizes `offsets` (file offsets) in the ELF file readable at `path`,
    /// which is module `module`. Returns one entry per offset.
    pub fn user(&mut self, module: ModuleId, path: PathBuf, offsets: &[u64]) -> Vec<Symbols> {
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

    /// Drops everything cached for `modules` (ids and the paths they were
    /// read through), before their files are closed and the paths reused.
    pub fn forget(&mut self, modules: &[(ModuleId, PathBuf)]) {
        if modules.is_empty() {
            return;
        }
        let ids: std::collections::HashSet<ModuleId> = modules.iter().map(|(id, _)| *id).collect();
        self.user.retain(|(module, _), _| !ids.contains(module));
        for (_, path) in modules {
            if let Err(err) = self.blazesym.evict(&Evict::Elf(evict::Elf::new(path))) {
                log::debug!("evicting {}: {err}", path.display());
            }
        }
    }

    /// Symbolizes kernel `addrs` with `/proc/kallsyms`. Returns one entry per address.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Symbols> {
        let source = || {
            Source::Kernel(Kernel {
                kallsyms: MaybeDefault::Default,
                vmlinux: MaybeDefault::None,
                ..Kernel::default()
            })
        };
        cached_symbolize(
            &self.blazesym,
            &mut self.kernel,
            &mut self.stats,
            addrs,
            |addr| addr,
            source,
            |addrs| Input::AbsAddr(addrs),
        )
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
        } = processes.resolve(table_pid, addr)
        else {
            panic!("own code must resolve to a module");
        };
        let path = processes.module(module).symbol_path();
        let mut symbolizer = Symbolizer::new();
        let symbols = symbolizer.user(module, path.clone(), &[file_offset, file_offset]);
        let frames = symbols[0].as_ref().expect("symbol found");
        assert!(
            frames
                .iter()
                .any(|f| f.name.ends_with("marker_function_for_symbolizer_test")),
            "{frames:?}"
        );
        assert_eq!(symbolizer.stats(), CacheStats { hits: 1, misses: 1 });
        symbolizer.user(module, path, &[file_offset]);
        assert_eq!(symbolizer.stats().hits, 2);
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
