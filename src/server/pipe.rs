//! The Pipe actor: an ephemeral bounded mailbox owned by one connection. Writes past the
//! capacity are dropped and counted; reads wait (with an optional timeout) until something
//! is there.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const DEFAULT_LEN: i64 = 1000;
pub const MAX_LEN: i64 = 100_000;

/// Capacity from `pipe.create`'s `len`: ≤ 0 → default, above the maximum → the maximum.
pub fn capacity(len: Option<i64>) -> usize {
    match len {
        None => DEFAULT_LEN as usize,
        Some(n) if n <= 0 => DEFAULT_LEN as usize,
        Some(n) => n.min(MAX_LEN) as usize,
    }
}

/// Roughly the memory a message takes: its strings and keys plus a word per value.
pub fn approx_size(v: &Value) -> usize {
    8 + match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(approx_size).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + approx_size(v)).sum(),
        _ => 0,
    }
}

struct Reader {
    id: u64,
    max: usize,
    tx: oneshot::Sender<Value>,
    /// The read's timeout, cancelled when the read is served first.
    timer: Option<SpawnHandle>,
}

/// Messages on their way into one pipe. Writers (publishes, `pipe.write`, routed frames)
/// append under a lock and message the actor only when no flush is already scheduled: under
/// load the actor takes many messages per wake-up instead of one actor message each.
#[derive(Default)]
pub struct Inbox {
    /// (messages in write order, whether a `Flush` is on its way to the actor)
    pending: Mutex<(Vec<Value>, bool)>,
}

impl Inbox {
    /// Appends `msgs` in order; true when the caller must send the actor a `Flush`.
    pub fn push(&self, msgs: impl IntoIterator<Item = Value>) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.0.extend(msgs);
        !std::mem::replace(&mut p.1, true)
    }

    fn take(&self) -> Vec<Value> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.1 = false;
        std::mem::take(&mut p.0)
    }
}

pub struct Pipe {
    inbox: Arc<Inbox>,
    cap: usize,
    /// Budget for the queued messages' (estimated) size: a pipe nobody reads holds at most
    /// this much, whatever the messages' count.
    max_bytes: usize,
    bytes: usize,
    /// (message, sequence number, its estimated size)
    queue: VecDeque<(Value, u64, usize)>,
    /// Sequence number of the last message written (dropped ones included).
    count: u64,
    drops: u64,
    /// The node's count of drops at every pipe (a metric).
    drops_total: prometheus_client::metrics::counter::Counter,
    readers: VecDeque<Reader>,
    next_reader: u64,
}

impl Pipe {
    pub fn new(
        cap: usize,
        max_bytes: usize,
        inbox: Arc<Inbox>,
        drops_total: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Pipe {
            inbox,
            cap,
            max_bytes,
            bytes: 0,
            queue: VecDeque::new(),
            count: 0,
            drops: 0,
            drops_total,
            readers: VecDeque::new(),
            next_reader: 0,
        }
    }

    /// Takes up to `max` messages; resets the drop counter.
    fn take(&mut self, max: usize) -> Value {
        let n = max.min(self.queue.len());
        let msgs: Vec<Value> = self
            .queue
            .drain(..n)
            .map(|(msg, count, size)| {
                self.bytes -= size;
                json!({"msg": msg, "count": count})
            })
            .collect();
        let drops = std::mem::take(&mut self.drops);
        json!({"msgs": msgs, "waiting": self.queue.len(), "drops": drops})
    }

    /// Serves waiting readers while there are messages.
    fn serve(&mut self, ctx: &mut Context<Self>) {
        while !self.queue.is_empty() {
            let Some(reader) = self.readers.pop_front() else {
                return;
            };
            if let Some(timer) = reader.timer {
                ctx.cancel_future(timer);
            }
            if reader.tx.is_closed() {
                continue; // its connection is gone
            }
            let answer = self.take(reader.max);
            let _ = reader.tx.send(answer);
        }
    }
}

impl Actor for Pipe {
    type Context = Context<Self>;
}

/// Takes in everything waiting in the pipe's `Inbox`, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for Pipe {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        for m in self.inbox.take() {
            self.count += 1;
            let size = approx_size(&m);
            if self.queue.len() >= self.cap || self.bytes + size > self.max_bytes {
                self.drops += 1;
                self.drops_total.inc();
            } else {
                self.bytes += size;
                self.queue.push_back((m, self.count, size));
            }
        }
        self.serve(ctx);
    }
}

/// Reads up to `max` messages, waiting up to `timeout` (forever when `None`).
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<Value>")]
pub struct Read {
    pub max: usize,
    pub timeout: Option<Duration>,
}

impl Handler<Read> for Pipe {
    type Result = MessageResult<Read>;

    fn handle(&mut self, msg: Read, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let max = msg.max.max(1);
        if !self.queue.is_empty() && self.readers.is_empty() {
            let _ = tx.send(self.take(max));
            return MessageResult(rx);
        }
        self.next_reader += 1;
        let id = self.next_reader;
        let timer = msg.timeout.map(|timeout| {
            ctx.run_later(timeout, move |pipe, _| {
                if let Some(pos) = pipe.readers.iter().position(|r| r.id == id) {
                    if let Some(reader) = pipe.readers.remove(pos) {
                        let answer = pipe.take(0);
                        let _ = reader.tx.send(answer);
                    }
                }
            })
        });
        self.readers.push_back(Reader { id, max, tx, timer });
        self.serve(ctx);
        MessageResult(rx)
    }
}

/// Closes the pipe: pending reads end, later messages to it fail.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for Pipe {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
