//! Which unwind tables the kernel holds, and for whom: each file's table
//! is placed once in `UNWIND_ROWS` and shared by every process mapping the
//! file (keyed by build id, so containers share too). A table no process
//! uses any more stays, unreferenced, until its room is needed: the next
//! `cc1` of a build, or the next pod of a deployment, finds it built. When
//! the budget is full, unreferenced tables are evicted first, then the
//! least recently sampled. Per process it computes the
//! [`UnwindProcess`] entry that maps its executable mappings to rows.
//!
//! Pure bookkeeping: the worker in [`super::loader`] builds tables and
//! writes what this decides into the kernel.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use profiler_common::{UnwindMapping, UnwindProcess, UNWIND_CHUNK_ROWS, UNWIND_MAPPINGS_MAX};

use super::build::LoadSegment;
use super::space::RowSpace;
use crate::process::ModuleId;

/// Identity of a file's table: its GNU build id when it has one (the same
/// code in every container and every path), else the file itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKey {
    /// The file's build id.
    BuildId(Vec<u8>),
    /// A file without build id, by device and inode.
    Module(ModuleId),
}

/// An executable file mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// The file's table.
    pub key: FileKey,
}

/// Where a file's table stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FileState {
    /// Wanted, not built yet.
    Pending,
    /// In the kernel at these rows.
    Loaded {
        rows: Range<u32>,
        segments: Vec<LoadSegment>,
    },
    /// No usable table (none in the file, unreadable, too large, or
    /// evicted for room): its frames are unwound with frame pointers until
    /// no process maps it.
    Unusable,
}

#[derive(Clone, Debug)]
struct FileEntry {
    state: FileState,
    /// Processes mapping the file.
    users: BTreeSet<u32>,
    /// Clock value when a user was last sampled.
    last_used: u64,
}

/// The outcome of [`Registry::place`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Write the rows here. `affected` processes lost evicted files: write
    /// their entries again (and let in-flight readers finish) first.
    Placed {
        /// The rows to write.
        rows: Range<u32>,
        /// Processes whose entries changed.
        affected: Vec<u32>,
    },
    /// Larger than the whole budget left after evicting what may be
    /// evicted. `affected` processes lost files evicted on the way: write
    /// their entries again (and let in-flight readers finish) all the
    /// same.
    NoRoom {
        /// Processes whose entries changed.
        affected: Vec<u32>,
    },
    /// The file is no longer wanted (its processes went away meanwhile).
    Unwanted,
}

/// Counts for self-metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryStats {
    /// Processes with mappings registered.
    pub processes: usize,
    /// Files whose tables are in the kernel.
    pub files_loaded: usize,
    /// Rows in use.
    pub rows_used: u32,
    /// Rows in the budget.
    pub rows_capacity: u32,
    /// Files evicted to make room, since the start.
    pub evictions: u64,
    /// Files refused for lack of room, since the start.
    pub out_of_room: u64,
    /// Loaded tables no process maps (kept until their room is needed).
    pub files_unreferenced: usize,
    /// Times a process found its file's table already built with no
    /// process using it, since the start (a rebuild saved).
    pub reuses: u64,
}

/// Tables in the kernel and the processes using them.
#[derive(Debug)]
pub struct Registry {
    space: RowSpace,
    files: HashMap<FileKey, FileEntry>,
    processes: HashMap<u32, Vec<MappedFile>>,
    clock: u64,
    evictions: u64,
    out_of_room: u64,
    reuses: u64,
    /// Rows freed since [`Self::take_freed`] last took them.
    freed: Vec<Range<u32>>,
}

impl Registry {
    /// A registry for an `UNWIND_ROWS` of `capacity` rows, in chunks of
    /// [`UNWIND_CHUNK_ROWS`] (each file's table starts one).
    pub fn new(capacity: u32) -> Self {
        Self::with_granule(capacity, UNWIND_CHUNK_ROWS)
    }

    /// A registry whose tables start at multiples of `granule` rows.
    pub fn with_granule(capacity: u32, granule: u32) -> Self {
        Self {
            space: RowSpace::with_granule(capacity, granule),
            files: HashMap::new(),
            processes: HashMap::new(),
            clock: 0,
            evictions: 0,
            out_of_room: 0,
            reuses: 0,
            freed: Vec::new(),
        }
    }

