//! Multi-document YAML parsing with Kubernetes-compatible scalar rules and hard budgets.

use std::path::Path;

use plumb_core::{Manifest, SourceLocation};
use serde_json::Value;
use serde_saphyr::{DuplicateKeyPolicy, SnippetMode, Spanned};

use crate::error::{RenderError, Result};

/// Parser options: YAML 1.1 octals (`0644` is 420, as Kustomize and kubectl read it), only
/// `true`/`false` are booleans (`yes` stays a string), duplicate keys are errors, and alias
/// expansion and document counts are budgeted.
fn options(max_documents: usize) -> serde_saphyr::Options {
    serde_saphyr::options! {
        legacy_octal_numbers: true,
        strict_booleans: true,
        duplicate_keys: DuplicateKeyPolicy::Error,
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 100_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 1_000,
        },
        budget: serde_saphyr::budget! {
            // One more than allowed, so that crossing the limit is reported by our own check
            // with a clear message (empty documents also count here).
            max_documents: max_documents.saturating_mul(2).saturating_add(1),
            max_nodes: 10_000_000,
            max_aliases: 10_000,
        },
    }
}

fn parse_error(e: &serde_saphyr::Error, path: &Path) -> RenderError {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    let message = e.render_with_options(serde_saphyr::render_options! {
        snippets: SnippetMode::Off,
    });
    RenderError::Parse {
        path: path.to_owned(),
        line,
        column,
        message: strip_location_suffix(&message),
    }
}

/// Parses a single YAML document (a kustomization file) with the same rules.
pub(crate) fn parse_value(text: &str, path: &Path) -> Result<Value> {
    serde_saphyr::from_str_with_options(text, options(1)).map_err(|e| parse_error(&e, path))
}

/// Parses every document of `text` (plugin configs) with the same rules; null documents are
/// kept, at most `max_documents` are read.
pub(crate) fn parse_values(text: &str, path: &Path, max_documents: usize) -> Result<Vec<Value>> {
    serde_saphyr::from_multiple_with_options(text, options(max_documents))
        .map_err(|e| parse_error(&e, path))
}

/// Parses `text` (from `path`, relative to the source root) into manifests. Empty documents
/// are skipped; `List` kinds are flattened into their items. `max_documents` caps the number
/// of objects returned.
pub(crate) fn parse_manifests(
    text: &str,
    path: &Path,
    max_documents: usize,
) -> Result<Vec<Manifest>> {
    let docs: Vec<Spanned<Value>> =
        serde_saphyr::from_multiple_with_options(text, options(max_documents))
            .map_err(|e| parse_error(&e, path))?;
    let starts = document_starts(text);
    let mut out = Vec::new();
    for doc in docs {
        let line = usize::try_from(doc.referenced.line()).unwrap_or(0);
        let document = document_index(&starts, line);
        let source = || SourceLocation {
            file: path.to_owned(),
            line,
            document,
        };
        let value = doc.value;
        if value.is_null() {
            continue;
        }
        if is_list(&value) {
            let Value::Object(mut map) = value else {
                unreachable!("is_list checked for an object")
            };
            let items = match map.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            };
            for item in items {
                out.push(Manifest::from_value(item, Some(source()))?);
                check_count(out.len(), path, max_documents)?;
            }
        } else {
            out.push(Manifest::from_value(value, Some(source()))?);
            check_count(out.len(), path, max_documents)?;
        }
    }
    Ok(out)
}

fn check_count(n: usize, path: &Path, limit: usize) -> Result<()> {
    if n > limit {
        return Err(RenderError::TooManyDocuments {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(())
}

/// `kind: List` (or any `*List` kind with an `items` array, as kubectl accepts).
fn is_list(v: &Value) -> bool {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    let has_items = v.get("items").is_some_and(Value::is_array);
    kind == "List" || (kind.ends_with("List") && has_items)
}

/// The serde-saphyr plain message ends with " at line L, column C"; we put the location
/// first instead. Advice aimed at the library's caller is dropped.
fn strip_location_suffix(message: &str) -> String {
    let mut m = message
        .trim()
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    if let Some(i) = m.rfind(" at line ") {
        let tail = &m[i + " at line ".len()..];
        let looks_like_location = tail
            .split([',', ' '])
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .as_slice()
            .first()
            .is_some_and(|t| t.chars().all(|c| c.is_ascii_digit()))
            && !tail.contains('(');
        if looks_like_location {
            m.truncate(i);
        }
    }
    m
}

/// 1-based lines of `---` document markers, and whether the first document is opened by one.
struct DocumentStarts {
    markers: Vec<usize>,
    leading_marker: bool,
}

fn document_starts(text: &str) -> DocumentStarts {
    let mut markers = Vec::new();
    let mut seen_content = false;
    let mut leading_marker = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("---#");
        if is_marker {
            if !seen_content && markers.is_empty() {
                leading_marker = true;
            }
            markers.push(i + 1);
            seen_content = true;
        } else if !line.trim().is_empty() && !line.starts_with('#') && !line.starts_with('%') {
            seen_content = true;
        }
    }
    DocumentStarts {
        markers,
        leading_marker,
    }
}

/// 0-based index of the document whose root node is on `line`, counting empty documents.
fn document_index(starts: &DocumentStarts, line: usize) -> usize {
    // A root node on the marker line itself (`--- {a: 1}`) belongs to that marker's document.
    let before = starts.markers.iter().filter(|m| **m <= line).count();
    if starts.leading_marker {
        before.saturating_sub(1)
    } else {
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_indexes_count_empty_documents() {
        let text = "---\n# empty\n---\na: 1\n---\n---\nb: 2\n";
        let starts = document_starts(text);
        assert_eq!(document_index(&starts, 4), 1);
        assert_eq!(document_index(&starts, 7), 3);
        let text = "a: 1\n---\nb: 2\n";
        let starts = document_starts(text);
        assert_eq!(document_index(&starts, 1), 0);
        assert_eq!(document_index(&starts, 3), 1);
    }

    #[test]
    fn strips_saphyr_location_suffix() {
        assert_eq!(
            strip_location_suffix(
                "duplicate mapping key: a, set DuplicateKeyPolicy in Options if acceptable at line 7, column 3"
            ),
            "duplicate mapping key: a"
        );
        assert_eq!(
            strip_location_suffix("unclosed bracket '[' at line 7, column 7"),
            "unclosed bracket '['"
        );
        assert_eq!(strip_location_suffix("weird at line x"), "weird at line x");
    }
}
