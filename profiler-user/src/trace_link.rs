//! Trace links: the trace and span a sample ran in.
//!
//! The kernel side reads them per sample (see `profiler-ebpf/src/trace.rs`);
//! from the sampler on, a sample carries an `Option<TraceLink>`, encoded as
//! the pprof string labels [`TRACE_ID`] / [`SPAN_ID`] and as an entry of the
//! OTLP dictionary's link table. Samples that differ only in their link
//! stay apart at every stage.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use profiler_common::TraceContext;

/// pprof label carrying a sample's trace id (32 lowercase hex digits).
pub const TRACE_ID: &str = "trace_id";
/// pprof label carrying a sample's span id (16 lowercase hex digits).
pub const SPAN_ID: &str = "span_id";

/// Default of the most distinct links one process keeps per window.
pub const DEFAULT_MAX_LINKS_PER_PROCESS: usize = 256;

/// A W3C trace id and span id, bytes in wire order; never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceLink {
    /// The 16-byte trace id.
    pub trace_id: [u8; 16],
    /// The 8-byte span id.
    pub span_id: [u8; 8],
}

impl TraceLink {
    /// The link of a context read by the kernel; `None` when it holds no
    /// valid ids (W3C: an all-zero trace id or span id is invalid).
    pub fn from_context(context: &TraceContext) -> Option<TraceLink> {
        let valid =
            context.trace_id.iter().any(|&b| b != 0) && context.span_id.iter().any(|&b| b != 0);
        valid.then_some(TraceLink {
            trace_id: context.trace_id,
            span_id: context.span_id,
        })
    }

    /// The trace id in lowercase hex, as W3C `traceparent` writes it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in lowercase hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Bounds the links of each process in one window: the first `max`
/// distinct links of a process are kept, later new ones are dropped (the
/// sample keeps its stack and values, without a link) and counted. A
/// request-per-span server would otherwise make every sample its own.
#[derive(Debug)]
pub struct LinkBudget {
    max: usize,
    seen: HashMap<u32, HashSet<TraceLink>>,
}

impl LinkBudget {
    /// A budget of `max` distinct links per process (0: no links at all).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: HashMap::new(),
        }
    }

    /// Whether process `tgid` may carry `link` in this window.
    pub fn admit(&mut self, tgid: u32, link: TraceLink) -> bool {
        let seen = self.seen.entry(tgid).or_default();
        if seen.contains(&link) {
            return true;
        }
        if seen.len() >= self.max {
            return false;
        }
        seen.insert(link);
        true
    }

    /// Distinct links admitted so far, all processes.
    pub fn distinct(&self) -> usize {
        self.seen.values().map(HashSet::len).sum()
    }

    /// Starts a new window.
    pub fn reset(&mut self) {
        self.seen.clear();
    }
}

impl Default for LinkBudget {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINKS_PER_PROCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(trace: u8, span: u8) -> TraceContext {
        TraceContext {
            trace_id: [trace; 16],
            span_id: [span; 8],
        }
    }

    #[test]
    fn zero_ids_are_no_link() {
        assert_eq!(TraceLink::from_context(&TraceContext::default()), None);
        assert_eq!(TraceLink::from_context(&context(0, 1)), None);
        assert_eq!(TraceLink::from_context(&context(1, 0)), None);
        assert!(TraceLink::from_context(&context(1, 1)).is_some());
    }

    #[test]
    fn ids_print_as_lowercase_hex_in_wire_order() {
        let mut c = TraceContext::default();
        c.trace_id[0] = 0x4b;
        c.trace_id[15] = 0xf6;
        c.span_id = [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
        let link = TraceLink::from_context(&c).unwrap();
        assert_eq!(link.trace_id_hex(), "4b0000000000000000000000000000f6");
        assert_eq!(link.span_id_hex(), "00f067aa0ba902b7");
    }

    #[test]
    fn budget_keeps_the_first_links_of_each_process_per_window() {
        let link = |n| TraceLink::from_context(&context(n, n)).unwrap();
        let mut budget = LinkBudget::new(2);
        assert!(budget.admit(1, link(1)));
        assert!(budget.admit(1, link(2)));
        assert!(!budget.admit(1, link(3)), "third distinct link of pid 1");
        assert!(budget.admit(1, link(1)), "a kept link stays kept");
        assert!(budget.admit(2, link(3)), "each process has its own budget");
        assert_eq!(budget.distinct(), 3);
        budget.reset();
        assert!(budget.admit(1, link(3)), "a new window starts empty");
        assert!(!LinkBudget::new(0).admit(1, link(1)));
    }
}
