//! Kubernetes metadata end to end: a stand-in API server
//! (tests/e2e/k8s_api_stub.py, HTTPS with a private CA, bearer token) serves a
//! real-shaped pod list for this node; a workload runs in a kubelet-style
//! cgroup of one of its containers. hostprof, given a kubeconfig, must name
//! the pod, namespace, container and node on that container's OTLP resource
//! and pprof labels, apply namespace filters, and keep profiling (with the
//! names it learnt) while the API server is down.
//!
//! Needs root (BPF, cgroups), python3 with opentelemetry-proto and grpcio.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, FakeContainer, KillOnDrop, Receiver, Traces};

const POD_UID: &str = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d";
const TOKEN: &str = "test-token";

struct ApiServer {
    child: Child,
    kubeconfig: PathBuf,
}

impl ApiServer {
    /// Starts the stand-in with one pod running container `container_id`.
    fn start(dir: &Path, container_id: &str) -> Self {
        common::private_ca(dir);
        let pods = json!([{
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "checkout-7d9f", "namespace": "shop", "uid": POD_UID,
                "labels": {"app": "checkout"}, "resourceVersion": "42"
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {"containerStatuses": [{
                "name": "app", "containerID": format!("containerd://{container_id}"),
                "image": "shop/checkout:1", "imageID": "", "ready": true, "restartCount": 0
            }]}
        }, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "elsewhere", "namespace": "shop", "uid": "u-other"},
            "spec": {"nodeName": "node-b", "containers": [{"name": "app"}]},
        }]);
        std::fs::write(dir.join("pods.json"), pods.to_string()).unwrap();
        let (child, port) = common::start_announcing(
            Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/e2e/k8s_api_stub.py"
                ))
                .args(["--token", TOKEN])
                .arg("--pods")
                .arg(dir.join("pods.json"))
                .arg("--cert")
                .arg(dir.join("server.pem"))
                .arg("--key")
                .arg(dir.join("server.key"))
                .arg("--log")
                .arg(dir.join("api.log")),
            "PORT ",
        );
        let port: u16 = port.parse().expect("a port number");
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
                 clusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {}\n\
                 users:\n- name: test\n  user:\n    token: {TOKEN}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n",
                base64(&ca)
            ),
        )
        .unwrap();
        Self { child, kubeconfig }
    }

    fn stop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The resources of the one request `receiver` got.
fn resources(receiver: &Receiver) -> Vec<Value> {
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["errors"], json!([]));
    received[0]["resources"].as_array().unwrap().clone()
}

fn receiver_in(dir: &Path) -> Receiver {
    std::fs::create_dir_all(dir).unwrap();
    Receiver::start(dir, &[])
}

fn record(api: &ApiServer, receiver: &Receiver, output: &Path, extra: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args([
            "record",
            "--duration",
            "3s",
            "--no-flamegraph",
            "--node-name",
            "node-a",
        ])
        .arg("-o")
        .arg(output)
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{}", receiver.grpc_port))
        .args(extra)
        .env("KUBECONFIG", &api.kubeconfig)
        .status()
        .expect("run hostprof");
    assert!(status.success());
}

#[test]
fn pods_are_named_filtered_and_survive_an_api_outage() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let container_id = format!("beef{:012x}", std::process::id()).repeat(4);
    let fake = FakeContainer::create(&container_id, POD_UID);
    let workloads = common::Workloads::build(&["cpu_chain"]);
    let dir = workloads.path("");
    let mut api = ApiServer::start(&dir, &container_id);
    let mut worker = workloads.spawn("cpu_chain", 30_000);
    fake.adopt(worker.id());

    // Names on the container's resource and labels.
    let receiver = receiver_in(&workloads.path("named"));
    let output = workloads.path("named.pb.gz");
    record(&api, &receiver, &output, &[]);
    let all = resources(&receiver);
    let container = all
        .iter()
        .find(|r| r["attributes"]["container.id"] == container_id.as_str())
        .expect("a resource for the container");
    let attributes = &container["attributes"];
    assert_eq!(attributes["k8s.pod.name"], "checkout-7d9f", "{attributes}");
    assert_eq!(attributes["k8s.namespace.name"], "shop");
    assert_eq!(attributes["k8s.container.name"], "app");
    assert_eq!(attributes["k8s.node.name"], "node-a");
    assert_eq!(attributes["k8s.pod.uid"], POD_UID);
    let tool = common::pprof_tool();
    let named = Traces::with_label(&tool, &output, "k8s.pod.name", "checkout-7d9f");
    assert!(named.total() > 100, "{named:?}");
    assert_eq!(
        named.total(),
        Traces::with_label(&tool, &output, "k8s.container.name", "app").total()
    );
    let log = std::fs::read_to_string(dir.join("api.log")).unwrap();
    assert!(
        log.contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "only this node's pods are listed: {log}"
    );

    // --namespace keeps only that namespace's pods; another one keeps none.
    let receiver = receiver_in(&workloads.path("shop"));
    record(
        &api,
        &receiver,
        &workloads.path("shop.pb.gz"),
        &["--namespace", "shop"],
    );
    let shop = resources(&receiver);
    assert!(!shop.is_empty());
    assert!(
        shop.iter()
            .all(|r| r["attributes"]["k8s.namespace.name"] == "shop"),
        "host processes and other namespaces are left out"
    );
    let receiver = receiver_in(&workloads.path("other"));
    record(
        &api,
        &receiver,
        &workloads.path("other.pb.gz"),
        &["--exclude-namespace", "shop"],
    );
    assert!(resources(&receiver)
        .iter()
        .all(|r| r["attributes"]["container.id"] != container_id.as_str()));

    // The agent keeps profiling, with the names it learnt, while the API
    // server is down.
    let receiver = receiver_in(&workloads.path("agent"));
    let agent = KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_hostprof"))
            .args(["agent", "--interval", "1s", "--node-name", "node-a"])
            .arg("--otlp-endpoint")
            .arg(format!("http://127.0.0.1:{}", receiver.grpc_port))
            .env("KUBECONFIG", &api.kubeconfig)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(3));
    api.stop();
    let before = receiver.received().len();
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    worker.kill().ok();
    worker.wait().ok();
    let received = receiver.received();
    assert!(
        received.len() >= before + 3,
        "exports go on during the outage: {before} then {}\n{log}",
        received.len()
    );
    let last_named = received.last().unwrap()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["attributes"]["k8s.pod.name"] == "checkout-7d9f");
    assert!(last_named, "names learnt before the outage are kept\n{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("pod watch failed"))
            .count()
            <= 1,
        "one line per outage, not a storm:\n{log}"
    );
}
