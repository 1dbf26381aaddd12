//! The memory profile, seen from userspace: attaching the allocator probes
//! to each selected process, reading sampled allocations and frees, and
//! the kernel's table of live allocations. The bookkeeping is
//! [`super::heap`] (pure); which files are allocators,
//! [`super::allocator`] (pure).
//!
//! Probes are attached per process (`perf_event_open` with the pid): the
//! kernel puts breakpoints only in the selected processes' memory, so the
//! rest of the host never traps. Files are reached through
//! `/proc/PID/root`, so a container's own libc is probed.
//!
//! Forks are followed: the kernel marks a probed process's fork in the
//! event stream and announces the child on `PROCESS_EVENTS`; the child's
//! inherited allocations go into the kernel's live table before its
//! probes are attached (the caller probes it at once), so its frees of
//! them are seen from then on.

use std::collections::{HashMap as StdHashMap, HashSet};
use std::fs::File;
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;

use aya::maps::{Array, HashMap, MapData, ProgramArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{ProgramError, UProbe};
use aya::{Btf, Ebpf};
use profiler_common::{
    names, AllocEvent, ForkEvent, FreeEvent, LiveKey, StackHash, ALLOC_TRACKED, ALLOC_UNTRACKED,
    FORK, FREE_TRACKED, MEMORY_GAPS,
};

use super::allocator::{self, EntryPoint};
use super::drain::{MapSet, RawSample};
use super::heap::{self, DeferredFree, Heap, HeapEvent};
use super::{map_err, process_events, SamplerError};
use crate::pread::PreadFile;

/// Tracked live allocations at most, by default: 64 Ki (a sampled
/// allocation stands for ~512 KiB of small ones: tens of GiB live).
pub const DEFAULT_MAX_LIVE: u32 = 65_536;

/// Bytes of the `MEMORY_EVENTS` ring: 8 MiB, ~75,000 events (104 or 16
/// bytes and the ring's 8-byte header each), four seconds of a process
/// allocating 2 GiB/s at the default mean; a fuller ring drops sampled
/// allocations (counted) and defers frees to `MEMORY_FREES`.
pub const RING_BYTES: u32 = 8 << 20;

/// Why a process could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Its memory map could not be read (it exited, or permissions).
    #[error("could not read /proc/{pid}/maps")]
    Maps {
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// None of its files defines `malloc`.
    #[error(
        "process {pid} maps no allocator hostprof knows (glibc, jemalloc, tcmalloc, mimalloc: \
         a file defining malloc); its allocations are not profiled"
    )]
    NoAllocator {
        /// The process.
        pid: u32,
    },
    /// A probe could not be attached.
    #[error("could not attach the allocator probes to process {pid} ({path})")]
    Attach {
        /// The process.
        pid: u32,
        /// The file probed.
        path: String,
        /// Why.
        #[source]
        source: Box<ProgramError>,
    },
}

/// A process's probes.
struct Attached {
    /// The exec generation they were attached in.
    exec_gen: u32,
    entry: Vec<UProbeLinkId>,
    returns: Vec<UProbeLinkId>,
    /// The files probed, for the summary.
    files: Vec<String>,
}

/// The memory profile's maps and probes.
pub(super) struct Memory {
    events: RingBuf<MapData>,
    deferred: HashMap<MapData, LiveKey, u64>,
    live: HashMap<MapData, LiveKey, u64>,
    /// `MEMORY_PROCESSES`: whose forks the kernel marks.
    followed: HashMap<MapData, u32, u32>,
    /// Kept open: the kernel empties a program array when its last
    /// userspace handle closes.
    _tail_calls: ProgramArray<MapData>,
    heap: Heap,
    attached: StdHashMap<u32, Attached>,
    /// Entry points of each file seen, by (device, inode).
    files: StdHashMap<(u64, u64), Arc<Vec<EntryPoint>>>,
    /// Children forked since [`Self::take_forked`].
    forked: Vec<u32>,
}

