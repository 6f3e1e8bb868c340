//! edgegate's typed configuration.
//!
//! The crate is pure: no tokio, Pingora or wasmtime, and no I/O beyond
//! reading the file in [`load_file`]. It is organised as the config flows:
//!
//! - [`raw`]: serde types mirroring the TOML (`deny_unknown_fields` everywhere);
//! - [`validate`](crate::parse_str) turns them into [`Config`] ([`config`]),
//!   whose types cannot hold invalid states;
//! - [`route`]: route matchers and the [`RouteTable`] lookup, pure functions;
//! - [`error`]: [`ConfigError`] names the file, line, column and key.
//!
//! `edgegate check --config FILE` and the gateway's loader call the same
//! [`load_file`], so a file that passes `check` is a file the gateway runs.

pub mod config;
pub mod error;
pub mod raw;
pub mod route;
mod validate;

pub use config::*;
pub use error::{ConfigError, Location};
pub use raw::RawConfig;
pub use route::{HostMatch, PathMatch, Route, RouteId, RouteTable};
pub use validate::{parse_duration, parse_size, DEFAULT_ADMIN};

use error::{locate, render_path, PathSeg};
use std::path::Path;

/// Values that come from the machine rather than the file.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Worker threads when `server.threads` is unset.
    pub threads: usize,
    /// PoP name when `pop.name` is unset.
    pub pop_name: String,
}

/// Reads and validates a config file.
pub fn load_file(path: &Path, defaults: &Defaults) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        location: None,
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse_str(&source, path, defaults)
}

/// Parses and validates TOML `source` that came from `file`.
pub fn parse_str(source: &str, file: &Path, defaults: &Defaults) -> Result<Config, ConfigError> {
    let raw = parse_raw(source, file)?;
    let base_dir = file.parent().unwrap_or_else(|| Path::new("."));
    validate::validate(&raw, defaults.threads, &defaults.pop_name, base_dir).map_err(|e| {
        ConfigError {
            file: file.to_path_buf(),
            location: locate(source, &e.path),
            key: render_path(&e.path),
            message: e.message,
        }
    })
}

/// Validates a config built in code (e.g. from command-line flags); errors
/// name `origin` as their file.
pub fn from_raw(raw: &RawConfig, origin: &str, defaults: &Defaults) -> Result<Config, ConfigError> {
    validate::validate(raw, defaults.threads, &defaults.pop_name, Path::new(".")).map_err(|e| {
        ConfigError {
            file: origin.into(),
            location: None,
            key: render_path(&e.path),
            message: e.message,
        }
    })
}

/// TOML → [`RawConfig`], with the key path of any type or unknown-key error.
pub fn parse_raw(source: &str, file: &Path) -> Result<RawConfig, ConfigError> {
    let de =
        toml::Deserializer::parse(source).map_err(|e| toml_error(file, source, &e, Vec::new()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => {
                    Some(PathSeg::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        toml_error(file, source, e.inner(), path)
    })
}

fn toml_error(
    file: &Path,
    source: &str,
    e: &toml::de::Error,
    mut path: Vec<PathSeg>,
) -> ConfigError {
    let message = e.message().trim().to_string();
    // For an unknown key the path stops at its table; name the key itself.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, _)) = rest.split_once('`') {
            if path.last() != Some(&PathSeg::Key(key.to_string())) {
                path.push(PathSeg::Key(key.to_string()));
            }
        }
    }
    let location = e
        .span()
        .map(|s| error::offset_to_location(source, s.start))
        .or_else(|| locate(source, &path));
    ConfigError {
        file: file.to_path_buf(),
        location,
        key: render_path(&path),
        message,
    }
}
