use super::*;
use bytes::Bytes;
use nexus_core::ids::RaftId;
use nexus_core::proto::Forward;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::debug;

const WAIT: Duration = Duration::from_secs(5);

fn config(raft_id: u64, secret: Option<&str>) -> TransportConfig {
    TransportConfig {
        hello: PeerHello {
            cluster_version: 1,
            raft_id,
            generation: 7,
            program_version: "test".into(),
            ..PeerHello::default()
        },
        keys: Keys::from_secrets(secret.as_slice()),
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_secs(1),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..TransportConfig::default()
    }
}

struct Node {
    t: Transport,
    events: UnboundedReceiver<PeerEvent>,
}

impl Node {
    fn addr(&self) -> String {
        self.t.local_addr().to_string()
    }

    /// The next event `pick` accepts, skipping the others.
    async fn next<T>(&mut self, mut pick: impl FnMut(PeerEvent) -> Option<T>) -> T {
        let wait = async {
            loop {
                let event = self.events.recv().await.expect("event sink alive");
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        };
        timeout(WAIT, wait).await.expect("expected event")
    }

    async fn frame(&mut self) -> (RaftId, Frame) {
        self.next(|e| match e {
            PeerEvent::Frame { from, frame } => Some((from, frame)),
            _ => None,
        })
        .await
    }

    /// No Frame event within `period`.
    async fn no_frame(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            assert!(!matches!(event, PeerEvent::Frame { .. }), "{event:?}");
        }
    }
}

