//! Hostile tenants (issue 14, finding 1): an unprivileged user who
//! truncates and rewrites a file it has mapped, over and over, while
//! hostprof reads it for unwind tables and symbols, must not kill hostprof
//! (it did, with SIGBUS, while files were read through mappings).
//!
//! Needs root (BPF, and `setpriv` to run the tenant as `nobody`).

use std::os::unix::fs::chown;
use std::process::{Command, Stdio};

use crate::common::{self, KillOnDrop, Traces};

/// `nobody`: the tenant owns its files, and nothing else.
const TENANT: u32 = 65534;

#[test]
fn a_tenant_truncating_its_mapped_library_cannot_kill_hostprof() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let paths = crate::workloads::build(dir.path(), &["truncator"]).unwrap();
    let library = dir.path().join("libbulk.so");
    for path in [dir.path(), &paths[0], &library] {
        chown(path, Some(TENANT), Some(TENANT)).unwrap();
    }
    for round in 1..=2 {
        // Burns CPU in libbulk.so for 4 s, then truncates and rewrites it
        // for 4 s: the capture's end, when everything is symbolized, falls
        // in the second half.
        let tenant = KillOnDrop::new(
            Command::new("setpriv")
                .args([
                    &format!("--reuid={TENANT}"),
                    &format!("--regid={TENANT}"),
                    "--clear-groups",
                    "--",
                ])
                .arg(&paths[0])
                .arg("8000")
                .arg(&library)
                .stdout(Stdio::piped())
                .spawn()
                .expect("run the tenant with setpriv (util-linux)"),
        );
        let output = dir.path().join(format!("round{round}.pb.gz"));
        let stats = dir.path().join(format!("round{round}.json"));
        let record = Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args(["record", "--duration", "6s", "--no-flamegraph", "-o"])
            .arg(&output)
            .arg("--stats-json")
            .arg(&stats)
            .output()
            .expect("run hostprof");
        let tenant = tenant.wait_with_output().expect("the tenant's output");
        let said = String::from_utf8_lossy(&tenant.stdout);
        assert!(
            record.status.success(),
            "round {round}: hostprof record failed ({}) while the tenant ran ({said}):\n{}",
            record.status,
            String::from_utf8_lossy(&record.stderr)
        );
        let truncations: u64 = said
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            truncations > 100,
            "round {round}: the tenant did not attack ({said}, {})",
            tenant.status
        );
        // Google's pprof reads the profile, and it has the tenant's samples.
        let traces = Traces::of(&common::pprof_tool(), &output, "truncator");
        let samples: u64 = traces.0.iter().map(|(count, _)| count).sum();
        assert!(
            samples > 50,
            "round {round}: {samples} samples of the tenant"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
        let symbolization = &report["symbolization"];
        eprintln!(
            "round {round}: {truncations} truncations; {samples} samples; symbolization {symbolization}"
        );
        assert!(symbolization["files_copied"].as_u64().unwrap() > 0);
    }
}
