//! The bounded export queue between the profiling loop and the exporter:
//! bounded in requests and in bytes; when full, the oldest requests are
//! dropped (and counted) so the newest data survives and memory stays flat.

use std::collections::VecDeque;

/// Limits of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most requests held.
    pub max_requests: usize,
    /// Most encoded bytes held.
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_requests: 60,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Counters of what the queue dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Requests dropped.
    pub requests: u64,
    /// Profiles (resource profiles) in them.
    pub profiles: u64,
}

/// A FIFO of items with a size, bounded by [`QueueLimits`].
#[derive(Debug)]
pub struct BoundedQueue<T> {
    limits: QueueLimits,
    items: VecDeque<(T, usize, u64)>,
    bytes: usize,
    dropped: Dropped,
}

impl<T> BoundedQueue<T> {
    /// An empty queue.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            items: VecDeque::new(),
            bytes: 0,
            dropped: Dropped::default(),
        }
    }

    /// Adds `item` of `bytes` bytes holding `profiles` profiles, dropping
    /// the oldest items until it fits. An item larger than the byte limit
    /// on its own is dropped at once.
    pub fn push(&mut self, item: T, bytes: usize, profiles: u64) {
        if bytes > self.limits.max_bytes {
            self.count_drop(profiles);
            return;
        }
        while !self.items.is_empty()
            && (self.items.len() >= self.limits.max_requests
                || self.bytes + bytes > self.limits.max_bytes)
        {
            let (_, old_bytes, old_profiles) = self.items.pop_front().expect("not empty");
            self.bytes -= old_bytes;
            self.count_drop(old_profiles);
        }
        self.items.push_back((item, bytes, profiles));
        self.bytes += bytes;
    }

    /// Takes the oldest item.
    pub fn pop(&mut self) -> Option<(T, u64)> {
        let (item, bytes, profiles) = self.items.pop_front()?;
        self.bytes -= bytes;
        Some((item, profiles))
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    fn count_drop(&mut self, profiles: u64) {
        self.dropped.requests += 1;
        self.dropped.profiles += profiles;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_requests: usize, max_bytes: usize) -> BoundedQueue<u32> {
        BoundedQueue::new(QueueLimits {
            max_requests,
            max_bytes,
        })
    }

    #[test]
    fn drops_oldest_when_full_by_count() {
        let mut q = queue(2, 1000);
        q.push(1, 10, 1);
        q.push(2, 10, 2);
        q.push(3, 10, 3);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q.dropped(),
            Dropped {
                requests: 1,
                profiles: 1
            }
        );
        assert_eq!(q.pop(), Some((2, 2)));
        assert_eq!(q.pop(), Some((3, 3)));
        assert_eq!(q.pop(), None);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn drops_oldest_when_full_by_bytes_and_oversized_items() {
        let mut q = queue(10, 100);
        q.push(1, 60, 1);
        q.push(2, 60, 1);
        assert_eq!(q.len(), 1);
        assert_eq!(q.bytes(), 60);
        q.push(3, 101, 5);
        assert_eq!(
            q.dropped(),
            Dropped {
                requests: 2,
                profiles: 6
            }
        );
        assert_eq!(q.pop(), Some((2, 1)));
    }
}