    /// Records `tgid`'s mappings (replacing earlier ones: after an exec)
    /// and returns the files whose tables must be built, each once. Files
    /// no process maps any more are freed; the caller lets in-flight
    /// readers finish before rows are reused (see [`Self::remove_process`]).
    pub fn set_process(&mut self, tgid: u32, mappings: Vec<MappedFile>) -> Vec<FileKey> {
        let mut wanted = Vec::new();
        for mapping in &mappings {
            let entry = self
                .files
                .entry(mapping.key.clone())
                .or_insert_with(|| FileEntry {
                    state: FileState::Pending,
                    users: BTreeSet::new(),
                    last_used: 0,
                });
            if entry.users.is_empty() && matches!(entry.state, FileState::Loaded { .. }) {
                self.reuses += 1;
            }
            entry.users.insert(tgid);
            entry.last_used = self.clock;
            if entry.state == FileState::Pending && !wanted.contains(&mapping.key) {
                wanted.push(mapping.key.clone());
            }
        }
        // Files of the previous mappings (before an exec) it no longer maps.
        let kept: BTreeSet<&FileKey> = mappings.iter().map(|m| &m.key).collect();
        let dropped: Vec<FileKey> = self
            .processes
            .get(&tgid)
            .into_iter()
            .flatten()
            .map(|m| m.key.clone())
            .filter(|key| !kept.contains(key))
            .collect();
        for key in dropped {
            self.drop_user(&key, tgid);
        }
        self.processes.insert(tgid, mappings);
        wanted
    }

    /// Forgets `tgid`; returns true when rows were freed (the caller lets
    /// in-flight readers finish before reusing rows).
    pub fn remove_process(&mut self, tgid: u32) -> bool {
        let Some(mappings) = self.processes.remove(&tgid) else {
            return false;
        };
        let mut freed = false;
        for mapping in mappings {
            freed |= self.drop_user(&mapping.key, tgid);
        }
        freed
    }

    /// Removes `tgid` from `key`'s users. With its last user a file is
    /// forgotten unless its table is loaded and keyed by build id (any
    /// later process mapping the same build can use it); true when rows
    /// were freed.
    fn drop_user(&mut self, key: &FileKey, tgid: u32) -> bool {
        let Some(entry) = self.files.get_mut(key) else {
            return false;
        };
        entry.users.remove(&tgid);
        let reusable =
            matches!(key, FileKey::BuildId(_)) && matches!(entry.state, FileState::Loaded { .. });
        if !entry.users.is_empty() || reusable {
            return false;
        }
        match self.files.remove(key) {
            Some(FileEntry {
                state: FileState::Loaded { rows, .. },
                ..
            }) => {
                self.space.release(rows.clone());
                self.freed.push(rows);
                true
            }
            _ => false,
        }
    }

    /// The rows freed since the last call: entries that pointed to them
    /// may still be read by a program run in flight, so the caller waits
    /// for those to finish before writing or deleting rows there.
    pub fn take_freed(&mut self) -> Vec<Range<u32>> {
        std::mem::take(&mut self.freed)
    }

    /// Marks the files `tgids` map as used now (they were just sampled).
    pub fn touch(&mut self, tgids: &[u32]) {
        self.clock += 1;
        for tgid in tgids {
            for mapping in self.processes.get(tgid).into_iter().flatten() {
                if let Some(entry) = self.files.get_mut(&mapping.key) {
                    entry.last_used = self.clock;
                }
            }
        }
    }

    /// Whether `key`'s table is wanted and not built yet.
    pub fn is_pending(&self, key: &FileKey) -> bool {
        self.files
            .get(key)
            .is_some_and(|e| e.state == FileState::Pending)
    }

