//! Gossip datagrams sealed with the cluster secrets: chitchat's UDP transport, with every
//! datagram encrypted and authenticated (XChaCha20-Poly1305 under a key derived from each
//! secret), and replays refused.
//!
//! A datagram is `version (1) | nonce (24, random) | ciphertext`, the plaintext being the
//! sender's wall-clock time in ms (8) and chitchat's bytes. A receiver opens it with any of
//! its keys and refuses it when it does not open, when its time is more than `WINDOW` away
//! from ours, or when its nonce was seen within the window: a replayed datagram is refused
//! whether it comes back a second later or an hour later. So nodes' clocks must agree within
//! `WINDOW` (NTP does far better); a node whose clock is off has its gossip refused, loudly,
//! and only discovery and the display of liveness suffer: membership and the declaration of
//! a node as down also need the sealed peer links.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use sha2::{Digest, Sha256};
use tracing::warn;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// How far a datagram's time may be from ours, either way.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Nonces remembered at most (about 30 datagrams a second from each of 100 nodes over two
/// windows); beyond, new datagrams are refused rather than let a replay through.
const MAX_REMEMBERED: usize = 400_000;
/// Refusals are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The gossip keys, one per cluster secret: the first seals, any opens. Shared with the
/// socket, so that a rotation takes effect at once.
#[derive(Clone)]
pub struct GossipKeys(Arc<RwLock<Vec<XChaCha20Poly1305>>>);

impl GossipKeys {
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> GossipKeys {
        let keys = GossipKeys(Arc::default());
        keys.set(secrets);
        keys
    }

    /// Replaces the keys (a rotation); none: insecure mode, sealed with the empty secret.
    pub fn set<S: AsRef<[u8]>>(&self, secrets: &[S]) {
        let derive = |secret: &[u8]| {
            let mut h = Sha256::new();
            h.update(b"nexus-rs gossip key 1\0");
            h.update(secret);
            XChaCha20Poly1305::new(&h.finalize())
        };
        let keys = match secrets {
            [] => vec![derive(b"")],
            _ => secrets.iter().map(|s| derive(s.as_ref())).collect(),
        };
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        let sealed = keys[0]
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &[VERSION],
                },
            )
            .expect("XChaCha20-Poly1305 seals any length");
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext and nonce of a datagram sealed with one of our keys.
    fn open(&self, datagram: &[u8]) -> Option<(Vec<u8>, [u8; NONCE_LEN])> {
        if datagram.len() < HEADER_LEN + TAG_LEN || datagram[0] != VERSION {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = datagram[1..HEADER_LEN].try_into().ok()?;
        let payload = || Payload {
            msg: &datagram[HEADER_LEN..],
            aad: &[VERSION],
        };
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .find_map(|k| k.decrypt(XNonce::from_slice(&nonce), payload()).ok())
            .map(|plain| (plain, nonce))
    }
}

/// Counts of refused datagrams, for `/metrics`.
#[derive(Default)]
pub struct GossipRefusals {
    /// Did not open with any of our keys (a wrong secret, or altered on the way).
    pub unauthenticated: AtomicU64,
    /// Opened, but seen before or too far from our time (replayed, or a clock far off).
    pub replayed_or_stale: AtomicU64,
}

/// chitchat's transport, sealed.
pub struct SealedUdp {
    pub keys: GossipKeys,
    pub refusals: Arc<GossipRefusals>,
}

#[async_trait]
impl Transport for SealedUdp {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("failed to bind to {listen}/UDP for gossip"))?;
        Ok(Box::new(SealedSocket {
            socket,
            keys: self.keys.clone(),
            refusals: self.refusals.clone(),
            seen: Seen::default(),
            buf: vec![0u8; MAX_DATAGRAM],
            last_warn: None,
        }))
    }
}

/// Nonces of the datagrams accepted within the window, by time.
#[derive(Default)]
struct Seen {
    nonces: HashSet<[u8; NONCE_LEN]>,
    by_time: BTreeSet<(u64, [u8; NONCE_LEN])>,
}

