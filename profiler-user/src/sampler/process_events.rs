//! What the kernel tells userspace while it samples, beside the samples:
//! processes sampled for the first time and the file mappings of sampled
//! user frames (the `PROCESS_EVENTS` ring buffer), and each process's exec
//! generation (the `EXEC_GEN` map).
//!
//! Loading the programs behind them is here too: the exec tracepoints and
//! each kind's files program (see the eBPF side's `exec` and `files`
//! modules). Both are optional: a kernel without `sched_prepare_exec`
//! (older than 6.10) keeps one exec bump, one without `bpf_find_vma`
//! (older than 5.17) records no files, and samples resolve through
//! `/proc` snapshots alone, as they did before.

use aya::maps::{HashMap, MapData, MapError, ProgramArray, RingBuf};
use aya::programs::RawTracePoint;
use aya::{Btf, Ebpf};
use profiler_common::{names, ExecGen, ProcessEvent as KernelEvent, COMM_LEN};
use tokio::io::unix::AsyncFd;
use tokio::time::{Duration, Instant};

use super::SamplerError;

/// A file mapping that held a sampled user frame, as the kernel saw it at
/// the sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileMapping {
    /// Process id (tgid).
    pub tgid: u32,
    /// The process's exec generation at the sample.
    pub exec_gen: u32,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The file's device as (major, minor), as `/proc/PID/maps` prints it.
    pub dev: (u32, u32),
    /// The file's inode number.
    pub inode: u64,
}

/// What the kernel read of a new process's leader as it announced it:
/// what `/proc/PID/stat` would say of its start and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The process's exec generation as it was announced (what it says
    /// is of that image).
    pub exec_gen: u32,
    /// Its `start_boottime`: ns since boot.
    pub start_boottime_ns: u64,
    /// Its `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

impl Leader {
    /// The command name (bytes that are not UTF-8 replaced).
    pub fn name(&self) -> String {
        super::drain::comm_to_string(&self.comm)
    }
}

/// Nanoseconds per clock tick of `/proc/PID/stat`'s times (`1e9 /
/// _SC_CLK_TCK`).
pub fn ns_per_tick() -> u64 {
    static NS_PER_TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NS_PER_TICK.get_or_init(|| {
        // SAFETY: sysconf takes no pointers.
        match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
            hz if hz > 0 => 1_000_000_000 / hz as u64,
            // USER_HZ, part of Linux's ABI on every architecture hostprof builds for.
            _ => 10_000_000,
        }
    })
}

/// Whether this process's time namespace adds nothing to boot time
/// (`/proc/PID/stat`'s start times then count from the kernel's
/// `start_boottime`, which new processes are announced with); true where
/// the kernel has no time namespaces.
pub fn boottime_offset_is_zero() -> bool {
    match std::fs::read_to_string("/proc/self/timens_offsets") {
        Ok(text) => boottime_offset(&text) == Some((0, 0)),
        Err(_) => true,
    }
}

/// The `boottime` line of a `timens_offsets` file: (seconds, nanoseconds).
fn boottime_offset(text: &str) -> Option<(i64, i64)> {
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some("boottime"))?;
    let mut fields = line.split_whitespace().skip(1);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// One event of the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A process sampled for the first time: snapshot it while it lives.
    New {
        /// The process.
        tgid: u32,
        /// Its cgroup (v2) id as it was sampled; 0 when not known.
        cgroup_id: u64,
        /// Its leader's start and name, when the kernel read them (it
        /// does from the process's own context, where it knows where
        /// they are).
        leader: Option<Leader>,
    },
    /// A file mapping of a sampled user frame.
    File(FileMapping),
    /// A process the memory profile follows forked this child: probe it
    /// now, before it frees much of what it inherited.
    Fork(u32),
    /// A CPU filled map set `set` to its share of half the room: drain
    /// now, not at the next scheduled drain (if `set` is still the one
    /// being filled).
    DrainSoon {
        /// The set ([`MapSet::index`](super::MapSet::index)).
        set: usize,
    },
}

impl ProcessEvent {
    /// Decodes one ring-buffer record; `None` for a record of another size
    /// or kind (an object built from other sources).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != std::mem::size_of::<KernelEvent>() {
            return None;
        }
        // SAFETY: the length matches and `KernelEvent` is plain integers,
        // valid for any bits; read_unaligned copes with any alignment.
        let event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<KernelEvent>()) };
        match event.kind {
            KernelEvent::NEW => Some(Self::New {
                tgid: event.tgid,
                cgroup_id: event.cgroup_id,
                leader: (event.start_boottime != 0 && event.comm[0] != 0).then_some(Leader {
                    exec_gen: event.exec_gen,
                    start_boottime_ns: event.start_boottime,
                    comm: event.comm,
                }),
            }),
            KernelEvent::FORK => Some(Self::Fork(event.tgid)),
            KernelEvent::DRAIN_SOON => Some(Self::DrainSoon {
                set: event.tgid as usize,
            }),
            KernelEvent::FILE => Some(Self::File(FileMapping {
                tgid: event.tgid,
                exec_gen: event.exec_gen,
                start: event.start,
                end: event.end,
                file_offset: event.file_offset,
                // The kernel's dev_t: major in the top 12 bits of 32.
                dev: (event.dev >> 20, event.dev & 0xf_ffff),
                inode: event.inode,
            })),
            _ => None,
        }
    }
}

