//! Unwind-table build cost: time to turn a library's call frame information
//! into an [`UnwindTable`], and the table's size in the kernel's encoding
//! against the size of the `.eh_frame` it came from.
//!
//! `cargo bench -p hostprof --bench unwind_table` (or `cargo xtask
//! bench-unwind`).

#![allow(
    missing_docs,
    reason = "criterion's macros generate undocumented functions"
)]

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hostprof::unwind::from_elf_file;
use object::{Object, ObjectSection};

fn library(name: &str) -> Option<PathBuf> {
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

fn cfi_bytes(path: &Path) -> u64 {
    let data = std::fs::read(path).expect("read library");
    let elf = object::File::parse(&*data).expect("ELF");
    [".eh_frame", ".debug_frame"]
        .iter()
        .filter_map(|name| elf.section_by_name(name))
        .map(|s| s.size())
        .sum()
}

fn build_tables(c: &mut Criterion) {
    let mut group = c.benchmark_group("unwind_table");
    for name in ["libc.so.6", "libstdc++.so.6", "libm.so.6"] {
        let Some(path) = library(name) else {
            continue;
        };
        let cfi = cfi_bytes(&path);
        let table = from_elf_file(&path).expect("build table").table;
        println!(
            "{name}: {:.2} MiB of CFI -> {} rows, {:.2} MiB in the kernel's encoding \
             ({:.2} MiB per MiB of CFI); {}",
            cfi as f64 / 1048576.0,
            table.rows().len(),
            table.kernel_bytes() as f64 / 1048576.0,
            table.kernel_bytes() as f64 / cfi as f64,
            table.stats()
        );
        group.throughput(Throughput::Bytes(cfi));
        group.bench_function(name, |b| b.iter(|| from_elf_file(&path).expect("build")));
    }
    group.finish();
}

criterion_group!(benches, build_tables);
criterion_main!(benches);
