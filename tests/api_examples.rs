//! Every example of docs/api.md ("Examples") run against a fresh node over TCP: each
//! request is sent as written, each answer compared with the one the page shows. There is
//! one example per method the node answers, and none for a method it does not.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::*;
use serde_json::{Map, Value};

struct Example {
    method: String,
    lines: Vec<(String, bool, Value)>,
}

/// The `#### \`method\`` headings of the Examples section and their `jsonrpc` blocks.
fn examples() -> Vec<Example> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let start = text.find("\n## Examples\n").expect("an Examples section");
    let rest = &text[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map(|i| i + 3).unwrap_or(rest.len())];
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if let Some(name) = line
            .strip_prefix("#### `")
            .and_then(|l| l.strip_suffix('`'))
        {
            out.push(Example {
                method: name.to_string(),
                lines: Vec::new(),
            });
        } else if line == "```jsonrpc" {
            in_block = true;
        } else if line == "```" {
            in_block = false;
        } else if in_block {
            let (conn, rest) = line.split_at(1);
            let (dir, json) = rest.split_at(1);
            let value: Value = serde_json::from_str(json.trim())
                .unwrap_or_else(|e| panic!("{line}: not JSON: {e}"));
            out.last_mut()
                .expect("a block under a heading")
                .lines
                .push((conn.to_string(), dir == ">", value));
        }
    }
    out
}

/// Replaces each `"$name"` string by what it was bound to.
fn substitute(v: &Value, caps: &HashMap<String, Value>) -> Value {
    match v {
        Value::String(s) if s.starts_with('$') => caps
            .get(s)
            .cloned()
            .unwrap_or_else(|| panic!("{s} used before an answer bound it")),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, caps)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, caps)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// Whether `actual` is what `expected` shows: `"*"` matches anything, `"$name"` binds (or,
/// bound, must equal), objects have the same keys (`jsonrpc` aside), arrays the same length.
fn matches(
    expected: &Value,
    actual: &Value,
    caps: &mut HashMap<String, Value>,
    at: &str,
) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "*" => Ok(()),
        (Value::String(s), _) if s.starts_with('$') => match caps.get(s) {
            Some(bound) if bound != actual => Err(format!("{at}: {s} is {bound}, got {actual}")),
            Some(_) => Ok(()),
            None => {
                caps.insert(s.clone(), actual.clone());
                Ok(())
            }
        },
        (Value::Object(e), Value::Object(a)) => {
            let ek: BTreeSet<&String> = e.keys().collect();
            let ak: BTreeSet<&String> = a.keys().filter(|k| *k != "jsonrpc").collect();
            if ek != ak {
                return Err(format!("{at}: keys {ek:?}, got {ak:?}"));
            }
            for (k, x) in e {
                matches(x, &a[k], caps, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                matches(x, y, caps, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!("{at}: expected {expected}, got {actual}")),
    }
}

fn run(example: &Example) {
    let node = TestNode::start();
    let mut conns: BTreeMap<String, Client> = BTreeMap::new();
    // Answers read while waiting for another id, by connection.
    let mut early: HashMap<String, Vec<Value>> = HashMap::new();
    let mut caps = HashMap::new();
    for (conn, send, value) in &example.lines {
        let c = conns.entry(conn.clone()).or_insert_with(|| {
            let mut c = node.tcp();
            if value["method"] != "sys.login" {
                c.login("root", ROOT_PASS).expect("root login");
            }
            c
        });
        if *send {
            let mut bytes = serde_json::to_vec(&substitute(value, &caps)).unwrap();
            bytes.push(b'\n');
            c.send_raw(&bytes);
            continue;
        }
        let id = &value["id"];
        let kept = early.entry(conn.clone()).or_default();
        let answer = match kept.iter().position(|a| &a["id"] == id) {
            Some(i) => kept.remove(i),
            None => loop {
                let a = c.read_value().unwrap_or_else(|| {
                    panic!("{}: {conn} closed before answer {id}", example.method)
                });
                if &a["id"] == id {
                    break a;
                }
                kept.push(a);
            },
        };
        if let Err(e) = matches(value, &answer, &mut caps, &format!("{conn}<")) {
            panic!(
                "docs/api.md example of {}: {e}\n  shown: {value}\n  got:   {answer}",
                example.method
            );
        }
    }
}

#[test]
fn every_example_in_docs_api_md_answers_as_shown() {
    let all = examples();
    for e in &all {
        assert!(
            e.lines
                .iter()
                .any(|(_, send, v)| *send && v["method"] == e.method.as_str()),
            "the example of {} never calls it",
            e.method
        );
    }
    for example in &all {
        run(example);
    }
}

#[test]
fn there_is_one_example_per_method() {
    let shown: Vec<String> = examples().into_iter().map(|e| e.method).collect();
    let unique: BTreeSet<&String> = shown.iter().collect();
    assert_eq!(unique.len(), shown.len(), "a method shown twice");
    let table: BTreeSet<String> = nexus_server::api::methods::METHODS
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    let shown: BTreeSet<String> = shown.into_iter().collect();
    assert_eq!(
        table.difference(&shown).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "methods without an example"
    );
    assert_eq!(
        shown.difference(&table).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "examples of methods the node does not answer"
    );
}
