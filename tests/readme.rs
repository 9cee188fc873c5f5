//! The README as a newcomer meets it: every doc it should index is linked, every flag it
//! names exists, and the commands its quick starts mark `# check` work against real nodes
//! (ports rewritten to the test's own; `nexus` is this build's binary on the PATH).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::{three_joined_each, wait_voters, Proc};
use common::free_port;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The lines marked `# check` in the section under `heading`.
fn checks(heading: &str) -> Vec<String> {
    let text = readme();
    let start = text
        .find(&format!("## {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading}"));
    let rest = &text[start + heading.len() + 4..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let lines: Vec<String> = section
        .lines()
        .filter(|l| l.contains("# check"))
        .map(|l| l.to_string())
        .collect();
    assert!(!lines.is_empty(), "no checks under {heading}");
    lines
}

/// Runs `line` with bash, `nexus` on the PATH and `ports` rewritten, until `good` holds of
/// its output (a cluster just formed may still be electing): the output.
fn run_until(
    line: &str,
    ports: &[(&str, String)],
    url: &str,
    good: impl Fn(&str) -> bool,
) -> String {
    let mut last = String::new();
    let ok = common::eventually(Duration::from_secs(30), || {
        last = run(line, ports, url);
        good(&last)
    });
    assert!(ok, "`{line}` said: {last}");
    last
}

/// Runs `line` once: its output and, on failure, its error output.
fn run(line: &str, ports: &[(&str, String)], url: &str) -> String {
    let mut line = line.to_string();
    for (from, to) in ports {
        line = line.replace(from, to);
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_nexus")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &line])
        .env("PATH", path)
        .env("NEXUS_URL", url)
        .env_remove("NEXUS_CONFIG")
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        said
    } else {
        format!("failed: {said}{}", String::from_utf8_lossy(&out.stderr))
    }
}

#[test]
fn the_one_node_quick_start_checks_pass() {
    let root = tempfile::tempdir().unwrap();
    let http = free_port();
    let listen = format!("http://127.0.0.1:{http}");
    let node = Proc::start(root.path(), free_port(), &[], &["-l", &listen]);
    node.wait_ready(Duration::from_secs(60));
    let ports = [
        ("127.0.0.1:8080", format!("127.0.0.1:{http}")),
        ("127.0.0.1:1717", format!("127.0.0.1:{}", node.tcp)),
    ];
    let url = format!("ws://127.0.0.1:{http}/");
    for line in checks("Quick start: one node") {
        if line.contains(" health") {
            run_until(&line, &ports, &url, |s| {
                s.contains("healthy: 1 of 1 members ready")
            });
        } else {
            run_until(&line, &ports, &url, |s| {
                s.contains(r#""result":{"ok":true}"#)
            });
        }
    }
}

#[test]
fn the_three_node_quick_start_checks_pass() {
    let root = tempfile::tempdir().unwrap();
    let nodes = three_joined_each(root.path(), |_| vec![]);
    wait_voters(&nodes[0], 3);
    let ports = [
        ("127.0.0.1:8180", format!("127.0.0.1:{}", nodes[0].health)),
        ("127.0.0.1:1717", format!("127.0.0.1:{}", nodes[0].tcp)),
        ("127.0.0.1:1718", format!("127.0.0.1:{}", nodes[1].tcp)),
    ];
    let url = format!("tcp://127.0.0.1:{}", nodes[0].tcp);
    for line in checks("Quick start: three nodes") {
        if line.contains(" health") {
            run_until(&line, &ports, &url, |s| {
                s.contains("healthy: 3 of 3 members ready")
            });
        } else {
            run_until(&line, &ports, &url, |s| s.trim() == "ok");
        }
    }
}

#[test]
fn the_docs_index_links_every_doc() {
    let text = readme();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            let link = format!("](docs/{name})");
            assert!(text.contains(&link), "README links no {link}");
        }
    }
    for top in ["LICENSE", "CHANGELOG.md"] {
        assert!(text.contains(&format!("]({top})")), "README links no {top}");
    }
}

#[test]
fn every_flag_the_readme_names_exists() {
    let help = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let known = [help(&["--help"]), help(&["serve", "--help"])].concat();
    let flag = regex::Regex::new(r"(?:^|[\s`(])(--[a-z][a-z-]+)").unwrap();
    let named: BTreeSet<String> = flag
        .captures_iter(&readme())
        .map(|c| c[1].to_string())
        // Other programs' flags in the README's commands.
        .filter(|f| {
            !["--build", "--user", "--stdin"].contains(&f.as_str()) || known.contains(f.as_str())
        })
        .collect();
    assert!(named.len() >= 3, "{named:?}");
    for f in named {
        assert!(
            known.contains(&f),
            "the README names {f}, which nexus does not have"
        );
    }
}
