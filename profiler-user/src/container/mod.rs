//! Container attribution: which container, and which Kubernetes pod, a
//! process belongs to. [`cgroup`] parses the cgroup paths container
//! runtimes create (pure, no I/O); the process snapshot reads
//! `/proc/<pid>/cgroup` once per process and keeps the result.

pub mod cgroup;

pub use cgroup::{cgroup_paths, parse_proc_cgroup, ContainerId, ContainerRef, PodUid, Runtime};
