//! The permission matrix: every method × {not logged in, user without tags, user tagged on
//! another prefix, user tagged on the method's path, `@admin`}, each cell checked against
//! docs/api.md (permissions and methods) over a real connection. A denied cell must answer
//! -32010 and change nothing; an allowed cell must not answer -32010.

mod common;

use common::{create_user, expect_ok, Client, TestNode};
use serde_json::{json, Value};

const PASS: &str = "pm-secret";
const TARGET: &str = "pm.target";
const TEMPLATE: &str = "pm.tpl";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Nobody,
    NoTags,
    OtherPrefix,
    OnPath,
    Admin,
}

const ROLES: [Role; 5] = [
    Role::Nobody,
    Role::NoTags,
    Role::OtherPrefix,
    Role::OnPath,
    Role::Admin,
];

/// Who may call a method.
#[derive(Clone, Copy)]
enum Rule {
    /// Needs `@method` (or `@admin`) at the path.
    Tagged,
    /// No permission check (ownership or knowledge of an id is the check).
    Free,
    /// Any logged-in session; not logged in answers -32600.
    LoggedIn,
}

/// A method, the path its permission is checked at, and how to build its params for
/// cell number `k` (fresh names per cell where the call changes state).
struct Case {
    method: &'static str,
    path: &'static str,
    rule: Rule,
    params: fn(&mut World, &mut Client, usize) -> Value,
}

/// Fixtures the cases refer to, made by root.
struct World {
    root: Client,
    /// Sessions of TARGET, for session.kick/reload.
    target_sessions: Vec<Client>,
    node_tcp: std::net::SocketAddr,
}

impl World {
    /// A new session of TARGET (the previous one may have been kicked).
    fn target_connid(&mut self) -> String {
        let mut c = Client::tcp(self.node_tcp);
        let r = expect_ok(c.login(TARGET, PASS));
        let connid = r["connid"].as_str().unwrap().to_string();
        self.target_sessions.push(c);
        connid
    }

    fn root_pipe(&mut self) -> Value {
        expect_ok(self.root.call("pipe.create", json!({})))["pipeid"].clone()
    }
}

fn own_pipe(caller: &mut Client) -> Value {
    expect_ok(caller.call("pipe.create", json!({})))["pipeid"].clone()
}

fn fresh_user(w: &mut World, prefix: &str, k: usize) -> String {
    let user = format!("{prefix}.u{k}");
    create_user(&mut w.root, &user, PASS);
    user
}

