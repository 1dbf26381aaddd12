//! Complete user stacks without frame pointers: unwind tables built from
//! `.eh_frame` and loaded for the kernel's unwinder.
//!
//! - [`build`] evaluates an ELF file's call frame information
//!   (`.eh_frame`, `.debug_frame`) with gimli into a compact
//!   [`table::UnwindTable`] of rows `pc → (CFA rule, rbp rule)`; the
//!   return address is at CFA-8 on x86-64.
//! - [`encode`] turns a table into the kernel's 8-byte rows.
//! - [`space`] and [`registry`] decide where each file's rows go in the
//!   kernel's array, which processes use them, and what to evict under the
//!   budget.
//! - [`loader`] is the worker thread that does all that off the sampling
//!   loop.
//! - [`kernel`] refuses kernels whose `bpf_probe_read_user` can hang the
//!   machine from a perf-event program.
//!
//! Everything here but the loader's thread and the kernel check is pure:
//! it reads files and touches nothing in the kernel.

pub mod build;
pub mod encode;
pub mod kernel;
pub mod loader;
pub mod registry;
pub mod space;
pub mod table;

pub use build::{from_elf_file, BuildError, FileUnwind, LoadSegment};
pub use table::{CfaRule, RbpRule, UnwindRow, UnwindTable};

/// How user stacks are unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwinder {
    /// From `.eh_frame` tables in the kernel, falling back to frame
    /// pointers where a file has none; up to 544 frames.
    Tables(TableBudget),
    /// Frame pointers only (`bpf_get_stack`, 127 frames): the cheapest,
    /// and what kernels with the `bpf_probe_read_user` bug must use.
    FramePointers,
}

impl Default for Unwinder {
    fn default() -> Self {
        Unwinder::Tables(TableBudget::default())
    }
}

/// Kernel memory for unwind tables, in bytes of `UNWIND_ROWS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBudget(u64);

/// A table budget outside what hostprof accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unwind table budget {0} bytes is out of range: give 1 MiB to 1 GiB (e.g. 64MiB)")]
pub struct InvalidTableBudget(u64);

impl TableBudget {
    /// The smallest budget accepted.
    pub const MIN: u64 = 1 << 20;
    /// The largest budget accepted.
    pub const MAX: u64 = 1 << 30;

    /// A budget of `bytes`, 1 MiB to 1 GiB.
    pub fn new(bytes: u64) -> Result<Self, InvalidTableBudget> {
        if (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(Self(bytes))
        } else {
            Err(InvalidTableBudget(bytes))
        }
    }

    /// The budget in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Rows of the kernel's encoding that fit.
    pub fn rows(self) -> u32 {
        (self.0 / table::KERNEL_ROW_BYTES as u64) as u32
    }
}

impl Default for TableBudget {
    /// 64 MiB: 8 Mi rows, the tables of a few hundred typical binaries.
    fn default() -> Self {
        Self(64 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_and_rows() {
        assert_eq!(TableBudget::default().rows(), 8 << 20);
        assert!(TableBudget::new(512 << 10).is_err());
        assert!(TableBudget::new(2 << 30).is_err());
        assert_eq!(TableBudget::new(1 << 20).unwrap().rows(), 1 << 17);
    }
}