/// Starts a transport advertising its real address.
async fn node(mut cfg: TransportConfig) -> Node {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (tx, events) = mpsc::unbounded_channel();
    let sink: EventSink = Arc::new(move |e| {
        let _ = tx.send(e);
    });
    let hello = cfg.hello.clone();
    // The port may still be held by a transport that just shut down.
    let started = Instant::now();
    let t = loop {
        match Transport::start(cfg.clone(), sink.clone()).await {
            Ok(t) => break t,
            Err(e) if started.elapsed() < WAIT => {
                debug!("bind: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("start: {e}"),
        }
    };
    cfg.hello = PeerHello {
        cluster_addr: t.local_addr().to_string(),
        ..hello
    };
    t.set_hello(cfg.hello);
    Node { t, events }
}

/// A port nobody listens on.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

fn forward(n: u64) -> Frame {
    Frame {
        body: Some(Body::Forward(Forward {
            context: n.to_be_bytes().to_vec(),
            data: Vec::new(),
        })),
    }
}

fn number(frame: &Frame) -> u64 {
    match &frame.body {
        Some(Body::Forward(f)) => u64::from_be_bytes(f.context[..].try_into().unwrap()),
        other => panic!("not a test frame: {other:?}"),
    }
}

fn heartbeat(from: u64, to: u64) -> RaftMessage {
    let mut msg = RaftMessage::default();
    msg.set_msg_type(MessageType::MsgHeartbeat);
    msg.from = from;
    msg.to = to;
    msg.term = 3;
    msg
}

#[tokio::test]
async fn frames_flow_both_ways_in_order() {
    let mut a = node(config(1, Some("s3cret"))).await;
    let mut b = node(config(2, Some("s3cret"))).await;
    a.t.set_peer(RaftId(2), b.addr());
    b.t.set_peer(RaftId(1), a.addr());
    // The raft driver sends from a plain thread, outside the runtime.
    let sender = a.t.clone();
    std::thread::spawn(move || {
        for n in 0..1000 {
            sender.send(RaftId(2), forward(n)).unwrap();
        }
    })
    .join()
    .unwrap();
    for n in 0..1000 {
        b.t.send(RaftId(1), forward(n + 5000)).unwrap();
    }
    for n in 0..1000 {
        let (from, frame) = b.frame().await;
        assert_eq!((from, number(&frame)), (RaftId(1), n));
        let (from, frame) = a.frame().await;
        assert_eq!((from, number(&frame)), (RaftId(2), n + 5000));
    }
    assert!(a.t.connected(RaftId(2)) && b.t.connected(RaftId(1)));

    // A raft message claiming another sender is dropped; the genuine one arrives.
    a.t.send_raft(RaftId(2), heartbeat(3, 2)).unwrap();
    a.t.send_raft(RaftId(2), heartbeat(1, 2)).unwrap();
    let (from, msg) = b
        .next(|e| match e {
            PeerEvent::Raft { from, msg } => Some((from, msg)),
            _ => None,
        })
        .await;
    assert_eq!(
        (from, msg.from, msg.get_msg_type()),
        (RaftId(1), 1, MessageType::MsgHeartbeat)
    );
}

#[tokio::test]
async fn wrong_or_missing_secret_is_refused() {
    let mut secured = node(config(1, Some("alpha"))).await;
    let mut wrong = node(config(2, Some("beta"))).await;
    let mut open = node(config(3, None)).await;
    for other in [&wrong, &open] {
        other.t.set_peer(RaftId(1), secured.addr());
        other.t.send(RaftId(1), forward(1)).unwrap();
    }
    secured.no_frame(Duration::from_millis(500)).await;
    for other in [&mut wrong, &mut open] {
        other
            .next(|e| matches!(e, PeerEvent::Unreachable { to: RaftId(1) }).then_some(()))
            .await;
        assert!(!other.t.connected(RaftId(1)));
        let err = other.t.probe(&secured.addr(), WAIT).await.unwrap_err();
        assert!(err.to_string().contains("cluster authentication"), "{err}");
        let err = secured.t.probe(&other.addr(), WAIT).await.unwrap_err();
        assert!(err.to_string().contains("cluster authentication"), "{err}");
    }

    // Same secret, or both insecure: accepted.
    let friend = node(config(4, Some("alpha"))).await;
    let hello = friend.t.probe(&secured.addr(), WAIT).await.unwrap();
    assert_eq!((hello.raft_id, hello.generation), (1, 7));
    let open2 = node(config(5, None)).await;
    assert_eq!(open2.t.probe(&open.addr(), WAIT).await.unwrap().raft_id, 3);
}

#[tokio::test]
async fn unauthenticated_peer_cannot_send_a_big_message() {
    use tokio::io::AsyncReadExt;
    let secured = node(config(1, Some("alpha"))).await;
    let mut raw = TcpStream::connect(secured.t.local_addr()).await.unwrap();
    // Claims a 256 MiB message: refused at the length, nothing allocated.
    raw.write_all(&[0x10, 0, 0, 0, 1, 2, 3]).await.unwrap();
    let mut buf = [0u8; 64];
    let read = timeout(WAIT, raw.read(&mut buf)).await.expect("closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn snapshot_goes_in_chunks_and_is_acknowledged() {
    let mut a = node(config(1, Some("s"))).await;
    let mut b = node(config(2, Some("s"))).await;
    a.t.set_peer(RaftId(2), b.addr());
    let data: Vec<u8> = (0..5u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    let mut msg = RaftMessage::default();
    msg.set_msg_type(MessageType::MsgSnapshot);
    msg.from = 1;
    msg.to = 2;
    msg.term = 4;
    msg.mut_snapshot().mut_metadata().index = 42;
    msg.mut_snapshot().mut_metadata().term = 4;
    msg.mut_snapshot().set_data(Bytes::from(data.clone()));
    a.t.send_raft(RaftId(2), msg).unwrap();
    a.t.send(RaftId(2), forward(9)).unwrap();

    let (mut snapshot, mut frame) = (None, None);
    while snapshot.is_none() || frame.is_none() {
        match b.next(Some).await {
            PeerEvent::Raft { from, msg } => snapshot = Some((from, msg)),
            PeerEvent::Frame { from, frame: f } => frame = Some((from, number(&f))),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (from, msg) = snapshot.unwrap();
    assert_eq!((from, msg.from, msg.term), (RaftId(1), 1, 4));
    assert_eq!(msg.get_snapshot().get_metadata().index, 42);
    assert!(msg.get_snapshot().get_data() == &data[..], "data differs");
    assert_eq!(frame, Some((RaftId(1), 9)));
    // B learned A's address from its hello to send the ack.
    let done = a
        .next(|e| match e {
            PeerEvent::SnapshotDone { to, ok } => Some((to, ok)),
            _ => None,
        })
        .await;
    assert_eq!(done, (RaftId(2), true));
}

#[tokio::test]
async fn call_gets_the_answer() {
    let a = node(config(1, Some("s"))).await;
    let mut b = node(config(2, Some("s"))).await;
    let addr = b.addr();
    let server = tokio::spawn(async move {
        let (hello, frame, reply) = b
            .next(|e| match e {
                PeerEvent::Request {
                    hello,
                    frame,
                    reply,
                } => Some((hello, frame, reply)),
                _ => None,
            })
            .await;
        assert!(hello.oneshot);
        assert_eq!(hello.raft_id, 1);
        reply.send(forward(number(&frame) + 1)).unwrap();
    });
    let (hello, answer) = a.t.call(&addr, forward(41), WAIT).await.unwrap();
    assert_eq!((hello.raft_id, number(&answer)), (2, 42));
    server.await.unwrap();
}

#[tokio::test]
async fn reconnects_to_a_restarted_peer() {
    let mut a = node(config(1, Some("s"))).await;
    let mut b = node(config(2, Some("s"))).await;
    let listen = b.t.local_addr();
    // A wrong address first: the new one is used at once.
    a.t.set_peer(RaftId(2), closed_port().await);
    a.next(|e| matches!(e, PeerEvent::Unreachable { to: RaftId(2) }).then_some(()))
        .await;
    a.t.set_peer(RaftId(2), b.addr());
    a.t.send(RaftId(2), forward(0)).unwrap();
    assert_eq!(number(&b.frame().await.1), 0);

    b.t.shutdown();
    a.next(|e| matches!(e, PeerEvent::Unreachable { to: RaftId(2) }).then_some(()))
        .await;
    for n in 1..=5 {
        a.t.send(RaftId(2), forward(n)).unwrap();
    }
    let mut b2 = node(TransportConfig {
        listen,
        ..config(2, Some("s"))
    })
    .await;
    for n in 1..=5 {
        assert_eq!(b2.frame().await, (RaftId(1), forward(n)));
    }
    assert!(a.t.connected(RaftId(2)));
}

#[tokio::test]
async fn full_queue_refuses_frames() {
    let mut a = node(TransportConfig {
        queue_frames: 8,
        ..config(1, None)
    })
    .await;
    a.t.set_peer(RaftId(9), closed_port().await);
    for n in 0..8 {
        a.t.send(RaftId(9), forward(n)).unwrap();
    }
    assert_eq!(
        a.t.send(RaftId(9), forward(8)),
        Err(SendError::QueueFull(RaftId(9)))
    );
    assert_eq!(
        a.t.send(RaftId(8), forward(0)),
        Err(SendError::UnknownPeer(RaftId(8)))
    );
    a.next(|e| matches!(e, PeerEvent::Unreachable { to: RaftId(9) }).then_some(()))
        .await;
}

/// What a relay passed, per connection: (dialer → listener, listener → dialer).
type Captured = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A man in the middle on loopback: forwards each connection to `target`, keeps every byte
/// it passed (per connection, dialer→listener and back), and can flip one byte of what a
/// dialer sends.
struct Relay {
    addr: String,
    /// (dialer → listener, listener → dialer) of each connection, in order.
    seen: Captured,
    /// Flip the byte at this offset of the next connection's dialer → listener stream.
    flip_at: Arc<Mutex<Option<usize>>>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Captured = Arc::default();
        let flip_at: Arc<Mutex<Option<usize>>> = Arc::default();
        let (seen2, flip2) = (seen.clone(), flip_at.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let conn = {
                    let mut seen = lock(&seen2);
                    seen.push(Default::default());
                    seen.len() - 1
                };
                let flip = lock(&flip2).take();
                let (in_r, in_w) = inbound.into_split();
                let (out_r, out_w) = outbound.into_split();
                tokio::spawn(pump(in_r, out_w, seen2.clone(), conn, true, flip));
                tokio::spawn(pump(out_r, in_w, seen2.clone(), conn, false, None));
            }
        });
        Relay {
            addr,
            seen,
            flip_at,
        }
    }

    /// Everything that passed, both ways, all connections.
    fn all_bytes(&self) -> Vec<u8> {
        lock(&self.seen)
            .iter()
            .flat_map(|(up, down)| up.iter().chain(down).copied())
            .collect()
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Captured,
    conn: usize,
    up: bool,
    flip: Option<usize>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut passed = 0usize;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(at) = flip.filter(|at| (passed..passed + n).contains(at)) {
            buf[at - passed] ^= 0x20;
        }
        passed += n;
        {
            let mut seen = lock(&seen);
            let side = if up {
                &mut seen[conn].0
            } else {
                &mut seen[conn].1
            };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn marked(n: u64, marker: &[u8]) -> Frame {
    Frame {
        body: Some(Body::Forward(Forward {
            context: n.to_be_bytes().to_vec(),
            data: marker.to_vec(),
        })),
    }
}

/// Waits until `cond` holds (checked every 10 ms), at most `WAIT`.
async fn until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_relay_sees_nothing_readable_and_a_flipped_byte_drops_the_link() {
    let a = node(config(1, Some("s3cret"))).await;
    let mut b = node(config(2, Some("s3cret"))).await;
    let relay = Relay::start(b.addr()).await;
    a.t.set_peer(RaftId(2), relay.addr.clone());
    let marker = b"MARKER-written-through-the-api-7f3a";
    a.t.send(RaftId(2), marked(1, marker)).unwrap();
    assert_eq!(b.frame().await, (RaftId(1), marked(1, marker)));
    let hay = relay.all_bytes();
    assert!(!hay.is_empty());
    assert!(
        !hay.windows(marker.len()).any(|w| w == marker),
        "the marker crossed the relay in the clear"
    );
    assert!(
        !hay.windows(6).any(|w| w == b"s3cret"),
        "the secret crossed the relay"
    );

    // The next connection gets a byte flipped well after its handshake (inside the first
    // frames): the record fails, b drops the link and counts it, and a reconnects.
    let flip_at = 400;
    *lock(&relay.flip_at) = Some(flip_at);
    let dropped = a.t.auth_failures() + b.t.auth_failures();
    a.t.set_peer(RaftId(2), closed_port().await);
    a.t.set_peer(RaftId(2), relay.addr.clone());
    // Frames keep coming until the flipped connection carried byte 400 (the old one may
    // take the first ones before the writer sees the new address).
    let mut n = 1;
    until(|| {
        n += 1;
        let _ = a.t.send(RaftId(2), marked(n, marker));
        b.t.auth_failures() > dropped
    })
    .await;
    // Raft retransmits what the dropped link lost (here: sent again until one arrives);
    // frames that arrive arrive whole and in order.
    let (deadline, mut last) = (Instant::now() + WAIT, 1);
    loop {
        assert!(Instant::now() < deadline, "the link did not come back");
        let _ = a.t.send(RaftId(2), marked(1000, marker));
        let event = timeout(Duration::from_millis(50), b.events.recv()).await;
        let Ok(Some(PeerEvent::Frame { from, frame })) = event else {
            continue;
        };
        assert_eq!(from, RaftId(1));
        let n = number(&frame);
        assert_eq!(frame, marked(n, marker), "a damaged frame was delivered");
        assert!(
            n > last || n == 1000,
            "frames out of order: {n} after {last}"
        );
        last = n;
        if n == 1000 {
            break;
        }
    }
    let conns = lock(&relay.seen).len();
    assert!(
        conns >= 3,
        "the link was not re-established ({conns} connections)"
    );
}

#[tokio::test]
async fn a_replayed_connection_is_refused() {
    let a = node(config(1, Some("s3cret"))).await;
    let mut b = node(config(2, Some("s3cret"))).await;
    let relay = Relay::start(b.addr()).await;
    a.t.set_peer(RaftId(2), relay.addr.clone());
    a.t.send(RaftId(2), forward(1)).unwrap();
    assert_eq!(number(&b.frame().await.1), 1);
    a.t.shutdown();
    until(|| !lock(&relay.seen)[0].0.is_empty()).await;
    let captured = lock(&relay.seen)[0].0.clone();

    // The dialer's whole stream, replayed to the listener: its offer is answered, but its
    // sealed hello and frames do not open under the new handshake's keys.
    let failures = b.t.auth_failures();
    let mut raw = TcpStream::connect(b.t.local_addr()).await.unwrap();
    raw.write_all(&captured).await.unwrap();
    until(|| b.t.auth_failures() > failures).await;
    b.no_frame(Duration::from_millis(300)).await;
}
