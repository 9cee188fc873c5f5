//! Storage faults against the real `nexus` binary and real RocksDB files: a flipped bit or
//! a truncation anywhere in a node's data dir either loses nothing or makes the node refuse
//! to start (one line, exit 65, nothing changed); in a cluster, a damaged member never
//! votes with a shortened log, and `nexus rebuild` brings it back from its peers.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{leader_of, three_joined, wait_voters, Proc as ClusterProc};
use common::*;
use serde_json::json;

const REFUSED: i32 = 65;

/// A single node started on `dir` (no cluster), its stderr kept in `dir`'s sibling file.
struct Node {
    child: Child,
    tcp: SocketAddr,
    health: SocketAddr,
    stderr: PathBuf,
}

impl Node {
    fn spawn(dir: &Path, extra: &[&str]) -> Node {
        let tcp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let stderr = dir.with_extension("stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["-l", &format!("tcp://{tcp}")])
            .args(["-l", &format!("health://{health}")])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Node {
            child,
            tcp,
            health,
            stderr,
        }
    }

    /// Serving (its health check answers 200) or exited, whichever comes first. Listeners
    /// are bound before storage opens, so a connection alone says nothing.
    fn outcome(&mut self) -> Result<Client, ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if http_status(self.health) == 200 {
                let mut c = Client::tcp(self.tcp);
                expect_ok(c.login("root", ROOT_PASS));
                return Ok(c);
            }
            assert!(Instant::now() < deadline, "node neither served nor exited");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The committed index `nexus.durable` records (0 before its first write).
fn durable_index(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("nexus.durable"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("committed = "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until `nexus.durable` covers every write `c` had acknowledged: reads what it
/// records, commits one more write (so the index grows past it), and waits for a value
/// above it, which was written after everything acknowledged before.
fn wait_durable_witness(dir: &Path, c: &mut Client) {
    let before = durable_index(dir);
    expect_ok(c.call(
        "user.setTags",
        json!({"user": "root", "prefix": "witness", "tags": {"n": 1}}),
    ));
    assert!(
        eventually(Duration::from_secs(10), || durable_index(dir) > before),
        "nexus.durable stayed at {before}"
    );
}

fn create_users(c: &mut Client, range: std::ops::Range<usize>) {
    for i in range {
        create_user(c, &format!("ack.u{i:04}"), "password1");
    }
}

fn acknowledged_users(c: &mut Client) -> u64 {
    let n = expect_ok(c.call("user.count", json!({"prefix": "ack."})));
    n["count"].as_u64().unwrap()
}

/// Every file's bytes, but RocksDB's info logs (which a start rotates).
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with("LOG"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// One storage fault in one file.
enum Damage {
    Flip { offset: u64, bit: u8 },
    Cut(u64),
}

impl Damage {
    fn apply(&self, file: &Path) {
        match *self {
            Damage::Flip { offset, bit } => flip_bit(file, offset, bit),
            Damage::Cut(len) => truncate(file, len),
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Flip { offset, bit } => write!(f, "bit {bit} of byte {offset} flipped"),
            Damage::Cut(len) => write!(f, "cut to {len} bytes"),
        }
    }
}

fn flip_bit(file: &Path, offset: u64, bit: u8) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(file, bytes).unwrap();
}

fn truncate(file: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// The one line a refusing node prints.
fn refusal_line(stderr: &Path) -> String {
    let text = std::fs::read_to_string(stderr).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("nexus: refusing to start"))
        .collect();
    assert_eq!(lines.len(), 1, "one refusal line expected:\n{text}");
    lines[0].to_string()
}

/// 300 acknowledged users in a data dir holding both SST files (what the first 150 became
/// when the restarted node replayed its WAL) and a WAL (the last 150), with state snapshots
/// and log compaction along the way.
fn acknowledged_data_dir(dir: &Path) {
    let flags = ["--snapshot-every", "40", "--log-retain", "10"];
    let mut node = Node::spawn(dir, &flags);
    create_users(&mut node.outcome().unwrap(), 0..150);
    node.kill9();
    let mut node = Node::spawn(dir, &flags);
    let mut c = node.outcome().unwrap();
    assert_eq!(acknowledged_users(&mut c), 150);
    create_users(&mut c, 150..300);
    wait_durable_witness(dir, &mut c);
    node.kill9();
}

/// Every data file, each damaged at offsets spread over it (a flipped bit, or cut short):
/// the node either serves all 300 acknowledged users or refuses with one line and changes
/// nothing. RocksDB's info logs and LOCK hold no data and are left out.
#[test]
fn a_flipped_bit_or_truncation_anywhere_never_loses_an_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    acknowledged_data_dir(&base);
    let files: Vec<String> = contents(&base)
        .into_keys()
        .filter(|f| f != "LOCK")
        .collect();
    for kind in [".log", ".sst", "MANIFEST-", "CURRENT", "nexus.id"] {
        assert!(
            files.iter().any(|f| f.contains(kind)),
            "no {kind} file in {files:?}"
        );
    }
    let mut refused = BTreeMap::<String, u32>::new();
    let mut served = BTreeMap::<String, u32>::new();
    let mut case = 0u64;
    for file in &files {
        let size = std::fs::metadata(base.join(file)).unwrap().len();
        let mut damages = Vec::new();
        for k in 0..8u64 {
            // Spread over the file, shifted so that the offsets differ from file to file.
            let offset = (size * k / 8 + (case * 37 + k * 11) % (size / 8).max(1)).min(size - 1);
            let bit = ((case + k) % 8) as u8;
            damages.push(Damage::Flip { offset, bit });
        }
        for len in [0, size / 3, size * 2 / 3, size - 1] {
            damages.push(Damage::Cut(len));
        }
        // A cut between two whole records looks like a log that simply ended there: the
        // hardest cut to see, in the two files written as logs. Every record of a MANIFEST (a few dozen), six spread over a WAL.
        if file.starts_with("MANIFEST-") || file.ends_with(".log") {
            let ends = wal_record_ends(&std::fs::read(base.join(file)).unwrap());
            let picked = if file.ends_with(".log") {
                ends.len().min(6)
            } else {
                ends.len()
            };
            for k in 0..picked {
                let end = ends[(k * ends.len() / picked).min(ends.len() - 1)] as u64;
                if end < size {
                    damages.push(Damage::Cut(end));
                }
            }
        }
        for damage in damages {
            let what = damage.to_string();
            case += 1;
            let dir = root.path().join(format!("case{case}"));
            copy_dir(&base, &dir);
            damage.apply(&dir.join(file));
            let before = contents(&dir);
            let mut node = Node::spawn(&dir, &[]);
            match node.outcome() {
                Ok(mut c) => {
                    let n = acknowledged_users(&mut c);
                    assert_eq!(n, 300, "{file}, {what}: served with {n} of 300 users");
                    *served.entry(file.clone()).or_default() += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), Some(REFUSED), "{file}, {what}: {status}");
                    let line = refusal_line(&node.stderr);
                    assert!(
                        line.contains("nexus rebuild --data-dir") && line.contains("backup"),
                        "{file}, {what}: the line names no recovery path: {line}"
                    );
                    assert!(
                        contents(&dir) == before,
                        "{file}, {what}: a refusing node changed its data dir"
                    );
                    *refused.entry(file.clone()).or_default() += 1;
                }
            }
            node.kill9();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!("refused: {refused:?}\nserved with everything: {served:?}");
    // The WAL and the SST files hold the users: damage there must have been seen.
    for kind in [".log", ".sst"] {
        let n: u32 = refused
            .iter()
            .filter(|(f, _)| f.ends_with(kind))
            .map(|(_, n)| n)
            .sum();
        assert!(n > 0, "no damage to a {kind} file was refused: {refused:?}");
    }
}

/// A young data dir (nothing flushed yet, as after a rebuild) whose MANIFEST is cut after
/// any of its records: the node serves every acknowledged user or refuses with one line
/// that names the MANIFEST. A cut that drops the records creating the column families
/// once made the node exit with RocksDB's "Column family not found" instead, and a chaos
/// harness waiting for a refusal wait for ever.
#[test]
fn a_young_manifest_cut_after_any_record_is_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let mut node = Node::spawn(&base, &[]);
    let mut c = node.outcome().unwrap();
    create_users(&mut c, 0..50);
    wait_durable_witness(&base, &mut c);
    node.kill9();
    let manifest = contents(&base)
        .into_keys()
        .find(|f| f.starts_with("MANIFEST-"))
        .expect("a MANIFEST");
    let size = std::fs::metadata(base.join(&manifest)).unwrap().len();
    let ends = wal_record_ends(&std::fs::read(base.join(&manifest)).unwrap());
    assert!(ends.len() >= 3, "{manifest}: only {} records", ends.len());
    let mut named = 0;
    for (case, end) in ends
        .iter()
        .map(|e| *e as u64)
        .filter(|e| *e < size)
        .enumerate()
    {
        let dir = root.path().join(format!("case{case}"));
        copy_dir(&base, &dir);
        truncate(&dir.join(&manifest), end);
        let mut node = Node::spawn(&dir, &[]);
        match node.outcome() {
            Ok(mut c) => assert_eq!(acknowledged_users(&mut c), 50, "cut to {end}"),
            Err(status) => {
                assert_eq!(status.code(), Some(REFUSED), "cut to {end}: {status}");
                let line = refusal_line(&node.stderr);
                assert!(line.contains("nexus rebuild --data-dir"), "{line}");
                named += usize::from(line.contains(&manifest));
            }
        }
        node.kill9();
    }
    assert!(named > 0, "no cut of {manifest} was refused by its name");
}

/// A single node on `dir` that acknowledged `users` users (and, with `witness`, recorded
/// them in `nexus.durable`), then killed: returns its WAL file.
fn stopped_after_users(dir: &Path, users: usize, witness: bool) -> PathBuf {
    let mut node = Node::spawn(dir, &[]);
    let mut c = node.outcome().unwrap();
    create_users(&mut c, 0..users);
    if witness {
        wait_durable_witness(dir, &mut c);
    }
    node.kill9();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a WAL file")
}

/// A refusal names the damaged file: the WAL, whose open error from RocksDB does not.
#[test]
fn a_damaged_wal_is_named_and_a_marked_dir_stays_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let wal = stopped_after_users(&dir, 100, true);
    let size = std::fs::metadata(&wal).unwrap().len();
    flip_bit(&wal, size / 2, 3);
    let mut node = Node::spawn(&dir, &[]);
    let status = node.outcome().err().expect("refused");
    assert_eq!(status.code(), Some(REFUSED));
    let line = refusal_line(&node.stderr);
    let name = wal.file_name().unwrap().to_string_lossy().to_string();
    assert!(line.contains(&name), "the WAL is not named: {line}");

    // A node that found damage while running marks its dir: later starts refuse it even
    // where the database itself would open.
    let fine = root.path().join("fine");
    let mut node = Node::spawn(&fine, &[]);
    create_users(&mut node.outcome().unwrap(), 0..3);
    node.kill9();
    std::fs::write(fine.join("nexus.damaged"), "earlier: a read found damage\n").unwrap();
    let mut node = Node::spawn(&fine, &[]);
    assert_eq!(node.outcome().err().and_then(|s| s.code()), Some(REFUSED));
    assert!(refusal_line(&node.stderr).contains("a read found damage"));
}

/// The acknowledged users a cluster node lists, on a fresh connection (`None` when the
/// node closes it: a node declared down while frozen does so until it is announced again).
fn users_on(p: &ClusterProc) -> Option<u64> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        acknowledged_users(&mut p.root())
    }))
    .ok()
}