fn cases() -> Vec<Case> {
    use Rule::*;
    vec![
        Case {
            method: "sys.ping",
            path: "",
            rule: Free,
            params: |_, _, _| json!({}),
        },
        Case {
            method: "sys.version",
            path: "",
            rule: Free,
            params: |_, _, _| json!({}),
        },
        Case {
            method: "sys.watchdog",
            path: "",
            rule: Free,
            params: |_, _, _| json!({"watchdog": 60}),
        },
        Case {
            method: "sys.reload",
            path: "",
            rule: LoggedIn,
            params: |_, _, _| json!({}),
        },
        Case {
            method: "sys.node.list",
            path: "sys.node",
            rule: Tagged,
            params: |_, _, _| json!({}),
        },
        Case {
            method: "sys.node.remove",
            path: "sys.node",
            rule: Tagged,
            params: |_, _, _| json!({"raftId": 424242}),
        },
        Case {
            method: "sys.session.list",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"prefix": TARGET}),
        },
        Case {
            method: "sys.session.count",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"prefix": TARGET}),
        },
        Case {
            method: "sys.session.kick",
            path: TARGET,
            rule: Tagged,
            params: |w, _, _| json!({"connid": w.target_connid()}),
        },
        Case {
            method: "sys.session.reload",
            path: TARGET,
            rule: Tagged,
            params: |w, _, _| json!({"connid": w.target_connid()}),
        },
        Case {
            method: "pipe.create",
            path: "",
            rule: Free,
            params: |_, _, _| json!({}),
        },
        Case {
            method: "pipe.write",
            path: "",
            rule: Free,
            params: |w, _, _| json!({"pipeid": w.root_pipe(), "msg": 1}),
        },
        Case {
            method: "pipe.read",
            path: "",
            rule: Free,
            params: |_, c, _| json!({"pipeid": own_pipe(c), "timeout": 0.01}),
        },
        Case {
            method: "pipe.close",
            path: "",
            rule: Free,
            params: |_, c, _| json!({"pipeid": own_pipe(c)}),
        },
        Case {
            method: "topic.sub",
            path: "pm.topic",
            rule: Tagged,
            params: |_, c, _| json!({"pipeid": own_pipe(c), "topic": "pm.topic"}),
        },
        Case {
            method: "topic.unsub",
            path: "",
            rule: Free,
            params: |_, c, _| json!({"pipeid": own_pipe(c), "topic": "pm.topic"}),
        },
        Case {
            method: "topic.pub",
            path: "pm.topic",
            rule: Tagged,
            params: |_, _, _| json!({"topic": "pm.topic", "msg": 1}),
        },
        Case {
            method: "topic.list",
            path: "pm.topic",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm.topic"}),
        },
        Case {
            method: "topic.count",
            path: "pm.topic",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm.topic"}),
        },
        Case {
            method: "sync.lock",
            path: "pm.lock",
            rule: Tagged,
            params: |_, _, k| json!({"lock": format!("pm.lock.l{k}")}),
        },
        Case {
            method: "sync.unlock",
            path: "",
            rule: Free,
            params: |_, _, k| json!({"lock": format!("pm.lock.l{k}")}),
        },
        Case {
            method: "sync.list",
            path: "pm.lock",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm.lock"}),
        },
        Case {
            method: "sync.count",
            path: "pm.lock",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm.lock"}),
        },
        Case {
            method: "task.push",
            path: "pm.task",
            rule: Tagged,
            params: |_, _, _| json!({"method": "pm.task.run", "params": 1, "detach": true}),
        },
        Case {
            method: "task.pull",
            path: "pm.task",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm.task.none", "timeout": 0.01}),
        },
        Case {
            method: "task.result",
            path: "",
            rule: Free,
            params: |_, _, _| json!({"taskid": "0000000000000000000000000000000000ff", "result": 1}),
        },
        Case {
            method: "task.error",
            path: "",
            rule: Free,
            params: |_, _, _| json!({"taskid": "0000000000000000000000000000000000ff"}),
        },
        Case {
            method: "task.reject",
            path: "",
            rule: Free,
            params: |_, _, _| json!({"taskid": "0000000000000000000000000000000000ff"}),
        },
        Case {
            method: "task.cancel",
            path: "",
            rule: Free,
            params: |_, _, _| json!({"id": 999999}),
        },
        Case {
            method: "task.list",
            path: "pm.task",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm.task"}),
        },
        Case {
            method: "task.count",
            path: "pm.task",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm.task"}),
        },
        Case {
            method: "user.create",
            path: "pm.new",
            rule: Tagged,
            params: |_, _, k| json!({"user": format!("pm.new.u{k}"), "pass": PASS}),
        },
        Case {
            method: "user.delete",
            path: "pm.del",
            rule: Tagged,
            params: |w, _, k| json!({"user": fresh_user(w, "pm.del", k)}),
        },
        Case {
            method: "user.rename",
            path: "pm.ren",
            rule: Tagged,
            params: |w, _, k| json!({"user": fresh_user(w, "pm.ren", k), "new": format!("pm.ren.r{k}")}),
        },
        Case {
            method: "user.list",
            path: "pm",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm"}),
        },
        Case {
            method: "user.count",
            path: "pm",
            rule: Tagged,
            params: |_, _, _| json!({"prefix": "pm"}),
        },
        Case {
            method: "user.setTags",
            path: "pm.tagged",
            rule: Tagged,
            params: |_, _, k| json!({"user": TARGET, "prefix": "pm.tagged", "tags": {"k": k}}),
        },
        Case {
            method: "user.delTags",
            path: "pm.tagged",
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "prefix": "pm.tagged", "tags": ["k"]}),
        },
        Case {
            method: "user.getTags",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET}),
        },
        Case {
            method: "user.getEffectiveTags",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "prefix": "pm"}),
        },
        Case {
            method: "user.setPass",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "pass": PASS}),
        },
        Case {
            method: "user.addTemplate",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "template": TEMPLATE}),
        },
        Case {
            method: "user.delTemplate",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "template": TEMPLATE}),
        },
        Case {
            method: "user.addWhitelist",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "ip": "^10\\."}),
        },
        Case {
            method: "user.delWhitelist",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "ip": "^10\\."}),
        },
        Case {
            method: "user.addBlacklist",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "ip": "^10\\."}),
        },
        Case {
            method: "user.delBlacklist",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "ip": "^10\\."}),
        },
        Case {
            method: "user.setMaxSessions",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "maxsessions": 0}),
        },
        Case {
            method: "user.setDisabled",
            path: TARGET,
            rule: Tagged,
            params: |_, _, _| json!({"user": TARGET, "disabled": false}),
        },
    ]
}

