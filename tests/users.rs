//! sys.* and user.* over a real TCP connection to a real node.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nexus_core::rpc::*;
use serde_json::{json, Value};

#[test]
fn ping_version_watchdog() {
    let node = TestNode::start();
    let mut c = node.tcp();
    assert_eq!(
        expect_ok(c.call("sys.ping", Value::Null)),
        json!({"ok": true})
    );
    assert_eq!(
        expect_ok(c.call("sys.version", json!({}))),
        json!({"version": "1.9.0"})
    );
    assert_eq!(
        expect_ok(c.call("sys.watchdog", json!({}))),
        json!({"watchdog": 90})
    );
    assert_eq!(
        expect_ok(c.call("sys.watchdog", json!({"watchdog": 5}))),
        json!({"watchdog": 10})
    );
    assert_eq!(
        expect_ok(c.call("sys.watchdog", json!({"watchdog": 99999}))),
        json!({"watchdog": 1800})
    );
    assert_eq!(
        expect_ok(c.call("sys.watchdog", json!({"watchdog": 30}))),
        json!({"watchdog": 30})
    );
    assert_eq!(
        expect_ok(c.call("sys.watchdog", json!({}))),
        json!({"watchdog": 30})
    );
    expect_code(
        c.call("sys.watchdog", json!({"watchdog": "x"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(c.call("sys.nothing", json!({})), ERR_METHOD_NOT_FOUND);
}

#[test]
fn login_basic_rules() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "alice", "alicepw");

    let mut c = node.tcp();
    let r = expect_ok(c.login("root", "root"));
    assert_eq!(r["ok"], json!(true));
    assert_eq!(r["user"], json!("root"));
    assert_eq!(r["tags"], json!({".": {"@admin": true}}));
    assert_eq!(r["connid"].as_str().unwrap().len(), 16);
    assert!(r["connid"]
        .as_str()
        .unwrap()
        .chars()
        .all(|ch| ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase()));
    assert!(r.as_object().unwrap().contains_key("metadata"));

    expect_code(c.login("root", "wrong"), ERR_PERMISSION_DENIED);
    expect_code(c.login("nobody-here", "x"), ERR_PERMISSION_DENIED);
    expect_code(c.login(" root", "root"), ERR_PERMISSION_DENIED);
    expect_ok(c.login("ROOT", "root"));
    expect_code(
        c.call("sys.login", json!({"user": "root"})),
        ERR_INVALID_PARAMS,
    );

    // Re-login switches the user.
    assert_eq!(
        expect_ok(c.login("alice", "alicepw"))["user"],
        json!("alice")
    );
    expect_code(
        c.call("user.create", json!({"user": "bob", "pass": "bobpass"})),
        ERR_PERMISSION_DENIED,
    );

    // Impersonation: admin>other needs @admin at other.
    let r = expect_ok(c.login("root>alice", "root"));
    assert_eq!(r["user"], json!("alice"));
    expect_code(c.login("alice>root", "alicepw"), ERR_PERMISSION_DENIED);
    // The admin's own account must be usable: disabled, it cannot act for others.
    create_user(&mut root, "helper", "helperpw");
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "helper", "prefix": "alice", "tags": {"@admin": true}}),
    ));
    assert_eq!(
        expect_ok(c.login("helper>alice", "helperpw"))["user"],
        json!("alice")
    );
    expect_ok(root.call(
        "user.setDisabled",
        json!({"user": "helper", "disabled": true}),
    ));
    expect_code(c.login("helper>alice", "helperpw"), ERR_PERMISSION_DENIED);
    expect_code(c.login("root>alice", "wrong"), ERR_PERMISSION_DENIED);
}

