//! One peer connection: length-delimited prost messages both ways.

use nexus_core::ids::RaftId;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Encoder, FramedRead, LengthDelimitedCodec};

use super::{handshake::PREAUTH_MAX, lock, Shared};

/// A write that makes no progress for this long means the peer is gone (not just slow).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A batch being written goes out in pieces of about this size rather than all at once.
const WRITE_CHUNK: usize = 256 << 10;

/// A connection: length-delimited prost messages both ways. Writes are buffered until
/// `flush`, so a batch of frames goes out in few syscalls.
pub(super) struct Conn {
    reader: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: OwnedWriteHalf,
    wbuf: BytesMut,
    /// Frames what is fed into `wbuf`, as `reader` unframes: the same limit both ways.
    framing: LengthDelimitedCodec,
    /// Where this connection's bytes are counted (its peer's, once known).
    traffic: Arc<Traffic>,
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
        let codec = || {
            LengthDelimitedCodec::builder()
                .max_frame_length(PREAUTH_MAX)
                .new_codec()
        };
        Conn {
            reader: FramedRead::new(read, codec()),
            writer,
            wbuf: BytesMut::new(),
            framing: codec(),
            traffic: Arc::default(),
        }
    }

    /// Counts this connection's bytes as `peer`'s from now on.
    pub(super) fn count_for(&mut self, shared: &Shared, peer: RaftId) {
        self.traffic = lock(&shared.traffic).entry(peer).or_default().clone();
    }

    /// The peer proved the secret: accept frames up to `max`.
    pub(super) fn authenticated(&mut self, max: usize) {
        self.reader.decoder_mut().set_max_frame_length(max);
        self.framing.set_max_frame_length(max);
    }

    pub(super) fn feed<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        let (len, max) = (msg.encoded_len(), self.framing.max_frame_length());
        if len > max {
            return Err(invalid_data(format!(
                "message of {len} bytes exceeds the limit of {max} bytes"
            )));
        }
        self.framing
            .encode(Bytes::from(msg.encode_to_vec()), &mut self.wbuf)
    }

    /// `feed`, writing out what is buffered once it is large.
    pub(super) async fn feed_batched<M: prost::Message>(&mut self, msg: &M) -> io::Result<()> {
        self.feed(msg)?;
        if self.wbuf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
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
