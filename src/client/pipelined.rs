//! A JSON-RPC client over one WebSocket with many requests in flight, for load generation:
//! answers matched by id, writes coalesced (every frame queued when the writer wakes goes
//! out in one flush). It is lean on purpose: the load generator shares the machine's cores
//! with the node it measures.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// One connection; cheap to clone (all clones share it). Lives on one current-thread
/// runtime (`Rc`).
#[derive(Clone)]
pub struct Client {
    out: mpsc::Sender<Message>,
    pending: Rc<RefCell<HashMap<u64, oneshot::Sender<String>>>>,
    next_id: Rc<Cell<u64>>,
}

/// The id of an answer; the rest of it is parsed by whoever waits for it.
#[derive(Deserialize)]
struct AnswerId {
    id: Option<u64>,
}

impl Client {
    /// Connects to `url` and logs in as `user`.
    pub async fn connect(url: &str, user: &str, pass: &str) -> anyhow::Result<Client> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut sink, mut stream) = ws.split();
        // Bounded: a publisher faster than the socket waits (no unbounded queue).
        let (out, mut queued) = mpsc::channel::<Message>(4096);
        let pending: Rc<RefCell<HashMap<u64, oneshot::Sender<String>>>> = Default::default();
        tokio::task::spawn_local(async move {
            while let Some(first) = queued.recv().await {
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(more) = queued.try_recv() {
                    if sink.feed(more).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let waiting = pending.clone();
        tokio::task::spawn_local(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let text = text.to_string();
                if let Ok(AnswerId { id: Some(id) }) = serde_json::from_str(&text) {
                    if let Some(tx) = waiting.borrow_mut().remove(&id) {
                        let _ = tx.send(text);
                    }
                }
            }
            // Connection gone: every waiter fails (its sender is dropped).
            waiting.borrow_mut().clear();
        });
        let c = Client {
            out,
            pending,
            next_id: Default::default(),
        };
        let r = c
            .call("sys.login", json!({"user": user, "pass": pass}))
            .await?;
        if r.get("error").is_some() {
            anyhow::bail!("login failed: {r}");
        }
        Ok(c)
    }

    /// Sends one request and waits for its answer (the whole JSON-RPC response).
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let text = self.call_text(method, &params).await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Like `call`, the answer left unparsed.
    pub async fn call_text(&self, method: &str, params: &Value) -> anyhow::Result<String> {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_text(req.to_string()).await?;
        rx.await
            .map_err(|_| anyhow::anyhow!("connection closed while waiting for {method}"))
    }

    /// Queues one serialised message (waits while 4096 are queued).
    pub async fn send_text(&self, text: String) -> anyhow::Result<()> {
        self.out
            .send(Message::text(text))
            .await
            .map_err(|_| anyhow::anyhow!("connection closed"))
    }
}
