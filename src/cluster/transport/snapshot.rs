//! Snapshot transfer: a MsgSnapshot goes as `SnapshotChunk` frames interleaved with the

//! normal ones and is acknowledged by one `SnapshotAck`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use tracing::warn;

use nexus_core::ids::RaftId;
use nexus_core::proto::{frame::Body, Frame, SnapshotAck, SnapshotChunk};

use super::{lock, Conn, Outbound, PeerEvent, Reader, SendError, Shared, Writer};

/// Largest snapshot we reassemble: beyond, a peer could exhaust our memory.
const MAX_SNAPSHOT: u64 = 4 << 30;
/// A snapshot transfer must be acknowledged within max(this, size at `SNAPSHOT_RATE`).
const SNAPSHOT_ACK_MIN: Duration = Duration::from_secs(30);
const SNAPSHOT_RATE: u64 = 1 << 20;
/// Room for the raft message on the last snapshot chunk, on top of `snapshot_chunk`.
pub(super) const CHUNK_OVERHEAD: usize = 64 << 10;

pub(super) struct Transfer {
    pub(super) to: RaftId,
}

pub(super) struct SnapshotJob {
    pub(super) transfer: u64,
    pub(super) data: Bytes,
    /// The raft message with its snapshot data taken out, encoded.
    pub(super) message: Vec<u8>,
}

impl Shared {
    pub(super) fn send_snapshot(
        self: &Arc<Self>,
        to: RaftId,
        mut msg: RaftMessage,
    ) -> Result<(), SendError> {
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
    pub(super) fn expire_transfer(self: &Arc<Self>, transfer: u64, to: RaftId, deadline: Duration) {
        let shared = Arc::downgrade(self);
        self.spawn(async move {
            tokio::time::sleep(deadline).await;
            if Weak::upgrade(&shared).is_some_and(|s| s.finish_transfer(transfer, None, false)) {
                warn!("snapshot transfer {transfer} to cluster peer {to} not acknowledged within {deadline:?}");
            }
        });
    }

    pub(super) fn transfer_pending(&self, transfer: u64) -> bool {
        lock(&self.transfers).contains_key(&transfer)
    }

    /// Ends a transfer (if `from` is given, only when it was sent to `from`). Answers whether
    /// it was still pending, i.e. whether this call emitted its SnapshotDone.
    pub(super) fn finish_transfer(&self, transfer: u64, from: Option<RaftId>, ok: bool) -> bool {
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

pub(super) fn ack_deadline(size: usize) -> Duration {
    let at_rate = Duration::from_secs(size as u64 / SNAPSHOT_RATE);
    at_rate.max(SNAPSHOT_ACK_MIN)
}

pub(super) struct Sending {
    pub(super) job: SnapshotJob,
    pub(super) offset: usize,
    pub(super) crc: crc32fast::Hasher,
}

impl Writer {
    pub(super) fn has_snapshot_work(&self) -> bool {
        self.sending.is_some() || !self.jobs.is_empty()
    }

    /// Buffers the next chunk of the current snapshot, if any.
    pub(super) fn next_chunk(&mut self, conn: &mut Conn) -> io::Result<()> {
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
    pub(super) fn current_snapshot(&mut self) -> Option<&mut Sending> {
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
    pub(super) fn abandon_started(&mut self) {
        self.sending = None;
        for transfer in self.started.drain(..) {
            self.shared.finish_transfer(transfer, None, false);
        }
    }
}

/// A snapshot being received.
pub(super) struct Assembly {
    pub(super) transfer: u64,
    pub(super) data: Vec<u8>,
    pub(super) crc: crc32fast::Hasher,
}

impl Reader {
    pub(super) fn ack_received(&self, ack: SnapshotAck) {
        if !ack.ok {
            warn!(
                "cluster peer {} refused snapshot transfer {}: {}",
                self.from, ack.transfer, ack.error
            );
        }
        self.shared
            .finish_transfer(ack.transfer, Some(self.from), ack.ok);
    }

    pub(super) fn chunk(&mut self, chunk: SnapshotChunk) {
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
    pub(super) fn begin(&mut self, transfer: u64) {
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

    pub(super) fn complete(&mut self, assembly: Assembly, last: SnapshotChunk) {
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
        if !self.sender_matches(RaftId(msg.from)) {
            return self.fail(transfer, "wrong sender".into());
        }
        msg.mut_snapshot().set_data(Bytes::from(assembly.data));
        self.shared.emit(PeerEvent::Raft {
            from: self.from,
            msg,
        });
        self.reply(transfer, true, String::new());
    }

    pub(super) fn fail(&mut self, transfer: u64, why: String) {
        warn!(
            "snapshot transfer {transfer} from cluster peer {} failed: {why}",
            self.from
        );
        self.assembly.take_if(|a| a.transfer == transfer);
        self.reply(transfer, false, why);
    }

    /// Acknowledges over our own outbound stream to the sender.
    pub(super) fn reply(&self, transfer: u64, ok: bool, error: String) {
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
