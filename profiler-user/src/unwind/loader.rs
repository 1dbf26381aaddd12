//! The table loader: a worker thread that builds unwind tables off the
//! sampling loop and writes them into the kernel, smallest file first.
//!
//! The profiler sends it requests ([`TableLoader::load`] when a process is
//! snapshotted, [`TableLoader::exited`], [`TableLoader::sampled`]) and never
//! waits for it: a process whose tables are not loaded yet is unwound with
//! frame pointers meanwhile (counted as `unwind_no_tables`). The worker
//! reads each ELF file with bounded preads from a descriptor the request carries,
//! so the file stays readable whatever happens to the process, and writes
//! through an [`UnwindMaps`], which the sampler implements with BPF map
//! syscalls and tests with memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::build::{cfi_size, from_open_file};
use super::encode::encode;
use super::registry::{FileKey, MappedFile, Placement, Registry, RegistryStats};
pub use crate::sampler::UnwindMaps;

/// An open ELF file to build a table from.
#[derive(Debug)]
pub struct FileSource {
    /// The file, open for reading.
    pub file: File,
    /// Its path, for messages.
    pub name: String,
}

/// A process whose tables the kernel should have.
#[derive(Debug)]
pub struct ProcessTables {
    /// Process id.
    pub tgid: u32,
    /// Its executable file mappings.
    pub mappings: Vec<MappedFile>,
    /// An open descriptor of each mapped file.
    pub sources: HashMap<FileKey, FileSource>,
}

/// What the loader has done, for self-metrics and the closing summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoaderStats {
    /// Tables, rows and evictions.
    pub registry: RegistryStats,
    /// Tables waiting to be built.
    pub queued: usize,
    /// Tables built since the start.
    pub tables_built: u64,
    /// Files whose tables could not be built or loaded (no CFI, unreadable,
    /// not ELF, linked too high), since the start.
    pub build_errors: u64,
    /// Kernel rows written since the start.
    pub rows_built: u64,
    /// Time spent building and loading tables (seconds in JSON).
    #[serde(serialize_with = "as_seconds")]
    pub busy: Duration,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

enum Request {
    Load(Vec<ProcessTables>),
    Exited(Vec<u32>),
    Sampled(Vec<u32>),
}

/// Handle of the loader thread. Dropping it stops the thread after the
/// file it is building, if any, without waiting for that: a large table
/// on a busy host can take a second or more, and shutdown must not.
pub struct TableLoader {
    requests: Sender<Request>,
    stats: Arc<Mutex<Published>>,
    stop: Arc<AtomicBool>,
    /// Load requests sent so far.
    sent: AtomicU64,
}

/// What the worker publishes after each request and each table.
#[derive(Clone, Copy, Debug, Default)]
struct Published {
    stats: LoaderStats,
    /// Load requests taken in so far (their tables queued or known).
    taken: u64,
}

