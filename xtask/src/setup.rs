//! `cargo xtask setup`: installs what building, testing and benchmarking
//! need on a fresh machine of this kind (Debian, rustup). Every step checks
//! first and does nothing when its result is already there.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Debian packages the build needs: LLVM 22 for bpf-linker.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
];

/// Debian packages the tests and benchmarks add: Go with pprof's sources
/// (Google's pprof tool) and sprig/yaml (the chart renderer), perf for the
/// benchmark baseline, gcc for the test workloads.
const TEST_PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-google-pprof-dev",
    "golang-github-masterminds-sprig-dev",
    "golang-gopkg-yaml.v2-dev",
    "golang-gopkg-yaml.v3-dev",
    "linux-perf",
    "gcc",
    "g++",
    // jemalloc, shared and static: the memory profile's e2e test finds it
    // by LD_PRELOAD and linked into a program; tcmalloc and mimalloc by
    // LD_PRELOAD.
    "libjemalloc-dev",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
    // setcap: the capabilities e2e test runs hostprof without root.
    "libcap2-bin",
    // The stack corpus's oracle (tests/e2e/gdb_stacks.py).
    "gdb",
];

/// How much to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// What building hostprof needs (the container image's build stage).
    Build,
    /// Everything: build, tests, deploy checks, benchmarks.
    All,
}

/// The nightly that matches LLVM 22 (later nightlies use LLVM 23, which a
/// bpf-linker built on Debian's llvm-22 cannot link).
const PINNED_NIGHTLY: &str = "nightly-2026-05-19";

/// The toolchain name [`PINNED_NIGHTLY`] is installed under (when no
/// `nightly` is there yet), and that the nightly-only builds run with: the
/// eBPF object (here and in aya-build) and the fuzz targets.
pub const NIGHTLY: &str = "nightly";

/// Runs the setup steps of `scope`.
pub fn run(root: &Path, scope: Scope) -> Result<()> {
    apt_packages(BUILD_PACKAGES)?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    if scope == Scope::All {
        apt_packages(TEST_PACKAGES)?;
        pprof_tool(root)?;
        python_packages()?;
        cargo_fuzz()?;
    }
    Ok(())
}

fn step(name: &str, state: &str) {
    println!("[setup] {name}: {state}");
}

fn installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.ends_with("install ok installed"))
}

fn apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
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
    if cmd::succeeds(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"])) {
        step("nightly toolchain", "present");
        return Ok(());
    }
    step(
        "nightly toolchain",
        &format!("installing {PINNED_NIGHTLY} as `{NIGHTLY}`"),
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
    cmd::run(Command::new("rustup").args(["toolchain", "link", NIGHTLY, sysroot.trim()]))
}

fn rust_src() -> Result<()> {
    let components = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|c| c.starts_with("rust-src")) {
        step("nightly rust-src", "present");
        return Ok(());
    }
    step("nightly rust-src", "installing");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
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

/// cargo-fuzz, from crates.io, for `cargo xtask fuzz`.
pub fn cargo_fuzz() -> Result<()> {
    if cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        step("cargo-fuzz", "present");
        return Ok(());
    }
    step("cargo-fuzz", "installing (cargo install, about 2 minutes)");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz (is ~/.cargo/bin on PATH?)")
}

/// Python packages: the official OTLP types and grpcio for the interop
/// tests' receiver (opentelemetry-proto 1.45 reads proto v1.10, our wire
/// format); jsonschema, kubernetes-validate and PyYAML for the deploy checks.
fn python_packages() -> Result<()> {
    let probe = "import grpc, jsonschema, kubernetes_validate, yaml; \
                 from opentelemetry.proto.collector.profiles.v1development \
                 import profiles_service_pb2_grpc";
    if cmd::succeeds(Command::new("python3").args(["-c", probe])) {
        step("python packages", "present");
        return Ok(());
    }
    step(
        "python packages",
        "installing opentelemetry-proto, grpcio, jsonschema, kubernetes-validate with pip",
    );
    cmd::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--root-user-action=ignore",
        "opentelemetry-proto==1.45.*",
        "grpcio>=1.60",
        "jsonschema>=4",
        "kubernetes-validate>=1.33",
        "PyYAML>=6",
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
    go_build(&tool, "github.com/google/pprof", root)
}

/// Builds Go package `package` (an import path, or `./dir` under `root`)
/// into `output` against Debian's Go sources (GOPATH mode, offline).
pub fn go_build(output: &Path, package: &str, root: &Path) -> Result<()> {
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    cmd::run(
        Command::new("go")
            .args(["build", "-o"])
            .arg(output)
            .arg(package)
            .current_dir(root)
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env(
                "HOME",
                std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
            ),
    )
}
