//! The kernel side, seen from userspace: loads the eBPF program, attaches
//! it to a CPU-clock perf event on every online CPU, and drains its maps.
//!
//! Pure bookkeeping lives in [`drain`] and [`policy`]; this module is the
//! only one that makes BPF and perf syscalls.

pub mod drain;
pub mod policy;
pub mod stats;
mod unwind_maps;
pub mod unwinder;

use std::collections::HashMap as StdHashMap;
use std::io;
use std::time::Duration;

use aya::maps::{
    Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{PerfEvent, ProgramError};
use aya::{Ebpf, EbpfError, EbpfLoader};
use profiler_common::{
    names, Config, DeepStack, NewProcess, SampleKey as KernelKey, Stack, StackHash, Stat,
};
use tokio::io::unix::AsyncFd;

pub use drain::{Drained, KindStats, MapSet, RawSample, SampleKey};
pub use policy::{Frequency, InvalidFrequency, SamplingPolicy, Target};
pub use unwind_maps::{KernelUnwindMaps, UnwindMaps};

use crate::kind::ProfileKind;
use unwinder::Unwinder;

use drain::StatCounters;

/// The compiled eBPF object, built by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Errors from loading, attaching or draining the kernel program.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The object could not be loaded (verifier, permissions, missing BTF).
    #[error(
        "could not load the eBPF program (hostprof needs root or CAP_BPF+CAP_PERFMON \
         and a kernel with BTF; run `hostprof system-info` to see what is missing)"
    )]
    Load(#[source] EbpfError),
    /// The program was not in the object (a build problem).
    #[error("the eBPF object has no program or map named {0:?}; rebuild hostprof")]
    Missing(&'static str),
    /// The program could not be loaded or attached.
    #[error("could not {action}")]
    Program {
        /// What was being done.
        action: String,
        /// Why it failed.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {map} failed")]
    Map {
        /// The map's name.
        map: &'static str,
        /// Why it failed.
        #[source]
        source: MapError,
    },
    /// The set of online CPUs could not be read.
    #[error("could not read the online CPUs from {path}")]
    OnlineCpus {
        /// The file read.
        path: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The new-process ring buffer could not be registered with the runtime.
    #[error("could not poll the new-process ring buffer")]
    Poll(#[source] io::Error),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> SamplerError {
    move |source| SamplerError::Map { map, source }
}

/// Capacity of each `COUNTS_n` and `STACKS_n` map: room for every sample of
/// four seconds on every CPU (each distinct at worst), at least 16 Ki.
fn map_capacity(cpus: usize, frequency: Frequency) -> u32 {
    let per_drain = cpus as u64 * u64::from(frequency.hz()) * 4;
    per_drain.clamp(16_384, 1 << 20) as u32
}

/// What [`Sampler::start`] hands back.
pub struct Started {
    /// The sampler.
    pub sampler: Sampler,
    /// Processes sampled for the first time.
    pub events: ProcessEvents,
    /// With the table unwinder: the kernel maps tables go to, and the
    /// number of rows they hold (for a [`crate::unwind::loader::TableLoader`]).
    pub unwind_maps: Option<(KernelUnwindMaps, u32)>,
}

/// A loaded, attached sampler.
pub struct Sampler {
    ebpf: Ebpf,
    config_map: Array<MapData, Config>,
    config: Config,
    stats: PerCpuArray<MapData, u64>,
    counts: [PerCpuHashMap<MapData, KernelKey, u64>; 2],
    stacks: [HashMap<MapData, StackHash, Stack>; 2],
    deep_stacks: [HashMap<MapData, StackHash, DeepStack>; 2],
    known: HashMap<MapData, u32, u8>,
    /// Kept open: the kernel empties a program array when its last
    /// userspace handle closes.
    _tail_calls: ProgramArray<MapData>,
    active: MapSet,
    last_stats: StatCounters,
    attached: bool,
    /// CPU time one sample stands for.
    period_ns: u64,
}

impl Sampler {
    /// Loads the program, applies `policy` and starts sampling every online CPU.
    ///
    /// Also returns the stream of processes sampled for the first time,
    /// and, with the table unwinder, the maps its tables go to.
    pub fn start(policy: &SamplingPolicy) -> Result<Started, SamplerError> {
        let cpus = aya::util::online_cpus()
            .map_err(|(path, source)| SamplerError::OnlineCpus { path, source })?;
        let capacity = map_capacity(cpus.len(), policy.frequency);
        let mut loader = EbpfLoader::new();
        for name in names::COUNTS.iter().chain(names::STACKS.iter()) {
            loader.map_max_entries(name, capacity);
        }
        // Array maps are allocated whole: no table memory without tables.
        let table_rows = match policy.unwinder {
            Unwinder::Tables(budget) => budget.rows(),
            Unwinder::FramePointers => 1,
        };
        loader.map_max_entries(names::UNWIND_ROWS, table_rows);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(SamplerError::Load)?;

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(SamplerError::Missing(name));
        let mut config_map: Array<_, Config> = take(names::CONFIG)?
            .try_into()
            .map_err(map_err(names::CONFIG))?;
        let stats = take(names::STATS)?
            .try_into()
            .map_err(map_err(names::STATS))?;
        let mut pid_filter: HashMap<_, u32, u8> = take(names::PID_FILTER)?
            .try_into()
            .map_err(map_err(names::PID_FILTER))?;
        let known = take(names::KNOWN_PROCESSES)?
            .try_into()
            .map_err(map_err(names::KNOWN_PROCESSES))?;
        let unwind_maps = KernelUnwindMaps::new(
            take(names::UNWIND_ROWS)?,
            take(names::UNWIND_PROCESSES)?
                .try_into()
                .map_err(map_err(names::UNWIND_PROCESSES))?,
        );
        let mut tail_calls: ProgramArray<MapData> = take(names::TAIL_CALLS)?
            .try_into()
            .map_err(map_err(names::TAIL_CALLS))?;
        let ring: RingBuf<MapData> = take(names::NEW_PROCESSES)?
            .try_into()
            .map_err(map_err(names::NEW_PROCESSES))?;
        let counts = [
            take(names::COUNTS[0])?
                .try_into()
                .map_err(map_err(names::COUNTS[0]))?,
            take(names::COUNTS[1])?
                .try_into()
                .map_err(map_err(names::COUNTS[1]))?,
        ];
        let stacks = [
            take(names::STACKS[0])?
                .try_into()
                .map_err(map_err(names::STACKS[0]))?,
            take(names::STACKS[1])?
                .try_into()
                .map_err(map_err(names::STACKS[1]))?,
        ];
        let deep_stacks = [
            take(names::DEEP_STACKS[0])?
                .try_into()
                .map_err(map_err(names::DEEP_STACKS[0]))?,
            take(names::DEEP_STACKS[1])?
                .try_into()
                .map_err(map_err(names::DEEP_STACKS[1]))?,
        ];

        let mut config = Config {
            active_set: MapSet::Zero.index() as u32,
            flags: 0,
        };
        if !policy.include_idle {
            config.flags |= Config::SKIP_IDLE;
        }
        if let Target::Pids(pids) = &policy.target {
            config.flags |= Config::FILTER_PIDS;
            for pid in pids {
                pid_filter
                    .insert(pid, 1, 0)
                    .map_err(map_err(names::PID_FILTER))?;
            }
        }
        config_map
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG))?;

        // The unwinding programs need kernel 5.17+ (bpf_loop); with frame
        // pointers only they are not loaded and their slots stay empty.
        if let Unwinder::Tables(_) = policy.unwinder {
            for (name, slot) in [
                (names::UNWIND_PROGRAM, names::TAIL_UNWIND_USER),
                (names::STORE_PROGRAM, names::TAIL_UNWIND_STORE),
            ] {
                let fd = tail_called_program(&mut ebpf, name)?
                    .fd()
                    .map_err(|source| SamplerError::Program {
                        action: format!("get the descriptor of {name}"),
                        source,
                    })?;
                tail_calls
                    .set(slot, fd, 0)
                    .map_err(map_err(names::TAIL_CALLS))?;
            }
        }
        let program = perf_program(&mut ebpf)?;
        program.load().map_err(|source| SamplerError::Program {
            action: "load the perf_event program (verifier)".into(),
            source,
        })?;
        for cpu in cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(u64::from(policy.frequency.hz())),
                    true,
                )
                .map_err(|source| SamplerError::Program {
                    action: format!("attach to the CPU-clock perf event of CPU {cpu}"),
                    source,
                })?;
        }

        let mut sampler = Sampler {
            ebpf,
            config_map,
            config,
            stats,
            counts,
            stacks,
            deep_stacks,
            known,
            _tail_calls: tail_calls,
            active: MapSet::Zero,
            last_stats: StatCounters::default(),
            attached: true,
            period_ns: policy.frequency.period_ns(),
        };
        sampler.last_stats = sampler.read_stats()?;
        // SAFETY: the ring buffer owns its file descriptor and lives inside
        // the AsyncFd, so the descriptor stays open while it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|err| SamplerError::Poll(io::Error::from(err)))?;
        let events = ProcessEvents { ring };
        let unwind_maps = match policy.unwinder {
            Unwinder::Tables(_) => Some((unwind_maps, table_rows)),
            Unwinder::FramePointers => None,
        };
        Ok(Started {
            sampler,
            events,
            unwind_maps,
        })
    }

    /// Takes every sample recorded since the previous drain.
    ///
    /// Flips the program to the other map set, waits for in-flight program
    /// runs to finish, then reads and empties the set it just left.
    pub fn drain(&mut self) -> Result<Drained, SamplerError> {
        let drained_set = self.active;
        self.switch_to(drained_set.other())?;
        quiesce();
        let samples = self.take_set(drained_set)?;
        self.drained(samples)
    }

    /// Stops sampling and returns everything not yet drained.
    pub fn stop(&mut self) -> Result<Drained, SamplerError> {
        if self.attached {
            perf_program(&mut self.ebpf)?
                .unload()
                .map_err(|source| SamplerError::Program {
                    action: "detach the perf_event program".into(),
                    source,
                })?;
            self.attached = false;
        }
        quiesce();
        // Both sets may hold samples now: the active one, and none other
        // (the inactive set is always empty between drains), but draining
        // both keeps this correct if a previous drain failed half-way.
        let mut samples = self.take_set(self.active)?;
        samples.extend(self.take_set(self.active.other())?);
        self.drained(samples)
    }

    /// Pairs drained samples with the loss counters since the last drain.
    fn drained(&mut self, samples: Vec<RawSample>) -> Result<Drained, SamplerError> {
        let stats = self.read_stats()?;
        let delta = stats.since(&self.last_stats);
        self.last_stats = stats;
        Ok(Drained {
            samples,
            stats: KindStats::from([(ProfileKind::Cpu, delta)]),
        })
    }

    /// Lets the kernel announce `tgids` again the next time they are sampled
    /// (call when they have exited, so a reused pid is snapshotted afresh).
    pub fn forget_processes(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            // Already evicted by the LRU is fine.
            let _ = self.known.remove(tgid);
        }
    }

    fn switch_to(&mut self, set: MapSet) -> Result<(), SamplerError> {
        self.config.active_set = set.index() as u32;
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_err(names::CONFIG))?;
        self.active = set;
        Ok(())
    }

    fn take_set(&mut self, set: MapSet) -> Result<Vec<RawSample>, SamplerError> {
        let index = set.index();
        let counts_name = names::COUNTS[index];
        let stacks_name = names::STACKS[index];
        let counts = &mut self.counts[index];
        let mut entries = Vec::new();
        for item in counts.iter() {
            let (key, per_cpu) = item.map_err(map_err(counts_name))?;
            entries.push((key, per_cpu.iter().sum::<u64>()));
        }
        for (key, _) in &entries {
            counts.remove(key).map_err(map_err(counts_name))?;
        }

        let stacks_map = &mut self.stacks[index];
        let mut stacks = StdHashMap::new();
        for item in stacks_map.iter() {
            let (hash, stack) = item.map_err(map_err(stacks_name))?;
            stacks.insert(hash, stack.frames().to_vec());
        }
        for hash in stacks.keys() {
            stacks_map.remove(hash).map_err(map_err(stacks_name))?;
        }
        let deep_name = names::DEEP_STACKS[index];
        let deep_map = &mut self.deep_stacks[index];
        let mut deep = Vec::new();
        for item in deep_map.iter() {
            let (hash, stack) = item.map_err(map_err(deep_name))?;
            deep.push(hash);
            stacks.insert(hash, stack.frames().to_vec());
        }
        for hash in &deep {
            deep_map.remove(hash).map_err(map_err(deep_name))?;
        }
        Ok(drain::assemble_cpu(entries, &stacks, self.period_ns))
    }

    fn read_stats(&self) -> Result<StatCounters, SamplerError> {
        let mut values = [0; Stat::COUNT as usize];
        for stat in Stat::ALL {
            let per_cpu = self
                .stats
                .get(&(stat as u32), 0)
                .map_err(map_err(names::STATS))?;
            values[stat as usize] = per_cpu.iter().sum();
        }
        Ok(StatCounters::new(values))
    }
}

