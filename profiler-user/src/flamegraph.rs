//! flamegraph (in progress)
