//! Test support: real nodes on loopback ports with temp data dirs, and small clients for
//! each transport. Nothing here fakes a part of the server.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nexus::config::{Scheme, ServeArgs};
use nexus::server::Background;
use serde_json::{json, Value};

pub mod cluster;
pub mod faultfs;
pub mod standalone;

pub const ROOT_PASS: &str = "root";

/// An in-process node with tcp, http and health listeners on free loopback ports.
pub struct TestNode {
    pub server: Background,
    pub dir: tempfile::TempDir,
}

pub fn args_for(dir: &Path, extra: &[&str]) -> ServeArgs {
    let mut argv = vec![
        "nexus",
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "-l",
        "tcp://127.0.0.1:0",
        "-l",
        "http://127.0.0.1:0",
        "-l",
        "health://127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    let cli = <nexus::config::Cli as clap::Parser>::parse_from(argv);
    match cli.command {
        nexus::config::Command::Serve(args) => *args,
        other => panic!("not serve: {other:?}"),
    }
}

impl TestNode {
    pub fn start() -> TestNode {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let server = Background::start(args_for(dir.path(), extra)).expect("node starts");
        TestNode { server, dir }
    }

    pub fn tcp(&self) -> Client {
        Client::tcp(self.server.addr(Scheme::Tcp))
    }

    pub fn root(&self) -> Client {
        let mut c = self.tcp();
        c.login("root", ROOT_PASS).expect("root login");
        c
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.server.addr(Scheme::Http)
    }
}

/// A JSON-RPC error as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Err {
    pub code: i64,
    pub message: String,
}

pub type Answer = Result<Value, Err>;

pub fn answer_of(resp: &Value) -> Answer {
    if let Some(e) = resp.get("error") {
        return Err(Err {
            code: e["code"].as_i64().unwrap(),
            message: e["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(resp["result"].clone())
}

/// Reads `\r\n`-terminated JSON answers from a TCP connection; answers are matched by id.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    next_id: u64,
    pending: HashMap<String, Value>,
}

impl Client {
    pub fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client {
            stream,
            reader,
            next_id: 0,
            pending: HashMap::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next answer line, parsed; `None` when the server closed the connection.
    pub fn read_value(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                assert!(line.ends_with("\r\n"), "answers end with CRLF: {line:?}");
                Some(serde_json::from_str(&line).unwrap())
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Sends a request and returns its id.
    pub fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = json!(self.next_id);
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(req.to_string().as_bytes());
        id
    }

    /// Waits for the answer with `id`, keeping others for later.
    pub fn wait(&mut self, id: &Value) -> Value {
        let key = id.to_string();
        loop {
            if let Some(v) = self.pending.remove(&key) {
                return v;
            }
            let v = self.read_value().expect("connection closed while waiting");
            self.pending.insert(v["id"].to_string(), v);
        }
    }

    pub fn call(&mut self, method: &str, params: Value) -> Answer {
        let id = self.send(method, params);
        answer_of(&self.wait(&id))
    }

    pub fn login(&mut self, user: &str, pass: &str) -> Answer {
        self.call("sys.login", json!({"user": user, "pass": pass}))
    }

    /// True when the server closes the connection within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Asserts an error code.
#[track_caller]
pub fn expect_code(a: Answer, code: i64) -> Err {
    match a {
        Err(e) => {
            assert_eq!(e.code, code, "{e:?}");
            e
        }
        Ok(v) => panic!("expected error {code}, got {v}"),
    }
}

#[track_caller]
pub fn expect_ok(a: Answer) -> Value {
    match a {
        Ok(v) => v,
        Err(e) => panic!("expected success, got {e:?}"),
    }
}

/// Logs `c` in and answers its connid.
pub fn connid(c: &mut Client, user: &str, pass: &str) -> String {
    expect_ok(c.login(user, pass))["connid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Creates `user` with `pass` as root.
pub fn create_user(root: &mut Client, user: &str, pass: &str) {
    expect_ok(root.call("user.create", json!({"user": user, "pass": pass})));
}

/// A raw HTTP/1.1 exchange; returns (status, headers lower-cased, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http_request_to(addr, method, "/", extra_headers, body)
}

pub fn http_request_to(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A free loopback port (for child processes that need a fixed port).
/// A loopback port free for both TCP and UDP, for a node started later (possibly
/// restarted on it). Taken below Linux's ephemeral range (32768+), so that outgoing
/// connections of the many nodes tests run in parallel never grab it meanwhile; each test
/// process walks its own stretch of the range (by pid) to keep parallel tests apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free loopback port left");
        let port = (LOW + (start + n * 37) % SPAN) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// Polls `f` until it is true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `GET /metrics` on `addr`, parsed as Prometheus text.
pub fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, headers, body) = http_request_to(addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(header(&headers, "content-type").is_some_and(|t| t.contains("openmetrics-text")));
    let text = String::from_utf8(body).expect("utf-8 metrics");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("parsable metrics")
}

/// The value of the sample `name` whose labels include `labels` (counters and gauges).
pub fn metric(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        })
}

/// A self-signed certificate for `localhost` and its key, written as PEM files in `dir`:
/// (certificate path, key path, certificate DER).
pub fn tls_files(dir: &std::path::Path) -> (String, String, Vec<u8>) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    (
        cert_path.to_str().unwrap().to_string(),
        key_path.to_str().unwrap().to_string(),
        cert.der().to_vec(),
    )
}

/// A node with ssl:// and https:// listeners (besides the usual ones) serving `cert`/`key`.
pub fn tls_node(cert: &str, key: &str) -> TestNode {
    TestNode::start_with(&[
        "-l",
        "ssl://127.0.0.1:0",
        "-l",
        "https://127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ])
}
