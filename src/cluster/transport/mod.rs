//! The peer transport: sealed TCP streams between the nodes of the cluster.
//!
//! Each node listens on its cluster address and keeps ONE persistent outbound stream per peer
//! it sends to, so two nodes talk over two connections, one per direction; inbound streams
//! are only read. Oneshot connections (`call`, `probe`) carry one request and one answer.
//!
//! A connection starts with a Noise handshake keyed from the cluster secret (`noise`):
//! only a holder of the secret completes it, and until then messages are limited to
//! `PREAUTH_MAX` bytes, so nobody unauthenticated can make us allocate. From then on every
//! byte is encrypted and authenticated in records whose nonces count up, so nothing can be
//! read, altered, replayed or reordered on the way: a record that does not open drops the
//! connection. Inside, the dialer sends its `PeerHello`, the listener answers with its own,
//! then the dialer sends `Frame`s, each a 4-byte big-endian length and the prost encoding.
//!
//! Snapshots travel as `SnapshotChunk` frames interleaved with the normal frames (a waiting
//! frame always goes first, so heartbeats never wait behind a snapshot); the receiver answers
//! with a `SnapshotAck` over its own outbound stream.
//!
//! The parts: `noise` (the handshake's keys and the sealed records), `handshake` (the
//! handshake and hellos), `conn` (framing of one connection), `shared` (the peers and their
//! queues), `writer` (one outbound task per peer), `reader` (accepting, oneshot requests,
//! and reading each peer's stream), `snapshot` (transfers, both ways).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail};
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use nexus_core::ids::RaftId;
use nexus_core::proto::{frame::Body, Frame, PeerHello};

mod conn;
mod handshake;
mod noise;
mod reader;
mod shared;
mod snapshot;
#[cfg(test)]
mod tests;
mod writer;

pub use conn::PeerTraffic;
use conn::{Conn, Traffic};
use handshake::{dial, listener_handshake, HandshakeError};
pub use noise::{Keys, Psk};
use reader::{accept_loop, Reader};
use shared::{Outbound, Shared};
use snapshot::{Assembly, Sending, SnapshotJob, Transfer, CHUNK_OVERHEAD};
use writer::{Failures, Writer};

/// Version of the link protocol: the handshake and the sealing (the frames are versioned by
/// `PeerHello.cluster_version`).
pub const PROTOCOL_VERSION: u32 = 2;

/// A peer that stays down is logged once per this period, not once per retry.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Settings of the transport.
#[derive(Clone)]
pub struct TransportConfig {
    /// TCP bind address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Our hello; its raft_id and generation are also our identity in the handshake.
    pub hello: PeerHello,
    /// The keys derived from the cluster secrets that new connections start with;
    /// `Transport::set_keys` replaces them (the transport's copy, not this one).
    pub keys: Keys,
    /// Bound of each peer's outbound queue, in frames.
    pub queue_frames: usize,
    /// Largest frame sent or accepted once authenticated.
    pub max_frame: usize,
    /// Size of the pieces a snapshot is sent in.
    pub snapshot_chunk: usize,
    pub connect_timeout: Duration,
    /// Bounds the whole handshake and hello exchange.
    pub handshake_timeout: Duration,
    /// Reconnect backoff: starts at `backoff_min`, doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hello: PeerHello::default(),
            keys: Keys::from_secrets::<&[u8]>(&[]),
            queue_frames: 8192,
            max_frame: 64 << 20,
            snapshot_chunk: 1 << 20,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

// By hand: the secret must never reach a log.
impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("listen", &self.listen)
            .field("hello", &self.hello)
            .field("keys", &"<redacted>")
            .field("queue_frames", &self.queue_frames)
            .field("max_frame", &self.max_frame)
            .field("snapshot_chunk", &self.snapshot_chunk)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// What the transport tells its owner.
#[derive(Debug)]
pub enum PeerEvent {
    /// A raft message from an authenticated peer's persistent stream, sent by the raft id
    /// it authenticated as (`from`). A MsgSnapshot comes reassembled from its chunks, crc
    /// checked, its data put back.
    Raft { from: RaftId, msg: RaftMessage },
    /// Any other frame from an authenticated peer's persistent stream.
    Frame { from: RaftId, frame: Frame },
    /// A request frame on a oneshot connection; what is sent on `reply` is written back,
    /// then the connection closes (dropping `reply` closes it without an answer).
    Request {
        hello: PeerHello,
        frame: Frame,
        reply: oneshot::Sender<Frame>,
    },
    /// Our outbound stream to `to` failed to connect or write (raft: report_unreachable).
    /// Emitted once per failure episode.
    Unreachable { to: RaftId },
    /// A snapshot we sent to `to` was received and acknowledged (ok) or failed
    /// (raft: report_snapshot).
    SnapshotDone { to: RaftId, ok: bool },
}

/// Receives the events; called from the transport's tasks, must not block.
pub type EventSink = Arc<dyn Fn(PeerEvent) + Send + Sync>;

/// Why a frame could not be queued. The frame is dropped (raft retransmits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no address known for cluster peer {0}")]
    UnknownPeer(RaftId),
    #[error("the outbound queue to cluster peer {0} is full")]
    QueueFull(RaftId),
    #[error("a frame of {size} bytes to cluster peer {to} exceeds the limit of {max} bytes")]
    TooLarge { to: RaftId, size: usize, max: usize },
    #[error("cannot encode the raft message: {0}")]
    Encode(String),
}

