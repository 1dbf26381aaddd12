//! Which unwinder the kernel program uses, and its settings: part of the
//! sampling policy, declared here on the kernel side so that the stages
//! downstream (`unwind`, the settings) read it rather than define it.

/// How user stacks are unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwinder {
    /// From `.eh_frame` tables in the kernel, falling back to frame
    /// pointers where a file has none; up to 519 frames (a deeper stack
    /// ends in a truncation mark: `DEEP_STACK_DEPTH` = 520 slots).
    Tables(TableBudget),
    /// Frame pointers only (`bpf_get_stack`, 127 frames): the cheapest,
    /// and what kernels with the `bpf_probe_read_user` bug must use.
    FramePointers,
}

impl Default for Unwinder {
    fn default() -> Self {
        Unwinder::Tables(TableBudget::default())
    }
}

/// Kernel memory for unwind tables, in bytes of `UNWIND_ROWS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBudget(u64);

/// A table budget outside what hostprof accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unwind table budget {0} bytes is out of range: give 1 MiB to 1 GiB (e.g. 64MiB)")]
pub struct InvalidTableBudget(u64);

impl TableBudget {
    /// The smallest budget accepted.
    pub const MIN: u64 = 1 << 20;
    /// The largest budget accepted.
    pub const MAX: u64 = 1 << 30;

    /// A budget of `bytes`, 1 MiB to 1 GiB.
    pub fn new(bytes: u64) -> Result<Self, InvalidTableBudget> {
        if (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(Self(bytes))
        } else {
            Err(InvalidTableBudget(bytes))
        }
    }

    /// The budget in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Rows of the kernel's encoding that fit.
    pub fn rows(self) -> u32 {
        (self.0 / std::mem::size_of::<profiler_common::UnwindRow>() as u64) as u32
    }
}

impl Default for TableBudget {
    /// 64 MiB: 8 Mi rows, the tables of a few hundred typical binaries.
    fn default() -> Self {
        Self(64 << 20)
    }
}

/// Which unwinder, without its settings: the values of `--unwinder` and of
/// the agent's `unwinder` key, `tables` and `frame-pointers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnwinderKind {
    /// [`Unwinder::Tables`].
    Tables,
    /// [`Unwinder::FramePointers`].
    FramePointers,
}

impl UnwinderKind {
    /// Every kind's name, as parsed and printed.
    pub const NAMES: [&'static str; 2] = ["tables", "frame-pointers"];

    /// The kind's name: `tables` or `frame-pointers`.
    pub fn name(self) -> &'static str {
        match self {
            UnwinderKind::Tables => "tables",
            UnwinderKind::FramePointers => "frame-pointers",
        }
    }
}

impl std::fmt::Display for UnwinderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an unwinder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an unwinder: give tables or frame-pointers")]
pub struct InvalidUnwinderKind(String);

impl std::str::FromStr for UnwinderKind {
    type Err = InvalidUnwinderKind;

    /// `tables` or `frame-pointers`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tables" => Ok(UnwinderKind::Tables),
            "frame-pointers" => Ok(UnwinderKind::FramePointers),
            _ => Err(InvalidUnwinderKind(s.to_owned())),
        }
    }
}

impl serde::Serialize for UnwinderKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for UnwinderKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that errors keep the value's place in the file.
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = UnwinderKind;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an unwinder: tables or frame-pointers")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<UnwinderKind, E> {
                s.parse().map_err(E::custom)
            }
        }

        d.deserialize_str(Visitor)
    }
}

/// An unwind table budget given with the frame-pointer unwinder, which
/// loads no tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an unwind table budget ({0}) only applies to the tables unwinder; \
     frame-pointers loads no unwind tables"
)]
pub struct BudgetWithoutTables(pub TableBudget);

impl Unwinder {
    /// The unwinder of `kind`; tables get `budget`, or the default one.
    /// A budget with frame pointers is an error rather than ignored.
    pub fn from_kind(
        kind: UnwinderKind,
        budget: Option<TableBudget>,
    ) -> Result<Self, BudgetWithoutTables> {
        match (kind, budget) {
            (UnwinderKind::Tables, budget) => Ok(Unwinder::Tables(budget.unwrap_or_default())),
            (UnwinderKind::FramePointers, None) => Ok(Unwinder::FramePointers),
            (UnwinderKind::FramePointers, Some(budget)) => Err(BudgetWithoutTables(budget)),
        }
    }

