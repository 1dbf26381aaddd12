//! Finds the processes that publish OpenTelemetry thread context, and
//! where their threads keep it, for the kernel side to read at each
//! sample (see `profiler-ebpf/src/trace.rs`).
//!
//! A process is checked when it is first sampled (often in its first
//! milliseconds, before its SDK has published anything). While it
//! publishes nothing it is checked again after [`FIRST_RECHECK`], then
//! after twice as long each time up to every [`RECHECK`]: the checks due
//! within [`QUICK`] of the last run on a timer ([`ContextDiscovery::next_quick`]),
//! the later ones at drains that sampled the process. It is checked again
//! after an `exec` (a fork sampled before it execs is checked in its new
//! image at its next sample). A location holds the exec generation it was found in, and the
//! kernel reads it only while the process is still in that image. Following OTEP 4947, TLS discovery waits for
//! the process context (OTEP 4719): a mapping named `OTEL_CTX` whose
//! protobuf payload names a supported `threadlocal.schema_version`. Only
//! then are the process's mapped ELF files searched for
//! `otel_thread_ctx_v1` and its location worked out (see
//! [`super::thread_context`], the pure part). Reads go through `/proc`:
//! the maps, the mapped files, and a few words of process memory.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::time::{Duration, Instant};

use profiler_common::ThreadContextLocation;

use super::maps::{self, MapEntry, MapPath};
use super::procfs::{open_mapped_file, read_proc};
use super::thread_context::{self, Discovery, ThreadContextError, TlsLocation, HEADER_SIZE};
use super::{ProcessError, ProcessTable};
use crate::sampler::ProcessMap;

/// How long a sampled process that published no context at its first
/// check goes unchecked; doubled at each further miss up to [`RECHECK`].
pub const FIRST_RECHECK: Duration = Duration::from_millis(100);

/// Rechecks due sooner than this after the last are run on a timer, not
/// left to the next drain that samples the process (four of them:
/// 0.1, 0.2, 0.4 and 0.8 s).
pub const QUICK: Duration = Duration::from_secs(1);

/// Quick rechecks run on a grid of this step, each at the first grid time
/// at or after it is due, so that those of processes started within one
/// step share a wake-up: a build host starts hundreds of processes a
/// second, four quick rechecks each, which as timers of their own woke
/// the profiler's thread about 800 times a second.
const QUICK_STEP: Duration = Duration::from_millis(100);

/// A snapshot of a process's maps at most this old stands for reading them
/// again: the check right after a new process's snapshot reads nothing.
const SNAPSHOT_IS_FRESH: Duration = Duration::from_millis(10);

/// Longest a sampled process that publishes no context goes unchecked.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Largest ELF file searched for the variable.
const MAX_ELF_BYTES: u64 = 512 << 20;

/// Tries at reading a process context that is being updated.
const HEADER_TRIES: usize = 3;

/// What was found of one process.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Checked {
    /// Published nothing (yet) in exec `generation` as of `at`; not
    /// checked again in that image before `wait` has passed.
    Nothing {
        at: Instant,
        wait: Duration,
        generation: u32,
    },
    /// Its location, found in this exec generation, is in the kernel map.
    Published(u32),
}

impl Checked {
    /// Whether a process so checked is checked again at `now`, when it
    /// is in exec `generation`.
    fn due(&self, now: Instant, generation: u32) -> bool {
        match *self {
            Checked::Published(found) => found != generation,
            Checked::Nothing {
                at,
                wait,
                generation: seen,
            } => seen != generation || now.duration_since(at) >= wait,
        }
    }

    /// What is kept of a check at `now`, in exec `generation`, that found
    /// nothing, after `before` (the previous check, if any).
    fn nothing(before: Option<&Checked>, now: Instant, generation: u32) -> Checked {
        let wait = match before {
            Some(Checked::Nothing {
                wait,
                generation: seen,
                ..
            }) if *seen == generation => (*wait * 2).min(RECHECK),
            _ => FIRST_RECHECK,
        };
        Checked::Nothing {
            at: now,
            wait,
            generation,
        }
    }
}

