//! Addresses to function names, source lines and inlined frames, with
//! blazesym: user code from the mapped ELF files (by file offset, so it
//! works after the process exited), kernel code from kallsyms.
//!
//! Results are cached per (module, file offset) and per kernel address for
//! the symbolizer's lifetime, so an address is symbolized once however many
//! drains and processes it appears in.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

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
            .enable_demangling(true)
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
        let missing: Vec<u64> = unique_missing(offsets, |o| self.user.contains_key(&(module, o)));
        self.count(offsets.len(), missing.len());
        if !missing.is_empty() {
            let mut elf = Elf::new(path);
            elf.debug_syms = true;
            let results = self
                .blazesym
                .symbolize(&Source::Elf(elf), Input::FileOffset(&missing));
            for (i, offset) in missing.iter().enumerate() {
                let symbols = match &results {
                    Ok(results) => results.get(i).and_then(frames_of),
                    // The file is unreadable or not ELF: every offset stays
                    // unsymbolized and is shown as module+offset.
                    Err(err) => {
                        log::debug!("symbolizing module {module:?}: {err}");
                        None
                    }
                };
                self.user.insert((module, *offset), symbols);
            }
        }
        offsets
            .iter()
            .map(|o| self.user.get(&(module, *o)).cloned().flatten())
            .collect()
    }

    /// Symbolizes kernel `addrs` with `/proc/kallsyms`. Returns one entry per address.
    pub fn kernel(&mut self, addrs: &[u64]) -> Vec<Symbols> {
        let missing: Vec<u64> = unique_missing(addrs, |a| self.kernel.contains_key(&a));
        self.count(addrs.len(), missing.len());
        if !missing.is_empty() {
            let kernel = Kernel {
                kallsyms: MaybeDefault::Default,
                vmlinux: MaybeDefault::None,
                ..Kernel::default()
            };
            let results = self
                .blazesym
                .symbolize(&Source::Kernel(kernel), Input::AbsAddr(&missing));
            for (i, addr) in missing.iter().enumerate() {
                let symbols = match &results {
                    Ok(results) => results.get(i).and_then(frames_of),
                    Err(err) => {
                        log::debug!("symbolizing kernel addresses: {err}");
                        None
                    }
                };
                self.kernel.insert(*addr, symbols);
            }
        }
        addrs
            .iter()
            .map(|a| self.kernel.get(a).cloned().flatten())
            .collect()
    }

    fn count(&mut self, asked: usize, missing: usize) {
        self.stats.misses += missing as u64;
        self.stats.hits += (asked - missing) as u64;
    }
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

fn frame(name: &str, code_info: Option<&CodeInfo<'_>>) -> SymbolFrame {
    SymbolFrame {
        name: name.to_owned(),
        file: code_info.map(|ci| ci.to_path().to_string_lossy().into_owned()),
        line: code_info.and_then(|ci| ci.line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        std::hint::black_box(42)
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
