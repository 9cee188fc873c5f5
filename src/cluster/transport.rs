//! The peer transport: authenticated TCP streams between the nodes of the cluster.
//!
//! Each node listens on its cluster address and keeps ONE persistent outbound stream per peer
//! it sends to, so two nodes talk over two connections, one per direction; inbound streams
//! are only read. Oneshot connections (`call`, `probe`) carry one request and one answer.
//!
//! A connection starts with a mutual challenge over the cluster secret: both sides send a
//! fresh nonce and prove the secret with an HMAC-SHA256 over both nonces and their identity,
//! so a proof can neither be replayed nor reflected. Until the peer has proved it, messages
//! are limited to `PREAUTH_MAX` bytes: nobody unauthenticated can make us allocate. Then both
//! sides send their `PeerHello`, then the dialer sends `Frame`s. Everything on the wire is a
//! 4-byte big-endian length followed by the prost encoding.
//!
//! Snapshots travel as `SnapshotChunk` frames interleaved with the normal frames (a waiting
//! frame always goes first, so heartbeats never wait behind a snapshot); the receiver answers
//! with a `SnapshotAck` over its own outbound stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use nexus_core::proto::{
    frame::Body, Frame, HandshakeFinish, HandshakeOffer, HandshakeProof, PeerHello, SnapshotAck,
    SnapshotChunk,
};

/// Version of the handshake itself (the frames are versioned by `PeerHello.cluster_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message accepted from a peer that has not proved the secret yet.
const PREAUTH_MAX: usize = 1024;
const NONCE_LEN: usize = 32;
const LISTENER_LABEL: &[u8] = b"nexus-peer listener";
const DIALER_LABEL: &[u8] = b"nexus-peer dialer";
/// Largest snapshot we reassemble: beyond, a peer could exhaust our memory.
const MAX_SNAPSHOT: u64 = 4 << 30;
/// A snapshot transfer must be acknowledged within max(this, size at `SNAPSHOT_RATE`).
const SNAPSHOT_ACK_MIN: Duration = Duration::from_secs(30);
const SNAPSHOT_RATE: u64 = 1 << 20;
/// Room for the raft message on the last snapshot chunk, on top of `snapshot_chunk`.
const CHUNK_OVERHEAD: usize = 64 << 10;
/// A peer that stays down is logged once per this period, not once per retry.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// A write that makes no progress for this long means the peer is gone (not just slow).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch being written goes out in pieces of about this size rather than all at once.
const WRITE_CHUNK: usize = 256 << 10;

type HmacSha256 = Hmac<Sha256>;

/// Settings of the transport.
#[derive(Clone)]
pub struct TransportConfig {
    /// TCP bind address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Our hello; its raft_id and generation are also our identity in the handshake.
    pub hello: PeerHello,
    /// The cluster secret; None is insecure mode (the same handshake with an empty key).
    pub secret: Option<Arc<Vec<u8>>>,
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
            secret: None,
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
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
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
    /// A frame from an authenticated peer's persistent stream. `from` is the raft id it
    /// authenticated as.
    Frame { from: u64, frame: Frame },
    /// A snapshot (raft MsgSnapshot) reassembled from chunks, crc checked, data put back.
    Snapshot { from: u64, msg: RaftMessage },
    /// A request frame on a oneshot connection; what is sent on `reply` is written back,
    /// then the connection closes (dropping `reply` closes it without an answer).
    Request {
        hello: PeerHello,
        frame: Frame,
        reply: oneshot::Sender<Frame>,
    },
    /// Our outbound stream to `to` failed to connect or write (raft: report_unreachable).
    /// Emitted once per failure episode.
    Unreachable { to: u64 },
    /// A snapshot we sent to `to` was received and acknowledged (ok) or failed
    /// (raft: report_snapshot).
    SnapshotDone { to: u64, ok: bool },
}

/// Receives the events; called from the transport's tasks, must not block.
pub type EventSink = Arc<dyn Fn(PeerEvent) + Send + Sync>;

/// Why a frame could not be queued. The frame is dropped (raft retransmits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no address known for cluster peer {0}")]
    UnknownPeer(u64),
    #[error("the outbound queue to cluster peer {0} is full")]
    QueueFull(u64),
    #[error("a frame of {size} bytes to cluster peer {to} exceeds the limit of {max} bytes")]
    TooLarge { to: u64, size: usize, max: usize },
    #[error("cannot encode the raft message: {0}")]
    Encode(String),
}

/// Handle on the transport; clones share it. Its tasks run until `shutdown`.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

impl Transport {
    /// Binds and starts accepting on the current tokio runtime.
    pub async fn start(cfg: TransportConfig, events: EventSink) -> io::Result<Transport> {
        validate(&cfg)?;
        let listener = bind(cfg.listen)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            hello: RwLock::new(cfg.hello.clone()),
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
    pub fn set_peer(&self, raft_id: u64, addr: String) {
        self.shared.set_peer(raft_id, addr);
    }

    /// Forgets the peer and stops its stream; frames still queued for it are dropped. Its
    /// inbound connections no longer teach us its address (only `set_peer` does).
    pub fn remove_peer(&self, raft_id: u64) {
        lock(&self.shared.removed).insert(raft_id);
        lock(&self.shared.peers).remove(&raft_id);
        lock(&self.shared.traffic).remove(&raft_id);
    }

    /// Queues a frame for `to`. Non-blocking, callable from any thread (no runtime needed).
    pub fn send(&self, to: u64, frame: Frame) -> Result<(), SendError> {
        self.shared.send(to, frame)
    }

    /// Queues a raft message. Every MsgSnapshot goes as SnapshotChunk frames and is answered
    /// by exactly one `SnapshotDone` event, unless this returns an error (then none follows:
    /// report the failure to raft yourself). Other messages go as `Frame{raft}`.
    pub fn send_raft(&self, to: u64, msg: RaftMessage) -> Result<(), SendError> {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            return self.shared.send_snapshot(to, msg);
        }
        let raw = msg
            .write_to_bytes()
            .map_err(|e| SendError::Encode(e.to_string()))?;
        self.send(to, raft_frame(raw))
    }

    /// Is our outbound stream to `to` connected and authenticated?
    pub fn connected(&self, to: u64) -> bool {
        lock(&self.shared.peers)
            .get(&to)
            .is_some_and(|p| p.connected.load(Ordering::Acquire))
    }

