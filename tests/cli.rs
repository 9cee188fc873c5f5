//! The admin CLI (`nexus [--url ...] GROUP COMMAND`): every subcommand run as the real
//! binary against a real node, its output and exit code checked, and its effect checked
//! through a separate client.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use nexus_server::config::Scheme;
use serde_json::{json, Value};

fn ws_url(node: &TestNode) -> String {
    format!("ws://{}/", node.http_addr())
}

/// `NEXUS_PASSWORD=root nexus --url <ws> --user root --json ARGS...`
fn nexus(node: &TestNode, args: &[&str]) -> Output {
    nexus_with(node, args, &[])
}

/// `nexus` with more environment.
fn nexus_with(node: &TestNode, args: &[&str], env: &[(&str, &str)]) -> Output {
    let url = ws_url(node);
    let mut all = vec!["--url", &url, "--user", "root", "--json"];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(("NEXUS_PASSWORD", ROOT_PASS));
    run(&all, &env)
}

/// What `nexus ARGS...` prints for people (no `--json`), as root.
fn human(node: &TestNode, args: &[&str]) -> String {
    let url = ws_url(node);
    let mut all = vec!["--url", &url, "--user", "root"];
    all.extend_from_slice(args);
    let out = run(&all, &[("NEXUS_PASSWORD", ROOT_PASS)]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_fed(args, env, "")
}

/// `run` with `input` on standard input.
fn run_fed(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nexus"));
    // No config file or settings of whoever runs the tests.
    cmd.args(args).env("HOME", "/nonexistent");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NEXUS_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut fed = child.stdin.take().unwrap();
    let _ = fed.write_all(input.as_bytes());
    drop(fed);
    child.wait_with_output().unwrap()
}

/// The JSON answer of a command that must succeed.
fn ok(out: Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}, stdout: {stdout}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The one-line error of a command that must fail with `code`.
fn fails(out: Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("nexus: "), "{err}");
    err
}

fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn user_commands_change_users_as_a_client_sees() {
    let node = TestNode::start();
    assert_eq!(
        ok(nexus_with(
            &node,
            &["user", "create", "cli.alice"],
            &[("NEXUS_NEW_PASSWORD", "first-pw")]
        )),
        json!({"ok": true})
    );
    let list = ok(nexus(&node, &["user", "list", "cli"]));
    assert_eq!(names(&list, "user"), ["cli.alice"]);
    assert_eq!(
        ok(nexus(&node, &["user", "count", "cli"]))["count"],
        json!(1)
    );

    // From standard input, after the login password read from there too.
    let url = ws_url(&node);
    ok(run_fed(
        &[
            "--url",
            &url,
            "--user",
            "root",
            "--password-stdin",
            "--json",
            "user",
            "passwd",
            "cli.alice",
            "--stdin",
        ],
        &[],
        &format!("{ROOT_PASS}\nsecond-pw\n"),
    ));
    expect_code(node.tcp().login("cli.alice", "first-pw"), -32010);
    expect_ok(node.tcp().login("cli.alice", "second-pw"));

    ok(nexus(&node, &["user", "rename", "cli.alice", "cli.bob"]));
    expect_ok(node.tcp().login("cli.bob", "second-pw"));

    let tags = r#"{"@task.pull": true, "n": 2}"#;
    ok(nexus(&node, &["user", "set-tags", "cli.bob", "work", tags]));
    let got = ok(nexus(&node, &["user", "tags", "cli.bob"]));
    assert_eq!(got["tags"]["work"], json!({"@task.pull": true, "n": 2}));
    ok(nexus(&node, &["user", "del-tags", "cli.bob", "work", "n"]));
    let got = ok(nexus(
        &node,
        &["user", "effective-tags", "cli.bob", "work.x"],
    ));
    assert_eq!(got["tags"], json!({"@task.pull": true}), "{got}");

    ok(nexus_with(
        &node,
        &["user", "create", "cli.tpl"],
        &[("NEXUS_NEW_PASSWORD", "tpl-pw")],
    ));
    ok(nexus(
        &node,
        &["user", "set-tags", "cli.tpl", "shared", r#"{"t": 1}"#],
    ));
    ok(nexus(
        &node,
        &["user", "add-template", "cli.bob", "cli.tpl"],
    ));
    let got = ok(nexus(
        &node,
        &["user", "effective-tags", "cli.bob", "shared"],
    ));
    assert_eq!(got["tags"]["t"], json!(1), "{got}");
    ok(nexus(
        &node,
        &["user", "del-template", "cli.bob", "cli.tpl"],
    ));
    let got = ok(nexus(
        &node,
        &["user", "effective-tags", "cli.bob", "shared"],
    ));
    assert_eq!(got["tags"].get("t"), None, "{got}");

    // Address lists: a blacklist matching everything refuses the login, a whitelist
    // matching loopback lets it through again (it wins), and without both it is allowed.
    let bob = |list: &str, pattern: &str| ok(nexus(&node, &["user", list, "cli.bob", pattern]));
    bob("add-blacklist", ".*");
    expect_code(node.tcp().login("cli.bob", "second-pw"), -32010);
    bob("add-whitelist", r"^127\.0\.0\.1:");
    expect_ok(node.tcp().login("cli.bob", "second-pw"));
    bob("del-whitelist", r"^127\.0\.0\.1:");
    expect_code(node.tcp().login("cli.bob", "second-pw"), -32010);
    bob("del-blacklist", ".*");
    expect_ok(node.tcp().login("cli.bob", "second-pw"));

    ok(nexus(&node, &["user", "max-sessions", "cli.bob", "1"]));
    let mut first = node.tcp();
    expect_ok(first.login("cli.bob", "second-pw"));
    expect_code(node.tcp().login("cli.bob", "second-pw"), -32010);
    drop(first);
    ok(nexus(&node, &["user", "max-sessions", "cli.bob", "0"]));

    ok(nexus(&node, &["user", "disable", "cli.bob"]));
    expect_code(node.tcp().login("cli.bob", "second-pw"), -32010);
    ok(nexus(&node, &["user", "enable", "cli.bob"]));
    expect_ok(node.tcp().login("cli.bob", "second-pw"));

    ok(nexus(&node, &["user", "delete", "cli.bob"]));
    let list = ok(nexus(&node, &["user", "list", "cli.bob"]));
    assert_eq!(list, json!([]));
    // The node's refusal, as one line and exit code 1.
    let err = fails(nexus(&node, &["user", "delete", "cli.bob"]), 1);
    assert!(err.contains("code -32004"), "{err}");
}

#[test]
fn session_commands_list_count_reload_and_kick() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "cli.ops", "ops-pw");
    let mut victim = node.tcp();
    let connid = connid(&mut victim, "cli.ops", "ops-pw");

    let list = ok(nexus(&node, &["session", "list", "cli"]));
    assert_eq!(names(&list, "user"), ["cli.ops"]);
    assert_eq!(
        names(&list[0]["sessions"], "connid"),
        std::slice::from_ref(&connid)
    );
    // For people: one row per session.
    let text = human(&node, &["session", "list", "cli"]);
    assert!(text.starts_with("user"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("cli.ops") && l.contains(&connid)),
        "{text}"
    );
    assert_eq!(
        ok(nexus(&node, &["session", "count", "cli"]))["count"],
        json!(1)
    );
    assert_eq!(
        ok(nexus(&node, &["session", "reload", &connid])),
        json!({"reloaded": 1})
    );
    assert_eq!(
        ok(nexus(&node, &["session", "kick", &connid])),
        json!({"kicked": 1})
    );
    assert!(victim.closed_within(Duration::from_secs(10)));
    // Too short a prefix: the node's -32602, one line.
    let err = fails(nexus(&node, &["session", "kick", "abc"]), 1);
    assert!(err.contains("-32602"), "{err}");
}