impl Memory {
    /// Takes the memory maps out of `ebpf`, fills the gap table for a
    /// mean of `mean` bytes, and loads the programs (the unwinders with
    /// `tables`, the files program with `files`); returns whether the
    /// files program was loaded.
    pub fn start(
        ebpf: &mut Ebpf,
        btf: Option<&Btf>,
        mean: u64,
        tables: bool,
        files: bool,
    ) -> Result<(Self, bool), SamplerError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(SamplerError::Missing(name));
        let events: RingBuf<MapData> = take(names::MEMORY_EVENTS)?
            .try_into()
            .map_err(map_err(names::MEMORY_EVENTS))?;
        let deferred = take(names::MEMORY_FREES)?
            .try_into()
            .map_err(map_err(names::MEMORY_FREES))?;
        let live = take(names::MEMORY_LIVE)?
            .try_into()
            .map_err(map_err(names::MEMORY_LIVE))?;
        let followed = take(names::MEMORY_PROCESSES)?
            .try_into()
            .map_err(map_err(names::MEMORY_PROCESSES))?;
        let mut gaps: Array<MapData, u64> = take(names::MEMORY_GAPS)?
            .try_into()
            .map_err(map_err(names::MEMORY_GAPS))?;
        let mut tail_calls: ProgramArray<MapData> = take(names::MEMORY_TAIL_CALLS)?
            .try_into()
            .map_err(map_err(names::MEMORY_TAIL_CALLS))?;
        for (i, gap) in heap::exponential_gaps(mean, MEMORY_GAPS)
            .into_iter()
            .enumerate()
        {
            gaps.set(i as u32, gap, 0)
                .map_err(map_err(names::MEMORY_GAPS))?;
        }
        let files = files
            && process_events::load_files_program(
                ebpf,
                process_events::FilesHook::Kprobe {
                    program: names::MEMORY_FILES,
                    array_name: names::MEMORY_TAIL_CALLS,
                    array: &mut tail_calls,
                },
            )?;
        if tables {
            for (name, slot) in [
                (names::MEMORY_UNWIND, names::TAIL_UNWIND_USER),
                (names::MEMORY_STORE, names::TAIL_UNWIND_STORE),
            ] {
                let fd = super::tail_called_kprobe(ebpf, name)?;
                tail_calls
                    .set(slot, &fd, 0)
                    .map_err(map_err(names::MEMORY_TAIL_CALLS))?;
            }
        }
        for name in names::UPROBES {
            let program = uprobe(ebpf, name)?;
            program.load().map_err(|source| SamplerError::Program {
                action: format!("load the memory program {name}"),
                source,
            })?;
        }
        let forks = match btf {
            Some(btf) => process_events::attach_tracepoint(
                ebpf,
                btf,
                names::MEMORY_FORK,
                names::MEMORY_FORK_TRACEPOINT,
            )
            .map_err(|err| format!("{:#}", anyhow::Error::from(err))),
            None => Err("no kernel BTF".to_owned()),
        };
        if let Err(why) = forks {
            log::warn!(
                "memory profile: forks not followed ({why}): children of probed processes are \
                 probed when the selection finds them, and inherit nothing"
            );
        }
        Ok((
            Self {
                events,
                deferred,
                live,
                followed,
                _tail_calls: tail_calls,
                heap: Heap::new(mean),
                attached: StdHashMap::new(),
                files: StdHashMap::new(),
                forked: Vec::new(),
            },
            files,
        ))
    }

    /// Probes the allocator of process `pid` (image `exec_gen`), unless it
    /// is probed in that image already; after an exec the old image's
    /// probes go and its live allocations are forgotten. A process that
    /// cannot be probed has no live allocations (a child's inherited ones
    /// go: their frees would not be seen).
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        exec_gen: u32,
    ) -> Result<bool, AttachError> {
        let attached = self.attach_probes(ebpf, pid, exec_gen);
        if attached.is_err() {
            self.forget_live(|tgid, _| tgid == pid);
        }
        attached
    }

    fn attach_probes(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        exec_gen: u32,
    ) -> Result<bool, AttachError> {
        if self
            .attached
            .get(&pid)
            .is_some_and(|attached| attached.exec_gen == exec_gen)
        {
            return Ok(false);
        }
        // The old image's probes go once the new ones are on: they fire in
        // the new image too where it maps the same files, so no free is
        // missed meanwhile (a call probed twice counts once, as nested).
        let old = self.attached.remove(&pid);
        let probed = self.probe(ebpf, pid, exec_gen);
        if let Some(old) = old {
            detach_links(ebpf, old);
        }
        match probed {
            Ok(attached) => {
                // Its forks are marked from now on.
                let _ = self.followed.insert(pid, 1, 0);
                log::info!(
                    "memory profile: process {pid}: {} probes on {}",
                    attached.entry.len() + attached.returns.len(),
                    attached.files.join(", ")
                );
                self.attached.insert(pid, attached);
                Ok(true)
            }
            Err(err) => {
                let _ = self.followed.remove(&pid);
                Err(err)
            }
        }
    }

    /// Attaches the allocator probes of process `pid`, whole or not at all.
    fn probe(&mut self, ebpf: &mut Ebpf, pid: u32, exec_gen: u32) -> Result<Attached, AttachError> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|source| AttachError::Maps { pid, source })?;
        let mut attached = Attached {
            exec_gen,
            entry: Vec::new(),
            returns: Vec::new(),
            files: Vec::new(),
        };
        let mut seen = HashSet::new();
        for path in executable_files(&maps) {
            if !seen.insert(path) {
                continue;
            }
            let target = format!("/proc/{pid}/root{path}");
            let Some(entries) = self.entry_points(&target) else {
                continue;
            };
            if entries.is_empty() {
                continue;
            }
            if let Err(source) = attach_file(ebpf, pid, &target, &entries, &mut attached) {
                // What was attached goes too: a process is probed whole.
                detach_links(ebpf, attached);
                return Err(AttachError::Attach {
                    pid,
                    path: path.to_owned(),
                    source: Box::new(source),
                });
            }
            attached.files.push(path.to_owned());
        }
        if attached.files.is_empty() {
            return Err(AttachError::NoAllocator { pid });
        }
        Ok(attached)
    }

    /// The entry points of the file at `path`, cached by file identity;
    /// `None` when it cannot be opened.
    fn entry_points(&mut self, path: &str) -> Option<Arc<Vec<EntryPoint>>> {
        let file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let id = (meta.dev(), meta.ino());
        if let Some(found) = self.files.get(&id) {
            return Some(found.clone());
        }
        // Read with bounded preads, never mapped: the file is another
        // process's.
        let found = PreadFile::new(file)
            .ok()
            .and_then(|data| {
                allocator::entry_points(&data)
                    .map_err(|err| log::debug!("{path}: {err}"))
                    .ok()
            })
            .unwrap_or_default();
        let found = Arc::new(found);
        self.files.insert(id, found.clone());
        Some(found)
    }

    /// Removes process `pid`'s probes.
    pub fn detach(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let _ = self.followed.remove(&pid);
        if let Some(attached) = self.attached.remove(&pid) {
            detach_links(ebpf, attached);
        }
    }

    /// The processes probed now.
    pub fn attached(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.attached.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// Applies every event sent so far, and the frees that overflowed:
    /// a child forked by a probed process gets its inherited allocations
    /// in the kernel's live table, to be probed next. Returns how many
    /// events were read.
    pub fn read_events(&mut self) -> usize {
        let mut read = 0;
        let mut deferred: Option<HashSet<LiveKey>> = None;
        loop {
            // The item borrows the ring: decode it into a copy.
            let event = match self.events.next() {
                Some(item) => decode_event(&item),
                None => break,
            };
            let Some(event) = event else {
                continue;
            };
            read += 1;
            match event {
                // Probed already (the selection found it before its fork
                // was read): its frees of what it inherited were not
                // seen, so it inherits nothing.
                HeapEvent::Fork(fork) if self.attached.contains_key(&fork.child) => {}
                HeapEvent::Fork(fork) => {
                    let inherited = self.heap.apply(event);
                    // Frees waiting in the overflow map may be of blocks
                    // the parent freed before the fork: not inherited
                    // (at worst one freed after it is missed in the child).
                    let deferred = deferred.get_or_insert_with(|| {
                        self.deferred.keys().filter_map(Result::ok).collect()
                    });
                    self.inherit(&fork, &inherited, deferred);
                    self.forked.push(fork.child);
                }
                event => {
                    self.heap.apply(event);
                }
            }
        }
        let deferred: Vec<(LiveKey, u64)> = self.deferred.iter().filter_map(Result::ok).collect();
        for (key, time_ns) in deferred {
            // One whose allocation is not read yet waits for a later read
            // (or for its process to go, see `forget`).
            if self.heap.deferred_free(key, time_ns) != DeferredFree::Waiting {
                let _ = self.deferred.remove(&key);
            }
        }
        read
    }

    /// Puts the allocations `fork`'s child inherited into the kernel's live
    /// table (before its probes are attached: its frees are seen from
    /// then on); one that does not fit is forgotten, never counted in use
    /// without its free being seen.
    fn inherit(&mut self, fork: &ForkEvent, inherited: &[(u64, u64)], freed: &HashSet<LiveKey>) {
        let mut untracked = 0;
        for &(addr, time_ns) in inherited {
            let key = LiveKey {
                tgid: fork.child,
                pad: 0,
                addr,
            };
            let parents = LiveKey {
                tgid: fork.parent,
                ..key
            };
            if freed.contains(&parents) || self.live.insert(key, time_ns, 0).is_err() {
                self.heap.remove(fork.child, addr);
                untracked += 1;
            }
        }
        log::debug!(
            "memory: process {} forked {}: {} live allocations inherited, {untracked} not tracked",
            fork.parent,
            fork.child,
            inherited.len() - untracked
        );
    }

    /// The children of probed processes forked since the last call (each
    /// inherited its parent's allocations): to be probed now.
    pub fn take_forked(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.forked)
    }

    /// Applies every event sent so far ([`Self::read_events`]), then
    /// returns the allocation samples of map set `set` (drained now into
    /// `stacks`).
    pub fn take(
        &mut self,
        set: MapSet,
        stacks: &StdHashMap<StackHash, Vec<u64>>,
    ) -> Vec<RawSample> {
        let read = self.read_events();
        let samples = self.heap.drained(set.index() as u32, stacks);
        log::debug!(
            "memory: {read} events, {} allocation samples, {} live",
            samples.len(),
            self.heap.live_count()
        );
        samples
    }

    /// The in-use snapshot now, as samples.
    pub fn in_use_samples(&self) -> Vec<RawSample> {
        let samples = self.heap.in_use_samples(monotonic_ns());
        log::debug!(
            "memory: {} in-use samples of {} live allocations",
            samples.len(),
            self.heap.live_count()
        );
        samples
    }

    /// Forgets the live allocations `gone(tgid, exec_gen)` says are gone,
    /// here and in the kernel; returns how many.
    fn forget_live(&mut self, gone: impl FnMut(u32, u32) -> bool) -> usize {
        let forgotten = self.heap.forget(gone);
        for key in &forgotten {
            let _ = self.live.remove(key);
        }
        forgotten.len()
    }

    /// Forgets the live allocations of processes that exited or exec'd
    /// (`gone(tgid, exec_gen)`), here and in the kernel, and their probes
    /// (an exec'd process is probed again in its new image); stops
    /// following the forks of processes no longer `alive`.
    pub fn forget(
        &mut self,
        ebpf: &mut Ebpf,
        mut gone: impl FnMut(u32, u32) -> bool,
        alive: impl Fn(u32) -> bool,
    ) {
        let exited: Vec<u32> = self
            .followed
            .keys()
            .filter_map(Result::ok)
            .filter(|pid| !alive(*pid))
            .collect();
        for pid in exited {
            let _ = self.followed.remove(&pid);
        }
        // Deferred frees still waiting for their allocation's event, of
        // processes that exited: it will not matter any more.
        let orphans: Vec<LiveKey> = self
            .deferred
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !alive(key.tgid))
            .collect();
        for key in orphans {
            let _ = self.deferred.remove(&key);
        }
        let forgotten = self.forget_live(&mut gone);
        if forgotten > 0 {
            log::debug!("memory: {forgotten} live allocations of processes gone");
        }
        let gone: Vec<u32> = self
            .attached
            .iter()
            .filter(|(pid, attached)| gone(**pid, attached.exec_gen))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.detach(ebpf, pid);
        }
    }
}

