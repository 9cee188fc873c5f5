//! A blocking JSON-RPC client for the admin CLI: WebSocket (`ws://`) or the raw TCP
//! stream (`tcp://`), one request at a time.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

enum Link {
    Ws(Box<WebSocket<MaybeTlsStream<TcpStream>>>),
    Tcp {
        writer: TcpStream,
        reader: serde_json::StreamDeserializer<
            'static,
            serde_json::de::IoRead<BufReader<TcpStream>>,
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
    /// Connects to `url` (`ws://host:port/path` or `tcp://host:port`); every read and
    /// write gives up after `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> anyhow::Result<Client> {
        let parsed = url::Url::parse(url).with_context(|| format!("invalid URL {url:?}"))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow!("no host in {url}"))?;
        let link = match parsed.scheme() {
            "ws" => {
                let port = parsed.port().unwrap_or(80);
                let stream = dial(host, port, timeout)?;
                let (ws, _) = tungstenite::client(url, MaybeTlsStream::Plain(stream))
                    .map_err(|e| anyhow!("WebSocket handshake with {url}: {e}"))?;
                Link::Ws(Box::new(ws))
            }
            "tcp" => {
                let port = parsed.port().unwrap_or(1717);
                let writer = dial(host, port, timeout)?;
                let reader = BufReader::new(writer.try_clone()?);
                Link::Tcp {
                    writer,
                    reader: serde_json::Deserializer::from_reader(reader).into_iter(),
                }
            }
            other => bail!(
                "the CLI speaks ws:// and tcp://, not {other}:// (reach TLS listeners through a local ws:// or tcp:// listener)"
            ),
        };
        Ok(Client { link, next_id: 0 })
    }

    /// Sends one request and waits for its answer: the result, or the node's error.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&req.to_string())?;
        loop {
            let answer = self.recv()?;
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

    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        match &mut self.link {
            Link::Ws(ws) => ws.send(Message::text(text)).context("sending to the node"),
            Link::Tcp { writer, .. } => writer
                .write_all(text.as_bytes())
                .context("sending to the node"),
        }
    }

    fn recv(&mut self) -> anyhow::Result<Value> {
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