    /// Every peer we have a stream to (or traffic with), with its byte counts.
    pub fn traffic(&self) -> Vec<PeerTraffic> {
        let mut ids: Vec<u64> = lock(&self.shared.peers).keys().copied().collect();
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

// ---- shared state ------------------------------------------------------------------------

struct Shared {
    cfg: TransportConfig,
    hello: RwLock<PeerHello>,
    events: EventSink,
    local_addr: SocketAddr,
    /// Lets any thread (the raft driver) start tasks.
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Snapshot transfers not yet acknowledged, by transfer id. Whoever removes one emits
    /// its SnapshotDone, so there is exactly one.
    transfers: Mutex<HashMap<u64, Transfer>>,
    next_transfer: AtomicU64,
    /// Peers removed by the owner: a removed node that still dials us must not come back.
    removed: Mutex<HashSet<u64>>,
    /// When we last warned about a refused connection from each host.
    refused: Mutex<HashMap<IpAddr, Instant>>,
    /// Bytes to and from each peer.
    traffic: Mutex<HashMap<u64, Arc<Traffic>>>,
}

struct Peer {
    addr: watch::Sender<String>,
    queue: mpsc::Sender<Outbound>,
    connected: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

// Dropping the peer (remove_peer, shutdown) stops its writer.
impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Transfer {
    to: u64,
}

enum Outbound {
    Frame(Frame),
    Snapshot(SnapshotJob),
}

struct SnapshotJob {
    transfer: u64,
    data: Bytes,
    /// The raft message with its snapshot data taken out, encoded.
    message: Vec<u8>,
}

impl Shared {
    fn hello(&self) -> PeerHello {
        self.hello.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn key(&self) -> &[u8] {
        self.cfg.secret.as_deref().map_or(&[], |s| s.as_slice())
    }

    fn emit(&self, event: PeerEvent) {
        (self.events)(event);
    }

    /// Runs `fut` on the transport's runtime until it ends or the transport shuts down.
    fn spawn<F>(&self, fut: F) -> JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.runtime.spawn(async move {
            stop.run_until_cancelled(fut).await;
        })
    }

    fn set_peer(self: &Arc<Self>, raft_id: u64, addr: String) {
        if self.stop.is_cancelled() {
            return;
        }
        lock(&self.removed).remove(&raft_id);
        let mut peers = lock(&self.peers);
        if let Some(peer) = peers.get(&raft_id) {
            peer.addr.send_if_modified(|current| {
                let changed = *current != addr;
                *current = addr;
                changed
            });
            return;
        }
        peers.insert(raft_id, self.start_writer(raft_id, addr));
    }

    fn start_writer(self: &Arc<Self>, to: u64, addr: String) -> Peer {
        let (addr_tx, addr_rx) = watch::channel(addr);
        let (queue_tx, queue_rx) = mpsc::channel(self.cfg.queue_frames);
        let connected = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            to,
            shared: self.clone(),
            queue: queue_rx,
            addr: addr_rx,
            connected: connected.clone(),
            jobs: VecDeque::new(),
            sending: None,
            started: Vec::new(),
            failures: Failures::default(),
        };
        Peer {
            addr: addr_tx,
            queue: queue_tx,
            connected,
            task: self.spawn(writer.run()),
        }
    }

    /// An authenticated peer we have no address for is reachable at the address it
    /// advertises (a leader can answer a node that just joined).
    fn learn_peer(self: &Arc<Self>, hello: &PeerHello) {
        let (id, addr) = (hello.raft_id, &hello.cluster_addr);
        if id == 0 || id == self.hello().raft_id || addr.is_empty() || self.stop.is_cancelled() {
            return;
        }
        // Checked under the peers lock, so a concurrent remove_peer is not undone.
        let mut peers = lock(&self.peers);
        if peers.contains_key(&id) || lock(&self.removed).contains(&id) {
            return;
        }
        debug!("learned cluster peer {id} at {addr}");
        peers.insert(id, self.start_writer(id, addr.clone()));
    }

    fn send(&self, to: u64, frame: Frame) -> Result<(), SendError> {
        let size = frame.encoded_len();
        if size > self.cfg.max_frame {
            let max = self.cfg.max_frame;
            return Err(SendError::TooLarge { to, size, max });
        }
        self.enqueue(to, Outbound::Frame(frame))
    }

    fn enqueue(&self, to: u64, item: Outbound) -> Result<(), SendError> {
        let peers = lock(&self.peers);
        let peer = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        peer.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
            mpsc::error::TrySendError::Closed(_) => SendError::UnknownPeer(to),
        })
    }

    fn send_snapshot(self: &Arc<Self>, to: u64, mut msg: RaftMessage) -> Result<(), SendError> {
        let data = msg.mut_snapshot().take_data();
        let message = msg
            .write_to_bytes()
            .map_err(|e| SendError::Encode(e.to_string()))?;
        let transfer = self.next_transfer.fetch_add(1, Ordering::Relaxed);
        let deadline = ack_deadline(data.len());
        lock(&self.transfers).insert(transfer, Transfer { to });
        let job = SnapshotJob {
            transfer,
            data,
            message,
        };
        if let Err(e) = self.enqueue(to, Outbound::Snapshot(job)) {
            lock(&self.transfers).remove(&transfer);
            return Err(e);
        }
        self.expire_transfer(transfer, to, deadline);
        Ok(())
    }

    /// Fails the transfer if it is still unacknowledged after `deadline`.
    fn expire_transfer(self: &Arc<Self>, transfer: u64, to: u64, deadline: Duration) {
        let shared = Arc::downgrade(self);
        self.spawn(async move {
            tokio::time::sleep(deadline).await;
            if Weak::upgrade(&shared).is_some_and(|s| s.finish_transfer(transfer, None, false)) {
                warn!("snapshot transfer {transfer} to cluster peer {to} not acknowledged within {deadline:?}");
            }
        });
    }

    fn transfer_pending(&self, transfer: u64) -> bool {
        lock(&self.transfers).contains_key(&transfer)
    }

    /// Ends a transfer (if `from` is given, only when it was sent to `from`). Answers whether
    /// it was still pending, i.e. whether this call emitted its SnapshotDone.
    fn finish_transfer(&self, transfer: u64, from: Option<u64>, ok: bool) -> bool {
        let done = {
            let mut transfers = lock(&self.transfers);
            match transfers.get(&transfer) {
                Some(t) if from.is_none_or(|f| f == t.to) => transfers.remove(&transfer),
                _ => None,
            }
        };
        let Some(t) = done else { return false };
        self.emit(PeerEvent::SnapshotDone { to: t.to, ok });
        true
    }
}

