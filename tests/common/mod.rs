//! Test support: real nodes on loopback ports with temp data dirs, and small clients for
//! each transport. Nothing here fakes a part of the server.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nexus_server::config::{Scheme, ServeArgs};
use nexus_server::server::Background;
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
    /// `nexus serve`'s arguments, parsed as the binary parses them.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }
    let mut argv = vec![
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
    <Serve as clap::Parser>::parse_from(argv).args
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
pub type Err = nexus_client::RpcError;

pub type Answer = Result<Value, Err>;

pub fn answer_of(resp: &Value) -> Answer {
    nexus_client::answer_of(resp)
}

/// The one JSON-RPC client (`nexus_client`) over plain TCP, as the tests use it: a lost
/// connection or a missing answer fails the test, and every answer must end with CRLF.
pub struct Client {
    inner: nexus_client::Client,
    /// The socket under the client, for tests that write or shut it down themselves.
    pub stream: TcpStream,
}

impl Client {
    pub fn tcp(addr: SocketAddr) -> Client {
        let inner = nexus_client::Client::connect(&format!("tcp://{addr}"), &Default::default())
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e:#}"));
        let stream = inner.socket().unwrap();
        Client { inner, stream }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next answer line, parsed; `None` when the server closed the connection.
    pub fn read_value(&mut self) -> Option<Value> {
        match self.inner.next_text() {
            Ok(line) => {
                assert!(line.ends_with("\r\n"), "answers end with CRLF: {line:?}");
                Some(serde_json::from_str(&line).unwrap())
            }
            Err(nexus_client::CallError::Lost(_)) => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Sends a request and returns its id.
    pub fn send(&mut self, method: &str, params: Value) -> Value {
        json!(self.inner.send_request(method, params).expect("send"))
    }

    /// Waits for the answer with `id`, keeping others for later.
    pub fn wait(&mut self, id: &Value) -> Value {
        let id = id.as_u64().expect("an id from send");
        self.inner
            .wait_answer(id)
            .unwrap_or_else(|e| panic!("waiting for answer {id}: {e}"))
    }

    pub fn call(&mut self, method: &str, params: Value) -> Answer {
        match self.inner.call(method, params) {
            Ok(v) => Ok(v),
            Err(nexus_client::CallError::Rpc(e)) => Err(e),
            Err(e) => panic!("{method}: {e}"),
        }
    }

    pub fn login(&mut self, user: &str, pass: &str) -> Answer {
        self.call("sys.login", json!({"user": user, "pass": pass}))
    }

    /// True when the server closes the connection within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.inner.closed_within(within)
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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in extra_headers {
        request = request.header(*k, *v);
    }
    let mut response = agent
        .run(request.body(body.to_vec()).unwrap())
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    (response.status().as_u16(), headers, body)
}

/// The status `GET /` answers on `addr` within half a second; 0 when none comes.
pub fn http_status(addr: SocketAddr) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(500)))
        .build()
        .into();
    agent
        .get(format!("http://{addr}/"))
        .call()
        .map_or(0, |r| r.status().as_u16())
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

/// The commit a build of this checkout records (`git rev-parse --short=12 HEAD`), or
/// `unknown` outside a git checkout, as the build script does.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}
