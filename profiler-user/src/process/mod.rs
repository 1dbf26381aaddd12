//! Snapshots of processes' memory maps, so user addresses can be turned into
//! (file, file offset) even after a process has exited.
//!
//! The kernel program announces each process the first time it samples it;
//! [`ProcessTable::observe`] then records its executable mappings and opens
//! every mapped file once (shared by all processes mapping it, keyed by
//! device and inode). Symbolization later reads the files through those open
//! descriptors ([`Module::open_file`]), whether or not the process, or even
//! the file's directory entry, still exists.

mod busy;
mod cgroups;
pub mod cpython;
mod lifecycle;
pub mod maps;
mod otel_context;
pub mod perfmap;
mod procfs;
mod python;
mod selection;
mod thread_context;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) use lifecycle::Lifecycle;
use lifecycle::{lifecycle, Identity};
use maps::{MapEntry, MapPath};
use perfmap::{JitFunction, PerfMap, Runtime};
use procfs::read_proc;

pub use busy::CpuTimes;
pub use otel_context::ContextDiscovery;
pub use python::PythonProcesses;
pub use selection::{alive, Selection};

use crate::container::ContainerRef;
use crate::sampler::{Drained, ExecGenerations, FileMapping, Leader};

/// What [`ProcessTable::track`] found in a drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// Processes snapshotted (new, exec'd, reused pid) or whose executable
    /// mappings changed (`dlopen`): their unwind tables need loading.
    pub snapshotted: Vec<u32>,
    /// Processes with samples that have left `/proc`.
    pub exited: Vec<u32>,
}

/// Index of a [`Module`] in a [`ProcessTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(u32);

#[cfg(test)]
impl ModuleId {
    /// Module `n`, for tests of later stages.
    pub(crate) fn for_tests(n: u32) -> Self {
        Self(n)
    }
}

/// A mapped executable file (binary or shared library).
#[derive(Debug)]
pub struct Module {
    /// Path as the (first) process that mapped it saw it.
    pub path: PathBuf,
    /// GNU build id, when the file has one.
    pub build_id: Option<Vec<u8>>,
    /// Open handle keeping the file readable; `None` when it could not be opened.
    file: Option<File>,
    /// With no file: the process it was first seen in was gone before the
    /// file could be opened, so the next process mapping it tries again.
    reopen: bool,
}

impl Module {
    /// Another descriptor of the open file, for reading it elsewhere (a
    /// worker thread) independently of this table's lifetime.
    pub fn open_file(&self) -> Option<File> {
        self.file.as_ref()?.try_clone().ok()
    }

    /// The build id as lowercase hex.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_deref().map(crate::build_id::hex)
    }
}

/// An executable file mapping of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecMapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The mapped file.
    pub module: ModuleId,
}

/// What a process looked like when last observed.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`):
    /// tells a reused pid from the process that had it before.
    pub start_time: u64,
    /// Name of the main thread (`comm`, field 2 of `/proc/<pid>/stat`;
    /// bytes that are not UTF-8 replaced).
    pub executable_name: String,
    /// Path of the executable; `None` for kernel threads.
    pub executable_path: Option<PathBuf>,
    /// Executable file mappings, sorted by start address.
    pub mappings: Vec<ExecMapping>,
    /// Address range of the vDSO.
    pub vdso: Option<(u64, u64)>,
    /// The container the process runs in; `None` on the host or when its
    /// cgroup could not be read (it is profiled either way).
    pub container: Option<ContainerRef>,
    /// Its cgroup paths, unified hierarchy first (for `--cgroup`).
    pub cgroups: Vec<String>,
    /// The exec generation the mappings belong to; `None` when an exec
    /// happened while they were read (they may mix two images).
    pub exec_gen: Option<u32>,
    exe_identity: Option<(u64, u64)>,
    refreshed: Instant,
    /// Whether the maps it was read from held an OpenTelemetry process
    /// context mapping (which thread-context discovery looks for).
    context_mapping: bool,
}

impl ProcessInfo {
    fn identity(&self) -> Identity {
        Identity {
            start_time: self.start_time,
            exe: self.exe_identity,
        }
    }
}

/// Where a user address points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Into a mapped file.
    Module {
        /// The file.
        module: ModuleId,
        /// Offset of the address in the file.
        file_offset: u64,
        /// Start of the mapping that holds the address.
        mapping_start: u64,
        /// End of that mapping.
        mapping_end: u64,
        /// File offset of `mapping_start`.
        mapping_file_offset: u64,
    },
    /// Into the vDSO.
    Vdso,
    /// Nowhere known, and why.
    Unknown(Unresolved),
}

/// Why a user address could not be resolved to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unresolved {
    /// The process exited before its maps were read, and the kernel
    /// recorded no file for the address.
    ProcessGone,
    /// Only a snapshot of another image of the process (taken after, or
    /// before, an `exec`) is known, and the kernel recorded no file.
    OtherImage,
    /// The kernel recorded the file, but hostprof never opened a file with
    /// its identity (no live process mapped it when read).
    FileNotOpen,
    /// In no file mapping of the process (JIT or other anonymous code).
    NoMapping,
}

/// Errors from reading a process's `/proc` entries.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The process exited before it could be read.
    #[error("process {pid} exited before its memory map could be read")]
    Gone {
        /// Process id.
        pid: u32,
    },
    /// A `/proc` file could not be read for another reason.
    #[error("reading {path} failed (hostprof needs root or CAP_SYS_PTRACE to read other processes' maps)")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file had unexpected contents.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Re-reading a process's maps on an unknown address happens at most this often.
const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// Memory-map snapshots of every observed process and the files they map.
#[derive(Debug, Default)]
pub struct ProcessTable {
    processes: HashMap<u32, ProcessInfo>,
    /// File mappings the kernel recorded for sampled frames, by process
    /// image (tgid, exec generation).
    files: HashMap<(u32, u32), RecordedFiles>,
    /// Prunes so far: recorded files untouched for a whole window go.
    round: u64,
    generations: Generations,
    modules: HashMap<ModuleId, Module>,
    module_ids: HashMap<(u32, u32, u64), ModuleId>,
    next_module: u32,
    /// Processes found gone at the last [`Self::prune`]; dropped at the next
    /// one, so samples drained just after an exit still find their snapshot.
    gone: HashSet<u32>,
    /// Perf maps (JIT code by name) read so far, by process.
    perf_maps: HashMap<u32, PerfMapState>,
    /// What each cgroup seen says, by cgroup id.
    cgroups: cgroups::CgroupCache,
}