/// The tags that make `role` what it is, for every case at once.
fn tags_for(role: Role, cases: &[Case]) -> Vec<(String, Value)> {
    let mut by_prefix: std::collections::BTreeMap<String, serde_json::Map<String, Value>> =
        Default::default();
    for case in cases.iter().filter(|c| matches!(c.rule, Rule::Tagged)) {
        let prefix = match role {
            Role::OtherPrefix => "elsewhere".to_string(),
            Role::OnPath => case.path.to_string(),
            _ => continue,
        };
        by_prefix
            .entry(prefix)
            .or_default()
            .insert(format!("@{}", case.method), json!(true));
    }
    if role == Role::OnPath {
        // addTemplate/delTemplate also need @user.useTemplate at the template.
        by_prefix
            .entry(TEMPLATE.to_string())
            .or_default()
            .insert("@user.useTemplate".into(), json!(true));
    }
    if role == Role::Admin {
        by_prefix
            .entry(".".to_string())
            .or_default()
            .insert("@admin".into(), json!(true));
    }
    by_prefix
        .into_iter()
        .map(|(p, t)| (p, Value::Object(t)))
        .collect()
}

fn user_of(role: Role) -> Option<&'static str> {
    match role {
        Role::Nobody => None,
        Role::NoTags => Some("pm.r.notags"),
        Role::OtherPrefix => Some("pm.r.other"),
        Role::OnPath => Some("pm.r.onpath"),
        Role::Admin => Some("pm.r.admin"),
    }
}

#[test]
fn every_method_by_every_kind_of_caller() {
    let node = TestNode::start();
    let cases = cases();
    let mut world = World {
        root: node.root(),
        target_sessions: Vec::new(),
        node_tcp: node.server.addr(nexus_server::config::Scheme::Tcp),
    };
    create_user(&mut world.root, TARGET, PASS);
    create_user(&mut world.root, TEMPLATE, PASS);
    for role in ROLES {
        let Some(user) = user_of(role) else { continue };
        create_user(&mut world.root, user, PASS);
        for (prefix, tags) in tags_for(role, &cases) {
            expect_ok(world.root.call(
                "user.setTags",
                json!({"user": user, "prefix": prefix, "tags": tags}),
            ));
        }
    }

    let mut failures = Vec::new();
    let mut cells = 0;
    let mut unauthorised_successes = 0;
    for (i, case) in cases.iter().enumerate() {
        for (r, role) in ROLES.iter().enumerate() {
            let k = i * ROLES.len() + r;
            let mut caller = node.tcp();
            if let Some(user) = user_of(*role) {
                expect_ok(caller.login(user, PASS));
            }
            let params = (case.params)(&mut world, &mut caller, k);
            let answer = caller.call(case.method, params.clone());
            cells += 1;
            let code = answer.as_ref().err().map(|e| e.code);
            let denied_expected = match case.rule {
                Rule::Free => false,
                Rule::LoggedIn => *role == Role::Nobody,
                Rule::Tagged => matches!(role, Role::Nobody | Role::NoTags | Role::OtherPrefix),
            };
            let expected_code = match case.rule {
                Rule::LoggedIn => -32600,
                _ => -32010,
            };
            let ok = if denied_expected {
                code == Some(expected_code)
            } else {
                code != Some(expected_code)
            };
            if denied_expected && answer.is_ok() {
                unauthorised_successes += 1;
            }
            if !ok {
                failures.push(format!(
                    "{} as {role:?} ({params}): expected {}, got {answer:?}",
                    case.method,
                    if denied_expected {
                        format!("{expected_code}")
                    } else {
                        "allowed".into()
                    }
                ));
            }
        }
    }
    assert_eq!(cells, cases.len() * ROLES.len());
    assert_eq!(
        unauthorised_successes, 0,
        "unauthorised successes: {failures:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Denied calls changed nothing: the users only the allowed callers created exist, and
    // the denied callers' cells left no lock behind.
    let users = expect_ok(
        world
            .root
            .call("user.list", json!({"prefix": "pm.new", "limit": 0})),
    );
    let created: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    let i = cases
        .iter()
        .position(|c| c.method == "user.create")
        .unwrap();
    let expected: Vec<String> = [Role::OnPath, Role::Admin]
        .iter()
        .map(|role| {
            format!(
                "pm.new.u{}",
                i * ROLES.len() + ROLES.iter().position(|r| r == role).unwrap()
            )
        })
        .collect();
    assert_eq!(created, expected);
}
