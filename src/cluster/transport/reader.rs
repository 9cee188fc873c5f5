//! Inbound: the accept loop, oneshot requests, and the reader of each peer's stream.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::Message as RaftMessage;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::{debug, warn};

use nexus_core::ids::RaftId;
use nexus_core::proto::{frame::Body, Frame, PeerHello};

use super::noise::is_seal_broken;
use super::{
    listener_handshake, lock, Assembly, Conn, HandshakeError, PeerEvent, Shared, WARN_EVERY,
};

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
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

pub(super) async fn serve(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let mut conn = Conn::new(stream);
    let ours = shared.hello();
    let limit = shared.cfg.handshake_timeout;
    let keys = shared.keys();
    let handshake = listener_handshake(&mut conn, &keys, &ours, shared.cfg.max_frame);
    let theirs = match timeout(limit, handshake).await {
        Ok(Ok(theirs)) => theirs,
        Ok(Err(e)) => return shared.log_refused(remote, &e),
        Err(_) => return debug!("peer connection from {remote}: handshake timed out"),
    };
    shared.learn_peer(&theirs);
    if theirs.oneshot {
        serve_request(&shared, conn, theirs, remote).await;
    } else {
        conn.count_for(&shared, RaftId(theirs.raft_id));
        let reader = Reader {
            from: RaftId(theirs.raft_id),
            shared,
            remote,
            assembly: None,
            warned_sender: false,
        };
        reader.run(conn).await;
    }
}

impl Shared {
    pub(super) fn log_refused(&self, remote: SocketAddr, e: &HandshakeError) {
        if matches!(e, HandshakeError::Auth) {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
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
    pub(super) fn first_refusal(&self, host: IpAddr) -> bool {
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
pub(super) async fn serve_request(
    shared: &Shared,
    mut conn: Conn,
    hello: PeerHello,
    remote: SocketAddr,
) {
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
pub(super) struct Reader {
    pub(super) shared: Arc<Shared>,
    /// The raft id the peer authenticated as.
    pub(super) from: RaftId,
    pub(super) remote: SocketAddr,
    pub(super) assembly: Option<Assembly>,
    pub(super) warned_sender: bool,
}

impl Reader {
    pub(super) async fn run(mut self, mut conn: Conn) {
        let (from, remote) = (self.from, self.remote);
        loop {
            let buf = match conn.recv_raw().await {
                Ok(Some(buf)) => buf,
                Ok(None) => return debug!("cluster peer {from} ({remote}) closed its stream"),
                Err(e) => {
                    if is_seal_broken(&e) {
                        self.shared.auth_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    return warn!("dropping the stream of cluster peer {from} ({remote}): {e}");
                }
            };
            let handled = Frame::decode(buf)
                .map_err(|e| format!("undecodable frame: {e}"))
                .and_then(|frame| self.handle(frame));
            if let Err(why) = handled {
                return warn!("dropping the stream of cluster peer {from} ({remote}): {why}");
            }
        }
    }

    /// Err: the peer sent what it could not have encoded (the stream is dropped).
    fn handle(&mut self, frame: Frame) -> Result<(), String> {
        match frame.body {
            Some(Body::SnapshotChunk(chunk)) => self.chunk(chunk),
            Some(Body::SnapshotAck(ack)) => self.ack_received(ack),
            Some(Body::Raft(raw)) => {
                let msg = RaftMessage::parse_from_bytes(&raw)
                    .map_err(|e| format!("undecodable raft message: {e}"))?;
                if self.sender_matches(RaftId(msg.from)) {
                    self.shared.emit(PeerEvent::Raft {
                        from: self.from,
                        msg,
                    });
                }
            }
            Some(_) => self.shared.emit(PeerEvent::Frame {
                from: self.from,
                frame,
            }),
            // A frame kind from a newer version: nothing we can do with it.
            None => debug!("ignoring an unknown frame from cluster peer {}", self.from),
        }
        Ok(())
    }

    /// A raft message must come from the raft id that authenticated: warn once, then drop
    /// silently.
    pub(super) fn sender_matches(&mut self, sender: RaftId) -> bool {
        if sender == self.from {
            return true;
        }
        if !self.warned_sender {
            self.warned_sender = true;
            warn!(
                "dropping raft messages from {}: it authenticated as raft id {} but the message sender is {sender}",
                self.remote, self.from
            );
        }
        false
    }
}