    /// Which unwinder this is.
    pub fn kind(self) -> UnwinderKind {
        match self {
            Unwinder::Tables(_) => UnwinderKind::Tables,
            Unwinder::FramePointers => UnwinderKind::FramePointers,
        }
    }

    /// The table budget, for [`Unwinder::Tables`].
    pub fn table_budget(self) -> Option<TableBudget> {
        match self {
            Unwinder::Tables(budget) => Some(budget),
            Unwinder::FramePointers => None,
        }
    }
}

/// What a table budget may be written as, for error messages.
const BUDGET_FORMAT: &str = "a whole number of bytes with an optional unit B, KiB, MiB or GiB \
     (any case; KB, MB and GB mean the same binary units), from 1MiB to 1GiB, e.g. 64MiB";

/// A table budget that could not be parsed or is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?}: {problem}; an unwind table budget is {BUDGET_FORMAT}")]
pub struct ParseTableBudgetError {
    /// The text given.
    value: String,
    /// What is wrong with it.
    problem: String,
}

impl ParseTableBudgetError {
    fn new(value: &str, problem: impl Into<String>) -> Self {
        Self {
            value: value.to_owned(),
            problem: problem.into(),
        }
    }

    fn out_of_range(value: &str, bytes: u64) -> Self {
        Self::new(value, format!("{bytes} bytes is out of range"))
    }
}

impl std::str::FromStr for TableBudget {
    type Err = ParseTableBudgetError;

    /// A size: digits, optional spaces, then an optional unit, one of `B`,
    /// `KiB`, `MiB`, `GiB` in any case; `KB`, `MB` and `GB` are taken as the
    /// same binary units (1 KB = 1024 bytes), as `ulimit` or the JVM do.
    /// `64MiB`, `1gib`, `1048576` and `1024 KiB` are all accepted; the
    /// result must be 1 MiB to 1 GiB.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(ParseTableBudgetError::new(s, "not a size"));
        }
        let (number, unit) = text.split_at(digits);
        let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "kib" | "kb" => 10,
            "mib" | "mb" => 20,
            "gib" | "gb" => 30,
            _ => return Err(ParseTableBudgetError::new(s, "unknown unit")),
        };
        let bytes = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .ok_or_else(|| ParseTableBudgetError::new(s, "out of range"))?;
        TableBudget::new(bytes).map_err(|_| ParseTableBudgetError::out_of_range(s, bytes))
    }
}

impl std::fmt::Display for TableBudget {
    /// In the largest of `GiB`, `MiB`, `KiB` that divides it, else in `B`:
    /// `64MiB`, `1GiB`, `1048577B`. [`FromStr`](std::str::FromStr) reads it
    /// back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if bytes.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", bytes >> shift);
            }
        }
        write!(f, "{bytes}B")
    }
}

