//! Linearizable reads through Raft ReadIndex. Reads arriving together share one request;
//! raft-rs drops a ReadIndex silently when there is no leader (or the leader has not yet
//! committed in its term), so a request not confirmed in time is sent again, under the
//! same context: an answer to the first sending still counts, which matters on a node
//! whose turns are slower than the resend interval. Each read fails once it waited longer
//! than the read timeout without a confirmation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use nexus_core::rpc::RpcError;

/// Send a ReadIndex again when it is not confirmed within this time.
const RETRY_AFTER: Duration = Duration::from_millis(300);

pub struct ReadWaiter {
    reply: oneshot::Sender<Result<(), RpcError>>,
    since: Instant,
}

struct Issued {
    waiters: Vec<ReadWaiter>,
    sent: Instant,
}

pub struct Reads {
    /// Leads every context, so that requests of two nodes never share one: the leader
    /// keeps one pending request per context and drops a second with the same bytes.
    node: u64,
    /// Random per process start, after the node: an answer to a context of this node's
    /// previous run (queued in a peer link across the restart) matches no context of
    /// this one, so it cannot confirm a read at an index from before the read began.
    run: u64,
    /// Not yet sent to raft.
    queued: Vec<ReadWaiter>,
    /// Sent, by request context.
    issued: HashMap<Vec<u8>, Issued>,
    /// Confirmed: answer once applied reaches the index.
    confirmed: Vec<(u64, Vec<ReadWaiter>)>,
    next_ctx: u64,
}

impl Reads {
    pub fn new(node: u64) -> Self {
        Reads {
            node,
            run: rand::random(),
            queued: Vec::new(),
            issued: HashMap::new(),
            confirmed: Vec::new(),
            next_ctx: 0,
        }
    }

    pub fn add(&mut self, reply: oneshot::Sender<Result<(), RpcError>>) {
        self.queued.push(ReadWaiter {
            reply,
            since: Instant::now(),
        });
    }

    /// The contexts to send as ReadIndex requests now: a new one covering every queued
    /// read, and those sent before that are still unconfirmed after `RETRY_AFTER`.
    pub fn take_requests(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (ctx, issued) in &mut self.issued {
            if issued.sent.elapsed() >= RETRY_AFTER {
                issued.sent = Instant::now();
                out.push(ctx.clone());
            }
        }
        if !self.queued.is_empty() {
            self.next_ctx += 1;
            let mut ctx = self.node.to_be_bytes().to_vec();
            ctx.extend_from_slice(&self.run.to_be_bytes());
            ctx.extend_from_slice(&self.next_ctx.to_be_bytes());
            let waiters = std::mem::take(&mut self.queued);
            self.issued.insert(
                ctx.clone(),
                Issued {
                    waiters,
                    sent: Instant::now(),
                },
            );
            out.push(ctx);
        }
        out
    }

    /// Raft confirmed the request `ctx` at commit index `index`.
    pub fn confirmed(&mut self, ctx: &[u8], index: u64) {
        if let Some(issued) = self.issued.remove(ctx) {
            self.confirmed.push((index, issued.waiters));
        }
    }

    /// Answers the reads whose index is applied; fails reads unconfirmed past `timeout`.
    pub fn progress(&mut self, applied: u64, timeout: Duration) {
        let mut i = 0;
        while i < self.confirmed.len() {
            if self.confirmed[i].0 <= applied {
                for w in self.confirmed.swap_remove(i).1 {
                    let _ = w.reply.send(Ok(()));
                }
            } else {
                i += 1;
            }
        }
        let mut expired = Vec::new();
        self.issued.retain(|_, issued| {
            let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut issued.waiters)
                .into_iter()
                .partition(|w| w.since.elapsed() >= timeout);
            expired.extend(old);
            issued.waiters = kept;
            !issued.waiters.is_empty()
        });
        for w in expired {
            let _ = w.reply.send(Err(RpcError::internal(
                "no raft leader confirmed the read in time, retry",
            )));
        }
    }

    /// Fails every read (shutdown).
    pub fn fail_all(&mut self, why: &str) {
        let all = self
            .queued
            .drain(..)
            .chain(self.issued.drain().flat_map(|(_, i)| i.waiters))
            .chain(self.confirmed.drain(..).flat_map(|(_, w)| w));
        for w in all {
            let _ = w.reply.send(Err(RpcError::internal(why)));
        }
    }
}
