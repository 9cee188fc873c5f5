//! Timings the Raft thread records, as Prometheus histograms (kept in `RaftStats`; the
//! server registers them on `/metrics`).

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Timings the Raft thread records (kept in `RaftStats`, registered here).
#[derive(Debug)]
pub struct RaftTimings {
    /// From a proposal to its outcome on this node.
    pub proposal_seconds: Histogram,
    /// One synced log write (entries and hard state, fsync'd).
    pub log_write_seconds: Histogram,
    /// Entries per synced log write (group commit).
    pub log_write_entries: Histogram,
    /// Copying, encoding and writing one state snapshot.
    pub snapshot_seconds: Histogram,
    pub snapshot_bytes: Gauge,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            proposal_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            log_write_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            log_write_entries: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            snapshot_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            snapshot_bytes: Gauge::default(),
        }
    }
}