#[test]
fn task_lock_and_topic_listings() {
    let node = TestNode::start();
    let mut root = node.root();
    for i in 0..2 {
        expect_ok(root.call(
            "task.push",
            json!({"method": "cli.jobs.run", "params": i, "detach": true}),
        ));
    }
    expect_ok(root.call("sync.lock", json!({"lock": "cli.lock.one"})));
    let pipeid = expect_ok(root.call("pipe.create", json!({})))["pipeid"].clone();
    expect_ok(root.call("topic.sub", json!({"pipeid": pipeid, "topic": "cli.news"})));

    let tasks = ok(nexus(&node, &["task", "list", "cli"]));
    assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks}");
    assert_eq!(
        ok(nexus(&node, &["task", "count", "cli"]))["count"],
        json!(2)
    );
    let (mut waiter, waiter_id) = {
        let mut c = node.tcp();
        let id = connid(&mut c, "root", ROOT_PASS);
        (c, id)
    };
    let wait = waiter.send("sync.lock", json!({"lock": "cli.lock.one", "wait": 60000}));
    let mut locks = Value::Null;
    assert!(eventually(Duration::from_secs(10), || {
        locks = ok(nexus(&node, &["lock", "list", "cli"]));
        locks[0]["waiters"].is_array()
    }));
    assert_eq!(names(&locks, "id"), ["cli.lock.one"]);
    assert_eq!(
        names(&locks[0]["waiters"], "connid"),
        std::slice::from_ref(&waiter_id)
    );
    // For people: the holder, then each waiter in order, one row each.
    let text = human(&node, &["lock", "list", "cli"]);
    let rows: Vec<&str> = text.lines().collect();
    assert!(rows[0].starts_with("lock"), "{text}");
    assert!(
        rows[1].contains("holds") && rows[1].contains(locks[0]["owner"].as_str().unwrap()),
        "{text}"
    );
    assert!(
        rows[2].contains("waits 1") && rows[2].contains(&waiter_id),
        "{text}"
    );
    expect_ok(root.call("sync.unlock", json!({"lock": "cli.lock.one"})));
    expect_ok(answer_of(&waiter.wait(&wait)));
    assert_eq!(
        ok(nexus(&node, &["lock", "count", "cli"]))["count"],
        json!(1)
    );
    let topics = ok(nexus(&node, &["topic", "list", "cli"]));
    assert_eq!(names(&topics, "topic"), ["cli.news"]);
    assert_eq!(
        ok(nexus(&node, &["topic", "count", "cli"]))["count"],
        json!(1)
    );
    // --limit reaches the node.
    let one = ok(nexus(&node, &["task", "list", "cli", "--limit", "1"]));
    assert_eq!(one.as_array().unwrap().len(), 1);
}

#[test]
fn node_cluster_and_call_commands() {
    let node = TestNode::start();
    let nodes = ok(nexus(&node, &["node", "list"]));
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    let raft_id = nodes[0]["raftId"].as_u64().unwrap();
    let status = ok(nexus(&node, &["cluster", "status"]));
    assert_eq!(status["leader"], json!(raft_id));
    assert_eq!(status["members"], json!(1));
    assert_eq!(status["ready"], json!(1));
    // Removing a member that does not exist is the node's error.
    fails(nexus(&node, &["cluster", "remove", "12345"]), 1);

    assert_eq!(ok(nexus(&node, &["call", "sys.ping"])), json!({"ok": true}));
    let users = ok(nexus(
        &node,
        &["call", "user.list", r#"{"prefix": "root"}"#],
    ));
    assert_eq!(names(&users, "user"), ["root"]);
    let err = fails(nexus(&node, &["call", "user.list", "{not json"]), 2);
    assert!(err.contains("not JSON"), "{err}");
    let err = fails(nexus(&node, &["call", "no.such.thing"]), 1);
    assert!(err.contains("-32601"), "{err}");
}

#[test]
fn pub_and_sub_carry_messages() {
    let node = TestNode::start();
    let url = ws_url(&node);
    let sub = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["--url", &url, "--user", "root", "--json"])
        .args(["sub", "cli.feed.*", "--count", "2", "--seconds", "60"])
        .env("HOME", "/nonexistent")
        .env("NEXUS_PASSWORD", ROOT_PASS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut root = node.root();
    assert!(eventually(Duration::from_secs(20), || {
        let topics = expect_ok(root.call("topic.list", json!({"prefix": "cli"})));
        !topics.as_array().unwrap().is_empty()
    }));
    let sent = ok(nexus(&node, &["pub", "cli.feed.a", r#"{"n": 1}"#]));
    assert_eq!(sent["sent"], json!(1), "{sent}");
    ok(nexus(&node, &["pub", "cli.feed.b", "plain words"]));
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"topic": "cli.feed.a", "msg": {"n": 1}}),
            json!({"topic": "cli.feed.b", "msg": "plain words"}),
        ]
    );
}