/// Loads the tail-called program `name` (the verifier checks it here).
fn tail_called_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut PerfEvent, SamplerError> {
    let program: &mut PerfEvent = ebpf
        .program_mut(name)
        .ok_or(SamplerError::Missing(name))?
        .try_into()
        .map_err(|source| SamplerError::Program {
            action: format!("find the program {name}"),
            source,
        })?;
    program.load().map_err(|source| SamplerError::Program {
        action: format!(
            "load the program {name} (verifier; the table unwinder needs Linux 5.17+, \
             run with --unwinder frame-pointers on older kernels)"
        ),
        source,
    })?;
    Ok(program)
}

fn perf_program(ebpf: &mut Ebpf) -> Result<&mut PerfEvent, SamplerError> {
    ebpf.program_mut(names::PROGRAM)
        .ok_or(SamplerError::Missing(names::PROGRAM))?
        .try_into()
        .map_err(|source| SamplerError::Program {
            action: "find the perf_event program".into(),
            source,
        })
}

/// Waits until every program run that may have read the old
/// `Config::active_set` has finished.
///
/// BPF perf-event programs run inside an RCU read-side critical section, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is implemented as `synchronize_rcu()`,
/// so its return guarantees that. Kernels booted with `nohz_full` refuse the
/// command; there a pause far longer than any program run stands in.
fn quiesce() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes sampled for the first time, announced by the kernel program.
pub struct ProcessEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl ProcessEvents {
    /// Waits for announcements and returns the tgids announced so far.
    pub async fn next_batch(&mut self) -> Result<Vec<u32>, SamplerError> {
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(SamplerError::Poll)?;
            let tgids = read_events(guard.get_inner_mut());
            guard.clear_ready();
            if !tgids.is_empty() {
                return Ok(tgids);
            }
        }
    }

    /// Returns the tgids announced so far without waiting.
    pub fn try_batch(&mut self) -> Vec<u32> {
        read_events(self.ring.get_mut())
    }
}

