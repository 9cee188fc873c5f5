//! Byte-stream transports (`tcp://`, `ssl://`): a stream of JSON values in, one JSON
//! document plus `\r\n` per response out.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::jsonstream::JsonStream;
use super::tls::TlsAcceptor;
use crate::conn::Outgoing;
use crate::node::Node;
use crate::session::{Session, TransportEvent};

/// A connection's read buffer starts this small and doubles while reads fill it.
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

/// Responses gathered into one socket write when several are ready together.
const WRITE_BATCH: usize = 256 * 1024;

/// Accepts connections until the listener task is dropped.
pub async fn accept_loop(node: Arc<Node>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    // At most --max-connections at once: beyond that, clients wait in the listen backlog.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        node.limits.max_connections.max(1),
    ));
    let handshake = node.limits.tls_handshake_timeout;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let node = node.clone();
        let tls = tls.clone();
        actix_rt::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve(node, sock, peer.to_string(), "tcp").await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => serve(node, s, peer.to_string(), "ssl").await,
                        Ok(Err(e)) => debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Runs one connection to its end.
pub async fn serve<S>(node: Arc<Node>, stream: S, remote: String, protocol: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let max = node.limits.max_message_size;
    let inflight = node.limits.max_inflight.max(1) as u32;
    let eof_grace = node.limits.eof_grace;
    let opened = Session::open(node, remote, protocol);
    let (mut rd, wr) = tokio::io::split(stream);
    let writer = actix_rt::spawn(write_loop(wr, opened.out));
    let addr = opened.addr;
    let permits = opened.permits;
    let mut stopped = opened.stopped;
    let mut parser = JsonStream::new(max);
    // Small while the client is quiet (most connections are), grown when reads fill it:
    // an idle connection should not hold 64 KiB of buffer.
    let mut buf = vec![0u8; READ_MIN];
    'read: loop {
        let n = tokio::select! {
            _ = &mut stopped => break 'read,
            r = rd.read(&mut buf) => match r {
                Ok(0) => {
                    // The client may only have shut down its sending side (`nc -N`, scripts):
                    // answer what is in flight, for a short while, then close. All permits
                    // back means every answer has been written.
                    tokio::select! {
                        _ = &mut stopped => {}
                        _ = tokio::time::timeout(eof_grace, permits.acquire_many(inflight)) => {}
                    }
                    addr.do_send(TransportEvent::Closed);
                    break 'read;
                }
                Err(_) => { addr.do_send(TransportEvent::Closed); break 'read; }
                Ok(n) => n,
            },
        };
        if !super::feed(&mut parser, &buf[..n], &addr, &permits, &mut stopped).await {
            break 'read;
        }
        if n == buf.len() && buf.len() < READ_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
    finish_writer(writer).await;
}

/// Gives the writer a moment to flush the last answers; a peer that does not read them
/// does not keep the socket open.
pub async fn finish_writer(writer: actix_rt::task::JoinHandle<()>) {
    let abort = writer.abort_handle();
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        abort.abort();
    }
}

/// How long a closing connection's writer may take to flush.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut out: mpsc::UnboundedReceiver<Outgoing>) {
    let mut buf = Vec::with_capacity(4096);
    // Answers (with their in-flight permits) are released only once written.
    let mut written: Vec<Outgoing> = Vec::new();
    while let Some(first) = out.recv().await {
        buf.clear();
        buf.extend_from_slice(first.text.as_bytes());
        buf.extend_from_slice(b"\r\n");
        written.push(first);
        while buf.len() < WRITE_BATCH {
            match out.try_recv() {
                Ok(more) => {
                    buf.extend_from_slice(more.text.as_bytes());
                    buf.extend_from_slice(b"\r\n");
                    written.push(more);
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        written.clear();
    }
    let _ = wr.shutdown().await;
}
