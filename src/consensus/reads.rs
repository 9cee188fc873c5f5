//! Linearizable reads through Raft ReadIndex. Reads arriving together share one request;
//! raft-rs drops a ReadIndex silently when there is no leader (or the leader has not yet
//! committed in its term), so unconfirmed requests are re-issued, and each read fails once
//! it is older than the read timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use nexus_core::rpc::RpcError;

/// Re-issue a ReadIndex not confirmed within this time.
const RETRY_AFTER: Duration = Duration::from_millis(300);

pub struct ReadWaiter {
    reply: oneshot::Sender<Result<(), RpcError>>,
    since: Instant,
}

#[derive(Default)]
pub struct Reads {
    /// Not yet sent to raft.
    queued: Vec<ReadWaiter>,
    /// Sent, by request context: (waiters, when sent).
    issued: HashMap<Vec<u8>, (Vec<ReadWaiter>, Instant)>,
    /// Confirmed: answer once applied reaches the index.
    confirmed: Vec<(u64, Vec<ReadWaiter>)>,
    next_ctx: u64,
}

impl Reads {
    pub fn add(&mut self, reply: oneshot::Sender<Result<(), RpcError>>) {
        self.queued.push(ReadWaiter {
            reply,
            since: Instant::now(),
        });
    }

    /// The context for a new ReadIndex request covering every queued read, if any.
    pub fn take_request(&mut self) -> Option<Vec<u8>> {
        if self.queued.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx.to_be_bytes().to_vec();
        let waiters = std::mem::take(&mut self.queued);
        self.issued.insert(ctx.clone(), (waiters, Instant::now()));
        Some(ctx)
    }

    /// Raft confirmed the request `ctx` at commit index `index`.
    pub fn confirmed(&mut self, ctx: &[u8], index: u64) {
        if let Some((waiters, _)) = self.issued.remove(ctx) {
            self.confirmed.push((index, waiters));
        }
    }

    /// Answers the reads whose index is applied; re-queues stale requests; fails old reads.
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
        let stale: Vec<Vec<u8>> = self
            .issued
            .iter()
            .filter(|(_, (_, at))| at.elapsed() >= RETRY_AFTER)
            .map(|(ctx, _)| ctx.clone())
            .collect();
        for ctx in stale {
            if let Some((waiters, _)) = self.issued.remove(&ctx) {
                self.queued.extend(waiters);
            }
        }
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|w| w.since.elapsed() >= timeout);
        self.queued = kept;
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
            .chain(self.issued.drain().flat_map(|(_, (w, _))| w))
            .chain(self.confirmed.drain(..).flat_map(|(_, w)| w));
        for w in all {
            let _ = w.reply.send(Err(RpcError::internal(why)));
        }
    }
}
