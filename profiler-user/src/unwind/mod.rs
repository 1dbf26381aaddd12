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
//!
//! Whether the running kernel can run the table unwinder at all (its
//! version, the `bpf_probe_read_user` freeze bug) is decided in
//! [`crate::system_info::kernel`].
//!
//! Everything here but the loader's thread is pure: it reads files and
//! touches nothing in the kernel.

pub(crate) mod build;
pub(crate) mod encode;
pub(crate) mod loader;
pub(crate) mod registry;
pub(crate) mod requests;
pub(crate) mod space;
pub(crate) mod table;

pub use build::{from_elf_file, BuildError, FileUnwind, LoadSegment};
pub use loader::LoaderStats;
pub use registry::RegistryStats;
pub use table::{CfaRule, RbpRule, UnwindRow, UnwindTable};

pub use crate::sampler::unwinder::{
    BudgetWithoutTables, InvalidTableBudget, InvalidUnwinderKind, ParseTableBudgetError,
    TableBudget, Unwinder, UnwinderKind,
};
