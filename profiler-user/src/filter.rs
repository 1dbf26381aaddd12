//! Which processes a profile keeps beyond the kernel's pid filter: by
//! Kubernetes namespace, pod labels or cgroup. Decided per process from its
//! cgroup path and pod (pure); the profiler applies it to every drain,
//! before anything is symbolized, and counts what it leaves out as
//! filtered samples.

use std::collections::HashSet;

use crate::k8s::{PodContainer, PodMetadata};
use crate::process::ProcessTable;
use crate::sampler::Drained;

/// Process filters; an empty filter keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFilter {
    /// Keep only processes of pods in these namespaces.
    pub namespaces: Vec<String>,
    /// Leave out processes of pods in these namespaces.
    pub exclude_namespaces: Vec<String>,
    /// Keep only processes of pods carrying all these labels.
    pub pod_selector: Vec<(String, String)>,
    /// Keep only processes in these cgroups or below them (paths as in
    /// `/proc/<pid>/cgroup`, or under `/sys/fs/cgroup[/unified]`).
    pub cgroups: Vec<String>,
}

/// A `--pod-selector` that is not `key=value[,key=value...]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid pod selector {0:?}: expected key=value[,key=value...], e.g. app=checkout,tier=web"
)]
pub struct InvalidSelector(String);

impl ProcessFilter {
    /// True when the filter keeps every process.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.exclude_namespaces.is_empty()
            && self.pod_selector.is_empty()
            && self.cgroups.is_empty()
    }

    /// True when the filter names no process to keep (no namespace,
    /// selector or cgroup; it may still leave some out).
    pub fn selects_nothing(&self) -> bool {
        self.namespaces.is_empty() && self.pod_selector.is_empty() && self.cgroups.is_empty()
    }

    /// Whether a process in cgroups `cgroups` (its paths, empty when
    /// unknown) and pod `pod` (if any) is kept.
    pub fn admits(&self, cgroups: &[String], pod: Option<&PodContainer>) -> bool {
        if !self.cgroups.is_empty()
            && !cgroups
                .iter()
                .any(|path| self.cgroups.iter().any(|c| is_under(path, c)))
        {
            return false;
        }
        if !self.namespaces.is_empty()
            && !pod.is_some_and(|p| self.namespaces.contains(&p.namespace))
        {
            return false;
        }
        if pod.is_some_and(|p| self.exclude_namespaces.contains(&p.namespace)) {
            return false;
        }
        self.pod_selector.is_empty()
            || pod.is_some_and(|p| {
                self.pod_selector
                    .iter()
                    .all(|(key, value)| p.labels.get(key) == Some(value))
            })
    }
}

impl ProcessFilter {
    /// Leaves out of `drained` the samples of processes the filter
    /// rejects, counting them as filtered under their kind; runs before
    /// symbolization, so rejected samples cost nothing more.
    pub fn apply(&self, drained: &mut Drained, processes: &ProcessTable, pods: &PodMetadata) {
        if self.is_empty() {
            return;
        }
        let rejected: HashSet<u32> = drained
            .tgids()
            .into_iter()
            .filter(|&tgid| {
                let info = processes.process(tgid);
                let cgroups = info.map_or(&[][..], |i| &i.cgroups[..]);
                let pod = info
                    .and_then(|i| i.container.as_ref())
                    .and_then(|c| pods.container(&c.id));
                !self.admits(cgroups, pod.as_deref())
            })
            .collect();
        if rejected.is_empty() {
            return;
        }
        let stats = &mut drained.stats;
        drained.samples.retain(|sample| {
            let keep = !rejected.contains(&sample.key.thread.tgid);
            if !keep {
                stats.entry(sample.key.kind).or_default().filtered += sample.count();
            }
            keep
        });
    }
}

/// Parses an equality selector, `app=checkout,tier=web`.
pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>, InvalidSelector> {
    s.split(',')
        .map(|pair| {
            let (key, value) = pair
                .split_once("==")
                .or_else(|| pair.split_once('='))
                .ok_or_else(|| InvalidSelector(s.to_owned()))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || value.contains('=') {
                return Err(InvalidSelector(s.to_owned()));
            }
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// True when cgroup `path` is `filter` or below it.
fn is_under(path: &str, filter: &str) -> bool {
    let filter = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .find_map(|mount| filter.strip_prefix(mount))
        .unwrap_or(filter);
    let filter = filter.trim_end_matches('/');
    filter.is_empty()
        || path == filter
        || path
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, labels: &[(&str, &str)]) -> PodContainer {
        PodContainer {
            pod_name: "p".into(),
            namespace: namespace.into(),
            container_name: "c".into(),
            node_name: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn empty_filter_keeps_everything() {
        let filter = ProcessFilter::default();
        assert!(filter.is_empty());
        assert!(filter.admits(&[], None));
    }

    #[test]
    fn namespaces_and_selectors() {
        let shop = pod("shop", &[("app", "checkout"), ("tier", "web")]);
        let system = pod("kube-system", &[("app", "dns")]);
        let only_shop = ProcessFilter {
            namespaces: vec!["shop".into()],
            ..Default::default()
        };
        assert!(only_shop.admits(&[], Some(&shop)));
        assert!(!only_shop.admits(&[], Some(&system)));
        assert!(
            !only_shop.admits(&["/".into()], None),
            "host processes are left out"
        );
        let no_system = ProcessFilter {
            exclude_namespaces: vec!["kube-system".into()],
            ..Default::default()
        };
        assert!(no_system.admits(&[], Some(&shop)));
        assert!(no_system.admits(&[], None));
        assert!(!no_system.admits(&[], Some(&system)));
        let web = ProcessFilter {
            pod_selector: parse_selector("app=checkout, tier==web").unwrap(),
            ..Default::default()
        };
        assert!(web.admits(&[], Some(&shop)));
        assert!(!web.admits(&[], Some(&system)));
        assert!(parse_selector("app").is_err());
        assert!(parse_selector("=x").is_err());
        assert!(parse_selector("a=b=c").is_err());
    }

    #[test]
    fn cgroups_match_themselves_and_below() {
        let filter = ProcessFilter {
            cgroups: vec!["/sys/fs/cgroup/unified/kubepods.slice/".into()],
            ..Default::default()
        };
        assert!(filter.admits(&["/kubepods.slice".into()], None));
        assert!(filter.admits(
            &["/kubepods.slice/kubepods-pod1.slice/x.scope".into()],
            None
        ));
        assert!(!filter.admits(&["/kubepods.slice2".into()], None));
        assert!(!filter.admits(&["/system.slice".into()], None));
        assert!(!filter.admits(&[], None));
    }
}
