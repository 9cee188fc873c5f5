//! A check of RocksDB's write-ahead log files, read by us after RocksDB replayed them.
//!
//! RocksDB passes over a record whose length runs past the end of the file: that is how a
//! write cut short by a crash looks. A flipped bit that enlarges a record's length field
//! looks the same, and RocksDB then drops that record and every one after it without a
//! word. Here the two are told apart: after a write cut short nothing valid follows, while
//! after a damaged length field whole records with good checksums do.
//!
//! The format (RocksDB's `db/log_format.h`): 32 KiB blocks of records, each with a 7-byte
//! header (masked CRC32C of type and payload, little-endian length, type); a record never
//! crosses a block, and a block's last 6 bytes or fewer are zero padding.

use std::path::Path;

const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;
/// Full, first, middle and last fragments (the recyclable types are not used).
const TYPES: std::ops::RangeInclusive<u8> = 1..=4;

/// RocksDB's masked CRC of a record: CRC32C over the type byte and the payload.
fn masked_crc(kind: u8, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// The record starting at `pos`, if it is whole and its checksum holds: its end.
fn record_at(bytes: &[u8], pos: usize) -> Option<usize> {
    let left_in_block = BLOCK - pos % BLOCK;
    if left_in_block < HEADER || pos + HEADER > bytes.len() {
        return None;
    }
    let h = &bytes[pos..pos + HEADER];
    let stored = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let len = u16::from_le_bytes([h[4], h[5]]) as usize;
    let kind = h[6];
    let end = pos + HEADER + len;
    if !TYPES.contains(&kind) || HEADER + len > left_in_block || end > bytes.len() {
        return None;
    }
    (masked_crc(kind, &bytes[pos + HEADER..end]) == stored).then_some(end)
}

/// Where replay of `bytes` stops: the first position that holds no whole, valid record
/// (the end of the file when all of it is read).
fn replay_end(bytes: &[u8]) -> usize {
    let mut pos = 0;
    while pos < bytes.len() {
        let left_in_block = BLOCK - pos % BLOCK;
        if left_in_block < HEADER {
            pos += left_in_block; // the block's zero padding
            continue;
        }
        match record_at(bytes, pos) {
            Some(end) => pos = end,
            None => return pos,
        }
    }
    pos
}

/// `Err` with what is wrong when a valid record follows the point where replay of the WAL
/// in `bytes` stops: the log was damaged there, not cut short.
pub fn check_tail(bytes: &[u8]) -> Result<(), String> {
    let stop = replay_end(bytes);
    if stop >= bytes.len() || bytes[stop..].iter().all(|b| *b == 0) {
        return Ok(()); // read to the end, or preallocated zeros after it
    }
    match (stop + 1..bytes.len()).find(|p| record_at(bytes, *p).is_some()) {
        Some(p) => Err(format!(
            "its record at byte {stop} is damaged and a valid record follows at byte {p}"
        )),
        None => Ok(()),
    }
}

/// The WAL files in `dir`, in order.
pub fn files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut wals: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    wals.sort();
    Ok(wals)
}

/// Checks every WAL file in `dir`; the first damaged one is named in the error.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let wals = files(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for wal in wals {
        let bytes = std::fs::read(&wal).map_err(|e| format!("reading {}: {e}", wal.display()))?;
        check_tail(&bytes)
            .map_err(|why| format!("its write-ahead log {} is damaged: {why}", wal.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut r = masked_crc(kind, payload).to_le_bytes().to_vec();
        r.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        r.push(kind);
        r.extend_from_slice(payload);
        r
    }

    #[test]
    fn a_cut_short_tail_passes_and_a_damaged_length_does_not() {
        let mut wal = Vec::new();
        for i in 0..20u8 {
            wal.extend(record(1, &[i; 100]));
        }
        assert_eq!(check_tail(&wal), Ok(()));
        // A write cut short: the start of one more record.
        let mut cut = wal.clone();
        cut.extend(&record(1, &[9; 100])[..40]);
        assert_eq!(check_tail(&cut), Ok(()));
        // Preallocated zeros after the last record.
        let mut zeros = wal.clone();
        zeros.extend([0u8; 500]);
        assert_eq!(check_tail(&zeros), Ok(()));
        // Record 10's length enlarged past the end of the file: ten valid ones follow.
        let mut damaged = wal.clone();
        damaged[10 * 107 + 5] ^= 0x40;
        let e = check_tail(&damaged).unwrap_err();
        assert!(
            e.contains("at byte 1070") && e.contains("follows at byte 1177"),
            "{e}"
        );
    }
}
