//! Running commands with clear errors.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Runs `cmd`, inheriting stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs `cargo <args>` in the workspace root.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new(env_cargo()).args(args).current_dir(root))
}

/// Runs `cargo <args>` in the workspace root and returns its stdout; its
/// stderr (build progress) goes to ours. Fails unless it exits 0.
pub fn cargo_stdout(root: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(env_cargo());
    cmd.args(args).current_dir(root).stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `cmd` runs and exits 0 (its output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The stdout of `cmd` when it exits 0.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cargo that runs us, so nested builds use the same toolchain.
fn env_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