/// Handle on the transport; clones share it. Its tasks run until `shutdown`.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

/// How hellos name the cluster identity of a node with state: its cluster's, or "none"
/// for a cluster formed before identities existed (so that its members are refused by a
/// cluster restored or forced from it, and accepted by each other).
pub fn hello_cluster_id(state_id: &str) -> String {
    if state_id.is_empty() {
        LEGACY_CLUSTER_ID.into()
    } else {
        state_id.into()
    }
}

/// How hellos name the identity of a cluster formed before identities existed.
pub const LEGACY_CLUSTER_ID: &str = "none";

impl Transport {
    /// Binds and starts accepting on the current tokio runtime.
    pub async fn start(cfg: TransportConfig, events: EventSink) -> io::Result<Transport> {
        validate(&cfg)?;
        let listener = bind(cfg.listen)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            hello: RwLock::new(cfg.hello.clone()),
            cluster_id: RwLock::new(cfg.hello.cluster_id.clone()),
            keys: RwLock::new(cfg.keys.clone()),
            auth_failures: AtomicU64::new(0),
            cfg,
            events,
            local_addr,
            runtime: tokio::runtime::Handle::current(),
            stop: CancellationToken::new(),
            peers: Mutex::new(HashMap::new()),
            transfers: Mutex::new(HashMap::new()),
            next_transfer: AtomicU64::new(1),
            removed: Mutex::new(HashSet::new()),
            refused: Mutex::new(HashMap::new()),
            traffic: Mutex::new(HashMap::new()),
        });
        shared.spawn(accept_loop(shared.clone(), listener));
        Ok(Transport { shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Where `raft_id` is reached ("host:port", resolved at each connect). Starts its
    /// outbound stream; a different address reconnects it.
    pub fn set_peer(&self, raft_id: RaftId, addr: String) {
        self.shared.set_peer(raft_id, addr);
    }

    /// Forgets the peer and stops its stream; frames still queued for it are dropped. Its
    /// inbound connections no longer teach us its address (only `set_peer` does).
    pub fn remove_peer(&self, raft_id: RaftId) {
        lock(&self.shared.removed).insert(raft_id);
        lock(&self.shared.peers).remove(&raft_id);
        lock(&self.shared.traffic).remove(&raft_id);
    }

    /// Queues a frame for `to`. Non-blocking, callable from any thread (no runtime needed).
    pub fn send(&self, to: RaftId, frame: Frame) -> Result<(), SendError> {
        self.shared.send(to, frame)
    }

    /// Queues a raft message. Every MsgSnapshot goes as SnapshotChunk frames and is answered
    /// by exactly one `SnapshotDone` event, unless this returns an error (then none follows:
    /// report the failure to raft yourself). Other messages go as `Frame{raft}`.
    pub fn send_raft(&self, to: RaftId, msg: RaftMessage) -> Result<(), SendError> {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            return self.shared.send_snapshot(to, msg);
        }
        let raw = msg
            .write_to_bytes()
            .map_err(|e| SendError::Encode(e.to_string()))?;
        self.send(to, raft_frame(raw))
    }

    /// Is our outbound stream to `to` connected and authenticated?
    pub fn connected(&self, to: RaftId) -> bool {
        lock(&self.shared.peers)
            .get(&to)
            .is_some_and(|p| p.connected.load(Ordering::Acquire))
    }

    /// Every peer we have a stream to (or traffic with), with its byte counts.
    pub fn traffic(&self) -> Vec<PeerTraffic> {
        let mut ids: Vec<RaftId> = lock(&self.shared.peers).keys().copied().collect();
        let traffic = lock(&self.shared.traffic);
        ids.extend(traffic.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|raft_id| {
                let t = traffic.get(&raft_id);
                let load = |a: Option<&AtomicU64>| a.map_or(0, |a| a.load(Ordering::Relaxed));
                PeerTraffic {
                    raft_id,
                    connected: self.connected(raft_id),
                    sent: load(t.map(|t| &t.sent)),
                    received: load(t.map(|t| &t.received)),
                }
            })
            .collect()
    }

    /// One request and its answer over a fresh connection to `addr` (hello.oneshot = true).
    /// Returns the peer's hello and its answer.
    pub async fn call(
        &self,
        addr: &str,
        frame: Frame,
        limit: Duration,
    ) -> anyhow::Result<(PeerHello, Frame)> {
        let exchange = async {
            let (mut conn, hello) = dial(&self.shared, addr, true).await?;
            if let Err(e) = conn.send(&frame).await {
                bail!("sending the request to {addr}: {e}");
            }
            match conn.recv::<Frame>().await {
                Ok(answer) => Ok((hello, answer)),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    bail!("{addr} closed the connection without answering")
                }
                Err(e) => bail!("reading the answer of {addr}: {e}"),
            }
        };
        timeout(limit, exchange)
            .await
            .map_err(|_| anyhow!("request to {addr} timed out after {limit:?}"))?
    }

    /// Handshake only: the peer's hello (for discovery and bootstrap).
    pub async fn probe(&self, addr: &str, limit: Duration) -> anyhow::Result<PeerHello> {
        let (conn, hello) = timeout(limit, dial(&self.shared, addr, true))
            .await
            .map_err(|_| anyhow!("probing {addr} timed out after {limit:?}"))??;
        conn.close().await;
        Ok(hello)
    }

    /// Seals new connections with `keys` from now on (a rotation of the cluster secrets);
    /// established connections keep theirs.
    pub fn set_keys(&self, keys: Keys) {
        *self.shared.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Handshakes refused and connections dropped because the peer failed authentication.
    pub fn auth_failures(&self) -> u64 {
        self.shared.auth_failures.load(Ordering::Relaxed)
    }

    /// The cluster identity new connections name (`PeerHello.cluster_id`): a node takes
    /// its cluster's when it first receives the state.
    pub fn set_cluster_id(&self, id: String) {
        *self
            .shared
            .cluster_id
            .write()
            .unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// Replaces the hello sent on new connections.
    pub fn set_hello(&self, hello: PeerHello) {
        *self.shared.hello.write().unwrap_or_else(|e| e.into_inner()) = hello;
    }

    /// Stops accepting and closes all streams. Queued frames are dropped.
    pub fn shutdown(&self) {
        self.shared.stop.cancel();
        lock(&self.shared.peers).clear();
        lock(&self.shared.transfers).clear();
    }
}

fn validate(cfg: &TransportConfig) -> io::Result<()> {
    let invalid = |what: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            what.to_string(),
        ))
    };
    if cfg.queue_frames == 0 {
        return invalid("queue_frames must be at least 1");
    }
    if cfg.snapshot_chunk == 0 || cfg.snapshot_chunk + CHUNK_OVERHEAD > cfg.max_frame {
        return invalid("snapshot_chunk must be positive and leave 64 KiB of max_frame free");
    }
    Ok(())
}

// SO_REUSEADDR: a restarted node must get its port back while old connections linger.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn raft_frame(raw: Vec<u8>) -> Frame {
    Frame {
        body: Some(Body::Raft(raw)),
    }
}