/// How long the stream waits after a batch before it reads the ring
/// again. The kernel wakes the reader only for a record written when
/// everything before it was read, so while the stream waits, one wake-up
/// at most announces all the records written meanwhile. On a build host
/// (hundreds of new processes a second, a few records each) reading every
/// record as it came cost two thread wake-ups a record (tokio's I/O
/// driver, then the profiler's thread), about 1,300 a second and most of
/// the agent's CPU in context switches; now at most two per this delay.
/// A process sampled for the first time is read this much later (its
/// recorded file mappings do not depend on it).
pub const EVENT_BATCH_DELAY: Duration = Duration::from_millis(20);

/// The stream of [`ProcessEvent`]s.
pub struct ProcessEvents {
    ring: AsyncFd<RingBuf<MapData>>,
    /// When the ring may be read again ([`EVENT_BATCH_DELAY`] after the
    /// last batch).
    resume_at: Option<Instant>,
}

impl ProcessEvents {
    pub(super) fn new(ring: RingBuf<MapData>) -> Result<Self, SamplerError> {
        // SAFETY: the ring buffer owns its file descriptor and lives inside
        // the AsyncFd, so the descriptor stays open while it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|err| SamplerError::Poll(std::io::Error::from(err)))?;
        Ok(Self {
            ring,
            resume_at: None,
        })
    }

    /// Waits for events and returns those that arrived so far, at most one
    /// batch per [`EVENT_BATCH_DELAY`]. Cancel-safe: a call dropped while
    /// it waits loses no event.
    pub async fn next_batch(&mut self) -> Result<Vec<ProcessEvent>, SamplerError> {
        if let Some(at) = self.resume_at {
            tokio::time::sleep_until(at).await;
        }
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(SamplerError::Poll)?;
            let events = read_events(guard.get_inner_mut());
            // Clears only the readiness this guard saw: a wake-up for a
            // record written after the read above stays.
            guard.clear_ready();
            if !events.is_empty() {
                self.resume_at = Some(Instant::now() + EVENT_BATCH_DELAY);
                return Ok(events);
            }
        }
    }

    /// Returns the events that arrived so far without waiting.
    pub fn try_batch(&mut self) -> Vec<ProcessEvent> {
        read_events(self.ring.get_mut())
    }
}

fn read_events(ring: &mut RingBuf<MapData>) -> Vec<ProcessEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.extend(ProcessEvent::decode(&item));
    }
    events
}

/// What the kernel's `EXEC_GEN` says of a process now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecState {
    /// Its generation (0 before its first exec seen).
    pub generation: u32,
    /// Set when a process of this pid exited (and none exec'd since): its
    /// start in `/proc/PID/stat`'s clock ticks, low 32 bits.
    pub exited_ticks: Option<u32>,
}

/// Each process's exec generation, as the samples carry it.
pub trait ExecGenerations {
    /// What is known of `tgid` now.
    fn state(&self, tgid: u32) -> ExecState;

    /// The current generation of `tgid` (0 before its first exec seen).
    fn generation(&self, tgid: u32) -> u32 {
        self.state(tgid).generation
    }
}

/// No exec tracking (tests, or a kernel without the tracepoints): every
/// process stays at generation 0, as every sample does.
impl ExecGenerations for () {
    fn state(&self, _tgid: u32) -> ExecState {
        ExecState::default()
    }
}

/// The kernel's `EXEC_GEN` map.
pub struct KernelExecGenerations {
    map: HashMap<MapData, u32, ExecGen>,
}

impl ExecGenerations for KernelExecGenerations {
    fn state(&self, tgid: u32) -> ExecState {
        // Absent: never exec'd since the programs were attached (or
        // evicted, which the samples read as 0 too).
        let entry = self.map.get(&tgid, 0).unwrap_or_default();
        ExecState {
            generation: entry.generation,
            exited_ticks: (entry.exited_ticks != 0).then_some(entry.exited_ticks),
        }
    }
}

