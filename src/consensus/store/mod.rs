//! RocksDB-backed storage: the Raft log, Raft metadata (hard state, conf state, the latest
//! snapshot) and node metadata (the persistent raft id). Implements raft-rs `Storage`.
//!
//! A node runs only on storage it has checked: RocksDB refuses a WAL record that fails its
//! checksum (instead of cutting the log short there), and `open` reads every record back
//! and checks that the log, the snapshot and the Raft metadata still fit together
//! (docs/reliability.md, "Storage faults").

pub mod datadir;
pub mod space;
pub mod wal;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, RwLock};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{
    ColumnFamilyDescriptor, DBRecoveryMode, Direction, ErrorKind, IteratorMode, Options,
    WriteBatch, WriteOptions, DB,
};

const CF_LOG: &str = "raft_log";
const CF_META: &str = "raft_meta";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_RAFT_ID: &[u8] = b"raft_id";
const KEY_GENERATION: &[u8] = b"generation";
/// The identity of the cluster this store belongs to, from the last snapshot that named one
/// (builds before identities keep it: they never write this key).
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
/// The identity this store took when it was forced into a new cluster: a later start still
/// asked to force, while the store names it, does nothing (see `forced_cluster_id`).
const KEY_FORCED_ID: &[u8] = b"forced_cluster_id";
/// Index of the last conf change applied, written with the conf state it produced: entries
/// replayed after a restart must not apply a conf change twice.
const KEY_CONF_INDEX: &[u8] = b"conf_index";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record {0}: {1}")]
    Corrupt(&'static str, String),
    /// Written by a newer version than this build (not damage): the node stops, and its
    /// data dir is left as it is for the right build.
    #[error(
        "refusing to run: {0}. Upgrade this node to the version the rest of the cluster runs: \
         its data dir is kept as it is for a build that reads it"
    )]
    TooNew(String),
}

impl StoreError {
    /// Damage found in the stored data (as opposed to an I/O error or a full disk).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Db(e) => e.kind() == ErrorKind::Corruption,
            StoreError::Corrupt(..) => true,
            StoreError::TooNew(_) => false,
        }
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A WAL record that fails its checksum is damage: refuse to open instead of replaying
    // up to it (the default point-in-time mode, which dropped half a log without a word).
    // Only an incomplete last record is passed over: that is a write cut short by a crash
    // or a full disk, never acknowledged, since a write is acknowledged once it is fsync'd
    // whole. A cut deeper into the log is caught by `nexus.durable` (see `check_durable`).
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_paranoid_checks(true);
    opts
}

fn column_families() -> [ColumnFamilyDescriptor; 2] {
    [CF_LOG, CF_META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()))
}

/// Opens (creating if needed) the node's database under `dir`.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, StoreError> {
    Ok(Arc::new(DB::open_cf_descriptors(
        &db_options(),
        dir,
        column_families(),
    )?))
}

/// Opens the database under `dir` without changing a file (its WAL replayed in memory).
fn open_db_read_only(dir: &Path) -> Result<Arc<DB>, StoreError> {
    Ok(Arc::new(DB::open_cf_descriptors_read_only(
        &db_options(),
        dir,
        column_families(),
        false,
    )?))
}

/// A node's storage, opened and checked.
pub struct Opened {
    pub storage: RaftStorage,
    pub raft_id: nexus_core::ids::RaftId,
    /// This start's generation (see `next_generation`).
    pub generation: u64,
}