#[test]
fn tls_listeners_are_reached_with_the_nodes_certificate_authority() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, _) = tls_files(dir.path());
    let node = tls_node(&cert_path, &key_path);
    let cert_path = cert_path.as_str();
    let wss = format!(
        "wss://localhost:{}/",
        node.server.addr(Scheme::Https).port()
    );
    let ssl = format!("ssl://localhost:{}", node.server.addr(Scheme::Ssl).port());
    let login = ["--user", "root", "--json"];
    let pass = ("NEXUS_PASSWORD", ROOT_PASS);
    for url in [&wss, &ssl] {
        let name = format!("via-{}", &url[..3]);
        let mut args = vec!["--url", url.as_str(), "--ca", cert_path];
        args.extend(login);
        args.extend(["user", "create", &name]);
        ok(run(&args, &[pass, ("NEXUS_NEW_PASSWORD", "a-long-secret")]));
        // The CA may come from the environment too.
        let mut args = vec!["--url", url.as_str()];
        args.extend(login);
        args.extend(["user", "list"]);
        let users = names(&ok(run(&args, &[pass, ("NEXUS_CA", cert_path)])), "user");
        assert!(users.contains(&name), "{users:?}");
        // Without it the node's self-signed certificate is not trusted: one line, exit 2.
        let err = fails(run(&args, &[pass]), 2);
        assert!(err.contains("certificate"), "{err}");
    }
    // Or from the config file.
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{wss}\"\nuser = \"root\"\npassword = \"{ROOT_PASS}\"\nca = \"{cert_path}\"\n"
        ),
    )
    .unwrap();
    let users = ok(run(
        &[
            "--config",
            config.to_str().unwrap(),
            "--json",
            "user",
            "list",
        ],
        &[],
    ));
    assert!(
        names(&users, "user").contains(&"via-wss".to_string()),
        "{users}"
    );
    // A certificate for another name is refused as well.
    let other = format!(
        "wss://127.0.0.1:{}/",
        node.server.addr(Scheme::Https).port()
    );
    let mut args = vec!["--url", other.as_str(), "--ca", cert_path];
    args.extend(login);
    args.extend(["user", "list"]);
    let err = fails(run(&args, &[]), 2);
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn connection_settings_come_from_flags_env_or_config_file() {
    let node = TestNode::start();
    let ws = ws_url(&node);
    // Environment variables, and a table for people.
    let env = [
        ("NEXUS_URL", ws.as_str()),
        ("NEXUS_USER", "root"),
        ("NEXUS_PASSWORD", ROOT_PASS),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["user", "list"])
        .envs(env)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("user"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("root ")), "{text}");

    // A config file, with the raw TCP transport.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let tcp = format!("tcp://{}", node.server.addr(Scheme::Tcp));
    std::fs::write(
        &config,
        format!("url = \"{tcp}\"\nuser = \"root\"\npassword = \"{ROOT_PASS}\"\n"),
    )
    .unwrap();
    let out = run(
        &[
            "--config",
            config.to_str().unwrap(),
            "--json",
            "call",
            "sys.ping",
        ],
        &[],
    );
    assert_eq!(ok(out), json!({"ok": true}));
    // The default file under $HOME is read too.
    std::fs::create_dir_all(dir.path().join(".config/nexus")).unwrap();
    std::fs::copy(&config, dir.path().join(".config/nexus/cli.toml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["--json", "node", "list"])
        .env("HOME", dir.path())
        .env_remove("NEXUS_URL")
        .env_remove("NEXUS_USER")
        .env_remove("NEXUS_PASSWORD")
        .env_remove("NEXUS_CONFIG")
        .env_remove("NEXUS_CA")
        .output()
        .unwrap();
    assert_eq!(ok(out).as_array().unwrap().len(), 1);
    // Flags win over the environment, which wins over the file: the file names a port
    // with nothing behind it, the environment the right node and password, standard
    // input (--password-stdin) a wrong password.
    let nowhere = format!("ws://127.0.0.1:{}/", free_port());
    std::fs::write(
        dir.path().join(".config/nexus/cli.toml"),
        format!("url = \"{nowhere}\"\nuser = \"root\"\npassword = \"{ROOT_PASS}\"\n"),
    )
    .unwrap();
    let layered = |extra: &[&str]| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(extra)
            .args(["--json", "call", "sys.ping"])
            .env("HOME", dir.path())
            .env("NEXUS_URL", &ws)
            .env("NEXUS_PASSWORD", ROOT_PASS)
            .env_remove("NEXUS_USER")
            .env_remove("NEXUS_CONFIG")
            .env_remove("NEXUS_CA")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"wrong\n");
        child.wait_with_output().unwrap()
    };
    assert_eq!(ok(layered(&[])), json!({"ok": true}));
    let err = fails(layered(&["--password-stdin"]), 1);
    assert!(err.contains("login as root"), "{err}");

    // Errors: a wrong password (the node refuses: 1), no node there (2), a bad file (2).
    let err = fails(
        run(
            &["--url", &ws, "--user", "root", "user", "list"],
            &[("NEXUS_PASSWORD", "wrong")],
        ),
        1,
    );
    assert!(err.contains("login as root"), "{err}");
    let closed = format!("ws://127.0.0.1:{}/", free_port());
    let err = fails(
        run(
            &["--url", &closed, "--timeout", "2", "call", "sys.ping"],
            &[],
        ),
        2,
    );
    assert!(err.contains("connecting to"), "{err}");
    std::fs::write(&config, "url = 3\n").unwrap();
    fails(
        run(
            &["--config", config.to_str().unwrap(), "call", "sys.ping"],
            &[],
        ),
        2,
    );
}