fn read_events(ring: &mut RingBuf<MapData>) -> Vec<u32> {
    let mut tgids = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<NewProcess>() {
            // SAFETY: the kernel wrote a `NewProcess` (plain integers) here;
            // read_unaligned copes with any alignment.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<NewProcess>()) };
            tgids.push(event.tgid);
        }
    }
    tgids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every map and program name userspace looks up is defined in the
    /// eBPF object this crate embeds (as a symbol of a map or program
    /// section), so a rename on one side fails here, not at load time.
    #[test]
    fn every_name_exists_in_the_ebpf_object() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object is ELF");
        let defined: std::collections::HashMap<String, String> = file
            .symbols()
            .filter_map(|symbol| {
                let section = file.section_by_index(symbol.section_index()?).ok()?;
                Some((
                    symbol.name().ok()?.to_owned(),
                    section.name().ok()?.to_owned(),
                ))
            })
            .collect();
        for name in names::MAPS {
            let section = defined.get(*name).map(String::as_str);
            assert!(
                section.is_some_and(|s| s == "maps" || s == ".maps"),
                "map {name}: {section:?}"
            );
        }
        for name in names::PROGRAMS {
            let section = defined.get(*name).map(String::as_str);
            assert!(
                section.is_some_and(|s| s.starts_with("perf_event")),
                "program {name}: {section:?}"
            );
        }
    }

    /// True when the user opted out of BPF tests; panics with the reason
    /// when BPF is unusable and they did not (these tests never pass
    /// silently).
    fn skip_bpf() -> bool {
        if std::env::var_os("HOSTPROF_SKIP_BPF_TESTS").is_some_and(|v| v == "1") {
            eprintln!("HOSTPROF_SKIP_BPF_TESTS=1: skipping a test that needs BPF");
            return true;
        }
        if let Err(err) = crate::system_info::preflight() {
            panic!(
                "this test loads the real eBPF program and cannot here: {err}\n\
                 (set HOSTPROF_SKIP_BPF_TESTS=1 to skip BPF tests explicitly)"
            );
        }
        false
    }

    /// Burns CPU in this thread for `duration`.
    fn spin_for(duration: Duration) {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < duration {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        std::hint::black_box(x);
    }

    /// Privileged: loads the real program, samples the host, drains.
    #[tokio::test]
    async fn samples_every_cpu_and_drains_exactly() {
        if skip_bpf() {
            return;
        }
        let Started {
            mut sampler,
            mut events,
            ..
        } = Sampler::start(&SamplingPolicy::default()).expect("start sampler");
        let spin = std::thread::spawn(|| spin_for(Duration::from_millis(700)));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let first = sampler.drain().expect("drain");
        spin.join().unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = sampler.drain().expect("drain");
        let last = sampler.stop().expect("stop");
        let announced = events.try_batch();

        let total = first.total() + second.total() + last.total();
        let cpu = |d: &Drained| d.stats[&ProfileKind::Cpu];
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

    /// Privileged: the verifier accepts both programs (the sampler and the
    /// tail-called unwinder) on this kernel, with either unwinder and the
    /// largest budget.
    #[tokio::test]
    async fn verifier_accepts_the_unwinder() {
        use super::unwinder::TableBudget;
        if skip_bpf() {
            return;
        }
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

    #[test]
    fn capacity_scales_with_cpus_and_frequency() {
        assert_eq!(map_capacity(2, Frequency::DEFAULT), 16_384);
        assert_eq!(map_capacity(128, Frequency::new(1000).unwrap()), 512_000);
        assert_eq!(map_capacity(4096, Frequency::new(1000).unwrap()), 1 << 20);
    }
}
