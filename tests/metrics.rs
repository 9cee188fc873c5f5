//! `/metrics`: scraped over HTTP from the http and health listeners of a real node and
//! parsed as Prometheus text; each figure checked against what the test did.

mod common;

use common::*;
use nexus_server::config::Scheme;
use serde_json::json;

#[test]
fn build_info_names_the_version_and_the_commit() {
    let node = TestNode::start();
    let scrape = scrape(node.http_addr());
    let commit = git_commit();
    let labels = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", commit.as_str()),
    ];
    assert_eq!(
        metric(&scrape, "nexus_build_info", &labels),
        Some(1.0),
        "{:?}",
        scrape
            .samples
            .iter()
            .filter(|s| s.metric.starts_with("nexus_build"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn metrics_count_what_clients_did() {
    let node = TestNode::start();
    let mut root = node.root();
    for i in 0..3 {
        expect_ok(root.call(
            "task.push",
            json!({"method": "alpha.work", "params": i, "detach": true}),
        ));
    }
    expect_ok(root.call("sync.lock", json!({"lock": "metrics.lock"})));
    expect_code(root.call("no.such.method", json!({})), -32601);
    // A made-up name with bad params is not a label either.
    expect_code(root.call("made.up.name", json!([1])), -32602);
    // A pipe of one message receives three publishes: one delivered, two dropped.
    let pipeid = expect_ok(root.call("pipe.create", json!({"len": 1})))["pipeid"].clone();
    expect_ok(root.call("topic.sub", json!({"pipeid": pipeid, "topic": "metrics.t"})));
    for i in 0..3 {
        expect_ok(root.call("topic.pub", json!({"topic": "metrics.t", "msg": i})));
    }
    // Requests wait for their session's record to commit: after one answer, it is there.
    let mut anonymous = node.tcp();
    expect_ok(anonymous.call("sys.ping", json!({})));

    let s = scrape(node.http_addr());
    let ok = |method| [("method", method), ("outcome", "ok")];
    assert_eq!(
        metric(&s, "nexus_requests_total", &ok("task.push")),
        Some(3.0)
    );
    assert_eq!(
        metric(&s, "nexus_requests_total", &ok("sync.lock")),
        Some(1.0)
    );
    let unknown = [("method", "(unknown)"), ("outcome", "error")];
    assert_eq!(metric(&s, "nexus_requests_total", &unknown), Some(2.0));
    assert!(!s
        .samples
        .iter()
        .any(|x| x.labels.get("method") == Some("made.up.name")));
    let push_latency = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "nexus_request_duration_seconds"
                && x.labels.get("method") == Some("task.push")
        })
        .expect("task.push latency histogram");
    match &push_latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(3.0), "{buckets:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let queued = [("prefix", "alpha"), ("state", "queued")];
    assert_eq!(metric(&s, "nexus_tasks", &queued), Some(3.0));
    assert_eq!(metric(&s, "nexus_locks", &[]), Some(1.0));
    assert_eq!(metric(&s, "nexus_pipes", &[]), Some(1.0));
    assert_eq!(metric(&s, "nexus_topic_subscriptions", &[]), Some(1.0));
    assert_eq!(metric(&s, "nexus_topic_deliveries_total", &[]), Some(3.0));
    // The pipe's actor counts drops as it takes in its inbox: wait for all three.
    assert!(eventually(std::time::Duration::from_secs(10), || {
        metric(&scrape(node.http_addr()), "nexus_pipe_drops_total", &[]) == Some(2.0)
    }));
    let tcp = [("transport", "tcp")];
    assert_eq!(metric(&s, "nexus_connections", &tcp), Some(2.0));
    let logged_in = [("transport", "tcp"), ("authenticated", "true")];
    let anonymous = [("transport", "tcp"), ("authenticated", "false")];
    assert_eq!(metric(&s, "nexus_sessions", &logged_in), Some(1.0));
    assert_eq!(metric(&s, "nexus_sessions", &anonymous), Some(1.0));
    assert_eq!(
        metric(&s, "nexus_raft_role", &[("role", "leader")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&s, "nexus_raft_role", &[("role", "follower")]),
        Some(0.0)
    );
    assert!(metric(&s, "nexus_raft_term", &[]).unwrap() >= 1.0);
    let applied = metric(&s, "nexus_raft_applied_index", &[]).unwrap();
    assert!(applied >= 10.0, "applied index {applied}");
    assert_eq!(metric(&s, "nexus_raft_voters", &[]), Some(1.0));
    assert!(metric(&s, "nexus_raft_log_write_duration_seconds_count", &[]).unwrap() >= 10.0);
    assert!(metric(&s, "nexus_raft_proposal_duration_seconds_count", &[]).unwrap() >= 5.0);

    // The health listener serves the same registry.
    let h = scrape(node.server.addr(Scheme::Health));
    assert_eq!(metric(&h, "nexus_locks", &[]), Some(1.0));

    // Closing a connection takes it out of the gauges.
    drop(root);
    assert!(eventually(std::time::Duration::from_secs(10), || {
        metric(&scrape(node.http_addr()), "nexus_connections", &tcp) == Some(1.0)
    }));
}

#[test]
fn task_prefixes_are_bounded_in_labels() {
    let node = TestNode::start();
    let mut root = node.root();
    let n = nexus_server::metrics::MAX_PREFIXES + 5;
    for i in 0..n {
        let method = format!("p{i:03}.m");
        expect_ok(root.call(
            "task.push",
            json!({"method": method, "params": i, "detach": true}),
        ));
    }
    let s = scrape(node.http_addr());
    let series: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "nexus_tasks")
        .collect();
    assert_eq!(series.len(), nexus_server::metrics::MAX_PREFIXES + 1);
    let other = [("prefix", "(other)"), ("state", "queued")];
    assert_eq!(metric(&s, "nexus_tasks", &other), Some(5.0));
    let total: f64 = series
        .iter()
        .map(|x| match x.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, n as f64);
}

#[test]
fn a_post_to_the_metrics_path_is_still_the_bridge() {
    let node = TestNode::start();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "sys.ping", "params": {}});
    let (status, _, answer) = http_request_to(
        node.http_addr(),
        "POST",
        "/metrics",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["result"], json!({"ok": true}), "{answer}");
}

