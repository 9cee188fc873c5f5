//! The mutual challenge over the cluster secret that opens every peer connection.

use std::io;
use std::time::Duration;

use anyhow::bail;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::time::timeout;

use nexus_core::proto::{HandshakeFinish, HandshakeOffer, HandshakeProof, PeerHello};

use super::{Conn, Shared, PROTOCOL_VERSION};

const NONCE_LEN: usize = 32;
const LISTENER_LABEL: &[u8] = b"nexus-peer listener";
const DIALER_LABEL: &[u8] = b"nexus-peer dialer";
type HmacSha256 = Hmac<Sha256>;
/// Largest message accepted from a peer that has not proved the secret yet.
pub(super) const PREAUTH_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
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
    pub(super) fn refused(e: io::Error) -> HandshakeError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HandshakeError::Refused
        } else {
            HandshakeError::Io(e)
        }
    }
}

/// What both proofs cover: a proof is only valid for this connection and this direction.
pub(super) struct Transcript {
    pub(super) dialer_nonce: Vec<u8>,
    pub(super) listener_nonce: Vec<u8>,
}

impl Transcript {
    pub(super) fn mac(
        &self,
        key: &[u8],
        label: &[u8],
        raft_id: u64,
        generation: u64,
    ) -> HmacSha256 {
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

    pub(super) fn sign(&self, key: &[u8], label: &[u8], raft_id: u64, generation: u64) -> Vec<u8> {
        let mac = self.mac(key, label, raft_id, generation);
        mac.finalize().into_bytes().to_vec()
    }

    /// Constant-time check of the peer's proof.
    pub(super) fn verify(&self, key: &[u8], label: &[u8], id: (u64, u64), proof: &[u8]) -> bool {
        let mac = self.mac(key, label, id.0, id.1);
        mac.verify_slice(proof).is_ok()
    }
}

pub(super) fn nonce() -> Vec<u8> {
    rand::random::<[u8; NONCE_LEN]>().to_vec()
}

pub(super) fn check_nonce(nonce: &[u8]) -> Result<(), HandshakeError> {
    if nonce.len() != NONCE_LEN {
        let len = nonce.len();
        return Err(HandshakeError::Protocol(format!("nonce of {len} bytes")));
    }
    Ok(())
}

/// The peer's hello must carry the identity it proved, and our cluster version.
pub(super) fn check_hello(
    theirs: &PeerHello,
    proved: u64,
    ours: &PeerHello,
) -> Result<(), HandshakeError> {
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
pub(super) async fn dialer_handshake(
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
pub(super) async fn listener_handshake(
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
pub(super) async fn dial(
    shared: &Shared,
    addr: &str,
    oneshot: bool,
) -> anyhow::Result<(Conn, PeerHello)> {
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

pub(super) async fn connect(addr: &str, limit: Duration) -> anyhow::Result<TcpStream> {
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
