//! `sys.backup.begin` / `sys.backup.read`: an online backup, streamed in chunks over any
//! transport. `begin` takes the state at one committed index (after a read barrier, so it
//! holds every write acknowledged before the call) and keeps the encoded backup file on
//! the connection; `read` hands it out from an offset. Writes go on meanwhile. The file
//! leaves with the connection.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::conn::Conn;
use crate::node::{now_rfc3339, Node};
use nexus_core::backup;
use nexus_core::rpc::{Params, RpcError, RpcResult};

/// Bytes one `sys.backup.read` answers at most (base64 in the answer: a third more).
pub const CHUNK_MAX: usize = 4 << 20;
const CHUNK_DEFAULT: usize = 1 << 20;

pub async fn begin(node: &Arc<Node>, conn: &Conn) -> RpcResult {
    conn.require("sys.backup", "sys.backup.begin")?;
    let (index, state) = node.replica.raft.copy_state().await?;
    let cluster = state.cluster.id.clone();
    // Encoding a large state takes a while: off the session's thread.
    let file = tokio::task::spawn_blocking(move || {
        let portable = state.portable();
        let version = crate::build_info::VERSION;
        let file = backup::encode(&portable, index, &cluster, &now_rfc3339(), version);
        let sha = hex::encode(Sha256::digest(&file));
        (file, sha, cluster)
    })
    .await
    .map_err(|e| RpcError::internal(e.to_string()))?;
    let (file, sha256, cluster) = file;
    let bytes = file.len();
    *conn.backup.borrow_mut() = Some(Arc::new(file));
    Ok(json!({
        "index": index,
        "bytes": bytes,
        "sha256": sha256,
        "cluster": cluster,
        "format": backup::FORMAT,
    }))
}

pub fn read(conn: &Conn, p: &Params) -> RpcResult {
    conn.require("sys.backup", "sys.backup.read")?;
    let file = match &*conn.backup.borrow() {
        Some(file) => file.clone(),
        None => {
            return Err(RpcError::invalid_param_because(
                "offset",
                "no backup taken on this connection: call sys.backup.begin first",
            ))
        }
    };
    let offset = p.opt_i64("offset")?.unwrap_or(0);
    if offset < 0 || offset as u64 > file.len() as u64 {
        return Err(RpcError::invalid_param_because(
            "offset",
            format!("must be between 0 and {}", file.len()),
        ));
    }
    let length = match p.opt_i64("length")? {
        None => CHUNK_DEFAULT,
        Some(n) if n >= 1 && n as u64 <= CHUNK_MAX as u64 => n as usize,
        Some(_) => {
            return Err(RpcError::invalid_param_because(
                "length",
                format!("must be between 1 and {CHUNK_MAX}"),
            ))
        }
    };
    let start = offset as usize;
    let end = (start + length).min(file.len());
    let data = base64::engine::general_purpose::STANDARD.encode(&file[start..end]);
    Ok(json!({
        "offset": start,
        "data": data,
        "eof": end == file.len(),
    }))
}
