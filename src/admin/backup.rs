//! `nexus backup FILE`: an online backup read in chunks (`sys.backup.begin`, then
//! `sys.backup.read` until the end) and written durably, checked against the SHA-256 the
//! node gave before it is put in place.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::Client;

pub fn take(c: &mut Client, file: &Path, overwrite: bool) -> anyhow::Result<Value> {
    if file.exists() && !overwrite {
        bail!(
            "{} exists: name another file, or pass --overwrite",
            file.display()
        );
    }
    let begun = c.call("sys.backup.begin", json!({}))?;
    let (Some(index), Some(bytes), Some(sha256)) = (
        begun["index"].as_u64(),
        begun["bytes"].as_u64(),
        begun["sha256"].as_str(),
    ) else {
        bail!("the node answered sys.backup.begin with {begun}");
    };
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let received = receive(c, &partial, bytes, sha256);
    if received.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    received?;
    std::fs::rename(&partial, file)
        .with_context(|| format!("moving {} to {}", partial.display(), file.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The file is in place already: a directory that cannot be synced is a warning.
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            eprintln!("nexus: warning: {} not synced: {e}", dir.display());
        }
    }
    Ok(json!({
        "file": file.display().to_string(),
        "index": index,
        "bytes": bytes,
        "sha256": sha256,
        "cluster": begun["cluster"],
    }))
}

/// Reads the backup begun on `c` into `partial` (synced), checking its size and SHA-256.
fn receive(c: &mut Client, partial: &Path, bytes: u64, sha256: &str) -> anyhow::Result<()> {
    let mut out = std::fs::File::create(partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut digest = Sha256::new();
    let mut offset = 0u64;
    loop {
        let chunk = c.call(
            "sys.backup.read",
            json!({"offset": offset, "length": 4 << 20}),
        )?;
        let data = chunk["data"]
            .as_str()
            .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            .ok_or_else(|| anyhow!("the node answered sys.backup.read without data"))?;
        digest.update(&data);
        out.write_all(&data)
            .with_context(|| format!("writing {}", partial.display()))?;
        offset += data.len() as u64;
        if chunk["eof"].as_bool() == Some(true) {
            break;
        }
        if data.is_empty() {
            bail!("the node's backup ended early, at byte {offset} of {bytes}");
        }
    }
    let got = hex::encode(digest.finalize());
    if offset != bytes || got != sha256 {
        bail!(
            "the backup arrived damaged ({offset} bytes, SHA-256 {got}; the node sent \
             {bytes} bytes, SHA-256 {sha256}): nothing was written"
        );
    }
    out.sync_all()
        .with_context(|| format!("syncing {}", partial.display()))
}
