//! Kernel maps of per-process facts userspace finds and the programs read
//! at each sample, by tgid: where a process's threads keep their
//! OpenTelemetry thread context (`THREAD_CONTEXTS`, found by
//! `process::otel_context`), and where a Python process's interpreter
//! keeps its frames (`PYTHON_PROCESSES`, found by `process::python`).

use aya::maps::{HashMap, MapData};
use aya::Pod;
use profiler_common::{names, PythonProcess, ThreadContextLocation};

use super::{map_err, SamplerError};

/// Where a per-process fact goes.
pub trait ProcessMap<V>: Send {
    /// The programs use `value` for `tgid` from now on.
    fn publish(&mut self, tgid: u32, value: V);
    /// They stop using `tgid`'s (absent is fine).
    fn withdraw(&mut self, tgid: u32);
}

/// A per-process kernel map, written with BPF syscalls.
pub struct KernelProcessMap<V: Pod> {
    map: HashMap<MapData, u32, V>,
    /// What a failed insert loses, for its warning.
    loses: &'static str,
}

/// `THREAD_CONTEXTS`.
pub type KernelThreadContexts = KernelProcessMap<ThreadContextLocation>;
/// `PYTHON_PROCESSES`.
pub type KernelPythonProcesses = KernelProcessMap<PythonProcess>;

impl KernelThreadContexts {
    /// Wraps the loaded `THREAD_CONTEXTS` map.
    pub(super) fn thread_contexts(map: aya::maps::Map) -> Result<Self, SamplerError> {
        Self::wrap(
            map,
            names::THREAD_CONTEXTS,
            "its samples carry no thread context",
        )
    }
}

impl KernelPythonProcesses {
    /// Wraps the loaded `PYTHON_PROCESSES` map.
    pub(super) fn python_processes(map: aya::maps::Map) -> Result<Self, SamplerError> {
        Self::wrap(
            map,
            names::PYTHON_PROCESSES,
            "its stacks show no Python frames",
        )
    }
}

impl<V: Pod> KernelProcessMap<V> {
    fn wrap(
        map: aya::maps::Map,
        name: &'static str,
        loses: &'static str,
    ) -> Result<Self, SamplerError> {
        Ok(Self {
            map: map.try_into().map_err(map_err(name))?,
            loses,
        })
    }
}

impl<V: Pod + Send> ProcessMap<V> for KernelProcessMap<V> {
    fn publish(&mut self, tgid: u32, value: V) {
        if let Err(err) = self.map.insert(tgid, value, 0) {
            // Full or out of memory: this process goes without.
            log::warn!("process {tgid}: {}: {err}", self.loses);
        }
    }

    fn withdraw(&mut self, tgid: u32) {
        let _ = self.map.remove(&tgid);
    }
}
