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
        .env("RUST_LOG", "hostprof=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hostprof")
}

/// Waits until `run` says sampling has begun (whole-host sampling starts
/// once the tables of what runs are loaded, after the pin appears);
/// returns the reader of the rest of its log.
fn sampling(run: &mut Child) -> std::thread::JoinHandle<String> {
    common::wait_for_line(run.stderr.take().expect("piped stderr"), "recording for")
}

/// [`finished`] for a run whose stderr [`sampling`] reads: its log.
fn finished_sampling(mut child: Child, log: std::thread::JoinHandle<String>) -> String {
    let status = child.wait().expect("wait for hostprof");
    let log = log.join().expect("hostprof's log");
    assert!(status.success(), "hostprof failed:\n{log}");
    log
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

/// A sample's (trace id, span id) in hex, `None` without a link.
type Link = Option<(String, String)>;

/// Of the `total` samples whose stacks `selected` picks, ≥ 90 % carry span
/// A or B in the pprof labels, each span at least a fifth, and trace and
/// span ids agree; returns how many carry each.
fn assert_two_spans(
    pprof: &Path,
    profile: &Path,
    total: u64,
    selected: impl Fn(&[String]) -> bool,
) -> (u64, u64) {
    let count = |key, value| Traces::with_label(pprof, profile, key, value).count(&selected);
    let (in_a, in_b) = (count("trace_id", SPAN_A.0), count("trace_id", SPAN_B.0));
    assert!(
        (in_a + in_b) * 100 >= total * 90,
        "only {in_a} + {in_b} of {total} samples carry their span"
    );
    assert!(
        in_a * 5 >= total && in_b * 5 >= total,
        "each span holds a part of the capture: {in_a} and {in_b} of {total}"
    );
    assert_eq!(count("span_id", SPAN_A.1), in_a);
    assert_eq!(count("span_id", SPAN_B.1), in_b);
    (in_a, in_b)
}

/// The samples of the profile that carry a trace id.
fn with_trace_ids(pprof: &Path, profile: &Path) -> Traces {
    Traces::with_label(pprof, profile, "trace_id", "[0-9a-f]{32}")
}

/// [`assert_two_spans`] in the OTLP export: of the samples of `process`
/// whose stacks `selected` picks, ≥ 90 % link to span A or B, each span
/// at least a fifth, and none to anything else.
fn assert_two_spans_otlp(request: &Value, process: &str, selected: impl Fn(&[String]) -> bool) {
    let samples = otlp_samples(request, process);
    let span = |(t, s): Span| Some((t.to_owned(), s.to_owned()));
    let count = |want: &dyn Fn(&Link) -> bool| -> u64 {
        samples
            .iter()
            .filter(|(stack, link, _)| selected(stack) && want(link))
            .map(|(_, _, c)| c)
            .sum()
    };
    let total = count(&|_| true);
    let in_a = count(&|link| *link == span(SPAN_A));
    let in_b = count(&|link| *link == span(SPAN_B));
    assert_eq!(
        in_a + in_b + count(&|link| link.is_none()),
        total,
        "only the two spans: {samples:?}"
    );
    assert!(
        (in_a + in_b) * 100 >= total * 90,
        "{in_a} + {in_b} of {total}"
    );
    assert!(
        in_a * 5 >= total && in_b * 5 >= total,
        "{in_a}, {in_b} of {total}"
    );
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
    let mut run = record(
        &["--duration", "4s", "--otlp-endpoint", &endpoint],
        &pin,
        &first,
    );
    let log = sampling(&mut run);
    assert!(pin.exists(), "hostprof pins the map it created");
    set_span(&pin, tgid, tgid, SPAN_A);
    std::thread::sleep(Duration::from_secs(2));
    set_span(&pin, tgid, tgid, SPAN_B);
    finished_sampling(run, log);

    let all = Traces::of(&pprof, &first, "cpu_chain").total();
    assert!(all > 200, "too few samples of the linked process: {all}");
    let (in_a, in_b) = assert_two_spans(&pprof, &first, all, |_| true);
    let any = with_trace_ids(&pprof, &first);
    assert_eq!(
        any.total(),
        in_a + in_b,
        "no other process's samples: {any:?}"
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
    assert_two_spans_otlp(&received[0], "cpu_chain", |_| true);
    let unlinked = otlp_samples(&received[0], "cpu_unlinked");
    assert!(
        !unlinked.is_empty() && unlinked.iter().all(|(_, link, _)| link.is_none()),
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
    assert_eq!(with_trace_ids(&pprof, &third).total(), 0);
    assert!(Traces::of(&pprof, &third, "cpu_chain").total() > 0);
}

/// Stacks (function names, leaf first) and links of the OTLP samples of
/// `process`, with their counts.
fn otlp_samples(request: &Value, process: &str) -> Vec<(Vec<String>, Link, u64)> {
    let mut samples = Vec::new();
    for resource in request["resources"].as_array().unwrap() {
        if resource["attributes"]["process.executable.name"] != process {
            continue;
        }
        for sample in resource["samples"].as_array().unwrap() {
            let stack = sample["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
                .collect();
            let link = sample["link"].as_object().map(|l| {
                (
                    l["trace_id"].as_str().unwrap().to_owned(),
                    l["span_id"].as_str().unwrap().to_owned(),
                )
            });
            samples.push((stack, link, sample["count"].as_u64().unwrap()));
        }
    }
    samples
}

/// The thread context an OpenTelemetry SDK publishes (OTEP 4947, with the
/// process context of OTEP 4719 that announces it): the workload's
/// worker thread points `otel_thread_ctx_v1` at a record of span A, then
/// of span B; its main thread never sets it. Only this source is on
/// (`--trace-context-map none`). `workload` is a build of
/// otel_thread_ctx.c, run with `env`; `build` what it needs built.
fn thread_context_is_read(workload: &str, build: &[&str], env: &[(&str, &str)], tls: &str) {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = common::pprof_tool();
    let workloads = common::Workloads::build(build);
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    // The capture (6 s) starts first; the workload starts once sampling
    // has begun, and runs span A for 2 s, then span B for 2 s: both
    // halves fall inside the capture.
    let output = workloads.path("tls.pb.gz");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let mut run = record(
        &["--duration", "6s", "--otlp-endpoint", &endpoint],
        Path::new("none"),
        &output,
    );
    let log = sampling(&mut run);
    // (Its announcements are not read: a closed pipe would kill it.)
    let child = Command::new(workloads.path(workload))
        .args(["4000", SPAN_A.0, SPAN_A.1, SPAN_B.0, SPAN_B.1])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start otel_thread_ctx");
    let _workload = common::KillOnDrop::new(child);
    let stderr = finished_sampling(run, log);
    assert!(
        stderr.contains("reading its OpenTelemetry thread context") && stderr.contains(tls),
        "the pointer is found {tls}: {stderr}"
    );

    let process = Traces::of(&pprof, &output, workload);
    let in_span = |stack: &[String]| stack.iter().any(|f| f == "otel_ctx_hot");
    let outside = |stack: &[String]| stack.iter().any(|f| f == "no_ctx_hot");
    let worker = process.count(in_span);
    assert!(worker > 150, "too few samples of the worker: {process:?}");
    assert!(process.count(outside) > 150, "{process:?}");
    assert_two_spans(&pprof, &output, worker, in_span);
    // The worker carries its span outside otel_ctx_hot too (its clock
    // reads); the main thread never does.
    let any = with_trace_ids(&pprof, &output);
    assert_eq!(any.count(outside), 0, "the main thread: {any:?}");

    let received = receiver.received();
    assert_eq!(received.len(), 1, "one export");
    assert_eq!(
        received[0]["errors"],
        Value::Array(vec![]),
        "{}",
        received[0]["errors"]
    );
    assert_two_spans_otlp(&received[0], workload, in_span);
    let main_linked: u64 = otlp_samples(&received[0], workload)
        .iter()
        .filter(|(stack, link, _)| outside(stack) && link.is_some())
        .map(|(_, _, count)| count)
        .sum();
    assert_eq!(main_linked, 0, "the main thread runs in no span");
}

/// The variable in the executable: local exec, at a fixed offset from the
/// thread pointer.
#[test]
fn thread_context_of_the_executable_is_read() {
    thread_context_is_read(
        "otel_thread_ctx",
        &["otel_thread_ctx"],
        &[],
        "in static TLS",
    );
}

/// The variable in a library loaded at start-up, reached by TLS
/// descriptors: static TLS, found through the process's descriptor.
#[test]
fn thread_context_of_a_linked_library_is_read() {
    thread_context_is_read(
        "otel_ctx_linked",
        &["otel_ctx_linked"],
        &[],
        "in static TLS",
    );
}

/// The variable in a dlopened library that glibc gives no static TLS:
/// read through each thread's DTV.
#[test]
fn thread_context_in_dynamic_tls_is_read() {
    thread_context_is_read(
        "otel_ctx_dlopen",
        &["libotelctx.so", "otel_ctx_dlopen"],
        &[("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=0")],
        "in dynamic TLS",
    );
}

/// The id of the thread of `tgid` named `name`.
fn thread_named(tgid: u32, name: &str) -> u32 {
    let mut found = None;
    common::wait_until(Duration::from_secs(10), "the thread to start", || {
        found = std::fs::read_dir(format!("/proc/{tgid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .and_then(|task| task.file_name().to_str()?.parse().ok());
        found.is_some()
    });
    found.unwrap()
}

/// Off-CPU samples carry the span the thread waited in: the sleeper of
/// off_cpu_chain runs in span A, its pipe reader in none.
#[test]
fn off_cpu_samples_carry_the_span_too() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = common::pprof_tool();
    let workloads = common::Workloads::build(&["off_cpu_chain"]);
    let pins = PinDir::new();
    let pin = pins.0.join("traces_ctx_v1");
    let child = common::KillOnDrop::new(workloads.spawn("off_cpu_chain", 20_000));
    let sleeper = thread_named(child.id(), "sleeper");
    let output = workloads.path("host.pb.gz");
    let mut run = record(
        &["--profiles", "off-cpu", "--duration", "3s"],
        &pin,
        &output,
    );
    let log = sampling(&mut run);
    assert!(pin.exists(), "hostprof pins the map it created");
    set_span(&pin, child.id(), sleeper, SPAN_A);
    finished_sampling(run, log);

    let profile = workloads.path("host.off-cpu.pb.gz");
    let blocked = Traces::off_cpu(&pprof, &profile, "thread_name", "sleeper").total();
    let linked = Traces::off_cpu(&pprof, &profile, "span_id", SPAN_A.1);
    assert!(blocked > 2_000_000_000, "the sleeper sleeps: {blocked} ns");
    assert!(
        linked.total() * 100 >= blocked * 90,
        "{} of the sleeper's {blocked} ns blocked carry its span",
        linked.total()
    );
    assert!(
        linked.count(|stack| stack.iter().any(|f| f == "sleepy_function")) > blocked / 2,
        "the sleeper's sleeps carry the span: {linked:?}"
    );
    assert!(Traces::off_cpu(&pprof, &profile, "thread_name", "piper").total() > 0);
    assert_eq!(
        linked.count(|stack| stack.iter().any(|f| f == "pipe_reader_function")),
        0,
        "the pipe reader runs in no span: {linked:?}"
    );
    assert_eq!(
        Traces::off_cpu(&pprof, &profile, "trace_id", "[0-9a-f]{32}").total(),
        linked.total(),
        "no other thread carries a trace id"
    );
}