/// Opens the node's storage in `dir` (creating it when empty) and checks it. Damage, a
/// data dir of another format or one marked damaged before is a `datadir::Refusal`; any
/// other failure (permissions, a lock held by another process) is a plain error.
pub fn open(dir: &Path) -> anyhow::Result<Opened> {
    if let Some(why) = datadir::damaged(dir) {
        return Err(datadir::refusal(dir, format!("it was marked damaged ({why})")).into());
    }
    let recorded = datadir::recorded_raft_id(dir)?;
    let durable = datadir::recorded_durable(dir)?;
    let refuse = |e: StoreError| -> anyhow::Error {
        if recorded.is_some() && is_missing_column_family(&e) {
            // A MANIFEST cut at a record boundary forgot that the column families exist.
            let what = format!(
                "its MANIFEST {} no longer describes the database: {e}",
                manifest(dir)
            );
            datadir::refusal(dir, what).into()
        } else if e.is_corruption() || recorded.is_some() && is_missing_file(&e) {
            let what = match damaged_wal(dir).filter(|_| !e.to_string().contains('/')) {
                Some(wal) => format!("its write-ahead log {wal} is damaged: {e}"),
                None => format!("its database is damaged: {e}"),
            };
            datadir::refusal(dir, what).into()
        } else {
            anyhow::Error::new(e).context(format!("opening the database in {}", dir.display()))
        }
    };
    // Another process on this dir (a second instance) would show files changing under
    // the check below: say so instead of calling the dir damaged.
    if datadir::in_use(dir)? {
        anyhow::bail!(
            "another process holds the database lock of {}: is a node running on it?",
            dir.display()
        );
    }
    // Checked on a read-only open first: opening for writing already changes the files
    // (RocksDB flushes the replayed WAL and starts a new MANIFEST), and a refusal must
    // leave the data dir exactly as it found it. A database whose very first open was cut
    // short (no column families yet, no nexus.id) is new, not damaged.
    let cut_at_creation = |e: &StoreError| {
        recorded.is_none()
            && matches!(e, StoreError::Db(e) if e.kind() == ErrorKind::InvalidArgument)
    };
    let checked = match dir.join("CURRENT").exists() {
        true => match open_db_read_only(dir) {
            Err(e) if cut_at_creation(&e) => None,
            opened => Some(opened.map_err(refuse)?),
        },
        false => None,
    };
    if let Some(db) = checked {
        check_identity(dir, stored_raft_id(&db).map_err(refuse)?, recorded)?;
        let storage = RaftStorage::open(db).map_err(refuse)?;
        check_durable(dir, &storage, durable)?;
        wal::check_dir(dir).map_err(|what| datadir::refusal(dir, what))?;
    }
    let db = open_db(dir).map_err(refuse)?;
    let raft_id = match check_identity(dir, stored_raft_id(&db).map_err(refuse)?, recorded)? {
        Some(id) => id,
        // A new data dir, or one from a build before nexus.id: record the id now.
        None => {
            let id = raft_id(&db).map_err(refuse)?;
            datadir::record_raft_id(dir, id)
                .map_err(|e| anyhow::anyhow!("writing {}/nexus.id: {e}", dir.display()))?;
            id
        }
    };
    let storage = RaftStorage::open(db).map_err(refuse)?;
    check_durable(dir, &storage, durable)?;
    let generation = next_generation(&storage.db).map_err(refuse)?;
    Ok(Opened {
        storage,
        raft_id: nexus_core::ids::RaftId(raft_id),
        generation,
    })
}

/// The raft id when the database and `nexus.id` agree on it, `None` when neither has one
/// yet (or only the database, written by a build before `nexus.id`).
fn check_identity(
    dir: &Path,
    stored: Option<u64>,
    recorded: Option<u64>,
) -> Result<Option<u64>, datadir::Refusal> {
    match (stored, recorded) {
        (Some(id), Some(rec)) if id != rec => Err(datadir::refusal(
            dir,
            format!("its database holds raft id {id} but nexus.id records {rec}"),
        )),
        (None, Some(rec)) => Err(datadir::refusal(
            dir,
            format!(
                "nexus.id records raft id {rec} but the database has no raft id: its records \
                 were lost"
            ),
        )),
        (Some(id), Some(_)) => Ok(Some(id)),
        (_, None) => Ok(None),
    }
}

/// RocksDB cannot see records cut off at a record boundary (a WAL truncated to zero, say):
/// the committed index recorded outside it can.
fn check_durable(
    dir: &Path,
    storage: &RaftStorage,
    durable: Option<u64>,
) -> Result<(), datadir::Refusal> {
    let Some(durable) = durable else {
        return Ok(());
    };
    let c = storage.read();
    let held = c.last.max(c.snapshot_meta.index);
    if held < durable {
        return Err(datadir::refusal(
            dir,
            format!(
                "its log ends at entry {held} but held every entry through {durable} \
                 (nexus.durable): records were lost"
            ),
        ));
    }
    Ok(())
}

/// The write-ahead log files in `dir`: RocksDB names the file in every open error but
/// those of WAL replay, so a damage report without a file name is about one of these.
fn damaged_wal(dir: &Path) -> Option<String> {
    let wals = wal::files(dir).ok()?;
    let names: Vec<String> = wals.iter().map(|p| p.display().to_string()).collect();
    (!names.is_empty()).then(|| names.join(" or "))
}

/// RocksDB's answer when a file its MANIFEST lists is gone.
fn is_missing_column_family(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(e) if e.kind() == ErrorKind::InvalidArgument
        && e.as_ref().contains("Column family not found"))
}

