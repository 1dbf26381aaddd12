//! Which processes a kind that attaches to processes one by one (the
//! memory profile's allocator probes) attaches to: the `--pid` list, or
//! every process the filters select (`--cgroup`, `--namespace`,
//! `--pod-selector`), found by scanning `/proc`.
//!
//! A process is checked against the filters once; one left out is checked
//! again after [`RECHECK`] (its pod's metadata may not have arrived yet).
//! A process the kind could not attach to is not offered again in the same
//! image. hostprof itself is never selected. A child forked by a selected
//! process is selected too (it inherits its parent's heap), whatever the
//! filters say.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::container::{cgroup_paths, parse_proc_cgroup};
use crate::filter::ProcessFilter;
use crate::k8s::PodMetadata;
use crate::sampler::Target;

/// How long a process the filters left out stays left out.
pub const RECHECK: Duration = Duration::from_secs(10);

/// The processes selected for a per-process kind.
#[derive(Debug)]
pub struct Selection {
    /// `--pid`: exactly these; otherwise the filters decide.
    pids: Option<Vec<u32>>,
    /// Each process seen: selected or not, and when that was decided.
    checked: HashMap<u32, (bool, Instant)>,
    /// Processes the kind could not attach to, by the exec generation
    /// (image) it tried.
    failed: HashMap<u32, u32>,
    /// Children of selected processes, selected with them.
    followed: HashSet<u32>,
    /// Since when the selection has been empty, and whether that was
    /// said.
    empty: Option<(Instant, bool)>,
}

/// Whether process `pid` is still there.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Selection {
    /// The processes `target` names (`--pid`), or, for every process,
    /// those the filters select.
    pub fn of(target: &Target) -> Self {
        match target {
            Target::Pids(pids) => Self::pids(pids.clone()),
            Target::AllProcesses => Self::filtered(),
        }
    }

    /// Exactly `pids`.
    pub fn pids(pids: Vec<u32>) -> Self {
        Self {
            pids: Some(pids),
            checked: HashMap::new(),
            failed: HashMap::new(),
            followed: HashSet::new(),
            empty: None,
        }
    }

    /// Whatever the filters select.
    pub fn filtered() -> Self {
        Self {
            pids: None,
            checked: HashMap::new(),
            failed: HashMap::new(),
            followed: HashSet::new(),
            empty: None,
        }
    }

    /// The processes to attach to now, with their current exec generation
    /// (`generation`): those selected and alive, less those that failed in
    /// that image.
    pub fn due(
        &mut self,
        filter: &ProcessFilter,
        pods: &PodMetadata,
        generation: impl Fn(u32) -> u32,
    ) -> Vec<(u32, u32)> {
        let selected = self.scan(filter, pods);
        self.note_empty(selected.is_empty(), Instant::now());
        self.failed
            .retain(|pid, _| selected.binary_search(pid).is_ok());
        selected
            .into_iter()
            .map(|pid| (pid, generation(pid)))
            .filter(|(pid, exec_gen)| self.failed.get(pid) != Some(exec_gen))
            .collect()
    }

    /// Warns once when nothing has been selected for [`RECHECK`] (a pod's
    /// metadata may take a moment), and says when something is again.
    fn note_empty(&mut self, empty: bool, now: Instant) {
        match (&mut self.empty, empty) {
            (None, true) => self.empty = Some((now, false)),
            (Some((since, warned)), true) => {
                if !*warned && now.duration_since(*since) >= RECHECK {
                    *warned = true;
                    let what = if self.pids.is_some() {
                        "no process named by --pid is running"
                    } else {
                        "no running process matches --cgroup, --namespace or --pod-selector"
                    };
                    log::warn!(
                        "memory profile: {what} (for {}s): nothing is profiled; checking \
                         again at every drain",
                        RECHECK.as_secs()
                    );
                }
            }
            (Some((_, warned)), false) => {
                if *warned {
                    log::info!("memory profile: processes selected again");
                }
                self.empty = None;
            }
            (None, false) => {}
        }
    }

    /// Selects `child`, forked by a selected process.
    pub fn follow(&mut self, child: u32) {
        self.followed.insert(child);
    }

    /// Notes that the kind could not attach to `pid` in image `exec_gen`,
    /// and why: a warning for a process `--pid` named, a debug line for
    /// one the filters or a fork found (kernel threads, programs without a
    /// known allocator).
    pub fn failed(&mut self, pid: u32, exec_gen: u32, why: &anyhow::Error) {
        if self.pids.as_ref().is_some_and(|pids| pids.contains(&pid)) {
            log::warn!("memory profile: {why:#}");
        } else {
            log::debug!("memory profile: {why:#}");
        }
        self.failed.insert(pid, exec_gen);
    }

    /// The processes selected now (alive), ascending.
    fn scan(&mut self, filter: &ProcessFilter, pods: &PodMetadata) -> Vec<u32> {
        self.followed.retain(|&pid| alive(pid));
        let mut selected = self.scan_selected(filter, pods);
        selected.extend(&self.followed);
        selected.sort_unstable();
        selected.dedup();
        selected
    }

    /// The processes `--pid` or the filters select now (alive; `scan`
    /// sorts them).
    fn scan_selected(&mut self, filter: &ProcessFilter, pods: &PodMetadata) -> Vec<u32> {
        let me = std::process::id();
        if let Some(pids) = &self.pids {
            return pids
                .iter()
                .copied()
                .filter(|&pid| pid != me && alive(pid))
                .collect();
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
    let Ok(contents) = super::procfs::read_cgroup(pid) else {
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
    fn an_empty_selection_is_said_once_after_the_recheck_time() {
        let mut selection = Selection::filtered();
        let start = Instant::now();
        selection.note_empty(true, start);
        assert_eq!(selection.empty, Some((start, false)));
        selection.note_empty(true, start + RECHECK / 2);
        assert_eq!(selection.empty, Some((start, false)), "not yet");
        selection.note_empty(true, start + RECHECK);
        assert_eq!(selection.empty, Some((start, true)), "said");
        selection.note_empty(false, start + RECHECK * 2);
        assert_eq!(selection.empty, None, "found again");
    }

    #[test]
    fn a_followed_child_is_selected_while_it_lives() {
        let mut selection = Selection::pids(vec![]);
        let (filter, pods) = (ProcessFilter::default(), PodMetadata::empty());
        selection.follow(1);
        selection.follow(u32::MAX - 1);
        assert_eq!(selection.scan(&filter, &pods), vec![1]);
        assert_eq!(
            selection.followed,
            HashSet::from([1]),
            "the gone one is dropped"
        );
    }

    #[test]
    fn a_failed_process_is_offered_again_only_in_another_image() {
        let mut selection = Selection::pids(vec![1]);
        let (filter, pods) = (ProcessFilter::default(), PodMetadata::empty());
        assert_eq!(selection.due(&filter, &pods, |_| 0), vec![(1, 0)]);
        selection.failed(1, 0, &anyhow::anyhow!("no allocator"));
        assert!(selection.due(&filter, &pods, |_| 0).is_empty());
        assert_eq!(selection.due(&filter, &pods, |_| 1), vec![(1, 1)]);
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
            // One that exited since the scan is not admitted any more
            // (a busy host starts and ends processes in this cgroup).
            assert!(admits(*pid, &filter, &PodMetadata::empty()) || !alive(*pid));
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
