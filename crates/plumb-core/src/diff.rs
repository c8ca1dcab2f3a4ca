//! Human-readable diffs between live and desired objects, with Secret values masked.

use serde_json::{Map, Value};
use similar::TextDiff;

use crate::normalize::normalize;
use crate::object::ObjectKey;
use crate::yaml::to_yaml;

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Mask for a Secret value that is the same on both sides (or present on one side only).
pub const MASK_SAME: &str = "***";
/// Mask for the old side of a changed Secret value.
pub const MASK_BEFORE: &str = "*** (before)";
/// Mask for the new side of a changed Secret value.
pub const MASK_AFTER: &str = "*** (after)";

/// A unified diff from `live` to `desired` of object `key`, or `None` when both normalise to
/// the same value (see [`normalize`]). A missing side diffs as empty (`/dev/null`): a new
/// object shows all `+` lines, a pruned one all `-` lines.
///
/// Pass the server-side dry-run result as `desired` to avoid diffs on defaulted fields.
/// Both sides are rendered as YAML with sorted keys. For Secrets, every value under `data`
/// and `stringData` is replaced by a mask: `***` when unchanged (or one-sided), `*** (before)` /
/// `*** (after)` when changed, so the diff shows *that* a value changed, never the value.
/// `color` adds ANSI colours (red removals, green additions) for terminals.
pub fn unified_diff(
    key: &ObjectKey,
    live: Option<&Value>,
    desired: Option<&Value>,
    color: bool,
) -> Option<String> {
    let mut old = live.map(normalize);
    let mut new = desired.map(normalize);
    if old == new {
        return None;
    }
    if key.group.is_empty() && key.kind == "Secret" {
        mask_secret(old.as_mut(), new.as_mut());
    }
    let old_text = old.as_ref().map(to_yaml).unwrap_or_default();
    let new_text = new.as_ref().map(to_yaml).unwrap_or_default();
    let old_name = if old.is_some() {
        format!("live/{key}")
    } else {
        "/dev/null".to_owned()
    };
    let new_name = if new.is_some() {
        format!("desired/{key}")
    } else {
        "/dev/null".to_owned()
    };
    let diff = TextDiff::from_lines(&old_text, &new_text);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &new_name)
        .to_string();
    if text.is_empty() {
        // Values differ but render the same (e.g. 1 vs 1.0); report the difference anyway.
        return Some(format!(
            "--- {old_name}\n+++ {new_name}\n# values differ only in number representation\n"
        ));
    }
    Some(if color { colorize(&text) } else { text })
}

fn colorize(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let style = if body.starts_with("--- ") || body.starts_with("+++ ") {
            Some(BOLD)
        } else if body.starts_with('-') {
            Some(RED)
        } else if body.starts_with('+') {
            Some(GREEN)
        } else if body.starts_with("@@") {
            Some(CYAN)
        } else {
            None
        };
        match style {
            Some(s) => {
                out.push_str(s);
                out.push_str(body);
                out.push_str(RESET);
            }
            None => out.push_str(body),
        }
        out.push_str(nl);
    }
    out
}

fn mask_secret(mut old: Option<&mut Value>, mut new: Option<&mut Value>) {
    for field in ["data", "stringData"] {
        let o = old
            .as_deref_mut()
            .and_then(Value::as_object_mut)
            .and_then(|m| m.get_mut(field));
        let n = new
            .as_deref_mut()
            .and_then(Value::as_object_mut)
            .and_then(|m| m.get_mut(field));
        let o_orig = o.as_deref().cloned();
        let n_orig = n.as_deref().cloned();
        if let Some(o) = o {
            *o = masked(o, n_orig.as_ref(), MASK_BEFORE);
        }
        if let Some(n) = n {
            *n = masked(n, o_orig.as_ref(), MASK_AFTER);
        }
    }
}

/// `this` with every value replaced by a mask; `changed_mask` where `other` has the same key
/// with a different value.
fn masked(this: &Value, other: Option<&Value>, changed_mask: &str) -> Value {
    let Some(map) = this.as_object() else {
        return Value::String(MASK_SAME.to_owned());
    };
    let other = other.and_then(Value::as_object);
    let out: Map<String, Value> = map
        .iter()
        .map(|(k, v)| {
            let mask = match other.and_then(|o| o.get(k)) {
                Some(ov) if ov != v => changed_mask,
                _ => MASK_SAME,
            };
            (k.clone(), Value::String(mask.to_owned()))
        })
        .collect();
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn color_marks_removals_red_and_additions_green() {
        let key = ObjectKey::new("", "ConfigMap", Some("ns"), "c");
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}});
        let desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "2"}});
        let d = unified_diff(&key, Some(&live), Some(&desired), true).unwrap();
        assert!(d.contains("\x1b[31m-  a: \"1\"\x1b[0m\n"), "{d:?}");
        assert!(d.contains("\x1b[32m+  a: \"2\"\x1b[0m\n"), "{d:?}");
        assert!(
            d.starts_with("\x1b[1m--- live/ConfigMap/ns/c\x1b[0m\n"),
            "{d:?}"
        );
        let plain = unified_diff(&key, Some(&live), Some(&desired), false).unwrap();
        assert!(!plain.contains('\x1b'));
        assert_eq!(unified_diff(&key, Some(&live), Some(&live), true), None);
        assert_eq!(unified_diff(&key, None, None, false), None);
    }

    #[test]
    fn secret_masks_depend_on_equality_only() {
        let key = ObjectKey::new("", "Secret", Some("ns"), "s");
        let s =
            |v: &str| json!({"apiVersion": "v1", "kind": "Secret", "data": {"k": v}, "type": "x"});
        // Only the type changed: the unchanged value is masked identically on both sides.
        let mut other = s("c2VjcmV0");
        other["type"] = json!("y");
        let d = unified_diff(&key, Some(&s("c2VjcmV0")), Some(&other), false).unwrap();
        assert!(d.contains("\n   k: \"***\"\n"), "{d}");
        assert!(!d.contains("c2VjcmV0"));
        // A Secret-like ConfigMap is not masked.
        let cm_key = ObjectKey::new("", "ConfigMap", Some("ns"), "s");
        let d = unified_diff(&cm_key, Some(&s("a")), Some(&s("b")), false).unwrap();
        assert!(d.contains("-  k: a\n+  k: b\n"), "{d}");
    }
}
