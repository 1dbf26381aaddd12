//! symbolize (in progress)