fn ack_deadline(size: usize) -> Duration {
    let at_rate = Duration::from_secs(size as u64 / SNAPSHOT_RATE);
    at_rate.max(SNAPSHOT_ACK_MIN)
}

// ---- framing -------------------------------------------------------------------------------

/// A connection: length-delimited prost messages both ways. Writes are buffered until
/// `flush`, so a batch of frames goes out in few syscalls.
struct Conn {
    reader: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: OwnedWriteHalf,
    wbuf: BytesMut,
    max: usize,
    /// Where this connection's bytes are counted (its peer's, once known).
    traffic: Arc<Traffic>,
}

/// Bytes to and from one peer, over all of its connections.
#[derive(Default)]
struct Traffic {
    sent: AtomicU64,
    received: AtomicU64,
}

/// A peer's link, as `/metrics` shows it.
pub struct PeerTraffic {
    pub raft_id: u64,
    /// Our stream to it is connected and authenticated.
    pub connected: bool,
    pub sent: u64,
    pub received: u64,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        // Raft heartbeats are small and latency-sensitive.
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(PREAUTH_MAX)
            .new_codec();
        Conn {
            reader: FramedRead::new(read, codec),
            writer,
            wbuf: BytesMut::new(),
            max: PREAUTH_MAX,
            traffic: Arc::default(),
        }
    }

    /// Counts this connection's bytes as `peer`'s from now on.
    fn count_for(&mut self, shared: &Shared, peer: u64) {
        self.traffic = lock(&shared.traffic).entry(peer).or_default().clone();
    }

    /// The peer proved the secret: accept frames up to `max`.
    fn authenticated(&mut self, max: usize) {
        self.max = max;
        self.reader.decoder_mut().set_max_frame_length(max);
    }

    fn feed<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        let len = msg.encoded_len();
        if len > self.max {
            return Err(invalid_data(format!(
                "message of {len} bytes exceeds the limit of {} bytes",
                self.max
            )));
        }
        self.wbuf.reserve(4 + len);
        self.wbuf.put_u32(len as u32);
        msg.encode(&mut self.wbuf).map_err(invalid_data)
    }

    /// `feed`, writing out what is buffered once it is large.
    async fn feed_batched<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        self.feed(msg)?;
        if self.wbuf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let written = timeout(WRITE_TIMEOUT, self.writer.write_all(&self.wbuf)).await;
        if matches!(written, Ok(Ok(()))) {
            let n = self.wbuf.len() as u64;
            self.traffic.sent.fetch_add(n, Ordering::Relaxed);
        }
        self.wbuf.clear();
        written.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")))
    }

    async fn send<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        self.feed(msg)?;
        self.flush().await
    }

    /// The next message, undecoded; None at end of stream. Cancel-safe.
    async fn recv_raw(&mut self) -> io::Result<Option<BytesMut>> {
        let next = self.reader.next().await.transpose();
        if let Ok(Some(buf)) = &next {
            // The 4-byte length prefix included.
            let n = buf.len() as u64 + 4;
            self.traffic.received.fetch_add(n, Ordering::Relaxed);
        }
        next
    }

    async fn recv<M: prost::Message + Default>(&mut self) -> io::Result<M> {
        let buf = self.recv_raw().await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the peer",
            )
        })?;
        M::decode(buf).map_err(invalid_data)
    }

    async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }
}

fn invalid_data(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

// ---- handshake -----------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cluster authentication failed")]
    Auth,
    #[error(
        "the peer closed the connection: it refused our cluster secret or version (see its log)"
    )]
    Refused,
    #[error("{0}")]
    Protocol(String),
}

impl HandshakeError {
    /// An end of stream once we proved ourselves means the peer refused us.
    fn refused(e: io::Error) -> HandshakeError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HandshakeError::Refused
        } else {
            HandshakeError::Io(e)
        }
    }
}

/// What both proofs cover: a proof is only valid for this connection and this direction.
struct Transcript {
    dialer_nonce: Vec<u8>,
    listener_nonce: Vec<u8>,
}

impl Transcript {
    fn mac(&self, key: &[u8], label: &[u8], raft_id: u64, generation: u64) -> HmacSha256 {
        // HMAC accepts keys of any length (the empty key of insecure mode included).
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(&PROTOCOL_VERSION.to_be_bytes());
        mac.update(&self.dialer_nonce);
        mac.update(&self.listener_nonce);
        mac.update(&raft_id.to_be_bytes());
        mac.update(&generation.to_be_bytes());
        mac
    }

    fn sign(&self, key: &[u8], label: &[u8], raft_id: u64, generation: u64) -> Vec<u8> {
        let mac = self.mac(key, label, raft_id, generation);
        mac.finalize().into_bytes().to_vec()
    }

    /// Constant-time check of the peer's proof.
    fn verify(&self, key: &[u8], label: &[u8], id: (u64, u64), proof: &[u8]) -> bool {
        let mac = self.mac(key, label, id.0, id.1);
        mac.verify_slice(proof).is_ok()
    }
}

fn nonce() -> Vec<u8> {
    rand::random::<[u8; NONCE_LEN]>().to_vec()
}

fn check_nonce(nonce: &[u8]) -> Result<(), HandshakeError> {
    if nonce.len() != NONCE_LEN {
        let len = nonce.len();
        return Err(HandshakeError::Protocol(format!("nonce of {len} bytes")));
    }
    Ok(())
}

/// The peer's hello must carry the identity it proved, and our cluster version.
fn check_hello(theirs: &PeerHello, proved: u64, ours: &PeerHello) -> Result<(), HandshakeError> {
    if theirs.raft_id != proved {
        return Err(HandshakeError::Protocol(format!(
            "the peer authenticated as raft id {proved} but its hello says {}",
            theirs.raft_id
        )));
    }
    if theirs.cluster_version != ours.cluster_version {
        return Err(HandshakeError::Protocol(format!(
            "the peer runs cluster version {} (program {}), we run cluster version {}",
            theirs.cluster_version, theirs.program_version, ours.cluster_version
        )));
    }
    Ok(())
}

