//! Deliveries to pipes that live on other nodes, over the peer transport: `pipe.write`
//! (answered: the owner knows whether the pipe exists) and topic publishes (one frame per
//! node with subscribers, unanswered). Frames to one node share one ordered stream, so a
//! client's writes and publishes reach each pipe in the order it sent them. Also asks
//! other nodes to confirm they applied the log up to an index (`await_applied`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use super::transport::{SendError, Transport};
use nexus_core::ids::{PipeId, RaftId};
use nexus_core::proto::{frame, AwaitApplied, Frame, PipeWrite, RoutedAnswer, TopicDelivery};
use nexus_core::rpc::{RpcError, ERR_INVALID_PIPE};

pub struct Router {
    transport: Transport,
    next_request: AtomicU64,
    /// Pipe writes waiting for their owner's answer, by request id.
    pending: Mutex<HashMap<u64, oneshot::Sender<i64>>>,
    /// How long a routed write waits for its answer.
    timeout: Duration,
}

/// Why a routed request has no answer.
enum Unanswered {
    UnknownPeer,
    TooLarge(usize),
    NotSent(SendError),
    /// The request was dropped before its answer (the router forgot it).
    Gone,
    TimedOut,
}

struct Pending<'a> {
    router: &'a Router,
    request_id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(&self.router.pending).remove(&self.request_id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serialises")
}

impl Router {
    pub fn new(transport: Transport, timeout: Duration) -> Router {
        Router {
            transport,
            next_request: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Writes `msgs` into pipe `pipeid` of member `to` (no messages: only checks that the
    /// pipe exists). -32003 when the owner says there is no such pipe or cannot be reached.
    pub async fn write_pipe(
        &self,
        to: RaftId,
        pipeid: &PipeId,
        msgs: &[Value],
    ) -> Result<(), RpcError> {
        let msgs_json = msgs.iter().map(json_bytes).collect();
        let answer = self.request(to, |request_id| {
            frame::Body::PipeWrite(PipeWrite {
                request_id,
                pipeid: pipeid.to_string(),
                msgs_json,
            })
        });
        match answer.await {
            Ok(0) => Ok(()),
            Ok(code) => Err(RpcError::new(code)),
            Err(Unanswered::UnknownPeer | Unanswered::Gone) => Err(RpcError::new(ERR_INVALID_PIPE)),
            Err(Unanswered::TooLarge(max)) => Err(RpcError::invalid_param_because(
                "msg",
                format!("larger than the {max} bytes a peer frame may carry"),
            )),
            Err(Unanswered::NotSent(e)) => Err(RpcError::internal(format!("{e}, retry"))),
            Err(Unanswered::TimedOut) => Err(RpcError::internal(format!(
                "the node owning the pipe did not answer within {:?}, retry",
                self.timeout
            ))),
        }
    }

    /// Waits until member `to` says it has applied the log up to `index`; false when it
    /// did not within the route timeout (or cannot be reached).
    pub async fn await_applied(&self, to: RaftId, index: u64) -> bool {
        let answer = self.request(to, |request_id| {
            frame::Body::AwaitApplied(AwaitApplied { request_id, index })
        });
        matches!(answer.await, Ok(0))
    }

    /// Sends the frame `body(request_id)` to member `to` and waits (at most the route
    /// timeout) for its answer's error code.
    async fn request(
        &self,
        to: RaftId,
        body: impl FnOnce(u64) -> frame::Body,
    ) -> Result<i64, Unanswered> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(request_id, tx);
        // Unregisters the request however this ends (answered, timed out, or the caller
        // gone: its session closed).
        let _pending = Pending {
            router: self,
            request_id,
        };
        let frame = Frame {
            body: Some(body(request_id)),
        };
        match self.transport.send(to, frame) {
            Ok(()) => {}
            Err(SendError::UnknownPeer(_)) => return Err(Unanswered::UnknownPeer),
            Err(SendError::TooLarge { max, .. }) => return Err(Unanswered::TooLarge(max)),
            Err(e) => return Err(Unanswered::NotSent(e)),
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(code)) => Ok(code),
            Ok(Err(_)) => Err(Unanswered::Gone),
            Err(_) => Err(Unanswered::TimedOut),
        }
    }

    /// How long a routed request waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one publish to member `to` for its pipes `pipeids`.
    pub fn deliver_topic(&self, to: RaftId, pipeids: Vec<PipeId>, envelope: &Value) {
        let frame = Frame {
            body: Some(frame::Body::TopicDelivery(TopicDelivery {
                pipeids: pipeids.into_iter().map(String::from).collect(),
                envelope_json: json_bytes(envelope),
            })),
        };
        // A full queue or an unknown peer drops the delivery, as a full pipe would.
        let _ = self.transport.send(to, frame);
    }

    /// Answers a request (pipe write, applied wait) that member `to` asked of this node.
    pub fn answer(&self, to: RaftId, request_id: u64, error_code: i64) {
        let frame = Frame {
            body: Some(frame::Body::RoutedAnswer(RoutedAnswer {
                request_id,
                error_code,
            })),
        };
        let _ = self.transport.send(to, frame);
    }

    /// A member's answer to one of our requests.
    pub fn on_result(&self, r: RoutedAnswer) {
        if let Some(tx) = lock(&self.pending).remove(&r.request_id) {
            let _ = tx.send(r.error_code);
        }
    }
}
