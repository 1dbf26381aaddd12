//! Whole-number settings with bounds and a default (`--off-cpu-max-rate`,
//! `--page-fault-period`): one macro writes the type, its parsing from the
//! command line and from YAML, and the error that names the range.

/// Declares `$name(u32)`, accepted from `$min` to `$max`, and `$error`,
/// the error for anything else: "invalid `$what` "…": expected a whole
/// number of `$unit` from `$min` to `$max` (default `$default`)".
macro_rules! bounded_number {
    (
        $(#[$doc:meta])*
        pub struct $name:ident;
        $(#[$error_doc:meta])*
        pub struct $error:ident;
        what = $what:literal, unit = $unit:literal,
        min = $min:expr, max = $max:expr,
        $(#[$default_doc:meta])*
        default = $default:expr,
        $(#[$get_doc:meta])*
        get = $get:ident $(,)?
    ) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize,
            serde::Deserialize,
        )]
        #[serde(try_from = "u32", into = "u32")]
        pub struct $name(u32);

        impl $name {
            /// Lowest accepted value.
            pub const MIN: u32 = $min;
            /// Highest accepted value.
            pub const MAX: u32 = $max;
            $(#[$default_doc])*
            pub const DEFAULT: $name = $name($default);

            /// A value, or an error when outside [`Self::MIN`]..=[`Self::MAX`].
            pub fn new(value: u32) -> Result<Self, $error> {
                if (Self::MIN..=Self::MAX).contains(&value) {
                    Ok(Self(value))
                } else {
                    Err($error(value.to_string()))
                }
            }

            $(#[$get_doc])*
            pub fn $get(self) -> u32 {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::DEFAULT
            }
        }

        impl TryFrom<u32> for $name {
            type Error = $error;

            fn try_from(value: u32) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for u32 {
            fn from(value: $name) -> u32 {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.trim()
                    .parse::<u32>()
                    .ok()
                    .and_then(|value| Self::new(value).ok())
                    .ok_or_else(|| $error(s.to_owned()))
            }
        }

        $(#[$error_doc])*
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error(
            "invalid {what} {0:?}: expected a whole number of {unit} from {min} to {max} \
             (default {default})",
            what = $what,
            unit = $unit,
            min = $name::MIN,
            max = $name::MAX,
            default = $name::DEFAULT.0
        )]
        pub struct $error(String);
    };
}

pub(crate) use bounded_number;
