//! Formatting of times the state machine is handed (it never reads a clock).

/// RFC 3339 UTC with milliseconds for a Unix time in ms, e.g. `2016-08-31T09:44:16.316Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.min(i64::MAX as u64) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