/// Dialer side: returns the listener's hello.
async fn dialer_handshake(
    conn: &mut Conn,
    key: &[u8],
    ours: &PeerHello,
    max_frame: usize,
) -> Result<PeerHello, HandshakeError> {
    let dialer_nonce = nonce();
    let offer = HandshakeOffer {
        protocol: PROTOCOL_VERSION,
        nonce: dialer_nonce.clone(),
    };
    conn.send(&offer).await.map_err(HandshakeError::refused)?;
    let proof: HandshakeProof = conn.recv().await.map_err(HandshakeError::refused)?;
    check_nonce(&proof.nonce)?;
    let transcript = Transcript {
        dialer_nonce,
        listener_nonce: proof.nonce,
    };
    let identity = (proof.raft_id, proof.generation);
    if !transcript.verify(key, LISTENER_LABEL, identity, &proof.mac) {
        // An empty proof, so the listener's operator sees the refusal in its log too.
        let refusal = HandshakeFinish {
            raft_id: ours.raft_id,
            generation: ours.generation,
            mac: Vec::new(),
        };
        let _ = conn.send(&refusal).await;
        return Err(HandshakeError::Auth);
    }
    conn.authenticated(max_frame);
    let mac = transcript.sign(key, DIALER_LABEL, ours.raft_id, ours.generation);
    let finish = HandshakeFinish {
        raft_id: ours.raft_id,
        generation: ours.generation,
        mac,
    };
    conn.feed(&finish)?;
    conn.feed(ours)?;
    conn.flush().await.map_err(HandshakeError::refused)?;
    let theirs: PeerHello = conn.recv().await.map_err(HandshakeError::refused)?;
    check_hello(&theirs, proof.raft_id, ours)?;
    Ok(theirs)
}

/// Listener side: returns the dialer's hello.
async fn listener_handshake(
    conn: &mut Conn,
    key: &[u8],
    ours: &PeerHello,
    max_frame: usize,
) -> Result<PeerHello, HandshakeError> {
    let offer: HandshakeOffer = conn.recv().await?;
    if offer.protocol != PROTOCOL_VERSION {
        return Err(HandshakeError::Protocol(format!(
            "the peer speaks handshake protocol {}, we speak {PROTOCOL_VERSION}",
            offer.protocol
        )));
    }
    check_nonce(&offer.nonce)?;
    let transcript = Transcript {
        dialer_nonce: offer.nonce,
        listener_nonce: nonce(),
    };
    let mac = transcript.sign(key, LISTENER_LABEL, ours.raft_id, ours.generation);
    let proof = HandshakeProof {
        nonce: transcript.listener_nonce.clone(),
        raft_id: ours.raft_id,
        generation: ours.generation,
        mac,
    };
    conn.send(&proof).await?;
    let finish: HandshakeFinish = conn.recv().await.map_err(HandshakeError::refused)?;
    let identity = (finish.raft_id, finish.generation);
    if !transcript.verify(key, DIALER_LABEL, identity, &finish.mac) {
        return Err(HandshakeError::Auth);
    }
    conn.authenticated(max_frame);
    conn.send(ours).await?;
    let theirs: PeerHello = conn.recv().await?;
    check_hello(&theirs, finish.raft_id, ours)?;
    Ok(theirs)
}

/// Connects to `addr` and runs the dialer's handshake. Returns the peer's hello.
async fn dial(shared: &Shared, addr: &str, oneshot: bool) -> anyhow::Result<(Conn, PeerHello)> {
    let stream = connect(addr, shared.cfg.connect_timeout).await?;
    let mut conn = Conn::new(stream);
    let mut ours = shared.hello();
    ours.oneshot = oneshot;
    let limit = shared.cfg.handshake_timeout;
    let handshake = dialer_handshake(&mut conn, shared.key(), &ours, shared.cfg.max_frame);
    match timeout(limit, handshake).await {
        Ok(Ok(theirs)) => Ok((conn, theirs)),
        Ok(Err(HandshakeError::Auth)) => bail!(
            "cluster authentication with {addr} failed: the peer does not know our cluster secret"
        ),
        Ok(Err(e)) => bail!("handshake with {addr} failed: {e}"),
        Err(_) => bail!("handshake with {addr} timed out after {limit:?}"),
    }
}

