//! The state of checking one file, the errors it reports (with the line where the offending
//! text is), and the typed readers of field values.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Refusal, RenderError, Result};

use super::entry::{is_url_like, resolve};
use super::{Reference, ReferenceKind};

/// Longest entry shown in an error.
const MAX_SHOWN: usize = 120;

/// The first line, shortened, for error messages.
fn shorten(entry: &str) -> String {
    let first = entry.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut out: String = first.chars().take(MAX_SHOWN).collect();
    if out.len() < entry.trim_end().len() {
        out.push('…');
    }
    out
}

/// One file being checked: where relative entries resolve, and what was found.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a Path,
    pub(super) dir: &'a Path,
    pub(super) text: &'a str,
    pub(super) refs: Vec<Reference>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(file: &'a Path, text: &'a str) -> Self {
        Ctx {
            file,
            dir: file.parent().unwrap_or(Path::new("")),
            text,
            refs: Vec::new(),
        }
    }

    /// 1-based line of the first occurrence of `needle`'s first line, 0 if not found. Best
    /// effort: the parsed value carries no positions.
    pub(super) fn line(&self, needle: &str) -> u64 {
        let Some(first) = needle.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return 0;
        };
        self.text
            .lines()
            .position(|l| l.contains(first))
            .map_or(0, |i| i as u64 + 1)
    }

    pub(super) fn remote(&self, field: String, entry: &str) -> RenderError {
        RenderError::RemoteResource {
            path: self.file.to_owned(),
            line: self.line(entry),
            field,
            entry: shorten(entry),
        }
    }

    pub(super) fn outside(&self, field: String, entry: &str) -> RenderError {
        RenderError::ReferenceOutsideRoot {
            path: self.file.to_owned(),
            line: self.line(entry),
            field,
            entry: shorten(entry),
        }
    }

    pub(super) fn refused(
        &self,
        field: &str,
        entry: &str,
        needle: &str,
        reason: Refusal,
    ) -> RenderError {
        RenderError::KustomizeRefused {
            path: self.file.to_owned(),
            line: self.line(needle),
            field: field.to_owned(),
            entry: shorten(entry),
            reason,
        }
    }

    /// The field (or key) itself is refused; found at the line `key:`.
    pub(super) fn field_refused(&self, field: &str, key: &str, reason: Refusal) -> RenderError {
        self.refused(field, "", &format!("{key}:"), reason)
    }

    pub(super) fn malformed(&self, field: &str, expected: &'static str) -> RenderError {
        let key = field.rsplit(['.', ' ']).next().unwrap_or(field);
        let key = key.split('[').next().unwrap_or(key);
        self.field_refused(field, key, Refusal::Malformed(expected))
    }

    /// Checks `entry` as a path and records it.
    pub(super) fn path(&mut self, field: String, entry: &str, kind: ReferenceKind) -> Result<()> {
        self.path_part(field, entry, entry, kind)
    }

    /// Checks `whole` for URLs and `part` (the path within it) for URLs and leaving the root;
    /// records `part`.
    pub(super) fn path_part(
        &mut self,
        field: String,
        whole: &str,
        part: &str,
        kind: ReferenceKind,
    ) -> Result<()> {
        if is_url_like(whole) || is_url_like(part) {
            return Err(self.remote(field, whole));
        }
        let Some(path) = resolve(self.dir, part) else {
            return Err(self.outside(field, whole));
        };
        self.refs.push(Reference { field, path, kind });
        Ok(())
    }

    /// An optional path field of a mapping.
    pub(super) fn opt_path(
        &mut self,
        field: &str,
        m: &Map<String, Value>,
        key: &str,
    ) -> Result<()> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) => self.path(format!("{field}.{key}"), s, ReferenceKind::Data),
            Some(_) => Err(self.malformed(&format!("{field}.{key}"), "a path (a string)")),
        }
    }

    /// Refuses keys of `m` outside `allowed`.
    pub(super) fn only_keys(
        &self,
        field: &str,
        m: &Map<String, Value>,
        allowed: &[&str],
    ) -> Result<()> {
        match m.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(self.field_refused(&format!("{field}.{k}"), k, Refusal::UnknownField)),
            None => Ok(()),
        }
    }

    /// A list of strings: `(field[i], entry)`; null and null entries are empty.
    pub(super) fn strings<'v>(&self, field: &str, v: &'v Value) -> Result<Vec<(String, &'v str)>> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Null => {}
                        Value::String(s) => out.push((format!("{field}[{i}]"), s.as_str())),
                        _ => return Err(self.malformed(&format!("{field}[{i}]"), "a string")),
                    }
                }
                Ok(out)
            }
            _ => Err(self.malformed(field, "a list of strings")),
        }
    }

    /// A list of mappings: `(field[i], mapping)`; null and null entries are empty.
    pub(super) fn mappings<'v>(
        &self,
        field: &str,
        v: &'v Value,
    ) -> Result<Vec<(String, &'v Map<String, Value>)>> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Null => {}
                        Value::Object(m) => out.push((format!("{field}[{i}]"), m)),
                        _ => return Err(self.malformed(&format!("{field}[{i}]"), "a mapping")),
                    }
                }
                Ok(out)
            }
            _ => Err(self.malformed(field, "a list of mappings")),
        }
    }

    pub(super) fn mapping<'v>(
        &self,
        field: &str,
        v: &'v Value,
    ) -> Result<Option<&'v Map<String, Value>>> {
        match v {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some(m)),
            _ => Err(self.malformed(field, "a mapping")),
        }
    }
}
