//! The wall clock the leader stamps into each entry (the cluster clock). The state machine
//! never reads a clock: it is handed that stamp.

/// Milliseconds since the Unix epoch on this node's wall clock (plus, in builds with the
/// `test-hooks` feature, the offset `--test-clock-offset-ms` that simulates a skewed host).
pub fn now_ms() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    #[cfg(feature = "test-hooks")]
    let wall = wall + OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed);
    wall.max(0) as u64
}

#[cfg(feature = "test-hooks")]
static OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Skews this process's wall clock (tests of clock independence only).
#[cfg(feature = "test-hooks")]
pub fn set_test_offset_ms(offset: i64) {
    OFFSET_MS.store(offset, std::sync::atomic::Ordering::Relaxed);
}

pub use nexus_core::time::rfc3339_ms;

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}
