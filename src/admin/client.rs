//! A blocking JSON-RPC client for the admin CLI and the threaded benches: WebSocket
//! (`ws://`, `wss://`) or the raw TCP stream (`tcp://`, `ssl://`).

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// The byte stream to the node: TCP, or TLS over it.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One stream shared by the JSON reader and the writer of a `tcp://`/`ssl://` link (TLS
/// cannot be split in two; the client is used by one thread at a time, so the lock is
/// never contended).
#[derive(Clone)]
struct Shared(Arc<Mutex<Box<dyn Stream>>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Stream>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.lock().read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lock().flush()
    }
}

enum Link {
    Ws(Box<WebSocket<Box<dyn Stream>>>),
    Tcp {
        writer: Shared,
        reader: serde_json::StreamDeserializer<
            'static,
            serde_json::de::IoRead<BufReader<Shared>>,
            Value,
        >,
    },
}

/// A JSON-RPC error answered by the node.
#[derive(Debug)]
pub struct RpcFailure {
    pub code: i64,
    pub message: String,
}

impl std::fmt::Display for RpcFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcFailure {}

pub struct Client {
    link: Link,
    next_id: u64,
}

impl Client {
    /// Connects to `url` (`ws://host:port/path`, `wss://...`, `tcp://host:port` or
    /// `ssl://...`) within `timeout`; every later read and write gives up after
    /// `answer_timeout`. TLS certificates are checked against `ca` (PEM) when given, else
    /// against the system's roots.
    pub fn connect(
        url: &str,
        ca: Option<&Path>,
        timeout: Duration,
        answer_timeout: Duration,
    ) -> anyhow::Result<Client> {
        let parsed = url::Url::parse(url).with_context(|| format!("invalid URL {url:?}"))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow!("no host in {url}"))?;
        // An IPv6 address comes in brackets ([::1]).
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let (websocket, tls, default_port) = match parsed.scheme() {
            "ws" => (true, false, 80),
            "wss" => (true, true, 443),
            "tcp" => (false, false, 1717),
            "ssl" => (false, true, 1718),
            other => bail!("the CLI speaks ws://, wss://, tcp:// and ssl://, not {other}://"),
        };
        let tcp = dial(host, parsed.port().unwrap_or(default_port), timeout)?;
        // The same socket, to set the answer timeout once the handshakes are done.
        let socket = tcp.try_clone()?;
        let stream: Box<dyn Stream> = if tls {
            Box::new(tls_over(tcp, host, ca)?)
        } else {
            Box::new(tcp)
        };
        let link = if websocket {
            let (ws, _) = tungstenite::client(url, stream)
                .map_err(|e| anyhow!("WebSocket handshake with {url}: {e}"))?;
            Link::Ws(Box::new(ws))
        } else {
            let shared = Shared(Arc::new(Mutex::new(stream)));
            let reader = BufReader::new(shared.clone());
            Link::Tcp {
                writer: shared,
                reader: serde_json::Deserializer::from_reader(reader).into_iter(),
            }
        };
        socket.set_read_timeout(Some(answer_timeout))?;
        socket.set_write_timeout(Some(answer_timeout))?;
        Ok(Client { link, next_id: 0 })
    }

    /// Sends one request and waits for its answer: the result, or the node's error.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.send_request(method, params)?;
        loop {
            let answer = self.next_answer()?;
            // With one request in flight, an error the node could not tie to a request
            // (`"id": null`: unparsable or too large) is the answer to ours.
            let unmatched_error = answer.get("id") == Some(&Value::Null);
            if answer.get("id") != Some(&json!(id)) && !unmatched_error {
                continue;
            }
            if let Some(e) = answer.get("error") {
                return Err(RpcFailure {
                    code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_string(),
                }
                .into());
            }
            return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// Sends a request without waiting for its answer; returns its id. For several
    /// requests in flight (`next_answer` reads their answers as they come).
    pub fn send_request(&mut self, method: &str, params: Value) -> anyhow::Result<u64> {
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        let text = req.to_string();
        match &mut self.link {
            Link::Ws(ws) => ws
                .send(Message::text(text))
                .context("sending to the node")?,
            Link::Tcp { writer, .. } => writer
                .write_all(text.as_bytes())
                .context("sending to the node")?,
        }
        Ok(self.next_id)
    }

    /// The next answer the node sends, whole (`result` or `error`, and `id`).
    pub fn next_answer(&mut self) -> anyhow::Result<Value> {
        match &mut self.link {
            Link::Ws(ws) => loop {
                match ws.read().context("reading from the node")? {
                    Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                    Message::Close(_) => bail!("the node closed the connection"),
                    _ => continue,
                }
            },
            Link::Tcp { reader, .. } => match reader.next() {
                Some(v) => v.context("reading from the node"),
                None => bail!("the node closed the connection"),
            },
        }
    }
}

/// A TLS client stream over `tcp`, verifying the node's certificate for `host`.
fn tls_over(
    tcp: TcpStream,
    host: &str,
    ca: Option<&Path>,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs =
                crate::transport::tls::load_certs(path).map_err(|e| anyhow!("the CA file: {e}"))?;
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("no system root certificates found: name the node's CA with --ca FILE");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .with_context(|| format!("{host} is not a valid TLS server name"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tcp = tcp;
    // The handshake now, so that a certificate problem is reported as one.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .with_context(|| format!("TLS handshake with {host}"))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn dial(host: &str, port: u16, timeout: Duration) -> anyhow::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let addrs = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(anyhow!("connecting to {addr}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("{host} has no address")))
}
