//! A blocking JSON-RPC client over WebSocket for the chaos workload: one request at a
//! time, every call bounded by a deadline so a hang is seen as a hang.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How one call ended.
#[derive(Debug, Clone)]
pub enum Answer {
    Ok(Value),
    /// A JSON-RPC error object.
    Err(Value),
    /// The connection broke (or was closed) before the answer came.
    Lost(String),
    /// No answer within the deadline; the connection is given up.
    Hang,
}

impl Answer {
    pub fn code(&self) -> Option<i64> {
        match self {
            Answer::Err(e) => e.get("code").and_then(Value::as_i64),
            _ => None,
        }
    }
}

pub struct Client {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Client {
    /// Connects to `addr` (`ws://addr/`) and logs in, all within `timeout`.
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{addr}/");
        let (ws, _) = tungstenite::client(url.as_str(), MaybeTlsStream::Plain(stream))
            .map_err(|e| anyhow::anyhow!("websocket handshake with {addr}: {e}"))?;
        let mut client = Client { ws, next_id: 0 };
        match client.call("sys.login", json!({"user": user, "pass": pass}), timeout) {
            Answer::Ok(_) => Ok(client),
            other => anyhow::bail!("login on {addr}: {other:?}"),
        }
    }

    /// Sends one request and waits up to `deadline` for its answer.
    pub fn call(&mut self, method: &str, params: Value, deadline: Duration) -> Answer {
        self.next_id += 1;
        let id = self.next_id;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            let _ = s.set_read_timeout(Some(deadline));
        }
        if let Err(e) = self.ws.send(Message::text(req.to_string())) {
            return lost(e);
        }
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        return Answer::Lost(format!("unparsable answer: {t}"));
                    };
                    if v.get("id") != Some(&json!(id)) {
                        continue; // an answer to an earlier call given up on
                    }
                    if let Some(e) = v.get("error") {
                        return Answer::Err(e.clone());
                    }
                    return Answer::Ok(v.get("result").cloned().unwrap_or(Value::Null));
                }
                Ok(Message::Close(frame)) => {
                    return Answer::Lost(format!("closed by the node: {frame:?}"))
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Answer::Hang
                }
                Err(e) => return lost(e),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

fn lost(e: tungstenite::Error) -> Answer {
    Answer::Lost(e.to_string())
}
