//! Sealing of peer connections with the Noise protocol (`snow`).
//!
//! A connection opens with the `NNpsk0` handshake keyed from the cluster secret: two
//! ephemeral X25519 keys (forward secrecy) and the pre-shared key mixed in from the first
//! message, so only a holder of the secret can complete it. Then every byte goes in
//! ChaCha20-Poly1305 records, each `u16` length + ciphertext, with an implicit nonce that
//! counts the records of each direction: a record altered, dropped, replayed or moved fails
//! authentication, and the connection is dropped.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use sha2::{Digest, Sha256};
use snow::{HandshakeState, StatelessTransportState};

const PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake: a peer of another link protocol cannot complete it.
const PROLOGUE: &[u8] = b"nexus-rs peer link 2";
/// Noise's largest message.
const MAX_RECORD: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext carried by one record.
const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;

/// A pre-shared key, derived from one cluster secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk([u8; 32]);

impl Psk {
    pub fn derive(secret: &[u8]) -> Psk {
        let mut h = Sha256::new();
        h.update(b"nexus-rs cluster psk 1\0");
        h.update(secret);
        Psk(h.finalize().into())
    }
}

/// The keys a node seals with: it dials with the first and accepts any of them, so that a
/// secret can be replaced by rolling restarts. Without a secret (insecure mode) the key is
/// derived from the empty secret: links are still encrypted, but anybody can join.
#[derive(Clone)]
pub struct Keys(Arc<Vec<Psk>>);

impl Keys {
    /// Keys from the cluster secrets, the one to dial with first; none: insecure mode.
    pub fn from_secrets<S: AsRef<[u8]>>(secrets: &[S]) -> Keys {
        let psks: Vec<Psk> = match secrets {
            [] => vec![Psk::derive(b"")],
            _ => secrets.iter().map(|s| Psk::derive(s.as_ref())).collect(),
        };
        Keys(Arc::new(psks))
    }

    fn dial_key(&self) -> &Psk {
        &self.0[0]
    }
}

fn builder<'a>(psk: &'a Psk) -> snow::Builder<'a> {
    let params = PARAMS.parse().expect("valid Noise parameters");
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .expect("one prologue")
        .psk(0, &psk.0)
        .expect("NNpsk0 has a psk at 0")
}

/// The dialer's half of the handshake.
pub(super) struct Initiator(HandshakeState);

impl Initiator {
    /// Starts the handshake with our dialing key; returns the first message.
    pub(super) fn start(keys: &Keys) -> (Initiator, Vec<u8>) {
        let mut hs = builder(keys.dial_key())
            .build_initiator()
            .expect("a valid initiator");
        let mut msg = vec![0u8; 256];
        let n = hs
            .write_message(&[], &mut msg)
            .expect("an empty payload fits");
        msg.truncate(n);
        (Initiator(hs), msg)
    }

    /// The listener's answer; None when it does not hold our key.
    pub(super) fn finish(mut self, reply: &[u8]) -> Option<Sealed> {
        let mut payload = vec![0u8; reply.len()];
        self.0.read_message(reply, &mut payload).ok()?;
        Sealed::from_handshake(self.0)
    }
}

/// The listener's half: tries each accepted key on the dialer's first message. Answers the
/// reply to send and the sealed session; None when the dialer holds none of our keys.
pub(super) fn respond(keys: &Keys, offer: &[u8]) -> Option<(Vec<u8>, Sealed)> {
    let mut payload = vec![0u8; offer.len()];
    let mut hs = keys.0.iter().find_map(|psk| {
        let mut hs = builder(psk).build_responder().expect("a valid responder");
        hs.read_message(offer, &mut payload).ok().map(|_| hs)
    })?;
    let mut reply = vec![0u8; 256];
    let n = hs.write_message(&[], &mut reply).ok()?;
    reply.truncate(n);
    Some((reply, Sealed::from_handshake(hs)?))
}

/// The keys of an established connection, for its two halves.
pub(super) struct Sealed(Arc<StatelessTransportState>);

impl Sealed {
    fn from_handshake(hs: HandshakeState) -> Option<Sealed> {
        hs.into_stateless_transport_mode()
            .ok()
            .map(Arc::new)
            .map(Sealed)
    }

    pub(super) fn split(self) -> (Sealer, Unsealer) {
        let sealer = Sealer {
            state: self.0.clone(),
            nonce: 0,
        };
        let unsealer = Unsealer {
            state: self.0,
            nonce: 0,
            plain: BytesMut::new(),
        };
        (sealer, unsealer)
    }
}

