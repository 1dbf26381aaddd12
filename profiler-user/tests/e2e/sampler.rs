//! Privileged tests of the kernel path: load the real program, sample the
//! host, drain. They fail (never silently pass) when BPF is unavailable,
//! unless HOSTPROF_SKIP_BPF_TESTS=1 is set.

use std::time::Duration;

use hostprof::sampler::{Sampler, SamplingPolicy, Started};
use hostprof::unwind::{TableBudget, Unwinder};

use crate::common;

#[tokio::test]
#[expect(
    clippy::await_holding_lock,
    reason = "the guard serializes whole tests; each test has its own runtime, \
              so no task of this one waits for it"
)]
async fn samples_every_cpu_and_drains_exactly() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    let Started {
        mut sampler,
        mut events,
        ..
    } = Sampler::start(&SamplingPolicy::default()).expect("start sampler");
    let spin = std::thread::spawn(|| common::spin_for(Duration::from_millis(700)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let first = sampler.drain().expect("drain");
    spin.join().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = sampler.drain().expect("drain");
    let last = sampler.stop().expect("stop");
    let announced = events.try_batch();

    let total = first.total() + second.total() + last.total();
    let cpu = |d: &hostprof::sampler::Drained| d.stats[&hostprof::kind::ProfileKind::Cpu];
    let recorded = cpu(&first).recorded + cpu(&second).recorded + cpu(&last).recorded;
    assert!(
        total > 50,
        "expected ~160 samples on 2 CPUs in 0.8 s, got {total}"
    );
    assert_eq!(
        total, recorded,
        "drained samples must equal samples the kernel counted"
    );
    assert_eq!(
        cpu(&first).dropped + cpu(&second).dropped + cpu(&last).dropped,
        0
    );
    let me = std::process::id();
    assert!(
        first
            .samples
            .iter()
            .any(|s| s.key.thread.tgid == me && !s.key.user_stack.is_empty()),
        "the spinning test process must be sampled with a user stack"
    );
    assert!(
        announced.contains(&me) || !announced.is_empty(),
        "new-process events arrive"
    );
}

/// The verifier accepts both programs (the sampler and the tail-called
/// unwinder) on this kernel, with either unwinder and the largest budget.
#[tokio::test]
async fn verifier_accepts_the_unwinder() {
    if common::skip_bpf() {
        return;
    }
    let _serial = common::one_at_a_time();
    for unwinder in [
        Unwinder::FramePointers,
        Unwinder::Tables(TableBudget::new(TableBudget::MAX).unwrap()),
    ] {
        let policy = SamplingPolicy {
            unwinder,
            ..SamplingPolicy::default()
        };
        let started = Sampler::start(&policy)
            .unwrap_or_else(|err| panic!("{unwinder:?}: {:#}", anyhow::Error::from(err)));
        assert_eq!(
            started.unwind_maps.is_some(),
            matches!(unwinder, Unwinder::Tables(_))
        );
    }
}