#[test]
fn bench_ends_with_a_table_and_draws_its_run() {
    let node = TestNode::start();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("tasks.svg");
    let out = run(
        &[
            "bench",
            "--url",
            &ws_url(&node),
            "--pass",
            ROOT_PASS,
            "--seconds",
            "2",
            "--svg",
            svg.to_str().unwrap(),
            "tasks",
            "--callers",
            "2",
            "--workers",
            "2",
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for row in ["task round trips", "round trips", "latency p99", "chart:"] {
        assert!(text.contains(row), "{row} missing in:\n{text}");
    }
    // Live progress, once a second.
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the last second"));
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("round trips/s"));
    assert!(drawn.contains("latency, ms"));
}

#[test]
fn the_client_docs_show_the_examples_that_make_test_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/clients.md")).unwrap();
    for example in [
        "bridge.sh",
        "websocket_plain.py",
        "pynexus2_worker.py",
        "node_client.mjs",
    ] {
        let code = std::fs::read_to_string(format!("{root}/docs/examples/{example}")).unwrap();
        assert!(
            doc.contains(&code),
            "docs/clients.md does not show {example} as it is"
        );
        let runner = std::fs::read_to_string(format!("{root}/scripts/interop.sh")).unwrap();
        assert!(
            runner.contains(&format!("docs/examples/{example}")),
            "{example} is not run"
        );
    }
}

