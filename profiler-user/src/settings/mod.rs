//! The settings of `hostprof record` and `hostprof agent`: one model for
//! the flags, the YAML config file, the environment and the defaults.
//!
//! Every setting is one field of one group ([`Profiling`], [`Filters`],
//! [`Export`], and one of [`AgentOnly`] or [`RecordOnly`]). The field is
//! declared once, with its type and doc comment, and derives both its flag
//! (clap, `--unwind-table-budget`) and its config-file key (serde, the field
//! name: `unwind_table_budget`). Every field is an `Option`: `None` means
//! "not given here", so one source can be laid over another.
//!
//! [`Settings`] puts the groups of one command together and is flattened
//! into the command line ([`CommandLine`]); its file form is one flat
//! mapping whose keys are the fields of every group. Settings resolve in one
//! order for both commands, highest first:
//!
//! 1. flags;
//! 2. the `--config` file ([`Settings::load`], laid under the flags by
//!    [`Settings::overlay`]);
//! 3. the environment: `OTEL_EXPORTER_OTLP_*` through
//!    [`ExporterConfig::resolve`](crate::otlp::ExporterConfig::resolve),
//!    and `NODE_NAME`;
//! 4. the defaults, applied by `resolve` ([`Settings::<AgentOnly>::resolve`],
//!    [`Settings::<RecordOnly>::resolve`]), which also applies the rules
//!    between settings ([`Settings::check`]) and turns them into the
//!    library's options.
//!
//! `effective` goes the other way, from options back to settings, for
//! `--print-config`.

mod file;
mod groups;

use std::fmt::Debug;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::otlp::config::ConfigError;
use crate::unwind::UnwinderKind;

pub use file::parse_duration;
pub use groups::{
    AgentOnly, Export, Filters, LocalOutputs, Profiling, RecordOnly, RecordOptions,
    DEFAULT_DURATION, DEFAULT_INTERVAL, DEFAULT_OUTPUT, DEFAULT_SHUTDOWN_TIMEOUT, MIN_QUEUE_BYTES,
};

/// Settings of `hostprof agent`.
pub type AgentSettings = Settings<AgentOnly>;
/// Settings of `hostprof record`.
pub type RecordSettings = Settings<RecordOnly>;

/// Shown instead of header values, which often carry credentials.
pub const REDACTED: &str = "<redacted>";

/// A group of settings, as the crate's `settings_group!` macro declares it.
pub trait Group: Clone + Default {
    /// The config-file keys of the group's settings (its field names), in
    /// the order they are declared.
    const KEYS: &'static [&'static str];

    /// `self` with every setting that `over` has replaced by it.
    fn replace(self, over: Self) -> Self;
}

/// Declares a group of settings: the struct as written, deriving clap's
/// [`Args`](clap::Args) (one flag per field) and serde (one key per field,
/// every one optional in the file), and its [`Group`] impl. Every field must
/// be an `Option`.
macro_rules! settings_group {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: $type:ty,
            )*
        }
    ) => {
        #[derive(
            Clone, Debug, Default, PartialEq, Eq, clap::Args, serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(default)]
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: $type,
            )*
        }

        impl $crate::settings::Group for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn replace(self, over: Self) -> Self {
                Self {
                    $($field: over.$field.or(self.$field),)*
                }
            }
        }
    };
}
pub(crate) use settings_group;

/// The group of settings only one command has.
pub trait CommandGroup:
    Group + clap::Args + Serialize + DeserializeOwned + Debug + PartialEq + Eq
{
    /// The command, as messages name it: `agent` or `record`.
    const COMMAND: &'static str;

    /// Rules between this group's settings that plain replacement misses
    /// when `over` is laid over another source into `merged`.
    fn overlay_rules(_over: &Self, _merged: &mut Self) {}

    /// Checks the rules between this group's settings.
    fn check(&self) -> Result<(), SettingsError> {
        Ok(())
    }
}