    /// The processes mapping `key`.
    pub fn users(&self, key: &FileKey) -> Vec<u32> {
        self.files
            .get(key)
            .map(|e| e.users.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Finds room for `key`'s table of `len` rows, evicting the least
    /// recently used files that none of `key`'s processes maps when the
    /// budget is full.
    pub fn place(&mut self, key: &FileKey, len: u32, segments: Vec<LoadSegment>) -> Placement {
        let Some(loading) = self.files.get(key).map(|e| e.users.clone()) else {
            return Placement::Unwanted;
        };
        let mut affected = BTreeSet::new();
        if !self.space.fits(len) {
            // Nothing evicted for a table larger than the whole budget.
            self.out_of_room += 1;
            self.set_state(key, FileState::Unusable);
            return Placement::NoRoom {
                affected: Vec::new(),
            };
        }
        let rows = loop {
            if let Some(rows) = self.space.allocate(len) {
                break rows;
            }
            let Some(victim) = self.least_recently_used(&loading) else {
                self.out_of_room += 1;
                self.set_state(key, FileState::Unusable);
                return Placement::NoRoom {
                    affected: affected.into_iter().collect(),
                };
            };
            let entry = self.files.get_mut(&victim).expect("victim exists");
            if let FileState::Loaded { rows, .. } =
                std::mem::replace(&mut entry.state, FileState::Unusable)
            {
                self.space.release(rows.clone());
                self.freed.push(rows);
            }
            affected.extend(entry.users.iter().copied());
            if entry.users.is_empty() {
                self.files.remove(&victim);
            }
            self.evictions += 1;
        };
        self.set_state(
            key,
            FileState::Loaded {
                rows: rows.clone(),
                segments,
            },
        );
        Placement::Placed {
            rows,
            affected: affected.into_iter().collect(),
        }
    }

    /// Records that `key` has no usable table.
    pub fn mark_unusable(&mut self, key: &FileKey) {
        if let Some(FileState::Loaded { rows, .. }) = self.set_state(key, FileState::Unusable) {
            self.space.release(rows.clone());
            self.freed.push(rows);
        }
    }

    fn set_state(&mut self, key: &FileKey, state: FileState) -> Option<FileState> {
        let entry = self.files.get_mut(key)?;
        Some(std::mem::replace(&mut entry.state, state))
    }

    /// The loaded file to evict: one no process maps, else the one
    /// sampled longest ago that none of `loading` maps.
    fn least_recently_used(&self, loading: &BTreeSet<u32>) -> Option<FileKey> {
        self.files
            .iter()
            .filter(|(_, e)| matches!(e.state, FileState::Loaded { .. }))
            .filter(|(_, e)| e.users.is_disjoint(loading))
            .min_by_key(|(key, e)| (!e.users.is_empty(), e.last_used, (*key).clone()))
            .map(|(key, _)| key.clone())
    }

    /// The kernel entry of `tgid`: its mappings whose files are loaded or
    /// still pending ([`UnwindMapping::PENDING`]: the unwinder stops there
    /// rather than guess with frame pointers), sorted by address, at most
    /// [`UNWIND_MAPPINGS_MAX`]; `None` when there are none.
    pub fn entry(&self, tgid: u32) -> Option<UnwindProcess> {
        let mut entry = UnwindProcess::default();
        let mut mappings: Vec<&MappedFile> = self.processes.get(&tgid)?.iter().collect();
        mappings.sort_by_key(|m| m.start);
        for mapping in mappings {
            if entry.count as usize == UNWIND_MAPPINGS_MAX {
                break;
            }
            let (adjust, rows) = match self.files.get(&mapping.key).map(|e| &e.state) {
                Some(FileState::Loaded { rows, segments }) => {
                    let Some(delta) = vaddr_delta(segments, mapping.file_offset) else {
                        continue;
                    };
                    // vaddr = pc - start + file_offset + (vaddr - offset of the segment)
                    let adjust = mapping
                        .file_offset
                        .wrapping_add(delta)
                        .wrapping_sub(mapping.start);
                    (adjust, rows.clone())
                }
                // Still being built: no rows, and the unwinder stops there.
                Some(FileState::Pending) => (0, UnwindMapping::PENDING..UnwindMapping::PENDING),
                _ => continue,
            };
            entry.mappings[entry.count as usize] = UnwindMapping {
                start: mapping.start,
                end: mapping.end,
                adjust,
                row_start: rows.start,
                row_count: rows.end - rows.start,
            };
            entry.count += 1;
        }
        (entry.count > 0).then_some(entry)
    }

    /// Current counts.
    pub fn stats(&self) -> RegistryStats {
        RegistryStats {
            processes: self.processes.len(),
            files_loaded: self
                .files
                .values()
                .filter(|e| matches!(e.state, FileState::Loaded { .. }))
                .count(),
            rows_used: self.space.used(),
            rows_capacity: self.space.capacity(),
            evictions: self.evictions,
            out_of_room: self.out_of_room,
            files_unreferenced: self
                .files
                .values()
                .filter(|e| e.users.is_empty() && matches!(e.state, FileState::Loaded { .. }))
                .count(),
            reuses: self.reuses,
        }
    }
}

/// `vaddr - file offset` for the executable segment mapped at
/// `file_offset`. The kernel maps from the page-aligned offset, which can
/// fall inside the previous segment's bytes (linkers pack segments without
/// page-aligning them in the file), so the executable segment whose
/// aligned offset is `file_offset` is preferred to mere containment.
pub fn vaddr_delta(segments: &[LoadSegment], file_offset: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let delta = |s: &LoadSegment| s.vaddr.wrapping_sub(s.offset);
    segments
        .iter()
        .find(|s| s.executable && s.offset & !(PAGE - 1) == file_offset)
        .or_else(|| {
            segments
                .iter()
                .find(|s| (s.offset..s.offset + s.size.max(1)).contains(&file_offset))
        })
        .map(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> FileKey {
        FileKey::BuildId(vec![n])
    }

    fn text_segment() -> Vec<LoadSegment> {
        vec![LoadSegment {
            offset: 0x1000,
            vaddr: 0x401000,
            size: 0x2000,
            executable: true,
        }]
    }

    fn mapping(start: u64, file: u8) -> MappedFile {
        MappedFile {
            start,
            end: start + 0x2000,
            file_offset: 0x1000,
            key: key(file),
        }
    }

    fn placed(placement: Placement) -> (Range<u32>, Vec<u32>) {
        match placement {
            Placement::Placed { rows, affected } => (rows, affected),
            other => panic!("not placed: {other:?}"),
        }
    }

    #[test]
    fn shares_files_between_processes_and_frees_them_with_the_last() {
        let mut registry = Registry::with_granule(100, 1);
        assert_eq!(
            registry.set_process(1, vec![mapping(0x7000_0000, 1), mapping(0x5000_0000, 2)]),
            vec![key(1), key(2)]
        );
        let (a, _) = placed(registry.place(&key(1), 10, text_segment()));
        let (b, _) = placed(registry.place(&key(2), 20, text_segment()));
        // Another process mapping file 1 builds nothing new.
        assert_eq!(
            registry.set_process(2, vec![mapping(0x6000_0000, 1)]),
            vec![]
        );

        let entry = registry.entry(1).unwrap();
        assert_eq!(entry.count, 2);
        let first = entry.mappings[0];
        assert_eq!(first.start, 0x5000_0000, "sorted by address");
        assert_eq!((first.row_start, first.row_count), (b.start, 20));
        assert_eq!(
            0x5000_0000u64.wrapping_add(first.adjust),
            0x401000,
            "the mapping's first byte is the segment's first address"
        );
        assert_eq!(entry.mappings[1].row_start, a.start);

        assert!(!registry.is_pending(&key(1)));
        assert_eq!(registry.users(&key(1)), vec![1, 2]);
        // Tables of build ids stay when their last process goes...
        assert!(!registry.remove_process(1), "file 2 kept");
        assert!(!registry.remove_process(2), "file 1 kept");
        assert!(!registry.remove_process(2), "already gone");
        let stats = registry.stats();
        assert_eq!((stats.rows_used, stats.files_unreferenced), (30, 2));
        // ...and the next process mapping one builds nothing.
        assert_eq!(
            registry.set_process(3, vec![mapping(0x6000_0000, 2)]),
            vec![]
        );
        assert_eq!(registry.entry(3).unwrap().mappings[0].row_start, b.start);
        let stats = registry.stats();
        assert_eq!((stats.reuses, stats.files_unreferenced), (1, 1));
    }

    #[test]
    fn unreferenced_tables_make_room_first_and_files_without_build_id_go() {
        let mut registry = Registry::with_granule(100, 1);
        registry.set_process(1, vec![mapping(0x1000_0000, 1)]);
        registry.set_process(2, vec![mapping(0x1000_0000, 2)]);
        placed(registry.place(&key(1), 40, text_segment()));
        placed(registry.place(&key(2), 40, text_segment()));
        registry.touch(&[2]);
        registry.remove_process(2); // file 2: the more recent, but unused
        registry.set_process(3, vec![mapping(0x1000_0000, 3)]);
        let (_, affected) = placed(registry.place(&key(3), 50, text_segment()));
        assert!(affected.is_empty(), "{affected:?}");
        assert!(registry.entry(1).is_some(), "process 1 keeps its table");
        assert_eq!(registry.stats().files_unreferenced, 0);
        assert_eq!(registry.stats().evictions, 1);
        // A file known by device and inode only is freed with its last user.
        let module = FileKey::Module(crate::process::ModuleId::for_tests(9));
        let mut plain = mapping(0x2000_0000, 0);
        plain.key = module.clone();
        registry.set_process(4, vec![plain]);
        placed(registry.place(&module, 5, text_segment()));
        assert!(registry.remove_process(4), "freed");
        assert!(!registry.is_pending(&module));
    }

    #[test]
    fn evicts_the_least_recently_sampled_file_of_another_process() {
        let mut registry = Registry::with_granule(100, 1);
        registry.set_process(1, vec![mapping(0x1000_0000, 1)]);
        registry.set_process(2, vec![mapping(0x1000_0000, 2)]);
        placed(registry.place(&key(1), 40, text_segment()));
        placed(registry.place(&key(2), 40, text_segment()));
        registry.touch(&[1]); // process 2's file is now the older one
        registry.set_process(3, vec![mapping(0x1000_0000, 3)]);
        let (rows, affected) = placed(registry.place(&key(3), 50, text_segment()));
        assert_eq!(affected, vec![2]);
        assert_eq!(rows.end - rows.start, 50);
        assert!(
            registry.entry(2).is_none(),
            "process 2 falls back to frame pointers"
        );
        assert!(registry.entry(1).is_some());
        assert_eq!(registry.stats().evictions, 1);
        // A table larger than the budget is refused, and evicts nothing
        // of the process being loaded.
        registry.set_process(4, vec![mapping(0x1000_0000, 4)]);
        assert_eq!(
            registry.place(&key(4), 101, text_segment()),
            Placement::NoRoom { affected: vec![] }
        );
        assert_eq!(registry.stats().out_of_room, 1);
    }

    #[test]
    fn a_file_no_longer_wanted_is_not_placed() {
        let mut registry = Registry::with_granule(100, 1);
        registry.set_process(1, vec![mapping(0x1000, 1)]);
        registry.remove_process(1);
        assert_eq!(
            registry.place(&key(1), 10, text_segment()),
            Placement::Unwanted
        );
    }

    #[test]
    fn exec_replaces_the_mappings() {
        let mut registry = Registry::with_granule(100, 1);
        registry.set_process(1, vec![mapping(0x1000_0000, 1)]);
        placed(registry.place(&key(1), 10, text_segment()));
        assert_eq!(
            registry.set_process(1, vec![mapping(0x1000_0000, 2)]),
            vec![key(2)]
        );
        let stats = registry.stats();
        assert_eq!(registry.users(&key(1)), Vec::<u32>::new());
        assert_eq!(
            (stats.rows_used, stats.files_unreferenced),
            (10, 1),
            "the old file's table is kept for the next process to map it"
        );
        // File 2 is not loaded yet: the unwinder stops there.
        let entry = registry.entry(1).unwrap();
        assert_eq!(entry.count, 1);
        assert_eq!(entry.mappings[0].row_start, UnwindMapping::PENDING);
        registry.mark_unusable(&key(2));
        assert!(registry.entry(1).is_none(), "no table: frame pointers");
    }

    #[test]
    fn segment_delta_prefers_the_executable_segment_at_the_aligned_offset() {
        // A Rust binary: R segment 0..0x3c6a0, R-X segment at 0x3c6a0
        // (mapped from page 0x3c000).
        let segments = [
            LoadSegment {
                offset: 0,
                vaddr: 0,
                size: 0x3c6a0,
                executable: false,
            },
            LoadSegment {
                offset: 0x3c6a0,
                vaddr: 0x3d6a0,
                size: 0x100000,
                executable: true,
            },
        ];
        assert_eq!(vaddr_delta(&segments, 0x3c000), Some(0x1000));
        assert_eq!(vaddr_delta(&segments, 0), Some(0));
    }
}
