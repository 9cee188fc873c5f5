//! Time helpers shared by the state machine and the node. The state machine never reads a
//! clock: it is handed the cluster clock (leader-stamped ms) inside each entry.

/// Milliseconds since the Unix epoch on this node's wall clock, plus the test-only offset
/// (`--test-clock-offset-ms`) that simulates a skewed host.
pub fn now_ms() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (wall + OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)).max(0) as u64
}

static OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Skews this process's wall clock (tests of clock independence only).
pub fn set_test_offset_ms(offset: i64) {
    OFFSET_MS.store(offset, std::sync::atomic::Ordering::Relaxed);
}

/// RFC 3339 UTC with milliseconds for a Unix time in ms, e.g. `2016-08-31T09:44:16.316Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.min(i64::MAX as u64) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

/// `n` random lowercase hex chars.
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n.div_ceil(2)).map(|_| rand::random::<u8>()).collect();
    let mut s = hex::encode(bytes);
    s.truncate(n);
    s
}