/// Why a process's thread context could not be located.
#[derive(Debug, thiserror::Error)]
enum DiscoveryError {
    #[error("reading its memory at {addr:#x}: {source}")]
    Memory { addr: u64, source: std::io::Error },
    #[error(transparent)]
    Context(#[from] ThreadContextError),
    #[error("its process context kept changing while read")]
    Unstable,
    /// The process exited.
    #[error("it exited")]
    Gone,
}

/// The processes checked so far, and where their locations go.
pub struct ContextDiscovery {
    sink: Box<dyn ProcessMap<ThreadContextLocation>>,
    checked: HashMap<u32, Checked>,
    /// Quick rechecks to run, by when they are due.
    quick: BTreeSet<(Instant, u32)>,
    /// Where the [`QUICK_STEP`] grid starts.
    epoch: Instant,
}

impl ContextDiscovery {
    /// Discovery that publishes locations to `sink`.
    pub fn new(sink: Box<dyn ProcessMap<ThreadContextLocation>>) -> Self {
        Self {
            sink,
            checked: HashMap::new(),
            quick: BTreeSet::new(),
            epoch: Instant::now(),
        }
    }

    /// The first time on the [`QUICK_STEP`] grid at or after `at`.
    fn on_grid(&self, at: Instant) -> Instant {
        let step = QUICK_STEP.as_nanos();
        let steps = at
            .saturating_duration_since(self.epoch)
            .as_nanos()
            .div_ceil(step);
        let offset = u64::try_from(steps * step).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(offset)
    }

    /// When the first quick recheck is due, if any.
    pub fn next_quick(&self) -> Option<Instant> {
        self.quick.first().map(|&(at, _)| at)
    }

    /// Runs the quick rechecks due by `now` (of processes not gone since).
    pub fn quick(&mut self, now: Instant, processes: &ProcessTable) {
        while let Some(&(at, tgid)) = self.quick.first() {
            if at > now {
                break;
            }
            self.quick.pop_first();
            if self.checked.contains_key(&tgid) {
                self.check(tgid, now, processes);
            }
        }
    }

    /// Takes in one drain: checks its `sampled` processes (those that
    /// published nothing are checked again now and then: an SDK starts
    /// after its process) and forgets the `exited` ones.
    pub fn drained(&mut self, sampled: &[u32], exited: &[u32], processes: &ProcessTable) {
        let now = Instant::now();
        for &tgid in sampled {
            // Those found gone have nothing left to read.
            if !exited.contains(&tgid) {
                self.check(tgid, now, processes);
            }
        }
        self.exited(exited);
    }

    /// Checks process `tgid` if it was never checked, is due again after
    /// publishing nothing (see [`Checked::due`]), or exec'd since it was
    /// last checked (its exec generation read from `processes`).
    pub fn check(&mut self, tgid: u32, now: Instant, processes: &ProcessTable) {
        let generation = |tgid| processes.generation(tgid);
        let before = generation(tgid);
        let previous = self.checked.get(&tgid).copied();
        match previous {
            Some(checked) if !checked.due(now, before) => return,
            Some(Checked::Published(_)) => self.sink.withdraw(tgid),
            _ => {}
        }
        // A snapshot just taken (a new process's, as it was first
        // sampled) read the same maps a moment ago.
        let found = if processes.read_without_context(tgid, before, now, SNAPSHOT_IS_FRESH) {
            Ok(None)
        } else if processes.known_exited(tgid) {
            // Its exit is stamped in the kernel: no maps left to read.
            Err(DiscoveryError::Gone)
        } else {
            discover(tgid)
        };
        let after = generation(tgid);
        if after != before {
            // An exec while the process was read: its image may be mixed;
            // the new image is checked at its next sample.
            self.checked
                .insert(tgid, Checked::nothing(None, now, after));
            self.quick.insert((self.on_grid(now + FIRST_RECHECK), tgid));
            return;
        }
        let checked = match found {
            // Exited: nothing to recheck (a process that reuses the pid
            // is checked when sampled, as any new one).
            Err(DiscoveryError::Gone) => {
                self.checked.remove(&tgid);
                return;
            }
            Ok(Some(mut location)) => {
                location.exec_gen = before;
                log::info!(
                    "process {tgid}: reading its OpenTelemetry thread context {}",
                    describe(&location)
                );
                self.sink.publish(tgid, location);
                Checked::Published(before)
            }
            Ok(None) => Checked::nothing(previous.as_ref(), now, before),
            Err(err) => {
                // At each recheck: it may be fixed by the SDK later (a
                // schema update, a library loaded).
                log::debug!("process {tgid}: publishes OpenTelemetry context, not read: {err}");
                Checked::nothing(previous.as_ref(), now, before)
            }
        };
        if let Checked::Nothing { at, wait, .. } = checked {
            if wait < QUICK {
                self.quick.insert((self.on_grid(at + wait), tgid));
            }
        }
        self.checked.insert(tgid, checked);
    }

