//! Unwind tables for stacks without frame pointers: [`build`] evaluates an
//! ELF file's call frame information (`.eh_frame`, `.debug_frame`) with
//! gimli into a compact [`table::UnwindTable`] of rows `pc → (CFA rule,
//! rbp rule)`; the return address is at CFA-8 on x86-64. Pure: reads the
//! file, touches nothing in the kernel.

pub mod build;
pub mod table;

pub use build::{from_elf_file, BuildError};
pub use table::{CfaRule, RbpRule, UnwindRow, UnwindTable};