/// The MANIFEST that `CURRENT` names, as a path.
fn manifest(dir: &Path) -> String {
    let current = std::fs::read_to_string(dir.join("CURRENT")).unwrap_or_default();
    dir.join(current.trim()).display().to_string()
}

fn is_missing_file(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(e) if e.kind() == ErrorKind::IOError
        && e.as_ref().contains("No such file"))
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created at open")
}

/// A big-endian u64 kept under `key` in the meta column family, if present.
fn meta_u64(db: &DB, key: &'static [u8], what: &'static str) -> Result<Option<u64>, StoreError> {
    match db.get_cf(cf(db, CF_META), key)? {
        Some(v) => {
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt(what, "length".into()))?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
        None => Ok(None),
    }
}

/// A UTF-8 string kept under `key` in the meta column family, if present.
fn meta_string(
    db: &DB,
    key: &'static [u8],
    what: &'static str,
) -> Result<Option<String>, StoreError> {
    match db.get_cf(cf(db, CF_META), key)? {
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(what, "not UTF-8".into())),
        None => Ok(None),
    }
}

/// The raft id this database holds, if it has one yet.
pub fn stored_raft_id(db: &DB) -> Result<Option<u64>, StoreError> {
    meta_u64(db, KEY_RAFT_ID, "raft_id")
}

/// The raft id of this node, created (random, non-zero) on first use and kept forever.
pub fn raft_id(db: &DB) -> Result<u64, StoreError> {
    let meta = cf(db, CF_META);
    if let Some(id) = stored_raft_id(db)? {
        return Ok(id);
    }
    let id = rand::random::<u64>().max(1) >> 1; // keep it positive for JSON consumers
    let id = id.max(1);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.put_cf_opt(meta, KEY_RAFT_ID, id.to_be_bytes(), &wo)?;
    Ok(id)
}

/// The generation of this start: a persisted counter bumped every time the node starts, so
/// it grows even when the wall clock steps back.
pub fn next_generation(db: &DB) -> Result<u64, StoreError> {
    let meta = cf(db, CF_META);
    let next = meta_u64(db, KEY_GENERATION, "generation")?.unwrap_or(0) + 1;
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.put_cf_opt(meta, KEY_GENERATION, next.to_be_bytes(), &wo)?;
    Ok(next)
}

fn decode<M: PbMessage>(what: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| StoreError::Corrupt(what, e.to_string()))
}

fn encode<M: PbMessage>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("protobuf encoding of an in-memory message")
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Whether the Raft records read at open still fit together. Each check is one that every
/// healthy store passes, so a failure means records were lost or damaged (RocksDB's own
/// checksums cannot see a record that is missing altogether).
fn check_consistent(
    hs: &HardState,
    cs: &ConfState,
    snap: &SnapshotMetadata,
    first: u64,
    last: u64,
) -> Result<(), StoreError> {
    // Before its first snapshot a store holds at most a hard state (a joiner that heard
    // from the leader and was stopped before the snapshot arrived).
    let fresh = cs.voters.is_empty()
        && cs.learners.is_empty()
        && last == 0
        && snap.index == 0
        && hs.commit == 0;
    if fresh {
        return Ok(());
    }
    let fail = |what: String| Err(StoreError::Corrupt("raft records", what));
    // A store is started from a snapshot (bootstrap or the leader's) before anything else.
    if snap.index == 0 {
        return fail(
            "the log or hard state exists but the snapshot it starts from is missing".into(),
        );
    }
    if cs.voters.is_empty() && cs.learners.is_empty() {
        return fail("the membership record is missing".into());
    }
    if first > snap.index + 1 {
        return fail(format!(
            "entries {} to {} are missing between the snapshot and the log",
            snap.index + 1,
            first - 1
        ));
    }
    if last < snap.index {
        return fail(format!(
            "the log ends at {last}, before the snapshot at {}",
            snap.index
        ));
    }
    if hs.commit > last {
        return fail(format!(
            "entries up to {} were committed but the log ends at {last}",
            hs.commit
        ));
    }
    if hs.commit < snap.index {
        return fail(format!(
            "the commit index {} is behind the snapshot at {}",
            hs.commit, snap.index
        ));
    }
    if hs.term < snap.term {
        return fail(format!(
            "the term {} is behind the snapshot's term {}",
            hs.term, snap.term
        ));
    }
    Ok(())
}