impl KernelExecGenerations {
    pub(super) fn new(map: aya::maps::Map) -> Result<Self, SamplerError> {
        Ok(Self {
            map: map
                .try_into()
                .map_err(|source: MapError| SamplerError::Map {
                    map: names::EXEC_GEN,
                    source,
                })?,
        })
    }
}

/// Loads and attaches the exec tracepoints (raw tracepoints: no BTF needed,
/// so a CPU capture parses none); false (logged) when the kernel lacks
/// `sched_process_exec`, and samples then carry generation 0.
pub(super) fn attach_exec(ebpf: &mut Ebpf) -> bool {
    let mut attached = true;
    for (name, tracepoint) in [
        (names::EXEC_DONE, names::EXEC_DONE_TRACEPOINT),
        (names::EXEC_BEGIN, names::EXEC_BEGIN_TRACEPOINT),
    ] {
        if let Err(err) = attach_raw_tracepoint(ebpf, name, tracepoint) {
            let fallback = if name == names::EXEC_BEGIN {
                "snapshots taken during an exec may mix two images for a few microseconds"
            } else {
                "samples taken before an exec resolve only through recorded files"
            };
            log::info!(
                "exec tracking: {name} not attached to raw_tp/{tracepoint} ({:#}); {fallback}",
                anyhow::Error::from(err)
            );
            attached &= name == names::EXEC_BEGIN;
        }
    }
    attached
}

pub(super) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    tracepoint: &'static str,
) -> Result<(), SamplerError> {
    let program = super::btf_tracepoint(ebpf, name)?;
    let failed = |action: String| move |source| SamplerError::Program { action, source };
    program
        .load(tracepoint, btf)
        .map_err(failed(format!("load {name} (verifier)")))?;
    program
        .attach()
        .map_err(failed(format!("attach {name} to tp_btf/{tracepoint}")))?;
    Ok(())
}

/// Loads the raw tracepoint program `name` and attaches it to
/// `tracepoint`; unloads it again when the attach fails (a kernel without
/// the tracepoint, or whose tracepoint has fewer arguments than the
/// program reads: the kernel checks those at attach, not at load).
fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &'static str,
) -> Result<(), SamplerError> {
    let program: &mut RawTracePoint = super::program_as(ebpf, name)?;
    let failed = |action: String| move |source| SamplerError::Program { action, source };
    program
        .load()
        .map_err(failed(format!("load {name} (verifier)")))?;
    if let Err(err) = program.attach(tracepoint) {
        let _ = program.unload();
        return Err(failed(format!("attach {name} to raw_tp/{tracepoint}"))(err));
    }
    Ok(())
}

/// Attaches the program that looks up a process's waiting frames as its
/// threads exit, and stamps exits in `EXEC_GEN` (logged when it cannot:
/// those frames then stay unresolved unless the process was snapshotted,
/// and exits are not stamped).
pub(super) fn attach_files_exit(ebpf: &mut Ebpf) -> bool {
    match attach_raw_tracepoint(ebpf, names::FILES_EXIT, names::FILES_EXIT_TRACEPOINT) {
        Ok(()) => true,
        Err(err) => {
            log::info!(
                "{} not attached ({:#}; it reads `sched_process_exit`'s `group_dead` argument, \
                 which older kernels' tracepoint lacks): frames sampled in interrupts of \
                 processes that exit before their maps are read stay unresolved, and exited \
                 processes are found by reading /proc",
                names::FILES_EXIT,
                anyhow::Error::from(err)
            );
            false
        }
    }
}

/// Where a kind's files program goes.
pub(super) enum FilesHook<'a> {
    /// The CPU kind's perf-event program array.
    Cpu(&'a mut ProgramArray<MapData>),
    /// A tracing hook's array (the off-CPU tracepoint switch-in, the
    /// locks' `contention_end`): its files program, the tracepoint it is
    /// loaded for and the array's name.
    Tracepoint {
        /// The files program.
        program: &'static str,
        /// The `tp_btf` hook of the program that tail-calls it.
        tracepoint: &'static str,
        /// The kernel's BTF, to load it for that hook.
        btf: &'a Btf,
        /// The array's map name.
        array_name: &'static str,
        /// The array.
        array: &'a mut ProgramArray<MapData>,
    },
    /// A kprobe-type chain's array (the off-CPU kprobe switch-in, the
    /// memory profile's uprobes): its files program and the array's name.
    Kprobe {
        /// The files program.
        program: &'static str,
        /// The array's map name.
        array_name: &'static str,
        /// The array.
        array: &'a mut ProgramArray<MapData>,
    },
}