#[test]
fn every_serve_flag_is_documented_in_operations() {
    let out = run(&["serve", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let flag = regex::Regex::new(r"^\s+(?:-\w, )?(--[a-z][a-z-]*)").unwrap();
    let mut seen = 0;
    for line in help.lines() {
        let Some(m) = flag.captures(line) else {
            continue;
        };
        let name = &m[1];
        if name == "--help" {
            continue;
        }
        let whole = regex::Regex::new(&format!(r"{}(?:[^a-z-]|$)", regex::escape(name))).unwrap();
        assert!(whole.is_match(&doc), "{name} is not in docs/operations.md");
        seen += 1;
    }
    assert!(seen >= 40, "only {seen} flags found in serve --help");
}

#[test]
fn passwords_are_never_taken_from_the_command_line() {
    let node = TestNode::start();
    let url = ws_url(&node);
    // `nexus --url <ws> --user root ARGS...` with `env`.
    let as_root = |args: &[&str], env: &[(&str, &str)]| {
        run(
            &[&["--url", url.as_str(), "--user", "root"], args].concat(),
            env,
        )
    };
    let env = [("NEXUS_PASSWORD", ROOT_PASS)];
    // The login password, and a new user's: refused before anything is sent.
    let err = fails(as_root(&["--password", "root", "user", "list"], &[]), 2);
    assert!(err.contains("not taken on the command line"), "{err}");
    let err = fails(
        as_root(&["user", "create", "argv.user", "pw-on-argv"], &env),
        2,
    );
    assert!(err.contains("not taken on the command line"), "{err}");
    let users = ok(nexus(&node, &["user", "list", "argv"]));
    assert_eq!(users, json!([]), "nothing was created");
    // No terminal and no other source: one line saying where a password may come from.
    let err = fails(as_root(&["user", "create", "argv.user"], &env), 2);
    assert!(err.contains("--stdin or NEXUS_NEW_PASSWORD"), "{err}");
    let err = fails(as_root(&["user", "list"], &[]), 2);
    assert!(err.contains("--password-stdin"), "{err}");
}

/// `nexus serve --config FILE`: a real node takes its listeners, data dir and root
/// password from the file; a variable beats the file and a flag beats both; the printed
/// settings read back as the same settings; an unknown key is refused, naming it and the
/// file.
#[test]
fn serve_reads_a_config_file_beneath_flags_and_variables() {
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_port();
    let file = dir.path().join("nexus.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &file,
        format!(
            "data-dir = {data:?}\nlisten = [\"tcp://127.0.0.1:{tcp}\"]\n\
             root-password = \"from-the-file-1\"\nwatchdog = 30\nmax-inflight = 7\n\
             log-retain = 11\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    // The printed settings: where each came from, the secret left out.
    let printed = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["serve", "--config", path, "--print-config"];
        args.extend_from_slice(extra);
        let out = run(&args, env);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = printed(&["--log-retain", "12"], &[("NEXUS_MAX_INFLIGHT", "8")]);
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} in {shown}"))
            .to_string()
    };
    assert!(line("watchdog").contains("= 30") && line("watchdog").ends_with("# config file"));
    assert!(
        line("max-inflight").contains("= 8") && line("max-inflight").ends_with("# environment")
    );
    assert!(line("log-retain").contains("= 12") && line("log-retain").ends_with("# flag"));
    assert!(line("raft-tick-ms").ends_with("= 50") || line("raft-tick-ms").contains("= 50 "));
    assert!(!shown.contains("from-the-file-1"), "{shown}");
    assert!(shown.contains("# root-password: set"), "{shown}");
    // Printed settings are a config file that gives the same settings.
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &shown).unwrap();
    let out = run(
        &[
            "serve",
            "--config",
            again.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    );
    let reprinted = String::from_utf8(out.stdout).unwrap();
    let values = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" # ").next().unwrap().trim().to_string())
            .collect()
    };
    assert_eq!(values(&reprinted), values(&shown));

    // A node started on the file serves where it says, with its root password; the
    // variable's watchdog beats the file's.
    let mut node = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--config", path])
        .env("NEXUS_WATCHDOG", "40")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{tcp}").parse().unwrap();
    let mut logged_in = None;
    assert!(eventually(Duration::from_secs(30), || {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return false;
        }
        let mut c = Client::tcp(addr);
        let ok = c.login("root", "from-the-file-1").is_ok();
        logged_in = Some(c);
        ok
    }));
    let mut c = logged_in.unwrap();
    assert_eq!(
        expect_ok(c.call("sys.watchdog", json!({})))["watchdog"],
        json!(40)
    );
    assert!(
        data.join("nexus.id").exists(),
        "the file's data dir is used"
    );
    let _ = node.kill();
    let _ = node.wait();

    // An unknown key: refused before anything starts, naming the key and the file.
    std::fs::write(&file, "data-dir = \"x\"\nwatch-dog = 30\n").unwrap();
    let out = run(&["serve", "--config", path], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key `watch-dog`") && err.contains(path),
        "{err}"
    );

    // The file the image and the systemd unit run with is one this build accepts.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nexus.toml");
    let out = run(&["serve", "--config", shipped, "--print-config"], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(shown.contains("log-format = \"json\""), "{shown}");
}

