//! The crate graph is the architecture: the arrows `docs/architecture.md` draws are exactly
//! the workspace's dependencies between its own crates (read from the `Cargo.toml`s by
//! `cargo metadata`), and the server pulls in none of the tools' heavy dependencies.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(ROOT)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON")
}

/// The arrows of the `crates` block in docs/architecture.md: crate → the crates it uses.
fn drawn() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(format!("{ROOT}/docs/architecture.md")).unwrap();
    let block = doc
        .split("```crates\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```crates block in docs/architecture.md");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (from, to) = l.split_once("->").expect("crate -> crates");
            let to = to
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect();
            (from.trim().to_string(), to)
        })
        .collect()
}

/// The workspace's packages by name, each with its normal (not dev, not build)
/// dependencies among the workspace's own crates.
fn declared(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let packages: Vec<&Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(p["id"].as_str().unwrap()))
        .collect();
    let names: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap())
                .filter(|n| names.contains(n))
                .map(str::to_string)
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn the_crate_graph_is_the_one_the_architecture_doc_draws() {
    let meta = metadata();
    let declared = declared(&meta);
    let drawn = drawn();
    assert_eq!(
        drawn.keys().collect::<Vec<_>>(),
        declared.keys().collect::<Vec<_>>(),
        "the crates drawn differ from the workspace's"
    );
    for (krate, deps) in &declared {
        assert_eq!(
            &drawn[krate], deps,
            "{krate}: the arrows drawn differ from its Cargo.toml"
        );
    }
}

/// Every package `from` reaches through normal dependencies (as built for this host).
fn normal_closure(meta: &Value, from: &str) -> BTreeSet<String> {
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let by_id: BTreeMap<&str, &Value> = nodes
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let start = name_of
        .iter()
        .find(|(_, n)| **n == from)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no package {from}"));
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        for dep in by_id[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                queue.push_back(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen.iter().map(|id| name_of[id].to_string()).collect()
}

#[test]
fn the_server_does_not_build_the_tools_dependencies() {
    let meta = metadata();
    let server = normal_closure(&meta, "nexus-server");
    for tool in [
        "plotters",
        "tokio-tungstenite",
        "tungstenite",
        "fantoccini",
        "nexus-client",
        "nexus-admin",
        "nexus-bench",
        "nexus-chaos",
    ] {
        assert!(!server.contains(tool), "nexus-server depends on {tool}");
    }
    // And the pure core: no Raft, no RocksDB, no runtime.
    let core = normal_closure(&meta, "nexus-core");
    for io in ["raft", "rocksdb", "tokio", "actix", "chitchat"] {
        assert!(!core.contains(io), "nexus-core depends on {io}");
    }
}