async fn connect(addr: &str, limit: Duration) -> anyhow::Result<TcpStream> {
    let attempt = async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to nothing");
        for resolved in tokio::net::lookup_host(addr).await? {
            match TcpStream::connect(resolved).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match timeout(limit, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => bail!("cannot connect to {addr}: {e}"),
        Err(_) => bail!("connecting to {addr} timed out after {limit:?}"),
    }
}

// ---- outbound: one writer task per peer ----------------------------------------------------

struct Writer {
    to: u64,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Outbound>,
    addr: watch::Receiver<String>,
    connected: Arc<AtomicBool>,
    /// Snapshots waiting for the one being sent.
    jobs: VecDeque<SnapshotJob>,
    sending: Option<Sending>,
    /// Transfers begun on the current connection: they fail if it drops.
    started: Vec<u64>,
    failures: Failures,
}

struct Sending {
    job: SnapshotJob,
    offset: usize,
    crc: crc32fast::Hasher,
}

/// Why the writer left a connection without an error.
enum Exit {
    Reconnect,
    Stop,
}

impl Writer {
    async fn run(mut self) {
        let mut backoff = self.shared.cfg.backoff_min;
        loop {
            let addr = self.addr.borrow_and_update().clone();
            match self.session(&addr).await {
                Ok(Exit::Stop) => return,
                Ok(Exit::Reconnect) => {
                    backoff = self.shared.cfg.backoff_min;
                    continue;
                }
                Err((e, was_connected)) => {
                    if was_connected {
                        backoff = self.shared.cfg.backoff_min;
                    }
                    self.failures
                        .failed(&self.shared, self.to, &addr, &e, was_connected);
                }
            }
            if !self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(self.shared.cfg.backoff_max);
        }
    }

    /// One connection: connect, then write until it fails. The error says whether the
    /// connection had been established.
    async fn session(&mut self, addr: &str) -> Result<Exit, (anyhow::Error, bool)> {
        let mut conn = self.open(addr).await.map_err(|e| (e, false))?;
        conn.count_for(&self.shared, self.to);
        self.failures.recovered(self.to, addr);
        self.connected.store(true, Ordering::Release);
        let result = self.pump(&mut conn).await;
        self.connected.store(false, Ordering::Release);
        self.abandon_started();
        result.map_err(|e| (e, true))
    }

    async fn open(&self, addr: &str) -> anyhow::Result<Conn> {
        let (conn, theirs) = dial(&self.shared, addr, false).await?;
        if theirs.raft_id != self.to {
            let found = theirs.raft_id;
            bail!("{addr} is raft id {found}, not {}", self.to);
        }
        Ok(conn)
    }

    /// Waits before reconnecting; an address change cuts the wait. False: stop.
    async fn pause(&mut self, backoff: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => true,
            changed = self.addr.changed() => changed.is_ok(),
        }
    }

    /// Writes whatever is queued: all waiting frames first, then one snapshot chunk, then
    /// one flush; again until the connection fails or must be left.
    async fn pump(&mut self, conn: &mut Conn) -> anyhow::Result<Exit> {
        loop {
            match self.addr.has_changed() {
                Ok(true) => return Ok(Exit::Reconnect),
                Ok(false) => {}
                Err(_) => return Ok(Exit::Stop),
            }
            if !self.has_snapshot_work() {
                let first = tokio::select! {
                    changed = self.addr.changed() => {
                        return Ok(if changed.is_ok() { Exit::Reconnect } else { Exit::Stop });
                    }
                    item = self.queue.recv() => match item {
                        Some(item) => item,
                        None => return Ok(Exit::Stop),
                    },
                    // The peer never writes on our stream: anything here means it is gone.
                    read = conn.recv_raw() => return Err(stream_lost(read)),
                };
                self.take(conn, first).await?;
            }
            while let Ok(item) = self.queue.try_recv() {
                self.take(conn, item).await?;
            }
            self.next_chunk(conn)?;
            conn.flush().await?;
        }
    }

    async fn take(&mut self, conn: &mut Conn, item: Outbound) -> io::Result<()> {
        match item {
            Outbound::Frame(frame) => conn.feed_batched(&frame).await,
            Outbound::Snapshot(job) => {
                self.jobs.push_back(job);
                Ok(())
            }
        }
    }

    fn has_snapshot_work(&self) -> bool {
        self.sending.is_some() || !self.jobs.is_empty()
    }

    /// Buffers the next chunk of the current snapshot, if any.
    fn next_chunk(&mut self, conn: &mut Conn) -> io::Result<()> {
        let chunk_size = self.shared.cfg.snapshot_chunk;
        let Some(sending) = self.current_snapshot() else {
            return Ok(());
        };
        let total = sending.job.data.len();
        let end = total.min(sending.offset + chunk_size);
        let piece = &sending.job.data[sending.offset..end];
        sending.crc.update(piece);
        let last = end == total;
        let chunk = SnapshotChunk {
            transfer: sending.job.transfer,
            offset: sending.offset as u64,
            data: piece.to_vec(),
            crc: if last {
                sending.crc.clone().finalize()
            } else {
                0
            },
            last,
            message: if last {
                std::mem::take(&mut sending.job.message)
            } else {
                Vec::new()
            },
        };
        sending.offset = end;
        if last {
            self.sending = None;
        }
        conn.feed(&Frame {
            body: Some(Body::SnapshotChunk(chunk)),
        })
    }

    /// The snapshot being sent, skipping transfers that ended meanwhile (timed out).
    fn current_snapshot(&mut self) -> Option<&mut Sending> {
        let ended = |s: &Sending| !self.shared.transfer_pending(s.job.transfer);
        if self.sending.as_ref().is_some_and(ended) {
            self.sending = None;
        }
        while self.sending.is_none() {
            let job = self.jobs.pop_front()?;
            if self.shared.transfer_pending(job.transfer) {
                // Forget the acknowledged ones, so the list stays short on a long connection.
                self.started.retain(|&t| self.shared.transfer_pending(t));
                self.started.push(job.transfer);
                self.sending = Some(Sending {
                    job,
                    offset: 0,
                    crc: crc32fast::Hasher::new(),
                });
            }
        }
        self.sending.as_mut()
    }

    /// The connection is gone: transfers begun on it fail (no-op for acknowledged ones).
    fn abandon_started(&mut self) {
        self.sending = None;
        for transfer in self.started.drain(..) {
            self.shared.finish_transfer(transfer, None, false);
        }
    }
}

fn stream_lost(read: io::Result<Option<BytesMut>>) -> anyhow::Error {
    match read {
        Ok(None) => anyhow!("the peer closed the connection"),
        Ok(Some(_)) => anyhow!("the peer wrote on our outbound stream"),
        Err(e) => anyhow!("reading the connection: {e}"),
    }
}

/// One failure episode of a peer's stream: Unreachable once, warnings at most every
/// `WARN_EVERY`.
#[derive(Default)]
struct Failures {
    count: u64,
    reported: bool,
    /// Kept across episodes, so a flapping peer does not flood the log either.
    last_warn: Option<Instant>,
}

impl Failures {
    fn failed(&mut self, shared: &Shared, to: u64, addr: &str, e: &anyhow::Error, lost: bool) {
        self.count += 1;
        if !self.reported {
            self.reported = true;
            shared.emit(PeerEvent::Unreachable { to });
        }
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warn = Some(Instant::now());
            let n = self.count;
            if lost {
                warn!("lost the connection to cluster peer {to} at {addr}: {e:#}");
            } else {
                warn!("cluster peer {to} at {addr} unreachable ({n} failed attempts): {e:#}");
            }
        }
    }

    fn recovered(&mut self, to: u64, addr: &str) {
        if self.count > 0 {
            info!("connected to cluster peer {to} at {addr}");
        }
        self.count = 0;
        self.reported = false;
    }
}

// ---- inbound -------------------------------------------------------------------------------

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                shared.spawn(serve(shared.clone(), stream, remote));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!("cluster listener {}: accept failed: {e}", shared.local_addr);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn serve(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let mut conn = Conn::new(stream);
    let ours = shared.hello();
    let limit = shared.cfg.handshake_timeout;
    let handshake = listener_handshake(&mut conn, shared.key(), &ours, shared.cfg.max_frame);
    let theirs = match timeout(limit, handshake).await {
        Ok(Ok(theirs)) => theirs,
        Ok(Err(e)) => return shared.log_refused(remote, &e),
        Err(_) => return debug!("peer connection from {remote}: handshake timed out"),
    };
    shared.learn_peer(&theirs);
    if theirs.oneshot {
        serve_request(&shared, conn, theirs, remote).await;
    } else {
        conn.count_for(&shared, theirs.raft_id);
        let reader = Reader {
            from: theirs.raft_id,
            shared,
            remote,
            assembly: None,
            warned_sender: false,
        };
        reader.run(conn).await;
    }
}