fn signal(p: &ClusterProc, sig: i32) {
    let pid = p.child.as_ref().expect("running").id() as i32;
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// The WAL file of a stopped cluster node (the largest, when RocksDB rolled one).
fn wal_of(p: &ClusterProc) -> PathBuf {
    std::fs::read_dir(p.dir.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a WAL file")
}

/// The data loss of the issue, on three nodes: a follower frozen while 300 writes commit
/// with the leader and the other follower; that follower is killed and one bit of its WAL
/// flipped; the leader is killed. The damaged follower refuses to start instead of forming
/// a majority with the frozen one; the leader comes back and the cluster serves all 300.
/// `nexus rebuild` then brings the damaged node back as a new member, with everything.
#[test]
fn a_damaged_follower_refuses_and_rebuilds_from_its_peers() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &[]);
    wait_voters(&nodes[0], 3);
    let leader = leader_of(&nodes);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (frozen, damaged) = (followers[0], followers[1]);
    let old_id = nodes[damaged].raft_id();

    signal(&nodes[frozen], libc::SIGSTOP);
    let mut c = nodes[leader].root();
    create_users(&mut c, 0..300);
    drop(c);
    nodes[damaged].kill9();
    let wal = wal_of(&nodes[damaged]);
    let size = std::fs::metadata(&wal).unwrap().len();
    flip_bit(&wal, size / 2, 5);
    nodes[leader].kill9();

    // The damaged follower refuses at once; it never gets to vote with the frozen one.
    nodes[damaged].spawn();
    let mut child = nodes[damaged].child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the damaged follower is running; its log:\n{}",
            nodes[damaged].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(REFUSED), "{}", nodes[damaged].log());
    let log = nodes[damaged].log();
    let wal_name = wal.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        log.lines()
            .any(|l| l.starts_with("nexus: refusing to start") && l.contains(&wal_name)),
        "no refusal line naming {wal_name}:\n{log}"
    );

    signal(&nodes[frozen], libc::SIGCONT);
    nodes[leader].spawn();
    for i in [leader, frozen] {
        nodes[i].wait_ready(Duration::from_secs(60));
    }
    for i in [leader, frozen] {
        let mut seen = None;
        assert!(
            eventually(Duration::from_secs(30), || {
                seen = users_on(&nodes[i]);
                seen == Some(300)
            }),
            "node {i} lost acknowledged users: {seen:?} of 300"
        );
    }

    // The operator's one command, then the node is started exactly as before.
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("rebuild")
        .arg("--data-dir")
        .arg(nodes[damaged].dir.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let aside: Vec<String> = std::fs::read_dir(&nodes[damaged].dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("data.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged data is kept aside");
    assert!(nodes[damaged].dir.join(&aside[0]).join(&wal_name).exists());
    nodes[damaged].spawn();
    nodes[damaged].wait_ready(Duration::from_secs(60));
    wait_voters(&nodes[leader], 3);
    // Every member, those without a running process too: the old raft id is gone.
    let list = expect_ok(
        nodes[leader]
            .root()
            .call("sys.node.list", json!({"all": true})),
    );
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["raftId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "three members: {list:#}");
    assert!(
        !ids.contains(&old_id),
        "the old raft id is still a member: {list:#}"
    );
    assert_ne!(
        nodes[damaged].raft_id(),
        old_id,
        "rebuilt with a new raft id"
    );
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            seen = users_on(&nodes[damaged]);
            seen == Some(300)
        }),
        "the rebuilt node serves {seen:?} of 300 users"
    );
    assert!(
        !nodes[damaged].dir.join("data/nexus.rebuild").exists(),
        "the rebuild request is cleared once the node is a member"
    );
}

