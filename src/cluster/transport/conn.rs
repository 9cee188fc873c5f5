//! One peer connection: length-delimited prost messages both ways, sealed once the
//! handshake is done.

use nexus_core::ids::RaftId;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, FramedRead, LengthDelimitedCodec};

use super::noise::{Sealed, Sealer, Unsealer};
use super::{handshake::PREAUTH_MAX, lock, Shared};

/// A write that makes no progress for this long means the peer is gone (not just slow).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch being written goes out in pieces of about this size rather than all at once.
const WRITE_CHUNK: usize = 256 << 10;

/// A connection: length-delimited prost messages both ways (a 4-byte big-endian length,
/// then the message). Writes are buffered until `flush`, so a batch of frames goes out in
/// few syscalls, sealed as one run of records.
pub(super) struct Conn {
    reader: FramedRead<OwnedReadHalf, PeerCodec>,
    writer: OwnedWriteHalf,
    /// Messages not yet written, framed (plaintext).
    pending: BytesMut,
    /// What goes on the wire: `pending`, sealed once the connection is.
    wire: BytesMut,
    sealer: Option<Sealer>,
    /// The largest message either way.
    max_frame: usize,
    /// Where this connection's bytes are counted (its peer's, once known).
    traffic: Arc<Traffic>,
}

/// Unframes what is read: records are opened first, once the connection is sealed.
struct PeerCodec {
    framing: LengthDelimitedCodec,
    unsealer: Option<Unsealer>,
}

impl Decoder for PeerCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match &mut self.unsealer {
            None => self.framing.decode(src),
            Some(unsealer) => {
                unsealer.open(src)?;
                self.framing.decode(&mut unsealer.plain)
            }
        }
    }
}

/// Bytes to and from one peer, over all of its connections.
#[derive(Default)]
pub(super) struct Traffic {
    pub(super) sent: AtomicU64,
    pub(super) received: AtomicU64,
}

/// A peer's link, as `/metrics` shows it.
pub struct PeerTraffic {
    pub raft_id: RaftId,
    /// Our stream to it is connected and authenticated.
    pub connected: bool,
    pub sent: u64,
    pub received: u64,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Conn {
        // Raft heartbeats are small and latency-sensitive.
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        let codec = PeerCodec {
            framing: LengthDelimitedCodec::builder()
                .max_frame_length(PREAUTH_MAX)
                .new_codec(),
            unsealer: None,
        };
        Conn {
            reader: FramedRead::new(read, codec),
            writer,
            pending: BytesMut::new(),
            wire: BytesMut::new(),
            sealer: None,
            max_frame: PREAUTH_MAX,
            traffic: Arc::default(),
        }
    }

    /// Counts this connection's bytes as `peer`'s from now on.
    pub(super) fn count_for(&mut self, shared: &Shared, peer: RaftId) {
        self.traffic = lock(&shared.traffic).entry(peer).or_default().clone();
    }

    /// The handshake is done: from now on everything is sealed with its keys, and messages
    /// may be up to `max` bytes. Nothing may be pending either way (the handshake ends
    /// with a message read, and each side speaks in turn).
    pub(super) fn seal(&mut self, keys: Sealed, max: usize) {
        let (sealer, unsealer) = keys.split();
        let codec = self.reader.decoder_mut();
        codec.framing.set_max_frame_length(max);
        codec.unsealer = Some(unsealer);
        self.sealer = Some(sealer);
        self.max_frame = max;
    }

    pub(super) fn feed<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        let (len, max) = (msg.encoded_len(), self.max_frame);
        if len > max {
            return Err(invalid_data(format!(
                "message of {len} bytes exceeds the limit of {max} bytes"
            )));
        }
        self.pending.reserve(4 + len);
        self.pending.put_u32(len as u32);
        msg.encode(&mut self.pending)
            .expect("the buffer was reserved for the message");
        Ok(())
    }

    /// `feed`, writing out what is buffered once it is large.
    pub(super) async fn feed_batched<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        self.feed(msg)?;
        if self.pending.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len() as u64;
        match &mut self.sealer {
            Some(sealer) => {
                sealer.seal(&self.pending, &mut self.wire);
                self.pending.clear();
            }
            None => self.wire = self.pending.split(),
        }
        let written = timeout(WRITE_TIMEOUT, self.writer.write_all(&self.wire)).await;
        if matches!(written, Ok(Ok(()))) {
            self.traffic.sent.fetch_add(n, Ordering::Relaxed);
        }
        self.wire.clear();
        written.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")))
    }

    pub(super) async fn send<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        self.feed(msg)?;
        self.flush().await
    }

    /// The next message, undecoded; None at end of stream. Cancel-safe.
    pub(super) async fn recv_raw(&mut self) -> io::Result<Option<BytesMut>> {
        let next = self.reader.next().await.transpose();
        if let Ok(Some(buf)) = &next {
            // The 4-byte length prefix included.
            let n = buf.len() as u64 + 4;
            self.traffic.received.fetch_add(n, Ordering::Relaxed);
        }
        next
    }

    pub(super) async fn recv<M: prost::Message + Default>(&mut self) -> io::Result<M> {
        let buf = self.recv_raw().await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the peer",
            )
        })?;
        M::decode(buf).map_err(invalid_data)
    }

    pub(super) async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }
}

pub(super) fn invalid_data(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}