impl Shared {
    fn log_refused(&self, remote: SocketAddr, e: &HandshakeError) {
        match e {
            HandshakeError::Auth if self.first_refusal(remote.ip()) => warn!(
                "refused peer connection from {remote}: cluster authentication failed (wrong or missing cluster secret)"
            ),
            HandshakeError::Protocol(why) if self.first_refusal(remote.ip()) => {
                warn!("refused peer connection from {remote}: {why}")
            }
            // Repeats of the above, probes, port scanners, and dialers that refused our
            // proof (they log it).
            _ => debug!("refused peer connection from {remote}: {e}"),
        }
    }

    /// A misconfigured node retries every few seconds: warn about a host once per
    /// `WARN_EVERY`.
    fn first_refusal(&self, host: IpAddr) -> bool {
        let mut refused = lock(&self.refused);
        let now = Instant::now();
        if refused.len() > 1024 {
            refused.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
        }
        match refused.get(&host) {
            Some(at) if now.duration_since(*at) < WARN_EVERY => false,
            _ => {
                refused.insert(host, now);
                true
            }
        }
    }
}

/// A oneshot connection: one request frame, the owner's answer, close.
async fn serve_request(shared: &Shared, mut conn: Conn, hello: PeerHello, remote: SocketAddr) {
    let limit = shared.cfg.handshake_timeout;
    let frame = match timeout(limit, conn.recv::<Frame>()).await {
        Ok(Ok(frame)) => frame,
        // A probe: handshake only.
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
        Ok(Err(e)) => return debug!("request from {remote}: {e}"),
        Err(_) => return debug!("request from {remote}: no request frame within {limit:?}"),
    };
    let (reply, answer) = oneshot::channel();
    shared.emit(PeerEvent::Request {
        hello,
        frame,
        reply,
    });
    match timeout(limit * 2, answer).await {
        Ok(Ok(answer)) => {
            if let Err(e) = conn.send(&answer).await {
                debug!("answering {remote}: {e}");
            }
            conn.close().await;
        }
        Ok(Err(_)) => debug!("request from {remote} dropped without an answer"),
        Err(_) => warn!("request from {remote} not answered within {:?}", limit * 2),
    }
}

/// Reads a peer's persistent stream.
struct Reader {
    shared: Arc<Shared>,
    /// The raft id the peer authenticated as.
    from: u64,
    remote: SocketAddr,
    assembly: Option<Assembly>,
    warned_sender: bool,
}

/// A snapshot being received.
struct Assembly {
    transfer: u64,
    data: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl Reader {
    async fn run(mut self, mut conn: Conn) {
        let (from, remote) = (self.from, self.remote);
        loop {
            let buf = match conn.recv_raw().await {
                Ok(Some(buf)) => buf,
                Ok(None) => return debug!("cluster peer {from} ({remote}) closed its stream"),
                Err(e) => {
                    return warn!("dropping the stream of cluster peer {from} ({remote}): {e}")
                }
            };
            match Frame::decode(buf) {
                Ok(frame) => self.handle(frame),
                Err(e) => {
                    return warn!(
                    "dropping the stream of cluster peer {from} ({remote}): undecodable frame: {e}"
                )
                }
            }
        }
    }

    fn handle(&mut self, frame: Frame) {
        match frame.body {
            Some(Body::SnapshotChunk(chunk)) => self.chunk(chunk),
            Some(Body::SnapshotAck(ack)) => self.ack_received(ack),
            Some(Body::Raft(ref raw)) if !self.sender_matches(raft_sender(raw)) => {}
            Some(_) => self.shared.emit(PeerEvent::Frame {
                from: self.from,
                frame,
            }),
            // A frame kind from a newer version: nothing we can do with it.
            None => debug!("ignoring an unknown frame from cluster peer {}", self.from),
        }
    }

    /// A raft message must come from the raft id that authenticated: warn once, then drop
    /// silently.
    fn sender_matches(&mut self, sender: Option<u64>) -> bool {
        if sender == Some(self.from) {
            return true;
        }
        if !self.warned_sender {
            self.warned_sender = true;
            warn!(
                "dropping raft messages from {}: it authenticated as raft id {} but the message sender is {sender:?}",
                self.remote, self.from
            );
        }
        false
    }

    fn ack_received(&self, ack: SnapshotAck) {
        if !ack.ok {
            warn!(
                "cluster peer {} refused snapshot transfer {}: {}",
                self.from, ack.transfer, ack.error
            );
        }
        self.shared
            .finish_transfer(ack.transfer, Some(self.from), ack.ok);
    }

    fn chunk(&mut self, chunk: SnapshotChunk) {
        if chunk.offset == 0 {
            self.begin(chunk.transfer);
        }
        let expected = self
            .assembly
            .as_ref()
            .is_some_and(|a| a.transfer == chunk.transfer && a.data.len() as u64 == chunk.offset);
        if !expected {
            let why = format!("unexpected chunk at offset {}", chunk.offset);
            return self.fail(chunk.transfer, why);
        }
        let Some(assembly) = self.assembly.as_mut() else {
            return;
        };
        if assembly.data.len() as u64 + chunk.data.len() as u64 > MAX_SNAPSHOT {
            return self.fail(chunk.transfer, "snapshot larger than 4 GiB".into());
        }
        assembly.crc.update(&chunk.data);
        assembly.data.extend_from_slice(&chunk.data);
        if chunk.last {
            if let Some(assembly) = self.assembly.take() {
                self.complete(assembly, chunk);
            }
        }
    }

    /// A new transfer replaces the one in progress (which the sender gave up).
    fn begin(&mut self, transfer: u64) {
        if let Some(old) = self.assembly.take() {
            if old.transfer != transfer {
                self.reply(old.transfer, false, "superseded by a new transfer".into());
            }
        }
        self.assembly = Some(Assembly {
            transfer,
            data: Vec::new(),
            crc: crc32fast::Hasher::new(),
        });
    }

    fn complete(&mut self, assembly: Assembly, last: SnapshotChunk) {
        let transfer = assembly.transfer;
        if assembly.crc.finalize() != last.crc {
            return self.fail(transfer, "crc mismatch".into());
        }
        let mut msg = match RaftMessage::parse_from_bytes(&last.message) {
            Ok(msg) => msg,
            Err(e) => return self.fail(transfer, format!("undecodable raft message: {e}")),
        };
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return self.fail(transfer, "not a MsgSnapshot".into());
        }
        if !self.sender_matches(Some(msg.from)) {
            return self.fail(transfer, "wrong sender".into());
        }
        msg.mut_snapshot().set_data(Bytes::from(assembly.data));
        self.shared.emit(PeerEvent::Snapshot {
            from: self.from,
            msg,
        });
        self.reply(transfer, true, String::new());
    }

