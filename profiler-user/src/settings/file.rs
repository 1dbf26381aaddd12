//! The config file: one flat YAML mapping whose keys are the field names
//! of every group of a command (`interval`, `otlp_endpoint`, ...).
//!
//! Reading takes one pass that rejects unknown and repeated keys, then one
//! pass per group, each taking its own keys: every pass reads the text
//! itself, so every error carries the line and column of the key or value
//! at fault. The rules between settings ([`Settings::check`]) are then
//! pointed at the key they name.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::input::{read_text_file, MAX_CONFIG_BYTES};

use super::{AgentOnly, CommandGroup, Group, RecordOnly, Settings, SettingsError};

impl<C: CommandGroup> Settings<C> {
    /// Reads settings from the YAML file at `path`: a regular file of at
    /// most [`MAX_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text =
            read_text_file(path, MAX_CONFIG_BYTES).map_err(|source| SettingsError::Read {
                path: path.to_owned(),
                source,
            })?;
        Self::from_yaml(&text, path)
    }

    /// Parses settings from YAML text; `path` only names it in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, SettingsError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let located = |err: serde_yaml_ng::Error| {
            let (line, column) = err.location().map_or((0, 0), |at| (at.line(), at.column()));
            let mut message = err.to_string();
            // The location is reported in front, not repeated at the end.
            if let Some(at) = message.find(" at line ") {
                message.truncate(at);
            }
            SettingsError::Parse {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        serde_yaml_ng::from_str::<KnownKeys<C>>(text).map_err(located)?;
        let settings = Self {
            command: serde_yaml_ng::from_str(text).map_err(located)?,
            profiling: serde_yaml_ng::from_str(text).map_err(located)?,
            filters: serde_yaml_ng::from_str(text).map_err(located)?,
            export: serde_yaml_ng::from_str(text).map_err(located)?,
        };
        settings.check().map_err(|err| match err {
            SettingsError::Invalid { key, message } => {
                let (line, column) = key_location(text, key);
                SettingsError::Parse {
                    path: path.to_owned(),
                    line,
                    column,
                    message: format!("{key}: {message}"),
                }
            }
            other => other,
        })?;
        Ok(settings)
    }

    /// These settings as YAML, in the config file's format.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("settings always serialize")
    }
}

/// The first pass over a file: a mapping whose keys are all keys of
/// `Settings<C>`, each once.
struct KnownKeys<C>(PhantomData<C>);

impl<'de, C: CommandGroup> Deserialize<'de> for KnownKeys<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(KnownKeys(PhantomData))
    }
}

impl<'de, C: CommandGroup> Visitor<'de> for KnownKeys<C> {
    type Value = Self;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of settings")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while map
            .next_key_seed(Key::<C> {
                seen: &mut seen,
                command: PhantomData,
            })?
            .is_some()
        {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(self)
    }
}

/// One key of the first pass; its errors are raised while the key is read,
/// so that they carry its place in the file.
struct Key<'a, C> {
    seen: &'a mut HashSet<String>,
    command: PhantomData<C>,
}

impl<'de, C: CommandGroup> DeserializeSeed<'de> for Key<'_, C> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, C: CommandGroup> Visitor<'de> for Key<'_, C> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a setting's name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        if !Settings::<C>::keys().any(|k| k == key) {
            let elsewhere = [
                (AgentOnly::COMMAND, AgentOnly::KEYS),
                (RecordOnly::COMMAND, RecordOnly::KEYS),
            ]
            .into_iter()
            .find(|(_, keys)| keys.contains(&key));
            return Err(E::custom(match elsewhere {
                Some((command, _)) => format!(
                    "unknown field `{key}`: it is a setting of `hostprof {command}`, \
                     not of `hostprof {}`",
                    C::COMMAND
                ),
                None => {
                    let known: Vec<String> =
                        Settings::<C>::keys().map(|k| format!("`{k}`")).collect();
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        known.join(", ")
                    )
                }
            }));
        }
        if !self.seen.insert(key.to_owned()) {
            return Err(E::custom(format_args!("duplicate field `{key}`")));
        }
        Ok(())
    }
}

/// 1-based line and column of the first line of `text` whose key is `key`,
/// or `(0, 0)` when there is none (a flow mapping, say).
fn key_location(text: &str, key: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| {
            let body = line.trim_start();
            let rest = body.strip_prefix(key)?;
            rest.trim_start()
                .starts_with(':')
                .then(|| (i + 1, line.len() - body.len() + 1))
        })
        .unwrap_or((0, 0))
}

/// Parses a humane duration (`10s`, `2m`, `500ms`) longer than zero; the
/// error says what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s.trim())
        .map_err(|err| format!("{s:?}: {err}; use a number with a unit, e.g. 10s, 2m, 500ms"))?;
    if duration.is_zero() {
        return Err(format!("{s:?}: the duration must be longer than zero"));
    }
    Ok(duration)
}

/// Durations as humane strings (`10s`, `1m 30s`, `500ms`), never zero.
pub(super) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Export headers, a list of `(name, value)` pairs, as a mapping of names
/// to values (the last value of a name wins).
pub(super) mod headers {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Vec<(String, String)>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(pairs) => s.collect_map(
                pairs
                    .iter()
                    .map(|(k, v)| (k, v))
                    .collect::<BTreeMap<_, _>>(),
            ),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<(String, String)>>, D::Error> {
        let map = Option::<BTreeMap<String, String>>::deserialize(d)?;
        Ok(map.map(|m| m.into_iter().collect()))
    }
}
