//! Wire protocol and transports: TCP stream framing, JSON-RPC rules, batches, limits, the
//! watchdog, WebSocket, the HTTP bridge, health, and TLS — all against a real node.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nexus_core::rpc::*;
use nexus_server::config::Scheme;
use serde_json::{json, Value};
use tungstenite::Message;

#[test]
fn tcp_reads_back_to_back_and_split_requests() {
    let node = TestNode::start();
    let mut c = node.tcp();
    c.send_raw(br#"{"id":1,"method":"sys.ping"}{"id":2,"method":"sys.version"}"#);
    c.send_raw(b"\r\n{\"id\":3,\"meth");
    std::thread::sleep(Duration::from_millis(100));
    c.send_raw(b"od\":\"sys.ping\",\"jsonrpc\":\"2.0\"}");
    let mut got: Vec<Value> = (0..3).map(|_| c.read_value().unwrap()).collect();
    got.sort_by_key(|v| v["id"].as_i64());
    assert_eq!(
        got[0],
        json!({"jsonrpc": "2.0", "id": 1, "result": {"ok": true}})
    );
    assert_eq!(got[1]["result"], json!({"version": "1.9.0"}));
    assert_eq!(got[2]["result"], json!({"ok": true}));
}

#[test]
fn parse_errors_answer_null_id_and_keep_the_connection() {
    let node = TestNode::start();
    let mut c = node.tcp();
    c.send_raw(b"this is not json ");
    let v = c.read_value().unwrap();
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["error"]["code"], json!(ERR_PARSE));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Parse error"));
    c.send_raw(br#"{"id":"a","method":"sys.ping","params":{]}"#);
    assert_eq!(c.read_value().unwrap()["error"]["code"], json!(ERR_PARSE));
    expect_ok(c.call("sys.ping", json!({})));
}

#[test]
fn invalid_requests_and_unknown_methods() {
    let node = TestNode::start();
    let mut c = node.tcp();
    c.send_raw(br#"{"id":7,"params":{}}"#);
    let v = c.read_value().unwrap();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(7), json!(ERR_INVALID_REQUEST))
    );
    c.send_raw(br#"{"id":8,"method":"sys.ping","jsonrpc":"1.0"}"#);
    assert_eq!(
        c.read_value().unwrap()["error"]["code"],
        json!(ERR_INVALID_REQUEST)
    );
    c.send_raw(br#"{"id":9,"method":""}"#);
    assert_eq!(
        c.read_value().unwrap()["error"]["code"],
        json!(ERR_INVALID_REQUEST)
    );
    c.send_raw(b"42");
    c.send_raw(b" ");
    assert_eq!(
        c.read_value().unwrap()["error"]["code"],
        json!(ERR_INVALID_REQUEST)
    );
    let e = expect_code(c.call("no.such", json!({})), ERR_METHOD_NOT_FOUND);
    assert_eq!(e.message, "Method not found");
    expect_code(c.call("sys.ping", json!([1, 2])), ERR_INVALID_PARAMS);
}

#[test]
fn notifications_are_executed_but_never_answered() {
    let node = TestNode::start();
    let mut root = node.root();
    root.send_raw(br#"{"method":"user.create","params":{"user":"quiet","pass":"quietpw"}}"#);
    root.send_raw(br#"{"method":"no.such.method"}"#);
    // The only answer is the ping's; the user was created by the notification.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = expect_ok(root.call("user.list", json!({"prefix": "quiet"})));
        if v.as_array().unwrap().len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "notification was not executed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = root.send("sys.ping", json!({}));
    let v = root.read_value().unwrap();
    assert_eq!(v["id"], id, "nothing but the ping is answered: {v}");
}

#[test]
fn batches_answer_as_arrays() {
    let node = TestNode::start();
    let mut c = node.tcp();
    c.send_raw(
        br#"[{"id":1,"method":"sys.ping"},{"method":"sys.ping"},{"id":3,"method":"x.y"},{"id":4}]"#,
    );
    let v = c.read_value().unwrap();
    let mut items = v.as_array().unwrap().clone();
    items.sort_by_key(|i| i["id"].as_i64());
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["result"], json!({"ok": true}));
    assert_eq!(items[1]["error"]["code"], json!(ERR_METHOD_NOT_FOUND));
    assert_eq!(items[2]["error"]["code"], json!(ERR_INVALID_REQUEST));
    c.send_raw(b"[]");
    assert_eq!(
        c.read_value().unwrap()["error"]["code"],
        json!(ERR_INVALID_REQUEST)
    );
    // A batch of notifications gets no answer at all.
    c.send_raw(br#"[{"method":"sys.ping"}]"#);
    let id = c.send("sys.version", json!({}));
    assert_eq!(c.read_value().unwrap()["id"], id);
}

#[test]
fn oversize_message_is_refused_and_closes_only_that_connection() {
    let node = TestNode::start_with(&["--max-message-size", "1024"]);
    let mut other = node.tcp();
    let mut c = node.tcp();
    let big = json!({"id": 1, "method": "sys.ping", "params": {"pad": "x".repeat(2000)}});
    c.send_raw(big.to_string().as_bytes());
    let v = c.read_value().unwrap();
    assert_eq!(v["error"]["code"], json!(ERR_INVALID_REQUEST));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1024"),
        "{v}"
    );
    assert!(c.read_value().is_none(), "connection closed");
    expect_ok(other.call("sys.ping", json!({})));
    expect_ok(node.tcp().call("sys.ping", json!({})));
}

#[test]
fn a_slow_request_does_not_hold_up_the_next() {
    let node = TestNode::start();
    let mut c = node.tcp();
    // Password checking (scrypt) is slow; the ping sent after it must not wait for it.
    let login = c.send("sys.login", json!({"user": "root", "pass": "root"}));
    let ping = c.send("sys.ping", json!({}));
    let first = c.read_value().unwrap();
    assert_eq!(first["id"], ping, "ping answered before the login finished");
    assert_eq!(c.wait(&login)["result"]["user"], json!("root"));
}

/// Requests sent before the session's open commits start in the order they were sent,
/// together with those sent right after: each `sys.watchdog` read sees the value the
/// request just before it set. (The open is slowed by a delayed apply, so that the first
/// half waits for it.)
#[test]
fn requests_sent_before_the_session_opens_start_in_order() {
    let node = TestNode::start_with(&["--test-apply-delay-ms", "200"]);
    let mut c = node.tcp();
    let mut sent = Vec::new();
    for half in 0..2 {
        for k in 0..100 {
            let value = 100 + half * 100 + k;
            let set = c.send("sys.watchdog", json!({"watchdog": value}));
            let get = c.send("sys.watchdog", json!({}));
            sent.push((value, set, get));
        }
        if half == 0 {
            // The second half arrives once the open has committed.
            let ping = c.send("sys.ping", json!({}));
            assert_eq!(c.wait(&ping)["result"], json!({"ok": true}));
        }
    }
    for (value, set, get) in sent {
        assert_eq!(c.wait(&set)["result"]["watchdog"], json!(value));
        assert_eq!(
            c.wait(&get)["result"]["watchdog"],
            json!(value),
            "read after set {value}"
        );
    }
}

#[test]
fn watchdog_closes_idle_connections() {
    // The API's 10 s minimum (users.rs checks it) lowered to 1 s for this test only.
    let node = TestNode::start_with(&["--test-watchdog-min-secs", "1"]);
    let mut idle = node.tcp();
    let mut busy = node.tcp();
    assert_eq!(
        expect_ok(idle.call("sys.watchdog", json!({"watchdog": 2}))),
        json!({"watchdog": 2})
    );
    assert_eq!(
        expect_ok(busy.call("sys.watchdog", json!({"watchdog": 2}))),
        json!({"watchdog": 2})
    );
    let start = Instant::now();
    // Keep one connection busy past the deadline of the other.
    while start.elapsed() < Duration::from_secs(4) {
        expect_ok(busy.call("sys.ping", json!({})));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        idle.closed_within(Duration::from_secs(3)),
        "idle connection closed by the watchdog"
    );
    expect_ok(busy.call("sys.ping", json!({})));
}

fn ws_connect(
    addr: std::net::SocketAddr,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>> {
    let (ws, resp) = tungstenite::connect(format!("ws://{addr}/any/path")).unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

fn ws_read(ws: &mut tungstenite::WebSocket<impl Read + Write>) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[test]
fn websocket_frames_are_one_json_stream() {
    let node = TestNode::start();
    let mut ws = ws_connect(node.http_addr());
    ws.send(Message::text(
        r#"{"id":1,"method":"sys.ping"}{"id":2,"method":"sys.version"}"#,
    ))
    .unwrap();
    let mut ids = vec![
        ws_read(&mut ws)["id"].clone(),
        ws_read(&mut ws)["id"].clone(),
    ];
    ids.sort_by_key(|v| v.as_i64());
    assert_eq!(ids, vec![json!(1), json!(2)]);
    ws.send(Message::text(r#"{"id":3,"method":"sys.lo"#))
        .unwrap();
    ws.send(Message::text(
        r#"gin","params":{"user":"root","pass":"root"}}"#,
    ))
    .unwrap();
    let v = ws_read(&mut ws);
    assert_eq!(
        (v["id"].clone(), v["result"]["user"].clone()),
        (json!(3), json!("root"))
    );
    ws.send(Message::text("{oops}")).unwrap();
    assert_eq!(ws_read(&mut ws)["error"]["code"], json!(ERR_PARSE));

    // The foundation's acceptance path: root over WebSocket creates a user who logs in over TCP.
    ws.send(Message::text(
        r#"{"id":4,"method":"user.create","params":{"user":"wsmade","pass":"wsmadepw"}}"#,
    ))
    .unwrap();
    assert_eq!(
        ws_read(&mut ws),
        json!({"jsonrpc": "2.0", "id": 4, "result": {"ok": true}})
    );
    let mut t = node.tcp();
    assert_eq!(
        expect_ok(t.login("wsmade", "wsmadepw"))["user"],
        json!("wsmade")
    );
    ws.close(None).unwrap();
}

/// A client's masked text frame, as raw bytes.
fn ws_frame(text: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | 127];
    f.extend_from_slice(&(text.len() as u64).to_be_bytes());
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The HTTP/1 layer under WebSocket sessions gives its buffers back while a connection is
/// idle (vendor/actix-http/NEXUS-PATCH.md): messages many times the buffers' size, arriving
/// in pieces with idle gaps between them, still arrive whole, and an answer larger than the
/// socket buffers, written while the client is not reading, still leaves whole.
#[test]
fn large_websocket_messages_arrive_whole_across_idle_gaps() {
    let node = TestNode::start();
    let mut ws = ws_connect(node.http_addr());
    ws.send(Message::text(
        r#"{"id":1,"method":"sys.login","params":{"user":"root","pass":"root"}}"#,
    ))
    .unwrap();
    assert_eq!(ws_read(&mut ws)["result"]["user"], json!("root"));
    ws.send(Message::text(r#"{"id":2,"method":"pipe.create"}"#))
        .unwrap();
    let pipeid = ws_read(&mut ws)["result"]["pipeid"].clone();
    let bigs: Vec<String> = (0..3).map(|i| format!("{i}").repeat(2 << 20)).collect();
    for (i, big) in bigs.iter().enumerate() {
        let write = json!({"id": 10 + i, "method": "pipe.write",
            "params": {"pipeid": pipeid, "msg": big}});
        let frame = ws_frame(&write.to_string());
        for piece in frame.chunks(frame.len() / 3 + 1) {
            ws.get_mut().write_all(piece).unwrap();
            ws.get_mut().flush().unwrap();
            // An idle gap: the node reads what came and waits for more.
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(ws_read(&mut ws)["result"], json!({"ok": true}), "write {i}");
    }
    let read = json!({"id": 20, "method": "pipe.read",
        "params": {"pipeid": pipeid, "max": 3, "timeout": 5}});
    ws.send(Message::text(read.to_string())).unwrap();
    // Not reading for a while: the node's write of the 6 MiB answer blocks part way.
    std::thread::sleep(Duration::from_millis(500));
    let answer = ws_read(&mut ws);
    let got: Vec<Value> = answer["result"]["msgs"]
        .as_array()
        .expect("msgs")
        .iter()
        .map(|m| m["msg"].clone())
        .collect();
    assert_eq!(got, bigs.iter().map(|b| json!(b)).collect::<Vec<_>>());
}

#[test]
fn http_bridge_with_basic_auth_and_cors() {
    let node = TestNode::start();
    let addr = node.http_addr();
    let (status, headers, body) = http_request(
        addr,
        "POST",
        &[("Content-Type", "application/json")],
        br#"{"id":1,"method":"sys.ping"}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"ok": true}})
    );

    let list = br#"{"id":2,"method":"user.list","params":{"prefix":""}}"#;
    let (_, _, body) = http_request(addr, "POST", &[], list);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        json!(ERR_PERMISSION_DENIED)
    );
    let good = "Basic cm9vdDpyb290"; // root:root
    let (_, _, body) = http_request(addr, "POST", &[("Authorization", good)], list);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], json!(2));
    assert_eq!(v["result"][0]["user"], json!("root"));
    let bad = "Basic cm9vdDp3cm9uZw=="; // root:wrong
    let (_, _, body) = http_request(addr, "POST", &[("Authorization", bad)], list);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (json!(2), json!(ERR_PERMISSION_DENIED))
    );

    // GET with a body is the bridge too.
    let (status, _, body) = http_request(addr, "GET", &[], br#"{"id":3,"method":"sys.version"}"#);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["result"]["version"],
        json!("1.9.0")
    );
    let (_, _, body) = http_request(addr, "POST", &[], b"{nope");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        json!(ERR_PARSE)
    );
    let (status, _, body) = http_request(addr, "POST", &[], br#"{"method":"sys.ping"}"#);
    assert_eq!(
        (status, body.len()),
        (204, 0),
        "a notification gets no body"
    );
    let (status, headers, _) =
        http_request(addr, "OPTIONS", &[("Origin", "http://example.org")], b"");
    assert_eq!(status, 200);
    assert!(header(&headers, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
}

#[test]
fn health_answers_200() {
    let node = TestNode::start();
    let (status, _, body) = http_request(node.server.addr(Scheme::Health), "GET", &[], b"");
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
}

fn tls_connect(
    addr: std::net::SocketAddr,
    cert_der: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

#[test]
fn tls_listeners_serve_ssl_https_and_wss() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = tls_files(certs.path());
    let node = tls_node(&cert, &key);

    let mut s = tls_connect(node.server.addr(Scheme::Ssl), &der);
    s.write_all(br#"{"id":1,"method":"sys.login","params":{"user":"root","pass":"root"}}"#)
        .unwrap();
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n") {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        serde_json::from_slice::<Value>(&buf).unwrap()["result"]["user"],
        json!("root")
    );

    let https = node.server.addr(Scheme::Https);
    let mut h = tls_connect(https, &der);
    let body = br#"{"id":5,"method":"sys.ping"}"#;
    write!(
        h,
        "POST / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    h.write_all(body).unwrap();
    let mut resp = Vec::new();
    let _ = h.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""result":{"ok":true}"#), "{text}");

    let stream = tls_connect(https, &der);
    let (mut ws, _) =
        tungstenite::client(format!("wss://localhost:{}/", https.port()), stream).unwrap();
    ws.send(Message::text(r#"{"id":6,"method":"sys.version"}"#))
        .unwrap();
    assert_eq!(ws_read(&mut ws)["result"]["version"], json!("1.9.0"));
}

#[test]
fn tls_listener_without_certificate_fails_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let args = args_for(dir.path(), &["-l", "ssl://127.0.0.1:0"]);
    let err = nexus_server::server::Background::start(args)
        .err()
        .expect("refuses to start");
    assert!(err.to_string().contains("--tls-cert"), "{err}");
}

#[test]
fn max_inflight_bounds_concurrent_requests_per_connection() {
    // With one request allowed in flight, the ping waits for the slow login before it runs.
    let node = TestNode::start_with(&["--max-inflight", "1"]);
    let mut c = node.tcp();
    let login = c.send("sys.login", json!({"user": "root", "pass": "root"}));
    let ping = c.send("sys.ping", json!({}));
    assert_eq!(c.read_value().unwrap()["id"], login);
    assert_eq!(c.read_value().unwrap()["id"], ping);
}

#[test]
fn oversize_websocket_and_http_messages_are_refused() {
    let node = TestNode::start_with(&["--max-message-size", "1024"]);
    let mut ws = ws_connect(node.http_addr());
    let big =
        json!({"id": 1, "method": "sys.ping", "params": {"pad": "x".repeat(4000)}}).to_string();
    ws.send(Message::text(big.clone())).unwrap();
    let mut closed = false;
    for _ in 0..5 {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["error"]["code"], json!(ERR_INVALID_REQUEST));
            }
            Ok(Message::Close(_)) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the websocket is closed after an oversize message");
    let (status, _, body) = http_request(node.http_addr(), "POST", &[], big.as_bytes());
    assert_eq!(status, 413);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        json!(ERR_INVALID_REQUEST)
    );
    expect_ok(node.tcp().call("sys.ping", json!({})));
}

#[test]
fn batches_count_against_max_inflight() {
    let node = TestNode::start_with(&["--max-inflight", "3"]);
    let mut c = node.tcp();
    c.send_raw(br#"[{"id":1,"method":"sys.ping"},{"id":2,"method":"sys.ping"},{"id":3,"method":"sys.ping"}]"#);
    assert_eq!(c.read_value().unwrap().as_array().unwrap().len(), 3);
    c.send_raw(br#"[{"id":1,"method":"sys.ping"},{"id":2,"method":"sys.ping"},{"id":3,"method":"sys.ping"},{"id":4,"method":"sys.ping"}]"#);
    let v = c.read_value().unwrap();
    assert_eq!(v["error"]["code"], json!(ERR_INVALID_REQUEST), "{v}");
    expect_ok(c.call("sys.ping", json!({})));
}

#[test]
fn http_bridge_requests_outlive_the_watchdog() {
    let node = TestNode::start_with(&["--watchdog", "1", "--test-watchdog-min-secs", "1"]);
    let body = br#"{"id":1,"method":"task.pull","params":{"prefix":"slow.q","timeout":3}}"#;
    let start = Instant::now();
    let (status, _, body) = http_request(
        node.http_addr(),
        "POST",
        &[("Authorization", "Basic cm9vdDpyb290")],
        body,
    );
    assert!(start.elapsed() >= Duration::from_secs(3));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], json!(ERR_TIMEOUT), "{v}");
}

#[test]
fn http_bridge_session_ends_when_the_client_hangs_up() {
    let node = TestNode::start();
    let mut root = node.root();
    let count = |root: &mut Client| {
        expect_ok(root.call("sys.session.count", json!({"prefix": "root"})))["count"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(count(&mut root), 1);
    {
        let mut s = TcpStream::connect(node.http_addr()).unwrap();
        let body = br#"{"id":1,"method":"task.pull","params":{"prefix":"never.here"}}"#;
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cm9vdDpyb290\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while count(&mut root) < 2 {
            assert!(Instant::now() < deadline, "bridge session never logged in");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&mut root) != 1 {
        assert!(
            Instant::now() < deadline,
            "bridge session outlived its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        expect_ok(root.call("task.count", json!({"prefix": "never"})))["pullCount"],
        json!(0)
    );
}

#[test]
fn a_client_that_stops_reading_stops_being_read() {
    // Answers hold their request's in-flight permit until written: once this client's
    // unread answers fill the socket, the node stops reading its requests, instead of
    // queueing answers in memory without bound.
    let node = TestNode::start_with(&["--max-inflight", "8"]);
    let mut root = node.root();
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "root", "prefix": "big", "tags": {"blob": "x".repeat(1024)}}),
    ));
    let mut c = node.tcp();
    expect_ok(c.login("root", "root"));
    c.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let pad = "p".repeat(1024);
    let mut batch = Vec::new();
    for i in 0..100 {
        let req =
            json!({"id": i, "method": "user.getTags", "params": {"user": "root", "pad": pad}});
        batch.extend_from_slice(req.to_string().as_bytes());
    }
    let limit = 120 << 20;
    let mut written = 0usize;
    let mut blocked = false;
    while written < limit {
        match c.stream.write_all(&batch) {
            Ok(()) => written += batch.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                blocked = true;
                break;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(
        blocked,
        "the node read {written} bytes of requests whose answers nobody read"
    );
    // Everyone else is served meanwhile.
    expect_ok(root.call("sys.ping", json!({})));
}

#[test]
fn random_bytes_never_take_the_node_down() {
    use rand::{Rng, SeedableRng};
    let node = TestNode::start_with(&["--max-message-size", "65536"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let alphabet: &[u8] = b"{}[]\":,\\ 0123456789abcdefnulltruefalse.\r\n\x00\xff";
    for conn in 0..8 {
        let mut s = TcpStream::connect(node.server.addr(Scheme::Tcp)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        for _ in 0..50 {
            let len = rng.gen_range(1..4096);
            let chunk: Vec<u8> = (0..len)
                .map(|_| {
                    if conn % 2 == 0 {
                        alphabet[rng.gen_range(0..alphabet.len())]
                    } else {
                        rng.gen()
                    }
                })
                .collect();
            if s.write_all(&chunk).is_err() {
                break; // the node may close a connection that sent too much garbage
            }
        }
        let mut sink = [0u8; 65536];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    }
    // Afterwards new connections are served as usual.
    expect_ok(node.tcp().call("sys.ping", json!({})));
    let mut root = node.root();
    expect_ok(root.call("user.count", json!({"prefix": ""})));
}

#[test]
fn websocket_pings_keep_a_connection_alive() {
    let node = TestNode::start_with(&["--watchdog", "2", "--test-watchdog-min-secs", "1"]);
    let mut pinging = ws_connect(node.http_addr());
    let mut silent = ws_connect(node.http_addr());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        pinging.send(Message::Ping(vec![1].into())).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    pinging
        .send(Message::text(r#"{"id":1,"method":"sys.ping"}"#))
        .unwrap();
    assert_eq!(ws_read(&mut pinging)["result"], json!({"ok": true}));
    // The silent one was closed by the watchdog.
    let closed = loop {
        match silent.read() {
            Ok(Message::Close(_)) | Err(_) => break true,
            Ok(Message::Text(t)) => panic!("unexpected {t}"),
            Ok(_) => continue,
        }
    };
    assert!(closed);
}

#[test]
fn half_closed_tcp_clients_get_their_answers() {
    let node = TestNode::start();
    let mut c = node.tcp();
    // A slow request (scrypt) and a quick one, then the client stops sending.
    c.send_raw(br#"{"id":1,"method":"sys.login","params":{"user":"root","pass":"root"}}{"id":2,"method":"sys.version"}"#);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ids = Vec::new();
    while let Some(v) = c.read_value() {
        ids.push(v["id"].as_i64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, vec![1, 2], "both answered before the close");
}

#[test]
fn tcp_connections_beyond_the_limit_wait_for_a_free_slot() {
    let node = TestNode::start_with(&["--max-connections", "2"]);
    let mut a = node.tcp();
    let mut b = node.tcp();
    expect_ok(a.call("sys.ping", json!({})));
    expect_ok(b.call("sys.ping", json!({})));
    let mut c = node.tcp();
    c.send_raw(br#"{"id":1,"method":"sys.ping"}"#);
    c.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let waiting = matches!(
        c.stream.peek(&mut byte),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    );
    assert!(
        waiting,
        "a third connection is not served while two are open"
    );
    drop(a);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(c.read_value().unwrap()["result"], json!({"ok": true}));
    expect_ok(b.call("sys.ping", json!({})));
}
