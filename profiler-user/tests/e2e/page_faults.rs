//! End to end: the page-fault profile of a workload that counts its own
//! faults (`tests/workloads/fault_chain.c`, from the kernel's per-thread
//! accounting), read with Google's `pprof` and, over OTLP, with the
//! official OpenTelemetry Python types.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, pprof_tool, KillOnDrop, Receiver, Traces, Workloads};

#[test]
fn page_faults_of_a_thread_that_counts_its_own() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let pprof = pprof_tool();
    let workloads = Workloads::build(&["fault_chain"]);
    let receiver = Receiver::start(workloads.path("").as_path(), &[]);
    // Runs past the capture (even a slow load's); it prints its own fault
    // count after each round, so the faults of the capture's window are
    // known whatever the load did to its pace.
    let child = KillOnDrop::new(
        Command::new(workloads.path("fault_chain"))
            .arg("12000")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fault_chain"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let output = workloads.path("host.pb.gz");
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port);
    let status = Command::new(env!("CARGO_BIN_EXE_hostprof"))
        .args(["record", "--profiles", "page-faults", "--duration", "5s"])
        .args(["--otlp-endpoint", &endpoint, "--output"])
        .arg(&output)
        .arg("--folded")
        .arg(workloads.path("host.folded"))
        .status()
        .expect("run hostprof record");
    assert!(status.success(), "hostprof record failed: {status}");
    let out = child.wait_with_output().expect("fault_chain ran");
    let rounds = fault_log(&String::from_utf8_lossy(&out.stdout));

    // Only the page-fault profile was asked for: its files, named by kind.
    let profile = workloads.path("host.page-faults.pb.gz");
    for name in [
        "host.page-faults.pb.gz",
        "host.page-faults.svg",
        "host.page-faults.folded",
    ] {
        assert!(workloads.path(name).exists(), "{name} written");
    }
    assert!(!output.exists(), "no CPU profile without --profiles cpu");

    // Google's pprof reads it: page_faults/count by default, a sample
    // every 1000 faults.
    let top = common::pprof(&pprof, &["-top"], &profile);
    assert!(top.contains("Type: page_faults"), "{top}");
    let raw = common::pprof(&pprof, &["-raw"], &profile);
    assert!(raw.contains("PeriodType: page_faults count"), "{raw}");
    assert!(raw.contains("Period: 1000\n"), "{raw}");
    let (start, end) = window(&raw);

    // The faults under touch_pages are those the toucher counted in the
    // profile's window, ±20 %.
    let measured = faults_between(&rounds, start, end);
    let toucher = Traces::page_faults(&pprof, &profile, "thread_name", "toucher");
    let in_touch =
        toucher.count(|stack| common::has_chain(stack, &["touch_pages", "main_toucher"]));
    let ratio = in_touch as f64 / measured as f64;
    eprintln!(
        "page faults under touch_pages: {in_touch}, the toucher counted {measured} ({ratio:.3})"
    );
    assert!(
        (0.8..=1.2).contains(&ratio),
        "page faults under touch_pages must be the toucher's own count ±20 %: {in_touch} \
         against {measured} ({ratio:.3})\n{toucher:?}"
    );
    // The spinner is on the CPU all along but touches no new memory.
    let spinner = Traces::page_faults(&pprof, &profile, "thread_name", "spinner");
    assert!(
        spinner.total() <= (in_touch / 100).max(2000),
        "a thread that only computes has next to no page faults: {} against {in_touch}\n\
         {spinner:?}",
        spinner.total()
    );

    // Over OTLP: the kind's two profiles (samples and page_faults, period
    // type page_faults; the receiver checks faults = samples × period),
    // agreeing with the pprof file.
    common::wait_until(Duration::from_secs(10), "the OTLP export", || {
        receiver.received_count() > 0
    });
    let mut faults = 0;
    for request in receiver.received() {
        assert_eq!(request["errors"], serde_json::json!([]), "{request}");
        for resource in request["resources"].as_array().unwrap() {
            for sample in resource["samples"].as_array().unwrap() {
                assert_eq!(sample["profile"], "page_faults", "{sample}");
                if sample["stack"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == "touch_pages")
                {
                    faults += sample["time"].as_u64().unwrap();
                }
            }
        }
    }
    assert!(
        faults.abs_diff(in_touch) <= in_touch / 100,
        "OTLP and pprof agree on the faults under touch_pages: {faults} against {in_touch}"
    );
}

/// The workload's rounds: (unix ns, the thread's minor faults so far).
fn fault_log(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "faults").then_some(())?;
            Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
        })
        .collect()
}

/// The faults counted between `start` and `end` (unix ns): the count of
/// the first round at or after `end` minus that of the last round at or
/// before `start`, with a round's faults spread evenly over its time.
fn faults_between(rounds: &[(u64, u64)], start: u64, end: u64) -> u64 {
    let at = |time: u64| -> f64 {
        let after = rounds.partition_point(|&(t, _)| t < time);
        assert!(
            after > 0 && after < rounds.len(),
            "the workload ran around the whole capture ({} rounds)",
            rounds.len()
        );
        let ((t0, f0), (t1, f1)) = (rounds[after - 1], rounds[after]);
        f0 as f64 + (f1 - f0) as f64 * (time - t0) as f64 / (t1 - t0).max(1) as f64
    };
    (at(end) - at(start)).round() as u64
}

/// The profile's time range in unix ns, from `pprof -raw`'s `Time:`
/// (`2026-12-03 17:16:34.652678835 +0000 UTC`) and `Duration:` (seconds).
fn window(raw: &str) -> (u64, u64) {
    let field = |name: &str| {
        raw.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in pprof -raw\n{raw}"))
            .trim()
            .to_owned()
    };
    let time = field("Time:");
    let duration: f64 = field("Duration:").trim_end_matches('s').parse().unwrap();
    let words: Vec<&str> = time.split_whitespace().collect();
    assert_eq!(
        &words[2..],
        ["+0000", "UTC"],
        "pprof prints times in UTC: {time}"
    );
    let date: Vec<i64> = words[0].split('-').map(|n| n.parse().unwrap()).collect();
    let (clock, fraction) = words[1].split_once('.').unwrap_or((words[1], "0"));
    let hms: Vec<i64> = clock.split(':').map(|n| n.parse().unwrap()).collect();
    let nanos: u64 = format!("{fraction:0<9}")[..9].parse().unwrap();
    let seconds =
        days_from_civil(date[0], date[1], date[2]) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    let start = seconds as u64 * 1_000_000_000 + nanos;
    (start, start + (duration * 1e9) as u64)
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar
/// (the era arithmetic of Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[test]
fn civil_dates_count_days_since_the_epoch() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(days_from_civil(2026, 12, 3), 20_790);
}