impl Seen {
    /// Records a datagram of time `at`; false when its nonce was seen (a replay) or the
    /// memory is full.
    fn admit(&mut self, at: u64, nonce: [u8; NONCE_LEN], now: u64) -> bool {
        let horizon = now.saturating_sub(2 * WINDOW.as_millis() as u64);
        while let Some(&(t, n)) = self.by_time.first() {
            if t >= horizon {
                break;
            }
            self.by_time.pop_first();
            self.nonces.remove(&n);
        }
        if self.nonces.len() >= MAX_REMEMBERED || !self.nonces.insert(nonce) {
            return false;
        }
        self.by_time.insert((at, nonce));
        true
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    keys: GossipKeys,
    refusals: Arc<GossipRefusals>,
    seen: Seen,
    buf: Vec<u8>,
    last_warn: Option<Instant>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SealedSocket {
    /// The envelope in a datagram, or why it is refused.
    fn unseal(&mut self, datagram: &[u8]) -> Result<ChitchatEnvelope, &'static str> {
        let Some((plain, nonce)) = self.keys.open(datagram) else {
            self.refusals
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            return Err("it does not authenticate (a wrong cluster secret, or altered)");
        };
        let now = now_ms();
        let refused = match plain.split_first_chunk::<8>() {
            None => Some("it is too short"),
            Some((time, _))
                if u64::from_be_bytes(*time).abs_diff(now) > WINDOW.as_millis() as u64 =>
            {
                Some("its time is more than 60 s from ours (replayed, or a clock far off)")
            }
            Some((time, _)) if !self.seen.admit(u64::from_be_bytes(*time), nonce, now) => {
                Some("it was received before (replayed), or 400,000 recent nonces fill the memory")
            }
            Some(_) => None,
        };
        if let Some(why) = refused {
            self.refusals
                .replayed_or_stale
                .fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        ChitchatEnvelope::deserialize(&mut &plain[8..]).map_err(|_| "it is not a gossip message")
    }

    fn warn_refused(&mut self, from: SocketAddr, why: &str) {
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warn = Some(Instant::now());
            warn!("refused a gossip datagram from {from}: {why}");
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket
            .local_addr()
            .context("failed to get the gossip socket's address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let mut plain = Vec::with_capacity(512);
        plain.extend_from_slice(&now_ms().to_be_bytes());
        envelope.serialize(&mut plain);
        let datagram = self.keys.seal(&plain);
        if datagram.len() > MAX_DATAGRAM {
            // chitchat fills datagrams up to the UDP limit; sealing adds 49 bytes. Our
            // state is a few hundred bytes per node, so only a cluster of hundreds gets here.
            warn!(
                "a gossip message to {to} of {} bytes is over the UDP limit once sealed: not sent",
                datagram.len()
            );
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        match self.socket.send_to(&datagram, to).await {
            Ok(n) => Ok(SendOutcome { num_bytes_sent: n }),
            // A peer gone away (ICMP unreachable) is not a broken socket.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
            Err(e) => Err(e).context("sending a gossip datagram"),
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(received) => received,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e).context("receiving a gossip datagram"),
            };
            // Taken out while it is read, so that unsealing may update the socket.
            let buf = std::mem::take(&mut self.buf);
            let unsealed = self.unseal(&buf[..n]);
            self.buf = buf;
            match unsealed {
                Ok(envelope) => {
                    return Ok(RecvOutcome {
                        from_addr: from,
                        envelope,
                        num_bytes_received: n,
                    })
                }
                Err(why) => self.warn_refused(from, why),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_admitted_once_within_the_window() {
        let mut seen = Seen::default();
        let now = 10_000_000;
        assert!(seen.admit(now, [1; NONCE_LEN], now));
        assert!(!seen.admit(now, [1; NONCE_LEN], now), "a replay");
        assert!(seen.admit(now, [2; NONCE_LEN], now));
        // Two windows later the old nonces are forgotten (the time check refuses them).
        let later = now + 2 * WINDOW.as_millis() as u64 + 1;
        assert!(seen.admit(later, [3; NONCE_LEN], later));
        assert_eq!(seen.nonces.len(), 1);
    }

    #[test]
    fn keys_open_what_any_of_them_sealed() {
        let old = GossipKeys::new(&["old"]);
        let both = GossipKeys::new(&["new", "old"]);
        let sealed = old.seal(b"hello");
        assert_eq!(both.open(&sealed).unwrap().0, b"hello");
        assert!(GossipKeys::new(&["new"]).open(&sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(both.open(&flipped).is_none());
        assert!(GossipKeys::new::<&str>(&[]).open(&sealed).is_none());
    }
}
