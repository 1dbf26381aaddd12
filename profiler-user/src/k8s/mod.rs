//! Kubernetes metadata of containers: pod name, namespace, container name
//! and node, from the API server, watching only the pods of this node
//! (`spec.nodeName=$NODE_NAME`) with the in-cluster service account or a
//! kubeconfig (kube-rs).
//!
//! The watch runs in the background and fills a [`PodMetadata`] that the
//! profiler only reads, so sampling never waits on the API server. A
//! restarted or unreachable API server keeps the last known pods (kube-rs'
//! watcher re-lists and backs off on its own); off Kubernetes the watch is
//! not started, or stops after one log line, and container ids are
//! exported without pod names.

pub mod index;

use std::sync::{Arc, RwLock};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;

use crate::container::ContainerId;
pub use index::{PodContainer, PodIndex};

/// This node's pods as last seen; cheap to clone, shared with the watch.
#[derive(Clone, Debug, Default)]
pub struct PodMetadata {
    index: Arc<RwLock<PodIndex>>,
}

impl PodMetadata {
    /// Metadata that stays empty (off Kubernetes, or in tests).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Starts watching the pods scheduled on `node` on the current tokio
    /// runtime and returns the metadata it keeps current.
    pub fn watch(node: String) -> Self {
        let metadata = Self::default();
        tokio::spawn(run_watch(node, Arc::clone(&metadata.index)));
        metadata
    }

    /// The Kubernetes names of container `id`, when known.
    pub fn container(&self, id: &ContainerId) -> Option<Arc<PodContainer>> {
        self.index.read().ok()?.container(id)
    }

    /// Containers known.
    pub fn len(&self) -> usize {
        self.index.read().map_or(0, |index| index.len())
    }

    /// True when no container is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn run_watch(node: String, index: Arc<RwLock<PodIndex>>) {
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(err) => {
            log::info!(
                "no Kubernetes API configuration ({err}); exporting container ids without pod names"
            );
            return;
        }
    };
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(err) => {
            log::warn!("cannot create a Kubernetes client ({err}); exporting container ids without pod names");
            return;
        }
    };
    let pods: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut listing = Vec::new();
    let mut failing = false;
    let mut synced = false;
    while let Some(event) = events.next().await {
        let mut index = match index.write() {
            Ok(index) => index,
            Err(poisoned) => poisoned.into_inner(),
        };
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => listing.push(pod),
            // Swap the whole list in at once, so readers never see it half
            // built after a restart.
            Ok(Event::InitDone) => {
                index.replace(&std::mem::take(&mut listing));
                if failing {
                    log::info!("Kubernetes pod watch works again");
                    failing = false;
                }
                if !synced {
                    log::info!(
                        "watching the pods of node {node}: {} containers known",
                        index.len()
                    );
                    synced = true;
                }
            }
            Ok(Event::Apply(pod)) => index.apply(&pod),
            Ok(Event::Delete(pod)) => index.delete(&pod),
            Err(err) => {
                // One line per outage; the watcher backs off by itself.
                if !failing {
                    log::warn!(
                        "Kubernetes pod watch failed: {err}; retrying with backoff, profiling goes on"
                    );
                    failing = true;
                }
            }
        }
    }
}
