//! Container attribution end to end: a workload moved into a cgroup laid
//! out the way kubelet and containerd (systemd driver) lay them out must
//! come back with its container id and pod uid, on its own OTLP
//! `ResourceProfiles` (checked with the official Python types) and as pprof
//! labels (checked with Google's pprof tool), while host processes keep
//! per-process resources.
//!
//! Needs root (BPF, creating cgroups) and cgroup v2 at
//! /sys/fs/cgroup/unified or /sys/fs/cgroup.

use std::process::Command;

use crate::common::{self, FakeContainer, KillOnDrop, Receiver, Traces};

const POD_UID: &str = "5e2b7c1a-90d4-4f3e-b6a8-0c1d2e3f4a5b";

#[test]
fn a_process_in_a_kubernetes_container_is_attributed_to_it() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let container_id = format!("c0ffee{:010x}", std::process::id()).repeat(4);
    let fake = FakeContainer::create(&container_id, POD_UID);
    let workloads = common::Workloads::build(&["cpu_chain"]);
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    let mut worker = workloads.spawn("cpu_chain", 7000);
    fake.adopt(worker.id());
    // A host process known to be on a CPU throughout (others may all be
    // idle for the 3 s).
    let host = KillOnDrop::new(
        Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("start a busy shell"),
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", worker.id())).unwrap();
    assert!(cgroup.contains(&container_id), "{cgroup}");

    let output = workloads.path("host.pb.gz");
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "3s", "--no-flamegraph", "-o"])
        .arg(&output)
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{}", receiver.grpc_port))
        .status()
        .expect("run hostprof");
    worker.kill().ok();
    worker.wait().ok();
    let host_pid = host.id();
    drop(host);
    assert!(status.success());

    // OTLP: one resource for the container, carrying the pod uid; the
    // process is on its samples.
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let resources = received[0]["resources"].as_array().unwrap();
    let container = resources
        .iter()
        .find(|r| r["attributes"]["container.id"] == container_id.as_str())
        .unwrap_or_else(|| panic!("no resource for container {container_id}"));
    assert_eq!(container["attributes"]["k8s.pod.uid"], POD_UID);
    assert_eq!(container["attributes"]["container.runtime"], "containerd");
    assert!(container["attributes"]["process.pid"].is_null());
    let samples = container["samples"].as_array().unwrap();
    let hot: u64 = samples
        .iter()
        .filter(|s| s["attributes"]["process.executable.name"] == "cpu_chain")
        .filter(|s| {
            let stack: Vec<String> = s["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
                .collect();
            common::has_chain(&stack, &["hot_loop", "level2", "level1", "main"])
        })
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    assert!(
        hot > 100,
        "the workload's hot chain under its container: {hot}"
    );
    let pid_of = |r: &serde_json::Value| {
        let pid = &r["attributes"]["process.pid"];
        pid.as_u64()
            .or_else(|| pid.as_str().and_then(|p| p.parse().ok()))
    };
    assert!(
        resources
            .iter()
            .any(|r| r["attributes"]["container.id"].is_null()
                && pid_of(r) == Some(u64::from(host_pid))),
        "host processes keep one resource each: none for the busy shell {}",
        host_pid
    );

    // pprof: the same samples carry container.id and k8s.pod.uid labels.
    let tool = common::pprof_tool();
    let in_container = Traces::with_label(&tool, &output, "container.id", &container_id);
    let in_pod = Traces::with_label(&tool, &output, "k8s.pod.uid", POD_UID);
    let chain = |t: &Traces| {
        t.count(|stack| common::has_chain(stack, &["hot_loop", "level2", "level1", "main"]))
    };
    assert!(chain(&in_container) > 100, "{in_container:?}");
    assert_eq!(in_container.total(), in_pod.total());
    assert_eq!(
        in_container.total(),
        Traces::of(&tool, &output, "cpu_chain").total(),
        "every cpu_chain sample and nothing else is in the container"
    );
}
