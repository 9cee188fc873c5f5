//! The chaos run's own cluster: `nexus serve` processes started from this very binary,
//! on loopback or each in its own network namespace, that faults are injected into.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{Answer, Client};
use super::netns::Netns;

pub const ROOT_USER: &str = "root";
pub const ROOT_PASS: &str = "root";

pub struct Node {
    pub index: usize,
    ip: IpAddr,
    http: u16,
    health: u16,
    cluster: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Where clients connect (WebSocket on the http listener).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.http)
    }

    fn cluster_addr(&self) -> String {
        SocketAddr::new(self.ip, self.cluster).to_string()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The health listener answers 200: a leader is known and apply keeps up.
    pub fn healthy(&self) -> bool {
        let addr = SocketAddr::new(self.ip, self.health);
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
        let req = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
    }

    pub fn root(&self, timeout: Duration) -> anyhow::Result<Client> {
        Client::connect(self.client_addr(), ROOT_USER, ROOT_PASS, timeout)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Where nexus-faultfs mounts this node's disk (when the run uses it).
    fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }
}

/// Exit status of a node that refused its data dir as damaged.
const REFUSED: i32 = 65;

pub struct Cluster {
    pub nodes: Vec<Node>,
    exe: PathBuf,
    secret: String,
    /// One nexus-faultfs per node (its disk), when the run injects power cuts or slow disks.
    faultfs: Vec<Child>,
    /// Present when nodes run in their own namespaces (isolation possible). Dropped last.
    net: Option<Netns>,
}

impl Cluster {
    /// Lays out `n` nodes under `dir`; `net` puts each in its namespace; `faultfs` puts
    /// each node's data dir on a nexus-faultfs mount of its own.
    pub fn new(
        exe: &Path,
        dir: &Path,
        n: usize,
        net: Option<Netns>,
        faultfs: bool,
    ) -> anyhow::Result<Cluster> {
        let mut nodes = Vec::new();
        for i in 0..n {
            let node_dir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let (ip, http, health, cluster) = match &net {
                Some(net) => (IpAddr::V4(net.node_ip(i)), 8080, 8081, 7946),
                None => {
                    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
                    (lo, free_port()?, free_port()?, free_port()?)
                }
            };
            nodes.push(Node {
                index: i,
                ip,
                http,
                health,
                cluster,
                dir: node_dir,
                child: None,
            });
        }
        let secret = format!("{:032x}", rand::random::<u128>());
        let mut cluster = Cluster {
            nodes,
            exe: exe.to_path_buf(),
            secret,
            faultfs: Vec::new(),
            net,
        };
        if faultfs {
            cluster.mount_faultfs()?;
        }
        Ok(cluster)
    }

    /// Mounts a nexus-faultfs (found beside this binary) on each node's disk directory.
    fn mount_faultfs(&mut self) -> anyhow::Result<()> {
        use std::io::BufRead;
        let tool = self.exe.with_file_name("nexus-faultfs");
        anyhow::ensure!(
            tool.exists(),
            "power-cut and slow-disk need {} (built with nexus)",
            tool.display()
        );
        for node in &self.nodes {
            let backing = node.dir.join("backing");
            std::fs::create_dir_all(&backing)?;
            std::fs::create_dir_all(node.disk())?;
            let mut child = Command::new(&tool)
                .arg(&backing)
                .arg(node.disk())
                .arg("2000")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
            if line.trim() != "mounted" {
                let _ = child.kill();
                anyhow::bail!(
                    "nexus-faultfs did not mount on {} (root and /dev/fuse are needed)",
                    node.disk().display()
                );
            }
            self.faultfs.push(child);
        }
        Ok(())
    }

    /// Node `i`'s data dir: on its faultfs mount when there is one.
    fn data_dir(&self, i: usize) -> PathBuf {
        match self.faultfs.is_empty() {
            true => self.nodes[i].dir.join("data"),
            false => self.nodes[i].disk().join("data"),
        }
    }

