//! A small validator of JSON values against the schema objects of the hub's generated
//! OpenAPI 3.1 document: `$ref` to `#/components/schemas`, `type` (one or a list),
//! `enum`, `properties`/`required`/`additionalProperties`, `items`, `oneOf`/`anyOf`/`allOf`,
//! `minimum`/`maximum`. That is every construct utoipa emits for the hub's types.
//!
//! Strict on purpose: an object with `properties` must not carry keys the document does not
//! list (unless it allows additional properties), so an answer cannot grow a field the
//! document does not describe.

use serde_json::Value;

/// Errors (`path: what`) of `value` against `schema`, resolved in `doc`. Empty when valid.
pub fn validate(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(doc, schema, value, "$", &mut errors, 0);
    errors
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    doc.pointer(pointer)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    let actual = kind(value);
    expected == actual || (expected == "number" && actual == "integer")
}

fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>, depth: usize) {
    if depth > 64 {
        errors.push(format!("{at}: schema nesting too deep (a $ref cycle?)"));
        return;
    }
    let Some(schema) = schema.as_object() else {
        // `true`/`{}`: anything goes.
        return;
    };
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        match resolve(doc, reference) {
            Some(target) => check(doc, target, value, at, errors, depth + 1),
            None => errors.push(format!("{at}: unresolvable $ref {reference}")),
        }
        return;
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            check(doc, part, value, at, errors, depth + 1);
        }
    }
    for (keyword, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        if let Some(options) = schema.get(keyword).and_then(Value::as_array) {
            let passing = options.iter().filter(|option| validate_at(doc, option, value, at, depth).is_empty()).count();
            let ok = if exactly_one { passing == 1 } else { passing >= 1 };
            if !ok {
                let detail: Vec<String> =
                    options.iter().flat_map(|option| validate_at(doc, option, value, at, depth)).collect();
                errors.push(format!("{at}: matches {passing} of the {keyword} options ({})", detail.join("; ")));
            }
        }
    }
    if let Some(expected) = schema.get("type") {
        let allowed: Vec<&str> = match expected {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        // OpenAPI 3.0 style nullability, in case a schema uses it.
        let nullable = schema.get("nullable").and_then(Value::as_bool).unwrap_or(false);
        let fits =
            allowed.is_empty() || allowed.iter().any(|t| type_matches(t, value)) || (nullable && value.is_null());
        if !fits {
            errors.push(format!("{at}: is {} but the document says {}", kind(value), allowed.join(" | ")));
            return;
        }
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
        if !choices.contains(value) {
            errors.push(format!("{at}: {value} is not one of {}", Value::Array(choices.clone())));
        }
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if number < min {
                errors.push(format!("{at}: {number} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if number > max {
                errors.push(format!("{at}: {number} is above the maximum {max}"));
            }
        }
    }
    if let Value::Object(fields) = value {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    errors.push(format!("{at}: required field `{name}` is missing"));
                }
            }
        }
        let additional = schema.get("additionalProperties");
        for (name, field) in fields {
            let field_at = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => check(doc, field_schema, field, &field_at, errors, depth + 1),
                None => match additional {
                    Some(Value::Bool(false)) => errors.push(format!("{field_at}: not allowed by the document")),
                    Some(Value::Object(extra)) => {
                        check(doc, &Value::Object(extra.clone()), field, &field_at, errors, depth + 1)
                    }
                    Some(_) => {}
                    None if properties.is_some() => {
                        errors.push(format!("{field_at}: the answer has a field the document does not list"))
                    }
                    None => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"), errors, depth + 1);
        }
    }
}

fn validate_at(doc: &Value, schema: &Value, value: &Value, at: &str, depth: usize) -> Vec<String> {
    let mut errors = Vec::new();
    check(doc, schema, value, at, &mut errors, depth + 1);
    errors
}

/// The documented schema of the answer to `method path_template` with `status`, as JSON.
pub fn response_schema<'a>(doc: &'a Value, method: &str, template: &str, status: u16) -> Option<&'a Value> {
    let operation = doc.get("paths")?.get(template)?.get(method)?;
    let response = operation.get("responses")?.get(status.to_string())?;
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(reference) => resolve(doc, reference)?,
        None => response,
    };
    response.get("content")?.get("application/json")?.get("schema")
}

/// The path template of the document that `path` (without query) matches, e.g.
/// `/v1/jobs/job_1` → `/v1/jobs/{id}`. Literal templates win over parameterised ones.
pub fn match_template(doc: &Value, path: &str) -> Option<String> {
    let templates = doc.get("paths")?.as_object()?;
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, String)> = None;
    for template in templates.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let fits = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') && part.ends_with('}') {
                !segment.is_empty()
            } else {
                literal += 1;
                part == segment
            }
        });
        if fits && best.as_ref().is_none_or(|(score, _)| literal > *score) {
            best = Some((literal, template.clone()));
        }
    }
    best.map(|(_, template)| template)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validator_catches_what_it_should() {
        let doc = json!({"components":{"schemas":{"Thing":{"type":"object","required":["a"],
            "properties":{"a":{"type":"integer","minimum":0},"b":{"type":["string","null"]},
                          "c":{"oneOf":[{"type":"null"},{"$ref":"#/components/schemas/Inner"}]}}},
            "Inner":{"type":"object","properties":{"x":{"type":"string","enum":["p","q"]}}}}}});
        let thing = json!({"$ref":"#/components/schemas/Thing"});
        assert!(validate(&doc, &thing, &json!({"a":1,"b":null,"c":{"x":"p"}})).is_empty());
        assert!(!validate(&doc, &thing, &json!({"b":"x"})).is_empty(), "missing required");
        assert!(!validate(&doc, &thing, &json!({"a":-1})).is_empty(), "minimum");
        assert!(!validate(&doc, &thing, &json!({"a":1,"b":3})).is_empty(), "type");
        assert!(!validate(&doc, &thing, &json!({"a":1,"c":{"x":"z"}})).is_empty(), "enum inside oneOf");
        assert!(!validate(&doc, &thing, &json!({"a":1,"extra":true})).is_empty(), "undocumented field");
        let paths = json!({"paths":{"/v1/jobs/{id}":{},"/v1/jobs/{id}/attempts":{},"/v1/jobs":{}}});
        assert_eq!(match_template(&paths, "/v1/jobs/job_1").as_deref(), Some("/v1/jobs/{id}"));
        assert_eq!(match_template(&paths, "/v1/jobs/job_1/attempts").as_deref(), Some("/v1/jobs/{id}/attempts"));
        assert_eq!(match_template(&paths, "/v1/nothing"), None);
    }
}
