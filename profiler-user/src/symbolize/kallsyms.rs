//! Kernel function names from `/proc/kallsyms`, held compactly
//! ([`Kallsyms`]).
//!
//! blazesym reads kallsyms too, but keeps every line as its own string:
//! 5.6 MiB in the agent on Linux 6.18, the largest thing it held. Half of
//! those lines are `__pfx_*` symbols (the padding the kernel puts before
//! each function since 6.2, where no sampled address lands), and the rest
//! need one name each, not a string allocation each. Here: the text
//! symbols without the padding, one sorted address array and one buffer of
//! names, about 2 MiB for the same kernel.
//!
//! Modules and BPF programs load after the table is read; an address in
//! one is far past the symbol before it, and has the table read again
//! ([`KernelSymbols`]), at most every [`REREAD_INTERVAL`]: reading it
//! costs the kernel about 60 ms.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::system_info::kernel_code::parse_kallsyms_line;

/// An address further than this past the symbol before it is not in that
/// symbol's function (the kernel's largest are about 20 KiB; the gaps past
/// this are between text sections and before modules).
const STALE_DISTANCE: u64 = 64 << 10;

/// The table is read again at most this often.
const REREAD_INTERVAL: Duration = Duration::from_secs(300);

/// The kernel's symbols as last read, read again when addresses show code
/// loaded since (or when the read before failed), at most every
/// [`REREAD_INTERVAL`].
#[derive(Debug)]
pub(crate) struct KernelSymbols {
    path: PathBuf,
    table: Option<Kallsyms>,
    /// When the table was last read or tried.
    read_at: Option<Instant>,
    /// A failure was said (once).
    warned: bool,
}

impl KernelSymbols {
    /// Kernel symbols from the kallsyms file at `path`, read at first use.
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            table: None,
            read_at: None,
            warned: false,
        }
    }

    /// The table to name `addresses` with at `now`, and whether it was
    /// read anew (symbol indexes from before name other symbols now).
    pub(crate) fn for_addresses(
        &mut self,
        addresses: &[u64],
        now: Instant,
    ) -> (Option<&Kallsyms>, bool) {
        let due = self
            .read_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REREAD_INTERVAL);
        // Never read is due too.
        let wanted = match &self.table {
            None => due,
            Some(table) => due && addresses.iter().any(|&a| table.is_stale(a)),
        };
        if wanted {
            self.read_at = Some(now);
            self.table = self.read();
        }
        (self.table.as_ref(), wanted)
    }

    /// The table; `None`, said once, when it cannot be read or its
    /// addresses are hidden.
    fn read(&mut self) -> Option<Kallsyms> {
        let path = self.path.display();
        let problem = match Kallsyms::read(&self.path) {
            Ok(table) if table.len() > 0 => return Some(table),
            Ok(_) => format!(
                "{path} shows no addresses: kernel frames stay unnamed; run hostprof as root, \
                 or set kernel.kptr_restrict=0"
            ),
            Err(err) => format!("cannot read {path}: {err}: kernel frames stay unnamed"),
        };
        if !std::mem::replace(&mut self.warned, true) {
            log::warn!(
                "{problem} (tried again every {}s)",
                REREAD_INTERVAL.as_secs()
            );
        }
        None
    }
}

/// Kernel text symbols by address.
#[derive(Debug, Default)]
pub(crate) struct Kallsyms {
    /// Start addresses, sorted, distinct.
    addresses: Vec<u64>,
    /// Where each address's name starts in `names` (it ends where the next
    /// starts).
    starts: Vec<u32>,
    names: String,
}

impl Kallsyms {
    /// Reads the kallsyms file at `path` (`/proc/kallsyms`).
    pub(crate) fn read(path: &Path) -> io::Result<Self> {
        Self::parse(BufReader::with_capacity(1 << 16, File::open(path)?))
    }