    /// Damages one data file (WAL, SST or MANIFEST, drawn from `salt`) of stopped node `i`:
    /// one bit flipped, or the file cut short. Says what it did.
    pub fn damage(&self, i: usize, truncate: bool, salt: u64) -> anyhow::Result<String> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(salt);
        let dir = self.data_dir(i);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.ends_with(".log") || name.ends_with(".sst") || name.starts_with("MANIFEST-")
            })
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
            .collect();
        files.sort();
        anyhow::ensure!(!files.is_empty(), "no data file in {}", dir.display());
        let file = &files[rng.gen_range(0..files.len())];
        let len = std::fs::metadata(file)?.len();
        let offset = rng.gen_range(0..len);
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if truncate {
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)?
                .set_len(offset)?;
            Ok(format!("{name} cut from {len} to {offset} bytes"))
        } else {
            let bit = rng.gen_range(0..8u8);
            let mut bytes = std::fs::read(file)?;
            bytes[offset as usize] ^= 1 << bit;
            std::fs::write(file, bytes)?;
            Ok(format!("{name}: bit {bit} of byte {offset} flipped"))
        }
    }

    /// The power cut: every node's unsynced writes dropped (the nodes are stopped first).
    pub fn cut_power(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.faultfs.is_empty(), "power cuts need nexus-faultfs");
        for (node, fs) in self.nodes.iter().zip(&self.faultfs) {
            // Done once a file written unsynced right before reads back empty.
            let probe = node.disk().join(".probe");
            std::fs::write(&probe, b"unsynced")?;
            // SAFETY: kill(2) on a child process this harness started.
            unsafe { libc::kill(fs.id() as i32, libc::SIGUSR1) };
            let until = Instant::now() + Duration::from_secs(10);
            while std::fs::read(&probe).map_or(true, |b| !b.is_empty()) {
                anyhow::ensure!(Instant::now() < until, "the power cut did not happen");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Slow disk on or off for node `i`.
    pub fn toggle_slow_disk(&self, i: usize) -> anyhow::Result<()> {
        self.signal_faultfs(i, libc::SIGUSR2)
    }

    /// Full disk on or off for node `i`.
    pub fn toggle_full_disk(&self, i: usize) -> anyhow::Result<()> {
        self.signal_faultfs(i, libc::SIGRTMIN())
    }

    fn signal_faultfs(&self, i: usize, sig: i32) -> anyhow::Result<()> {
        let fs = self
            .faultfs
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("disk faults need nexus-faultfs"))?;
        // SAFETY: kill(2) on a child process this harness started.
        unsafe { libc::kill(fs.id() as i32, sig) };
        Ok(())
    }

    /// Does the operator's part for a node that refused its damaged data dir: `nexus
    /// rebuild`, then starts it again to rejoin from its peers.
    fn rebuild_refused(&mut self) {
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            self.nodes[i].child = None;
            if exited.code() != Some(REFUSED) {
                eprintln!("  n{i} exited: {exited}");
                continue;
            }
            eprintln!("  n{i} refused its damaged data dir: nexus rebuild, then start");
            let rebuilt = Command::new(&self.exe)
                .arg("rebuild")
                .arg("--data-dir")
                .arg(self.data_dir(i))
                .stdout(Stdio::null())
                .status();
            if !rebuilt.is_ok_and(|s| s.success()) {
                eprintln!("  n{i}: nexus rebuild failed");
                continue;
            }
            if let Err(e) = self.start(i) {
                eprintln!("  n{i} did not start again: {e:#}");
            }
        }
    }

    /// Unmounts the nodes' nexus-faultfs disks (the nodes are stopped first).
    pub fn unmount(&mut self) {
        for mut fs in self.faultfs.drain(..) {
            // SAFETY: kill(2) on a child process this harness started.
            unsafe { libc::kill(fs.id() as i32, libc::SIGTERM) };
            let _ = fs.wait();
        }
    }

    pub fn can_isolate(&self) -> bool {
        self.net.is_some()
    }

    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let joins: Vec<String> = self.nodes.iter().map(Node::cluster_addr).collect();
        let n = self.nodes.len();
        let data_dir = self.data_dir(i);
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())?;
        let mut cmd = match &self.net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.namespace(i)]).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["-l", &format!("http://{}", node.client_addr())])
            .args([
                "-l",
                &format!("health://{}", SocketAddr::new(node.ip, node.health)),
            ])
            .args(["--cluster", &node.cluster_addr()])
            .args(["--bootstrap-expect", &n.to_string()]);
        for j in &joins {
            cmd.args(["--join", j]);
        }
        cmd.env("NEXUS_CLUSTER_SECRET", &self.secret)
            .env("RUST_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        node.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(pid) = self.nodes[i].pid() {
            // SAFETY: kill(2) on a child process this harness started and has not reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        match &self.net {
            Some(net) => net.isolate(i),
            None => anyhow::bail!("isolation needs network namespaces"),
        }
    }

    pub fn heal_network(&self, i: usize) -> anyhow::Result<()> {
        match &self.net {
            Some(net) => net.heal(i),
            None => Ok(()),
        }
    }

    /// Waits until every node answers its health check, rebuilding meanwhile any node that
    /// refused its data dir as damaged.
    pub fn wait_healthy(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            self.rebuild_refused();
            if self.nodes.iter().all(Node::healthy) {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node its peers call leader, asked of each running node in turn.
    pub fn leader(&self) -> Option<usize> {
        for node in self.nodes.iter().filter(|n| n.running()) {
            let Ok(mut c) = node.root(Duration::from_secs(2)) else {
                continue;
            };
            let Answer::Ok(list) = c.call("sys.node.list", json!({}), Duration::from_secs(3))
            else {
                continue;
            };
            c.close();
            let leader = list.as_array().and_then(|l| {
                l.iter()
                    .find(|e| e["role"] == json!("leader"))
                    .and_then(|e| e["cluster"].as_str().map(str::to_string))
            });
            if let Some(addr) = leader {
                return self.nodes.iter().position(|n| n.cluster_addr() == addr);
            }
        }
        None
    }

    /// SIGTERM to every node, then SIGKILL to whatever is left after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for i in 0..self.nodes.len() {
            self.signal(i, libc::SIGCONT);
            self.signal(i, libc::SIGTERM);
        }
        let until = Instant::now() + grace;
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                while Instant::now() < until {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        self.unmount();
    }
}

/// A port free for both TCP and UDP on loopback (gossip uses UDP on the cluster port),
/// below the ephemeral range so outgoing connections do not take it meanwhile.
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port")
}

/// The first lines of a value, for messages.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}