    /// Forgets processes that exited (their pids may be reused).
    fn exited(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            if let Some(Checked::Published(_)) = self.checked.remove(tgid) {
                self.sink.withdraw(*tgid);
            }
        }
    }
}

/// Where process `pid` keeps its threads' context pointer; `None` when
/// it publishes no (usable) process context or no module defines the
/// variable.
fn discover(pid: u32) -> Result<Option<ThreadContextLocation>, DiscoveryError> {
    let text = match read_proc(&format!("/proc/{pid}/maps"), pid) {
        Ok(text) => text,
        Err(ProcessError::Gone { .. }) => return Err(DiscoveryError::Gone),
        Err(_) => return Ok(None),
    };
    let Ok(entries) = maps::parse(&text) else {
        return Ok(None);
    };
    let Some(context) = entries.iter().find(|e| is_context_mapping(e)) else {
        return Ok(None);
    };
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(|source| DiscoveryError::Memory {
        addr: context.start,
        source,
    })?;
    let schema = process_context(&mem, context.start)?;
    log::debug!(
        "process {pid}: process context, schema {}, service {:?}",
        schema.schema_version,
        schema.service_name
    );
    // glibc's DTV layout is what the kernel side reads; musl's differs.
    let musl = entries.iter().any(|e| match &e.path {
        MapPath::File(path) => path.to_string_lossy().contains("ld-musl"),
        _ => false,
    });
    // The executable and every library, each file once.
    let mut seen = Vec::new();
    for entry in entries.iter().filter(|e| e.executable) {
        let (MapPath::File(path) | MapPath::Deleted(path)) = &entry.path else {
            continue;
        };
        if seen.contains(&(entry.dev, entry.inode)) {
            continue;
        }
        seen.push((entry.dev, entry.inode));
        let Some(data) = open_mapped_file(pid, entry, path).ok().and_then(read_elf) else {
            continue;
        };
        let access = match thread_context::find_tls_symbol(&data) {
            Ok(Discovery::Found(access)) => access,
            Ok(Discovery::NotExported) => continue,
            Ok(Discovery::Unsupported(why)) => {
                log::info!("process {pid}: {}: {why}", path.display());
                continue;
            }
            Err(err) => {
                log::info!("process {pid}: {}: {err}", path.display());
                continue;
            }
        };
        let Some(bias) = thread_context::load_bias(&data[..], entry.file_offset, entry.start)
        else {
            continue;
        };
        let read_u64 = |addr: u64| {
            let mut word = [0; 8];
            mem.read_exact_at(&mut word, addr).ok()?;
            Some(u64::from_ne_bytes(word))
        };
        let location = thread_context::locate(&access, bias, read_u64);
        if musl && matches!(location, Some(TlsLocation::Dtv { .. })) {
            log::debug!("process {pid}: dynamic TLS of musl is not read");
            return Ok(None);
        }
        return Ok(location.map(|location| match location {
            TlsLocation::Static { tp_offset } => ThreadContextLocation {
                kind: ThreadContextLocation::STATIC,
                tp_offset,
                ..Default::default()
            },
            TlsLocation::Dtv { module_id, offset } => ThreadContextLocation {
                kind: ThreadContextLocation::DTV,
                module_id,
                offset,
                ..Default::default()
            },
        }));
    }
    Ok(None)
}

/// Where `location` says the pointer is, for the log.
fn describe(location: &ThreadContextLocation) -> String {
    match location.kind {
        ThreadContextLocation::STATIC => {
            format!(
                "in static TLS, at {} from the thread pointer",
                location.tp_offset
            )
        }
        _ => format!(
            "in dynamic TLS, at {:#x} in the block of module {}",
            location.offset, location.module_id
        ),
    }
}

/// The process-context mapping (readers skip executable ones).
pub(super) fn is_context_mapping(entry: &MapEntry) -> bool {
    let name = match &entry.path {
        MapPath::File(path) | MapPath::Deleted(path) => path.to_string_lossy(),
        MapPath::Pseudo(name) => name.as_str().into(),
        MapPath::Anonymous => return false,
    };
    !entry.executable && thread_context::is_process_context_mapping(&name)
}