/// Seals what a connection writes.
pub(super) struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Appends `plain` to `out` as records.
    pub(super) fn seal(&mut self, plain: &[u8], out: &mut BytesMut) {
        out.reserve(plain.len() + plain.len().div_ceil(MAX_PLAIN) * (2 + TAG_LEN));
        for piece in plain.chunks(MAX_PLAIN) {
            let len = piece.len() + TAG_LEN;
            out.put_u16(len as u16);
            let start = out.len();
            out.resize(start + len, 0);
            self.state
                .write_message(self.nonce, piece, &mut out[start..])
                .expect("a record within Noise's limit");
            self.nonce += 1;
        }
    }
}

/// Opens what a connection reads.
pub(super) struct Unsealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// Opened bytes not yet taken as messages.
    pub(super) plain: BytesMut,
}

/// A record that failed authentication: altered, replayed, reordered, or not sealed with
/// this connection's keys.
#[derive(Debug, thiserror::Error)]
#[error("a sealed record failed authentication (altered, replayed or out of order)")]
pub struct SealBroken;

impl Unsealer {
    /// Opens the complete records at the front of `src` into `plain`.
    pub(super) fn open(&mut self, src: &mut BytesMut) -> io::Result<()> {
        while src.len() >= 2 {
            let len = u16::from_be_bytes([src[0], src[1]]) as usize;
            if len < TAG_LEN {
                return Err(broken());
            }
            if src.len() < 2 + len {
                src.reserve(2 + len - src.len());
                break;
            }
            src.advance(2);
            let record = src.split_to(len);
            let start = self.plain.len();
            self.plain.resize(start + len - TAG_LEN, 0);
            let opened = self
                .state
                .read_message(self.nonce, &record, &mut self.plain[start..]);
            if opened.is_err() {
                self.plain.truncate(start);
                return Err(broken());
            }
            self.nonce += 1;
        }
        Ok(())
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, SealBroken)
}

/// Whether a connection failed because a record did not authenticate.
pub fn is_seal_broken(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SealBroken>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dial: &Keys, accept: &Keys) -> Option<((Sealer, Unsealer), (Sealer, Unsealer))> {
        let (initiator, offer) = Initiator::start(dial);
        let (reply, listener) = respond(accept, &offer)?;
        let dialer = initiator.finish(&reply)?;
        Some((dialer.split(), listener.split()))
    }

    #[test]
    fn records_open_in_order_only() {
        let keys = Keys::from_secrets(&["s3cret"]);
        let ((mut seal, _), (_, mut open)) = pair(&keys, &keys).unwrap();
        let big = vec![7u8; MAX_PLAIN * 2 + 10];
        let mut wire = BytesMut::new();
        seal.seal(b"hello", &mut wire);
        seal.seal(&big, &mut wire);
        assert_eq!(wire.len(), 5 + big.len() + 4 * (2 + TAG_LEN));
        // Delivered a byte at a time, it opens to the same bytes.
        let mut src = BytesMut::new();
        for b in wire.iter() {
            src.put_u8(*b);
            open.open(&mut src).unwrap();
        }
        assert_eq!(&open.plain[..5], b"hello");
        assert_eq!(&open.plain[5..], &big[..]);

        // A replayed record, a flipped bit or a dropped record fails.
        let mut one = BytesMut::new();
        seal.seal(b"x", &mut one);
        let mut replay = one.clone();
        open.open(&mut one).unwrap();
        assert!(is_seal_broken(&open.open(&mut replay).unwrap_err()));
        let ((mut seal, _), (_, mut open)) = pair(&keys, &keys).unwrap();
        let mut wire = BytesMut::new();
        seal.seal(b"first", &mut wire);
        wire[4] ^= 1;
        assert!(is_seal_broken(&open.open(&mut wire).unwrap_err()));
        let ((mut seal, _), (_, mut open)) = pair(&keys, &keys).unwrap();
        let (mut first, mut second) = (BytesMut::new(), BytesMut::new());
        seal.seal(b"first", &mut first);
        seal.seal(b"second", &mut second);
        assert!(is_seal_broken(&open.open(&mut second).unwrap_err()));
    }

    #[test]
    fn a_listener_accepts_any_of_its_keys_and_nothing_else() {
        let old = Keys::from_secrets(&["old"]);
        let both = Keys::from_secrets(&["new", "old"]);
        let new = Keys::from_secrets(&["new"]);
        assert!(
            pair(&old, &both).is_some(),
            "a node still dialing with the old key"
        );
        assert!(pair(&both, &new).is_some(), "dials with the first");
        assert!(pair(&old, &new).is_none());
        assert!(pair(&Keys::from_secrets::<&str>(&[]), &new).is_none());
        // The dialer sees a listener that answers with another key.
        let (initiator, offer) = Initiator::start(&new);
        assert!(respond(&old, &offer).is_none());
        let (reply, _) = respond(&new, &offer).unwrap();
        let mut flipped = reply.clone();
        flipped[40] ^= 1;
        assert!(initiator.finish(&flipped).is_none());
    }
}