/// What `Storage` answers from memory; the log itself is read from RocksDB.
#[derive(Default, Clone)]
struct Cached {
    hard_state: HardState,
    conf_state: ConfState,
    conf_index: u64,
    snapshot_meta: SnapshotMetadata,
    /// Index of the first entry present (snapshot index + 1 when the log is empty).
    first: u64,
    /// Index of the last entry (snapshot index when the log is empty).
    last: u64,
    /// Terms of the entries `first..=last`.
    terms: VecDeque<u64>,
    /// The most recently written entries (contiguous, ending at `last`): committed entries
    /// are applied right after they are written, so reading them back from RocksDB and
    /// decoding them again is avoided.
    recent: VecDeque<Entry>,
    recent_bytes: usize,
}

/// Bounds of the recent-entries cache.
const RECENT_MAX_ENTRIES: usize = 8192;
const RECENT_MAX_BYTES: usize = 64 << 20;

impl Cached {
    fn remember(&mut self, entries: &[Entry]) {
        let Some(start) = entries.first().map(|e| e.index) else {
            return;
        };
        // Drop a replaced tail, or everything if the new entries do not follow on.
        while self.recent.back().is_some_and(|e| e.index >= start) {
            if let Some(e) = self.recent.pop_back() {
                self.recent_bytes -= e.data.len();
            }
        }
        if self.recent.back().is_some_and(|e| e.index + 1 != start) {
            self.recent.clear();
            self.recent_bytes = 0;
        }
        for e in entries {
            self.recent_bytes += e.data.len();
            self.recent.push_back(e.clone()); // `data` is a shared `Bytes`: cheap
        }
        while self.recent.len() > RECENT_MAX_ENTRIES || self.recent_bytes > RECENT_MAX_BYTES {
            match self.recent.pop_front() {
                Some(e) => self.recent_bytes -= e.data.len(),
                None => break,
            }
        }
    }

    /// `low..high` from the cache, when it holds all of it.
    fn recent_range(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let front = self.recent.front()?.index;
        let back = self.recent.back()?.index;
        if low < front || high > back + 1 || low >= high {
            return None;
        }
        let from = (low - front) as usize;
        Some(
            self.recent
                .range(from..from + (high - low) as usize)
                .cloned()
                .collect(),
        )
    }
}

/// One atomic write to the Raft storage.
#[derive(Default)]
pub struct RaftWrite<'a> {
    pub entries: &'a [Entry],
    pub hard_state: Option<&'a HardState>,
    pub conf_state: Option<&'a ConfState>,
    /// The index of the conf change that produced `conf_state`.
    pub conf_index: Option<u64>,
    /// fsync the WAL before returning (entries and votes must be durable before acting).
    pub sync: bool,
}

#[derive(Clone)]
pub struct RaftStorage {
    db: Arc<DB>,
    cached: Arc<RwLock<Cached>>,
    /// Raft asked for a snapshot the stored one cannot serve (too old, or its conf state
    /// lacks the member it is for): the driver takes a new one.
    snapshot_wanted: Arc<std::sync::atomic::AtomicBool>,
}

impl RaftStorage {
    /// Loads the persisted Raft state. A fresh store has no voters: see `bootstrap`.
    pub fn open(db: Arc<DB>) -> Result<Self, StoreError> {
        let meta = cf(&db, CF_META);
        let hard_state = match db.get_cf(meta, KEY_HARD_STATE)? {
            Some(b) => decode("hard_state", &b)?,
            None => HardState::default(),
        };
        let snapshot_meta = match db.get_cf(meta, KEY_SNAPSHOT)? {
            Some(b) => decode::<Snapshot>("snapshot", &b)?.take_metadata(),
            None => SnapshotMetadata::default(),
        };
        let conf_state = match db.get_cf(meta, KEY_CONF_STATE)? {
            Some(b) => decode("conf_state", &b)?,
            None => ConfState::default(),
        };
        let conf_index = meta_u64(&db, KEY_CONF_INDEX, "conf_index")?.unwrap_or(0);
        // One pass over the log: its bounds, and every entry's term (kept in memory so
        // raft's frequent term lookups never decode an entry).
        // Every other record is read once too, so a damaged block anywhere is found now
        // rather than while serving.
        for item in db.iterator_cf(meta, IteratorMode::Start) {
            item?;
        }
        let mut terms = VecDeque::new();
        let mut first = snapshot_meta.index + 1;
        for item in db.iterator_cf(cf(&db, CF_LOG), IteratorMode::Start) {
            let (k, v) = item?;
            let index = u64::from_be_bytes(
                k[..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("log key", "length".into()))?,
            );
            if terms.is_empty() {
                first = index;
            }
            let expected = first + terms.len() as u64;
            let entry = decode::<Entry>("entry", &v)?;
            if index != expected || entry.index != index {
                return Err(StoreError::Corrupt(
                    "raft log",
                    format!(
                        "expected entry {expected} next, found key {index} holding entry {}",
                        entry.index
                    ),
                ));
            }
            if terms.back().is_some_and(|t| *t > entry.term) {
                return Err(StoreError::Corrupt(
                    "raft log",
                    format!("entry {index} has a term lower than the entry before it"),
                ));
            }
            terms.push_back(entry.term);
        }
        let last = first + terms.len() as u64 - 1;
        check_consistent(&hard_state, &conf_state, &snapshot_meta, first, last)?;
        let cached = Cached {
            hard_state,
            conf_state,
            conf_index,
            snapshot_meta,
            first,
            last,
            terms,
            recent: VecDeque::new(),
            recent_bytes: 0,
        };
        Ok(RaftStorage {
            db,
            cached: Arc::new(RwLock::new(cached)),
            snapshot_wanted: Arc::default(),
        })
    }