#[test]
fn login_disabled_and_address_lists() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "carol", "carolpw");
    let mut c = node.tcp();

    expect_ok(root.call(
        "user.setDisabled",
        json!({"user": "carol", "disabled": true}),
    ));
    expect_code(c.login("carol", "carolpw"), ERR_PERMISSION_DENIED);
    expect_ok(root.call(
        "user.setDisabled",
        json!({"user": "carol", "disabled": false}),
    ));
    expect_ok(c.login("carol", "carolpw"));

    expect_ok(root.call(
        "user.addBlacklist",
        json!({"user": "carol", "ip": r"^127\."}),
    ));
    expect_code(c.login("carol", "carolpw"), ERR_PERMISSION_DENIED);
    expect_ok(root.call(
        "user.addWhitelist",
        json!({"user": "carol", "ip": r"^127\.0\.0\.1:\d+$"}),
    ));
    expect_ok(c.login("carol", "carolpw"));
    expect_ok(root.call(
        "user.delWhitelist",
        json!({"user": "carol", "ip": r"^127\.0\.0\.1:\d+$"}),
    ));
    expect_code(c.login("carol", "carolpw"), ERR_PERMISSION_DENIED);
    expect_ok(root.call(
        "user.delBlacklist",
        json!({"user": "carol", "ip": r"^127\."}),
    ));
    expect_ok(c.login("carol", "carolpw"));
    expect_code(
        root.call("user.addBlacklist", json!({"user": "carol", "ip": "("})),
        ERR_INVALID_PARAMS,
    );

    let listed = expect_ok(root.call("user.list", json!({"prefix": "carol"})));
    assert_eq!(listed[0]["whitelist"], json!([]));
    assert_eq!(listed[0]["blacklist"], json!([]));
    assert_eq!(listed[0]["disabled"], json!(false));
}

#[test]
fn maxsessions_counts_live_sessions() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "dave", "davepw");
    expect_ok(root.call(
        "user.setMaxSessions",
        json!({"user": "dave", "maxsessions": 1}),
    ));
    let mut first = node.tcp();
    expect_ok(first.login("dave", "davepw"));
    // Logging in again on the same connection does not count twice.
    expect_ok(first.login("dave", "davepw"));
    let mut second = node.tcp();
    expect_code(second.login("dave", "davepw"), ERR_PERMISSION_DENIED);
    drop(first);
    // The closed session disappears once its close is applied.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match second.login("dave", "davepw") {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code, ERR_PERMISSION_DENIED);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("session slot never freed: {e:?}"),
        }
    }
    expect_ok(root.call(
        "user.setMaxSessions",
        json!({"user": "dave", "maxsessions": 0}),
    ));
    let mut more: Vec<Client> = (0..3).map(|_| node.tcp()).collect();
    for c in &mut more {
        expect_ok(c.login("dave", "davepw"));
    }
}

#[test]
fn reload_applies_changed_tags() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "erin", "erinpw");
    let mut c = node.tcp();
    expect_code(c.call("sys.reload", json!({})), ERR_INVALID_REQUEST);
    expect_ok(c.login("erin", "erinpw"));
    expect_code(
        c.call("user.count", json!({"prefix": ""})),
        ERR_PERMISSION_DENIED,
    );
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "erin", "prefix": ".", "tags": {"@user.count": true}}),
    ));
    // Not in force until the session reloads.
    expect_code(
        c.call("user.count", json!({"prefix": ""})),
        ERR_PERMISSION_DENIED,
    );
    assert_eq!(
        expect_ok(c.call("sys.reload", json!({}))),
        json!({"ok": true})
    );
    assert_eq!(
        expect_ok(c.call("user.count", json!({"prefix": ""}))),
        json!({"count": 2})
    );
}

