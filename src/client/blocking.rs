//! A blocking JSON-RPC client: one connection, used by one thread at a time. Requests are
//! answered in turn (`call`), or several are in flight and their answers matched by id
//! (`send_request`, `wait_answer`).

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::{answer_of, CallError};

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// The CA (PEM) that signed the node's certificate; the system's roots when `None`.
    pub ca: Option<PathBuf>,
    /// For the TCP connect and the TLS and WebSocket handshakes.
    pub connect_timeout: Duration,
    /// How long a call waits for its answer (`call_within` chooses its own).
    pub answer_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ca: None,
            connect_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(20),
        }
    }
}

/// The byte stream to the node: TCP, or TLS over it.
/// A byte stream over one TCP socket, plain or TLS; the socket itself is reached through
/// it (for timeouts), so a client holds one file, not a second handle to the same socket.
trait Stream: Read + Write + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Stream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// One stream shared by the line reader and the writer of a `tcp://`/`ssl://` link (TLS
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
    /// The node ends every answer on the stream with CRLF.
    Stream {
        writer: Shared,
        reader: BufReader<Shared>,
    },
}

pub struct Client {
    link: Link,
    answer_timeout: Duration,
    next_id: u64,
    /// Answers read while waiting for another.
    early: HashMap<u64, Value>,
    /// Requests whose caller stopped waiting.
    abandoned: HashSet<u64>,
    /// The last error the node could not tie to a request.
    unmatched: Option<Value>,
}

