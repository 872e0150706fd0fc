//! `--input-schema`: a JSON Schema every job's `input` must match before a
//! handler sees it. The endpoint API answers 400 listing the violations and
//! queues nothing; jobs from other sources fail with the same message.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::ConfigError;

/// A compiled schema for job inputs.
pub struct InputSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputSchema")
    }
}

/// One way an input breaks the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON Pointer into the input ("" is the input itself).
    pub path: String,
    pub message: String,
}

impl InputSchema {
    /// Reads and compiles the schema file.
    pub fn load(path: &Path) -> Result<InputSchema, ConfigError> {
        let shown = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::FlagFileUnreadable {
                flag: "--input-schema",
                path: path.to_owned(),
                source,
            })?;
        let schema: Value = serde_json::from_str(&text).map_err(|e| {
            ConfigError::Invalid(format!("--input-schema {shown} is not valid JSON: {e}"))
        })?;
        InputSchema::new(&schema).map_err(|e| {
            ConfigError::Invalid(format!(
                "--input-schema {shown} is not a usable JSON Schema: {e}"
            ))
        })
    }

    /// Compiles `schema`; the error says why it is no usable JSON Schema.
    pub fn new(schema: &Value) -> Result<InputSchema, jsonschema::ValidationError<'static>> {
        let validator = jsonschema::validator_for(schema)?;
        Ok(InputSchema { validator })
    }

    /// Every violation of the schema by `input`, in the validator's order.
    pub fn check(&self, input: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(input)
            .map(|error| Violation {
                path: error.instance_path().to_string(),
                message: error.to_string(),
            })
            .collect()
    }
}

/// The one-line error a job gets for its violations.
pub fn describe(violations: &[Violation]) -> String {
    let list: Vec<String> = violations
        .iter()
        .map(|v| {
            let path = if v.path.is_empty() { "/" } else { &v.path };
            format!("{path}: {}", v.message)
        })
        .collect();
    format!("input does not match --input-schema: {}", list.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_violation_is_listed_with_its_path() {
        let schema = InputSchema::new(&json!({
            "type": "object",
            "required": ["prompt"],
            "properties": {"prompt": {"type": "string"}, "n": {"type": "integer", "maximum": 4}}
        }))
        .unwrap();
        assert!(schema.check(&json!({"prompt": "hi", "n": 2})).is_empty());
        let violations = schema.check(&json!({"n": 9}));
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations
            .iter()
            .any(|v| v.path.is_empty() && v.message.contains("prompt")));
        assert!(violations
            .iter()
            .any(|v| v.path == "/n" && v.message.contains('4')));
        assert!(describe(&violations).contains("/n: "));
    }

    #[test]
    fn a_broken_schema_is_refused() {
        assert!(InputSchema::new(&json!({"type": "no-such-type"})).is_err());
    }
}