#[test]
fn completions_are_printed_for_each_shell_and_bash_loads_them() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["serve", "context", "health"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let bin = env!("CARGO_BIN_EXE_nexus");
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("source <('{bin}' completions bash) && complete -p nexus"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("-F _nexus nexus"));
    // An unknown shell is refused by name.
    assert_eq!(run(&["completions", "tcsh"], &[]).status.code(), Some(2));
}

#[test]
fn watch_prints_a_frame_per_refresh_and_sees_changes() {
    use std::io::BufRead;
    let node = TestNode::start();
    let url = ws_url(&node);
    // Bounded: 300 refreshes 0.1 s apart at most; killed once the change shows.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["--url", &url, "--user", "root", "--json"])
        .args(["--watch=0.1", "--watch-count", "300", "user", "count"])
        .env("HOME", "/nonexistent")
        .env("NEXUS_PASSWORD", ROOT_PASS)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let count = |line: String| -> i64 {
        serde_json::from_str::<Value>(&line).unwrap()["count"]
            .as_i64()
            .unwrap()
    };
    let first = count(lines.next().unwrap().unwrap());
    create_user(&mut node.root(), "watched.one", "watched-pass");
    let saw = lines.any(|line| count(line.unwrap()) == first + 1);
    let _ = child.kill();
    let _ = child.wait();
    assert!(saw, "no refresh showed the new user");

    // --watch-count refreshes, one JSON value each, then exit 0; `-w` alone (every 2 s)
    // before a command is not taken for its interval.
    let out = nexus(&node, &["--watch=0.1", "--watch-count", "3", "health"]);
    assert!(out.status.success(), "{out:?}");
    let frames = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(frames, 3, "{out:?}");
    let out = nexus(&node, &["--watch-count", "1", "-w", "cluster", "status"]);
    assert!(out.status.success(), "{out:?}");
    // A command that changes something is not repeated.
    let out = nexus(&node, &["-w", "user", "delete", "watched.one"]);
    let err = fails(out, 2);
    assert!(err.contains("--watch"), "{err}");
}

#[test]
fn health_is_zero_when_every_member_is_ready_and_one_when_one_is_not() {
    let node = TestNode::start();
    let out = nexus(&node, &["health"]);
    let said = ok(out);
    assert_eq!(said["healthy"], json!(true));
    assert_eq!(said["members"], json!(1));

    // Three nodes, one killed: the others answer, and say which member is not ready.
    let root = tempfile::tempdir().unwrap();
    let mut nodes = common::cluster::three_joined(root.path(), &[]);
    common::cluster::wait_voters(&nodes[0], 3);
    let url = format!("tcp://127.0.0.1:{}", nodes[0].tcp);
    let health = |url: &str| {
        run(
            &["--url", url, "--user", "root", "health"],
            &[("NEXUS_PASSWORD", ROOT_PASS)],
        )
    };
    assert!(eventually(Duration::from_secs(30), || health(&url)
        .status
        .success()));
    nodes[2].kill9();
    let mut last = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            let out = health(&url);
            let unhealthy = out.status.code() == Some(1);
            last = Some(out);
            unhealthy
        }),
        "{last:?}"
    );
    let err = String::from_utf8_lossy(&last.unwrap().stderr).to_string();
    assert!(
        err.starts_with("nexus: unhealthy: 2 of 3 members ready"),
        "{err}"
    );
}

