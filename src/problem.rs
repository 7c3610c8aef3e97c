//! Validation problems and a small reader that walks a parsed TOML or JSON document
//! field by field, so that *every* problem of a document is reported at once, each
//! as `file: field: what is wrong` (serde would stop at the first one).

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;

/// One thing wrong with a config file, manifest or desired-state document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file (or document) the problem is in.
    pub file: String,
    /// Dotted path of the field, e.g. `limits.nofile`; `-` for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.field, self.message)
    }
}

/// Joins a field path: `join("limits", "nofile")` is `limits.nofile`. Keys that are
/// not plain identifiers are quoted, as TOML would write them.
pub fn join(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let key = if plain { key.to_string() } else { format!("{key:?}") };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// Collects problems for one file.
#[derive(Debug)]
pub struct Checker {
    file: String,
    pub problems: Vec<Problem>,
}

impl Checker {
    pub fn new(file: impl Into<String>) -> Self {
        Checker {
            file: file.into(),
            problems: Vec::new(),
        }
    }

    pub fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Starts reading the table at `path`, reporting every key not in `known`.
    pub fn table<'m>(&mut self, map: &'m Map<String, Value>, path: &str, known: &[&str]) -> Fields<'m> {
        let unknown: BTreeSet<&String> = map.keys().filter(|k| !known.contains(&k.as_str())).collect();
        for key in unknown {
            self.problem(
                join(path, key),
                format!("unknown key (known keys: {})", known.join(", ")),
            );
        }
        Fields {
            map,
            path: path.to_string(),
        }
    }

    /// A string field. Control characters are rejected everywhere: they would inject
    /// lines into rendered config files.
    pub fn string(&mut self, fields: &Fields<'_>, key: &str) -> Option<String> {
        let value = fields.map.get(key)?;
        let field = fields.path(key);
        match value {
            Value::String(s) => {
                if let Some(problem) = control_character(s) {
                    self.problem(field, problem);
                    None
                } else {
                    Some(s.clone())
                }
            }
            other => {
                self.problem(field, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    /// A required string field.
    pub fn required_string(&mut self, fields: &Fields<'_>, key: &str) -> Option<String> {
        if !fields.map.contains_key(key) {
            self.problem(fields.path(key), "missing (required)");
            return None;
        }
        self.string(fields, key)
    }

    /// A duration field (`"10s"`, `"2m"`).
    pub fn duration(&mut self, fields: &Fields<'_>, key: &str) -> Option<std::time::Duration> {
        let text = self.string(fields, key)?;
        match crate::units::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(fields.path(key), e);
                None
            }
        }
    }

    /// A non-negative integer field.
    pub fn unsigned(&mut self, fields: &Fields<'_>, key: &str) -> Option<u64> {
        let value = fields.map.get(key)?;
        match value.as_u64() {
            Some(n) => Some(n),
            None => {
                self.problem(
                    fields.path(key),
                    format!("expected a non-negative integer, found {}", describe(value)),
                );
                None
            }
        }
    }

    /// A signed integer field.
    pub fn integer(&mut self, fields: &Fields<'_>, key: &str) -> Option<i64> {
        let value = fields.map.get(key)?;
        match value.as_i64() {
            Some(n) => Some(n),
            None => {
                self.problem(
                    fields.path(key),
                    format!("expected an integer, found {}", describe(value)),
                );
                None
            }
        }
    }

    /// A nested table field.
    pub fn subtable<'m>(&mut self, fields: &Fields<'m>, key: &str) -> Option<&'m Map<String, Value>> {
        match fields.map.get(key)? {
            Value::Object(map) => Some(map),
            other => {
                self.problem(fields.path(key), format!("expected a table, found {}", kind(other)));
                None
            }
        }
    }

    /// An array of strings.
    pub fn string_list(&mut self, fields: &Fields<'_>, key: &str) -> Option<Vec<String>> {
        let value = fields.map.get(key)?;
        let Value::Array(items) = value else {
            self.problem(
                fields.path(key),
                format!("expected a list of strings, found {}", kind(value)),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let field = format!("{}[{i}]", fields.path(key));
            match item {
                Value::String(s) => match control_character(s) {
                    Some(problem) => {
                        self.problem(field, problem);
                        ok = false;
                    }
                    None => out.push(s.clone()),
                },
                other => {
                    self.problem(field, format!("expected a string, found {}", kind(other)));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// A table being read; see [`Checker::table`].
#[derive(Debug)]
pub struct Fields<'m> {
    pub map: &'m Map<String, Value>,
    path: String,
}

impl Fields<'_> {
    /// Full path of `key` in this table.
    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }
}

/// Says what is wrong if `s` holds a control character (newline, NUL, tab, DEL, …).
pub fn control_character(s: &str) -> Option<String> {
    s.chars()
        .find(|c| c.is_control())
        .map(|c| format!("contains the control character {c:?}, which is not allowed"))
}

/// The JSON type of a value, for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// A short description of a value for messages; strings are not echoed in full.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(n) => format!("{n}"),
        other => kind(other).to_string(),
    }
}

/// Test helper: `problems` are exactly one per `expected` prefix, in any order.
#[cfg(test)]
pub fn assert_problems(problems: &[String], expected: &[&str]) {
    for e in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "missing {e:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_quote_keys_that_need_it() {
        assert_eq!(join("", "port"), "port");
        assert_eq!(join("limits", "nofile"), "limits.nofile");
        assert_eq!(join("engines.redis.versions", "7.0"), "engines.redis.versions.\"7.0\"");
    }

    #[test]
    fn every_problem_is_collected() {
        let doc = json!({"name": "a\nb", "port": -1, "bogus": 1, "other": true});
        let map = doc.as_object().unwrap();
        let mut checker = Checker::new("x.toml");
        let fields = checker.table(map, "", &["name", "port"]);
        assert_eq!(checker.string(&fields, "name"), None);
        assert_eq!(checker.unsigned(&fields, "port"), None);
        let lines: Vec<String> = checker.problems.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines.iter().any(|l| l.starts_with("x.toml: bogus: unknown key")));
        assert!(lines.iter().any(|l| l.starts_with("x.toml: other: unknown key")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("x.toml: name: contains the control character '\\n'")));
        assert!(lines
            .iter()
            .any(|l| l == "x.toml: port: expected a non-negative integer, found -1"));
    }
}
