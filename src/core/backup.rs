//! The backup file (`nexus backup`, `nexus restore`): the portable state of a cluster at
//! one committed index, versioned and checksummed so that a truncated or altered file is
//! refused before anything is restored from it.
//!
//! ```text
//! "NXBACKUP"        8 bytes
//! format            u32, big-endian (FORMAT)
//! header length     u32, big-endian
//! header            JSON: Header
//! state             header.state_bytes bytes: `State::portable()` in the snapshot encoding
//! SHA-256           32 bytes, of everything before it
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::State;

const MAGIC: &[u8; 8] = b"NXBACKUP";
/// The backup layout this build writes and reads.
pub const FORMAT: u32 = 1;
const DIGEST_LEN: usize = 32;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The committed index the state is at.
    pub index: u64,
    /// The identity of the cluster it was taken from.
    pub cluster: String,
    /// When it was taken (RFC 3339, the node's clock).
    pub taken_at: String,
    /// The nexus version that took it.
    pub nexus_version: String,
    /// Length of the state that follows.
    pub state_bytes: u64,
}

/// Why a file is not a backup this build restores.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

fn refused(what: impl Into<String>) -> Refused {
    Refused(what.into())
}

/// The backup file of `state` (already portable) at `index`.
pub fn encode(state: &State, index: u64, cluster: &str, taken_at: &str, version: &str) -> Vec<u8> {
    let body = state.to_snapshot();
    let header = Header {
        index,
        cluster: cluster.to_string(),
        taken_at: taken_at.to_string(),
        nexus_version: version.to_string(),
        state_bytes: body.len() as u64,
    };
    let header = serde_json::to_vec(&header).expect("a header always serialises");
    let mut out = Vec::with_capacity(16 + header.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The header and state of a backup file, once its format and checksum are checked.
pub fn decode(data: &[u8]) -> Result<(Header, State), Refused> {
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return Err(refused(
            "not a nexus backup (it does not start with NXBACKUP)",
        ));
    }
    let fixed = MAGIC.len() + 8;
    if data.len() < fixed + DIGEST_LEN {
        return Err(refused(format!(
            "the backup is truncated: {} bytes",
            data.len()
        )));
    }
    let format = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(refused(format!(
            "backup format {format}; this build reads format {FORMAT} (restore it with the \
             nexus version that took it, or a later one)"
        )));
    }
    let (signed, digest) = data.split_at(data.len() - DIGEST_LEN);
    if Sha256::digest(signed).as_slice() != digest {
        return Err(refused(
            "the backup is damaged or truncated: its SHA-256 does not match its contents",
        ));
    }
    let header_len = u32::from_be_bytes(data[12..16].try_into().expect("4 bytes")) as usize;
    let header_end = fixed
        .checked_add(header_len)
        .filter(|end| *end <= signed.len())
        .ok_or_else(|| refused("the backup's header length runs past its end"))?;
    let header: Header = serde_json::from_slice(&signed[fixed..header_end])
        .map_err(|e| refused(format!("the backup's header is not readable: {e}")))?;
    let body = &signed[header_end..];
    if body.len() as u64 != header.state_bytes {
        return Err(refused(format!(
            "the backup holds {} state bytes, its header says {}",
            body.len(),
            header.state_bytes
        )));
    }
    let state = State::from_snapshot(body)
        .map_err(|e| refused(format!("the backup's state is not readable: {e}")))?;
    Ok((header, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut state = State {
            bootstrapped: true,
            ..State::default()
        };
        state.cluster.clock_ms = 77;
        encode(&state, 42, "abc", "2026-12-05T00:00:00Z", "0.1.0")
    }

    #[test]
    fn a_backup_round_trips() {
        let (header, state) = decode(&sample()).unwrap();
        assert_eq!(header.index, 42);
        assert_eq!(header.cluster, "abc");
        assert!(state.bootstrapped);
        assert_eq!(state.cluster.clock_ms, 77);
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused() {
        let data = sample();
        for len in 0..data.len() {
            assert!(decode(&data[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "bit {bit} of byte {i} flipped");
            }
        }
    }

    #[test]
    fn another_format_is_named() {
        let mut data = sample();
        data[11] = 9;
        let e = decode(&data).unwrap_err().to_string();
        assert!(e.contains("backup format 9"), "{e}");
    }
}
