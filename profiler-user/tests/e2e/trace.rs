//! Trace links from the OpenTelemetry trace-context map: the test plays
//! the instrumentation, writing a workload thread's span into the map
//! pinned at `--trace-context-map`, and changing it mid-capture. Its
//! samples must carry exactly that trace and span, in the pprof labels
//! (read by Google's `pprof`) and in the OTLP link table (read by the
//! official OpenTelemetry types); another process's samples none.
//!
//! Also: a pin left by an earlier run is reused, and a pin of another
//! shape is a warning that turns the source off, never a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use serde_json::Value;

use crate::common::{self, Receiver, Traces};

/// (trace id, span id) in hex, as W3C `traceparent` writes them.
type Span = (&'static str, &'static str);
const SPAN_A: Span = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
const SPAN_B: Span = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
const SPAN_C: Span = ("5b8aa5a2d2c872e8321cf37308d69df2", "051581bf3cb55c13");

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The map value an instrumentation writes: trace id, then span id.
fn value((trace, span): Span) -> [u8; 24] {
    let mut value = [0; 24];
    value[..16].copy_from_slice(&bytes(trace));
    value[16..].copy_from_slice(&bytes(span));
    value
}

/// Writes `span` for thread `tid` of process `tgid` into the map pinned
/// at `pin`, as `bpf_get_current_pid_tgid()` keys it.
fn set_span(pin: &Path, tgid: u32, tid: u32, span: Span) {
    let map = MapData::from_pin(pin).expect("open the pinned map");
    let mut map: BpfHashMap<MapData, u64, [u8; 24]> =
        BpfHashMap::try_from(Map::LruHashMap(map)).expect("an LRU hash map");
    map.insert((u64::from(tgid) << 32) | u64::from(tid), value(span), 0)
        .expect("write the span");
}

/// Mounts a BPF filesystem at /sys/fs/bpf unless one is there.
fn ensure_bpffs() {
    let stat = rustix::fs::statfs("/sys/fs/bpf").expect("statfs /sys/fs/bpf");
    #[allow(clippy::unnecessary_cast, reason = "f_type's type varies")]
    if stat.f_type as i64 != 0xcafe_4a11 {
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .expect("run mount");
        assert!(status.success(), "could not mount bpffs at /sys/fs/bpf");
    }
}

/// A directory on bpffs for this test's pins, removed with them on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        ensure_bpffs();
        let dir = PathBuf::from(format!("/sys/fs/bpf/hostprof-e2e-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn record(args: &[&str], pin: &Path, output: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--no-flamegraph"])
        .args(args)
        .arg("--trace-context-map")
        .arg(pin)
        .arg("--output")
        .arg(output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hostprof")
}

