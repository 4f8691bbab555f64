//! Keeps `docs/flows.md` honest without a browser: every parameter a built-in flow receives
//! is listed there, with nothing listed that the flow does not declare, each with an example
//! of its documented type; and every example block marked `<!-- checked: … -->` parses as
//! what it claims to be. (`tests/adapters.rs` runs the example payloads and the override in
//! Chromium.)

use edge_browser::flow::{builtin, parse_adapter, parse_document, parse_flow, Flow, FlowDocument};
use edge_protocol::jobs::BrowserJobPayload;
use serde_json::Value;
use std::collections::BTreeSet;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/flows.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The fenced block right after `<!-- checked: NAME -->`.
fn block(doc: &str, name: &str) -> String {
    let marker = format!("<!-- checked: {name} -->");
    let start = doc.find(&marker).unwrap_or_else(|| panic!("docs/flows.md has no {marker}"));
    let mut lines = doc[start + marker.len()..].lines().skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(fence.starts_with("```"), "{marker} is not followed by a code block but by {fence:?}");
    lines.take_while(|l| !l.starts_with("```")).collect::<Vec<_>>().join("\n")
}

/// Rows (parameter, type, example) of the first table after the `####` heading naming `flow`.
fn params_table(doc: &str, flow: &str) -> Vec<(String, String, String)> {
    let heading = doc
        .lines()
        .position(|l| l.starts_with("#### ") && l.contains(&format!("`{flow}`")))
        .unwrap_or_else(|| panic!("docs/flows.md has no `#### ` heading naming `{flow}`"));
    let rows: Vec<Vec<String>> = doc
        .lines()
        .skip(heading + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect();
    assert!(rows.len() > 2, "the table under `{flow}` has no rows");
    assert_eq!(rows[0][..3], ["parameter", "type", "from"], "the table under `{flow}` changed shape");
    rows[2..]
        .iter()
        .map(|r| (r[0].trim_matches('`').to_owned(), r[1].clone(), r[3].trim_matches('`').to_owned()))
        .collect()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    }
}

#[test]
fn every_parameter_of_every_builtin_flow_is_documented_with_an_example_of_its_type() {
    let doc = doc();
    for flow in ["send_dm", "broadcast_dm", "schedule_post", "scrape_subs"] {
        let rows = params_table(&doc, flow);
        let documented: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
        let declared: BTreeSet<String> = builtin(flow).unwrap().params.into_keys().collect();
        assert_eq!(documented, declared, "docs/flows.md and crates/browser/flows disagree on what `{flow}` receives");
        for (name, kind, example) in &rows {
            let value: Value = serde_json::from_str(example)
                .unwrap_or_else(|e| panic!("`{flow}`: the example of `{name}` is not JSON ({e}): {example}"));
            assert_eq!(json_type(&value), kind, "`{flow}`: the example of `{name}` is not a {kind}: {example}");
        }
    }
}

#[test]
fn the_marked_examples_parse_as_what_they_claim_to_be() {
    let doc = doc();
    let markers: BTreeSet<&str> =
        doc.match_indices("<!-- checked: ").filter_map(|(i, m)| doc[i + m.len()..].split(" -->").next()).collect();
    let known = [
        "adapter",
        "flow",
        "flow document",
        "override schedule_post",
        "payload send_dm",
        "payload broadcast_dm",
        "payload schedule_post",
        "payload scrape_subs",
    ];
    assert_eq!(markers, known.into_iter().collect(), "a checked block this test does not know, or one gone missing");

    let adapter = parse_adapter(&block(&doc, "adapter")).unwrap();
    assert_eq!(adapter.selectors.get("timeZoneInput").map(String::as_str), Some("#post-zone"));
    parse_flow(&block(&doc, "flow")).unwrap();
    let document: FlowDocument = parse_document(&block(&doc, "flow document"), "the flow document").unwrap();
    assert!(document.params.contains_key("count"));

    // The override is an adapter fragment; its flow parses, validates and names only
    // parameters the section on `schedule_post` lists.
    let fragment: Value = serde_yaml::from_str(&block(&doc, "override schedule_post")).unwrap();
    let flow: Flow = serde_json::from_value(fragment["flows"]["schedule_post"].clone()).unwrap();
    flow.validate().unwrap();
    let listed: BTreeSet<String> = params_table(&doc, "schedule_post").into_iter().map(|r| r.0).collect();
    for name in flow.params.keys() {
        assert!(listed.contains(name), "the override declares `{name}`, which the doc does not list");
    }

    for job in ["send_dm", "broadcast_dm", "schedule_post", "scrape_subs"] {
        let mut payload: Value = serde_json::from_str(&block(&doc, &format!("payload {job}"))).unwrap();
        payload["adapter"] = serde_json::json!({});
        let payload: BrowserJobPayload = serde_json::from_value(payload).unwrap();
        let flow = builtin(job).unwrap();
        for name in payload.params.keys() {
            assert!(
                flow.params.contains_key(name),
                "the {job} example passes `{name}`, which the flow does not declare"
            );
        }
    }
}
