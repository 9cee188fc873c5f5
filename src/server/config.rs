//! `nexus serve`'s settings: every listener, timeout and limit with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::telemetry::LogFormat;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file of settings: each key is a flag's long name (`data-dir = "/var/lib/nexus"`,
    /// `listen = ["tcp://0.0.0.0:1717"]`). A flag, then its NEXUS_* variable, then the file,
    /// then the default: the first that gives a value wins.
    #[arg(long, env = "NEXUS_SERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the settings in force (flags, variables, file and defaults merged; secrets
    /// left out) as a config file, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Where the node keeps its Raft log and state.
    #[arg(long, env = "NEXUS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Start a new cluster of one from this backup (`nexus backup`), with a new cluster
    /// identity; the data dir must be empty. Other nodes then join it as usual. Like
    /// --force-new-cluster, a one-time action: command line only (no variable, no key).
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,

    /// This member's cluster lost its majority for good: make it the only voter of a new
    /// cluster (new identity) holding every entry its log has, then serve. For one start
    /// only; the old members are refused if they come back.
    #[arg(long, conflicts_with = "restore")]
    pub force_new_cluster: bool,

    /// Listener URL, repeatable (or comma-separated): tcp://, ssl://, http://, https://,
    /// health://host:port.
    #[arg(
        short = 'l',
        long = "listen",
        env = "NEXUS_LISTEN",
        value_name = "URL",
        value_delimiter = ',',
        default_values = ["tcp://127.0.0.1:1717", "http://127.0.0.1:8080"]
    )]
    pub listen: Vec<String>,

    /// root's password at the first boot of a fresh cluster (default "root", with a warning).
    #[arg(long, env = "NEXUS_ROOT_PASSWORD", hide_env_values = true)]
    pub root_password: Option<String>,

    /// PEM certificate chain for ssl:// and https:// listeners.
    #[arg(long, env = "NEXUS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for ssl:// and https:// listeners.
    #[arg(long, env = "NEXUS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Largest accepted message in bytes; bigger ones are refused and the connection closed.
    #[arg(long, env = "NEXUS_MAX_MESSAGE_SIZE", default_value_t = 32 * 1024 * 1024)]
    pub max_message_size: usize,

    /// Connections each tcp/ssl listener, and each http/https worker, serves at once; more
    /// wait in the listen backlog.
    #[arg(long, env = "NEXUS_MAX_CONNECTIONS", default_value_t = 25_000)]
    pub max_connections: usize,

    /// Threads serving http/https (WebSocket and bridge) connections; 0 = one per CPU core.
    #[arg(long, env = "NEXUS_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,

    /// Seconds a TLS client has to finish its handshake.
    #[arg(long, env = "NEXUS_TLS_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub tls_handshake_timeout: u64,

    /// Password hashes (scrypt: 16 MiB and a core each) computed at once; 0 = one per core.
    #[arg(long, env = "NEXUS_HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,

    /// Connections the kernel queues for each listener before they are accepted (capped
    /// by net.core.somaxconn).
    #[arg(long, env = "NEXUS_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// Requests one connection may have running at once; reading pauses beyond that.
    #[arg(long, env = "NEXUS_MAX_INFLIGHT", default_value_t = 1024)]
    pub max_inflight: usize,

    /// Default idle seconds before a connection is closed (sys.watchdog changes it per session).
    #[arg(long, env = "NEXUS_WATCHDOG", default_value_t = 90)]
    pub watchdog: u64,

    /// Test only: the shortest watchdog a session may set (10 s otherwise, as the API says),
    /// so that watchdog tests need not wait 10 s.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_watchdog_min_secs: Option<u64>,

    /// Test only: how long `sys.login` waits for a login plugin's worker (default 10 s),
    /// in milliseconds, so that its timeout tests need not wait 10 s.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub test_login_plugin_timeout_ms: Option<u64>,

    /// Raft tick in milliseconds (a follower campaigns after 16 to 32 ticks without a
    /// leader; the leader sends heartbeats every 3).
    #[arg(long, env = "NEXUS_RAFT_TICK_MS", default_value_t = 50)]
    pub raft_tick_ms: u64,

    /// A write not applied within this time answers -32603 (retryable), in milliseconds.
    #[arg(long, env = "NEXUS_PROPOSAL_TIMEOUT_MS", default_value_t = 5000)]
    pub proposal_timeout_ms: u64,

    /// A list/count/login read waiting for the leader's confirmation fails after this
    /// time (retryable), in milliseconds.
    #[arg(long, env = "NEXUS_READ_TIMEOUT_MS", default_value_t = 5000)]
    pub read_timeout_ms: u64,

    /// Log entries kept behind a snapshot, so a follower briefly behind catches up from the
    /// log instead of a snapshot.
    #[arg(long, env = "NEXUS_LOG_RETAIN", default_value_t = 5000)]
    pub log_retain: u64,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Applied Raft entries between state snapshots (each compacts the log).
    #[arg(long, env = "NEXUS_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,

    /// Free disk space (MiB) kept under the data dir: below it the node refuses writes
    /// with an error and keeps serving reads, until space returns.
    #[arg(
        long,
        env = "NEXUS_DISK_RESERVE_MB",
        value_name = "MIB",
        default_value_t = 128
    )]
    pub disk_reserve_mb: u64,

    /// A state snapshot also waits until the log applied since the last one is this
    /// percentage of that snapshot's size, so a large state (a deep task queue) is not
    /// rewritten every few thousand commands. 0: count entries only.
    #[arg(long, env = "NEXUS_SNAPSHOT_LOG_PERCENT", default_value_t = 100)]
    pub snapshot_log_percent: u64,

    /// After a TCP client stops sending (EOF), how long its requests in flight may still be
    /// answered before the connection closes, in milliseconds.
    #[arg(long, env = "NEXUS_EOF_GRACE_MS", default_value_t = 1000)]
    pub eof_grace_ms: u64,

    /// How often the leader checks task and pull deadlines, in milliseconds.
    #[arg(long, env = "NEXUS_EXPIRE_TICK_MS", default_value_t = 100)]
    pub expire_tick_ms: u64,

    /// A new connection whose session cannot be committed within this time (no Raft
    /// quorum) is closed, in milliseconds; requests wait for the commit meanwhile.
    #[arg(long, env = "NEXUS_SESSION_OPEN_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_open_timeout_ms: u64,

    /// A closed connection's session close is retried until committed for this long, in
    /// milliseconds.
    #[arg(long, env = "NEXUS_SESSION_CLOSE_TIMEOUT_MS", default_value_t = 60_000)]
    pub session_close_timeout_ms: u64,

    /// Failed logins one client address may have within --login-fail-window-secs before
    /// its logins are refused until the window passes (0: no throttling).
    #[arg(long, env = "NEXUS_LOGIN_FAIL_LIMIT", default_value_t = 10)]
    pub login_fail_limit: u32,

    /// The window --login-fail-limit counts failures in, in seconds.
    #[arg(long, env = "NEXUS_LOGIN_FAIL_WINDOW_SECS", default_value_t = 60)]
    pub login_fail_window_secs: u64,

    /// Bytes (estimated) the messages queued in one pipe may take; writes beyond are
    /// dropped and counted in the pipe's drops, like writes beyond its length.
    #[arg(long, env = "NEXUS_MAX_PIPE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_pipe_bytes: usize,

    /// Throttle failed logins from loopback addresses too (exempt by default: local tools
    /// and tests log in from there).
    #[arg(long, env = "NEXUS_LOGIN_THROTTLE_LOOPBACK")]
    pub login_throttle_loopback: bool,

    /// Serve GET /metrics on health listeners only, not on the http/https listeners
    /// clients use (the metrics need no login and name first task-path segments).
    #[arg(long, env = "NEXUS_METRICS_ONLY_ON_HEALTH")]
    pub metrics_only_on_health: bool,

    /// How often the node checks that its sessions and its own entry in the replicated
    /// node table match what it really has (and repairs them), in milliseconds.
    #[arg(long, env = "NEXUS_RECONCILE_EVERY_MS", default_value_t = 2000)]
    pub reconcile_every_ms: u64,

    /// Seconds to wait for sessions to close cleanly on SIGTERM/SIGINT.
    #[arg(long, env = "NEXUS_SHUTDOWN_GRACE", default_value_t = 5)]
    pub shutdown_grace: u64,

    /// Log format.
    #[arg(long, env = "NEXUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Debug logging.
    #[arg(short, long, env = "NEXUS_VERBOSE")]
    pub verbose: bool,
}

