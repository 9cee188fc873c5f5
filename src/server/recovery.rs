//! Disaster recovery at start: a backup restored into an empty data dir (`--restore`,
//! `nexus restore`), and a surviving member made a cluster of its own
//! (`--force-new-cluster`). The consensus layer does the rewriting
//! (`nexus_consensus::recovery`); this module reads the file, checks the data dir, and
//! says what was done.

use std::path::Path;

use anyhow::{bail, Context};
use tracing::warn;

use nexus_consensus::recovery::{self, Forced, Founded};
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
    if let Some(found) = first_entry(dir) {
        bail!(
            "refusing to restore into {}: it is not empty (it holds {}); restore only into an \
             empty or new data dir",
            dir.display(),
            found.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let opened = store::open(dir)?;
    let founded = recovery::restore(&opened.storage, &state, header.index, opened.raft_id, addr)?;
    Ok(Restored {
        backup: header,
        founded,
    })
}

/// The first thing `dir` holds, if it exists and holds anything but an empty `lost+found`
/// (the root of a freshly made ext4 volume has one).
fn first_entry(dir: &Path) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().map(|e| e.path()).find(|path| {
        let empty_lost_found = path.file_name() == Some("lost+found".as_ref())
            && std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none());
        !empty_lost_found
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
pub fn report_forced(forced: &Forced) {
    let f = match forced {
        Forced::Now(f) => f,
        Forced::Already(cluster) => {
            return warn!(
                %cluster,
                "ignoring --force-new-cluster: an earlier start already forced this node \
                 into cluster {cluster}, which it still belongs to. Remove the flag."
            );
        }
    };
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