/// Loads the files program of `hook` into its slot; false (logged once by
/// the caller) when the verifier refuses it (no `bpf_find_vma`: Linux
/// older than 5.17).
pub(super) fn load_files_program(
    ebpf: &mut Ebpf,
    hook: FilesHook<'_>,
) -> Result<bool, SamplerError> {
    let (name, array_name, loaded) = match hook {
        FilesHook::Cpu(array) => {
            let name = names::CPU_FILES;
            (
                name,
                names::TAIL_CALLS,
                super::tail_called_program(ebpf, name).map(|fd| (fd, array)),
            )
        }
        FilesHook::Tracepoint {
            program: name,
            tracepoint,
            btf,
            array_name,
            array,
        } => {
            let program = super::btf_tracepoint(ebpf, name)?;
            let loaded = program
                .load(tracepoint, btf)
                .map_err(super::tail_call_load_error(name))
                .and_then(|()| super::program_fd(program.fd(), name))
                .map(|fd| (fd, array));
            (name, array_name, loaded)
        }
        FilesHook::Kprobe {
            program: name,
            array_name,
            array,
        } => (
            name,
            array_name,
            super::tail_called_kprobe(ebpf, name).map(|fd| (fd, array)),
        ),
    };
    match loaded {
        Ok((fd, array)) => {
            array
                .set(names::TAIL_RECORD_FILES, &fd, 0)
                .map_err(|source| SamplerError::Map {
                    map: array_name,
                    source,
                })?;
            Ok(true)
        }
        Err(err) => {
            log::info!(
                "{name} not loaded ({:#}): frames of processes that exit before their maps \
                 are read stay unresolved (bpf_find_vma needs Linux 5.17+)",
                anyhow::Error::from(err)
            );
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(event: &KernelEvent) -> Vec<u8> {
        // SAFETY: plain integers, no padding (profiler-common checks sizes).
        unsafe {
            std::slice::from_raw_parts(
                (event as *const KernelEvent).cast::<u8>(),
                std::mem::size_of::<KernelEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn reads_the_boot_time_offset() {
        let text = "monotonic           0         0\nboottime        86400       500\n";
        assert_eq!(boottime_offset(text), Some((86_400, 500)));
        assert_eq!(boottime_offset("monotonic 0 0\n"), None);
        assert_eq!(boottime_offset("boottime x 0\n"), None);
        // This test's own namespace (the host's, or none): no offset.
        assert!(boottime_offset_is_zero());
    }

    #[test]
    fn decodes_each_kind_and_refuses_others() {
        let new = KernelEvent {
            kind: KernelEvent::NEW,
            tgid: 42,
            cgroup_id: 9,
            ..KernelEvent::default()
        };
        assert_eq!(
            ProcessEvent::decode(&bytes(&new)),
            Some(ProcessEvent::New {
                tgid: 42,
                cgroup_id: 9,
                leader: None,
            })
        );
        let mut comm = [0; COMM_LEN];
        comm[..3].copy_from_slice(b"cc1");
        let announced = KernelEvent {
            exec_gen: 3,
            start_boottime: 12_345_000_000,
            comm,
            ..new
        };
        let Some(ProcessEvent::New {
            leader: Some(leader),
            ..
        }) = ProcessEvent::decode(&bytes(&announced))
        else {
            panic!("a NEW event with its leader's facts");
        };
        let no_name = KernelEvent {
            comm: [0; COMM_LEN],
            ..announced
        };
        assert!(matches!(
            ProcessEvent::decode(&bytes(&no_name)),
            Some(ProcessEvent::New { leader: None, .. })
        ));
        assert_eq!(leader.exec_gen, 3);
        assert_eq!(leader.start_boottime_ns, 12_345_000_000);
        assert_eq!(leader.name(), "cc1");
        let file = KernelEvent {
            kind: KernelEvent::FILE,
            tgid: 42,
            exec_gen: 2,
            dev: (259 << 20) | 3,
            start: 0x1000,
            end: 0x5000,
            file_offset: 0x2000,
            inode: 77,
            ..KernelEvent::default()
        };
        assert_eq!(
            ProcessEvent::decode(&bytes(&file)),
            Some(ProcessEvent::File(FileMapping {
                tgid: 42,
                exec_gen: 2,
                start: 0x1000,
                end: 0x5000,
                file_offset: 0x2000,
                dev: (259, 3),
                inode: 77,
            }))
        );
        let drain = KernelEvent {
            kind: KernelEvent::DRAIN_SOON,
            tgid: 1,
            ..KernelEvent::default()
        };
        assert_eq!(
            ProcessEvent::decode(&bytes(&drain)),
            Some(ProcessEvent::DrainSoon { set: 1 })
        );
        let other = KernelEvent { kind: 9, ..new };
        assert_eq!(ProcessEvent::decode(&bytes(&other)), None);
        assert_eq!(ProcessEvent::decode(&bytes(&new)[..4]), None);
    }
}
