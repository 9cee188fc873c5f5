//! When the driver writes a state snapshot (which also compacts the log): every
//! `snapshot_every` applied entries once the log has grown in proportion to the state, or
//! when raft needs one for a peer. The copy of the state is made on the Raft thread;
//! encoding and writing it happen on a helper thread, one snapshot at a time.

use std::sync::atomic::Ordering;
use std::time::Instant;

use nexus_core::state::State;
use tracing::debug;

use crate::store::{RaftStorage, StoreError};
use crate::{RaftConfig, RaftStats};

/// A snapshot is taken at the latest after this many times `snapshot_every` entries.
const SNAPSHOT_OVERDUE_FACTOR: u64 = 20;

pub(super) struct Snapshotter {
    /// Index of the last snapshot written or installed.
    last: u64,
    /// Size of the last snapshot, and the bytes of log applied since: a new snapshot
    /// waits until the log has grown in proportion to the state it rewrites.
    last_bytes: u64,
    log_bytes_since: u64,
    /// The snapshot being encoded and written off this thread.
    writing: Option<Writing>,
}

/// A snapshot being encoded and written off the Raft thread.
struct Writing {
    index: u64,
    began: Instant,
    writer: std::thread::JoinHandle<Result<u64, StoreError>>,
}

impl Snapshotter {
    /// After a start from the stored snapshot at `index`, of `bytes`.
    pub(super) fn new(index: u64, bytes: u64) -> Self {
        Snapshotter {
            last: index,
            last_bytes: bytes,
            log_bytes_since: 0,
            writing: None,
        }
    }

    /// An entry of `bytes` was applied.
    pub(super) fn applied(&mut self, bytes: u64) {
        self.log_bytes_since += bytes;
    }

    /// The state was replaced by the leader's snapshot at `index`, of `bytes`.
    pub(super) fn installed(&mut self, index: u64, bytes: u64) {
        self.last = index;
        self.last_bytes = bytes;
        self.log_bytes_since = 0;
    }

    pub(super) fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Starts writing a snapshot of the state at `applied` when one is due or `wanted`
    /// (raft needs one for a peer whose conf state the stored one lacks). `copy` takes the
    /// state as of `applied`.
    pub(super) fn maybe_start(
        &mut self,
        applied: u64,
        wanted: bool,
        cfg: &RaftConfig,
        storage: &RaftStorage,
        copy: impl FnOnce() -> State,
    ) -> Result<(), StoreError> {
        // A snapshot rewrites the whole state: taken only once the log since the last one
        // is at least `snapshot_log_percent` of that state's size, its cost per command
        // stays flat however large the state (a deep queue) grows.
        let log_grown = self.log_bytes_since.saturating_mul(100)
            >= self.last_bytes.saturating_mul(cfg.snapshot_log_percent);
        // Whatever the sizes, the log never grows past this many entries (a state that
        // was large and has shrunk must not hold its log at the old size for ever).
        let overdue =
            applied >= self.last + cfg.snapshot_every.saturating_mul(SNAPSHOT_OVERDUE_FACTOR);
        let due = applied >= self.last + cfg.snapshot_every && log_grown;
        if !due && !overdue && !wanted {
            return Ok(());
        }
        // The state and the membership as of `applied`, taken together on this thread.
        let began = Instant::now();
        let copy = copy();
        let conf_state = storage.conf_state();
        let storage = storage.clone();
        let retain = cfg.log_retain;
        let writer = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let data = copy.to_snapshot();
                let bytes = data.len() as u64;
                storage.compact_to_snapshot(applied, conf_state, data, retain)?;
                Ok(bytes)
            })
            .map_err(|e| StoreError::Corrupt("snapshot thread", e.to_string()))?;
        self.writing = Some(Writing {
            index: applied,
            began,
            writer,
        });
        self.log_bytes_since = 0;
        Ok(())
    }

    /// Collects the snapshot written in the background once it is done (or, with `wait`,
    /// waits for it).
    pub(super) fn finish(&mut self, wait: bool, stats: &RaftStats) -> Result<(), StoreError> {
        match &self.writing {
            Some(s) if wait || s.writer.is_finished() => {}
            _ => return Ok(()),
        }
        let Writing {
            index,
            began,
            writer,
        } = self.writing.take().expect("checked above");
        let bytes = writer
            .join()
            .map_err(|_| StoreError::Corrupt("snapshot thread", "panicked".into()))??;
        self.last = self.last.max(index);
        self.last_bytes = bytes;
        let t = &stats.timings;
        t.snapshot_seconds.observe(began.elapsed().as_secs_f64());
        t.snapshot_bytes.set(bytes as i64);
        stats.snapshots.fetch_add(1, Ordering::Relaxed);
        debug!(index, "state snapshot written, log compacted");
        Ok(())
    }
}