#[test]
fn create_validates_and_checks_permission() {
    let node = TestNode::start();
    let mut root = node.root();
    // The detail is the bare parameter name; the reason travels in `data`.
    let e = expect_code(
        root.call("user.create", json!({"user": "ab", "pass": "goodpass"})),
        ERR_INVALID_PARAMS,
    );
    assert_eq!(e.message, "Invalid params:[user]");
    expect_code(
        root.call("user.create", json!({"user": "a..b", "pass": "goodpass"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call(
            "user.create",
            json!({"user": "has space", "pass": "goodpass"}),
        ),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call(
            "user.create",
            json!({"user": "x".repeat(501), "pass": "goodpass"}),
        ),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call("user.create", json!({"user": "frank", "pass": "abc"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call("user.create", json!({"user": "Nobody", "pass": "abcd"})),
        ERR_INVALID_PARAMS,
    );
    let e = expect_code(
        root.call("user.create", json!({"pass": "abcd"})),
        ERR_INVALID_PARAMS,
    );
    assert_eq!(e.message, "Invalid params:[user]");
    expect_ok(root.call("user.create", json!({"user": "Frank", "pass": "abcd"})));
    expect_code(
        root.call("user.create", json!({"user": "frank", "pass": "abcd"})),
        ERR_USER_EXISTS,
    );
    let mut f = node.tcp();
    expect_ok(f.login("FRANK", "abcd"));

    // A user allowed to create users under `team` only.
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "frank", "prefix": "team", "tags": {"@user.create": true}}),
    ));
    expect_ok(f.call("sys.reload", json!({})));
    expect_ok(f.call(
        "user.create",
        json!({"user": "team.one", "pass": "onepass"}),
    ));
    expect_code(
        f.call(
            "user.create",
            json!({"user": "other.one", "pass": "onepass"}),
        ),
        ERR_PERMISSION_DENIED,
    );
    // Nobody (not logged in) may do nothing.
    let mut anon = node.tcp();
    expect_code(
        anon.call(
            "user.create",
            json!({"user": "team.two", "pass": "twopass"}),
        ),
        ERR_PERMISSION_DENIED,
    );
}

#[test]
fn delete_and_rename() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "gina", "ginapw");
    create_user(&mut root, "hank", "hankpw");
    expect_code(
        root.call("user.delete", json!({"user": "ghost"})),
        ERR_INVALID_USER,
    );
    expect_code(
        root.call("user.rename", json!({"user": "gina", "new": "hank"})),
        ERR_USER_EXISTS,
    );
    expect_code(
        root.call("user.rename", json!({"user": "ghost", "new": "ghost2"})),
        ERR_INVALID_USER,
    );
    expect_code(
        root.call("user.rename", json!({"user": "gina"})),
        ERR_INVALID_PARAMS,
    );
    expect_ok(root.call("user.rename", json!({"user": "gina", "new": "gina2"})));
    let mut c = node.tcp();
    expect_code(c.login("gina", "ginapw"), ERR_PERMISSION_DENIED);
    expect_ok(c.login("gina2", "ginapw"));
    expect_ok(root.call("user.delete", json!({"user": "hank"})));
    expect_code(c.login("hank", "hankpw"), ERR_PERMISSION_DENIED);
    assert_eq!(
        expect_ok(root.call("user.count", json!({"prefix": ""}))),
        json!({"count": 2})
    );

    // rename needs permission on both names.
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "gina2", "prefix": "a", "tags": {"@user.rename": true}}),
    ));
    create_user(&mut root, "a.one", "onepass");
    expect_ok(c.login("gina2", "ginapw"));
    expect_code(
        c.call("user.rename", json!({"user": "a.one", "new": "b.one"})),
        ERR_PERMISSION_DENIED,
    );
    expect_ok(c.call("user.rename", json!({"user": "a.one", "new": "a.two"})));
    expect_code(
        c.call("user.delete", json!({"user": "a.two"})),
        ERR_PERMISSION_DENIED,
    );
}

