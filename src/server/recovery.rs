//! Disaster recovery at start: a backup restored into an empty data dir (`--restore`,
//! `nexus restore`), and a surviving member made a cluster of its own
//! (`--force-new-cluster`). The consensus layer does the rewriting
//! (`nexus_consensus::recovery`); this module reads the file, checks the data dir, and
//! says what was done.

use std::path::Path;

use anyhow::{bail, Context};
use tracing::warn;

use nexus_consensus::recovery::{self, Founded};
use nexus_consensus::store;
use nexus_core::backup;

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub backup: backup::Header,
    pub founded: Founded,
}

/// Seeds the empty (or missing) data dir `dir` from the backup `file`: a new cluster of
/// one voter, reached at `addr` ("" for a standalone node), with a new identity. Refuses a
/// file that fails its checks and a data dir that holds anything, changing nothing.
pub fn restore_into(dir: &Path, file: &Path, addr: String) -> anyhow::Result<Restored> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (header, state) = backup::decode(&data)
        .map_err(|e| anyhow::anyhow!("refusing to restore {}: {e}", file.display()))?;
    drop(data);
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if let Some(entry) = entries.next() {
            bail!(
                "refusing to restore into {}: it is not empty (it holds {}); restore only \
                 into an empty or new data dir",
                dir.display(),
                entry
                    .map(|e| e.path().display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let opened = store::open(dir)?;
    let founded = recovery::restore(&opened.storage, &state, header.index, opened.raft_id, addr)?;
    Ok(Restored {
        backup: header,
        founded,
    })
}

/// Logs a restore loudly: the operator must know the node is a new cluster.
pub fn report_restore(file: &Path, r: &Restored) {
    warn!(
        file = %file.display(),
        index = r.backup.index,
        taken_at = %r.backup.taken_at,
        old_cluster = %r.backup.cluster,
        new_cluster = %r.founded.cluster,
        "RESTORED FROM A BACKUP: this node is now the only member of a new cluster; its \
         state is the backup's at index {} (sessions, pipes and subscriptions of the old \
         cluster are gone, locks released); join other nodes to it",
        r.backup.index
    );
}

/// Logs a forced new cluster loudly.
pub fn report_forced(f: &Founded) {
    warn!(
        index = f.index,
        term = f.term,
        replayed = f.replayed,
        old_cluster = %f.previous,
        new_cluster = %f.cluster,
        "FORCED A NEW CLUSTER (--force-new-cluster): this node is now the only voter of a \
         new cluster holding every entry its log had through index {} ({} applied from the \
         log on top of its snapshot). The old members are refused if they come back: \
         rebuild them with `nexus rebuild` and join them as new members. Remove \
         --force-new-cluster before the next start.",
        f.index,
        f.replayed
    );
}