impl serde::Serialize for TableBudget {
    /// As its [`Display`](std::fmt::Display) string, e.g. `64MiB`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TableBudget {
    /// A size string as [`FromStr`](std::str::FromStr) reads it, or a plain
    /// number of bytes.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = TableBudget;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "an unwind table budget: {BUDGET_FORMAT}")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TableBudget, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<TableBudget, E> {
                TableBudget::new(n)
                    .map_err(|_| E::custom(ParseTableBudgetError::out_of_range(&n.to_string(), n)))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<TableBudget, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(ParseTableBudgetError::new(
                        &n.to_string(),
                        "not a size",
                    ))),
                }
            }
        }

        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_and_rows() {
        assert_eq!(TableBudget::default().rows(), 8 << 20);
        assert!(TableBudget::new(512 << 10).is_err());
        assert!(TableBudget::new(2 << 30).is_err());
        assert_eq!(TableBudget::new(1 << 20).unwrap().rows(), 1 << 17);
    }

    #[test]
    fn budget_parses_sizes() {
        let mib = |n: u64| TableBudget::new(n << 20).unwrap();
        for (text, want) in [
            ("64MiB", mib(64)),
            ("64mib", mib(64)),
            ("64 MiB", mib(64)),
            (" 64MB ", mib(64)),
            ("1GiB", mib(1024)),
            ("1gb", mib(1024)),
            ("1048576", mib(1)),
            ("1048576b", mib(1)),
            ("1024KiB", mib(1)),
            ("2048kb", mib(2)),
        ] {
            assert_eq!(text.parse::<TableBudget>(), Ok(want), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "64 parsecs",
            "64M",
            "64Mi",
            "1.5GiB",
            "-1MiB",
            "64MiB!",
            "0x10MiB",
        ] {
            let err = bad.parse::<TableBudget>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("B, KiB, MiB or GiB"), "{err}");
        }
        for out_of_range in ["512KiB", "2GiB", "0", "1048575", "99999999999999999999GiB"] {
            let err = out_of_range.parse::<TableBudget>().unwrap_err().to_string();
            assert!(err.contains("out of range"), "{err}");
            assert!(err.contains("from 1MiB to 1GiB"), "{err}");
        }
    }

    #[test]
    fn budget_prints_in_the_largest_exact_unit() {
        for (bytes, text) in [
            (64 << 20, "64MiB"),
            (1 << 30, "1GiB"),
            (1536 << 10, "1536KiB"),
            ((1 << 20) + 1, "1048577B"),
        ] {
            let budget = TableBudget::new(bytes).unwrap();
            assert_eq!(budget.to_string(), text);
            assert_eq!(text.parse::<TableBudget>(), Ok(budget));
        }
    }

    #[test]
    fn budget_and_kind_serde() {
        #[derive(serde::Deserialize, serde::Serialize, PartialEq, Debug)]
        struct S {
            unwinder: UnwinderKind,
            budget: TableBudget,
        }
        let s: S = serde_yaml_ng::from_str("unwinder: frame-pointers\nbudget: 128MiB\n").unwrap();
        assert_eq!(s.unwinder, UnwinderKind::FramePointers);
        assert_eq!(s.budget.bytes(), 128 << 20);
        let yaml = serde_yaml_ng::to_string(&s).unwrap();
        assert_eq!(yaml, "unwinder: frame-pointers\nbudget: 128MiB\n");
        let s: S = serde_yaml_ng::from_str("unwinder: tables\nbudget: 1048576\n").unwrap();
        assert_eq!(s.budget.bytes(), 1 << 20);
        for bad in ["budget: 1024\n", "budget: -1\n", "budget: 3GiB\n"] {
            let err = serde_yaml_ng::from_str::<S>(&format!("unwinder: tables\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("from 1MiB to 1GiB"), "{err}");
        }
        let err = serde_yaml_ng::from_str::<S>("unwinder: dwarf\nbudget: 64MiB\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tables or frame-pointers"), "{err}");
    }

    #[test]
    fn unwinder_from_kind() {
        let budget = TableBudget::new(8 << 20).unwrap();
        assert_eq!("Frame-Pointers".parse(), Ok(UnwinderKind::FramePointers));
        assert!("fp".parse::<UnwinderKind>().is_err());
        assert_eq!(
            Unwinder::from_kind(UnwinderKind::Tables, None),
            Ok(Unwinder::default())
        );
        assert_eq!(
            Unwinder::from_kind(UnwinderKind::Tables, Some(budget)),
            Ok(Unwinder::Tables(budget))
        );
        assert_eq!(
            Unwinder::from_kind(UnwinderKind::FramePointers, None),
            Ok(Unwinder::FramePointers)
        );
        assert!(Unwinder::from_kind(UnwinderKind::FramePointers, Some(budget)).is_err());
        for unwinder in [Unwinder::Tables(budget), Unwinder::FramePointers] {
            assert_eq!(
                Unwinder::from_kind(unwinder.kind(), unwinder.table_budget()),
                Ok(unwinder)
            );
        }
    }
}
