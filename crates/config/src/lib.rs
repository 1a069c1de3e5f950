//! Typed configuration for every Mailroom service.
//!
//! One TOML file, one table per service, every field typed, documented and
//! defaulted. Any field can be overridden from the environment as
//! `MAILROOM_<SECTION>__<FIELD>` (section and field upper-cased, a *double*
//! underscore between them), e.g. `MAILROOM_STORE__URL=postgres://…`: the
//! shape containers and Kubernetes want.
//!
//! Invariant: [`Config::load`] reads and validates everything before the
//! caller binds a single port, and reports *every* problem at once, each
//! with the key (and, for overrides, the environment variable) at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod sections;
pub use sections::*;

/// One problem with the configuration, tied to the key that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`store.url`), or the file itself for syntax errors.
    pub key: String,
    /// Where the value came from: the file, or an environment variable.
    pub source: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(src) => write!(f, "{} (from {}): {}", self.key, src, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in one load, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "MAILROOM_";

/// A raw value for one key, and where it came from.
#[derive(Debug, Clone)]
enum Raw {
    File(toml::Value),
    Env { var: String, text: String },
}

/// The raw key/value pairs of one section, before typing.
#[derive(Debug, Default)]
pub struct RawSection {
    name: &'static str,
    values: BTreeMap<String, Raw>,
}

impl RawSection {
    /// Types one field, recording an error (and returning `None`) when the
    /// value has the wrong type or shape.
    pub fn field<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        errors: &mut Vec<ConfigError>,
    ) -> Option<T> {
        let raw = self.values.remove(key)?;
        let full = format!("{}.{}", self.name, key);
        match raw {
            Raw::File(value) => match T::deserialize(value) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(ConfigError {
                        key: full,
                        source: None,
                        message: clean_serde_message(&e.to_string()),
                    });
                    None
                }
            },
            Raw::Env { var, text } => {
                // A string first (most overrides are strings, and "true" may be
                // a legitimate string), then the text read as a TOML value so
                // that numbers, booleans and arrays can be overridden too.
                if let Ok(v) = T::deserialize(toml::Value::String(text.clone())) {
                    return Some(v);
                }
                let parsed = format!("v = {text}")
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|mut t| t.remove("v"));
                match parsed.map(T::deserialize) {
                    Some(Ok(v)) => Some(v),
                    Some(Err(e)) => {
                        errors.push(ConfigError {
                            key: full,
                            source: Some(var),
                            message: clean_serde_message(&e.to_string()),
                        });
                        None
                    }
                    None => {
                        errors.push(ConfigError {
                            key: full,
                            source: Some(var),
                            message: format!("cannot read {text:?} as a value of this field"),
                        });
                        None
                    }
                }
            }
        }
    }

    /// Reports the keys nobody asked for: a typo must never pass silently.
    pub fn finish(self, known: &[&str], errors: &mut Vec<ConfigError>) {
        for (key, raw) in self.values {
            let source = match raw {
                Raw::Env { var, .. } => Some(var),
                Raw::File(_) => None,
            };
            errors.push(ConfigError {
                key: format!("{}.{}", self.name, key),
                source,
                message: format!("unknown key; the known keys are: {}", known.join(", ")),
            });
        }
    }
}

fn clean_serde_message(m: &str) -> String {
    m.trim().replace('\n', " ")
}

/// A section of the configuration file.
pub trait Section: Sized + Default {
    /// The table name in the file (`store`, `admin`, …).
    const NAME: &'static str;
    /// Every key of the section, in file order.
    const KEYS: &'static [&'static str];
    /// Types the raw values, falling back to defaults and recording errors.
    fn from_raw(raw: RawSection, errors: &mut Vec<ConfigError>) -> Self;
}

