//! The kernel map of processes that publish OpenTelemetry thread context
//! (`THREAD_CONTEXTS`): where each one's threads keep their
//! `otel_thread_ctx_v1` pointer, found by `process::otel_context`.

use aya::maps::{HashMap, MapData};
use profiler_common::{names, ThreadContextLocation};

use super::{map_err, SamplerError};

/// Where thread-context locations go.
pub trait ThreadContexts: Send {
    /// Reads `tgid`'s threads' context at `location` from now on.
    fn publish(&mut self, tgid: u32, location: ThreadContextLocation);
    /// Stops reading `tgid`'s (absent is fine).
    fn withdraw(&mut self, tgid: u32);
}

/// `THREAD_CONTEXTS`, written with BPF syscalls.
pub struct KernelThreadContexts {
    map: HashMap<MapData, u32, ThreadContextLocation>,
}

impl KernelThreadContexts {
    /// Wraps the loaded `THREAD_CONTEXTS` map.
    pub(super) fn new(map: aya::maps::Map) -> Result<Self, SamplerError> {
        Ok(Self {
            map: map.try_into().map_err(map_err(names::THREAD_CONTEXTS))?,
        })
    }
}

impl ThreadContexts for KernelThreadContexts {
    fn publish(&mut self, tgid: u32, location: ThreadContextLocation) {
        if let Err(err) = self.map.insert(tgid, location, 0) {
            // Full (16 Ki publishing processes) or out of memory: this
            // process's samples carry no thread context.
            log::warn!("process {tgid}: cannot read its thread context: {err}");
        }
    }

    fn withdraw(&mut self, tgid: u32) {
        let _ = self.map.remove(&tgid);
    }
}
