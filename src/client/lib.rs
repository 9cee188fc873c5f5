//! The one JSON-RPC client of Nexus-rs, for the admin CLI, the bench, the chaos harness and
//! the tests. It speaks to a node over `tcp://`, `ssl://`, `ws://` and `wss://`.
//!
//! - `blocking::Client`: one connection used by one thread, requests answered in turn (or
//!   several in flight, answers matched by id).
//! - `pipelined::Client`: one WebSocket on a current-thread tokio runtime with many
//!   requests in flight, for load generation.

pub mod blocking;
pub mod pipelined;
mod tls;

pub use blocking::{Client, Options};

/// A JSON-RPC error answered by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// How a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The node answered with an error.
    Rpc(RpcError),
    /// The connection broke or was closed before the answer came.
    Lost(String),
    /// No answer within the deadline.
    Hang,
}

impl CallError {
    /// The JSON-RPC error code, when the node answered with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            CallError::Rpc(e) => Some(e.code),
            _ => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Rpc(e) => e.fmt(f),
            CallError::Lost(why) => write!(f, "connection lost: {why}"),
            CallError::Hang => write!(f, "no answer in time"),
        }
    }
}

impl std::error::Error for CallError {}

/// The `result` of a whole JSON-RPC response, or its `error`.
pub fn answer_of(response: &serde_json::Value) -> Result<serde_json::Value, RpcError> {
    match response.get("error") {
        Some(e) => Err(RpcError {
            code: e
                .get("code")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0),
            message: e
                .get("message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }),
        None => Ok(response
            .get("result")
            .cloned()
            .unwrap_or(serde_json::Value::Null)),
    }
}
