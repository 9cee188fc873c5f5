//! The handshake that opens every peer connection: Noise keyed from the cluster secret
//! (`noise`), then both sides' hellos, sealed.

use std::io;
use std::time::Duration;

use anyhow::bail;
use tokio::net::TcpStream;
use tokio::time::timeout;

use nexus_core::proto::{HandshakeOffer, HandshakeReply, PeerHello};

use super::noise::{self, Initiator, Keys};
use super::{Conn, Shared, LEGACY_CLUSTER_ID, PROTOCOL_VERSION};

/// Largest message accepted before the handshake is done.
pub(super) const PREAUTH_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cluster authentication failed")]
    Auth,
    #[error(
        "the peer closed the connection: it refused our cluster secret, version or cluster \
         identity (see its log)"
    )]
    Refused,
    #[error("{0}")]
    Protocol(String),
}

impl HandshakeError {
    /// An end of stream once we offered our key means the peer refused us.
    pub(super) fn refused(e: io::Error) -> HandshakeError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HandshakeError::Refused
        } else {
            HandshakeError::sealed(e)
        }
    }

    /// A sealed message that does not open: the peer does not hold the keys.
    pub(super) fn sealed(e: io::Error) -> HandshakeError {
        if noise::is_seal_broken(&e) {
            HandshakeError::Auth
        } else {
            HandshakeError::Io(e)
        }
    }
}

/// The peer's hello must carry our cluster version, and the same cluster identity when
/// both sides have one.
pub(super) fn check_hello(theirs: &PeerHello, ours: &PeerHello) -> Result<(), HandshakeError> {
    if theirs.cluster_version != ours.cluster_version {
        return Err(HandshakeError::Protocol(format!(
            "the peer runs cluster version {} (program {}), we run cluster version {}",
            theirs.cluster_version, theirs.program_version, ours.cluster_version
        )));
    }
    let (a, b) = (&theirs.cluster_id, &ours.cluster_id);
    if !a.is_empty() && !b.is_empty() && a != b {
        return Err(HandshakeError::Protocol(format!(
            "the peer (raft id {}, {}) belongs to cluster {a} and we to cluster {b}: a member \
             of a cluster since restored from a backup or forced into a new cluster \
             (--force-new-cluster) cannot rejoin it with its old data; empty its data dir \
             with `nexus rebuild` and let it join as a new member",
            theirs.raft_id, theirs.cluster_addr
        )));
    }
    // A node with state that names no identity runs a build from before identities: a
    // cluster that has one (formed, restored or forced since) cannot tell its members from
    // another cluster's, so it refuses them all.
    if a.is_empty() && theirs.has_state && !b.is_empty() && b != LEGACY_CLUSTER_ID {
        return Err(HandshakeError::Protocol(format!(
            "the peer (raft id {}, {}, nexus {}) has cluster state but names no cluster \
             identity (a build from before identities): cluster {b} only takes members that \
             name it; upgrade the peer",
            theirs.raft_id, theirs.cluster_addr, theirs.program_version
        )));
    }
    Ok(())
}

/// Dialer side: returns the listener's hello.
pub(super) async fn dialer_handshake(
    conn: &mut Conn,
    keys: &Keys,
    ours: &PeerHello,
    max_frame: usize,
) -> Result<PeerHello, HandshakeError> {
    let (initiator, first) = Initiator::start(keys);
    let offer = HandshakeOffer {
        protocol: PROTOCOL_VERSION,
        noise: first,
    };
    conn.send(&offer).await.map_err(HandshakeError::refused)?;
    let reply: HandshakeReply = conn.recv().await.map_err(HandshakeError::refused)?;
    let sealed = initiator.finish(&reply.noise).ok_or(HandshakeError::Auth)?;
    conn.seal(sealed, max_frame);
    conn.send(ours).await.map_err(HandshakeError::refused)?;
    let theirs: PeerHello = conn.recv().await.map_err(HandshakeError::refused)?;
    check_hello(&theirs, ours)?;
    Ok(theirs)
}

/// Listener side: returns the dialer's hello. Nothing the dialer says is acted on before its
/// hello opened: a replayed offer gets an answer, but no further.
pub(super) async fn listener_handshake(
    conn: &mut Conn,
    keys: &Keys,
    ours: &PeerHello,
    max_frame: usize,
) -> Result<PeerHello, HandshakeError> {
    let offer: HandshakeOffer = conn.recv().await?;
    if offer.protocol != PROTOCOL_VERSION {
        return Err(HandshakeError::Protocol(format!(
            "the peer speaks link protocol {}, we speak {PROTOCOL_VERSION}",
            offer.protocol
        )));
    }
    let (reply, sealed) = noise::respond(keys, &offer.noise).ok_or(HandshakeError::Auth)?;
    conn.send(&HandshakeReply { noise: reply }).await?;
    conn.seal(sealed, max_frame);
    let theirs: PeerHello = conn.recv().await.map_err(HandshakeError::sealed)?;
    check_hello(&theirs, ours)?;
    conn.send(ours).await?;
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
    let keys = shared.keys();
    let handshake = dialer_handshake(&mut conn, &keys, &ours, shared.cfg.max_frame);
    match timeout(limit, handshake).await {
        Ok(Ok(theirs)) => Ok((conn, theirs)),
        Ok(Err(HandshakeError::Auth)) => bail!(
            "cluster authentication with {addr} failed: the peer does not know our cluster secret"
        ),
        Ok(Err(HandshakeError::Refused)) => bail!(
            "cluster authentication with {addr} failed: the peer refused our cluster secret, \
             link protocol or cluster identity (see its log)"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(cluster_id: &str, has_state: bool) -> PeerHello {
        PeerHello {
            cluster_version: 2,
            cluster_id: cluster_id.into(),
            has_state,
            ..Default::default()
        }
    }

    /// Who takes whom: the same identity, or a fresh node; never another cluster's member,
    /// nor (in a cluster with an identity) a member of a build from before identities.
    #[test]
    fn hellos_are_checked_for_the_cluster_identity() {
        let cases = [
            (hello("x", true), hello("x", true), true),
            (hello("x", true), hello("y", true), false),
            (hello("", false), hello("x", true), true),
            (hello("", true), hello("x", true), false),
            (hello("", true), hello(LEGACY_CLUSTER_ID, true), true),
            (hello(LEGACY_CLUSTER_ID, true), hello("x", true), false),
            (hello("x", true), hello("", false), true),
        ];
        for (theirs, ours, ok) in cases {
            let got = check_hello(&theirs, &ours);
            assert_eq!(got.is_ok(), ok, "{theirs:?} / {ours:?}: {got:?}");
        }
    }
}