impl TableLoader {
    /// Starts the worker for an `UNWIND_ROWS` array of `capacity` rows.
    pub fn spawn(maps: impl UnwindMaps, capacity: u32) -> io::Result<Self> {
        let (requests, receiver) = mpsc::channel();
        let stats = Arc::new(Mutex::new(Published::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            maps,
            registry: Registry::new(capacity),
            jobs: BTreeMap::new(),
            next_job: 0,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            counters: LoaderStats::default(),
            taken: 0,
        };
        std::thread::Builder::new()
            .name("hostprof-unwind".into())
            .spawn(move || worker.run(receiver))?;
        Ok(Self {
            requests,
            stats,
            stop,
            sent: AtomicU64::new(0),
        })
    }

    /// Registers each of `processes`' mappings (replacing earlier ones)
    /// and queues the tables they lack: one wake-up of the loader's
    /// thread for all of them.
    pub fn load(&self, processes: Vec<ProcessTables>) {
        if processes.is_empty() {
            return;
        }
        self.sent
            .fetch_add(processes.len() as u64, Ordering::Relaxed);
        self.send(Request::Load(processes));
    }

    /// Waits until every table requested so far is built (or found
    /// unusable), or until `timeout`; calls `progress` about every
    /// second meanwhile. True when all are done.
    pub fn settle(&self, timeout: Duration, mut progress: impl FnMut(&LoaderStats)) -> bool {
        let started = Instant::now();
        let mut told = started;
        loop {
            let published = self.published();
            if published.taken == self.sent.load(Ordering::Relaxed) && published.stats.queued == 0 {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            if told.elapsed() >= Duration::from_secs(1) {
                progress(&published.stats);
                told = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Forgets processes that exited, freeing tables only they used.
    pub fn exited(&self, tgids: Vec<u32>) {
        if !tgids.is_empty() {
            self.send(Request::Exited(tgids));
        }
    }

    /// Marks processes as just sampled (for least-recently-used eviction).
    pub fn sampled(&self, tgids: Vec<u32>) {
        self.send(Request::Sampled(tgids));
    }

    /// What the loader has done so far.
    pub fn stats(&self) -> LoaderStats {
        self.published().stats
    }

    fn published(&self) -> Published {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, request: Request) {
        // The worker only stops when this handle drops.
        let _ = self.requests.send(request);
    }
}

impl Drop for TableLoader {
    fn drop(&mut self) {
        // The channel closes with `requests`; the flag stops a worker that
        // is between files with jobs queued.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A table to build; the size of its call frame information orders the
/// queue.
struct Job {
    key: FileKey,
    source: FileSource,
}

struct Worker<M> {
    maps: M,
    registry: Registry,
    /// Tables to build, least call frame information first (a program's
    /// own table is usually in use long before the shared libraries' are
    /// built), with a sequence number to keep arrival order among equals.
    jobs: BTreeMap<(u64, u64), Job>,
    next_job: u64,
    stats: Arc<Mutex<Published>>,
    stop: Arc<AtomicBool>,
    counters: LoaderStats,
    /// Load requests taken in.
    taken: u64,
}

impl<M: UnwindMaps> Worker<M> {
    fn run(mut self, requests: Receiver<Request>) {
        loop {
            // Take every request there is; wait only when idle.
            let first = if self.jobs.is_empty() {
                match requests.recv() {
                    Ok(request) => Some(request),
                    Err(_) => return,
                }
            } else {
                match requests.recv_timeout(Duration::ZERO) {
                    Ok(request) => Some(request),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            for request in first.into_iter().chain(requests.try_iter()) {
                self.handle(request);
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Some((_, job)) = self.jobs.pop_first() {
                let started = Instant::now();
                if self.registry.is_pending(&job.key) {
                    // Loaded or not, its users' entries change: rows, or
                    // frame pointers instead of the pending stop.
                    self.load_file(&job.key, &job.source);
                    for user in self.registry.users(&job.key) {
                        self.publish_entry(user);
                    }
                }
                self.counters.busy += started.elapsed();
            }
            self.publish();
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Load(processes) => {
                for process in processes {
                    self.register(process);
                    self.taken += 1;
                }
            }
            Request::Exited(tgids) => {
                for tgid in tgids {
                    self.maps.remove_process(tgid);
                    self.registry.remove_process(tgid);
                }
                // Their entries are gone: the rows only they used go too.
                self.release_freed();
                // Tables only they wanted are no longer built.
                let registry = &self.registry;
                self.jobs.retain(|_, job| registry.is_pending(&job.key));
            }
            Request::Sampled(tgids) => self.registry.touch(&tgids),
        }
    }

    fn publish(&mut self) {
        self.counters.registry = self.registry.stats();
        self.counters.queued = self.jobs.len();
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = Published {
            stats: self.counters,
            taken: self.taken,
        };
    }

    /// Lets program runs that may read rows freed since the last call
    /// (through entries rewritten or removed before) finish, then gives
    /// those rows' kernel memory back.
    fn release_freed(&mut self) {
        let freed = self.registry.take_freed();
        if freed.is_empty() {
            return;
        }
        self.maps.quiesce();
        for rows in freed {
            self.maps.release_rows(rows);
        }
    }

    /// Records `process`'s mappings, queues the tables not loaded yet and
    /// publishes its entry with those already loaded (shared libraries
    /// usually are) and the queued ones as pending.
    fn register(&mut self, mut process: ProcessTables) {
        let tgid = process.tgid;
        let wanted = self.registry.set_process(tgid, process.mappings);
        for key in wanted {
            if self.jobs.values().any(|job| job.key == key) {
                continue;
            }
            let Some(source) = process.sources.remove(&key) else {
                self.registry.mark_unusable(&key);
                continue;
            };
            let size = cfi_size(&source.file);
            self.jobs.insert((size, self.next_job), Job { key, source });
            self.next_job += 1;
        }
        self.publish_entry(tgid);
    }

    /// Writes `tgid`'s entry as the registry has it now (removes it when
    /// none of its files is loaded).
    fn publish_entry(&mut self, tgid: u32) {
        match self.registry.entry(tgid) {
            Some(entry) => {
                if let Err(err) = self.maps.set_process(tgid, &entry) {
                    log::debug!("process {tgid}: unwind tables not loaded: {err}");
                    self.maps.remove_process(tgid);
                }
            }
            None => self.maps.remove_process(tgid),
        }
    }

    /// Builds and writes one file's table; true when it was loaded.
    fn load_file(&mut self, key: &FileKey, source: &FileSource) -> bool {
        let started = Instant::now();
        let built = from_open_file(&source.file, &source.name)
            .map_err(|err| err.to_string())
            .and_then(|file| {
                let rows = encode(&file.table).map_err(|err| format!("{}: {err}", source.name))?;
                Ok((rows, file.segments))
            });
        let (rows, segments) = match built {
            Ok(built) if !built.0.is_empty() => built,
            Ok(_) => {
                // No CFI: frame pointers only, nothing to report.
                self.registry.mark_unusable(key);
                return false;
            }
            Err(err) => {
                log::debug!("no unwind table: {err}");
                self.counters.build_errors += 1;
                self.registry.mark_unusable(key);
                return false;
            }
        };
        let Ok(len) = u32::try_from(rows.len()) else {
            self.registry.mark_unusable(key);
            return false;
        };
        match self.registry.place(key, len, segments) {
            Placement::Placed { rows: at, affected } => {
                for process in affected {
                    self.publish_entry(process);
                }
                // Entries were rewritten above (or removed, or replaced
                // after an exec) before rows were freed: let program runs
                // that read the old entries finish before reusing rows.
                self.release_freed();
                if let Err(err) = self.maps.write_rows(at.start, &rows) {
                    log::warn!("loading the unwind table of {}: {err}", source.name);
                    self.counters.build_errors += 1;
                    self.registry.mark_unusable(key);
                    return false;
                }
                self.counters.tables_built += 1;
                self.counters.rows_built += u64::from(len);
                log::debug!(
                    "{}: unwind table of {len} rows loaded in {:?}",
                    source.name,
                    started.elapsed()
                );
                true
            }
            Placement::NoRoom { affected } => {
                // Files evicted on the way: their processes' entries no
                // longer point at them before their rows go.
                for process in affected {
                    self.publish_entry(process);
                }
                self.release_freed();
                log::info!(
                    "{}: its unwind table ({len} rows) does not fit the table budget; \
                     frame pointers only (raise --unwind-table-budget)",
                    source.name
                );
                false
            }
            Placement::Unwanted => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::{UnwindProcess, UnwindRow as KernelRow};

    use super::*;
    use crate::process::ProcessTable;
    use crate::unwind::registry::FileKey;

    /// Kernel maps in memory.
    #[derive(Default)]
    struct Memory {
        rows: Vec<KernelRow>,
        processes: HashMap<u32, UnwindProcess>,
        quiesces: usize,
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Memory>>);

    impl UnwindMaps for Shared {
        fn write_rows(&mut self, start: u32, rows: &[KernelRow]) -> io::Result<()> {
            let mut memory = self.0.lock().unwrap();
            let end = start as usize + rows.len();
            if memory.rows.len() < end {
                memory.rows.resize(end, KernelRow::default());
            }
            memory.rows[start as usize..end].copy_from_slice(rows);
            Ok(())
        }
        fn release_rows(&mut self, rows: std::ops::Range<u32>) {
            let mut memory = self.0.lock().unwrap();
            let end = (rows.end as usize).min(memory.rows.len());
            for row in &mut memory.rows[(rows.start as usize).min(end)..end] {
                *row = KernelRow::default();
            }
        }
        fn set_process(&mut self, tgid: u32, entry: &UnwindProcess) -> io::Result<()> {
            self.0.lock().unwrap().processes.insert(tgid, *entry);
            Ok(())
        }
        fn remove_process(&mut self, tgid: u32) {
            self.0.lock().unwrap().processes.remove(&tgid);
        }
        fn quiesce(&mut self) {
            self.0.lock().unwrap().quiesces += 1;
        }
    }

    /// This test process's tables request, from a real snapshot.
    fn own_tables(processes: &mut ProcessTable) -> ProcessTables {
        let me = std::process::id();
        processes.observe(me).unwrap();
        let info = processes.process(me).unwrap();
        let mut sources = HashMap::new();
        let mappings = info
            .mappings
            .iter()
            .map(|m| {
                let key = FileKey::Module(m.module);
                let module = processes.module(m.module);
                sources.insert(
                    key.clone(),
                    FileSource {
                        file: File::open(&module.path).unwrap(),
                        name: module.path.display().to_string(),
                    },
                );
                MappedFile {
                    start: m.start,
                    end: m.end,
                    file_offset: m.file_offset,
                    key,
                }
            })
            .collect();
        ProcessTables {
            tgid: me,
            mappings,
            sources,
        }
    }

    fn wait_for(loader: &TableLoader, done: impl Fn(&LoaderStats) -> bool) -> LoaderStats {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stats = loader.stats();
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "loader stuck: {stats:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn loads_own_tables_off_thread_and_frees_them_on_exit() {
        let memory = Shared::default();
        let loader = TableLoader::spawn(memory.clone(), 1 << 24).unwrap();
        let mut processes = ProcessTable::new();
        let me = std::process::id();
        loader.load(vec![own_tables(&mut processes)]);
        // Settled means every table of the request is in: no waiting on
        // counters that may not have moved yet.
        assert!(loader.settle(Duration::from_secs(60), |_| {}));
        let stats = loader.stats();
        assert_eq!(stats.registry.processes, 1);
        assert_eq!(stats.queued, 0);
        assert!(
            stats.tables_built >= 2,
            "the test binary and libc: {stats:?}"
        );

        // Our own code's pc maps to a row covering it.
        let entry = memory.0.lock().unwrap().processes[&me];
        let pc = loads_own_tables_off_thread_and_frees_them_on_exit as *const () as u64;
        let mapping = entry.mappings[..entry.count as usize]
            .iter()
            .find(|m| (m.start..m.end).contains(&pc))
            .expect("own code mapped");
        let vaddr = pc.wrapping_add(mapping.adjust) as u32;
        let rows = memory.0.lock().unwrap().rows
            [mapping.row_start as usize..(mapping.row_start + mapping.row_count) as usize]
            .to_vec();
        let row = rows.iter().rev().find(|r| r.pc <= vaddr).expect("a row");
        assert_ne!(row.cfa_kind(), KernelRow::CFA_NONE);

        // Loading the same process again builds nothing new.
        loader.load(vec![own_tables(&mut processes)]);
        assert!(loader.settle(Duration::from_secs(60), |_| {}));
        assert_eq!(loader.stats().tables_built, stats.tables_built);

        loader.exited(vec![me]);
        let stats = wait_for(&loader, |s| s.registry.processes == 0);
        assert_eq!(stats.registry.rows_used, 0);
        assert!(!memory.0.lock().unwrap().processes.contains_key(&me));
    }

    #[test]
    fn a_corrupt_file_is_counted_and_skipped() {
        let memory = Shared::default();
        let loader = TableLoader::spawn(memory.clone(), 1 << 20).unwrap();
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut bad, b"\x7fELF not really").unwrap();
        let key = FileKey::BuildId(vec![1, 2, 3]);
        loader.load(vec![ProcessTables {
            tgid: 42,
            mappings: vec![MappedFile {
                start: 0x1000,
                end: 0x2000,
                file_offset: 0,
                key: key.clone(),
            }],
            sources: HashMap::from([(
                key,
                FileSource {
                    file: File::open(bad.path()).unwrap(),
                    name: "corrupt".into(),
                },
            )]),
        }]);
        let stats = wait_for(&loader, |s| s.build_errors == 1 && s.queued == 0);
        assert_eq!(stats.tables_built, 0);
        assert!(!memory.0.lock().unwrap().processes.contains_key(&42));
    }
}