    /// Reads kallsyms lines (`ADDRESS TYPE NAME [MODULE]`) from `input`,
    /// keeping the text symbols (`t`, `T`, `w`, `W`) at a non-zero address
    /// but the `__pfx_` paddings.
    fn parse(mut input: impl BufRead) -> io::Result<Self> {
        let mut symbols: Vec<(u64, u32, u32)> = Vec::new();
        let mut names = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                break;
            }
            let Some((address, kind, name)) = parse_kallsyms_line(&line) else {
                continue;
            };
            // Zero: addresses hidden (kptr_restrict); nothing to match.
            if address == 0 || !matches!(kind, 't' | 'T' | 'w' | 'W') || name.starts_with("__pfx_")
            {
                continue;
            }
            let (Ok(start), Ok(len)) = (u32::try_from(names.len()), u32::try_from(name.len()))
            else {
                break; // past 4 GiB of names: not a kernel's
            };
            names.push_str(name);
            symbols.push((address, start, len));
        }
        // Stable: of names at one address, the first listed stays.
        symbols.sort_by_key(|&(address, _, _)| address);
        symbols.dedup_by_key(|&mut (address, _, _)| address);
        // The names in address order, so that each ends where the next
        // starts.
        let mut sorted = String::with_capacity(names.len());
        let mut starts = Vec::with_capacity(symbols.len());
        for &(_, start, len) in &symbols {
            starts.push(u32::try_from(sorted.len()).unwrap_or(u32::MAX));
            sorted.push_str(&names[start as usize..start as usize + len as usize]);
        }
        sorted.shrink_to_fit();
        Ok(Self {
            addresses: symbols.iter().map(|&(address, _, _)| address).collect(),
            starts,
            names: sorted,
        })
    }

    /// Symbols held.
    pub(crate) fn len(&self) -> usize {
        self.addresses.len()
    }

    /// The function `address` is in: the symbol at or before it, as an
    /// index for [`Kallsyms::name`]; `None` when there is none or it is
    /// too far before (code the table does not know: the name before
    /// would be wrong).
    pub(crate) fn find(&self, address: u64) -> Option<usize> {
        let index = self
            .addresses
            .partition_point(|&start| start <= address)
            .checked_sub(1)?;
        (address - self.addresses[index] <= STALE_DISTANCE).then_some(index)
    }

    /// Whether `address` shows code loaded after the table was read: no
    /// symbol before it, or the one before too far.
    fn is_stale(&self, address: u64) -> bool {
        self.find(address).is_none()
    }

    /// The name of symbol `index`.
    pub(crate) fn name(&self, index: usize) -> &str {
        let start = self.starts[index] as usize;
        let end = self
            .starts
            .get(index + 1)
            .map_or(self.names.len(), |&end| end as usize);
        &self.names[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 t __pfx_do_one
ffffffff81001010 t do_one
ffffffff81001010 T do_one_alias
ffffffff81002000 d some_data
ffffffff81003000 W weak_one
ffffffffc0001000 t mod_fn\t[kvm]
ffffffffc0000000 T early_mod_fn\t[kvm]
";

    #[test]
    fn text_symbols_are_found_by_address_without_the_paddings() {
        let table = Kallsyms::parse(LINES.as_bytes()).unwrap();
        assert_eq!(table.len(), 5);
        let name = |address| table.find(address).map(|index| table.name(index));
        assert_eq!(name(0xffff_ffff_80ff_ffff), None);
        assert_eq!(name(0xffff_ffff_8100_0000), Some("_stext"));
        // The padding belongs to the function before it.
        assert_eq!(name(0xffff_ffff_8100_1004), Some("_stext"));
        // Of two names at an address, the first listed.
        assert_eq!(name(0xffff_ffff_8100_1010), Some("do_one"));
        // Data is not a function: the function before it.
        assert_eq!(name(0xffff_ffff_8100_2008), Some("do_one"));
        assert_eq!(name(0xffff_ffff_8100_3000), Some("weak_one"));
        // Modules' symbols, listed out of order, sorted in.
        assert_eq!(name(0xffff_ffff_c000_0010), Some("early_mod_fn"));
        assert_eq!(name(0xffff_ffff_c000_1010), Some("mod_fn"));
        // Far past the last symbol: code loaded since, not mod_fn's.
        assert_eq!(name(0xffff_ffff_c010_0000), None);
    }

    /// A module loaded after the table was read: its address is far past
    /// the last symbol, and has the table read again, not before
    /// [`REREAD_INTERVAL`] since the last read.
    #[test]
    fn code_loaded_later_has_the_table_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kallsyms");
        std::fs::write(&path, LINES).unwrap();
        let mut symbols = KernelSymbols::new(&path);
        let start = Instant::now();
        let core = [0xffff_ffff_8100_1020];
        let (table, reread) = symbols.for_addresses(&core, start);
        assert!(reread && table.unwrap().len() == 5);
        let (_, reread) = symbols.for_addresses(&core, start + REREAD_INTERVAL * 2);
        assert!(!reread, "nothing new: not read again");

        let new_module = [0xffff_ffff_c010_0010];
        std::fs::write(
            &path,
            format!("{LINES}ffffffffc0100000 t loaded_later\t[late]\n"),
        )
        .unwrap();
        let soon = start + REREAD_INTERVAL / 2;
        let (table, reread) = symbols.for_addresses(&new_module, soon);
        assert!(!reread, "read at start: not again before the interval");
        assert_eq!(table.unwrap().len(), 5);
        let later = start + REREAD_INTERVAL;
        let (table, reread) = symbols.for_addresses(&new_module, later);
        let table = table.unwrap();
        assert!(reread);
        assert_eq!(
            table.name(table.find(new_module[0]).unwrap()),
            "loaded_later"
        );
    }

    /// A table that could not be read is tried again, not given up.
    #[test]
    fn an_unreadable_table_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kallsyms");
        let mut symbols = KernelSymbols::new(&path);
        let start = Instant::now();
        assert!(symbols.for_addresses(&[1], start).0.is_none());
        std::fs::write(&path, LINES).unwrap();
        assert!(symbols.for_addresses(&[1], start).0.is_none());
        let (table, reread) = symbols.for_addresses(&[1], start + REREAD_INTERVAL);
        assert!(reread && table.is_some());
    }

    #[test]
    fn hidden_addresses_give_an_empty_table() {
        let hidden = "0000000000000000 T _stext\n0000000000000000 t do_one\n";
        let table = Kallsyms::parse(hidden.as_bytes()).unwrap();
        assert_eq!(table.len(), 0);
        assert_eq!(table.find(0xffff_ffff_8100_0000), None);
    }
}
