//! The published API description against what a node answers: `GET /openrpc.json` names
//! every method the node answers and nothing else, and docs/api.md names the same methods
//! and the same error codes.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

fn openrpc(node: &TestNode) -> Value {
    let (status, headers, body) =
        http_request_to(node.http_addr(), "GET", "/openrpc.json", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(header(&headers, "content-type").is_some_and(|t| t.contains("application/json")));
    serde_json::from_slice(&body).expect("openrpc.json is JSON")
}

fn names(doc: &Value) -> BTreeSet<String> {
    doc["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .map(|m| m["name"].as_str().expect("a name").to_string())
        .collect()
}

/// The methods docs/api.md's method tables name: the first cell of each row.
fn documented() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let cell = regex::Regex::new(r"`([a-z]+\.[A-Za-z.]+)`").unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or_default();
        for c in cell.captures_iter(first) {
            out.insert(c[1].to_string());
        }
    }
    out
}

#[test]
fn every_method_in_openrpc_is_answered_and_nothing_else_is() {
    let node = TestNode::start();
    let doc = openrpc(&node);
    assert_eq!(doc["openrpc"], json!("1.2.6"));
    assert_eq!(doc["info"]["version"], json!("1.9.0"));
    let listed = names(&doc);
    assert!(listed.len() >= 50, "{} methods", listed.len());
    let mut root = node.root();
    for method in &listed {
        if let Err(e) = root.call(method, json!({})) {
            assert_ne!(
                e.code, -32601,
                "{method} is in openrpc.json but not answered"
            );
        }
        if method == "sys.login" {
            // An empty login failed; the session is nobody now: log in again.
            root = node.root();
        }
    }
    // Names near real ones, other spellings, and the plugin task names: not methods.
    for name in [
        "sys.Ping",
        "SYS.PING",
        "sys.node",
        "sys.session",
        "sys.backup",
        "sys.login.basic.login",
        "topic.publish",
        "topic.subscribe",
        "pipe.delete",
        "user.get",
        "user.setdisabled",
        "task.listen",
        "sync.trylock",
        "session.list",
        "ping",
    ] {
        assert!(!listed.contains(name), "{name}");
        expect_code(root.call(name, json!({})), -32601);
    }
}

#[test]
fn each_method_in_openrpc_describes_its_params_answer_and_errors() {
    let node = TestNode::start();
    let doc = openrpc(&node);
    let known: BTreeSet<i64> = doc["components"]["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["code"].as_i64().unwrap())
        .collect();
    for m in doc["methods"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        assert!(
            m["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}"
        );
        assert!(m["result"]["description"].is_string(), "{name}");
        for p in m["params"].as_array().unwrap() {
            assert!(
                p["name"].is_string() && p["required"].is_boolean(),
                "{name}: {p}"
            );
        }
        for e in m["errors"].as_array().unwrap() {
            let code = e["code"].as_i64().unwrap();
            assert!(
                known.contains(&code),
                "{name}: error {code} not in components"
            );
        }
    }
    // A required parameter left out is refused by name, as the document says it is
    // required (methods whose refusal comes first, login and reload, aside).
    let mut root = node.root();
    for m in doc["methods"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let required: Vec<&str> = m["params"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["required"] == json!(true))
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        if required.is_empty() || name == "sys.login" {
            continue;
        }
        let e = expect_code(root.call(name, json!({})), -32602);
        assert!(
            required.iter().any(|r| e.message.contains(r)),
            "{name}: {} names none of {required:?}",
            e.message
        );
    }
}

#[test]
fn docs_api_md_names_the_same_methods_and_error_codes() {
    let node = TestNode::start();
    let doc = openrpc(&node);
    let listed = names(&doc);
    let in_docs = documented();
    let missing: Vec<_> = listed.difference(&in_docs).collect();
    let extra: Vec<_> = in_docs.difference(&listed).collect();
    assert!(missing.is_empty(), "not in docs/api.md: {missing:?}");
    assert!(extra.is_empty(), "in docs/api.md only: {extra:?}");

    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    for e in doc["components"]["errors"].as_object().unwrap().values() {
        let row = format!("| {} | {} |", e["code"], e["message"].as_str().unwrap());
        assert!(text.contains(&row), "docs/api.md has no error row {row}");
    }
}
