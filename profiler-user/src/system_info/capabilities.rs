//! Which capabilities each thing hostprof does needs, and what is lost
//! without them. Pure: the capability mask comes from `/proc/self/status`
//! ([`parse_cap_eff`]) and everything else is a table ([`NEEDS`]).
//!
//! Sampling itself needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); with
//! only those, hostprof runs but cannot read other users' processes: their
//! memory maps need CAP_SYS_PTRACE, the files they map CAP_DAC_READ_SEARCH
//! (through `/proc/PID/root`) and, for deleted or replaced binaries,
//! `/proc/PID/map_files`, CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN).
//! Without them those processes have no unwind tables and no symbols.

/// A Linux capability (bit number and name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Its bit in the capability masks.
    pub bit: u32,
    /// Its name, as `setcap` spells it in capitals.
    pub name: &'static str,
}

const fn cap(bit: u32, name: &'static str) -> Capability {
    Capability { bit, name }
}

const CAP_DAC_READ_SEARCH: Capability = cap(2, "CAP_DAC_READ_SEARCH");
const CAP_SYS_PTRACE: Capability = cap(19, "CAP_SYS_PTRACE");
const CAP_SYS_ADMIN: Capability = cap(21, "CAP_SYS_ADMIN");
const CAP_PERFMON: Capability = cap(38, "CAP_PERFMON");
const CAP_BPF: Capability = cap(39, "CAP_BPF");
const CAP_CHECKPOINT_RESTORE: Capability = cap(40, "CAP_CHECKPOINT_RESTORE");

/// One thing hostprof does and the capabilities it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// What it is: the row's name in `system-info`.
    pub what: &'static str,
    /// Capabilities that together grant it.
    pub all_of: &'static [Capability],
    /// A capability that grants it alone.
    pub or: Option<Capability>,
    /// What is lost without it; `None`: hostprof cannot sample at all.
    pub without: Option<&'static str>,
}

/// Everything hostprof needs capabilities for.
pub const NEEDS: &[Need] = &[
    Need {
        what: "capabilities",
        all_of: &[CAP_BPF, CAP_PERFMON],
        or: Some(CAP_SYS_ADMIN),
        without: None,
    },
    Need {
        what: "caps: other users",
        all_of: &[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH],
        or: None,
        without: Some(
            "processes of other users get no unwind tables and no symbols \
             (stacks cut short, frames shown as file+offset)",
        ),
    },
    Need {
        what: "caps: replaced binaries",
        all_of: &[CAP_CHECKPOINT_RESTORE],
        or: Some(CAP_SYS_ADMIN),
        without: Some(
            "binaries deleted or replaced since they were started (upgraded \
             packages, redeployed files) get no unwind tables and no symbols",
        ),
    },
];

/// The `CapEff` mask from `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

impl Need {
    /// The capabilities of [`Need::all_of`] missing from `cap_eff`; empty
    /// when the need is met (also when it holds [`Need::or`]).
    pub fn missing(&self, cap_eff: u64) -> Vec<&'static str> {
        let has = |cap: Capability| cap_eff & (1u64 << cap.bit) != 0;
        if self.or.is_some_and(has) {
            return Vec::new();
        }
        self.all_of
            .iter()
            .filter(|&&cap| !has(cap))
            .map(|cap| cap.name)
            .collect()
    }
}

/// Every capability of every need, as one `setcap` argument.
pub fn setcap_all() -> String {
    let mut names: Vec<String> = Vec::new();
    for need in NEEDS {
        for cap in need.all_of {
            let name = cap.name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    format!("{}+ep", names.join(","))
}

/// One line per need that `cap_eff` leaves unmet but hostprof can run
/// without: what is missing, what is lost, and the fix.
pub fn degraded(cap_eff: u64) -> Vec<String> {
    NEEDS
        .iter()
        .filter_map(|need| {
            let without = need.without?;
            let missing = need.missing(cap_eff);
            (!missing.is_empty()).then(|| {
                format!(
                    "without {}: {without}; run as root or grant them: \
                     `sudo setcap {} $(which hostprof)`",
                    missing.join(" and "),
                    setcap_all()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |m, cap| m | (1 << cap.bit))
    }

    #[test]
    fn cap_eff_from_status() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(root), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("nothing"), None);
    }

    #[test]
    fn root_needs_nothing_more() {
        for need in NEEDS {
            assert!(need.missing(0x1ff_ffff_ffff).is_empty(), "{need:?}");
        }
        assert!(degraded(0x1ff_ffff_ffff).is_empty());
    }

    #[test]
    fn sampling_takes_bpf_and_perfmon_or_sys_admin() {
        let sampling = &NEEDS[0];
        assert_eq!(sampling.missing(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(sampling.missing(mask(&[CAP_BPF])), vec!["CAP_PERFMON"]);
        assert!(sampling.missing(mask(&[CAP_BPF, CAP_PERFMON])).is_empty());
        assert!(sampling.missing(mask(&[CAP_SYS_ADMIN])).is_empty());
    }

    /// The advice of the sampling error alone (`setcap cap_bpf,cap_perfmon`)
    /// leaves two needs unmet, and each says what is lost and how to fix it.
    #[test]
    fn bpf_and_perfmon_alone_are_degraded_and_say_so() {
        let lines = degraded(mask(&[CAP_BPF, CAP_PERFMON]));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: processes of other users"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("without CAP_CHECKPOINT_RESTORE: binaries deleted"));
        for line in &lines {
            assert!(
                line.contains(
                    "setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search,\
                     cap_checkpoint_restore+ep"
                ),
                "{line}"
            );
        }
        // CAP_SYS_ADMIN stands in for CAP_CHECKPOINT_RESTORE, not for ptrace.
        let lines = degraded(mask(&[CAP_SYS_ADMIN]));
        assert_eq!(lines.len(), 1, "{lines:?}");
    }
}
