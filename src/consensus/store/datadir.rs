//! The files nexus keeps beside RocksDB in a data dir: `nexus.id` (format version and raft
//! id, written once), `nexus.durable` (a committed index this log held, rewritten every
//! second), `nexus.damaged` (this node found its storage damaged and must not run on it
//! again) and `nexus.rebuild` (the operator asked to rebuild this node from its peers).
//! None of them is ever deleted to get a node running: a refusal changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The layout of a data dir this build reads and writes.
pub const FORMAT: u64 = 1;
const ID_FILE: &str = "nexus.id";
const DAMAGED_FILE: &str = "nexus.damaged";
const DURABLE_FILE: &str = "nexus.durable";
const REBUILD_FILE: &str = "nexus.rebuild";

/// A data dir this node must not run on: damaged, from another version, or marked damaged
/// before. `main` prints it as one line and exits with `REFUSED_EXIT_CODE`.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to start: {what}. Nothing in {dir} was changed. Recover a member of a cluster \
     whose other members are healthy by running `nexus rebuild --data-dir {dir}` and \
     starting the node again: it rejoins as a new member and copies the state from its \
     peers. Recover a single node by restoring a backup into a new data dir (`nexus \
     restore`), never by copying an old data dir back: an old copy would vote with less \
     than it acknowledged",
    dir = .dir.display()
)]
pub struct Refusal {
    pub dir: PathBuf,
    pub what: String,
}

/// Exit status of a node that refused its data dir (sysexits' EX_DATAERR): a supervisor
/// must not restart it in a loop (the systemd unit lists it in RestartPreventExitStatus).
pub const REFUSED_EXIT_CODE: u8 = 65;

pub fn refusal(dir: &Path, what: impl Into<String>) -> Refusal {
    Refusal {
        dir: dir.to_path_buf(),
        what: what.into(),
    }
}

/// Writes `name` in `dir` durably: the file, then the directory entry.
fn write_durably(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The raft id recorded in `nexus.id`, if the file exists. Checks its format version.
pub fn recorded_raft_id(dir: &Path) -> Result<Option<u64>, Refusal> {
    let path = dir.join(ID_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(refusal(
                dir,
                format!("{} cannot be read: {e}", path.display()),
            ))
        }
    };
    let bad = |why: &str| refusal(dir, format!("{} is damaged: {why}", path.display()));
    let text = std::str::from_utf8(&text).map_err(|_| bad("not UTF-8"))?;
    let table: toml::Table = text.parse().map_err(|_| bad("not the TOML nexus wrote"))?;
    let format = table
        .get("format")
        .and_then(|v| v.as_integer())
        .ok_or_else(|| bad("no format"))?;
    if format != FORMAT as i64 {
        return Err(refusal(
            dir,
            format!(
                "{} says data format {format}, and this build reads format {FORMAT} only \
                 (run the nexus version that wrote it)",
                path.display()
            ),
        ));
    }
    let id = table
        .get("raft_id")
        .and_then(|v| v.as_integer())
        .filter(|id| *id > 0)
        .ok_or_else(|| bad("no raft_id"))?;
    Ok(Some(id as u64))
}

/// Records the format and raft id of a data dir (once, when it gets its raft id).
pub fn record_raft_id(dir: &Path, raft_id: u64) -> std::io::Result<()> {
    write_durably(
        dir,
        ID_FILE,
        &format!(
            "# Written once by nexus when this data dir got its raft id. Do not edit:\n\
             # a database that does not match it is refused.\n\
             format = {FORMAT}\nraft_id = {raft_id}\n"
        ),
    )
}

/// The committed index this data dir's log was last recorded to hold, if any.
pub fn recorded_durable(dir: &Path) -> Result<Option<u64>, Refusal> {
    let path = dir.join(DURABLE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(refusal(
                dir,
                format!("{} is damaged or unreadable: {e}", path.display()),
            ))
        }
    };
    let index = text
        .lines()
        .find_map(|l| l.strip_prefix("committed = "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|_| text.ends_with('\n'));
    match index {
        Some(i) => Ok(Some(i)),
        None => Err(refusal(dir, format!("{} is damaged", path.display()))),
    }
}