#[test]
fn list_and_count_parameters() {
    let node = TestNode::start();
    let mut root = node.root();
    for u in ["org.a", "org.b", "org.b.x", "org.c.y.z", "orgx"] {
        create_user(&mut root, u, "password");
    }
    let names = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u["user"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(expect_ok(root.call("user.list", json!({"prefix": "org"})))),
        ["org.a", "org.b", "org.b.x", "org.c.y.z"]
    );
    assert_eq!(
        names(expect_ok(
            root.call("user.list", json!({"prefix": "ORG.", "depth": 1}))
        )),
        ["org.a", "org.b"]
    );
    assert_eq!(
        names(expect_ok(root.call(
            "user.list",
            json!({"prefix": "", "filter": "^org\\.b"})
        ))),
        ["org.b", "org.b.x"]
    );
    assert_eq!(
        names(expect_ok(root.call(
            "user.list",
            json!({"prefix": "", "limit": 2, "skip": 1})
        ))),
        ["org.b", "org.b.x"]
    );
    assert_eq!(
        expect_ok(root.call("user.list", json!({"prefix": "", "limit": 0})))
            .as_array()
            .unwrap()
            .len(),
        6
    );
    expect_code(
        root.call("user.list", json!({"prefix": "", "filter": "(["})),
        ERR_INVALID_PARAMS,
    );
    expect_code(root.call("user.list", json!({})), ERR_INVALID_PARAMS);

    let one = &expect_ok(root.call("user.list", json!({"prefix": "org.a"})))[0];
    let mut keys: Vec<&str> = one
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "blacklist",
            "createdAt",
            "disabled",
            "maxsessions",
            "tags",
            "templates",
            "user",
            "whitelist"
        ]
    );
    assert_eq!(one["maxsessions"], json!(50));
    assert!(one["createdAt"].as_str().unwrap().ends_with('Z'));

    assert_eq!(
        expect_ok(root.call("user.count", json!({"prefix": "org"}))),
        json!({"count": 4})
    );
    assert_eq!(
        expect_ok(root.call("user.count", json!({"prefix": "org", "subprefixes": true}))),
        json!([{"prefix": "org.a", "count": 1}, {"prefix": "org.b", "count": 2}, {"prefix": "org.c", "count": 1}])
    );
    assert_eq!(
        expect_ok(root.call("user.count", json!({"prefix": "", "filter": "x$"}))),
        json!({"count": 2})
    );
}

#[test]
fn tags_templates_and_effective_tags() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "ivan", "ivanpw");
    create_user(&mut root, "tmpl", "tmplpw");
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "ivan", "prefix": "a", "tags": {"yes": true, "k": 1}}),
    ));
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "ivan", "prefix": "a", "tags": {"k": 2}}),
    ));
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "ivan", "prefix": ".", "tags": {"yes": false}}),
    ));
    assert_eq!(
        expect_ok(root.call("user.getTags", json!({"user": "ivan"}))),
        json!({"tags": {"a": {"yes": true, "k": 2}, ".": {"yes": false}}})
    );
    // The shorter prefix wins.
    assert_eq!(
        expect_ok(root.call(
            "user.getEffectiveTags",
            json!({"user": "ivan", "prefix": "a.x"})
        )),
        json!({"tags": {"yes": false, "k": 2}})
    );
    expect_code(
        root.call(
            "user.setTags",
            json!({"user": "ghost", "prefix": "a", "tags": {"x": 1}}),
        ),
        ERR_INVALID_USER,
    );
    expect_code(
        root.call(
            "user.setTags",
            json!({"user": "ivan", "prefix": "a", "tags": [1]}),
        ),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call("user.getTags", json!({"user": "ghost"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call(
            "user.getEffectiveTags",
            json!({"user": "ghost", "prefix": "a"}),
        ),
        ERR_INVALID_PARAMS,
    );

    // Templates: merged under the user's own tags.
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "tmpl", "prefix": "a", "tags": {"k": 99, "fromtmpl": true}}),
    ));
    expect_ok(root.call(
        "user.addTemplate",
        json!({"user": "ivan", "template": "tmpl"}),
    ));
    assert_eq!(
        expect_ok(root.call("user.list", json!({"prefix": "ivan"})))[0]["templates"],
        json!(["tmpl"])
    );
    assert_eq!(
        expect_ok(root.call(
            "user.getEffectiveTags",
            json!({"user": "ivan", "prefix": "a"})
        ))["tags"],
        json!({"yes": false, "k": 2, "fromtmpl": true})
    );
    // getTags shows the merge by prefix; user.list keeps the user's own tags.
    assert_eq!(
        expect_ok(root.call("user.getTags", json!({"user": "ivan"}))),
        json!({"tags": {"a": {"yes": true, "k": 2, "fromtmpl": true}, ".": {"yes": false}}})
    );
    assert_eq!(
        expect_ok(root.call("user.list", json!({"prefix": "ivan"})))[0]["tags"],
        json!({"a": {"yes": true, "k": 2}, ".": {"yes": false}})
    );
    expect_ok(root.call(
        "user.delTemplate",
        json!({"user": "ivan", "template": "tmpl"}),
    ));
    assert_eq!(
        expect_ok(root.call(
            "user.getEffectiveTags",
            json!({"user": "ivan", "prefix": "a"})
        ))["tags"],
        json!({"yes": false, "k": 2})
    );

    expect_ok(root.call(
        "user.delTags",
        json!({"user": "ivan", "prefix": "a", "tags": ["yes", "k"]}),
    ));
    assert_eq!(
        expect_ok(root.call("user.getTags", json!({"user": "ivan"}))),
        json!({"tags": {".": {"yes": false}}})
    );
    expect_code(
        root.call(
            "user.delTags",
            json!({"user": "ivan", "prefix": "a", "tags": "yes"}),
        ),
        ERR_INVALID_PARAMS,
    );

    // Own tags are readable without permission; others' are not.
    let mut c = node.tcp();
    expect_ok(c.login("ivan", "ivanpw"));
    expect_ok(c.call("user.getTags", json!({"user": "ivan"})));
    expect_ok(c.call(
        "user.getEffectiveTags",
        json!({"user": "ivan", "prefix": "a"}),
    ));
    expect_code(
        c.call("user.getTags", json!({"user": "tmpl"})),
        ERR_PERMISSION_DENIED,
    );
}

