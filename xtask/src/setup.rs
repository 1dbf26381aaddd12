//! `cargo xtask setup`: installs what building, testing and benchmarking
//! need on a fresh machine of this kind (Debian, rustup). Every step checks
//! first and does nothing when its result is already there.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Debian packages: LLVM 22 for bpf-linker, Go and pprof's sources for
/// Google's pprof tool, perf for the benchmark baseline, gcc for the test
/// workloads.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "golang-go",
    "golang-github-google-pprof-dev",
    "linux-perf",
    "gcc",
];

/// The nightly that matches LLVM 22 (later nightlies use LLVM 23, which a
/// bpf-linker built on Debian's llvm-22 cannot link).
const PINNED_NIGHTLY: &str = "nightly-2026-05-19";

/// Runs every setup step.
pub fn run(root: &Path) -> Result<()> {
    apt_packages()?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    pprof_tool(root)?;
    python_otlp()?;
    Ok(())
}

fn step(name: &str, state: &str) {
    println!("[setup] {name}: {state}");
}

fn installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.ends_with("install ok installed"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("Debian packages", "already installed");
        return Ok(());
    }
    step(
        "Debian packages",
        &format!("installing {}", missing.join(" ")),
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "installing {} needs root: run `sudo apt-get install -y {}` or run this as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly() -> Result<()> {
    if cmd::succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        step("nightly toolchain", "present");
        return Ok(());
    }
    step(
        "nightly toolchain",
        &format!("installing {PINNED_NIGHTLY} as `nightly`"),
    );
    cmd::run(Command::new("rustup").args([
        "toolchain",
        "install",
        PINNED_NIGHTLY,
        "--profile",
        "minimal",
    ]))?;
    let sysroot = cmd::output(Command::new("rustup").args([
        "run",
        PINNED_NIGHTLY,
        "rustc",
        "--print",
        "sysroot",
    ]))
    .context("finding the pinned nightly's sysroot")?;
    cmd::run(Command::new("rustup").args(["toolchain", "link", "nightly", sysroot.trim()]))
}

fn rust_src() -> Result<()> {
    let components = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|c| c.starts_with("rust-src")) {
        step("nightly rust-src", "present");
        return Ok(());
    }
    step("nightly rust-src", "installing");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> Result<()> {
    if cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        step("bpf-linker", "present");
        return Ok(());
    }
    step("bpf-linker", "installing (cargo install, about 2 minutes)");
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("installing bpf-linker (is ~/.cargo/bin on PATH?)")
}

/// The official OTLP Python types and grpcio, for the interop tests'
/// receiver (opentelemetry-proto 1.45 reads proto v1.10, our wire format).
fn python_otlp() -> Result<()> {
    let probe = "import grpc; from opentelemetry.proto.collector.profiles.v1development \
                 import profiles_service_pb2_grpc";
    if cmd::succeeds(Command::new("python3").args(["-c", probe])) {
        step("python opentelemetry-proto + grpcio", "present");
        return Ok(());
    }
    step("python opentelemetry-proto + grpcio", "installing with pip");
    cmd::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--root-user-action=ignore",
        "opentelemetry-proto==1.45.*",
        "grpcio>=1.60",
    ]))
}

fn pprof_tool(root: &Path) -> Result<()> {
    let tool = root.join("target/tools/pprof");
    if tool.exists() {
        step("pprof tool", "present");
        return Ok(());
    }
    step(
        "pprof tool",
        "building target/tools/pprof from Debian's Go sources",
    );
    std::fs::create_dir_all(root.join("target/tools")).context("creating target/tools")?;
    cmd::run(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&tool)
            .arg("github.com/google/pprof")
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env(
                "HOME",
                std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
            ),
    )
}