/// Ends of the logical records of a RocksDB log file, a WAL or a MANIFEST (format: 32 KiB
/// blocks of records with a 7-byte header: checksum, length, type; FULL = 1 and LAST = 4
/// end a record).
fn wal_record_ends(bytes: &[u8]) -> Vec<usize> {
    const BLOCK: usize = 32 * 1024;
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos + 7 <= bytes.len() {
        let left_in_block = BLOCK - pos % BLOCK;
        if left_in_block < 7 {
            pos += left_in_block;
            continue;
        }
        let len = u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]) as usize;
        let kind = bytes[pos + 6];
        if kind == 0 && len == 0 {
            break; // preallocated space
        }
        pos += 7 + len;
        if kind == 1 || kind == 4 {
            ends.push(pos);
        }
    }
    ends
}

/// A follower whose WAL lost its last records at a record boundary, inside the second that
/// `nexus.durable` lags (stood for here by removing that file), passes every check at
/// start. Then one of two things happens, both safe, depending on what reaches it first:
/// - a heartbeat: the leader knows how far its log reached, and the node marks its dir
///   damaged and stops with one line, exit 65; every later start refuses it;
/// - an append the leader answers by resending from where the node's log now ends: the
///   node takes the missing entries again.
///
/// Either way it never serves less, and the cluster keeps every write.
#[test]
fn a_follower_that_lost_its_log_tail_is_stopped_or_refilled_by_its_leader() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &[]);
    wait_voters(&nodes[0], 3);
    let leader = leader_of(&nodes);
    let cut = (0..3).find(|i| *i != leader).unwrap();
    let mut c = nodes[leader].root();
    create_users(&mut c, 0..200);
    drop(c);
    nodes[cut].kill9();
    let wal = wal_of(&nodes[cut]);
    let bytes = std::fs::read(&wal).unwrap();
    let ends = wal_record_ends(&bytes);
    assert!(ends.len() > 100, "{} records in {wal:?}", ends.len());
    assert_eq!(
        *ends.last().unwrap(),
        bytes.len(),
        "the parser reads the whole WAL"
    );
    // A record boundary well inside the writes: the log loses its last tens of entries.
    truncate(&wal, ends[ends.len() * 3 / 4] as u64);
    std::fs::remove_file(nodes[cut].dir.join("data/nexus.durable")).unwrap();

    nodes[cut].spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let exited = nodes[cut].child.as_mut().unwrap().try_wait().unwrap();
        if let Some(status) = exited {
            nodes[cut].child = None;
            break Some(status);
        }
        if users_on(&nodes[cut]) == Some(200) {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "the follower with a shortened log neither stopped nor caught up; its log:\n{}",
            nodes[cut].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    match stopped {
        Some(status) => {
            eprintln!("the leader's heartbeat stopped the follower");
            assert_eq!(status.code(), Some(REFUSED), "{}", nodes[cut].log());
            let marked =
                std::fs::read_to_string(nodes[cut].dir.join("data/nexus.damaged")).unwrap();
            assert!(marked.contains("out of range"), "{marked}");
            nodes[cut].spawn();
            let status = nodes[cut].child.take().unwrap().wait().unwrap();
            assert_eq!(status.code(), Some(REFUSED));
            let log = nodes[cut].log();
            assert!(
                log.lines()
                    .any(|l| l.starts_with("nexus: refusing to start: it was marked damaged")),
                "{log}"
            );
        }
        None => eprintln!("the leader refilled the follower's log"),
    }
    let other = (0..3).find(|i| *i != leader && *i != cut).unwrap();
    for i in [leader, other] {
        let mut seen = None;
        assert!(
            eventually(Duration::from_secs(30), || {
                seen = users_on(&nodes[i]);
                seen == Some(200)
            }),
            "node {i} serves {seen:?} of 200 users"
        );
    }
}