#[test]
fn template_use_needs_its_own_permission() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "mgr", "mgrpw");
    create_user(&mut root, "team.u", "teampw");
    create_user(&mut root, "tmpl.admin", "tmplpw");
    create_user(&mut root, "tmpl.basic", "tmplpw");
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "mgr", "prefix": "team", "tags": {"@user.addTemplate": true}}),
    ));
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "mgr", "prefix": "tmpl.basic", "tags": {"@user.useTemplate": true}}),
    ));
    let mut m = node.tcp();
    expect_ok(m.login("mgr", "mgrpw"));
    expect_ok(m.call(
        "user.addTemplate",
        json!({"user": "team.u", "template": "tmpl.basic"}),
    ));
    expect_code(
        m.call(
            "user.addTemplate",
            json!({"user": "team.u", "template": "tmpl.admin"}),
        ),
        ERR_PERMISSION_DENIED,
    );
    expect_code(
        m.call(
            "user.delTemplate",
            json!({"user": "team.u", "template": "tmpl.basic"}),
        ),
        ERR_PERMISSION_DENIED,
    );
}

#[test]
fn set_pass_on_self_and_others() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "jill", "jillpw");
    create_user(&mut root, "kurt", "kurtpw");
    let mut j = node.tcp();
    expect_ok(j.login("jill", "jillpw"));
    expect_ok(j.call("user.setPass", json!({"user": "jill", "pass": "newpass"})));
    expect_code(
        j.call("user.setPass", json!({"user": "kurt", "pass": "newpass"})),
        ERR_PERMISSION_DENIED,
    );
    expect_code(
        j.call("user.setPass", json!({"user": "jill", "pass": "x"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(node.tcp().login("jill", "jillpw"), ERR_PERMISSION_DENIED);
    expect_ok(node.tcp().login("jill", "newpass"));
    // Denied on oneself when the tags in force say so.
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "jill", "prefix": ".", "tags": {"@user.setPass": false}}),
    ));
    expect_ok(j.call("sys.reload", json!({})));
    expect_code(
        j.call("user.setPass", json!({"user": "jill", "pass": "other"})),
        ERR_PERMISSION_DENIED,
    );
    expect_ok(root.call("user.setPass", json!({"user": "kurt", "pass": "rootset"})));
    expect_ok(node.tcp().login("kurt", "rootset"));
    expect_code(
        root.call("user.setPass", json!({"user": "ghost", "pass": "rootset"})),
        ERR_INVALID_USER,
    );
    // Hashes never leave the node.
    let listed = expect_ok(root.call("user.list", json!({"prefix": ""}))).to_string();
    assert!(!listed.contains("scrypt") && !listed.contains("rootset"));
}

