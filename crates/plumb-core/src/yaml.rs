//! A small, deterministic YAML emitter for JSON values (for diffs and `-o yaml` output).
//!
//! Keys are sorted; strings are plain when unambiguous, block literals (`|`) when they span
//! lines, double-quoted otherwise. The output is valid YAML that parses back to the same value.

use std::fmt::Write;

use serde_json::{Map, Value};

/// Renders `value` as a YAML document (no `---` marker), ending in a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0, false),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0, false),
        other => {
            out.push_str(&inline_scalar(other));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn sorted(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Writes a block mapping at `indent`; if `inline_first`, the first key continues the current
/// line (after `- `).
fn write_map(out: &mut String, m: &Map<String, Value>, indent: usize, inline_first: bool) {
    for (i, (k, v)) in sorted(m).into_iter().enumerate() {
        if i > 0 || !inline_first {
            pad(out, indent);
        }
        out.push_str(&scalar_string(k));
        out.push(':');
        write_after_key(out, v, indent);
    }
}

fn write_after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2, false);
        }
        // Sequences under a key at the key's indentation, as kubectl prints them.
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent, false);
        }
        Value::String(s) if block_literal_ok(s) => {
            out.push(' ');
            write_block_literal(out, s, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&inline_scalar(other));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, a: &[Value], indent: usize, inline_first: bool) {
    for (i, item) in a.iter().enumerate() {
        if i > 0 || !inline_first {
            pad(out, indent);
        }
        out.push('-');
        match item {
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                write_map(out, m, indent + 2, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push(' ');
                write_seq(out, inner, indent + 2, true);
            }
            Value::String(s) if block_literal_ok(s) => {
                out.push(' ');
                write_block_literal(out, s, indent + 2);
            }
            other => {
                out.push(' ');
                out.push_str(&inline_scalar(other));
                out.push('\n');
            }
        }
    }
}

/// Multi-line strings that a literal block can hold exactly: no control characters other
/// than newlines and tabs, no leading space on the first line (that would need an indentation
/// indicator), at most one trailing newline.
fn block_literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with(' ')
        && !s.starts_with('\n')
        && !s
            .chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{feff}')
}

fn write_block_literal(out: &mut String, s: &str, indent: usize) {
    let body = s.strip_suffix('\n');
    out.push_str(if body.is_some() { "|\n" } else { "|-\n" });
    for line in body.unwrap_or(s).split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
}

fn inline_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

/// Words that YAML 1.1 or 1.2 parsers read as booleans or null.
const RESERVED: &[&str] = &[
    "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n",
];

fn scalar_string(s: &str) -> String {
    if plain_ok(s) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s)) {
        return false;
    }
    // Anything number-like (incl. 0x10, 1e3, .5, -1, +1, 0644, 1_000, .inf) stays quoted.
    if first.is_ascii_digit() || matches!(first, '.' | '+' | '-') {
        return false;
    }
    if "!&*?|>'\"%@`#,[]{}:= \t<".contains(first) {
        return false;
    }
    if s.ends_with(' ') || s.ends_with(':') || s.contains(": ") || s.contains(" #") {
        return false;
    }
    !s.chars().any(|c| c.is_control() || c == '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn golden_output() {
        let v = json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": "c", "labels": {}, "annotations": {"a/b": "yes"}},
            "data": {
                "script": "#!/bin/sh\necho hi\n\nexit 0\n",
                "nonl": "a\nb",
                "num": "0644",
                "empty": "",
                "colon": "a: b",
                "quote": "say \"hi\"",
                "url": "http://x:80/y",
                "lead": " x\ny"
            },
            "list": [{"name": "a", "ports": [1, 2]}, "s", [], [["x"]], null, true, 1.5]
        });
        let expected = r#"apiVersion: v1
data:
  colon: "a: b"
  empty: ""
  lead: " x\ny"
  nonl: |-
    a
    b
  num: "0644"
  quote: say "hi"
  script: |
    #!/bin/sh
    echo hi

    exit 0
  url: http://x:80/y
kind: ConfigMap
list:
- name: a
  ports:
  - 1
  - 2
- s
- []
- - - x
- null
- true
- 1.5
metadata:
  annotations:
    a/b: "yes"
  labels: {}
  name: c
"#;
        assert_eq!(to_yaml(&v), expected);
        assert_eq!(to_yaml(&json!({})), "{}\n");
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_back_to_the_same_value() {
        let v = json!({
            "s": ["yes", "No", "~", "null", "0x1F", "1e3", ".5", "-", "- a", "a #b", "a:b", "@x",
                  "%x", "*x", "&x", "!x", "|", ">", "'", "\"", "\\", "tab\there", "é ü", "",
                  "trailing ", "multi\nline\n", "  lead\nx", "cr\r\nlf", "ends\n\n", "nul\u{0}"],
            "n": [0, -1, 1.25, 1e300, u64::MAX],
            "b": [true, false, null],
            "nested": {"a": [[1, [2]], {"b": {"c": []}}, {}], "": "empty key", "x y": 1}
        });
        let text = to_yaml(&v);
        let back: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(back, v, "{text}");
    }
}