/// The process context whose header is at `addr` of the process's
/// memory: header, payload, then the header's timestamp again, which must
/// not have moved (OTEP 4719's reading protocol).
fn process_context(
    mem: &File,
    addr: u64,
) -> Result<thread_context::ThreadContextSchema, DiscoveryError> {
    let read = |addr: u64, len: usize| {
        let mut buf = vec![0; len];
        mem.read_exact_at(&mut buf, addr)
            .map_err(|source| DiscoveryError::Memory { addr, source })?;
        Ok::<_, DiscoveryError>(buf)
    };
    for _ in 0..HEADER_TRIES {
        let header = match thread_context::parse_header(&read(addr, HEADER_SIZE)?) {
            Err(ThreadContextError::BeingUpdated) => continue,
            header => header?,
        };
        let payload = read(header.payload_addr, header.payload_size as usize)?;
        let again = thread_context::parse_header(&read(addr, HEADER_SIZE)?);
        if again.is_ok_and(|h| h.published_at_ns == header.published_at_ns) {
            return Ok(thread_context::decode_process_context(&payload)?);
        }
    }
    Err(DiscoveryError::Unstable)
}

/// A mapped file's bytes, if it is an ELF file of a size worth reading.
fn read_elf(mut file: File) -> Option<Vec<u8>> {
    let len = file.metadata().ok()?.len();
    if len > MAX_ELF_BYTES {
        return None;
    }
    let mut magic = [0; 4];
    file.read_exact_at(&mut magic, 0).ok()?;
    if magic != *b"\x7fELF" {
        return None;
    }
    let mut data = Vec::with_capacity(len as usize);
    file.read_to_end(&mut data).ok()?;
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_publishing_nothing_is_checked_again_sooner_at_first() {
        let start = Instant::now();
        let mut checked = Checked::nothing(None, start, 1);
        let mut waits = Vec::new();
        let mut now = start;
        for _ in 0..8 {
            let Checked::Nothing { wait, .. } = checked else {
                unreachable!()
            };
            waits.push(wait.as_millis());
            assert!(!checked.due(now + wait - Duration::from_millis(1), 1));
            now += wait;
            assert!(checked.due(now, 1));
            checked = Checked::nothing(Some(&checked), now, 1);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 6400, 10_000]);
        let quick = waits.iter().filter(|&&ms| ms < QUICK.as_millis()).count();
        assert_eq!(quick, 4, "the rechecks on a timer");
    }

    struct Nowhere;
    impl ProcessMap<ThreadContextLocation> for Nowhere {
        fn publish(&mut self, _: u32, _: ThreadContextLocation) {}
        fn withdraw(&mut self, _: u32) {}
    }

    #[test]
    fn a_process_gone_is_not_checked_again() {
        let mut discovery = ContextDiscovery::new(Box::new(Nowhere));
        let processes = ProcessTable::new();
        // A pid above the kernel's limit (2^22) is never in /proc.
        let gone = (1 << 22) + 7;
        discovery.check(gone, Instant::now(), &processes);
        assert!(discovery.checked.is_empty());
        assert_eq!(discovery.next_quick(), None);
        // A live one publishing nothing is rechecked soon.
        discovery.check(std::process::id(), Instant::now(), &processes);
        assert!(discovery.next_quick().is_some());
    }

    #[test]
    fn quick_rechecks_due_within_one_step_share_a_time_no_earlier() {
        let discovery = ContextDiscovery::new(Box::new(Nowhere));
        let due = [1, 40, 99].map(|ms| discovery.epoch + Duration::from_millis(ms));
        let times = due.map(|at| discovery.on_grid(at));
        assert!(times.iter().all(|&t| t == times[0]), "{times:?}");
        assert!(times.iter().zip(due).all(|(&t, at)| t >= at));
        assert_eq!(discovery.on_grid(discovery.epoch), discovery.epoch);
        assert_eq!(
            discovery.on_grid(due[2] + Duration::from_millis(2)),
            discovery.epoch + QUICK_STEP * 2
        );
    }

    #[test]
    fn an_exec_makes_a_process_due_at_once() {
        let start = Instant::now();
        // A fork sampled before its exec: nothing in generation 1.
        let mut checked = Checked::nothing(None, start, 1);
        checked = Checked::nothing(Some(&checked), start, 1);
        assert!(checked.due(start, 2), "the new image is checked at once");
        // The new image starts over at the shortest wait.
        let fresh = Checked::nothing(Some(&checked), start, 2);
        assert_eq!(
            fresh,
            Checked::Nothing {
                at: start,
                wait: FIRST_RECHECK,
                generation: 2
            }
        );
        // A location is kept for its image only.
        assert!(!Checked::Published(2).due(start + RECHECK * 10, 2));
        assert!(Checked::Published(2).due(start, 3));
    }
}
