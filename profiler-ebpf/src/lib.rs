//! Empty library target: lets `profiler-user` name this crate as a build
//! dependency, so cargo rebuilds the eBPF object when its sources change.
#![no_std]