#[test]
fn the_grafana_dashboard_uses_only_exported_metrics() {
    // Labelled families appear once they have a series: give each one.
    let node = TestNode::start();
    let mut root = node.root();
    expect_ok(root.call(
        "task.push",
        json!({"method": "d.m", "params": 1, "detach": true}),
    ));
    // Shown by a cluster only, and checked there (tests/cluster.rs).
    let cluster_only = [
        "nexus_peer_connected",
        "nexus_peer_sent_bytes",
        "nexus_peer_received_bytes",
    ];
    let (_, _, body) = http_request_to(node.http_addr(), "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/nexus-dashboard.json"
    ))
    .unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let used = regex::Regex::new(r"nexus_[a-z_]+").unwrap();
    let mut checked = 0;
    for m in used.find_iter(&dashboard) {
        let name = m.as_str();
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            exported.contains(family) || cluster_only.contains(&family),
            "the dashboard uses {name}, which /metrics does not export"
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} metric references found");
}

#[test]
fn metrics_can_be_kept_off_the_client_listeners() {
    let node = TestNode::start_with(&["--metrics-only-on-health"]);
    let (_, headers, body) = http_request_to(node.http_addr(), "GET", "/metrics", &[], b"");
    let kind = header(&headers, "content-type")
        .unwrap_or_default()
        .to_string();
    assert!(!kind.contains("openmetrics"), "{kind}");
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains("nexus_requests_total"), "{body}");
    let h = scrape(node.server.addr(Scheme::Health));
    assert_eq!(metric(&h, "nexus_raft_voters", &[]), Some(1.0));
}