/// Removes the probes of `attached`.
fn detach_links(ebpf: &mut Ebpf, attached: Attached) {
    for (name, links) in [
        (names::MEMORY_ENTRY, attached.entry),
        (names::MEMORY_RETURN, attached.returns),
    ] {
        if let Ok(program) = uprobe(ebpf, name) {
            for link in links {
                // A process that exited leaves a dead event: closing it
                // is all there is to do.
                let _ = program.detach(link);
            }
        }
    }
}

/// Attaches the probes of `entries` in the file at `target` to `pid`.
fn attach_file(
    ebpf: &mut Ebpf,
    pid: u32,
    target: &str,
    entries: &[EntryPoint],
    attached: &mut Attached,
) -> Result<(), ProgramError> {
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).unwrap_or(NonZeroU32::MIN));
    // Every return probe before any entry probe: a call whose entry is
    // probed always returns through its probe (else its thread's depth
    // would stay raised until its next outermost call).
    for entry in entries.iter().filter(|e| e.allocates()) {
        let program = loaded_uprobe(ebpf, names::MEMORY_RETURN)?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(entry.file_offset),
            cookie: None,
        };
        attached.returns.push(program.attach(point, target, scope)?);
    }
    for entry in entries {
        let program = loaded_uprobe(ebpf, names::MEMORY_ENTRY)?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(entry.file_offset),
            cookie: Some(entry.function),
        };
        attached.entry.push(program.attach(point, target, scope)?);
    }
    Ok(())
}