fn finished(child: Child) -> Output {
    let out = child.wait_with_output().expect("wait for hostprof");
    assert!(
        out.status.success(),
        "hostprof failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Samples of the profile whose pprof label `key` matches `value` (a
/// regex), all processes.
fn labelled(pprof: &Path, profile: &Path, key: &str, value: &str) -> u64 {
    Traces::with_label(pprof, profile, key, value).total()
}

/// Per (trace id, span id) of the OTLP samples of `process`, and its
/// samples without a link (key `None`).
fn otlp_links(request: &Value, process: &str) -> Vec<(Option<(String, String)>, u64)> {
    let mut counts: Vec<(Option<(String, String)>, u64)> = Vec::new();
    for resource in request["resources"].as_array().unwrap() {
        if resource["attributes"]["process.executable.name"] != process {
            continue;
        }
        for sample in resource["samples"].as_array().unwrap() {
            let link = sample["link"].as_object().map(|l| {
                (
                    l["trace_id"].as_str().unwrap().to_owned(),
                    l["span_id"].as_str().unwrap().to_owned(),
                )
            });
            let count = sample["count"].as_u64().unwrap();
            match counts.iter_mut().find(|(l, _)| *l == link) {
                Some((_, total)) => *total += count,
                None => counts.push((link, count)),
            }
        }
    }
    counts
}

fn count_of(links: &[(Option<(String, String)>, u64)], span: Option<Span>) -> u64 {
    let want = span.map(|(t, s)| (t.to_owned(), s.to_owned()));
    links
        .iter()
        .filter(|(l, _)| *l == want)
        .map(|(_, c)| c)
        .sum()
}

#[test]
fn samples_carry_the_span_their_thread_ran_in() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = common::pprof_tool();
    let workloads = common::Workloads::build(&["cpu_chain"]);
    // The same program under another name: a process that runs in no span.
    std::fs::copy(workloads.path("cpu_chain"), workloads.path("cpu_unlinked")).unwrap();
    let pins = PinDir::new();
    let pin = pins.0.join("traces_ctx_v1");
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    let linked = common::KillOnDrop::new(workloads.spawn("cpu_chain", 30_000));
    let _unlinked = common::KillOnDrop::new(workloads.spawn("cpu_unlinked", 30_000));
    let tgid = linked.id();

    // Run 1: no pin yet, hostprof creates it; the "instrumentation" fills
    // it once it appears, and moves the thread to another span halfway.
    let first = workloads.path("first.pb.gz");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let run = record(
        &["--duration", "4s", "--otlp-endpoint", &endpoint],
        &pin,
        &first,
    );
    common::wait_until(Duration::from_secs(30), "the pin to appear", || {
        pin.exists()
    });
    set_span(&pin, tgid, tgid, SPAN_A);
    std::thread::sleep(Duration::from_secs(2));
    set_span(&pin, tgid, tgid, SPAN_B);
    finished(run);

    let all = Traces::of(&pprof, &first, "cpu_chain").total();
    let in_a = labelled(&pprof, &first, "trace_id", SPAN_A.0);
    let in_b = labelled(&pprof, &first, "trace_id", SPAN_B.0);
    assert!(all > 200, "too few samples of the linked process: {all}");
    assert!(
        (in_a + in_b) * 100 >= all * 90,
        "only {in_a} + {in_b} of {all} samples carry a span"
    );
    assert!(
        in_a * 4 >= all && in_b * 4 >= all,
        "each span holds a part of the capture: {in_a} and {in_b} of {all}"
    );
    assert_eq!(labelled(&pprof, &first, "span_id", SPAN_A.1), in_a);
    assert_eq!(labelled(&pprof, &first, "span_id", SPAN_B.1), in_b);
    assert_eq!(
        labelled(&pprof, &first, "trace_id", "[0-9a-f]{32}"),
        in_a + in_b,
        "no other process's samples carry a trace id"
    );
    assert!(Traces::of(&pprof, &first, "cpu_unlinked").total() > 200);

    let received = receiver.received();
    assert_eq!(received.len(), 1, "one export");
    assert_eq!(
        received[0]["errors"],
        Value::Array(vec![]),
        "{}",
        received[0]["errors"]
    );
    let links = otlp_links(&received[0], "cpu_chain");
    let otlp_all: u64 = links.iter().map(|(_, c)| c).sum();
    let (otlp_a, otlp_b) = (
        count_of(&links, Some(SPAN_A)),
        count_of(&links, Some(SPAN_B)),
    );
    assert_eq!(
        otlp_a + otlp_b + count_of(&links, None),
        otlp_all,
        "only the two spans: {links:?}"
    );
    assert!((otlp_a + otlp_b) * 100 >= otlp_all * 90, "{links:?}");
    assert!(
        otlp_a * 4 >= otlp_all && otlp_b * 4 >= otlp_all,
        "{links:?}"
    );
    let unlinked = otlp_links(&received[0], "cpu_unlinked");
    assert!(
        unlinked.iter().all(|(l, _)| l.is_none()) && !unlinked.is_empty(),
        "the other process runs in no span: {unlinked:?}"
    );

    // Run 2: the pin exists (left by run 1, as an instrumentation's
    // would be): it is reused.
    set_span(&pin, tgid, tgid, SPAN_C);
    let second = workloads.path("second.pb.gz");
    finished(record(&["--duration", "2s"], &pin, &second));
    let all = Traces::of(&pprof, &second, "cpu_chain").total();
    let in_c = labelled(&pprof, &second, "span_id", SPAN_C.1);
    assert!(
        all > 100 && in_c * 100 >= all * 90,
        "{in_c} of {all} samples carry the span set before the run"
    );

    // Run 3: a pin of another shape is not read, and the capture goes on.
    let other = pins.0.join("not_traces");
    BpfHashMap::<MapData, u32, u32>::create(1, 0)
        .expect("create a hash map")
        .pin(&other)
        .expect("pin it");
    let third = workloads.path("third.pb.gz");
    let out = finished(record(&["--duration", "1s"], &other, &third));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot be used") && stderr.contains("key size 4"),
        "a warning names the mismatch: {stderr}"
    );
    assert_eq!(labelled(&pprof, &third, "trace_id", "[0-9a-f]{32}"), 0);
    assert!(Traces::of(&pprof, &third, "cpu_chain").total() > 0);
}
