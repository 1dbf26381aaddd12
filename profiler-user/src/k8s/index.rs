//! The pods of this node as the API server last described them, indexed by
//! container id: pure bookkeeping, fed by the watch, read by the profiler.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::container::ContainerId;

/// Kubernetes names of one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodContainer {
    /// `k8s.pod.name`.
    pub pod_name: String,
    /// `k8s.namespace.name`.
    pub namespace: String,
    /// `k8s.container.name`.
    pub container_name: String,
    /// `k8s.node.name`, when the pod is scheduled.
    pub node_name: Option<String>,
    /// The pod's labels, for `--pod-selector`.
    pub labels: BTreeMap<String, String>,
}

/// Containers by id, and which pod (uid) each came from.
#[derive(Debug, Default)]
pub struct PodIndex {
    containers: HashMap<ContainerId, Arc<PodContainer>>,
    by_pod: HashMap<String, Vec<ContainerId>>,
}

impl PodIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `pod` as it is now (added or changed).
    pub fn apply(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.remove_uid(&uid);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut ids = Vec::new();
        if let Some(status) = &pod.status {
            let statuses = [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for status in statuses.into_iter().flatten().flatten() {
                let Some(id) = status
                    .container_id
                    .as_deref()
                    .and_then(runtime_container_id)
                else {
                    continue; // not started yet
                };
                self.containers.insert(
                    id.clone(),
                    Arc::new(PodContainer {
                        pod_name: name.clone(),
                        namespace: namespace.clone(),
                        container_name: status.name.clone(),
                        node_name: node_name.clone(),
                        labels: labels.clone(),
                    }),
                );
                ids.push(id);
            }
        }
        self.by_pod.insert(uid, ids);
    }

    /// Forgets `pod` (deleted).
    pub fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.remove_uid(uid);
        }
    }

    /// Replaces everything with `pods` (a fresh list after a restart of
    /// the watch).
    pub fn replace(&mut self, pods: &[Pod]) {
        *self = Self::new();
        for pod in pods {
            self.apply(pod);
        }
    }

    /// The names of container `id`, when a pod of this node runs it.
    pub fn container(&self, id: &ContainerId) -> Option<Arc<PodContainer>> {
        self.containers.get(id).cloned()
    }

    /// Containers known.
    pub fn len(&self) -> usize {
        self.containers.len()
    }

    /// True when no container is known.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    fn remove_uid(&mut self, uid: &str) {
        for id in self.by_pod.remove(uid).unwrap_or_default() {
            self.containers.remove(&id);
        }
    }
}

/// The container id in a status's `containerID` (`containerd://<id>`,
/// `cri-o://<id>`, `docker://<id>`).
fn runtime_container_id(value: &str) -> Option<ContainerId> {
    let (_, id) = value.split_once("://")?;
    ContainerId::new(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pod as the API server returns it, in JSON.
    pub(crate) fn pod_json(
        uid: &str,
        name: &str,
        containers: &[(&str, &str)],
    ) -> serde_json::Value {
        let statuses: Vec<serde_json::Value> = containers
            .iter()
            .map(|(name, id)| {
                serde_json::json!({
                    "name": name,
                    "containerID": format!("containerd://{id}"),
                    "image": "busybox", "imageID": "", "ready": true, "restartCount": 0
                })
            })
            .collect();
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name, "namespace": "shop", "uid": uid,
                "labels": {"app": "checkout"}
            },
            "spec": {"nodeName": "node-a", "containers": []},
            "status": {"containerStatuses": statuses}
        })
    }

    fn pod(uid: &str, name: &str, containers: &[(&str, &str)]) -> Pod {
        serde_json::from_value(pod_json(uid, name, containers)).unwrap()
    }

    #[test]
    fn indexes_containers_and_follows_changes() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut index = PodIndex::new();
        index.apply(&pod("u1", "checkout-1", &[("app", &a)]));
        let found = index.container(&ContainerId::new(&a).unwrap()).unwrap();
        assert_eq!(found.pod_name, "checkout-1");
        assert_eq!(found.namespace, "shop");
        assert_eq!(found.container_name, "app");
        assert_eq!(found.node_name.as_deref(), Some("node-a"));
        assert_eq!(found.labels["app"], "checkout");

        // A restart replaces the container id.
        index.apply(&pod("u1", "checkout-1", &[("app", &b)]));
        assert!(index.container(&ContainerId::new(&a).unwrap()).is_none());
        assert!(index.container(&ContainerId::new(&b).unwrap()).is_some());

        index.delete(&pod("u1", "checkout-1", &[]));
        assert!(index.is_empty());

        index.replace(&[pod("u2", "x", &[("c", &a)]), pod("u3", "y", &[])]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn container_ids_from_every_runtime() {
        let id = "c".repeat(64);
        for scheme in ["containerd", "cri-o", "docker"] {
            assert!(runtime_container_id(&format!("{scheme}://{id}")).is_some());
        }
        assert!(runtime_container_id(&id).is_none());
        assert!(runtime_container_id("containerd://short").is_none());
    }
}
