//! A single `nexus serve` process (not in-process), for tests that watch its memory.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port};

pub struct Standalone {
    pub child: Child,
    pub tcp: u16,
    pub http: u16,
    pub dir: tempfile::TempDir,
}

impl Standalone {
    pub fn start(extra: &[&str]) -> Standalone {
        let dir = tempfile::tempdir().unwrap();
        let (tcp, http, health) = (free_port(), free_port(), free_port());
        let log = std::env::var("NEXUS_TEST_NODE_LOG")
            .map(std::path::PathBuf::from)
            .unwrap_or(dir.path().join("node.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["-l", &format!("tcp://127.0.0.1:{tcp}")])
            .args(["-l", &format!("http://127.0.0.1:{http}")])
            .args(["-l", &format!("health://127.0.0.1:{health}")])
            .args(extra)
            // Freed memory goes back to the system at once, not after mimalloc's delay, so
            // the RSS the tests read is what the node holds, not what the allocator keeps
            // for reuse (a 16 MiB scrypt buffer per recent login, unknown users included).
            .env("MIMALLOC_PURGE_DELAY", "0")
            .env(
                "RUST_LOG",
                std::env::var("NEXUS_TEST_NODE_RUST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let node = Standalone {
            child,
            tcp,
            http,
            dir,
        };
        assert!(
            eventually(Duration::from_secs(30), || node.ping()),
            "node did not start"
        );
        node
    }

    /// A fresh connection answers sys.ping.
    pub fn ping(&self) -> bool {
        let url = format!("tcp://127.0.0.1:{}", self.tcp);
        nexus_client::Client::connect(&url, &Default::default())
            .is_ok_and(|mut c| c.call("sys.ping", serde_json::json!({})).is_ok())
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
