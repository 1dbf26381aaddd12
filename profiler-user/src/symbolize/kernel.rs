//! Kernel frames: the function each kernel code address is in, named by
//! the kernel itself (the sampler's `kernel_names` program, a few
//! syscalls per window) or, where that program did not load or failed,
//! from `/proc/kallsyms` ([`super::kallsyms`], read whole).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kallsyms::KernelSymbols;
use super::{frame, CacheStats, SymbolFrame, Symbols};
use crate::sampler::KernelCodeNames;

/// Names by address are kept at most this long: code unloaded since (a
/// module, a BPF program) may have left its addresses to other code.
const NAMES_KEPT_FOR: Duration = Duration::from_secs(300);

/// Names by address kept at most (a profile's kernel addresses are a few
/// thousand): past it, the cache starts over.
const MAX_NAMED: usize = 1 << 16;

/// Kernel frames, cached.
pub(super) struct KernelFrames {
    /// The kernel's names (`None`: kallsyms).
    program: Option<Box<dyn KernelCodeNames>>,
    /// The program's answers by address, since `named_since`.
    by_address: HashMap<u64, Symbols>,
    /// One frame list per function, shared by its addresses.
    by_name: HashMap<Box<str>, Arc<[SymbolFrame]>>,
    named_since: Instant,
    /// Kernel symbols, read at the first kernel address named from them
    /// and again when code loaded since shows.
    kallsyms: KernelSymbols,
    /// Frames by kernel symbol (index in `kallsyms`).
    by_symbol: HashMap<usize, Arc<[SymbolFrame]>>,
}

impl KernelFrames {
    /// Frames named from the kallsyms file at `kallsyms` until
    /// [`KernelFrames::use_program`].
    pub(super) fn new(kallsyms: impl Into<PathBuf>) -> Self {
        Self {
            program: None,
            by_address: HashMap::new(),
            by_name: HashMap::new(),
            named_since: Instant::now(),
            kallsyms: KernelSymbols::new(kallsyms),
            by_symbol: HashMap::new(),
        }
    }

    /// Names addresses with `program` from now on (kallsyms if it fails).
    pub(super) fn use_program(&mut self, program: Box<dyn KernelCodeNames>) {
        self.program = Some(program);
    }

    /// The frames of each of `addrs`, in order.
    pub(super) fn frames(&mut self, addrs: &[u64], stats: &mut CacheStats) -> Vec<Symbols> {
        if let Some(found) = self.named_by_program(addrs, stats) {
            return found;
        }
        self.named_from_kallsyms(addrs, stats)
    }