/// The start of an announced leader in `/proc/PID/stat`'s clock ticks.
fn leader_ticks(leader: Leader) -> u64 {
    procfs::start_time_ticks(leader.start_boottime_ns)
}

/// Whether [`ProcessTable::observe_with`] believes the kernel's stamp of
/// a held process's exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    Believed,
    Ignored,
}

/// Where the exec generations come from (the kernel's map; none in tests).
struct Generations(Box<dyn ExecGenerations + Send>);

impl Default for Generations {
    fn default() -> Self {
        Self(Box::new(()))
    }
}

impl std::fmt::Debug for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Generations")
    }
}

/// The recorded file mappings of one process image, sorted by start.
#[derive(Debug, Default)]
struct RecordedFiles {
    mappings: Vec<FileMapping>,
    /// The prune round of the last one added.
    round: u64,
}

/// A process's perf map and the file it was read from.
#[derive(Debug)]
struct PerfMapState {
    /// (device, inode) of the file.
    file: (u64, u64),
    map: PerfMap,
}

impl ProcessTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty table that reads each snapshot's exec generation from
    /// `generations`.
    pub fn with_generations(generations: Box<dyn ExecGenerations + Send>) -> Self {
        Self {
            generations: Generations(generations),
            ..Self::default()
        }
    }

    /// The current exec generation of `tgid` (see [`ExecGenerations`]).
    pub fn generation(&self, tgid: u32) -> u32 {
        self.generations.0.generation(tgid)
    }

    /// True when the kernel stamped the exit of process `pid` started at
    /// `start_time` (ticks; see [`lifecycle::stamped_exit`]).
    fn stamped_exit(&self, pid: u32, start_time: u64) -> bool {
        lifecycle::stamped_exit(start_time, self.generations.0.state(pid))
    }

    /// True when the kernel stamped the exit of the process held as
    /// `tgid`: nothing of it is left to read.
    pub(crate) fn known_exited(&self, tgid: u32) -> bool {
        self.processes
            .get(&tgid)
            .is_some_and(|info| self.stamped_exit(tgid, info.start_time))
    }

    /// True when `tgid`'s snapshot of image `exec_gen` was read at most
    /// `within` before `now` from maps without an OpenTelemetry process
    /// context mapping: reading its maps again for one would find none.
    fn read_without_context(
        &self,
        tgid: u32,
        exec_gen: u32,
        now: Instant,
        within: Duration,
    ) -> bool {
        self.processes.get(&tgid).is_some_and(|info| {
            info.exec_gen == Some(exec_gen)
                && !info.context_mapping
                && now.saturating_duration_since(info.refreshed) <= within
        })
    }

    /// Remembers a file mapping the kernel recorded for a sampled frame:
    /// frames of that process image in it resolve through any open file of
    /// the same identity, whether or not the process was snapshotted.
    pub fn add_file(&mut self, mapping: FileMapping) {
        let files = self
            .files
            .entry((mapping.tgid, mapping.exec_gen))
            .or_default();
        files.round = self.round;
        let i = files.mappings.partition_point(|m| m.start < mapping.start);
        match files.mappings.get_mut(i) {
            Some(known) if known.start == mapping.start => *known = mapping,
            _ => files.mappings.insert(i, mapping),
        }
    }

    /// Snapshots `pid` if it is new, or again if it exec'd or its pid was
    /// reused; cheap (one small read) when nothing changed. A known process
    /// that is exiting or gone keeps its last snapshot. Returns how the pid
    /// stands ([`Lifecycle::snapshot`] tells whether a snapshot was taken).
    pub(crate) fn observe(&mut self, pid: u32) -> Result<Lifecycle, ProcessError> {
        self.observe_announced(pid, 0, None)
    }

    /// [`Self::observe`] for a process drained with samples of exec
    /// generation `sampled_gen` at the newest: a pid not held whose exit
    /// the kernel stamped right after that image is not looked for (an
    /// exit stamp at `sampled_gen + 1` says the bump from the sampled
    /// image was an exit, as an exec clears the stamp: whoever holds the
    /// pid now is another process).
    ///
    /// A held pid with samples taken after a stamped exit (at the stamped
    /// generation) is read in `/proc`: they may be of the held process's
    /// last moments, or of another that forked into the pid since.
    fn observe_sampled(&mut self, pid: u32, sampled_gen: u32) -> Result<Lifecycle, ProcessError> {
        let state = self.generations.0.state(pid);
        if state.exited_ticks.is_none() {
            return self.observe(pid);
        }
        if !self.processes.contains_key(&pid) {
            if state.generation == sampled_gen.wrapping_add(1) {
                return Ok(Lifecycle::Gone);
            }
            return self.observe(pid);
        }
        let stamp = if state.generation == sampled_gen {
            Stamp::Ignored
        } else {
            Stamp::Believed
        };
        self.observe_with(pid, 0, None, stamp)
    }

    /// [`Self::observe`] for a process the kernel announced in cgroup
    /// `cgroup_id` (0: not known), with its leader's start and name when
    /// the kernel read them (a new pid's snapshot then reads no `stat`).
    pub(crate) fn observe_announced(
        &mut self,
        pid: u32,
        cgroup_id: u64,
        leader: Option<Leader>,
    ) -> Result<Lifecycle, ProcessError> {
        // Without a leader (a fork the memory profile follows, a process
        // on the CPU as sampling starts) nothing says the announcement is
        // of the held process whose exit is stamped.
        let stamp = if leader.is_some() {
            Stamp::Believed
        } else {
            Stamp::Ignored
        };
        self.observe_with(pid, cgroup_id, leader, stamp)
    }

    /// [`Self::observe_announced`], believing the kernel's stamp of a
    /// held process's exit or not (`stamp`).
    fn observe_with(
        &mut self,
        pid: u32,
        cgroup_id: u64,
        leader: Option<Leader>,
        stamp: Stamp,
    ) -> Result<Lifecycle, ProcessError> {
        if pid == 0 {
            return Ok(Lifecycle::Unchanged); // the idle task has no /proc entry
        }
        let state = match self.processes.get(&pid) {
            // A pid not held is snapshotted whatever its identity: the
            // snapshot reads its start time first and fails as `Gone` if
            // it exited, so reading the identity first would read the
            // same `stat` twice (most new processes on a busy host are
            // seen once). Unless the kernel stamped the exit of the very
            // process it announced: most of a build host's are gone
            // before the drain that brings them.
            None if leader.is_some_and(|leader| self.stamped_exit(pid, leader_ticks(leader))) => {
                return Ok(Lifecycle::Gone)
            }
            None => Lifecycle::New,
            // Announced with a later start: another process has the pid
            // now. With an earlier one: a late announcement of a process
            // the held one replaced, which says nothing of it.
            Some(info) if leader.is_some_and(|leader| leader_ticks(leader) > info.start_time) => {
                Lifecycle::PidReused
            }
            Some(info) if leader.is_some_and(|leader| leader_ticks(leader) < info.start_time) => {
                return Ok(Lifecycle::Unchanged)
            }
            Some(info) if stamp == Stamp::Believed && self.stamped_exit(pid, info.start_time) => {
                Lifecycle::Gone
            }
            Some(info) => lifecycle(Some(info.identity()), procfs::identity(pid)?),
        };
        // The leader's facts describe the process the kernel sampled; a
        // known pid's identity is compared with what `/proc` says now.
        let leader = leader.filter(|_| state == Lifecycle::New);
        if state.snapshot() {
            match self.snapshot(pid, cgroup_id, leader) {
                Ok(info) => {
                    self.processes.insert(pid, info);
                }
                // Exited between the two reads.
                Err(ProcessError::Gone { .. }) => return Ok(Lifecycle::Gone),
                Err(err) => return Err(err),
            }
        }
        Ok(state)
    }

    /// Brings the snapshots of a drain's processes up to date: snapshots
    /// new, exec'd and reused pids, and re-reads the maps of processes
    /// whose stacks hold code outside their snapshot (a library loaded
    /// with `dlopen` since; at most every half second per process). This
    /// is the one path that refreshes snapshots; resolving never does.
    pub fn track(&mut self, drained: &Drained) -> Tracked {
        let mut tracked = Tracked::default();
        for (tgid, exec_gen) in drained.newest_images() {
            match self.observe_sampled(tgid, exec_gen) {
                Ok(state) if state.snapshot() => tracked.snapshotted.push(tgid),
                Ok(Lifecycle::Gone) => tracked.exited.push(tgid),
                Ok(_) => {}
                Err(err) => log::debug!("process {tgid}: {err}"),
            }
        }
        // Processes with code outside every file mapping: a library loaded
        // since the snapshot, or JIT code a perf map may name. And
        // processes whose samples are of a newer image than the snapshot
        // (an exec of the same file, which `observe` cannot tell).
        let mut unmapped = BTreeSet::new();
        let mut newer_image = BTreeSet::new();
        // Those found gone above have nothing left to read.
        let exited: BTreeSet<u32> = tracked.exited.iter().copied().collect();
        for sample in &drained.samples {
            let thread = &sample.key.thread;
            let (tgid, exec_gen) = (thread.tgid, thread.exec_gen);
            if exited.contains(&tgid) {
                continue;
            }
            let Some(info) = self.processes.get(&tgid) else {
                continue;
            };
            if info.exec_gen != Some(exec_gen) {
                if info.exec_gen.is_none_or(|known| known < exec_gen)
                    && self.generations.0.generation(tgid) == exec_gen
                {
                    newer_image.insert(tgid);
                }
                continue;
            }
            let user = &sample.key.user_stack;
            if tgid == 0 || user.is_empty() || unmapped.contains(&tgid) {
                continue;
            }
            if self.has_unmapped(tgid, exec_gen, user) {
                unmapped.insert(tgid);
            }
        }
        for tgid in newer_image {
            if self.resnapshot(tgid) && !tracked.snapshotted.contains(&tgid) {
                tracked.snapshotted.push(tgid);
            }
        }
        for tgid in unmapped {
            if self.refresh(tgid) && !tracked.snapshotted.contains(&tgid) {
                tracked.snapshotted.push(tgid);
            }
            self.read_perf_map(tgid);
        }
        tracked
    }

    /// Reads what was appended to `pid`'s perf map since the last read (all
    /// of it the first time, or when the file was replaced or written
    /// again).
    fn read_perf_map(&mut self, pid: u32) {
        let known = self.perf_maps.get(&pid);
        let from = known.map_or(0, |state| state.map.consumed());
        let tail = known.map_or(&[][..], |state| state.map.tail());
        match procfs::read_perf_map(pid, known.map(|state| state.file), from, tail) {
            Ok(None) => {}
            Ok(Some(read)) => {
                let state = match self.perf_maps.get_mut(&pid) {
                    Some(state) if read.from == from && read.file == state.file => {
                        state.map.extend(&read.text);
                        state
                    }
                    _ => self
                        .perf_maps
                        .entry(pid)
                        .insert_entry(PerfMapState {
                            file: read.file,
                            map: PerfMap::parse(&read.text),
                        })
                        .into_mut(),
                };
                log::debug!(
                    "process {pid}: perf map of {} entries ({} lines skipped)",
                    state.map.len(),
                    state.map.malformed()
                );
            }
            Err(err) => log::debug!("process {pid}: perf map not read: {err}"),
        }
    }

    /// The JIT function at `addr` in `pid`, named by its perf map, and the
    /// runtime that wrote it.
    pub fn jit_function(&self, pid: u32, addr: u64) -> Option<(JitFunction, Runtime)> {
        let raw = self.perf_maps.get(&pid)?.map.find(addr)?;
        let info = self.processes.get(&pid);
        let executable = info
            .and_then(|i| i.executable_path.as_deref())
            .and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .or_else(|| info.map(|i| i.executable_name.clone()))
            .unwrap_or_default();
        let runtime = Runtime::of_executable(&executable);
        Some((JitFunction::parse(raw, runtime), runtime))
    }

    /// Processes whose snapshots are held.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// True when no process is held.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// The last snapshot of `pid`.
    pub fn process(&self, pid: u32) -> Option<&ProcessInfo> {
        self.processes.get(&pid)
    }

    /// The module of `id`.
    ///
    /// # Panics
    ///
    /// When `id` was pruned: ids are only valid until the [`Self::prune`]
    /// after the last process mapping the module went away.
    pub fn module(&self, id: ModuleId) -> &Module {
        &self.modules[&id]
    }

    /// Forgets processes that have exited (or whose pid was reused) since
    /// the previous call, and the modules no remaining process maps.
    /// Returns those modules with their ids, so caches keyed by them can be
    /// cleared before the modules are dropped (which closes their files).
    /// Keeps a long-running profiler's memory and open files proportional
    /// to the live processes, not to every process ever seen.
    pub fn prune(&mut self) -> Vec<(ModuleId, Module)> {
        let gone: HashSet<u32> = self
            .processes
            .values()
            .filter(|info| {
                self.stamped_exit(info.pid, info.start_time)
                    || procfs::read_start_time(info.pid).ok() != Some(info.start_time)
            })
            .map(|info| info.pid)
            .collect();
        let expired = lifecycle::expired(&gone, &self.gone);
        for pid in &expired {
            self.processes.remove(pid);
            self.perf_maps.remove(pid);
        }
        self.gone = gone;
        // Recorded files of images no longer snapshotted go once a whole
        // window added none: the samples that needed them are resolved.
        let round = self.round;
        let before = self.files.len();
        let processes = &self.processes;
        self.files.retain(|&(pid, exec_gen), files| {
            files.round >= round
                || processes
                    .get(&pid)
                    .is_some_and(|info| info.exec_gen == Some(exec_gen))
        });
        self.round += 1;
        if expired.is_empty() && self.files.len() == before {
            return Vec::new();
        }
        let module_ids = &self.module_ids;
        let mapped: HashSet<ModuleId> = self
            .processes
            .values()
            .flat_map(|info| info.mappings.iter().map(|m| m.module))
            .chain(self.files.values().flat_map(|files| {
                files
                    .mappings
                    .iter()
                    .filter_map(|m| module_ids.get(&(m.dev.0, m.dev.1, m.inode)).copied())
            }))
            .collect();
        let unused: Vec<ModuleId> = self
            .modules
            .keys()
            .filter(|id| !mapped.contains(id))
            .copied()
            .collect();
        self.module_ids.retain(|_, id| mapped.contains(id));
        unused
            .into_iter()
            .filter_map(|id| self.modules.remove(&id).map(|module| (id, module)))
            .collect()
    }

    /// Where `addr` points in the image `exec_gen` of `pid`: through its
    /// snapshot when that is of the same image, else through the file the
    /// kernel recorded at the sample. Read-only: [`Self::track`] keeps the
    /// snapshots current.
    pub fn resolve(&self, pid: u32, exec_gen: u32, addr: u64) -> Resolved {
        let info = self.processes.get(&pid);
        let same_image = info.filter(|info| info.exec_gen == Some(exec_gen));
        if let Some(resolved) = same_image.and_then(|info| lookup(info, addr)) {
            return resolved;
        }
        let recorded = self.files.get(&(pid, exec_gen)).and_then(|files| {
            let i = files.mappings.partition_point(|m| m.start <= addr);
            files
                .mappings
                .get(i.checked_sub(1)?)
                .filter(|m| addr < m.end)
        });
        if let Some(mapping) = recorded {
            return match self
                .module_ids
                .get(&(mapping.dev.0, mapping.dev.1, mapping.inode))
            {
                Some(&module) => Resolved::Module {
                    module,
                    file_offset: addr - mapping.start + mapping.file_offset,
                    mapping_start: mapping.start,
                    mapping_end: mapping.end,
                    mapping_file_offset: mapping.file_offset,
                },
                None => Resolved::Unknown(Unresolved::FileNotOpen),
            };
        }
        Resolved::Unknown(match (same_image, info) {
            (Some(_), _) => Unresolved::NoMapping,
            (None, Some(_)) => Unresolved::OtherImage,
            (None, None) => Unresolved::ProcessGone,
        })
    }

    /// Re-reads `pid`'s maps when one of `addrs` lies outside every mapping
    /// of its snapshot (a library loaded since), at most every half second.
    /// True when its executable mappings changed.
    #[cfg(test)]
    fn refresh_if_unmapped(&mut self, pid: u32, addrs: &[u64]) -> bool {
        let exec_gen = self.processes.get(&pid).and_then(|info| info.exec_gen);
        exec_gen.is_some_and(|exec_gen| self.has_unmapped(pid, exec_gen, addrs))
            && self.refresh(pid)
    }

    /// True when one of `addrs` of the image `exec_gen` resolves to no file
    /// (false without a snapshot of that image).
    fn has_unmapped(&self, pid: u32, exec_gen: u32, addrs: &[u64]) -> bool {
        addrs.iter().any(|&addr| {
            matches!(
                self.resolve(pid, exec_gen, addr),
                Resolved::Unknown(Unresolved::NoMapping | Unresolved::FileNotOpen)
            )
        })
    }

    /// Snapshots `pid` again unless that was done less than
    /// [`REFRESH_INTERVAL`] ago; true when its executable mappings changed.
    fn refresh(&mut self, pid: u32) -> bool {
        let stale = self
            .processes
            .get(&pid)
            .is_none_or(|info| info.refreshed.elapsed() >= REFRESH_INTERVAL);
        stale && self.resnapshot(pid)
    }

    /// Snapshots `pid` again, unless it is exiting (a zombie's maps read
    /// empty: its last snapshot still describes its samples); true when
    /// its executable mappings changed.
    fn resnapshot(&mut self, pid: u32) -> bool {
        let Ok(info) = self.snapshot(pid, 0, None) else {
            return false;
        };
        let known = self.processes.get(&pid);
        let changed = match lifecycle(known.map(ProcessInfo::identity), Some(info.identity())) {
            // A zombie's maps read empty: keep what it looked like alive.
            Lifecycle::Exiting | Lifecycle::Gone => return false,
            Lifecycle::Unchanged => known.is_some_and(|k| k.mappings != info.mappings),
            Lifecycle::New | Lifecycle::Exec | Lifecycle::PidReused => true,
        };
        self.processes.insert(pid, info);
        changed
    }

    /// Reads `pid`'s snapshot; `cgroup_id` is the cgroup the kernel
    /// announced it in (0: not known).
    fn snapshot(
        &mut self,
        pid: u32,
        cgroup_id: u64,
        leader: Option<Leader>,
    ) -> Result<ProcessInfo, ProcessError> {
        let exec_gen = self.generations.0.generation(pid);
        let (start_time, executable_name) = match leader {
            // As the kernel announced it, if of the image read now: one
            // read of `/proc` fewer for every new process (hundreds a
            // second on a build host). A process gone since fails the
            // `maps` read below.
            Some(leader) if leader.exec_gen == exec_gen => (
                procfs::start_time_ticks(leader.start_boottime_ns),
                leader.name(),
            ),
            _ => procfs::read_stat(pid)?,
        };
        let maps_path = format!("/proc/{pid}/maps");
        let text = read_proc(&maps_path, pid)?;
        // Code (the vDSO too) and the context mapping thread-context
        // discovery looks for: the data mappings are most of the lines.
        let wanted = |perms: &str, path: &str| {
            perms.as_bytes().get(2) == Some(&b'x')
                || thread_context::is_process_context_mapping(path)
        };
        let entries =
            maps::parse_selected(&text, wanted).map_err(|err| ProcessError::Malformed {
                path: maps_path,
                reason: err.to_string(),
            })?;
        let executable_path = std::fs::read_link(format!("/proc/{pid}/exe")).ok();

        let mut mappings = Vec::new();
        let mut vdso = None;
        for entry in &entries {
            if !entry.executable {
                continue;
            }
            match &entry.path {
                MapPath::File(path) | MapPath::Deleted(path) if entry.inode != 0 => {
                    let module = self.module_for(pid, entry, path);
                    mappings.push(ExecMapping {
                        start: entry.start,
                        end: entry.end,
                        file_offset: entry.file_offset,
                        module,
                    });
                }
                MapPath::Pseudo(name) if name == "[vdso]" => vdso = Some((entry.start, entry.end)),
                _ => {}
            }
        }
        mappings.sort_by_key(|m| m.start);
        let context_mapping = entries.iter().any(otel_context::is_context_mapping);
        let cgroup = self.cgroups.facts(pid, cgroup_id);
        Ok(ProcessInfo {
            pid,
            start_time,
            executable_name,
            executable_path,
            mappings,
            vdso,
            container: cgroup.container,
            cgroups: cgroup.paths,
            // The same generation before and after: one image was read.
            exec_gen: (self.generations.0.generation(pid) == exec_gen).then_some(exec_gen),
            exe_identity: procfs::exe_identity(pid),
            refreshed: Instant::now(),
            context_mapping,
        })
    }

    fn module_for(&mut self, pid: u32, entry: &MapEntry, path: &Path) -> ModuleId {
        let key = (entry.dev.0, entry.dev.1, entry.inode);
        if let Some(&id) = self.module_ids.get(&key) {
            // The process it was first seen in may have exited before the
            // file could be opened: open it through this one, or every
            // later process mapping it would go unsymbolized too.
            // A file no one can open (refused) is not tried again.
            let module = self.modules.get_mut(&id).filter(|m| m.reopen);
            if let Some(module) = module {
                match procfs::open_mapped_file(pid, entry, path) {
                    Ok(file) => {
                        module.build_id = crate::build_id::read(&file);
                        module.file = Some(file);
                        module.reopen = false;
                    }
                    Err(err) => module.reopen = procfs::gone(&err),
                }
            }
            return id;
        }
        let opened = procfs::open_mapped_file(pid, entry, path);
        let reopen = opened.as_ref().is_err_and(procfs::gone);
        let file = opened.ok();
        let build_id = file.as_ref().and_then(crate::build_id::read);
        let id = ModuleId(self.next_module);
        self.next_module = self
            .next_module
            .checked_add(1)
            .expect("fewer than 2^32 modules over the profiler's life");
        self.modules.insert(
            id,
            Module {
                path: path.to_owned(),
                build_id,
                file,
                reopen,
            },
        );
        self.module_ids.insert(key, id);
        id
    }
}