    fn fail(&mut self, transfer: u64, why: String) {
        warn!(
            "snapshot transfer {transfer} from cluster peer {} failed: {why}",
            self.from
        );
        self.assembly.take_if(|a| a.transfer == transfer);
        self.reply(transfer, false, why);
    }

    /// Acknowledges over our own outbound stream to the sender.
    fn reply(&self, transfer: u64, ok: bool, error: String) {
        let ack = SnapshotAck {
            transfer,
            ok,
            error,
        };
        let frame = Frame {
            body: Some(Body::SnapshotAck(ack)),
        };
        if let Err(e) = self.shared.send(self.from, frame) {
            warn!("cannot acknowledge snapshot transfer {transfer}: {e}");
        }
    }
}

/// The sender (field 3, `from`) of an encoded eraftpb::Message, read without decoding the
/// entries: protobuf writes fields in order, so it comes before them. None: malformed.
fn raft_sender(raw: &[u8]) -> Option<u64> {
    let mut buf = raw;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        match key & 7 {
            0 => {
                let value = prost::encoding::decode_varint(&mut buf).ok()?;
                if key >> 3 == 3 {
                    return Some(value);
                }
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).ok()?;
                buf = buf.get(usize::try_from(len).ok()?..)?;
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    // Absent: the proto3 default.
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_core::proto::Forward;
    use tokio::sync::mpsc::UnboundedReceiver;

    const WAIT: Duration = Duration::from_secs(5);

    fn config(raft_id: u64, secret: Option<&str>) -> TransportConfig {
        TransportConfig {
            hello: PeerHello {
                cluster_version: 1,
                raft_id,
                generation: 7,
                program_version: "test".into(),
                ..PeerHello::default()
            },
            secret: secret.map(|s| Arc::new(s.as_bytes().to_vec())),
            connect_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..TransportConfig::default()
        }
    }

    struct Node {
        t: Transport,
        events: UnboundedReceiver<PeerEvent>,
    }

    impl Node {
        fn addr(&self) -> String {
            self.t.local_addr().to_string()
        }

        /// The next event `pick` accepts, skipping the others.
        async fn next<T>(&mut self, mut pick: impl FnMut(PeerEvent) -> Option<T>) -> T {
            let wait = async {
                loop {
                    let event = self.events.recv().await.expect("event sink alive");
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
            };
            timeout(WAIT, wait).await.expect("expected event")
        }

        async fn frame(&mut self) -> (u64, Frame) {
            self.next(|e| match e {
                PeerEvent::Frame { from, frame } => Some((from, frame)),
                _ => None,
            })
            .await
        }

        /// No Frame event within `period`.
        async fn no_frame(&mut self, period: Duration) {
            let deadline = tokio::time::Instant::now() + period;
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await
            {
                assert!(!matches!(event, PeerEvent::Frame { .. }), "{event:?}");
            }
        }
    }

    /// Starts a transport advertising its real address.
    async fn node(mut cfg: TransportConfig) -> Node {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let (tx, events) = mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |e| {
            let _ = tx.send(e);
        });
        let hello = cfg.hello.clone();
        // The port may still be held by a transport that just shut down.
        let started = Instant::now();
        let t = loop {
            match Transport::start(cfg.clone(), sink.clone()).await {
                Ok(t) => break t,
                Err(e) if started.elapsed() < WAIT => {
                    debug!("bind: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("start: {e}"),
            }
        };
        cfg.hello = PeerHello {
            cluster_addr: t.local_addr().to_string(),
            ..hello
        };
        t.set_hello(cfg.hello);
        Node { t, events }
    }

    /// A port nobody listens on.
    async fn closed_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn forward(n: u64) -> Frame {
        Frame {
            body: Some(Body::Forward(Forward {
                context: n.to_be_bytes().to_vec(),
                data: Vec::new(),
            })),
        }
    }

    fn number(frame: &Frame) -> u64 {
        match &frame.body {
            Some(Body::Forward(f)) => u64::from_be_bytes(f.context[..].try_into().unwrap()),
            other => panic!("not a test frame: {other:?}"),
        }
    }

    fn heartbeat(from: u64, to: u64) -> RaftMessage {
        let mut msg = RaftMessage::default();
        msg.set_msg_type(MessageType::MsgHeartbeat);
        msg.from = from;
        msg.to = to;
        msg.term = 3;
        msg
    }

    #[tokio::test]
    async fn frames_flow_both_ways_in_order() {
        let mut a = node(config(1, Some("s3cret"))).await;
        let mut b = node(config(2, Some("s3cret"))).await;
        a.t.set_peer(2, b.addr());
        b.t.set_peer(1, a.addr());
        // The raft driver sends from a plain thread, outside the runtime.
        let sender = a.t.clone();
        std::thread::spawn(move || {
            for n in 0..1000 {
                sender.send(2, forward(n)).unwrap();
            }
        })
        .join()
        .unwrap();
        for n in 0..1000 {
            b.t.send(1, forward(n + 5000)).unwrap();
        }
        for n in 0..1000 {
            let (from, frame) = b.frame().await;
            assert_eq!((from, number(&frame)), (1, n));
            let (from, frame) = a.frame().await;
            assert_eq!((from, number(&frame)), (2, n + 5000));
        }
        assert!(a.t.connected(2) && b.t.connected(1));

        // A raft message claiming another sender is dropped; the genuine one arrives.
        a.t.send_raft(2, heartbeat(3, 2)).unwrap();
        a.t.send_raft(2, heartbeat(1, 2)).unwrap();
        let (from, frame) = b.frame().await;
        let Some(Body::Raft(raw)) = frame.body else {
            panic!("not a raft frame")
        };
        let msg = RaftMessage::parse_from_bytes(&raw).unwrap();
        assert_eq!(
            (from, msg.from, msg.get_msg_type()),
            (1, 1, MessageType::MsgHeartbeat)
        );
    }

    #[tokio::test]
    async fn wrong_or_missing_secret_is_refused() {
        let mut secured = node(config(1, Some("alpha"))).await;
        let mut wrong = node(config(2, Some("beta"))).await;
        let mut open = node(config(3, None)).await;
        for other in [&wrong, &open] {
            other.t.set_peer(1, secured.addr());
            other.t.send(1, forward(1)).unwrap();
        }
        secured.no_frame(Duration::from_millis(500)).await;
        for other in [&mut wrong, &mut open] {
            other
                .next(|e| matches!(e, PeerEvent::Unreachable { to: 1 }).then_some(()))
                .await;
            assert!(!other.t.connected(1));
            let err = other.t.probe(&secured.addr(), WAIT).await.unwrap_err();
            assert!(err.to_string().contains("cluster authentication"), "{err}");
            let err = secured.t.probe(&other.addr(), WAIT).await.unwrap_err();
            assert!(err.to_string().contains("cluster authentication"), "{err}");
        }

        // Same secret, or both insecure: accepted.
        let friend = node(config(4, Some("alpha"))).await;
        let hello = friend.t.probe(&secured.addr(), WAIT).await.unwrap();
        assert_eq!((hello.raft_id, hello.generation), (1, 7));
        let open2 = node(config(5, None)).await;
        assert_eq!(open2.t.probe(&open.addr(), WAIT).await.unwrap().raft_id, 3);
    }

    #[tokio::test]
    async fn unauthenticated_peer_cannot_send_a_big_message() {
        use tokio::io::AsyncReadExt;
        let secured = node(config(1, Some("alpha"))).await;
        let mut raw = TcpStream::connect(secured.t.local_addr()).await.unwrap();
        // Claims a 256 MiB message: refused at the length, nothing allocated.
        raw.write_all(&[0x10, 0, 0, 0, 1, 2, 3]).await.unwrap();
        let mut buf = [0u8; 64];
        let read = timeout(WAIT, raw.read(&mut buf)).await.expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn snapshot_goes_in_chunks_and_is_acknowledged() {
        let mut a = node(config(1, Some("s"))).await;
        let mut b = node(config(2, Some("s"))).await;
        a.t.set_peer(2, b.addr());
        let data: Vec<u8> = (0..5u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
        let mut msg = RaftMessage::default();
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.from = 1;
        msg.to = 2;
        msg.term = 4;
        msg.mut_snapshot().mut_metadata().index = 42;
        msg.mut_snapshot().mut_metadata().term = 4;
        msg.mut_snapshot().set_data(Bytes::from(data.clone()));
        a.t.send_raft(2, msg).unwrap();
        a.t.send(2, forward(9)).unwrap();

        let (mut snapshot, mut frame) = (None, None);
        while snapshot.is_none() || frame.is_none() {
            match b.next(Some).await {
                PeerEvent::Snapshot { from, msg } => snapshot = Some((from, msg)),
                PeerEvent::Frame { from, frame: f } => frame = Some((from, number(&f))),
                other => panic!("unexpected {other:?}"),
            }
        }
        let (from, msg) = snapshot.unwrap();
        assert_eq!((from, msg.from, msg.term), (1, 1, 4));
        assert_eq!(msg.get_snapshot().get_metadata().index, 42);
        assert!(msg.get_snapshot().get_data() == &data[..], "data differs");
        assert_eq!(frame, Some((1, 9)));
        // B learned A's address from its hello to send the ack.
        let done = a
            .next(|e| match e {
                PeerEvent::SnapshotDone { to, ok } => Some((to, ok)),
                _ => None,
            })
            .await;
        assert_eq!(done, (2, true));
    }

    #[tokio::test]
    async fn call_gets_the_answer() {
        let a = node(config(1, Some("s"))).await;
        let mut b = node(config(2, Some("s"))).await;
        let addr = b.addr();
        let server = tokio::spawn(async move {
            let (hello, frame, reply) = b
                .next(|e| match e {
                    PeerEvent::Request {
                        hello,
                        frame,
                        reply,
                    } => Some((hello, frame, reply)),
                    _ => None,
                })
                .await;
            assert!(hello.oneshot);
            assert_eq!(hello.raft_id, 1);
            reply.send(forward(number(&frame) + 1)).unwrap();
        });
        let (hello, answer) = a.t.call(&addr, forward(41), WAIT).await.unwrap();
        assert_eq!((hello.raft_id, number(&answer)), (2, 42));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn reconnects_to_a_restarted_peer() {
        let mut a = node(config(1, Some("s"))).await;
        let mut b = node(config(2, Some("s"))).await;
        let listen = b.t.local_addr();
        // A wrong address first: the new one is used at once.
        a.t.set_peer(2, closed_port().await);
        a.next(|e| matches!(e, PeerEvent::Unreachable { to: 2 }).then_some(()))
            .await;
        a.t.set_peer(2, b.addr());
        a.t.send(2, forward(0)).unwrap();
        assert_eq!(number(&b.frame().await.1), 0);

        b.t.shutdown();
        a.next(|e| matches!(e, PeerEvent::Unreachable { to: 2 }).then_some(()))
            .await;
        for n in 1..=5 {
            a.t.send(2, forward(n)).unwrap();
        }
        let mut b2 = node(TransportConfig {
            listen,
            ..config(2, Some("s"))
        })
        .await;
        for n in 1..=5 {
            assert_eq!(b2.frame().await, (1, forward(n)));
        }
        assert!(a.t.connected(2));
    }

    #[tokio::test]
    async fn full_queue_refuses_frames() {
        let mut a = node(TransportConfig {
            queue_frames: 8,
            ..config(1, None)
        })
        .await;
        a.t.set_peer(9, closed_port().await);
        for n in 0..8 {
            a.t.send(9, forward(n)).unwrap();
        }
        assert_eq!(a.t.send(9, forward(8)), Err(SendError::QueueFull(9)));
        assert_eq!(a.t.send(8, forward(0)), Err(SendError::UnknownPeer(8)));
        a.next(|e| matches!(e, PeerEvent::Unreachable { to: 9 }).then_some(()))
            .await;
    }

    #[test]
    fn raft_sender_reads_the_from_field() {
        let mut msg = heartbeat(5, 2);
        msg.mut_entries().push(Default::default());
        msg.commit = 9;
        let raw = msg.write_to_bytes().unwrap();
        assert_eq!(raft_sender(&raw), Some(5));
        assert_eq!(raft_sender(&[]), Some(0));
        assert_eq!(raft_sender(&[0x3a, 0x7f]), None); // truncated bytes field
        assert_eq!(raft_sender(&[0x18]), None); // truncated varint
    }
}
