//! End to end: the locks profile of a workload whose contention is known
//! (`tests/workloads/lock_chain.c`): two threads that measure their own
//! wait for a pthread mutex, two that contend for their process's
//! `mmap_lock` in the kernel, and one waiting on a condition variable
//! (not contention). Read with Google's `pprof` and, over OTLP, with the
//! official OpenTelemetry Python types.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, pprof_tool, KillOnDrop, Receiver, Traces, Workloads};

#[test]
fn lock_delay_of_known_contention() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["lock_chain"]);
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    // Runs past the capture (even a slow load's), then reports what it
    // measured: its contention is steady, so the capture sees the same
    // share of wall time waiting.
    let child = KillOnDrop::new(
        Command::new(workloads.path("lock_chain"))
            .arg("12000")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lock_chain"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let output = workloads.path("host.pb.gz");
    let stats = workloads.path("stats.json");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--profiles", "locks", "--duration", "5s"])
        .args(["--otlp-endpoint", &endpoint, "--output"])
        .arg(&output)
        .arg("--folded")
        .arg(workloads.path("host.folded"))
        .arg("--stats-json")
        .arg(&stats)
        .status()
        .expect("run hostprof record");
    assert!(status.success(), "hostprof record failed: {status}");
    let out = child.wait_with_output().expect("lock_chain ran");
    let measured = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> f64 {
        let words: Vec<&str> = measured.split_whitespace().collect();
        let at = words.iter().position(|w| *w == name).expect(name);
        words[at + 1].parse().unwrap()
    };
    // The contenders' wait per second of wall time, both threads together.
    let waiting = field("wait_ns") / field("wall_ns");

    // Only the locks profile was asked for: its files, named by kind.
    let profile = workloads.path("host.locks.pb.gz");
    for name in ["host.locks.pb.gz", "host.locks.svg", "host.locks.folded"] {
        assert!(workloads.path(name).exists(), "{name} written");
    }
    assert!(!output.exists(), "no CPU profile without --profiles cpu");
    assert!(
        !workloads.path("host.off-cpu.pb.gz").exists(),
        "no off-CPU profile without --profiles off-cpu"
    );

    // Google's pprof reads it, with Go's mutex-profile sample types.
    let top = common::pprof(&pprof, &["-top", "-sample_index=contentions"], &profile);
    assert!(top.contains("Type: contentions"), "{top}");

    // The mutex's delay under the acquiring function is the wait the
    // contenders measured over the capture, ±30 %.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let wall_ns = report["sampling_seconds"].as_f64().unwrap() * 1e9;
    let expected = waiting * wall_ns;
    let mutex = Traces::locks(&pprof, &profile, "lock.type", "pthread_mutex");
    let in_take =
        mutex.count(|stack| common::has_chain(stack, &["take_mutex", "contend_function"]));
    let ratio = in_take as f64 / expected;
    eprintln!(
        "mutex delay under take_mutex: {in_take} ns, the contenders measured {expected:.0} ns \
         ({ratio:.3}); {measured}"
    );
    assert!(
        (0.7..=1.3).contains(&ratio),
        "lock delay under take_mutex must be the measured wait ±30 %: {in_take} ns against \
         {expected:.0} ns ({ratio:.3})\n{mutex:?}"
    );
    let user = Traces::locks(&pprof, &profile, "lock.space", "user");
    assert!(
        user.count(|stack| stack.iter().any(|f| f == "cond_wait_function")) == 0,
        "a condition-variable wait is not lock contention\n{user:?}"
    );
    assert!(
        user.count(|stack| stack.iter().any(|f| f.contains("nanosleep"))) == 0,
        "sleeping while holding the lock is not contention\n{user:?}"
    );

    // The mappers contend for mmap_lock, a kernel rw_semaphore: kernel
    // stacks down to the rwsem's slow path, under map_function.
    let kernel = Traces::locks(&pprof, &profile, "lock.space", "kernel");
    let mmap_lock = kernel.count(|stack| {
        stack
            .iter()
            .any(|f| f.starts_with("rwsem_down_") || f.starts_with("down_"))
            && stack.iter().any(|f| f == "map_function")
    });
    assert!(
        mmap_lock > 1_000_000,
        "the mappers wait for mmap_lock, with kernel stacks: {mmap_lock} ns\n{kernel:?}"
    );
    let contentions = report["profiles"][0]["intervals"].as_u64().unwrap();
    assert!(contentions > 0, "kernel contentions are counted: {report}");

    // Over OTLP: one Profile per sample type of the kind, the lock type
    // as a sample attribute, each kept wait an event at its time (the
    // receiver checks the times fall in the profile's range).
    common::wait_until(Duration::from_secs(10), "the OTLP export", || {
        receiver.received_count() > 0
    });
    let requests = receiver.received();
    let mut delay = 0;
    for request in &requests {
        assert_eq!(request["errors"], serde_json::json!([]), "{request}");
        for resource in request["resources"].as_array().unwrap() {
            for sample in resource["samples"].as_array().unwrap() {
                assert_eq!(sample["kind"], "contentions", "{sample}");
                assert!(sample["events"].as_u64().unwrap() > 0, "{sample}");
                if sample["attributes"]["lock.type"] == "pthread_mutex" {
                    delay += sample["time"].as_u64().unwrap();
                }
            }
        }
    }
    let from_pprof = mutex.total();
    assert!(
        delay.abs_diff(from_pprof) <= from_pprof / 100,
        "OTLP and pprof agree on the mutex delay: {delay} against {from_pprof}"
    );
}