impl Client {
    /// Connects to `url`: `ws://host:port/path`, `wss://...`, `tcp://host:port` or
    /// `ssl://...`.
    pub fn connect(url: &str, opts: &Options) -> anyhow::Result<Client> {
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
            other => bail!("a node speaks ws://, wss://, tcp:// and ssl://, not {other}://"),
        };
        let tcp = dial(
            host,
            parsed.port().unwrap_or(default_port),
            opts.connect_timeout,
        )?;
        tcp.set_read_timeout(Some(opts.answer_timeout))?;
        tcp.set_write_timeout(Some(opts.answer_timeout))?;
        let stream: Box<dyn Stream> = if tls {
            Box::new(crate::tls::over(tcp, host, opts.ca.as_deref())?)
        } else {
            Box::new(tcp)
        };
        let link = if websocket {
            let (ws, _) = tungstenite::client(url, stream)
                .map_err(|e| anyhow!("WebSocket handshake with {url}: {e}"))?;
            Link::Ws(Box::new(ws))
        } else {
            let shared = Shared(Arc::new(Mutex::new(stream)));
            Link::Stream {
                reader: BufReader::new(shared.clone()),
                writer: shared,
            }
        };
        Ok(Client {
            link,
            answer_timeout: opts.answer_timeout,
            next_id: 0,
            early: HashMap::new(),
            abandoned: HashSet::new(),
            unmatched: None,
        })
    }

    /// Connects and logs in as `user`.
    pub fn login(url: &str, opts: &Options, user: &str, pass: &str) -> anyhow::Result<Client> {
        let mut c = Client::connect(url, opts)?;
        c.call("sys.login", json!({"user": user, "pass": pass}))
            .with_context(|| format!("login on {url}"))?;
        Ok(c)
    }

    /// Sends one request and waits for its answer: the result, or why there is none.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        self.call_within(method, params, self.answer_timeout)
    }

    /// Like `call`, waiting at most `deadline` for the answer.
    pub fn call_within(
        &mut self,
        method: &str,
        params: Value,
        deadline: Duration,
    ) -> Result<Value, CallError> {
        let id = self.send_request(method, params)?;
        self.set_read_timeout(deadline);
        let answer = self.wait_answer(id);
        self.set_read_timeout(self.answer_timeout);
        if answer == Err(CallError::Hang) {
            // Its answer, should it come later, is dropped.
            self.abandoned.insert(id);
        }
        answer_of(&answer?).map_err(CallError::Rpc)
    }

    /// Sends a request without waiting for its answer; returns its id.
    pub fn send_request(&mut self, method: &str, params: Value) -> Result<u64, CallError> {
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        self.send_text(req.to_string())?;
        Ok(self.next_id)
    }

    /// Sends text as it is: one WebSocket message, or bytes on the stream.
    pub fn send_text(&mut self, text: String) -> Result<(), CallError> {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::text(text)).map_err(ws_error),
            Link::Stream { writer, .. } => writer.write_all(text.as_bytes()).map_err(io_error),
        }
    }

    /// The whole answer (`result` or `error`, and `id`) to the request `id`; answers to
    /// other requests are kept for their turn. An error the node could not tie to a
    /// request (`"id": null`: unparsable or too large) is kept too: when the node then
    /// closes the connection or goes silent, that error is the answer.
    pub fn wait_answer(&mut self, id: u64) -> Result<Value, CallError> {
        if let Some(v) = self.early.remove(&id) {
            return Ok(v);
        }
        self.unmatched = None;
        loop {
            let answer = match self.next_answer() {
                Ok(answer) => answer,
                Err(e) => return self.unmatched.take().ok_or(e),
            };
            match answer.get("id") {
                Some(Value::Null) => self.unmatched = Some(answer),
                Some(got) => match got.as_u64() {
                    Some(got) if got == id => return Ok(answer),
                    Some(other) if !self.abandoned.remove(&other) => {
                        self.early.insert(other, answer);
                    }
                    _ => {}
                },
                None => {}
            }
        }
    }

    /// The next answer the node sends, whole, whichever request it answers.
    pub fn next_answer(&mut self) -> Result<Value, CallError> {
        let text = self.next_text()?;
        serde_json::from_str(&text)
            .map_err(|e| CallError::Lost(format!("unparsable answer {text:?}: {e}")))
    }

    /// The next answer as the node sent it: a WebSocket message, or a line of the stream
    /// with its CRLF.
    pub fn next_text(&mut self) -> Result<String, CallError> {
        match &mut self.link {
            Link::Ws(ws) => loop {
                match ws.read().map_err(ws_error)? {
                    Message::Text(t) => return Ok(t.to_string()),
                    Message::Close(frame) => {
                        return Err(CallError::Lost(format!("closed by the node: {frame:?}")))
                    }
                    _ => continue,
                }
            },
            Link::Stream { reader, .. } => {
                let mut line = String::new();
                match reader.read_line(&mut line).map_err(io_error)? {
                    0 => Err(CallError::Lost("closed by the node".into())),
                    _ => Ok(line),
                }
            }
        }
    }

    /// True when the node closes the connection within `within` (what it sends meanwhile
    /// is read and dropped).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.set_read_timeout(within);
        let closed = loop {
            match self.next_text() {
                Ok(_) => continue,
                Err(CallError::Lost(_)) => break true,
                Err(_) => break false,
            }
        };
        self.set_read_timeout(self.answer_timeout);
        closed
    }

    fn set_read_timeout(&self, timeout: Duration) {
        let _ = match &self.link {
            Link::Ws(ws) => ws.get_ref().tcp().set_read_timeout(Some(timeout)),
            Link::Stream { writer, .. } => writer.lock().tcp().set_read_timeout(Some(timeout)),
        };
    }

    /// A second handle to the TCP socket under the link (for its address, or to shut it
    /// down).
    pub fn socket(&self) -> io::Result<TcpStream> {
        match &self.link {
            Link::Ws(ws) => ws.get_ref().tcp().try_clone(),
            Link::Stream { writer, .. } => writer.lock().tcp().try_clone(),
        }
    }

    /// Closes the connection politely (a WebSocket close frame).
    pub fn close(mut self) {
        if let Link::Ws(ws) = &mut self.link {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }
}

fn io_error(e: io::Error) -> CallError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::Hang,
        _ => CallError::Lost(e.to_string()),
    }
}

fn ws_error(e: tungstenite::Error) -> CallError {
    match e {
        tungstenite::Error::Io(e) => io_error(e),
        e => CallError::Lost(e.to_string()),
    }
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
