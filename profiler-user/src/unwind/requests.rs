//! What the sampling pipeline asks of the table loader: tables for each
//! process as it is snapshotted, which processes are being sampled, and
//! which have gone. Keeps the set of processes it asked for, so the loader
//! hears of each exit once. Requests for tables wait for [`TableRequests::flush`]
//! (or any other request, which goes after them), so that a batch of new
//! processes wakes the loader's thread once: on a build host each woke it
//! separately, hundreds of times a second.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::process::ProcessTable;

use super::loader::{FileSource, LoaderStats, ProcessTables, TableLoader};
use super::registry::{FileKey, MappedFile};

/// Requests for unwind tables, sent to a [`TableLoader`].
pub struct TableRequests {
    loader: TableLoader,
    /// Processes the loader was told about and not yet told are gone.
    requested: HashSet<u32>,
    /// Requests not sent yet.
    pending: Vec<ProcessTables>,
}

impl TableRequests {
    /// Requests go to `loader`.
    pub fn new(loader: TableLoader) -> Self {
        Self {
            loader,
            requested: HashSet::new(),
            pending: Vec::new(),
        }
    }

    /// Sends the requests queued so far.
    pub fn flush(&mut self) {
        self.loader.load(std::mem::take(&mut self.pending));
    }

    /// Queues the mappings of `tgid`'s current snapshot (sent at the
    /// next [`Self::flush`] or other request). hostprof's own
    /// stacks stay on frame pointers: its tables would cost the most and
    /// help the user least.
    pub fn request(&mut self, tgid: u32, processes: &ProcessTable) {
        let Some(info) = processes.process(tgid) else {
            return;
        };
        if tgid == std::process::id() || info.mappings.is_empty() {
            return;
        }
        let mut sources = HashMap::new();
        let mappings = info
            .mappings
            .iter()
            .map(|mapping| {
                let module = processes.module(mapping.module);
                let key = match &module.build_id {
                    Some(id) => FileKey::BuildId(id.clone()),
                    None => FileKey::Module(mapping.module),
                };
                if let Some(file) = module.open_file() {
                    sources.entry(key.clone()).or_insert_with(|| FileSource {
                        file,
                        name: module.path.display().to_string(),
                    });
                }
                MappedFile {
                    start: mapping.start,
                    end: mapping.end,
                    file_offset: mapping.file_offset,
                    key,
                }
            })
            .collect();
        self.pending.push(ProcessTables {
            tgid,
            mappings,
            sources,
        });
        self.requested.insert(tgid);
    }

    /// Tells the loader which processes were just sampled (their tables
    /// go first, and are kept longest under the budget).
    pub fn sampled(&mut self, tgids: Vec<u32>) {
        self.flush();
        self.loader.sampled(tgids);
    }

    /// Tells the loader that `tgids` exited.
    pub fn exited(&mut self, tgids: &[u32]) {
        self.flush();
        let gone: Vec<u32> = tgids
            .iter()
            .copied()
            .filter(|tgid| self.requested.remove(tgid))
            .collect();
        self.loader.exited(gone);
    }

    /// Tells the loader about every requested process the table no longer
    /// holds (pruned after exiting).
    pub fn forget_pruned(&mut self, processes: &ProcessTable) {
        let gone: Vec<u32> = self
            .requested
            .iter()
            .copied()
            .filter(|&tgid| processes.process(tgid).is_none())
            .collect();
        self.exited(&gone);
    }

    /// Waits until the tables requested so far are built, at most
    /// `timeout` (see [`TableLoader::settle`]).
    pub fn settle(&mut self, timeout: Duration, progress: impl FnMut(&LoaderStats)) -> bool {
        self.flush();
        self.loader.settle(timeout, progress)
    }

    /// The loader's counters.
    pub fn stats(&self) -> LoaderStats {
        self.loader.stats()
    }
}
