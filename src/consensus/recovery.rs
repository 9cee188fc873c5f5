//! New clusters from old state: a backup restored into an empty data dir (`nexus
//! restore`), or a surviving member's own log when its cluster lost a majority for good
//! (`--force-new-cluster`). Both end the same way: the portable state (`State::portable`)
//! under a new cluster identity, as a snapshot whose membership is this node alone.

use anyhow::{bail, Context};
use raft::{GetEntriesContext, Storage};

use nexus_core::ids::RaftId;
use nexus_core::state::{new_identity, State};
use raft::eraftpb::EntryType;

use crate::driver::decode_entry;
use crate::store::RaftStorage;

/// The cluster a store was made the founder of.
#[derive(Debug, Clone)]
pub struct Founded {
    /// The index the new cluster's log starts after.
    pub index: u64,
    pub term: u64,
    /// The new cluster identity.
    pub cluster: String,
    /// The identity of the cluster the state came from ("" for one formed before
    /// identities existed).
    pub previous: String,
    /// Log entries applied on top of the stored snapshot (--force-new-cluster).
    pub replayed: u64,
}

/// Entries read from the log at a time while replaying.
const REPLAY_BATCH: u64 = 1024;

/// The state this store reaches when every entry it holds is applied on top of its
/// snapshot, with the index and term of the last one. Entries this node never learned
/// were committed are applied too (as etcd does): some may have been, and an entry that
/// was not is a write whose client got no answer.
fn replay_all(storage: &RaftStorage) -> anyhow::Result<(State, u64, u64, u64)> {
    let snap = storage
        .stored_snapshot()?
        .context("the store has no snapshot to start from")?;
    let mut state = State::from_snapshot(&snap.data).map_err(crate::driver::snapshot_error)?;
    let meta = snap.get_metadata();
    let (mut index, mut term) = (meta.index, meta.term);
    let last = storage.last_index()?;
    let mut replayed = 0;
    while index < last {
        let high = (index + 1 + REPLAY_BATCH).min(last + 1);
        let entries = storage.entries(index + 1, high, None, GetEntriesContext::empty(false))?;
        for entry in &entries {
            if entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty() {
                let (origin, cmd) = decode_entry(entry)?;
                // The outcome was for a client whose connection is long gone.
                let _ = state.apply_entry(&origin, cmd);
                replayed += 1;
            }
            // Conf changes only shape the membership, which is replaced below.
            (index, term) = (entry.index, entry.term);
        }
    }
    Ok((state, index, term, replayed))
}

/// `--force-new-cluster`: rewrites this member's store into a new cluster of which it is
/// the only voter, keeping every entry it holds (applied into the snapshot) and taking a
/// new identity, so that the old members are refused if they come back.
pub fn force_new_cluster(
    storage: &RaftStorage,
    me: RaftId,
    addr: String,
) -> anyhow::Result<Forced> {
    // A start that still has the flag after an earlier one forced: nothing to do (members
    // that joined since, and what they committed, must not be cut off).
    let current = storage.cluster_id()?;
    if let Some(forced) = storage.forced_cluster_id()? {
        if current.as_deref() == Some(forced.as_str()) {
            return Ok(Forced::Already(forced));
        }
    }
    if storage.is_fresh() {
        bail!(
            "--force-new-cluster: {} holds no cluster state to keep (use it on a surviving \
             member's data dir)",
            storage.dir().display()
        );
    }
    let (state, index, last_term, replayed) = replay_all(storage)?;
    let previous = state.cluster.id.clone();
    let term = storage.initial_state()?.hard_state.term.max(last_term) + 1;
    let mut new = state.portable();
    let cluster = new_identity();
    new.found_cluster(cluster.clone(), me, addr);
    storage.found_cluster(me.0, new.to_snapshot(), index, term, Some(&cluster))?;
    Ok(Forced::Now(Founded {
        index,
        term,
        cluster,
        previous,
        replayed,
    }))
}

/// What `--force-new-cluster` did.
#[derive(Debug, Clone)]
pub enum Forced {
    Now(Founded),
    /// An earlier start forced this store into the cluster it still belongs to.
    Already(String),
}

/// Seeds an empty store with a backup's state at `index`: a new cluster of one voter,
/// with a new identity.
pub fn restore(
    storage: &RaftStorage,
    state: &State,
    index: u64,
    me: RaftId,
    addr: String,
) -> anyhow::Result<Founded> {
    if !storage.is_fresh() {
        bail!(
            "{} already holds cluster state: restore only into an empty data dir",
            storage.dir().display()
        );
    }
    let previous = state.cluster.id.clone();
    let mut new = state.portable();
    let cluster = new_identity();
    new.found_cluster(cluster.clone(), me, addr);
    // A new cluster: term 1, its log continuing after the backup's index.
    let index = index.max(1);
    storage.found_cluster(me.0, new.to_snapshot(), index, 1, None)?;
    Ok(Founded {
        index,
        term: 1,
        cluster,
        previous,
        replayed: 0,
    })
}
