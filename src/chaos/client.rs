//! The chaos workload's view of a call: every call bounded by a deadline, so that a hang
//! is seen as a hang, and its outcome in the history's terms.

use std::net::SocketAddr;
use std::time::Duration;

use nexus_client::{CallError, Options};
use serde_json::{json, Value};

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

impl From<Result<Value, CallError>> for Answer {
    fn from(r: Result<Value, CallError>) -> Answer {
        match r {
            Ok(v) => Answer::Ok(v),
            Err(CallError::Rpc(e)) => Answer::Err(json!({"code": e.code, "message": e.message})),
            Err(CallError::Lost(why)) => Answer::Lost(why),
            Err(CallError::Hang) => Answer::Hang,
        }
    }
}

/// One WebSocket connection of the workload, logged in.
pub struct Client(nexus_client::Client);

impl Client {
    /// Connects to `addr` (`ws://addr/`) and logs in, all within `timeout`.
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        timeout: Duration,
    ) -> anyhow::Result<Client> {
        let opts = Options {
            ca: None,
            connect_timeout: timeout,
            answer_timeout: timeout,
        };
        let c = nexus_client::Client::login(&format!("ws://{addr}/"), &opts, user, pass)?;
        Ok(Client(c))
    }

    /// Sends one request and waits up to `deadline` for its answer.
    pub fn call(&mut self, method: &str, params: Value, deadline: Duration) -> Answer {
        self.0.call_within(method, params, deadline).into()
    }

    pub fn close(self) {
        self.0.close()
    }
}
