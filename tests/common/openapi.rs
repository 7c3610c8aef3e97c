//! Checks JSON against the schemas of the project's `openapi.yaml` (the OpenAPI 3.0
//! subset it uses: `$ref`, `type`, `nullable`, `required`, `properties`,
//! `additionalProperties`, `enum`, `items`, `oneOf`, `allOf`, `minimum`, `maximum`).
//!
//! Stricter than OpenAPI on one point, on purpose: an object may not carry a property
//! its schema does not list (unless the schema says `additionalProperties`), so that
//! everything the agent sends or serves is documented.

use serde_json::Value;

/// The parsed `openapi.yaml`.
pub struct Spec {
    root: Value,
}

impl Spec {
    pub fn load() -> Spec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("read openapi.yaml");
        let root: Value = serde_norway::from_str(&text).expect("openapi.yaml is valid YAML");
        Spec { root }
    }

    /// Checks `value` against `components/schemas/<name>`; panics listing every
    /// mismatch with its JSON path.
    pub fn check(&self, name: &str, value: &Value) {
        let schema = self.root["components"]["schemas"]
            .get(name)
            .unwrap_or_else(|| panic!("openapi.yaml has no schema {name}"));
        let mut errors = Vec::new();
        self.validate(schema, value, "$", &mut errors);
        assert!(
            errors.is_empty(),
            "{name} does not match openapi.yaml:\n  {}\nvalue: {value:#}",
            errors.join("\n  ")
        );
    }

    /// The schema of a response: `paths/<path>/<method>/responses/<code>`.
    pub fn check_response(&self, path: &str, method: &str, code: u16, value: &Value) {
        let response = &self.root["paths"][path][method]["responses"][code.to_string()];
        assert!(
            !response.is_null(),
            "openapi.yaml does not document {method} {path} answering {code}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        let mut errors = Vec::new();
        self.validate(schema, value, "$", &mut errors);
        assert!(
            errors.is_empty(),
            "{method} {path} {code} does not match openapi.yaml:\n  {}\nvalue: {value:#}",
            errors.join("\n  ")
        );
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.trim_start_matches("#/components/schemas/");
                &self.root["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if schema.is_null() {
            errors.push(format!("{at}: unknown $ref"));
            return;
        }
        if value.is_null() {
            if schema["nullable"] == true || schema["enum"].as_array().is_some_and(|e| e.contains(&Value::Null)) {
                return;
            }
            if schema.get("allOf").is_none() && schema.get("oneOf").is_none() {
                errors.push(format!("{at}: null but not nullable"));
                return;
            }
        }
        if let Some(all) = schema["allOf"].as_array() {
            if value.is_null() && schema["nullable"] == true {
                return;
            }
            // Each part checks its own properties; the union of them is allowed.
            let allowed: Vec<String> = all
                .iter()
                .flat_map(|s| {
                    self.resolve(s)["properties"]
                        .as_object()
                        .map(|p| p.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .collect();
            for part in all {
                let mut part_errors = Vec::new();
                self.validate(part, value, at, &mut part_errors);
                errors.extend(
                    part_errors
                        .into_iter()
                        .filter(|e| !allowed.iter().any(|k| e == &format!("{at}.{k}: not in the schema"))),
                );
            }
        }
        if let Some(one) = schema["oneOf"].as_array() {
            let matching = one
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    self.validate(s, value, at, &mut e);
                    e.is_empty()
                })
                .count();
            if matching != 1 {
                errors.push(format!("{at}: matches {matching} of the oneOf schemas, not exactly 1"));
            }
        }
        if let Some(options) = schema["enum"].as_array() {
            if !options.contains(value) {
                errors.push(format!("{at}: {value} is not one of {options:?}"));
            }
        }
        let Some(kind) = schema["type"].as_str() else {
            return;
        };
        let type_ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !type_ok {
            errors.push(format!("{at}: expected {kind}, found {value}"));
            return;
        }
        if let (Some(n), Some(min)) = (value.as_f64(), schema["minimum"].as_f64()) {
            if n < min {
                errors.push(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        if let (Some(n), Some(max)) = (value.as_f64(), schema["maximum"].as_f64()) {
            if n > max {
                errors.push(format!("{at}: {n} is above the maximum {max}"));
            }
        }
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.validate(&schema["items"], item, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(object) = value.as_object() {
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap_or_default();
                if !object.contains_key(key) {
                    errors.push(format!("{at}.{key}: missing (required)"));
                }
            }
            let properties = schema["properties"].as_object();
            for (key, item) in object {
                let at = format!("{at}.{key}");
                match (properties.and_then(|p| p.get(key)), &schema["additionalProperties"]) {
                    (Some(property), _) => self.validate(property, item, &at, errors),
                    (None, Value::Object(_)) => self.validate(&schema["additionalProperties"], item, &at, errors),
                    (None, Value::Bool(true)) => {}
                    (None, _) if properties.is_none() && schema.get("additionalProperties").is_none() => {}
                    (None, _) => errors.push(format!("{at}: not in the schema")),
                }
            }
        }
    }
}
