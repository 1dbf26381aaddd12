//! OTLP interop: `hostprof record` exports to a receiver built on the
//! official OpenTelemetry Python types (tests/e2e/otlp_receiver.py), over gRPC
//! and over HTTP with gzip; the receiver validates the dictionary rules and
//! reports the decoded stacks, which must hold the workload's hot function
//! under its whole call chain, with host and process attributes.
//!
//! Needs root (BPF) and python3 with `opentelemetry-proto` and `grpcio`
//! (`cargo xtask setup` installs them).

use std::process::Command;

use serde_json::Value;

use crate::common::{self, Receiver};

/// Samples of `process` whose stack holds `chain`, and all its samples.
fn chain_share(request: &Value, process: &str, chain: &[&str]) -> (u64, u64) {
    let mut with_chain = 0;
    let mut total = 0;
    for resource in request["resources"].as_array().unwrap() {
        if resource["attributes"]["process.executable.name"] != process {
            continue;
        }
        for sample in resource["samples"].as_array().unwrap() {
            let count = sample["count"].as_u64().unwrap();
            let stack: Vec<String> = sample["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
                .collect();
            total += count;
            if common::has_chain(&stack, chain) {
                with_chain += count;
            }
        }
    }
    (with_chain, total)
}

#[test]
fn export_is_read_by_the_official_otlp_types_over_grpc_and_http() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let workloads = common::Workloads::build(&["cpu_chain", "rust_chain"]);
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    // Long enough to outlive both captures (killed after them), each of
    // which also symbolizes hostprof's own debug binary.
    let mut worker = workloads.spawn("cpu_chain", 20_000);
    let mut rust_worker = workloads.spawn("rust_chain", 20_000);
    for (protocol, port) in [("grpc", receiver.grpc_port), ("http", receiver.http_port)] {
        let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args([
                "record",
                "--duration",
                "3s",
                "--no-local",
                "--otlp-protocol",
                protocol,
            ])
            .arg("--otlp-endpoint")
            .arg(format!("http://127.0.0.1:{port}"))
            .status()
            .expect("run hostprof");
        assert!(status.success(), "export over {protocol} failed");
    }
    for child in [&mut worker, &mut rust_worker] {
        child.kill().ok();
        child.wait().ok();
    }

    let received = receiver.received();
    let transports: Vec<&str> = received
        .iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect();
    assert_eq!(transports, vec!["grpc", "http+gzip"]);
    for request in &received {
        assert_eq!(
            request["errors"],
            Value::Array(vec![]),
            "{}",
            request["errors"]
        );
        let resource = request["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["attributes"]["process.executable.name"] == "cpu_chain")
            .expect("a resource for the cpu_chain process");
        let attributes = &resource["attributes"];
        for key in [
            "host.name",
            "os.type",
            "process.pid",
            "process.executable.path",
        ] {
            assert!(
                !attributes[key].is_null(),
                "resource lacks {key}: {attributes}"
            );
        }
        assert!(
            resource["frame_types"]
                .as_array()
                .unwrap()
                .contains(&"native".into()),
            "C frames are native: {}",
            resource["frame_types"]
        );
        let rust = request["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["attributes"]["process.executable.name"] == "rust_chain")
            .expect("a resource for the rust_chain process");
        assert!(
            rust["frame_types"]
                .as_array()
                .unwrap()
                .contains(&"rust".into()),
            "Rust frames are marked rust: {}",
            rust["frame_types"]
        );
        let (chain, total) = chain_share(
            request,
            "cpu_chain",
            &["hot_loop", "level2", "level1", "main"],
        );
        assert!(
            total > 100 && chain * 100 >= total * 80,
            "{}: hot_loop<-level2<-level1<-main in {chain} of {total} samples",
            request["transport"]
        );
    }
}

#[test]
fn export_over_tls_trusts_a_custom_ca() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    common::private_ca(dir.path());
    let pem = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let receiver = Receiver::start(
        dir.path(),
        &[
            "--tls-cert",
            &pem("server.pem"),
            "--tls-key",
            &pem("server.key"),
        ],
    );
    let record = |protocol: &str, port: u16, ca: Option<String>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hostprof"));
        cmd.args(["record", "--duration", "1s", "--no-local"])
            .args(["--otlp-protocol", protocol])
            .arg("--otlp-endpoint")
            .arg(format!("https://127.0.0.1:{port}"));
        if let Some(ca) = ca {
            cmd.env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca);
        }
        cmd.output().expect("run hostprof")
    };
    for (protocol, port) in [("grpc", receiver.grpc_port), ("http", receiver.http_port)] {
        let untrusted = record(protocol, port, None);
        assert!(
            !untrusted.status.success(),
            "{protocol}: a certificate from an unknown CA must be refused"
        );
        let trusted = record(protocol, port, Some(pem("ca.pem")));
        assert!(
            trusted.status.success(),
            "{protocol} over TLS with the custom CA failed:\n{}",
            String::from_utf8_lossy(&trusted.stderr)
        );
    }
    let transports: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r["transport"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(transports, vec!["grpc", "http+gzip"]);

    let missing = record("http", receiver.http_port, Some(pem("nope.pem")));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("nope.pem") && stderr.contains("PEM"),
        "a missing CA file is named before sampling starts:\n{stderr}"
    );
}