    /// Rewrites `nexus.durable` every `period` on a thread of its own while this storage is
    /// in use: the commit index in storage is covered by entries written (and fsync'd)
    /// before it, so the log held every entry through it.
    pub fn start_durable_witness(&self, period: std::time::Duration) {
        let cached = Arc::downgrade(&self.cached);
        let dir = self.dir().to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("durable-witness".into())
            .spawn(move || {
                let mut recorded = 0;
                loop {
                    std::thread::sleep(period);
                    let Some(cached) = cached.upgrade() else {
                        return;
                    };
                    let commit = cached
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .hard_state
                        .commit;
                    drop(cached);
                    if commit > recorded {
                        match datadir::record_durable(&dir, commit) {
                            Ok(()) => recorded = commit,
                            Err(e) => {
                                tracing::warn!("cannot write {}/nexus.durable: {e}", dir.display())
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no durable-index witness: {e}");
        }
    }

    /// The data dir this storage lives in.
    pub fn dir(&self) -> &Path {
        self.db.path()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        self.cached.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, Cached> {
        self.cached.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends entries (replacing any conflicting tail) and updates hard/conf state, in one
    /// RocksDB write batch.
    pub fn write(&self, w: RaftWrite) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        let meta = cf(&self.db, CF_META);
        let mut new_last = None;
        if let (Some(first), Some(last)) = (w.entries.first(), w.entries.last()) {
            let old_last = self.read().last;
            if first.index <= old_last {
                batch.delete_range_cf(log, log_key(first.index), log_key(old_last + 1));
            }
            for e in w.entries {
                batch.put_cf(log, log_key(e.index), encode(e));
            }
            new_last = Some(last.index);
        }
        if let Some(hs) = w.hard_state {
            batch.put_cf(meta, KEY_HARD_STATE, encode(hs));
        }
        if let Some(cs) = w.conf_state {
            batch.put_cf(meta, KEY_CONF_STATE, encode(cs));
        }
        if let Some(i) = w.conf_index {
            batch.put_cf(meta, KEY_CONF_INDEX, i.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(w.sync);
        self.db.write_opt(batch, &wo)?;
        let mut c = self.write_cache();
        if let Some(last) = new_last {
            let keep = w.entries[0].index.saturating_sub(c.first) as usize;
            c.terms.truncate(keep);
            c.terms.extend(w.entries.iter().map(|e| e.term));
            c.remember(w.entries);
            c.last = last;
        }
        if let Some(hs) = w.hard_state {
            c.hard_state = hs.clone();
        }
        if let Some(cs) = w.conf_state {
            c.conf_state = cs.clone();
        }
        if let Some(i) = w.conf_index {
            c.conf_index = i;
        }
        Ok(())
    }

    /// True when this store never belonged to a cluster: no voters, no log, no snapshot.
    /// A joiner that heard from the leader (its hard state has a term) but got no snapshot
    /// yet is still fresh: it asks to join again.
    pub fn is_fresh(&self) -> bool {
        let c = self.read();
        c.conf_state.voters.is_empty()
            && c.conf_state.learners.is_empty()
            && c.last == 0
            && c.snapshot_meta.index == 0
            && c.hard_state.commit == 0
    }

    /// Starts a new cluster: an initial snapshot at index 1, term 1, whose conf state has
    /// `voters` and whose data is `state`. Every founding node writes the same one; a node
    /// joining later receives it (or a later one), so it learns the voters from it.
    pub fn bootstrap(&self, voters: &[u64], state: Vec<u8>) -> Result<(), StoreError> {
        let mut snap = Snapshot::default();
        snap.set_data(state.into());
        let m = snap.mut_metadata();
        m.index = 1;
        m.term = 1;
        m.set_conf_state(ConfState::from((voters.to_vec(), vec![])));
        self.apply_snapshot(&snap)
    }

    /// Makes this store the sole member `voter` of a new cluster whose state is `state`
    /// at `index`, in `term`: one atomic write replaces the snapshot, the membership and
    /// the hard state (no vote), and drops the whole log. Restore and --force-new-cluster.
    pub fn found_cluster(
        &self,
        voter: u64,
        state: Vec<u8>,
        index: u64,
        term: u64,
        forced: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut snap = Snapshot::default();
        snap.set_data(state.into());
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(ConfState::from((vec![voter], vec![])));
        self.write_cache().hard_state = HardState {
            term,
            commit: index,
            ..Default::default()
        };
        let marker = forced.map(|id| (KEY_FORCED_ID, id.as_bytes()));
        self.write_snapshot(&snap, marker)
    }

    /// The identity this store was forced into, if it ever was.
    pub fn forced_cluster_id(&self) -> Result<Option<String>, StoreError> {
        meta_string(&self.db, KEY_FORCED_ID, "forced_cluster_id")
    }

    /// Whether raft asked for a newer snapshot since the last call.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Index of the last conf change already applied to the persisted conf state.
    pub fn conf_index(&self) -> u64 {
        self.read().conf_index
    }

    /// Records a new commit index (not synced: a lost commit index is re-learned).
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.read().hard_state.clone();
        hs.commit = commit;
        self.write(RaftWrite {
            hard_state: Some(&hs),
            ..Default::default()
        })
    }

    /// Stores a snapshot of the applied state at `index` (whose membership was
    /// `conf_state`) and drops the log up to `index - retain` (the kept tail lets a
    /// follower slightly behind catch up from the log). Runs on its own thread, beside the
    /// Raft one: the snapshot is made durable first, then the cache's first index moves
    /// past the dropped entries (under the lock `entries` reads with, so no read is still
    /// on them), then they are deleted. The Raft thread is never blocked on a disk write.
    pub fn compact_to_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
        retain: u64,
    ) -> Result<(), StoreError> {
        let term = self
            .term(index)
            .map_err(|e| StoreError::Corrupt("term", e.to_string()))?;
        let first = self.read().first;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(conf_state);
        // The log keeps entries after `upto`; `first` never passes `index + 1`.
        let upto = index.saturating_sub(retain).max(first.saturating_sub(1));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(cf(&self.db, CF_META), KEY_SNAPSHOT, encode(&snap), &wo)?;
        {
            let mut c = self.write_cache();
            c.snapshot_meta = snap.take_metadata();
            if upto >= c.first {
                let dropped = ((upto + 1).saturating_sub(c.first) as usize).min(c.terms.len());
                c.terms.drain(..dropped);
                c.first = upto + 1;
            }
            c.last = c.last.max(index);
        }
        // Not synced: after a crash before it lands, the log merely starts earlier.
        if upto >= first {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&self.db, CF_LOG), log_key(first), log_key(upto + 1));
            self.db.write(batch)?;
        }
        Ok(())
    }

    /// Replaces everything with a snapshot received from the leader.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StoreError> {
        self.write_snapshot(snap, None)
    }

    /// `apply_snapshot`, with one more metadata record in the same write.
    fn write_snapshot(
        &self,
        snap: &Snapshot,
        extra: Option<(&[u8], &[u8])>,
    ) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        let (first, last, mut hs) = {
            let c = self.read();
            (c.first, c.last, c.hard_state.clone())
        };
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let mut batch = WriteBatch::default();
        let meta_cf = cf(&self.db, CF_META);
        batch.put_cf(meta_cf, KEY_SNAPSHOT, encode(snap));
        batch.put_cf(meta_cf, KEY_HARD_STATE, encode(&hs));
        batch.put_cf(meta_cf, KEY_CONF_STATE, encode(meta.get_conf_state()));
        batch.put_cf(meta_cf, KEY_CONF_INDEX, meta.index.to_be_bytes());
        // A snapshot from a cluster that has an identity gives it to this store for good:
        // kept even if a build from before identities later writes snapshots without it.
        match nexus_core::state::codec::cluster_id_of(&snap.data) {
            Ok(id) if !id.is_empty() => batch.put_cf(meta_cf, KEY_CLUSTER_ID, id.as_bytes()),
            _ => {}
        }
        if let Some((key, value)) = extra {
            batch.put_cf(meta_cf, key, value);
        }
        batch.delete_range_cf(
            cf(&self.db, CF_LOG),
            log_key(first),
            log_key(last.max(first) + 1),
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        let mut c = self.write_cache();
        c.snapshot_meta = meta.clone();
        c.conf_state = meta.get_conf_state().clone();
        c.conf_index = meta.index;
        c.hard_state = hs;
        c.first = meta.index + 1;
        c.last = meta.index;
        c.terms.clear();
        c.recent.clear();
        c.recent_bytes = 0;
        Ok(())
    }

    /// The identity of the cluster this store belongs to, once it received one.
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        meta_string(&self.db, KEY_CLUSTER_ID, "cluster_id")
    }

    /// The stored snapshot, if any (used at start to restore the state machine).
    pub fn stored_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        match self.db.get_cf(cf(&self.db, CF_META), KEY_SNAPSHOT)? {
            Some(b) => Ok(Some(decode("snapshot", &b)?)),
            None => Ok(None),
        }
    }

    pub fn conf_state(&self) -> ConfState {
        self.read().conf_state.clone()
    }

    fn storage_error(e: impl std::fmt::Display) -> raft::Error {
        raft::Error::Store(StorageError::Other(e.to_string().into()))
    }
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.read();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        // Held through the read: a snapshot written meanwhile (on its own thread) takes the
        // write lock before it deletes log entries, so none vanish under this iterator.
        let c = self.read();
        if low < c.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > c.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        if let Some(mut cached) = c.recent_range(low, high) {
            raft::util::limit_size(&mut cached, max_size);
            return Ok(cached);
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOG),
            IteratorMode::From(&log_key(low), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(Self::storage_error)?;
            let idx = u64::from_be_bytes(k[..].try_into().map_err(Self::storage_error)?);
            if idx >= high {
                break;
            }
            let e: Entry = decode("entry", &v).map_err(Self::storage_error)?;
            size += v.len() as u64;
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(e);
        }
        if out.len() as u64 != high - low && max_size.is_none() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.read();
        if idx == c.snapshot_meta.index {
            return Ok(c.snapshot_meta.term);
        }
        if idx < c.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        c.terms
            .get((idx - c.first) as usize)
            .copied()
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A member added after the stored snapshot must get one whose conf state has it
        // (raft-rs refuses to restore a snapshot that does not list the node).
        let lists = |s: &Snapshot| {
            let cs = s.get_metadata().get_conf_state();
            cs.voters.contains(&to) || cs.learners.contains(&to)
        };
        match self.stored_snapshot().map_err(Self::storage_error)? {
            Some(s) if s.get_metadata().index >= request_index && lists(&s) => Ok(s),
            _ => {
                self.snapshot_wanted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    /// A store bootstrapped with voter 7, then entries 2..=`last` of `term`, all committed.
    fn bootstrapped_with_log(dir: &Path, last: u64, term: u64) -> (Arc<DB>, RaftStorage) {
        let db = open_db(dir).unwrap();
        let s = RaftStorage::open(db.clone()).unwrap();
        s.bootstrap(&[7], Vec::new()).unwrap();
        let ents: Vec<Entry> = (2..=last).map(|i| entry(i, term)).collect();
        let hs = HardState {
            term,
            commit: last,
            ..Default::default()
        };
        s.write(RaftWrite {
            entries: &ents,
            hard_state: Some(&hs),
            sync: true,
            ..Default::default()
        })
        .unwrap();
        (db, s)
    }

    #[test]
    fn log_survives_reopen_and_truncates_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path()).unwrap();
            let s = RaftStorage::open(db).unwrap();
            assert!(s.is_fresh());
            s.bootstrap(&[7], b"initial".to_vec()).unwrap();
            assert!(!s.is_fresh());
            let ents: Vec<Entry> = (2..=6).map(|i| entry(i, 1)).collect();
            let hs = HardState {
                term: 1,
                commit: 4,
                ..Default::default()
            };
            s.write(RaftWrite {
                entries: &ents,
                hard_state: Some(&hs),
                sync: true,
                ..Default::default()
            })
            .unwrap();
            // A new leader overwrites the tail from index 5.
            s.write(RaftWrite {
                entries: &[entry(5, 2)],
                sync: true,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.last_index().unwrap(), 5);
            assert_eq!(s.term(5).unwrap(), 2, "the overwritten tail's term");
            assert_eq!(s.term(4).unwrap(), 1);
            assert!(s.term(6).is_err());
            // Served from the recent-entries cache here, from RocksDB after the reopen below.
            let got = s
                .entries(3, 6, None, GetEntriesContext::empty(false))
                .unwrap();
            let got: Vec<(u64, u64)> = got.iter().map(|e| (e.index, e.term)).collect();
            assert_eq!(got, vec![(3, 1), (4, 1), (5, 2)]);
        }
        let db = open_db(dir.path()).unwrap();
        let s = RaftStorage::open(db).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 4);
        assert_eq!(
            st.conf_state.voters,
            vec![7],
            "the bootstrapped voters persist"
        );
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 5));
        assert_eq!(s.term(5).unwrap(), 2);
        let got = s
            .entries(3, 6, None, GetEntriesContext::empty(false))
            .unwrap();
        let got: Vec<(u64, u64)> = got.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(3, 1), (4, 1), (5, 2)]);
    }

    #[test]
    fn snapshot_compacts_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (db, s) = bootstrapped_with_log(dir.path(), 10, 3);
        s.compact_to_snapshot(4, s.conf_state(), b"early".to_vec(), 2)
            .unwrap();
        assert_eq!(s.first_index().unwrap(), 3, "a tail of 2 entries is kept");
        assert_eq!(s.term(4).unwrap(), 3);
        s.compact_to_snapshot(6, s.conf_state(), b"state".to_vec(), 0)
            .unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 3);
        assert!(s.term(5).is_err());
        assert!(s
            .entries(5, 8, None, GetEntriesContext::empty(false))
            .is_err());
        drop(s);
        let s = RaftStorage::open(db).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
        let snap = s.stored_snapshot().unwrap().unwrap();
        assert_eq!(&snap.data[..], b"state");
        let fresh = tempfile::tempdir().unwrap();
        let fresh_db = open_db(fresh.path()).unwrap();
        let id = raft_id(&fresh_db).unwrap();
        assert!(id > 0);
        assert_eq!(raft_id(&fresh_db).unwrap(), id, "the raft id is stable");
    }

    /// A joiner stopped after it heard from the leader (a hard state with a term) but before
    /// its first snapshot is still fresh: it opens, and asks to join again.
    #[test]
    fn a_joiner_stopped_before_its_snapshot_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let s = RaftStorage::open(db.clone()).unwrap();
        let hs = HardState {
            term: 5,
            ..Default::default()
        };
        s.write(RaftWrite {
            hard_state: Some(&hs),
            sync: true,
            ..Default::default()
        })
        .unwrap();
        drop(s);
        let s = RaftStorage::open(db).expect("opens");
        assert!(s.is_fresh());
    }

    /// Records that no longer fit together are refused at open, each with its reason.
    #[test]
    fn open_refuses_records_that_do_not_fit_together() {
        let open_err = |prepare: &dyn Fn(&RaftStorage, &DB)| -> String {
            let dir = tempfile::tempdir().unwrap();
            let (db, s) = bootstrapped_with_log(dir.path(), 6, 2);
            prepare(&s, &db);
            drop(s);
            match RaftStorage::open(db) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        assert_eq!(open_err(&|_, _| {}), "", "an intact store opens");
        fn log(db: &DB) -> &rocksdb::ColumnFamily {
            cf(db, CF_LOG)
        }
        let e = open_err(&|_, db| db.delete_cf(log(db), log_key(4)).unwrap());
        assert!(e.contains("expected entry 4 next"), "{e}");
        let e = open_err(&|_, db| db.delete_cf(log(db), log_key(2)).unwrap());
        assert!(e.contains("entries 2 to 2 are missing"), "{e}");
        let e = open_err(&|_, db| db.delete_cf(log(db), log_key(6)).unwrap());
        assert!(e.contains("committed but the log ends at 5"), "{e}");
        let e = open_err(&|_, db| {
            db.put_cf(log(db), log_key(5), encode(&entry(5, 1)))
                .unwrap()
        });
        assert!(e.contains("term lower"), "{e}");
        let e = open_err(&|_, db| db.delete_cf(cf(db, CF_META), KEY_SNAPSHOT).unwrap());
        assert!(e.contains("snapshot it starts from is missing"), "{e}");
        let e = open_err(&|_, db| db.delete_cf(cf(db, CF_META), KEY_CONF_STATE).unwrap());
        assert!(e.contains("membership record is missing"), "{e}");
    }
}