/// The files of executable file-backed mappings in `/proc/PID/maps`.
fn executable_files(maps: &str) -> impl Iterator<Item = &str> {
    maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1)?;
        let path = fields.nth(3)?;
        (perms.contains('x') && path.starts_with('/') && !line.ends_with(" (deleted)"))
            .then_some(path)
    })
}

/// One event of `MEMORY_EVENTS`, told apart by its tag.
fn decode_event(item: &[u8]) -> Option<HeapEvent> {
    let tag = u32::from_ne_bytes(item.get(..4)?.try_into().ok()?);
    match tag {
        ALLOC_TRACKED | ALLOC_UNTRACKED if item.len() >= std::mem::size_of::<AllocEvent>() => {
            // SAFETY: the kernel wrote a whole `AllocEvent` (plain
            // integers, any bit pattern valid); the read is unaligned.
            Some(HeapEvent::Alloc(unsafe {
                item.as_ptr().cast::<AllocEvent>().read_unaligned()
            }))
        }
        FORK if item.len() >= std::mem::size_of::<ForkEvent>() => {
            // SAFETY: as above, a whole `ForkEvent`.
            Some(HeapEvent::Fork(unsafe {
                item.as_ptr().cast::<ForkEvent>().read_unaligned()
            }))
        }
        FREE_TRACKED if item.len() >= std::mem::size_of::<FreeEvent>() => {
            // SAFETY: as above, a whole `FreeEvent`.
            let free = unsafe { item.as_ptr().cast::<FreeEvent>().read_unaligned() };
            Some(HeapEvent::Free(LiveKey {
                tgid: free.tgid,
                pad: 0,
                addr: free.addr,
            }))
        }
        _ => None,
    }
}