/// Records that the log holds every entry through `committed` (durable, atomic replace).
pub fn record_durable(dir: &Path, committed: u64) -> std::io::Result<()> {
    write_durably(
        dir,
        DURABLE_FILE,
        &format!(
            "# Rewritten by nexus every second: its log held every entry through this\n\
             # committed index. A log found shorter at start is refused.\n\
             committed = {committed}\n"
        ),
    )
}

/// Why this data dir was marked damaged, if it was.
pub fn damaged(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(DAMAGED_FILE))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Marks the data dir damaged, so that no later start runs on it. Best effort: the caller
/// exits next either way.
pub fn mark_damaged(dir: &Path, why: &str) {
    let text = format!("{}: {why}\n", chrono::Utc::now().to_rfc3339());
    if let Err(e) = write_durably(dir, DAMAGED_FILE, &text) {
        tracing::error!("cannot mark {} damaged: {e}", dir.display());
    }
}

/// Whether the operator asked for this node to be rebuilt from its peers.
pub fn rebuild_requested(dir: &Path) -> bool {
    dir.join(REBUILD_FILE).exists()
}

/// The rebuild is done (the node is a member again): forget the request.
pub fn rebuild_done(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(REBUILD_FILE));
}

/// `nexus rebuild`: moves the data dir aside (kept, never deleted) and leaves an empty one
/// that asks, at the next start, to join the cluster as a new member replacing the member
/// at this node's cluster address. Returns where the old data went.
pub fn rebuild(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::{bail, Context};
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if in_use(dir)? {
        bail!(
            "a process holds the database lock of {}: stop the node first",
            dir.display()
        );
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?;
    let aside = dir.with_file_name(format!("{}.damaged-{stamp}", name.to_string_lossy()));
    if aside.exists() {
        bail!("{} exists already: try again in a second", aside.display());
    }
    std::fs::rename(dir, &aside)
        .with_context(|| format!("moving {} to {}", dir.display(), aside.display()))?;
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_durably(
        dir,
        REBUILD_FILE,
        "# Written by `nexus rebuild`: at its next start this node joins its cluster as a\n\
         # new member that replaces the member at its cluster address.\n",
    )?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(aside)
}

/// Whether a running process holds RocksDB's lock on the data dir (RocksDB takes an fcntl
/// write lock on `LOCK`).
pub fn in_use(dir: &Path) -> anyhow::Result<bool> {
    use std::os::fd::AsRawFd;
    let lock = dir.join("LOCK");
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: a plain fcntl on an open descriptor with a zeroed, then filled, flock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_file_round_trips_and_refuses_damage_and_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_raft_id(dir.path()).unwrap(), None);
        record_raft_id(dir.path(), 42).unwrap();
        assert_eq!(recorded_raft_id(dir.path()).unwrap(), Some(42));
        let path = dir.path().join(ID_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("format = 1", "format = 2")).unwrap();
        let e = recorded_raft_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format 2"), "{e}");
        std::fs::write(&path, &text[..text.len() - 4]).unwrap();
        let e = recorded_raft_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("nexus.id is damaged"), "{e}");
    }

    #[test]
    fn rebuild_moves_the_dir_aside_and_leaves_a_request() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("000004.log"), b"old").unwrap();
        mark_damaged(&dir, "test");
        assert!(damaged(&dir).unwrap().ends_with(": test"));
        let aside = rebuild(&dir).unwrap();
        assert_eq!(std::fs::read(aside.join("000004.log")).unwrap(), b"old");
        assert!(rebuild_requested(&dir));
        assert_eq!(damaged(&dir), None);
        rebuild_done(&dir);
        assert!(!rebuild_requested(&dir));
    }
}
