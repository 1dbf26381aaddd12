//! Run without root with only what the sampling error asks for
//! (`setcap cap_bpf,cap_perfmon`), hostprof samples, but says once at
//! start what it cannot do — other users' processes, replaced binaries —
//! and `system-info` shows it (issue 14, finding 6).
//!
//! Needs root (to grant the capabilities, and BPF).

use std::os::unix::fs::chown;
use std::process::{Command, Output};

use crate::common;

/// `nobody`.
const USER: u32 = 65534;

/// Runs `binary ARGS` as `nobody` in `dir`.
fn as_nobody(binary: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={USER}"),
            &format!("--regid={USER}"),
            "--clear-groups",
            "--",
        ])
        .arg(binary)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run setpriv (util-linux)")
}

#[test]
fn with_bpf_and_perfmon_only_hostprof_says_what_it_cannot_do() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path(), Some(USER), Some(USER)).unwrap();
    let binary = dir.path().join("hostprof");
    std::fs::copy(env!("CARGO_BIN_EXE_hostprof"), &binary).unwrap();
    let setcap = Command::new("setcap")
        .args(["cap_bpf,cap_perfmon+ep"])
        .arg(&binary)
        .status()
        .expect("run setcap (libcap2-bin, installed by cargo xtask setup)");
    assert!(setcap.success());

    let info = as_nobody(&binary, dir.path(), &["system-info"]);
    let text = String::from_utf8_lossy(&info.stdout);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{text}"))
            .to_owned()
    };
    assert!(row("capabilities ").contains(" ok "), "{text}");
    let others = row("caps: other users");
    assert!(
        others.contains("warn")
            && others.contains("missing CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
        "{text}"
    );
    assert!(
        row("caps: replaced binaries").contains("missing CAP_CHECKPOINT_RESTORE"),
        "{text}"
    );

    // Another user's busy process, so there is something it cannot read.
    let workloads = crate::workloads::build(dir.path(), &["cpu_chain"]).unwrap();
    let mut busy = Command::new(&workloads[0]).arg("4000").spawn().unwrap();
    let record = as_nobody(
        &binary,
        dir.path(),
        &[
            "record",
            "--duration",
            "2s",
            "--no-flamegraph",
            "-o",
            "out.pb.gz",
        ],
    );
    busy.kill().ok();
    busy.wait().ok();
    let stderr = String::from_utf8_lossy(&record.stderr);
    assert!(
        record.status.success(),
        "record as nobody failed:\n{stderr}"
    );
    let warned = stderr
        .lines()
        .filter(|l| l.contains("without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"))
        .count();
    assert_eq!(
        warned, 1,
        "one warning about other users' processes:\n{stderr}"
    );
    assert!(
        stderr.contains("setcap cap_bpf,cap_perfmon,cap_sys_ptrace"),
        "{stderr}"
    );

    // As root, nothing is missing.
    let info = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .arg("system-info")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    for name in ["caps: other users", "caps: replaced binaries"] {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(line.contains(" ok ") && line.contains("held"), "{text}");
    }
}
