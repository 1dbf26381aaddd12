//! The compact unwind table of one ELF file: sorted rows `pc → how to find
//! the caller's frame`, enough for x86-64 user stacks (the return address
//! is always at CFA-8 there) and small enough to live in BPF maps.

use std::fmt;

/// How to compute the canonical frame address (the caller's stack pointer
/// before the call) at a pc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CfaRule {
    /// `rsp + offset`.
    Rsp(i32),
    /// `rbp + offset` (functions that set up a frame pointer).
    Rbp(i32),
    /// The lazy-binding PLT stub expression: `rsp + 8`, plus 8 once the pc
    /// is past the stub's push (`(pc & 15) >= threshold`).
    Plt {
        /// The `pc & 15` value from which the extra 8 applies (11 or 10).
        threshold: u8,
    },
    /// A signal trampoline (`__restore_rt`, CFA = `*(rsp + 160)`): the
    /// interrupted frame's registers are in the `ucontext_t` at rsp.
    Signal,
    /// No unwind information covers the pc (a gap between functions).
    Missing,
    /// The outermost frame (`_start`, thread entry): the return address
    /// is marked undefined, the stack ends here.
    End,
    /// A rule the unwinder does not evaluate (another DWARF expression or
    /// register); unwinding stops here and says why.
    Unsupported,
}

/// Where the caller's rbp is at a pc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RbpRule {
    /// Not saved: rbp still holds the caller's value.
    Unchanged,
    /// Saved on the stack at `CFA + offset`.
    CfaOffset(i32),
    /// Recovered some other way (not supported; unwinding past this frame
    /// loses rbp, which only matters to frames that use it as CFA).
    Unsupported,
}

/// One row: from `pc` up to the next row's pc, these rules hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// First pc (ELF virtual address) the row covers.
    pub pc: u64,
    /// How to find the CFA.
    pub cfa: CfaRule,
    /// Where the caller's rbp is.
    pub rbp: RbpRule,
}

/// The unwind rows of one file, sorted by pc, consecutive duplicates merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    rows: Vec<UnwindRow>,
}

/// Size of one row in the kernel's encoding ([`profiler_common::UnwindRow`]).
pub const KERNEL_ROW_BYTES: usize = std::mem::size_of::<profiler_common::UnwindRow>();

impl UnwindTable {
    /// A table from rows in any order; where two rows start at the same pc
    /// the one given last wins, and rows equal to their predecessor are
    /// merged away.
    pub fn new(mut rows: Vec<UnwindRow>) -> Self {
        rows.sort_by_key(|r| r.pc);
        let mut merged: Vec<UnwindRow> = Vec::with_capacity(rows.len());
        for row in rows {
            match merged.last_mut() {
                Some(last) if last.pc == row.pc => *last = row,
                _ => merged.push(row),
            }
        }
        merged.dedup_by(|next, prev| next.cfa == prev.cfa && next.rbp == prev.rbp);
        Self { rows: merged }
    }

    /// The rows, sorted by pc.
    pub fn rows(&self) -> &[UnwindRow] {
        &self.rows
    }

    /// The row covering `pc`, if any row starts at or before it.
    pub fn lookup(&self, pc: u64) -> Option<&UnwindRow> {
        let after = self.rows.partition_point(|r| r.pc <= pc);
        after.checked_sub(1).map(|i| &self.rows[i])
    }

    /// Bytes the table takes in the kernel's encoding.
    pub fn kernel_bytes(&self) -> usize {
        self.rows.len() * KERNEL_ROW_BYTES
    }

    /// How many rows use each kind of CFA rule.
    pub fn stats(&self) -> TableStats {
        let mut stats = TableStats::default();
        for row in &self.rows {
            match row.cfa {
                CfaRule::Rsp(_) => stats.rsp += 1,
                CfaRule::Rbp(_) => stats.rbp += 1,
                CfaRule::Plt { .. } => stats.plt += 1,
                CfaRule::Signal => stats.signal += 1,
                CfaRule::Missing => stats.missing += 1,
                CfaRule::End => stats.end += 1,
                CfaRule::Unsupported => stats.unsupported += 1,
            }
        }
        stats
    }
}

/// Row counts by CFA rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// `rsp + offset` rows.
    pub rsp: usize,
    /// `rbp + offset` rows.
    pub rbp: usize,
    /// PLT expression rows.
    pub plt: usize,
    /// Signal-trampoline rows.
    pub signal: usize,
    /// Gaps without unwind information.
    pub missing: usize,
    /// Outermost-frame rows.
    pub end: usize,
    /// Rows the unwinder cannot evaluate.
    pub unsupported: usize,
}

impl fmt::Display for TableStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rsp, {} rbp, {} plt, {} signal, {} gaps, {} outermost, {} unsupported",
            self.rsp, self.rbp, self.plt, self.signal, self.missing, self.end, self.unsupported
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pc: u64, cfa: CfaRule) -> UnwindRow {
        UnwindRow {
            pc,
            cfa,
            rbp: RbpRule::Unchanged,
        }
    }

    #[test]
    fn sorts_merges_and_looks_up() {
        let table = UnwindTable::new(vec![
            row(0x20, CfaRule::Rsp(16)),
            row(0x10, CfaRule::Rsp(8)),
            row(0x18, CfaRule::Rsp(8)),
            row(0x30, CfaRule::Missing),
            row(0x30, CfaRule::Rsp(8)),
        ]);
        assert_eq!(
            table.rows(),
            &[
                row(0x10, CfaRule::Rsp(8)),
                row(0x20, CfaRule::Rsp(16)),
                row(0x30, CfaRule::Rsp(8)),
            ]
        );
        assert_eq!(table.lookup(0x0f), None);
        assert_eq!(table.lookup(0x1f).unwrap().cfa, CfaRule::Rsp(8));
        assert_eq!(table.lookup(0x20).unwrap().cfa, CfaRule::Rsp(16));
        assert_eq!(table.lookup(u64::MAX).unwrap().pc, 0x30);
        assert_eq!(table.kernel_bytes(), 24);
        assert_eq!(table.stats().rsp, 3);
    }
}