/// Cluster membership and the peer transport.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// This node's cluster address: gossip (UDP) and the peer transport (TCP) on the same
    /// port. Without it the node is standalone.
    #[arg(long, env = "NEXUS_CLUSTER", value_name = "HOST:PORT")]
    pub cluster: Option<String>,

    /// The cluster address peers use when it differs from --cluster (NAT, containers).
    #[arg(long, env = "NEXUS_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Members or seeds to join through (repeatable, or comma-separated).
    #[arg(
        long,
        env = "NEXUS_JOIN",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub join: Vec<String>,

    /// With --join on a fresh node and no cluster found: wait until this many nodes see
    /// each other, then form the cluster with them as voters.
    #[arg(long, env = "NEXUS_BOOTSTRAP_EXPECT", value_name = "N")]
    pub bootstrap_expect: Option<usize>,

    /// Members beyond this many voters stay learners.
    #[arg(long, env = "NEXUS_MAX_VOTERS", default_value_t = 5)]
    pub max_voters: usize,

    /// File of the cluster secrets peers seal their links with, one per line: the first
    /// to dial with, any accepted (mode 600; read again on SIGHUP).
    #[arg(long, env = "NEXUS_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// The cluster secret itself (environment only).
    #[arg(
        long,
        env = "NEXUS_CLUSTER_SECRET",
        hide = true,
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,

    /// Allow no cluster secret on a non-loopback address, or a weak one.
    #[arg(long, env = "NEXUS_INSECURE_CLUSTER")]
    pub insecure_cluster: bool,

    /// Gossip round interval in milliseconds.
    #[arg(long, env = "NEXUS_GOSSIP_INTERVAL_MS", default_value_t = 250)]
    pub gossip_interval_ms: u64,

    /// Seconds a node stays listed as dead in gossip before it is forgotten.
    #[arg(long, env = "NEXUS_GOSSIP_DEAD_GRACE", default_value_t = 600)]
    pub gossip_dead_grace: u64,

    /// Seconds a member may stay unseen by gossip before the leader removes it from the
    /// cluster (0: never; an admin can always remove one with sys.node.remove).
    #[arg(long, env = "NEXUS_REMOVE_DEAD_AFTER", value_name = "SECS", default_value_t = 72 * 3600)]
    pub remove_dead_after: u64,

    /// How long a request routed to another node waits for its answer, in milliseconds:
    /// a pipe write to the pipe's node (then -32603, retryable), and each node's
    /// confirmation that it applied a topic.sub/unsub (then answered without it).
    #[arg(long, env = "NEXUS_ROUTE_TIMEOUT_MS", default_value_t = 5000)]
    pub route_timeout_ms: u64,

    /// The leader declares a node process down (its sessions closed, locks released,
    /// tasks requeued) once gossip has lost it and it was unreachable this long, in
    /// milliseconds. Must exceed --fence-after-ms.
    #[arg(long, env = "NEXUS_NODE_DOWN_AFTER_MS", default_value_t = 2500)]
    pub node_down_after_ms: u64,

    /// A node that has not heard from a Raft majority this long closes its client
    /// connections (self-fencing), in milliseconds: its state may be cleaned up by the
    /// others soon after. Must exceed a leader election (16-32 ticks).
    #[arg(long, env = "NEXUS_FENCE_AFTER_MS", default_value_t = 2000)]
    pub fence_after_ms: u64,

    /// Test only: skew this node's wall clock by this many milliseconds.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub test_clock_offset_ms: i64,

    /// Test only: hold every applied batch back this many milliseconds (a slow node).
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, default_value_t = 0)]
    pub test_apply_delay_ms: u64,
}