/// Declares a configuration section: the struct with documented public
/// fields, its defaults, and its field-by-field reader (so that one bad field
/// does not hide the errors of the others).
#[macro_export]
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident = $table:literal {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident : $ty:ty = $default:expr,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )+ }
            }
        }

        impl $crate::Section for $name {
            const NAME: &'static str = $table;
            const KEYS: &'static [&'static str] = &[$( stringify!($field) ),+];
            fn from_raw(mut raw: $crate::RawSection, errors: &mut Vec<$crate::ConfigError>) -> Self {
                let mut out = Self::default();
                $(
                    if let Some(v) = raw.field::<$ty>(stringify!($field), errors) {
                        out.$field = v;
                    }
                )+
                raw.finish(Self::KEYS, errors);
                out
            }
        }
    };
}

/// The sources of one load: an optional file and the environment.
fn collect_raw(
    file: Option<(&Path, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, BTreeMap<String, Raw>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Raw>> = BTreeMap::new();
    if let Some((path, text)) = file {
        match text.parse::<toml::Table>() {
            Ok(table) => {
                for (section, value) in table {
                    match value {
                        toml::Value::Table(t) => {
                            let entry = sections.entry(section).or_default();
                            for (k, v) in t {
                                entry.insert(k, Raw::File(v));
                            }
                        }
                        _ => errors.push(ConfigError {
                            key: section,
                            source: None,
                            message: "expected a [section] table".into(),
                        }),
                    }
                }
            }
            Err(e) => errors.push(ConfigError {
                key: path.display().to_string(),
                source: None,
                message: format!("not valid TOML: {}", clean_serde_message(&e.to_string())),
            }),
        }
    }
    for (var, text) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // Only SECTION__FIELD names are configuration; MAILROOM_ADMIN_TOKEN and
        // the like belong to the CLI.
        let Some((section, field)) = rest.split_once("__") else {
            continue;
        };
        sections
            .entry(section.to_ascii_lowercase())
            .or_default()
            .insert(field.to_ascii_lowercase(), Raw::Env { var, text });
    }
    sections
}

/// Reads one section out of the raw map.
fn take<S: Section>(
    raw: &mut BTreeMap<String, BTreeMap<String, Raw>>,
    errors: &mut Vec<ConfigError>,
) -> S {
    let values = raw.remove(S::NAME).unwrap_or_default();
    S::from_raw(
        RawSection {
            name: S::NAME,
            values,
        },
        errors,
    )
}

impl Config {
    /// Loads the configuration from an optional file plus the process
    /// environment, and validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let text = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => Some(t),
                Err(e) => {
                    return Err(ConfigErrors(vec![ConfigError {
                        key: p.display().to_string(),
                        source: None,
                        message: format!("cannot read the file: {e}"),
                    }]));
                }
            },
            None => None,
        };
        Self::from_sources(
            path.zip(text.as_deref()),
            std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)),
        )
    }

    /// Builds the configuration from a file's text and environment pairs;
    /// the testable core of [`Config::load`].
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut raw = collect_raw(file, env, &mut errors);
        let config = Config::from_raw_sections(&mut raw, &mut errors);
        for (section, values) in raw {
            let source = values.values().find_map(|r| match r {
                Raw::Env { var, .. } => Some(var.clone()),
                Raw::File(_) => None,
            });
            errors.push(ConfigError {
                key: section,
                source,
                message: format!(
                    "unknown section; the known sections are: {}",
                    Config::SECTIONS.join(", ")
                ),
            });
        }
        config.validate(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Checks shared by several sections.
pub(crate) fn check_file(key: &str, path: &Option<PathBuf>, errors: &mut Vec<ConfigError>) {
    if let Some(p) = path
        && !p.is_file()
    {
        errors.push(ConfigError {
            key: key.into(),
            source: None,
            message: format!("{} does not exist or is not a file", p.display()),
        });
    }
}

/// Records an error for two listeners configured on the same address.
pub(crate) fn check_distinct(addrs: &[(&str, SocketAddr)], errors: &mut Vec<ConfigError>) {
    for (i, (ka, a)) in addrs.iter().enumerate() {
        for (kb, b) in &addrs[..i] {
            if a == b && a.port() != 0 {
                errors.push(ConfigError {
                    key: (*ka).into(),
                    source: None,
                    message: format!("{a} is also used by {kb}"),
                });
            }
        }
    }
}
