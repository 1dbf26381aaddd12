//! The trace-context map: where the kernel programs find the trace and
//! span each sampled thread runs in.
//!
//! The source is the OpenTelemetry eBPF instrumentation's shared map, an
//! `LRU_HASH` pinned at [`TRACE_CONTEXT_MAP_PIN`] from a thread's
//! `pid_tgid` to its 16-byte trace id and 8-byte span id. At start:
//!
//! - the pin exists and has that shape: the programs use it (the loader
//!   opens the pin instead of creating a map);
//! - the pin exists with another shape: a warning, and the source is off
//!   (never write into someone else's map);
//! - no pin: hostprof creates the map and pins it there, so an
//!   instrumentation started later finds and fills it. The pin outlives
//!   hostprof: the instrumentation may still be using it;
//! - the directory is not on a BPF filesystem (bpffs not mounted): a
//!   warning naming the fix, and the source is off;
//! - `none`: off.
//!
//! [`inspect`] looks without changing anything (`system-info` shows it);
//! [`prepare`] also creates the pin's directory. What they decide from is
//! pure ([`check_shape`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aya::maps::MapData;
use aya::EbpfLoader;
use profiler_common::{names, TraceContext, TRACE_CONTEXT_MAP_PIN};

/// `BPF_MAP_TYPE_LRU_HASH`.
const LRU_HASH: u32 = 9;
/// `BPF_FS_MAGIC`: `statfs` of a directory on a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the trace-context map is pinned, or `none` (the
/// `trace_context_map` setting).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TraceContextMap {
    /// Do not look samples up in a trace-context map.
    Off,
    /// The map pinned at this path (created and pinned when absent).
    Pin(PathBuf),
}

impl Default for TraceContextMap {
    fn default() -> Self {
        Self::Pin(PathBuf::from(TRACE_CONTEXT_MAP_PIN))
    }
}

impl fmt::Display for TraceContextMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("none"),
            Self::Pin(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A `trace_context_map` that is neither `none` nor an absolute path.
#[derive(Debug, thiserror::Error)]
#[error(
    "trace context map {0:?} is not an absolute path under a BPF filesystem; give e.g. \
     {TRACE_CONTEXT_MAP_PIN}, or `none` to turn trace links off"
)]
pub struct InvalidTraceContextMap(String);

impl FromStr for TraceContextMap {
    type Err = InvalidTraceContextMap;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::Off);
        }
        let path = Path::new(s);
        if path.is_absolute() && path.file_name().is_some() {
            Ok(Self::Pin(path.to_path_buf()))
        } else {
            Err(InvalidTraceContextMap(s.to_owned()))
        }
    }
}

impl TryFrom<String> for TraceContextMap {
    type Error = InvalidTraceContextMap;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TraceContextMap> for String {
    fn from(map: TraceContextMap) -> String {
        map.to_string()
    }
}

/// A BPF map's type and key and value sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
}

/// The shape the instrumentation's map has: `LRU_HASH`, `u64` key, trace
/// id + span id value.
pub const EXPECTED_SHAPE: MapShape = MapShape {
    map_type: LRU_HASH,
    key_size: 8,
    value_size: size_of::<TraceContext>() as u32,
};

/// Whether a pinned map of `shape` can be read as the trace-context map;
/// the error says how it differs.
pub fn check_shape(shape: MapShape) -> Result<(), String> {
    let mut differences = Vec::new();
    if shape.map_type != EXPECTED_SHAPE.map_type {
        differences.push(format!(
            "map type {} (expected {LRU_HASH}, LRU_HASH)",
            shape.map_type
        ));
    }
    if shape.key_size != EXPECTED_SHAPE.key_size {
        differences.push(format!("key size {} (expected 8)", shape.key_size));
    }
    if shape.value_size != EXPECTED_SHAPE.value_size {
        differences.push(format!(
            "value size {} (expected {})",
            shape.value_size, EXPECTED_SHAPE.value_size
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join(", "))
    }
}

/// What became of the trace-context map at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceMapState {
    /// Turned off (`none`).
    Off,
    /// An existing pin of the right shape is read.
    Reused(PathBuf),
    /// No pin existed: the map is created and pinned here.
    Created(PathBuf),
    /// The source is off: the pin could not be used, for the reason given.
    Unusable {
        /// The configured pin.
        path: PathBuf,
        /// Why, and the fix.
        reason: String,
    },
}

impl TraceMapState {
    /// Whether the kernel programs look samples up in the map.
    pub fn is_on(&self) -> bool {
        matches!(self, Self::Reused(_) | Self::Created(_))
    }
}

impl fmt::Display for TraceMapState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("trace links off (trace_context_map: none)"),
            Self::Reused(path) => write!(f, "trace context read from {}", path.display()),
            Self::Created(path) => write!(
                f,
                "trace context map created and pinned at {} for an instrumentation to fill",
                path.display()
            ),
            Self::Unusable { path, reason } => write!(
                f,
                "trace links off: the trace context map at {} cannot be used: {reason}",
                path.display()
            ),
        }
    }
}

