//! Building the eBPF object on its own (the userspace build embeds it via
//! aya-build; this is for looking at the object quickly).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;
use crate::setup::NIGHTLY;

/// Flags aya-build passes: the BPF target architecture, full debug info
/// and BTF emitted by bpf-linker (the loader needs BTF).
fn rustflags() -> String {
    [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f")
}

/// Builds `profiler-ebpf` and returns the object's path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let target_dir = root.join("target/ebpf");
    cmd::run(
        Command::new("rustup")
            .args([
                "run",
                NIGHTLY,
                "cargo",
                "build",
                "--package",
                "profiler-ebpf",
            ])
            .args(["--bins", "--release", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--target-dir"])
            .arg(&target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags())
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .current_dir(root),
    )
    .context("building the eBPF object (run `cargo xtask setup` if tools are missing)")?;
    let object = target_dir.join("bpfel-unknown-none/release/profiler");
    let size = std::fs::metadata(&object)
        .with_context(|| format!("the build left no object at {}", object.display()))?
        .len();
    println!("{} ({size} bytes)", object.display());
    Ok(object)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rustflags_are_unit_separated() {
        let flags = super::rustflags();
        assert_eq!(flags.split('\x1f').count(), 3);
        assert!(flags.contains("-Clink-arg=--btf"));
    }
}