/// A write cut short by a crash or a full disk leaves an incomplete last WAL record. It
/// was never acknowledged (a write is acknowledged once fsync'd whole), so the node passes
/// over it and serves everything, instead of calling the WAL damaged.
#[test]
fn an_incomplete_last_wal_record_is_a_write_cut_short_not_damage() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let wal = stopped_after_users(&dir, 50, true);
    let mut bytes = std::fs::read(&wal).unwrap();
    let ends = wal_record_ends(&bytes);
    assert_eq!(*ends.last().unwrap(), bytes.len());
    // The start of one more FULL record of 100 bytes, of which only 20 reached the disk.
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 100, 0, 1]);
    bytes.extend_from_slice(&[0x55; 20]);
    std::fs::write(&wal, &bytes).unwrap();
    let mut node = Node::spawn(&dir, &[]);
    let mut c = node
        .outcome()
        .unwrap_or_else(|s| panic!("refused ({s}): {}", refusal_line(&node.stderr)));
    assert_eq!(acknowledged_users(&mut c), 50);
}

/// A flipped bit that enlarges the length field of a record in the WAL's last block makes
/// RocksDB take it for a write cut short and drop it and all after it. With `nexus.durable`
/// removed (standing for the second it lags), only our own read of the WAL tail sees the
/// valid records that follow, and refuses.
#[test]
fn a_damaged_length_field_near_the_wal_end_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let wal = stopped_after_users(&dir, 60, false);
    std::fs::remove_file(dir.join("nexus.durable")).ok();
    let bytes = std::fs::read(&wal).unwrap();
    let ends = wal_record_ends(&bytes);
    // The fifth record from the end, in the file's last (partial) block.
    let start = ends[ends.len() - 6];
    assert_eq!(
        start / (32 * 1024),
        bytes.len() / (32 * 1024),
        "not in the last block"
    );
    let high = bytes[start + 5];
    let bit = (4..8)
        .rev()
        .find(|b| high & (1 << b) == 0)
        .expect("a clear high bit");
    flip_bit(&wal, (start + 5) as u64, bit);
    let mut node = Node::spawn(&dir, &[]);
    match node.outcome() {
        Ok(mut c) => panic!("served {} of 60 users", acknowledged_users(&mut c)),
        Err(status) => {
            assert_eq!(status.code(), Some(REFUSED));
            let line = refusal_line(&node.stderr);
            let name = wal.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                line.contains(&name) && line.contains("a valid record follows"),
                "{line}"
            );
        }
    }
}
