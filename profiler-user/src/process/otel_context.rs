//! Finds the processes that publish OpenTelemetry thread context, and
//! where their threads keep it, for the kernel side to read at each
//! sample (see `profiler-ebpf/src/trace.rs`).
//!
//! A process is checked when it is first sampled, then again at most
//! every [`RECHECK`] while it is sampled and publishes nothing (an SDK
//! starts after its process), and again after an `exec`: a location holds
//! the exec generation it was found in, and the kernel reads it only while
//! the process is still in that image. Following OTEP 4947, TLS discovery waits for
//! the process context (OTEP 4719): a mapping named `OTEL_CTX` whose
//! protobuf payload names a supported `threadlocal.schema_version`. Only
//! then are the process's mapped ELF files searched for
//! `otel_thread_ctx_v1` and its location worked out (see
//! [`super::thread_context`], the pure part). Reads go through `/proc`:
//! the maps, the mapped files, and a few words of process memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::time::{Duration, Instant};

use profiler_common::ThreadContextLocation;

use super::maps::{self, MapEntry, MapPath};
use super::procfs::{open_mapped_file, read_proc};
use super::thread_context::{self, Discovery, ThreadContextError, TlsLocation, HEADER_SIZE};
use super::ProcessTable;
use crate::sampler::ThreadContexts;

/// How long a sampled process that publishes no context goes unchecked.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Largest ELF file searched for the variable.
const MAX_ELF_BYTES: u64 = 512 << 20;

/// Tries at reading a process context that is being updated.
const HEADER_TRIES: usize = 3;

/// What was found of one process.
#[derive(Clone, Copy, Debug)]
enum Checked {
    /// Publishes nothing (yet), as of then.
    Nothing(Instant),
    /// Its location, found in this exec generation, is in the kernel map.
    Published(u32),
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
}

/// The processes checked so far, and where their locations go.
pub struct ContextDiscovery {
    sink: Box<dyn ThreadContexts>,
    checked: HashMap<u32, Checked>,
}

impl ContextDiscovery {
    /// Discovery that publishes locations to `sink`.
    pub fn new(sink: Box<dyn ThreadContexts>) -> Self {
        Self {
            sink,
            checked: HashMap::new(),
        }
    }

    /// Takes in one drain: checks its `sampled` processes (those that
    /// published nothing are checked again now and then: an SDK starts
    /// after its process) and forgets the `exited` ones.
    pub fn drained(&mut self, sampled: &[u32], exited: &[u32], processes: &ProcessTable) {
        let now = Instant::now();
        for &tgid in sampled {
            self.check(tgid, now, processes);
        }
        self.exited(exited);
    }

    /// Checks process `tgid` if it was never checked, found publishing
    /// nothing more than [`RECHECK`] ago, or exec'd since it was found
    /// (its exec generation read from `processes`).
    pub fn check(&mut self, tgid: u32, now: Instant, processes: &ProcessTable) {
        let generation = |tgid| processes.generation(tgid);
        match self.checked.get(&tgid) {
            Some(Checked::Published(found)) if *found == generation(tgid) => return,
            Some(Checked::Nothing(at)) if now.duration_since(*at) < RECHECK => return,
            Some(Checked::Published(_)) => self.sink.withdraw(tgid),
            _ => {}
        }
        let before = generation(tgid);
        let found = discover(tgid);
        if generation(tgid) != before {
            // An exec while the process was read: its image may be mixed.
            self.checked.insert(tgid, Checked::Nothing(now));
            return;
        }
        let checked = match found {
            Ok(Some(mut location)) => {
                location.exec_gen = before;
                log::info!(
                    "process {tgid}: reading its OpenTelemetry thread context {}",
                    describe(&location)
                );
                self.sink.publish(tgid, location);
                Checked::Published(before)
            }
            Ok(None) => Checked::Nothing(now),
            Err(err) => {
                // Each recheck period: it may be fixed by the SDK later
                // (a schema update, a library loaded).
                log::debug!("process {tgid}: publishes OpenTelemetry context, not read: {err}");
                Checked::Nothing(now)
            }
        };
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
    let Ok(text) = read_proc(&format!("/proc/{pid}/maps"), pid) else {
        return Ok(None); // gone
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
        let Some(data) = open_mapped_file(pid, entry, path).and_then(read_elf) else {
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
        let Some(bias) = thread_context::load_bias(&data, entry.file_offset, entry.start) else {
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
fn is_context_mapping(entry: &MapEntry) -> bool {
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
