//! The rules of a process's life as hostprof sees it, as pure functions:
//! what a pid's `/proc` entry says now, compared with its snapshot,
//! decides whether the snapshot is kept, taken again, or let go.

use std::collections::HashSet;

use crate::sampler::ExecState;

/// What identifies a process and its executable at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22):
    /// tells a reused pid from the process that had it before.
    pub start_time: u64,
    /// (device, inode) of `/proc/<pid>/exe`; `None` for kernel threads and
    /// for a process that is exiting (a zombie has no executable).
    pub exe: Option<(u64, u64)>,
}

/// How a pid stands compared with its last snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    /// Not seen before and alive: take a snapshot.
    New,
    /// The same process running the same executable: keep the snapshot.
    Unchanged,
    /// The same process after `exec`: take a new snapshot.
    Exec,
    /// Another process now has the pid: take a new snapshot.
    PidReused,
    /// Exiting (a zombie's maps read empty): keep the last snapshot, which
    /// still describes its samples.
    Exiting,
    /// No longer in `/proc`: keep any snapshot until [`expired`] says so.
    Gone,
}

impl Lifecycle {
    /// Whether the pid needs a (new) snapshot.
    pub fn snapshot(self) -> bool {
        matches!(
            self,
            Lifecycle::New | Lifecycle::Exec | Lifecycle::PidReused
        )
    }
}

/// How `now` (`None`: the pid has no `/proc` entry) stands against `known`,
/// the identity in the pid's snapshot (`None`: never snapshotted).
pub(crate) fn lifecycle(known: Option<Identity>, now: Option<Identity>) -> Lifecycle {
    let Some(now) = now else {
        return Lifecycle::Gone;
    };
    let Some(known) = known else {
        return Lifecycle::New;
    };
    if now.start_time != known.start_time {
        Lifecycle::PidReused
    } else if now.exe.is_none() {
        // Kernel threads never have one; for them this keeps the snapshot too.
        Lifecycle::Exiting
    } else if now.exe == known.exe {
        Lifecycle::Unchanged
    } else {
        Lifecycle::Exec
    }
}

/// Whether the kernel's exec generations (`now`) say that the process
/// started at `start_time` (ticks) with this pid has exited: its exit is
/// stamped with that start. False when only `/proc` can tell: no stamp,
/// or another process's. (An unmoved generation is no proof the process
/// still runs: an evicted entry is created again from 1 and can climb
/// back to the value held.)
pub(crate) fn stamped_exit(start_time: u64, now: ExecState) -> bool {
    // `stat`'s start, low 32 bits, as the kernel stamps it.
    now.exited_ticks == Some(start_time as u32)
}

/// The pids to forget: gone at this prune (`gone_now`) and already at the
/// previous one (`gone_before`). One window of grace lets samples drained
/// just after an exit still find their snapshot.
pub(crate) fn expired(gone_now: &HashSet<u32>, gone_before: &HashSet<u32>) -> Vec<u32> {
    let mut pids: Vec<u32> = gone_now.intersection(gone_before).copied().collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASH: (u64, u64) = (8, 100);
    const PYTHON: (u64, u64) = (8, 200);

    fn at(start_time: u64, exe: Option<(u64, u64)>) -> Option<Identity> {
        Some(Identity { start_time, exe })
    }

    #[test]
    fn a_new_pid_is_snapshotted_unless_gone() {
        assert_eq!(lifecycle(None, at(10, Some(BASH))), Lifecycle::New);
        assert_eq!(lifecycle(None, None), Lifecycle::Gone);
        // A zombie never seen alive: its comm and cgroup are still worth having.
        assert_eq!(lifecycle(None, at(10, None)), Lifecycle::New);
    }

    #[test]
    fn the_same_process_keeps_its_snapshot() {
        assert_eq!(
            lifecycle(at(10, Some(BASH)), at(10, Some(BASH))),
            Lifecycle::Unchanged
        );
    }

    #[test]
    fn exec_changes_the_executable() {
        assert_eq!(
            lifecycle(at(10, Some(BASH)), at(10, Some(PYTHON))),
            Lifecycle::Exec
        );
        assert!(Lifecycle::Exec.snapshot());
    }

    #[test]
    fn a_reused_pid_has_another_start_time() {
        assert_eq!(
            lifecycle(at(10, Some(BASH)), at(99, Some(BASH))),
            Lifecycle::PidReused
        );
        // Even when the new process is a zombie already.
        assert_eq!(
            lifecycle(at(10, Some(BASH)), at(99, None)),
            Lifecycle::PidReused
        );
    }

    #[test]
    fn an_exiting_process_keeps_what_it_looked_like_alive() {
        assert_eq!(
            lifecycle(at(10, Some(BASH)), at(10, None)),
            Lifecycle::Exiting
        );
        assert!(!Lifecycle::Exiting.snapshot());
        // Kernel threads: no executable, nothing to re-read.
        assert_eq!(lifecycle(at(5, None), at(5, None)), Lifecycle::Exiting);
    }

    fn stamped(generation: u32, exited_ticks: Option<u32>) -> ExecState {
        ExecState {
            generation,
            exited_ticks,
        }
    }

    #[test]
    fn an_exit_stamped_with_the_start_held_is_gone() {
        assert!(stamped_exit(10, stamped(3, Some(10))));
        // Compared on the low 32 bits the kernel keeps.
        let start = (1 << 32) + 10;
        assert!(stamped_exit(start, stamped(1, Some(10))));
        // Another process's exit (an earlier holder of the pid), or none:
        // /proc tells.
        assert!(!stamped_exit(10, stamped(3, Some(7))));
        assert!(!stamped_exit(10, stamped(2, None)));
    }

    #[test]
    fn a_gone_process_is_kept_one_prune_longer() {
        assert_eq!(lifecycle(at(10, Some(BASH)), None), Lifecycle::Gone);
        assert!(!Lifecycle::Gone.snapshot());
        let first: HashSet<u32> = [7, 8].into();
        assert!(expired(&first, &HashSet::new()).is_empty());
        let second: HashSet<u32> = [8, 9].into();
        assert_eq!(expired(&second, &first), vec![8]);
    }
}
