//! Which processes a kind that attaches to processes one by one (the
//! memory profile's allocator probes) attaches to: the `--pid` list, or
//! every process the filters select (`--cgroup`, `--namespace`,
//! `--pod-selector`), found by scanning `/proc`.
//!
//! A process is checked against the filters once; one left out is checked
//! again after [`RECHECK`] (its pod's metadata may not have arrived yet).
//! hostprof itself is never selected.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::container::{cgroup_paths, parse_proc_cgroup};
use crate::filter::ProcessFilter;
use crate::k8s::PodMetadata;

/// How long a process the filters left out stays left out.
pub const RECHECK: Duration = Duration::from_secs(10);

/// The processes selected for a per-process kind.
#[derive(Debug)]
pub struct Selection {
    /// `--pid`: exactly these; otherwise the filters decide.
    pids: Option<Vec<u32>>,
    /// Each process seen: selected or not, and when that was decided.
    checked: HashMap<u32, (bool, Instant)>,
}

impl Selection {
    /// Exactly `pids`.
    pub fn pids(pids: Vec<u32>) -> Self {
        Self {
            pids: Some(pids),
            checked: HashMap::new(),
        }
    }

    /// Whatever the filters select.
    pub fn filtered() -> Self {
        Self {
            pids: None,
            checked: HashMap::new(),
        }
    }

    /// The processes selected now (alive), ascending.
    pub fn scan(&mut self, filter: &ProcessFilter, pods: &PodMetadata) -> Vec<u32> {
        let me = std::process::id();
        let alive =
            |pid: &u32| *pid != me && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if let Some(pids) = &self.pids {
            return pids.iter().copied().filter(alive).collect();
        }
        let now = Instant::now();
        let mut running: Vec<u32> = std::fs::read_dir("/proc")
            .map(|dir| {
                dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                    .filter(|pid| *pid != me)
                    .collect()
            })
            .unwrap_or_default();
        running.sort_unstable();
        self.checked
            .retain(|pid, _| running.binary_search(pid).is_ok());
        running
            .into_iter()
            .filter(|&pid| {
                let due = match self.checked.get(&pid) {
                    Some(&(selected, at)) => !selected && now.duration_since(at) >= RECHECK,
                    None => true,
                };
                if due {
                    let selected = admits(pid, filter, pods);
                    self.checked.insert(pid, (selected, now));
                }
                self.checked
                    .get(&pid)
                    .is_some_and(|&(selected, _)| selected)
            })
            .collect()
    }
}

/// Whether the filters select process `pid` (false once it is gone).
fn admits(pid: u32, filter: &ProcessFilter, pods: &PodMetadata) -> bool {
    let Ok(contents) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    let cgroups = cgroup_paths(&contents);
    let pod = parse_proc_cgroup(&contents).and_then(|container| pods.container(&container.id));
    filter.admits(&cgroups, pod.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_list_keeps_the_living_and_never_hostprof() {
        let me = std::process::id();
        let mut selection = Selection::pids(vec![1, me, u32::MAX - 1]);
        assert_eq!(
            selection.scan(&ProcessFilter::default(), &PodMetadata::empty()),
            vec![1]
        );
    }

    #[test]
    fn a_cgroup_filter_selects_the_processes_in_it() {
        let contents = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(mine) = cgroup_paths(&contents).into_iter().next() else {
            return;
        };
        let filter = ProcessFilter {
            cgroups: vec![mine],
            ..ProcessFilter::default()
        };
        let mut selection = Selection::filtered();
        let selected = selection.scan(&filter, &PodMetadata::empty());
        assert!(!selected.contains(&std::process::id()), "never hostprof");
        for pid in &selected {
            assert!(admits(*pid, &filter, &PodMetadata::empty()));
        }
        let nowhere = ProcessFilter {
            cgroups: vec!["/hostprof-test/no-such-cgroup".into()],
            ..ProcessFilter::default()
        };
        assert!(Selection::filtered()
            .scan(&nowhere, &PodMetadata::empty())
            .is_empty());
    }
}