/// Every setting of one command, from one source (flags or file) or
/// several laid over each other; `None` defers to the next source down.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, Serialize)]
pub struct Settings<C: CommandGroup> {
    /// What only this command has.
    #[command(flatten)]
    #[serde(flatten)]
    pub command: C,
    /// What is profiled, and how.
    #[command(flatten)]
    #[serde(flatten)]
    pub profiling: Profiling,
    /// Which processes are kept.
    #[command(flatten)]
    #[serde(flatten)]
    pub filters: Filters,
    /// Where profiles are exported.
    #[command(flatten)]
    #[serde(flatten)]
    pub export: Export,
}

impl<C: CommandGroup> Settings<C> {
    /// Every config-file key of the command.
    pub fn keys() -> impl Iterator<Item = &'static str> {
        [C::KEYS, Profiling::KEYS, Filters::KEYS, Export::KEYS]
            .into_iter()
            .flatten()
            .copied()
    }

    /// `self` with every setting that `over` has replaced by it, except:
    /// export headers add up (`over` winning on equal names), and
    /// `unwinder: frame-pointers` in `over` drops the table budget of
    /// `self` (while a budget in `over` stays, for [`Self::check`]), and
    /// the command's own [`CommandGroup::overlay_rules`].
    pub fn overlay(self, over: Self) -> Self {
        let headers = match (self.export.otlp_headers.clone(), &over.export.otlp_headers) {
            (Some(mut base), Some(over)) => {
                base.extend(over.iter().cloned());
                Some(base)
            }
            (base, over) => over.clone().or(base),
        };
        let frame_pointers = over.profiling.unwinder == Some(UnwinderKind::FramePointers);
        let over_budget = over.profiling.unwind_table_budget;
        let over_command = over.command.clone();
        let mut merged = Self {
            command: self.command.replace(over.command),
            profiling: self.profiling.replace(over.profiling),
            filters: self.filters.replace(over.filters),
            export: self.export.replace(over.export),
        };
        merged.export.otlp_headers = headers;
        if frame_pointers {
            merged.profiling.unwind_table_budget = over_budget;
        }
        C::overlay_rules(&over_command, &mut merged.command);
        merged
    }

    /// Checks the rules between settings: a table budget needs the tables
    /// unwinder, `profiles` must not be empty, the endpoint must be a URL
    /// with a valid port, and the command's own rules. Applied alike to the
    /// flags, to the file (pointing at the key) and to the settings
    /// resolved from both.
    pub fn check(&self) -> Result<(), SettingsError> {
        self.profiling.unwinder()?;
        self.profiling.profile_kinds()?;
        self.export.check()?;
        self.command.check()
    }
}

/// The command line of `hostprof record` or `hostprof agent`: where the
/// config file is, whether to print the effective configuration, and the
/// settings given as flags.
#[derive(Clone, Debug, clap::Args)]
pub struct CommandLine<C: CommandGroup> {
    /// YAML config file whose keys are the long flag names with `_` for
    /// `-`, e.g. `frequency: 49` or `otlp_endpoint: http://collector:4317`.
    /// Flags win over it; it wins over `OTEL_*` variables and `NODE_NAME`,
    /// which win over the defaults.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (flags over file over environment
    /// over defaults; header values hidden) as YAML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// The settings given as flags.
    #[command(flatten)]
    pub flags: Settings<C>,
}

impl<C: CommandGroup> CommandLine<C> {
    /// The config file's settings (none without `--config`) with the flags
    /// laid over them.
    pub fn settings(&self) -> Result<Settings<C>, SettingsError> {
        let file = match &self.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        Ok(file.overlay(self.flags.clone()))
    }
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file could not be read, or is not a regular UTF-8 file
    /// of at most [`MAX_CONFIG_BYTES`](crate::input::MAX_CONFIG_BYTES).
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::input::ReadError,
    },
    /// The config file is not valid YAML, or holds an unknown key, a bad
    /// value or settings that do not go together.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// 1-based column of the problem (0 when unknown).
        column: usize,
        /// What is wrong, naming the key or value.
        message: String,
    },
    /// A value that is well-formed but not acceptable, or does not go with
    /// another setting.
    #[error("{key}: {message}")]
    Invalid {
        /// The setting (its config-file key).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An exporter setting (flag, file or environment) that is wrong.
    #[error(transparent)]
    Exporter(#[from] ConfigError),
}

#[cfg(test)]
mod tests;