    /// The program's names; `None` without it, or when it failed (said,
    /// and not tried again).
    fn named_by_program(&mut self, addrs: &[u64], stats: &mut CacheStats) -> Option<Vec<Symbols>> {
        let program = self.program.as_mut()?;
        let now = Instant::now();
        if now.saturating_duration_since(self.named_since) >= NAMES_KEPT_FOR
            || self.by_address.len() >= MAX_NAMED
        {
            self.by_address.clear();
            self.by_name.clear();
            self.named_since = now;
        }
        let mut missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|addr| !self.by_address.contains_key(addr))
            .collect();
        let answered = addrs.len() - missing.len();
        missing.sort_unstable();
        missing.dedup();
        match program.names(&missing) {
            Ok(names) => {
                stats.hits += answered as u64;
                stats.misses += missing.len() as u64;
                for (addr, name) in missing.into_iter().zip(names) {
                    let frames = name.map(|name| {
                        self.by_name
                            .entry(name.as_str().into())
                            .or_insert_with(|| Arc::from([frame(&name, None)]))
                            .clone()
                    });
                    self.by_address.insert(addr, frames);
                }
            }
            Err(err) => {
                log::warn!("{err}: kernel frames are named from /proc/kallsyms from now on");
                self.program = None;
                self.by_address = HashMap::new();
                self.by_name = HashMap::new();
                return None;
            }
        }
        Some(
            addrs
                .iter()
                .map(|addr| self.by_address.get(addr).cloned().flatten())
                .collect(),
        )
    }

    /// Names from kallsyms (`None` each when it cannot be read).
    fn named_from_kallsyms(&mut self, addrs: &[u64], stats: &mut CacheStats) -> Vec<Symbols> {
        let (table, reread) = self.kallsyms.for_addresses(addrs, Instant::now());
        if reread {
            // Indexes of the table before.
            self.by_symbol.clear();
        }
        let Some(table) = table else {
            return vec![None; addrs.len()];
        };
        addrs
            .iter()
            .map(|&addr| {
                let index = table.find(addr)?;
                let frames = match self.by_symbol.entry(index) {
                    std::collections::hash_map::Entry::Occupied(cached) => {
                        stats.hits += 1;
                        cached.get().clone()
                    }
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        stats.misses += 1;
                        entry
                            .insert(Arc::from([frame(table.name(index), None)]))
                            .clone()
                    }
                };
                Some(frames)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::kernel_names::KernelNamesError;
    use std::sync::Mutex;

    /// Names `0x1000 * n` as `fn_n` (several addresses per function: `n`
    /// is the address's 4 KiB page), asked addresses logged; fails on
    /// `0xdead`.
    struct Fake(Arc<Mutex<Vec<u64>>>);

    impl KernelCodeNames for Fake {
        fn names(&mut self, addresses: &[u64]) -> Result<Vec<Option<String>>, KernelNamesError> {
            self.0.lock().unwrap().extend_from_slice(addresses);
            if addresses.contains(&0xdead) {
                return Err(KernelNamesError::Run(std::io::Error::other("fake")));
            }
            Ok(addresses
                .iter()
                .map(|&a| (a >= 0x1000).then(|| format!("fn_{}", a >> 12)))
                .collect())
        }
    }

    fn names(symbols: &[Symbols]) -> Vec<Option<&str>> {
        symbols
            .iter()
            .map(|s| s.as_ref().map(|frames| frames[0].name.as_str()))
            .collect()
    }

    #[test]
    fn the_kernel_names_each_address_once_and_functions_share_frames() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut kernel = KernelFrames::new("/nonexistent/kallsyms");
        kernel.use_program(Box::new(Fake(asked.clone())));
        let mut stats = CacheStats::default();
        let first = kernel.frames(&[0x1010, 0x20, 0x1020, 0x1010, 0x2000], &mut stats);
        assert_eq!(
            names(&first),
            [Some("fn_1"), None, Some("fn_1"), Some("fn_1"), Some("fn_2")]
        );
        assert!(Arc::ptr_eq(
            first[0].as_ref().unwrap(),
            first[2].as_ref().unwrap()
        ));
        assert_eq!(*asked.lock().unwrap(), [0x20, 0x1010, 0x1020, 0x2000]);
        let second = kernel.frames(&[0x2000, 0x20, 0x3000], &mut stats);
        assert_eq!(names(&second), [Some("fn_2"), None, Some("fn_3")]);
        assert_eq!(
            *asked.lock().unwrap(),
            [0x20, 0x1010, 0x1020, 0x2000, 0x3000],
            "the cached are not asked again"
        );
        assert_eq!((stats.hits, stats.misses), (2, 4 + 1));
    }

    #[test]
    fn a_failing_program_gives_way_to_kallsyms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kallsyms");
        std::fs::write(&path, "0000000000000100 T from_kallsyms\n").unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut kernel = KernelFrames::new(&path);
        kernel.use_program(Box::new(Fake(asked.clone())));
        let mut stats = CacheStats::default();
        let failed = kernel.frames(&[0xdead], &mut stats);
        assert_eq!(names(&failed), [Some("from_kallsyms")]);
        let after = kernel.frames(&[0x1000], &mut stats);
        assert_eq!(names(&after), [Some("from_kallsyms")]);
        assert_eq!(*asked.lock().unwrap(), [0xdead], "not tried again");
    }
}
