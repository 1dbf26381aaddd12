//! Free space in the kernel's `UNWIND_ROWS`: each file's table takes one
//! contiguous run of rows (the kernel binary-searches it) starting a
//! granule (a chunk of the kernel map: a run's chunks are its own), runs
//! are freed when their file is evicted, and neighbouring free runs merge.
//!
//! Why not a crate: the allocators on crates.io manage bytes of memory
//! with alignment and headers; this is a first-fit list of index ranges
//! over a fixed array, about forty lines.

use std::collections::BTreeMap;
use std::ops::Range;

/// Free runs of an array of rows.
#[derive(Clone, Debug)]
pub struct RowSpace {
    capacity: u32,
    /// Runs start at multiples of it and take whole granules.
    granule: u32,
    /// Free runs by start: start → length. Never two adjacent runs.
    free: BTreeMap<u32, u32>,
}

impl RowSpace {
    /// An empty array of `capacity` rows.
    #[cfg(test)]
    pub fn new(capacity: u32) -> Self {
        Self::with_granule(capacity, 1)
    }

    /// An empty array of `capacity` rows (rounded down to whole granules)
    /// whose runs start at multiples of `granule` rows.
    pub fn with_granule(capacity: u32, granule: u32) -> Self {
        let granule = granule.max(1);
        let capacity = capacity / granule * granule;
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self {
            capacity,
            granule,
            free,
        }
    }

    /// `len` rounded up to whole granules.
    fn whole(&self, len: u32) -> u32 {
        len.div_ceil(self.granule).saturating_mul(self.granule)
    }

    /// Rows in the array.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Rows in use (whole granules).
    pub fn used(&self) -> u32 {
        self.capacity - self.free.values().sum::<u32>()
    }

    /// Whether `len` rows fit the array at all (free or not).
    pub fn fits(&self, len: u32) -> bool {
        self.whole(len) <= self.capacity
    }

    /// The first free run of `len` rows, taken (with the rest of its last
    /// granule); `None` when no run is long enough.
    pub fn allocate(&mut self, len: u32) -> Option<Range<u32>> {
        if len == 0 {
            return Some(0..0);
        }
        let whole = self.whole(len);
        let (&start, &run) = self.free.iter().find(|(_, &run)| run >= whole)?;
        self.free.remove(&start);
        if run > whole {
            self.free.insert(start + whole, run - whole);
        }
        Some(start..start + len)
    }

    /// Gives `rows` back.
    ///
    /// # Panics
    ///
    /// When `rows` was not allocated (overlaps free space or the end).
    pub fn release(&mut self, rows: Range<u32>) {
        if rows.is_empty() {
            return;
        }
        let rows = rows.start..rows.start + self.whole(rows.end - rows.start);
        assert!(rows.end <= self.capacity, "{rows:?} beyond the array");
        let (mut start, mut len) = (rows.start, rows.end - rows.start);
        if let Some((&before, &run)) = self.free.range(..start).next_back() {
            assert!(before + run <= start, "{rows:?} is partly free");
            if before + run == start {
                self.free.remove(&before);
                start = before;
                len += run;
            }
        }
        if let Some((&after, &run)) = self.free.range(rows.start..).next() {
            assert!(after >= rows.end, "{rows:?} is partly free");
            if after == rows.end {
                self.free.remove(&after);
                len += run;
            }
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_fit_and_merges_on_release() {
        let mut space = RowSpace::new(100);
        let a = space.allocate(30).unwrap();
        let b = space.allocate(30).unwrap();
        let c = space.allocate(30).unwrap();
        assert_eq!((a.clone(), b.clone(), c.clone()), (0..30, 30..60, 60..90));
        assert_eq!(space.allocate(11), None);
        assert_eq!(space.used(), 90);
        space.release(a);
        space.release(c);
        assert_eq!(
            space.allocate(41),
            None,
            "two runs of 30 and 40, not adjacent"
        );
        space.release(b);
        assert_eq!(space.used(), 0);
        assert_eq!(space.allocate(100), Some(0..100));
    }

    #[test]
    fn randomized_never_overlaps_and_accounts_exactly() {
        // A small deterministic LCG stands in for a random source.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u32| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 33) as u32) % n
        };
        let mut space = RowSpace::new(1000);
        let mut live: Vec<Range<u32>> = Vec::new();
        for _ in 0..5000 {
            if next(2) == 0 && !live.is_empty() {
                let run = live.swap_remove(next(live.len() as u32) as usize);
                space.release(run);
            } else if let Some(run) = space.allocate(1 + next(80)) {
                assert!(live
                    .iter()
                    .all(|r| r.end <= run.start || run.end <= r.start));
                live.push(run);
            }
            let used: u32 = live.iter().map(|r| r.end - r.start).sum();
            assert_eq!(space.used(), used);
        }
    }

    #[test]
    fn runs_start_whole_granules() {
        let mut space = RowSpace::with_granule(1000, 496);
        assert_eq!(space.capacity(), 992, "whole granules only");
        let a = space.allocate(10).unwrap();
        let b = space.allocate(496).unwrap();
        assert_eq!((a.clone(), b), (0..10, 496..992));
        assert_eq!(space.used(), 992);
        assert_eq!(space.allocate(1), None);
        space.release(a);
        assert_eq!(space.used(), 496);
        assert_eq!(space.allocate(300), Some(0..300));
    }

    #[test]
    #[should_panic(expected = "partly free")]
    fn double_release_panics() {
        let mut space = RowSpace::new(10);
        let a = space.allocate(5).unwrap();
        space.release(a.clone());
        space.release(a);
    }
}