/// What the trace-context map `setting` names is, changing nothing: a
/// pin to reuse, one to create ([`TraceMapState::Created`]: none yet, on a
/// BPF filesystem), or why it cannot be used.
pub fn inspect(setting: &TraceContextMap) -> TraceMapState {
    let path = match setting {
        TraceContextMap::Off => return TraceMapState::Off,
        TraceContextMap::Pin(path) => path.clone(),
    };
    let unusable = |reason: String| TraceMapState::Unusable {
        path: path.clone(),
        reason,
    };
    if path.exists() {
        return match pinned_shape(&path) {
            Err(err) => unusable(format!("could not open the pin: {err}")),
            Ok(shape) => match check_shape(shape) {
                Ok(()) => TraceMapState::Reused(path.clone()),
                Err(differences) => unusable(format!(
                    "it is not the OpenTelemetry trace-context map: {differences}"
                )),
            },
        };
    }
    // The nearest existing directory decides the filesystem of the pin.
    let existing = path.ancestors().skip(1).find(|dir| dir.exists());
    match on_bpf_filesystem(existing.unwrap_or(Path::new("/"))) {
        Ok(()) => TraceMapState::Created(path.clone()),
        Err(reason) => unusable(reason),
    }
}

/// Points `loader` at the trace-context map `setting` names, creating
/// the pin's directory when needed; returns what it found. Never fails
/// the load: a map that cannot be used turns the source off.
pub fn prepare(loader: &mut EbpfLoader<'_>, setting: &TraceContextMap) -> TraceMapState {
    let mut state = inspect(setting);
    if let TraceMapState::Created(path) = &state {
        let dir = path.parent().unwrap_or(Path::new("/"));
        if let Err(err) = std::fs::create_dir_all(dir) {
            state = TraceMapState::Unusable {
                path: path.clone(),
                reason: format!("could not create {}: {err}", dir.display()),
            };
        }
    }
    if let TraceMapState::Reused(path) | TraceMapState::Created(path) = &state {
        loader.map_pin_path(names::TRACES_CTX, path.clone());
    }
    state
}

/// The shape of the map pinned at `path`.
fn pinned_shape(path: &Path) -> Result<MapShape, aya::maps::MapError> {
    let info = MapData::from_pin(path)?.info()?;
    Ok(MapShape {
        map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
    })
}

/// Whether `dir` is on a BPF filesystem, where the map can be pinned.
fn on_bpf_filesystem(dir: &Path) -> Result<(), String> {
    let stat = rustix::fs::statfs(dir)
        .map_err(|err| format!("could not statfs {}: {err}", dir.display()))?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between C libraries"
    )]
    if stat.f_type as i64 == BPF_FS_MAGIC {
        Ok(())
    } else {
        Err(format!(
            "{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` \
             (in a pod, mount the host's /sys/fs/bpf)",
            dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_parses_paths_and_none() {
        assert_eq!(
            "none".parse::<TraceContextMap>().unwrap(),
            TraceContextMap::Off
        );
        assert_eq!(
            "NONE".parse::<TraceContextMap>().unwrap(),
            TraceContextMap::Off
        );
        assert_eq!(
            "/sys/fs/bpf/x/y".parse::<TraceContextMap>().unwrap(),
            TraceContextMap::Pin("/sys/fs/bpf/x/y".into())
        );
        let err = "relative/map".parse::<TraceContextMap>().unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
        assert!("/".parse::<TraceContextMap>().is_err());
        assert_eq!(
            TraceContextMap::default().to_string(),
            "/sys/fs/bpf/otel/traces_ctx_v1"
        );
        assert_eq!(TraceContextMap::Off.to_string(), "none");
    }

    #[test]
    fn only_the_instrumentations_shape_is_read() {
        assert_eq!(check_shape(EXPECTED_SHAPE), Ok(()));
        assert_eq!(EXPECTED_SHAPE.value_size, 24);
        let hash = MapShape {
            map_type: 1,
            ..EXPECTED_SHAPE
        };
        assert!(check_shape(hash).unwrap_err().contains("map type 1"));
        let wide = MapShape {
            key_size: 4,
            value_size: 32,
            ..EXPECTED_SHAPE
        };
        let err = check_shape(wide).unwrap_err();
        assert!(
            err.contains("key size 4") && err.contains("value size 32"),
            "{err}"
        );
    }

    #[test]
    fn states_say_whether_the_source_is_on() {
        assert!(TraceMapState::Created("/p".into()).is_on());
        assert!(TraceMapState::Reused("/p".into()).is_on());
        assert!(!TraceMapState::Off.is_on());
        let unusable = TraceMapState::Unusable {
            path: "/p".into(),
            reason: "why".into(),
        };
        assert!(!unusable.is_on());
        assert!(unusable.to_string().contains("/p") && unusable.to_string().contains("why"));
    }
}
