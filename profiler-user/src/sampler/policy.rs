//! What to sample and how often.

use std::fmt;
use std::str::FromStr;

use super::bounded::bounded_number;
use super::off_cpu::OffCpuRate;
use super::trace_context::TraceContextMap;
use super::unwinder::Unwinder;

/// Sampling frequency in Hz, 1 to 1000 inclusive.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Frequency(u32);

impl Frequency {
    /// Lowest accepted frequency.
    pub const MIN: u32 = 1;
    /// Highest accepted frequency: beyond it the profiler's own overhead and
    /// the kernel's `perf_event_max_sample_rate` throttling dominate.
    pub const MAX: u32 = 1000;
    /// 99 Hz: off the 100 Hz timer tick, so samples do not alias with it.
    pub const DEFAULT: Frequency = Frequency(99);

    /// A frequency, or an error when outside [`Self::MIN`]..=[`Self::MAX`].
    pub fn new(hz: u32) -> Result<Self, InvalidFrequency> {
        if (Self::MIN..=Self::MAX).contains(&hz) {
            Ok(Self(hz))
        } else {
            Err(InvalidFrequency(hz.to_string()))
        }
    }

    /// The frequency in Hz.
    pub fn hz(self) -> u32 {
        self.0
    }

    /// CPU time one sample stands for, in nanoseconds.
    pub fn period_ns(self) -> u64 {
        1_000_000_000 / u64::from(self.0)
    }
}

impl TryFrom<u32> for Frequency {
    type Error = InvalidFrequency;

    fn try_from(hz: u32) -> Result<Self, Self::Error> {
        Self::new(hz)
    }
}

impl From<Frequency> for u32 {
    fn from(frequency: Frequency) -> u32 {
        frequency.0
    }
}

impl Default for Frequency {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.0)
    }
}

impl FromStr for Frequency {
    type Err = InvalidFrequency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .trim()
            .trim_end_matches("Hz")
            .trim_end_matches("hz")
            .trim();
        let hz = digits
            .parse::<u32>()
            .map_err(|_| InvalidFrequency(s.to_owned()))?;
        Self::new(hz).map_err(|_| InvalidFrequency(s.to_owned()))
    }
}

/// A frequency outside 1–1000 Hz, or not a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid sampling frequency {0:?}: expected a whole number of Hz from {min} to {max} (default 99)",
    min = Frequency::MIN,
    max = Frequency::MAX
)]
pub struct InvalidFrequency(String);

bounded_number! {
    /// Page faults per page-fault sample on each CPU (`--page-fault-period`),
    /// 1 to 1000000.
    pub struct PageFaultPeriod;
    /// A page-fault period outside 1–1000000, or not a number.
    pub struct InvalidPageFaultPeriod;
    what = "page-fault period", unit = "page faults per sample",
    min = 1, max = 1_000_000,
    /// The default: a sample every 1000 faults on a CPU, ~4 MiB of 4 KiB
    /// pages touched for the first time. A busy build host faults ~10⁵
    /// times a second (each new process maps and touches its image and
    /// heap), which makes ~100 samples a second: the CPU profile's rate,
    /// and its cost (one unwind each).
    default = 1000,
    /// Faults per sample.
    get = faults,
}

bounded_number! {
    /// The mean number of bytes allocated between two sampled allocations
    /// of the memory profile (`--memory-sample-bytes`), 1 to 1 GiB.
    pub struct MemorySampleBytes;
    /// A memory sampling mean outside 1–1073741824, or not a number.
    pub struct InvalidMemorySampleBytes;
    what = "memory sampling mean", unit = "bytes",
    min = 1, max = 1 << 30,
    /// The default: 512 KiB, as tcmalloc and Go. A program allocating
    /// 1 GiB/s is sampled ~2000 times a second; one allocating 10 MiB/s,
    /// 20 times.
    default = 512 * 1024,
    /// Bytes.
    get = bytes,
}

/// Which processes to sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Every process on the host.
    #[default]
    AllProcesses,
    /// Only these process ids (tgids); filtered in the kernel.
    Pids(Vec<u32>),
}

/// The most CPU hostprof may spend (`--max-cpu`): its own threads and its
/// kernel programs, as a share of one core, 0.001 % to 100 %. Past it, the
/// CPU profile's sampling frequency is lowered until the cost fits, and
/// raised again, up to `--frequency`, as the cost drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "MaxCpuText")]
pub struct MaxCpu(u32);

impl MaxCpu {
    /// Thousandths of a percent: 0.001 %.
    const MIN: u32 = 1;
    /// 100 % of one core.
    const MAX: u32 = 100_000;

    /// The budget as a share of one core (0.0025 for 0.25 %).
    pub fn share(self) -> f64 {
        f64::from(self.0) / 100_000.0
    }
}

impl fmt::Display for MaxCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{}.{:03}", self.0 / 1000, self.0 % 1000);
        write!(f, "{}%", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

impl FromStr for MaxCpu {
    type Err = InvalidMaxCpu;

    /// `0.25`, `0.25%` or `1 %`: a percentage of one core, at most three
    /// decimals.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMaxCpu(s.to_owned());
        let number = s.trim().trim_end_matches('%').trim_end();
        let (whole, decimals) = number.split_once('.').unwrap_or((number, ""));
        let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (!decimals.is_empty() && !digits(decimals)) || decimals.len() > 3 {
            return Err(invalid());
        }
        let whole: u32 = whole.parse().map_err(|_| invalid())?;
        let thousandths: u32 = format!("{decimals:0<3}").parse().map_err(|_| invalid())?;
        let value = whole
            .checked_mul(1000)
            .and_then(|w| w.checked_add(thousandths))
            .ok_or_else(invalid)?;
        if (Self::MIN..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(invalid())
        }
    }
}