impl ClusterArgs {
    /// The address peers reach this node at: --advertise, else --cluster.
    pub fn advertised(&self) -> Option<&str> {
        self.advertise.as_deref().or(self.cluster.as_deref())
    }
}

impl ServeArgs {
    /// The shortest watchdog a session may set.
    fn watchdog_min_secs(&self) -> u64 {
        #[cfg(feature = "test-hooks")]
        if let Some(min) = self.test_watchdog_min_secs {
            return min.max(1);
        }
        crate::conn::WATCHDOG_MIN
    }

    /// How long `sys.login` waits for a login plugin's worker.
    fn login_plugin_timeout(&self) -> Duration {
        #[cfg(feature = "test-hooks")]
        if let Some(ms) = self.test_login_plugin_timeout_ms {
            return Duration::from_millis(ms.max(1));
        }
        crate::api::login::PLUGIN_TIMEOUT
    }

    /// The limits connections are served with.
    pub fn limits(&self) -> crate::node::Limits {
        crate::node::Limits {
            max_message_size: self.max_message_size,
            max_connections: self.max_connections,
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout.max(1)),
            max_inflight: self.max_inflight,
            eof_grace: Duration::from_millis(self.eof_grace_ms),
            watchdog_secs: self.watchdog,
            watchdog_min_secs: self.watchdog_min_secs(),
            hash_concurrency: self.hash_concurrency,
            login_plugin_timeout: self.login_plugin_timeout(),
            session_open_timeout: Duration::from_millis(self.session_open_timeout_ms.max(1)),
            session_close_timeout: Duration::from_millis(self.session_close_timeout_ms.max(1)),
            max_pipe_bytes: self.max_pipe_bytes.max(1),
            login_throttle: crate::throttle::ThrottleConfig {
                limit: self.login_fail_limit,
                window: Duration::from_secs(self.login_fail_window_secs.max(1)),
                loopback: self.login_throttle_loopback,
            },
            metrics_on_http: !self.metrics_only_on_health,
        }
    }

    pub fn listeners(&self) -> Result<Vec<Listener>, String> {
        self.listen.iter().map(|l| Listener::parse(l)).collect()
    }

    pub fn raft_tick(&self) -> Duration {
        Duration::from_millis(self.raft_tick_ms.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Ssl,
    Http,
    Https,
    Health,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Ssl => "ssl",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Health => "health",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp => 1717,
            Scheme::Ssl => 1718,
            Scheme::Http => 8080,
            Scheme::Https => 8443,
            Scheme::Health => 8081,
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Scheme::Ssl | Scheme::Https)
    }
}