fn lookup(info: &ProcessInfo, addr: u64) -> Option<Resolved> {
    if info
        .vdso
        .is_some_and(|(start, end)| (start..end).contains(&addr))
    {
        return Some(Resolved::Vdso);
    }
    let i = info.mappings.partition_point(|m| m.start <= addr);
    let mapping = info.mappings.get(i.checked_sub(1)?)?;
    (addr < mapping.end).then_some(Resolved::Module {
        module: mapping.module,
        file_offset: addr - mapping.start + mapping.file_offset,
        mapping_start: mapping.start,
        mapping_end: mapping.end,
        mapping_file_offset: mapping.file_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::ExecState;

    #[inline(never)]
    fn marker() -> u32 {
        std::hint::black_box(7)
    }

    #[test]
    fn resolves_own_code_to_the_test_binary() {
        let pid = std::process::id();
        let mut table = ProcessTable::new();
        table.observe(pid).unwrap();
        let info = table.process(pid).unwrap();
        assert!(info.start_time > 0);
        assert!(!info.mappings.is_empty());
        let exe = std::env::current_exe().unwrap();
        let Resolved::Module {
            module,
            file_offset,
            mapping_start,
            mapping_end,
            ..
        } = table.resolve(pid, 0, marker as *const () as u64)
        else {
            panic!("own code must be in a file mapping");
        };
        assert!(mapping_start < mapping_end && file_offset > 0);
        let module = table.module(module);
        assert_eq!(
            std::fs::canonicalize(&module.path).unwrap(),
            std::fs::canonicalize(&exe).unwrap()
        );
        let expected = blazesym::helper::read_elf_build_id(&exe)
            .unwrap()
            .map(|id| id.into_owned());
        assert_eq!(module.build_id, expected);
        assert_eq!(
            table.resolve(pid, 0, 8),
            Resolved::Unknown(Unresolved::NoMapping)
        );
        // Observing again is a no-op for an unchanged process.
        table.observe(pid).unwrap();
    }

    #[test]
    fn code_mapped_after_the_snapshot_refreshes_it() {
        let me = std::process::id();
        let mut table = ProcessTable::new();
        table.observe(me).unwrap();
        let own = resolves_own_code_to_the_test_binary as *const () as u64;
        assert!(!table.refresh_if_unmapped(me, &[own]), "known code");
        // Map a file executable, as dlopen would, after the snapshot.
        let copy = tempfile::NamedTempFile::new().unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), copy.path()).unwrap();
        let file = File::open(copy.path()).unwrap();
        // SAFETY: a private read-only mapping of a file nobody writes.
        let code = unsafe { memmap2::MmapOptions::new().len(4096).map_exec(&file) }.unwrap();
        std::thread::sleep(REFRESH_INTERVAL);
        assert!(table.refresh_if_unmapped(me, &[code.as_ptr() as u64]));
        assert!(matches!(
            table.resolve(me, 0, code.as_ptr() as u64),
            Resolved::Module { .. }
        ));
        assert!(
            !table.refresh_if_unmapped(me, &[code.as_ptr() as u64]),
            "mapped now"
        );
    }

    /// A tenant's program whose name (and file name) is not UTF-8 is
    /// still snapshotted, named, and kept by prunes while it runs.
    #[test]
    fn a_name_that_is_not_utf8_does_not_hide_a_process() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join(std::ffi::OsStr::from_bytes(b"sl\xffep"));
        std::fs::copy("/bin/sleep", &program).unwrap();
        // Another test thread forking while the copy was open for writing
        // makes exec fail with ETXTBSY for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut child = loop {
            match std::process::Command::new(&program).arg("30").spawn() {
                Ok(child) => break child,
                Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => {
                    assert!(Instant::now() < deadline, "{err}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => panic!("{err}"),
            }
        };
        let pid = child.id();
        // Wait for the exec to map the program (its name changes first).
        let name = "sl\u{fffd}ep";
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut table = loop {
            let mut table = ProcessTable::new();
            table.observe(pid).unwrap();
            let info = table.process(pid).unwrap();
            let mapped = info.mappings.iter().any(|m| {
                let module = table.module(m.module);
                module.path.ends_with(name) && module.open_file().is_some()
            });
            if mapped {
                assert_eq!(info.executable_name, name);
                break table;
            }
            assert!(Instant::now() < deadline, "never snapshotted as {name}");
            std::thread::sleep(Duration::from_millis(5));
        };
        table.prune();
        table.prune();
        assert!(table.process(pid).is_some(), "a prune took it for gone");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn exited_process_stays_readable() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Right after spawn the child may not have exec'd yet, and exec
        // switches /proc/<pid>/exe before it maps the new binary: wait
        // until the snapshot shows sleep's own mapping.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut table = loop {
            let mut table = ProcessTable::new();
            table.observe(pid).unwrap();
            let info = table.process(pid).unwrap();
            if info
                .mappings
                .iter()
                .any(|m| table.module(m.module).path.ends_with("sleep"))
            {
                break table;
            }
            assert!(Instant::now() < deadline, "child never mapped sleep");
            std::thread::sleep(Duration::from_millis(5));
        };
        let exe_module = table.process(pid).unwrap().mappings[0].module;
        child.kill().unwrap();
        // Not reaped yet: a zombie, whose maps read empty. Observing it
        // must keep the snapshot taken while it ran.
        let deadline = Instant::now() + Duration::from_secs(5);
        while procfs::exe_identity(pid).is_some() {
            assert!(Instant::now() < deadline, "child never became a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        table.observe(pid).unwrap();
        assert!(
            table
                .process(pid)
                .unwrap()
                .mappings
                .iter()
                .any(|m| m.module == exe_module),
            "the zombie's snapshot was replaced by an empty one"
        );
        // Nor may the refresh for an unknown address (which re-reads the
        // maps of a live process, at most every half second) empty it.
        let inside = table.process(pid).unwrap().mappings[0].start;
        std::thread::sleep(REFRESH_INTERVAL);
        assert!(!table.refresh_if_unmapped(pid, &[8]));
        assert_eq!(
            table.resolve(pid, 0, 8),
            Resolved::Unknown(Unresolved::NoMapping)
        );
        assert!(matches!(
            table.resolve(pid, 0, inside),
            Resolved::Module { module, .. } if module == exe_module
        ));
        child.wait().unwrap();
        table.observe(pid).unwrap();
        let mut magic = [0u8; 4];
        let file = table.module(exe_module).open_file().unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).unwrap();
        assert_eq!(&magic, b"\x7fELF");
        assert_eq!(ProcessTable::new().observe(pid).unwrap(), Lifecycle::Gone);

        // Pruning keeps the exited process for one more round, then drops
        // it and the modules only it mapped; live processes stay.
        let me = std::process::id();
        table.observe(me).unwrap();
        assert!(table.prune().is_empty());
        assert!(table.process(pid).is_some());
        let dropped: Vec<ModuleId> = table.prune().into_iter().map(|(id, _)| id).collect();
        assert!(table.process(pid).is_none());
        assert!(table.process(me).is_some());
        assert!(dropped.contains(&exe_module), "{dropped:?}");
        for mapping in &table.process(me).unwrap().mappings {
            assert!(!dropped.contains(&mapping.module));
            table.module(mapping.module);
        }
        assert!(table.prune().is_empty());
    }

    #[test]
    fn a_file_first_seen_in_a_process_gone_is_opened_through_the_next() {
        let me = std::process::id();
        let text = std::fs::read_to_string(format!("/proc/{me}/maps")).unwrap();
        let addr = marker as *const () as u64;
        let entry = maps::parse(&text)
            .unwrap()
            .into_iter()
            .find(|e| e.start <= addr && addr < e.end)
            .unwrap();
        let MapPath::File(path) = &entry.path else {
            panic!("own code is in a file: {entry:?}");
        };
        let mut table = ProcessTable::new();
        // A process that exited between reading its maps and opening
        // the file: the module is known, without a file.
        let gone = table.module_for(u32::MAX - 3, &entry, path);
        assert!(table.module(gone).open_file().is_none());
        assert_eq!(table.module(gone).build_id, None);
        // A live process mapping the same file opens it.
        table.observe(me).unwrap();
        let Some(Resolved::Module { module, .. }) = lookup(table.process(me).unwrap(), addr) else {
            panic!("own code resolves");
        };
        assert_eq!(module, gone);
        assert!(table.module(gone).open_file().is_some());
        let expected = blazesym::helper::read_elf_build_id(&std::env::current_exe().unwrap())
            .unwrap()
            .map(|id| id.into_owned());
        assert_eq!(table.module(gone).build_id, expected);
    }

    /// A table that sees every process at exec generation `generation`.
    fn table_at_generation(generation: u32) -> ProcessTable {
        table_stamped(ExecState {
            generation,
            exited_ticks: None,
        })
    }

    /// A table that sees every process in `state`.
    fn table_stamped(state: ExecState) -> ProcessTable {
        struct Fixed(ExecState);
        impl ExecGenerations for Fixed {
            fn state(&self, _tgid: u32) -> ExecState {
                self.0
            }
        }
        ProcessTable::with_generations(Box::new(Fixed(state)))
    }

    /// The leader's start as the kernel announces it, in ns.
    fn boottime_ns(start_ticks: u64) -> u64 {
        start_ticks * crate::sampler::ns_per_tick()
    }

    /// This process, as held in a table that saw no stamp.
    fn held_self() -> ProcessInfo {
        let me = std::process::id();
        let mut table = table_at_generation(4);
        table.observe(me).unwrap();
        table.processes.remove(&me).unwrap()
    }

    /// A process whose exit the kernel stamped with the start it was
    /// announced (or read) with is gone without a look at `/proc`: this
    /// test's own process, alive, reads as gone when so stamped.
    #[test]
    fn a_stamped_exit_is_believed_without_reading_proc() {
        let me = std::process::id();
        let (start_time, _) = procfs::read_stat(me).unwrap();
        let exited = |ticks: u64| ExecState {
            generation: 5,
            exited_ticks: Some(ticks as u32),
        };
        let leader = Leader {
            exec_gen: 4,
            start_boottime_ns: boottime_ns(start_time),
            comm: [0; profiler_common::COMM_LEN],
        };
        let mut table = table_stamped(exited(start_time));
        assert_eq!(
            table.observe_announced(me, 0, Some(leader)).unwrap(),
            Lifecycle::Gone
        );
        assert!(table.process(me).is_none(), "nothing read, nothing held");
        // An exit stamped with another start (an earlier holder of the
        // pid): the process is read.
        let mut table = table_stamped(exited(start_time + 1));
        assert_eq!(
            table.observe_announced(me, 0, Some(leader)).unwrap(),
            Lifecycle::New
        );
        assert!(table.process(me).is_some());

        // Held, then stamped: gone at two prunes in a row, as a process
        // `stat` no longer finds.
        let mut stamped = table_stamped(exited(start_time));
        stamped.processes.insert(me, held_self());
        assert_eq!(stamped.observe_sampled(me, 4).unwrap(), Lifecycle::Gone);
        assert!(stamped.known_exited(me));
        stamped.prune();
        assert!(stamped.process(me).is_some(), "one prune of grace");
        stamped.prune();
        assert!(stamped.process(me).is_none());
    }

    /// A held process's stamped exit does not stand for the pid's samples
    /// taken after it (at the stamped generation: the exit's last moments,
    /// or a process forked into the pid since, before any exec), nor for
    /// an announcement with another start: `/proc` is read, or the
    /// announcement says the pid was reused.
    #[test]
    fn a_stamp_does_not_hide_a_process_that_reused_the_pid() {
        let me = std::process::id();
        let (start_time, _) = procfs::read_stat(me).unwrap();
        let mut earlier = held_self();
        earlier.start_time = start_time - 1; // the pid's earlier holder
        let stamped = ExecState {
            generation: 5,
            exited_ticks: Some(earlier.start_time as u32),
        };
        let mut table = table_stamped(stamped);
        table.processes.insert(me, earlier.clone());
        assert_eq!(table.observe_sampled(me, 5).unwrap(), Lifecycle::PidReused);
        assert_eq!(table.process(me).unwrap().start_time, start_time);

        let mut table = table_stamped(stamped);
        table.processes.insert(me, earlier);
        let leader = Leader {
            exec_gen: 5,
            start_boottime_ns: boottime_ns(start_time),
            comm: [0; profiler_common::COMM_LEN],
        };
        assert_eq!(
            table.observe_announced(me, 0, Some(leader)).unwrap(),
            Lifecycle::PidReused
        );
        assert_eq!(table.process(me).unwrap().start_time, start_time);

        // The earlier holder's announcement, late: the held one is kept.
        let late = Leader {
            start_boottime_ns: boottime_ns(start_time - 1),
            ..leader
        };
        assert_eq!(
            table.observe_announced(me, 0, Some(late)).unwrap(),
            Lifecycle::Unchanged
        );
        assert_eq!(table.process(me).unwrap().start_time, start_time);

        // Announced without a leader (a followed fork): the held process's
        // stamp is no proof, `/proc` is read.
        let mut table = table_stamped(stamped);
        let mut earlier = held_self();
        earlier.start_time = start_time - 1;
        table.processes.insert(me, earlier);
        assert_eq!(
            table.observe_announced(me, 0, None).unwrap(),
            Lifecycle::PidReused
        );
    }

    /// A drained pid not held whose exit is stamped right after the image
    /// sampled is gone; after an exec since (or a stamp older than the
    /// image), `/proc` is read.
    #[test]
    fn a_drained_process_stamped_gone_after_its_image_is_not_read() {
        let me = std::process::id();
        let state = ExecState {
            generation: 5,
            exited_ticks: Some(1),
        };
        let mut table = table_stamped(state);
        assert_eq!(table.observe_sampled(me, 4).unwrap(), Lifecycle::Gone);
        assert!(table.process(me).is_none());
        assert_eq!(table.observe_sampled(me, 2).unwrap(), Lifecycle::New);
        let mut table = table_stamped(state);
        assert_eq!(table.observe_sampled(me, 5).unwrap(), Lifecycle::New);
        let unstamped = ExecState {
            exited_ticks: None,
            ..state
        };
        let mut table = table_stamped(unstamped);
        assert_eq!(table.observe_sampled(me, 4).unwrap(), Lifecycle::New);
    }

    /// The kernel's record of the file mapping that holds `addr` in this
    /// process, as `pid` image `exec_gen`.
    fn recorded(table: &ProcessTable, pid: u32, exec_gen: u32, addr: u64) -> FileMapping {
        let me = std::process::id();
        let text = std::fs::read_to_string(format!("/proc/{me}/maps")).unwrap();
        let entry = maps::parse(&text)
            .unwrap()
            .into_iter()
            .find(|e| e.start <= addr && addr < e.end)
            .unwrap();
        assert!(table
            .module_ids
            .contains_key(&(entry.dev.0, entry.dev.1, entry.inode)));
        FileMapping {
            tgid: pid,
            exec_gen,
            start: entry.start,
            end: entry.end,
            file_offset: entry.file_offset,
            dev: entry.dev,
            inode: entry.inode,
        }
    }

    #[test]
    fn recorded_files_resolve_processes_never_snapshotted() {
        let me = std::process::id();
        let mut table = ProcessTable::new();
        table.observe(me).unwrap();
        let addr = marker as *const () as u64;
        let Resolved::Module {
            module,
            file_offset,
            ..
        } = table.resolve(me, 0, addr)
        else {
            panic!("own code resolves");
        };
        // A process that exited before it was read, running the same file.
        let ghost = u32::MAX - 7;
        assert_eq!(
            table.resolve(ghost, 0, addr),
            Resolved::Unknown(Unresolved::ProcessGone)
        );
        table.add_file(recorded(&table, ghost, 0, addr));
        assert!(matches!(
            table.resolve(ghost, 0, addr),
            Resolved::Module { module: m, file_offset: o, .. } if m == module && o == file_offset
        ));
        // Another image of it has no record.
        assert_eq!(
            table.resolve(ghost, 1, addr),
            Resolved::Unknown(Unresolved::ProcessGone)
        );
        // A file no snapshot opened.
        let mut unopened = recorded(&table, ghost, 2, addr);
        unopened.inode = u64::MAX;
        table.add_file(unopened);
        assert_eq!(
            table.resolve(ghost, 2, addr),
            Resolved::Unknown(Unresolved::FileNotOpen)
        );

        // Records stay while a window adds to them, then go, and with
        // them the modules only they kept.
        assert!(table.prune().is_empty());
        table.add_file(recorded(&table, ghost, 0, addr));
        assert!(table.prune().is_empty());
        assert!(table.files.contains_key(&(ghost, 0)));
        table.prune();
        assert!(!table.files.contains_key(&(ghost, 0)));
        assert!(table.files.is_empty());
    }

    /// Issue 14, finding 4: a sample taken before an exec never resolves
    /// against the snapshot taken after it (that would name code of the
    /// new binary), only through the file the kernel recorded.
    #[test]
    fn samples_of_another_image_never_use_the_snapshot() {
        let me = std::process::id();
        let mut table = table_at_generation(4);
        table.observe(me).unwrap();
        assert_eq!(table.process(me).unwrap().exec_gen, Some(4));
        let addr = marker as *const () as u64;
        assert!(matches!(
            table.resolve(me, 4, addr),
            Resolved::Module { .. }
        ));
        assert_eq!(
            table.resolve(me, 2, addr),
            Resolved::Unknown(Unresolved::OtherImage)
        );
        table.add_file(recorded(&table, me, 2, addr));
        assert!(matches!(
            table.resolve(me, 2, addr),
            Resolved::Module { .. }
        ));
        // An address the snapshot does not map, in the snapshot's image.
        assert_eq!(
            table.resolve(me, 4, 8),
            Resolved::Unknown(Unresolved::NoMapping)
        );
    }

    /// A process announced with its leader's start and name is snapshotted
    /// with them (its `stat` is not read), if they are of the image read;
    /// of another image, `stat` says.
    #[test]
    fn an_announced_leader_spares_the_stat_read() {
        let me = std::process::id();
        let (start_time, name) = procfs::read_stat(me).unwrap();
        let leader = |exec_gen| {
            let mut comm = [0; profiler_common::COMM_LEN];
            comm[..9].copy_from_slice(b"announced");
            Leader {
                exec_gen,
                // Half a tick past: whole ticks, rounded down, as stat.
                start_boottime_ns: start_time * 10_000_000 + 5_000_000,
                comm,
            }
        };
        let mut table = table_at_generation(4);
        table.observe_announced(me, 0, Some(leader(4))).unwrap();
        let info = table.process(me).unwrap();
        assert_eq!(info.executable_name, "announced");
        assert_eq!(info.start_time, start_time);
        assert!(!info.mappings.is_empty());
        // The same process observed again: its identity (from `/proc`)
        // matches the announced start, so nothing is read again.
        assert_eq!(table.observe(me).unwrap(), Lifecycle::Unchanged);

        let mut table = table_at_generation(4);
        table.observe_announced(me, 0, Some(leader(3))).unwrap();
        assert_eq!(table.process(me).unwrap().executable_name, name);
    }

    /// A snapshot stands for reading the maps again only while it is
    /// fresh, of the image asked about, and named no context mapping.
    #[test]
    fn a_fresh_snapshot_without_a_context_mapping_answers_for_the_maps() {
        let me = std::process::id();
        let mut table = table_at_generation(3);
        assert!(!table.read_without_context(me, 3, Instant::now(), Duration::from_secs(1)));
        table.observe(me).unwrap();
        let now = Instant::now();
        let fresh = Duration::from_secs(60);
        // The test binary maps no OpenTelemetry process context.
        assert!(table.read_without_context(me, 3, now, fresh));
        assert!(!table.read_without_context(me, 2, now, fresh));
        assert!(!table.read_without_context(me, 3, now + fresh * 2, fresh));
        table.processes.get_mut(&me).unwrap().context_mapping = true;
        assert!(!table.read_without_context(me, 3, now, fresh));
    }

    #[test]
    fn idle_and_kernel_threads() {
        let mut table = ProcessTable::new();
        table.observe(0).unwrap();
        assert!(table.process(0).is_none());
        // kthreadd (pid 2) has no user mappings.
        if table.observe(2).is_ok() {
            let info = table.process(2).unwrap();
            assert!(info.mappings.is_empty());
            assert!(info.executable_path.is_none());
        }
    }
}
