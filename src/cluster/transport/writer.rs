//! Outbound: one writer task per peer, reconnecting with backoff.

use nexus_core::ids::RaftId;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{dial, Conn, Outbound, PeerEvent, Sending, Shared, SnapshotJob, WARN_EVERY};

pub(super) struct Writer {
    pub(super) to: RaftId,
    pub(super) shared: Arc<Shared>,
    pub(super) queue: mpsc::Receiver<Outbound>,
    pub(super) addr: watch::Receiver<String>,
    pub(super) connected: Arc<AtomicBool>,
    /// Snapshots waiting for the one being sent.
    pub(super) jobs: VecDeque<SnapshotJob>,
    pub(super) sending: Option<Sending>,
    /// Transfers begun on the current connection: they fail if it drops.
    pub(super) started: Vec<u64>,
    pub(super) failures: Failures,
}

/// Why the writer left a connection without an error.
pub(super) enum Exit {
    Reconnect,
    Stop,
}

impl Writer {
    pub(super) async fn run(mut self) {
        let mut backoff = self.shared.cfg.backoff_min;
        loop {
            let addr = self.addr.borrow_and_update().clone();
            match self.session(&addr).await {
                Ok(Exit::Stop) => return,
                Ok(Exit::Reconnect) => {
                    backoff = self.shared.cfg.backoff_min;
                    continue;
                }
                Err((e, was_connected)) => {
                    if was_connected {
                        backoff = self.shared.cfg.backoff_min;
                    }
                    self.failures
                        .failed(&self.shared, self.to, &addr, &e, was_connected);
                }
            }
            if !self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(self.shared.cfg.backoff_max);
        }
    }

    /// One connection: connect, then write until it fails. The error says whether the
    /// connection had been established.
    pub(super) async fn session(&mut self, addr: &str) -> Result<Exit, (anyhow::Error, bool)> {
        let mut conn = self.open(addr).await.map_err(|e| (e, false))?;
        conn.count_for(&self.shared, self.to);
        self.failures.recovered(self.to, addr);
        self.connected.store(true, Ordering::Release);
        let result = self.pump(&mut conn).await;
        self.connected.store(false, Ordering::Release);
        self.abandon_started();
        result.map_err(|e| (e, true))
    }

    pub(super) async fn open(&self, addr: &str) -> anyhow::Result<Conn> {
        let (conn, theirs) = dial(&self.shared, addr, false).await?;
        if RaftId(theirs.raft_id) != self.to {
            let found = theirs.raft_id;
            bail!("{addr} is raft id {found}, not {}", self.to);
        }
        Ok(conn)
    }

    /// Waits before reconnecting; an address change cuts the wait. False: stop.
    pub(super) async fn pause(&mut self, backoff: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => true,
            changed = self.addr.changed() => changed.is_ok(),
        }
    }

    /// Writes whatever is queued: all waiting frames first, then one snapshot chunk, then
    /// one flush; again until the connection fails or must be left.
    pub(super) async fn pump(&mut self, conn: &mut Conn) -> anyhow::Result<Exit> {
        loop {
            match self.addr.has_changed() {
                Ok(true) => return Ok(Exit::Reconnect),
                Ok(false) => {}
                Err(_) => return Ok(Exit::Stop),
            }
            if !self.has_snapshot_work() {
                let first = tokio::select! {
                    changed = self.addr.changed() => {
                        return Ok(if changed.is_ok() { Exit::Reconnect } else { Exit::Stop });
                    }
                    item = self.queue.recv() => match item {
                        Some(item) => item,
                        None => return Ok(Exit::Stop),
                    },
                    // The peer never writes on our stream: anything here means it is gone.
                    read = conn.recv_raw() => return Err(stream_lost(read)),
                };
                self.take(conn, first).await?;
            }
            while let Ok(item) = self.queue.try_recv() {
                self.take(conn, item).await?;
            }
            self.next_chunk(conn)?;
            conn.flush().await?;
        }
    }

    pub(super) async fn take(&mut self, conn: &mut Conn, item: Outbound) -> io::Result<()> {
        match item {
            Outbound::Frame(frame) => conn.feed_batched(&frame).await,
            Outbound::Snapshot(job) => {
                self.jobs.push_back(job);
                Ok(())
            }
        }
    }
}

pub(super) fn stream_lost(read: io::Result<Option<BytesMut>>) -> anyhow::Error {
    match read {
        Ok(None) => anyhow!("the peer closed the connection"),
        Ok(Some(_)) => anyhow!("the peer wrote on our outbound stream"),
        Err(e) => anyhow!("reading the connection: {e}"),
    }
}

/// One failure episode of a peer's stream: Unreachable once, warnings at most every
/// `WARN_EVERY`.
#[derive(Default)]
pub(super) struct Failures {
    pub(super) count: u64,
    pub(super) reported: bool,
    /// Kept across episodes, so a flapping peer does not flood the log either.
    pub(super) last_warn: Option<Instant>,
}

impl Failures {
    pub(super) fn failed(
        &mut self,
        shared: &Shared,
        to: RaftId,
        addr: &str,
        e: &anyhow::Error,
        lost: bool,
    ) {
        self.count += 1;
        if !self.reported {
            self.reported = true;
            shared.emit(PeerEvent::Unreachable { to });
        }
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warn = Some(Instant::now());
            let n = self.count;
            if lost {
                warn!("lost the connection to cluster peer {to} at {addr}: {e:#}");
            } else {
                warn!("cluster peer {to} at {addr} unreachable ({n} failed attempts): {e:#}");
            }
        }
    }

    pub(super) fn recovered(&mut self, to: RaftId, addr: &str) {
        if self.count > 0 {
            info!("connected to cluster peer {to} at {addr}");
        }
        self.count = 0;
        self.reported = false;
    }
}
