//! Which processes are running on the CPU: their CPU time, read twice from
//! `/proc/<pid>/stat`. Whole-host sampling loads these processes' unwind
//! tables before it starts, so that the stacks of what already runs are
//! whole from the first sample rather than ending in
//! `[incomplete: unwind table still loading]` for the first second or two.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The shortest time between the two readings: CPU time moves in clock
/// ticks (10 ms), and a process on a tenth of a CPU needs this long to
/// show one.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// The CPU time of every process at one moment.
#[derive(Debug)]
pub struct CpuTimes {
    taken: Instant,
    /// pid → (start time, user + system ticks).
    ticks: HashMap<u32, (u64, u64)>,
}

impl CpuTimes {
    /// Reads every process in `/proc` (processes that exit meanwhile, or
    /// cannot be read, are left out).
    pub fn read() -> Self {
        let ticks = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = super::procfs::read_text(format!("/proc/{pid}/stat")).ok()?;
                Some((pid, parse_cpu(&stat)?))
            })
            .collect();
        Self {
            taken: Instant::now(),
            ticks,
        }
    }

    /// Reads again, at least [`MIN_INTERVAL`] after `self`, and returns
    /// the processes that used CPU between the two readings, busiest
    /// first, hostprof itself left out.
    pub fn busy_since(self) -> Vec<u32> {
        if let Some(wait) = MIN_INTERVAL.checked_sub(self.taken.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut busy = busy(&self.ticks, &Self::read().ticks);
        busy.retain(|&pid| pid != std::process::id());
        busy
    }
}

/// The processes of `after` whose CPU time grew since `before` (or that
/// started since and used some), busiest first.
fn busy(before: &HashMap<u32, (u64, u64)>, after: &HashMap<u32, (u64, u64)>) -> Vec<u32> {
    let mut grew: Vec<(u64, u32)> = after
        .iter()
        .filter_map(|(&pid, &(start, ticks))| {
            let earlier = match before.get(&pid) {
                // The same process (not a reused pid).
                Some(&(was_start, was)) if was_start == start => was,
                _ => 0,
            };
            let used = ticks.saturating_sub(earlier);
            (used > 0).then_some((used, pid))
        })
        .collect();
    grew.sort_unstable_by(|a, b| b.cmp(a));
    grew.into_iter().map(|(_, pid)| pid).collect()
}

/// (start time, utime + stime) of a `/proc/<pid>/stat` line: fields 22,
/// 14 and 15; `None` for a kernel thread (field 9, flags, has
/// `PF_KTHREAD`), which has no user stacks and so no unwind tables.
fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let field = |n| super::procfs::stat_field(stat, n);
    if field(9)? & PF_KTHREAD != 0 {
        return None;
    }
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    Some((start, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_time_and_start_after_a_name_with_parentheses() {
        let stat = "4242 (a (b) c) R 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    37 5 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_cpu(stat), Some((987654, 42)));
        // A kernel thread (PF_KTHREAD in its flags).
        let kthread = "12 (kworker/0:1) I 2 0 0 0 -1 69238880 0 0 0 0 \
                       37 5 0 0 20 0 1 0 987654 0 0 18446744073709551615";
        assert_eq!(parse_cpu(kthread), None);
        assert_eq!(parse_cpu("4242 (x) R 1 2"), None);
        assert_eq!(parse_cpu("no name"), None);
    }

    #[test]
    fn busy_processes_used_cpu_between_the_readings() {
        let before = HashMap::from([(1, (10, 100)), (2, (10, 50)), (3, (10, 7)), (4, (10, 9))]);
        let after = HashMap::from([
            // Idle.
            (1, (10, 100)),
            // 5 ticks.
            (2, (10, 55)),
            // Pid reused by a process that used 2 ticks.
            (3, (99, 2)),
            // Started since, 30 ticks.
            (5, (12, 30)),
            // Started since, idle.
            (6, (12, 0)),
        ]);
        assert_eq!(busy(&before, &after), vec![5, 2, 3]);
    }

    #[test]
    fn a_spinning_thread_makes_its_process_busy() {
        let me = std::process::id();
        let first = CpuTimes::read();
        assert!(first.ticks.contains_key(&me));
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(0u64);
        }
        let before = first.ticks.clone();
        let after = CpuTimes::read().ticks;
        assert!(busy(&before, &after).contains(&me));
    }
}
