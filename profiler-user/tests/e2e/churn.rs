//! Processes that come and go, and processes that exec (issue 14,
//! findings 3 and 4): their samples resolve against the image they were
//! taken in, whether or not the process was still there to be read, and
//! never against another image. Checked with Google's `pprof` and the
//! folded output.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, pprof_tool, Traces, Workloads};

/// Functions of `cpu_chain_nopie` (the program `launcher` execs) that a
/// sample of the launcher resolved against it would be credited to: its
/// own, and the compiler's helpers at the start of `.text`.
const TARGET_ONLY: &[&str] = &[
    "hot_loop",
    "mix",
    "level1",
    "level2",
    "deregister_tm_clones",
    "register_tm_clones",
    "__do_global_dtors_aux",
    "frame_dummy",
];

#[test]
fn samples_before_an_exec_resolve_against_the_image_before_it() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["launcher", "cpu_chain_nopie"]);
    let output = workloads.path("exec.pb.gz");
    let mut record = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "5s", "--no-flamegraph", "--output"])
        .arg(&output)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hostprof record");
    let _log = common::wait_for_line(record.stderr.take().unwrap(), "recording for");
    // 1.5 s in the launcher, then 1.5 s in the program it execs, one pid.
    let launched = Command::new(workloads.path("launcher"))
        .arg("1500")
        .arg(workloads.path("cpu_chain_nopie"))
        .arg("1500")
        .status()
        .expect("run the launcher");
    assert!(launched.success(), "launcher: {launched}");
    assert!(record.wait().expect("wait for hostprof").success());

    // The thread name is the kernel's comm at the sample: the launcher's
    // before the exec, the program's after.
    let before = Traces::with_label(&pprof, &output, "thread_name", "launcher");
    let after = Traces::with_label(&pprof, &output, "thread_name", "cpu_chain_nopie");
    assert!(
        before.total() > 75 && after.total() > 75,
        "~148 samples each expected:\nbefore:\n{before:?}\nafter:\n{after:?}"
    );
    let misattributed =
        before.count(|stack| stack.iter().any(|f| TARGET_ONLY.contains(&f.as_str())));
    assert_eq!(
        misattributed, 0,
        "samples taken before the exec were credited to the new program:\n{before:?}"
    );
    let spin = before.count(|stack| common::has_chain(stack, &["launcher_spin", "main"]));
    assert!(
        spin * 100 >= before.total() * 90,
        "the launcher's samples name launcher_spin <- main: {spin}/{}\n{before:?}",
        before.total()
    );
    let hot =
        after.count(|stack| common::has_chain(stack, &["hot_loop", "level2", "level1", "main"]));
    assert!(
        hot * 100 >= after.total() * 85,
        "the program's samples name its chain: {hot}/{}\n{after:?}",
        after.total()
    );
}

/// (samples with a user frame, those whose leaf user frame is named) of
/// `process` in a folded file (`process;root;…;leaf COUNT`, kernel frames
/// marked `_[k]`).
fn named_leaves(folded: &str, process: &str) -> (u64, u64) {
    let (mut with_user, mut named) = (0, 0);
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let (Ok(count), mut frames) = (count.parse::<u64>(), stack.split(';')) else {
            continue;
        };
        if frames.next() != Some(process) {
            continue;
        }
        let Some(leaf) = frames.rfind(|f| !f.ends_with("_[k]")) else {
            continue; // no user frame: nothing to resolve
        };
        with_user += count;
        if leaf != "[unknown]" && !leaf.contains("+0x") {
            named += count;
        }
    }
    (with_user, named)
}

#[test]
fn processes_that_live_two_milliseconds_are_symbolized() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let workloads = Workloads::build(&["short_lived"]);
    let folded = workloads.path("churn.folded");
    let stats = workloads.path("churn.json");
    let mut record = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--duration", "6s", "--no-flamegraph", "--output"])
        .arg(workloads.path("churn.pb.gz"))
        .arg("--folded")
        .arg(&folded)
        .arg("--stats-json")
        .arg(&stats)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hostprof record");
    let _log = common::wait_for_line(record.stderr.take().unwrap(), "recording for");
    // 200 processes a second for 4 s, each 2 ms of CPU: most exit before
    // hostprof could read their maps.
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let mut spawned = 0u32;
    while started.elapsed() < Duration::from_secs(4) {
        children.push(workloads.spawn("short_lived", 2));
        spawned += 1;
        children.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_))));
        if let Some(wait) = (Duration::from_millis(5) * spawned).checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    for mut child in children {
        child.wait().ok();
    }
    assert!(record.wait().expect("wait for hostprof").success());
    let text = std::fs::read_to_string(&folded).unwrap();
    let (with_user, named) = named_leaves(&text, "short_lived");
    assert!(
        with_user > 200,
        "{spawned} processes gave only {with_user} samples with a user frame"
    );
    // Before the kernel recorded the files of sampled frames, ~70 % were
    // named at this rate.
    assert!(
        named * 100 >= with_user * 90,
        "only {named} of {with_user} samples of short-lived processes have a named leaf"
    );
    // What was not named is counted, by reason.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let unresolved = &report["profiles"][0]["unresolved"];
    let counted: u64 = ["process_gone", "other_image", "file_not_open", "no_mapping"]
        .iter()
        .map(|k| {
            unresolved[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} in {report}"))
        })
        .sum();
    let unknown_leaves = text
        .lines()
        .filter(|l| {
            l.starts_with("short_lived;")
                && !l.contains("_[k] ")
                && l.rsplit_once(' ')
                    .is_some_and(|(s, _)| s.ends_with(";[unknown]"))
        })
        .count() as u64;
    assert!(
        unknown_leaves == 0 || counted > 0,
        "unresolved leaves are counted: {unresolved}"
    );
}

#[test]
fn counting_named_leaves() {
    let folded = "short_lived;_start;main;level1;level2;hot_loop 7\n\
                  short_lived;short_lived+0x1139 3\n\
                  short_lived;[unknown];do_syscall_64_[k] 2\n\
                  short_lived;do_exit_[k] 4\n\
                  other;main 9\n";
    assert_eq!(named_leaves(folded, "short_lived"), (12, 7));
}