/// `CLOCK_MONOTONIC` now, in ns (the clock of `bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64
}

/// The uprobe `name`, loaded by [`Memory::start`].
fn loaded_uprobe<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut UProbe, ProgramError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::NotLoaded)?
        .try_into()
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, SamplerError> {
    super::program_as(ebpf, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_files_are_the_code_mappings() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /usr/bin/prog
55d0c0001000-55d0c0002000 r-xp 00001000 08:01 123 /usr/bin/prog
7f0000000000-7f0000100000 r-xp 00028000 08:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 
7f0000300000-7f0000301000 r-xp 00000000 00:00 0 [vdso]
7f0000400000-7f0000401000 r-xp 00000000 08:01 789 /tmp/gone.so (deleted)
";
        let files: Vec<&str> = executable_files(maps).collect();
        assert_eq!(
            files,
            vec!["/usr/bin/prog", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
        );
    }

    #[test]
    fn events_are_told_apart_by_tag() {
        let free = FreeEvent {
            tag: FREE_TRACKED,
            tgid: 7,
            addr: 0x10,
        };
        // SAFETY: a plain `repr(C)` struct viewed as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&free as *const FreeEvent).cast::<u8>(),
                std::mem::size_of::<FreeEvent>(),
            )
        };
        assert_eq!(
            decode_event(bytes),
            Some(HeapEvent::Free(LiveKey {
                tgid: 7,
                pad: 0,
                addr: 0x10
            }))
        );
        assert_eq!(decode_event(&bytes[..8]), None, "too short");
        assert_eq!(decode_event(&[9, 0, 0, 0]), None, "unknown tag");
    }
}
