//! What the transport's tasks share: the peers and their outbound queues.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use nexus_core::ids::RaftId;
use nexus_core::proto::{Frame, PeerHello};

use super::noise::Keys;
use super::{
    lock, EventSink, Failures, PeerEvent, SendError, SnapshotJob, Traffic, Transfer,
    TransportConfig, Writer,
};

pub(super) struct Shared {
    pub(super) cfg: TransportConfig,
    pub(super) hello: RwLock<PeerHello>,
    /// This node's cluster identity as hellos name it (`PeerHello.cluster_id`).
    pub(super) cluster_id: RwLock<String>,
    /// The keys connections are sealed with (replaced when the secrets rotate).
    pub(super) keys: RwLock<Keys>,
    /// Handshakes and records that failed authentication (a metric).
    pub(super) auth_failures: AtomicU64,
    pub(super) events: EventSink,
    pub(super) local_addr: SocketAddr,
    /// Lets any thread (the raft driver) start tasks.
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) stop: CancellationToken,
    pub(super) peers: Mutex<HashMap<RaftId, Peer>>,
    /// Snapshot transfers not yet acknowledged, by transfer id. Whoever removes one emits
    /// its SnapshotDone, so there is exactly one.
    pub(super) transfers: Mutex<HashMap<u64, Transfer>>,
    pub(super) next_transfer: AtomicU64,
    /// Peers removed by the owner: a removed node that still dials us must not come back.
    pub(super) removed: Mutex<HashSet<RaftId>>,
    /// When we last warned about a refused connection from each host.
    pub(super) refused: Mutex<HashMap<IpAddr, Instant>>,
    /// Bytes to and from each peer.
    pub(super) traffic: Mutex<HashMap<RaftId, Arc<Traffic>>>,
}

pub(super) struct Peer {
    pub(super) addr: watch::Sender<String>,
    pub(super) queue: mpsc::Sender<Outbound>,
    pub(super) connected: Arc<AtomicBool>,
    pub(super) task: JoinHandle<()>,
}

// Dropping the peer (remove_peer, shutdown) stops its writer.
impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) enum Outbound {
    Frame(Frame),
    Snapshot(SnapshotJob),
}

impl Shared {
    pub(super) fn hello(&self) -> PeerHello {
        let mut hello = self.hello.read().unwrap_or_else(|e| e.into_inner()).clone();
        hello.cluster_id = self
            .cluster_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        hello
    }

    pub(super) fn keys(&self) -> Keys {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn emit(&self, event: PeerEvent) {
        (self.events)(event);
    }

    /// Runs `fut` on the transport's runtime until it ends or the transport shuts down.
    pub(super) fn spawn<F>(&self, fut: F) -> JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.runtime.spawn(async move {
            stop.run_until_cancelled(fut).await;
        })
    }

    pub(super) fn set_peer(self: &Arc<Self>, raft_id: RaftId, addr: String) {
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

    pub(super) fn start_writer(self: &Arc<Self>, to: RaftId, addr: String) -> Peer {
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
    pub(super) fn learn_peer(self: &Arc<Self>, hello: &PeerHello) {
        let (id, addr) = (RaftId(hello.raft_id), &hello.cluster_addr);
        if id.0 == 0 || id.0 == self.hello().raft_id || addr.is_empty() || self.stop.is_cancelled()
        {
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

    pub(super) fn send(&self, to: RaftId, frame: Frame) -> Result<(), SendError> {
        let size = frame.encoded_len();
        if size > self.cfg.max_frame {
            let max = self.cfg.max_frame;
            return Err(SendError::TooLarge { to, size, max });
        }
        self.enqueue(to, Outbound::Frame(frame))
    }

    pub(super) fn enqueue(&self, to: RaftId, item: Outbound) -> Result<(), SendError> {
        let peers = lock(&self.peers);
        let peer = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        peer.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::QueueFull(to),
            mpsc::error::TrySendError::Closed(_) => SendError::UnknownPeer(to),
        })
    }
}