/// One `-l` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub scheme: Scheme,
    pub addr: SocketAddr,
}

impl Listener {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("listener {raw:?}: {e}"))?;
        let scheme = match url.scheme() {
            "tcp" => Scheme::Tcp,
            "ssl" => Scheme::Ssl,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "health" => Scheme::Health,
            other => {
                return Err(format!(
                "listener {raw:?}: unknown scheme {other:?} (use tcp, ssl, http, https or health)"
            ))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| format!("listener {raw:?}: missing host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = url.port().unwrap_or(scheme.default_port());
        let ip = host
            .parse()
            .or_else(|_| {
                if host == "localhost" {
                    Ok("127.0.0.1".parse().expect("literal"))
                } else {
                    Err(())
                }
            })
            .map_err(|_| format!("listener {raw:?}: host must be an IP address"))?;
        Ok(Listener {
            scheme,
            addr: SocketAddr::new(ip, port),
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme.name(), self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_parse_with_default_ports() {
        let l = Listener::parse("tcp://127.0.0.1:1999").unwrap();
        assert_eq!((l.scheme, l.addr.port()), (Scheme::Tcp, 1999));
        assert_eq!(Listener::parse("ssl://0.0.0.0").unwrap().addr.port(), 1718);
        assert_eq!(
            Listener::parse("health://localhost:9").unwrap().url(),
            "health://127.0.0.1:9"
        );
        assert!(Listener::parse("ftp://1.2.3.4:1").is_err());
        assert!(Listener::parse("tcp://example.com:1").is_err());
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let a = <Serve as clap::Parser>::parse_from(["serve"]).args;
        assert_eq!(a.listeners().unwrap().len(), 2);
        assert_eq!(a.max_message_size, 32 << 20);
    }
}
