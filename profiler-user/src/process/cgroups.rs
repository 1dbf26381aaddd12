//! What a process's cgroup says (its container, its cgroup paths), kept
//! per cgroup: on a busy host most new processes start in a cgroup seen
//! before (a build's, a pod's), and `/proc/PID/cgroup` is one of the
//! dearer reads of a snapshot.
//!
//! The kernel announces a process with its cgroup id (the id of its
//! unified-hierarchy cgroup, `bpf_get_current_cgroup_id`). What a process
//! of that cgroup reads is kept under the id only when the process's text
//! names the unified hierarchy alone (a host with v1 hierarchies has other
//! lines the id does not determine) and the directory it names has that
//! id as its inode (the process may have moved since it was announced).
//! A cache hit answers with the cgroup the process was announced in: one
//! moved in the milliseconds between its first sample and its snapshot
//! keeps that one, as a read at the sample would; a pid reused in them
//! (the pid space wrapped) would be given its first owner's.

use std::collections::HashMap;

use super::procfs;
use crate::container::{cgroup_paths, parse_proc_cgroup, ContainerRef};

/// Cgroups kept at most; all go when it is full (a host rarely has more
/// live ones, and every one is read again at its next new process).
const MAX_CGROUPS: usize = 4096;

/// A process's cgroup facts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct CgroupFacts {
    /// The container it runs in, if any.
    pub container: Option<ContainerRef>,
    /// Its cgroup paths, unified hierarchy first.
    pub paths: Vec<String>,
}

impl CgroupFacts {
    /// The facts of the text of `/proc/<pid>/cgroup`.
    fn of(text: &str) -> Self {
        Self {
            container: parse_proc_cgroup(text),
            paths: cgroup_paths(text),
        }
    }
}

/// The unified-hierarchy path `text` (of `/proc/<pid>/cgroup`) names when
/// it names no other hierarchy.
fn unified_only(text: &str) -> Option<&str> {
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let path = lines.next()?.strip_prefix("0::")?;
    lines.next().is_none().then_some(path)
}

/// The facts of the cgroups seen, by id.
#[derive(Debug, Default)]
pub(super) struct CgroupCache {
    by_id: HashMap<u64, CgroupFacts>,
    /// Where the unified hierarchy is mounted: looked up at the first
    /// process announced with an id (`None` inside: not mounted).
    root: Option<Option<std::path::PathBuf>>,
}

impl CgroupCache {
    /// The cgroup facts of `pid`, announced in cgroup `id` (0: unknown).
    pub fn facts(&mut self, pid: u32, id: u64) -> CgroupFacts {
        self.facts_of(id, || procfs::read_cgroup(pid).unwrap_or_default())
    }

    /// The cgroup facts of a process announced in cgroup `id`, from the
    /// cache or from `read` (its `/proc/<pid>/cgroup`).
    fn facts_of(&mut self, id: u64, read: impl FnOnce() -> String) -> CgroupFacts {
        if let Some(facts) = (id != 0).then(|| self.by_id.get(&id)).flatten() {
            return facts.clone();
        }
        let text = read();
        let facts = CgroupFacts::of(&text);
        if id != 0 && self.is_id_of(id, &text) {
            if self.by_id.len() >= MAX_CGROUPS {
                self.by_id.clear();
            }
            self.by_id.insert(id, facts.clone());
        }
        facts
    }

    /// True when `text` names only a unified-hierarchy cgroup whose
    /// directory has inode `id`.
    fn is_id_of(&mut self, id: u64, text: &str) -> bool {
        let Some(path) = unified_only(text) else {
            return false;
        };
        let root = self.root.get_or_insert_with(procfs::cgroup2_root);
        root.as_deref()
            .and_then(|root| procfs::cgroup_inode(root, path))
            == Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_text_of_the_unified_hierarchy_alone_names_the_id() {
        assert_eq!(unified_only("0::/a/b\n"), Some("/a/b"));
        assert_eq!(unified_only("0::/\n"), Some("/"));
        assert_eq!(unified_only("12:cpu:/x\n0::/a\n"), None);
        assert_eq!(unified_only("0::/a\n1:name=systemd:/a\n"), None);
        assert_eq!(unified_only(""), None);
    }

    /// What a process of a known cgroup reads is kept under its id only
    /// when the directory it names has that inode; the id then answers.
    #[test]
    fn a_cgroup_read_once_answers_for_its_processes() {
        let root = tempfile::tempdir().unwrap();
        let pod = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        std::fs::create_dir_all(root.path().join(&pod[1..])).unwrap();
        let id = procfs::cgroup_inode(root.path(), pod).unwrap();
        let text = format!("0::{pod}\n");
        let expected = CgroupFacts::of(&text);
        assert!(expected.container.is_some());
        let mut cache = CgroupCache {
            root: Some(Some(root.path().to_owned())),
            ..CgroupCache::default()
        };
        let reads = std::cell::Cell::new(0);
        let read = |text: &str| {
            reads.set(reads.get() + 1);
            text.to_owned()
        };
        // Unknown id, another id, or v1 hierarchies named too: read, not kept.
        assert_eq!(cache.facts_of(0, || read(&text)), expected);
        assert_eq!(cache.facts_of(id + 1, || read(&text)), expected);
        let hybrid = format!("4:memory:/x\n{text}");
        assert_eq!(
            cache.facts_of(id, || read(&hybrid)),
            CgroupFacts::of(&hybrid)
        );
        assert!(cache.by_id.is_empty());
        // Its own id: kept, then answered without reading.
        assert_eq!(cache.facts_of(id, || read(&text)), expected);
        assert_eq!(cache.facts_of(id, || read("0::/elsewhere\n")), expected);
        assert_eq!(cache.facts_of(id, || read("")), expected);
        assert_eq!(reads.get(), 4);
        // A cgroup outside this namespace names no directory here.
        assert_eq!(
            procfs::cgroup_inode(root.path(), "/../kubepods.slice"),
            None
        );
        // No unified hierarchy mounted: nothing kept.
        let mut unmounted = CgroupCache {
            root: Some(None),
            ..CgroupCache::default()
        };
        assert_eq!(unmounted.facts_of(id, || text.clone()), expected);
        assert!(unmounted.by_id.is_empty());
    }

    /// This process's own cgroup, read through procfs.
    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let text = procfs::read_cgroup(me).unwrap();
        let mut cache = CgroupCache::default();
        assert_eq!(cache.facts(me, 0), CgroupFacts::of(&text));
        assert!(cache.by_id.is_empty());
    }
}
