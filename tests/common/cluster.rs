//! Clusters of real `nexus serve` processes on loopback, for the multi-node tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{eventually, expect_ok, free_port, Client, ROOT_PASS};

/// One `nexus serve` process with its own data dir and ports.
pub struct Proc {
    /// The `nexus` binary it runs (this build unless a test says otherwise).
    pub bin: PathBuf,
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub tcp: u16,
    pub health: u16,
    pub cluster: u16,
    pub args: Vec<String>,
}

impl Proc {
    pub fn start(dir: &Path, cluster: u16, join: &[u16], extra: &[&str]) -> Proc {
        Self::start_binary(
            env!("CARGO_BIN_EXE_nexus").as_ref(),
            dir,
            cluster,
            join,
            extra,
        )
    }

    /// `start` with another `nexus` binary (an older release).
    pub fn start_binary(
        bin: &Path,
        dir: &Path,
        cluster: u16,
        join: &[u16],
        extra: &[&str],
    ) -> Proc {
        let mut args: Vec<String> = vec![
            "--cluster".into(),
            format!("127.0.0.1:{cluster}"),
            "--raft-tick-ms".into(),
            "50".into(),
        ];
        for j in join {
            args.push("--join".into());
            args.push(format!("127.0.0.1:{j}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Proc {
            bin: bin.to_path_buf(),
            child: None,
            dir: dir.to_path_buf(),
            tcp: free_port(),
            health: free_port(),
            cluster,
            args,
        };
        p.spawn();
        p
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["-l", &format!("tcp://127.0.0.1:{}", self.tcp)])
            .args(["-l", &format!("health://127.0.0.1:{}", self.health)])
            .args(&self.args)
            .env("RUST_LOG", "info,raft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// The health listener answers 200 (a leader is known, apply keeps up). Listeners
    /// are bound before the node serves them, so a connect alone says nothing.
    pub fn healthy(&self) -> bool {
        super::http_status(([127, 0, 0, 1], self.health).into()) == 200
    }

    pub fn wait_ready(&self, within: Duration) {
        assert!(
            eventually(within, || self.healthy()),
            "node on {} not ready; its log:\n{}",
            self.cluster,
            self.log()
        );
    }

    pub fn root(&self) -> Client {
        let mut c = Client::tcp(format!("127.0.0.1:{}", self.tcp).parse().unwrap());
        expect_ok(c.login("root", ROOT_PASS));
        c
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// This node's own entry in its node list.
    fn own_entry(&self) -> Value {
        let mut c = self.root();
        let list = expect_ok(c.call("sys.node.list", json!({})));
        list.as_array()
            .unwrap()
            .iter()
            .find(|n| n["cluster"] == json!(format!("127.0.0.1:{}", self.cluster)))
            .cloned()
            .unwrap_or_default()
    }

    /// Role of this node as it reports itself.
    pub fn role(&self) -> String {
        self.own_entry()["role"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// This node's raft id, as it reports itself.
    pub fn raft_id(&self) -> u64 {
        self.own_entry()["raftId"].as_u64().expect("a raft id")
    }
}

/// Bytes that arrived on established loopback TCP connections to local `port` and that
/// its process has not read yet (from /proc/net/tcp): what a frozen node has been sent.
pub fn unread_bytes_at(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            let established = *cols.get(3)? == "01";
            let rx_queue = u64::from_str_radix(cols.get(4)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && established).then_some(rx_queue)
        })
        .sum()
}

/// Index of the node that says it leads.
pub fn leader_of(nodes: &[Proc]) -> usize {
    (0..nodes.len())
        .find(|i| nodes[*i].role() == "leader")
        .expect("a leader")
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes a secret file with `mode`.
pub fn secret_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    path
}

/// A 3-node cluster: the first bootstraps, the others join it.
pub fn three_joined(root: &Path, extra: &[&str]) -> Vec<Proc> {
    three_joined_each(root, |_| extra.iter().map(|s| s.to_string()).collect())
}

/// Like `three_joined`, with node `i`'s extra arguments from `extra(i)`.
pub fn three_joined_each(root: &Path, extra: impl Fn(usize) -> Vec<String>) -> Vec<Proc> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = root.join(format!("n{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let join: Vec<u16> = if i == 0 { vec![] } else { vec![ports[0]] };
        let args = extra(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(Proc::start(&dir, *port, &join, &args));
    }
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    nodes
}

/// Waits until `n` has `voters` voters in its own node list.
pub fn wait_voters(n: &Proc, voters: usize) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), || {
        let mut c = n.root();
        last = expect_ok(c.call("sys.node.list", json!({})));
        let roles: Vec<&str> = last
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["role"].as_str().unwrap_or_default())
            .collect();
        roles.iter().filter(|r| **r == "leader").count() == 1
            && roles
                .iter()
                .filter(|r| **r == "leader" || **r == "follower")
                .count()
                == voters
    });
    assert!(ok, "expected {voters} voters, node list: {last:#}");
    last
}