impl serde::Serialize for MaxCpu {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `--max-cpu` as YAML has it: `0.25` or `"0.25%"`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum MaxCpuText {
    Number(f64),
    Text(String),
}

impl TryFrom<MaxCpuText> for MaxCpu {
    type Error = InvalidMaxCpu;

    fn try_from(value: MaxCpuText) -> Result<Self, Self::Error> {
        match value {
            MaxCpuText::Number(number) => number.to_string().parse(),
            MaxCpuText::Text(text) => text.parse(),
        }
    }
}

/// A CPU budget that is not a percentage from 0.001 to 100.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid CPU budget {0:?}: expected a percentage of one core from 0.001 to 100, at most \
     three decimals, e.g. 0.25 or 0.25%"
)]
pub struct InvalidMaxCpu(String);

/// How the sampler samples: frequency, target processes, idle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplingPolicy {
    /// Samples per second per CPU (the most, with `max_cpu`).
    pub frequency: Frequency,
    /// The CPU hostprof may spend; `None`: no budget, the frequency holds.
    pub max_cpu: Option<MaxCpu>,
    /// Which processes to record.
    pub target: Target,
    /// Record the idle task (pid 0) so shares of CPU time add up to 100 %.
    pub include_idle: bool,
    /// How user stacks are unwound.
    pub unwinder: Unwinder,
    /// Off-CPU intervals kept (and unwound) per second per CPU, at most.
    pub off_cpu_max_rate: OffCpuRate,
    /// Page faults per page-fault sample on each CPU.
    pub page_fault_period: PageFaultPeriod,
    /// Mean bytes between two sampled allocations (memory profile).
    pub memory_sample_bytes: MemorySampleBytes,
    /// Where each sample's trace context is looked up.
    pub trace_context_map: TraceContextMap,
    /// Read the thread context OpenTelemetry SDKs publish in processes
    /// (OTEP 4947) where the trace-context map has none.
    pub thread_context: bool,
    /// Walk CPython's frames in Python processes (with the table
    /// unwinder) so stacks show Python functions, not only the
    /// interpreter's C functions.
    pub python: bool,
}

impl Default for SamplingPolicy {
    fn default() -> Self {
        Self {
            frequency: Frequency::DEFAULT,
            max_cpu: None,
            target: Target::AllProcesses,
            include_idle: true,
            unwinder: Unwinder::default(),
            off_cpu_max_rate: OffCpuRate::DEFAULT,
            page_fault_period: PageFaultPeriod::DEFAULT,
            memory_sample_bytes: MemorySampleBytes::DEFAULT,
            trace_context_map: TraceContextMap::default(),
            thread_context: true,
            python: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_bounds() {
        assert_eq!(Frequency::new(1).unwrap().hz(), 1);
        assert_eq!(Frequency::new(1000).unwrap().hz(), 1000);
        assert!(Frequency::new(0).is_err());
        assert!(Frequency::new(1001).is_err());
        assert_eq!(Frequency::default().period_ns(), 10_101_010);
    }

    #[test]
    fn frequency_parsing() {
        assert_eq!("99".parse::<Frequency>().unwrap().hz(), 99);
        assert_eq!("250Hz".parse::<Frequency>().unwrap().hz(), 250);
        let err = "5000".parse::<Frequency>().unwrap_err().to_string();
        assert!(err.contains("5000") && err.contains("1 to 1000"), "{err}");
        assert!("fast".parse::<Frequency>().is_err());
    }

    #[test]
    fn max_cpu_parsing() {
        let share = |s: &str| s.parse::<MaxCpu>().unwrap().share();
        assert_eq!(share("0.25"), 0.0025);
        assert_eq!(share("0.25%"), 0.0025);
        assert_eq!(share(" 1 % "), 0.01);
        assert_eq!(share("100"), 1.0);
        assert_eq!(share("0.001"), 0.000_01);
        assert_eq!("0.1".parse::<MaxCpu>().unwrap().to_string(), "0.1%");
        assert_eq!("2".parse::<MaxCpu>().unwrap().to_string(), "2%");
        for bad in [
            "0", "0.0001", "100.001", "-1", "1e-3", "", "%", ".5", "fast",
        ] {
            let err = bad.parse::<MaxCpu>().unwrap_err().to_string();
            assert!(err.contains("0.001 to 100"), "{bad}: {err}");
        }
        let yaml: MaxCpu = serde_yaml_ng::from_str("0.25").unwrap();
        assert_eq!(yaml.share(), 0.0025);
        let yaml: MaxCpu = serde_yaml_ng::from_str("\"0.5%\"").unwrap();
        assert_eq!(yaml.share(), 0.005);
    }

    #[test]
    fn page_fault_period_bounds_and_error() {
        assert_eq!(PageFaultPeriod::default().faults(), 1000);
        assert_eq!(" 64 ".parse::<PageFaultPeriod>().unwrap().faults(), 64);
        let err = "0".parse::<PageFaultPeriod>().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid page-fault period \"0\": expected a whole number of page faults per \
             sample from 1 to 1000000 (default 1000)"
        );
        assert!(PageFaultPeriod::new(1_000_001).is_err());
        assert!("many".parse::<PageFaultPeriod>().is_err());
    }
}
