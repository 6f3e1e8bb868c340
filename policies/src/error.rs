//! Errors a person can act on: which file, where in it, which key, and what
//! was expected.

use std::fmt;
use std::path::PathBuf;

/// A position in the config file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1 (in characters).
    pub column: usize,
}

/// Why a config was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<command line>` for a config built from flags.
    pub file: PathBuf,
    /// Where the offending key or value is, when it can be found.
    pub location: Option<Location>,
    /// The dotted key path, e.g. `routes[1].upstream`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}`: {}", self.key, self.message)
        }
    }
}

/// A validation failure before it is placed in a file: the key path and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyError {
    pub path: Vec<PathSeg>,
    pub message: String,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathSeg {
    Key(String),
    Index(usize),
}

impl KeyError {
    pub(crate) fn new(path: Vec<PathSeg>, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }
}

/// Renders `a.b[2].c`.
pub(crate) fn render_path(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSeg::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

/// Finds where `path` is in the TOML `source`: the key itself when it exists,
/// else the nearest enclosing table or array element.
pub(crate) fn locate(source: &str, path: &[PathSeg]) -> Option<Location> {
    use toml_edit::{Item, Table, Value};
    #[derive(Clone, Copy)]
    enum Node<'a> {
        Item(&'a Item),
        Table(&'a Table),
        Value(&'a Value),
    }
    let doc = toml_edit::Document::parse(source).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut span = None;
    for seg in path {
        // Canonical form: tables as Table, plain values as Value.
        let canon = match node {
            Node::Item(Item::Table(t)) => Node::Table(t),
            Node::Item(Item::Value(v)) => Node::Value(v),
            other => other,
        };
        let next = match (seg, canon) {
            (PathSeg::Key(k), Node::Table(t)) => t.get_key_value(k).map(|(key, item)| {
                span = key.span().or(span.clone());
                Node::Item(item)
            }),
            (PathSeg::Key(k), Node::Value(Value::InlineTable(t))) => {
                t.get_key_value(k).map(|(key, item)| {
                    span = key.span().or(span.clone());
                    Node::Item(item)
                })
            }
            (PathSeg::Index(i), Node::Item(Item::ArrayOfTables(a))) => a.get(*i).map(|t| {
                span = t.span().or(span.clone());
                Node::Table(t)
            }),
            (PathSeg::Index(i), Node::Value(Value::Array(a))) => a.get(*i).map(|v| {
                span = v.span().or(span.clone());
                Node::Value(v)
            }),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    span.map(|s| offset_to_location(source, s.start))
}

pub(crate) fn offset_to_location(source: &str, offset: usize) -> Location {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    Location { line, column }
}