#[test]
fn user_limits_and_flags_are_validated() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "lena", "lenapw");
    expect_code(
        root.call("user.setMaxSessions", json!({"user": "lena"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call(
            "user.setMaxSessions",
            json!({"user": "lena", "maxsessions": "3"}),
        ),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call("user.setDisabled", json!({"user": "lena", "disabled": 1})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call(
            "user.setDisabled",
            json!({"user": "ghost", "disabled": true}),
        ),
        ERR_INVALID_USER,
    );
    expect_ok(root.call(
        "user.setMaxSessions",
        json!({"user": "lena", "maxsessions": 7}),
    ));
    let u = &expect_ok(root.call("user.list", json!({"prefix": "lena"})))[0];
    assert_eq!(u["maxsessions"], json!(7));
    let mut l = node.tcp();
    expect_ok(l.login("lena", "lenapw"));
    expect_code(
        l.call(
            "user.setMaxSessions",
            json!({"user": "lena", "maxsessions": 0}),
        ),
        ERR_PERMISSION_DENIED,
    );
    expect_code(
        l.call("user.list", json!({"prefix": ""})),
        ERR_PERMISSION_DENIED,
    );
}

/// Repeated logins skip scrypt through the verified-credential cache; it must never let a
/// wrong, changed or deleted password through.
#[test]
fn remembered_credentials_never_outlive_the_password() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "cache.user", "first-pass");
    for _ in 0..3 {
        expect_ok(node.tcp().login("cache.user", "first-pass"));
    }
    expect_code(node.tcp().login("cache.user", "first-pasS"), -32010);
    expect_code(node.tcp().login("cache.user", ""), -32010);
    // A new password: the remembered one is refused at once, the new one works.
    expect_ok(root.call(
        "user.setPass",
        json!({"user": "cache.user", "pass": "second-pass"}),
    ));
    expect_code(node.tcp().login("cache.user", "first-pass"), -32010);
    expect_ok(node.tcp().login("cache.user", "second-pass"));
    // Setting the same password again still works (a new salted hash).
    expect_ok(root.call(
        "user.setPass",
        json!({"user": "cache.user", "pass": "second-pass"}),
    ));
    expect_ok(node.tcp().login("cache.user", "second-pass"));
    // Deleted: refused. Recreated with another password: only that one works.
    expect_ok(root.call("user.delete", json!({"user": "cache.user"})));
    expect_code(node.tcp().login("cache.user", "second-pass"), -32010);
    create_user(&mut root, "cache.user", "third-pass");
    expect_code(node.tcp().login("cache.user", "second-pass"), -32010);
    expect_ok(node.tcp().login("cache.user", "third-pass"));
}

/// Whether a user exists cannot be told from how long a failed login takes: an unknown
/// user's password is checked against a hash too. Interleaved, so load affects both alike.
#[test]
fn an_unknown_user_fails_as_slowly_as_a_wrong_password() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "known", "knownpw");
    let mut c = node.tcp();
    let mut timed = |user: &str, pass: &str| {
        let start = std::time::Instant::now();
        expect_code(c.login(user, pass), ERR_PERMISSION_DENIED);
        start.elapsed()
    };
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    for i in 0..21 {
        unknown.push(timed(&format!("nobody{i}"), "guess"));
        wrong.push(timed("known", &format!("guess{i}")));
    }
    unknown.sort();
    wrong.sort();
    let (u, w) = (unknown[10].as_secs_f64(), wrong[10].as_secs_f64());
    assert!(
        (u / w - 1.0).abs() <= 0.2,
        "median failed login: unknown user {:.1} ms, wrong password {:.1} ms",
        u * 1e3,
        w * 1e3
    );
}