#[test]
fn named_contexts_choose_where_commands_go() {
    let node = TestNode::start();
    let home = tempfile::tempdir().unwrap();
    let home_dir = home.path().to_str().unwrap();
    let env = [("HOME", home_dir), ("NEXUS_PASSWORD", ROOT_PASS)];
    let ws = ws_url(&node);
    let json = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        ok(run(&all, &env))
    };
    json(&["context", "add", "here", "--url", &ws, "--user", "root"]);
    json(&[
        "context",
        "add",
        "nowhere",
        "--url",
        "tcp://127.0.0.1:1",
        "--user",
        "root",
    ]);
    let file = home.path().join(".config/nexus/cli.toml");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the CLI config is its owner's only");

    // No current context: the default URL, where no node listens in this test... so
    // choose one: by name, then as the current one.
    assert_eq!(
        json(&["--context", "here", "health"])["healthy"],
        json!(true)
    );
    assert_eq!(
        run(&["--context", "nowhere", "health"], &env).status.code(),
        Some(2)
    );
    json(&["context", "use", "here"]);
    assert_eq!(json(&["health"])["healthy"], json!(true));
    let listed = json(&["context", "list"]);
    let current: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["current"] == json!(true))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(current, ["here"]);
    // A flag beats the context, and a context that is not there is an error.
    assert_eq!(
        run(&["--url", "tcp://127.0.0.1:1", "health"], &env)
            .status
            .code(),
        Some(2)
    );
    let err = fails(run(&["--context", "gone", "health"], &env), 2);
    assert!(err.contains("no context gone"), "{err}");
    json(&["context", "remove", "here"]);
    assert_eq!(json(&["context", "list"]).as_array().unwrap().len(), 1);

    // The file's top-level password belongs to its top-level URL: with a context in force
    // it is not sent (no terminal to ask on here, so the command says so instead).
    let config = home.path().join(".config/nexus/cli.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("password = \"{ROOT_PASS}\"\n{text}")).unwrap();
    json(&["context", "add", "other", "--url", &ws, "--user", "root"]);
    let out = run(&["--context", "other", "health"], &[("HOME", home_dir)]);
    let err = fails(out, 2);
    assert!(err.contains("no password given"), "{err}");
}

#[test]
fn several_urls_fail_over_to_the_first_that_answers() {
    let node = TestNode::start();
    let ws = ws_url(&node);
    // Two dead addresses first, as flags and as a comma-separated variable.
    let out = nexus_with(
        &node,
        &[
            "--url",
            "tcp://127.0.0.1:1",
            "--url",
            "tcp://127.0.0.1:2",
            "--url",
            &ws,
            "health",
        ],
        &[],
    );
    assert_eq!(ok(out)["healthy"], json!(true));
    let list = format!("tcp://127.0.0.1:1,{ws}");
    let out = run(
        &["--user", "root", "--json", "health"],
        &[("NEXUS_URL", list.as_str()), ("NEXUS_PASSWORD", ROOT_PASS)],
    );
    assert_eq!(ok(out)["healthy"], json!(true));
    // None answers: one line naming each.
    let err = fails(
        run(
            &["--url", "tcp://127.0.0.1:1,tcp://127.0.0.1:2", "health"],
            &[],
        ),
        2,
    );
    assert!(
        err.contains("no node answered") && err.contains(":2"),
        "{err}"
    );
    // A refused login is not tried elsewhere: it is the same everywhere.
    let err = fails(
        run(
            &["--url", &format!("{ws},{ws}"), "--user", "root", "health"],
            &[("NEXUS_PASSWORD", "wrong")],
        ),
        1,
    );
    assert!(err.contains("login as root"), "{err}");
}
