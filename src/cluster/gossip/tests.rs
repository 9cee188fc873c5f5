//! Gossip between real UDP sockets, through a relay that keeps what it passes.

use std::sync::Mutex;
use std::time::Instant;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// A UDP port free a moment ago.
fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

async fn gossip(raft_id: u64, port: u16, seeds: Vec<String>, secret: &str) -> Gossip {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = GossipConfig {
        listen: addr,
        advertise: addr,
        raft_id: RaftId(raft_id),
        generation: 1,
        seeds,
        interval: Duration::from_millis(50),
        dead_grace: Duration::from_secs(60),
        keys: GossipKeys::new(&[secret]),
    };
    let keys = vec![
        (KEY_RAFT_ID.to_string(), raft_id.to_string()),
        (KEY_CLUSTER_ADDR.to_string(), addr.to_string()),
    ];
    Gossip::start(cfg, keys).await.unwrap()
}

/// Forwards datagrams sent to it to `target`, and the answers back to the last sender;
/// keeps every datagram it passed.
async fn relay(target: SocketAddr) -> (SocketAddr, std::sync::Arc<Mutex<Vec<Vec<u8>>>>) {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let seen: std::sync::Arc<Mutex<Vec<Vec<u8>>>> = Default::default();
    let kept = seen.clone();
    tokio::spawn(async move {
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    kept.lock().unwrap().push(a[..n].to_vec());
                    let _ = back.send_to(&a[..n], target).await;
                }
                Ok((n, _)) = back.recv_from(&mut b) => {
                    kept.lock().unwrap().push(b[..n].to_vec());
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, seen)
}

async fn until<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sealed_gossip_hides_its_values_and_refuses_replays_forgeries_and_strangers() {
    let secret = "9f86d081884c7d659a2feaa0c55ad015";
    let (pa, pb) = (free_port(), free_port());
    let b_addr: SocketAddr = format!("127.0.0.1:{pb}").parse().unwrap();
    let b = gossip(2, pb, Vec::new(), secret).await;
    let (relay_addr, seen) = relay(b_addr).await;
    let a = gossip(1, pa, vec![relay_addr.to_string()], secret).await;
    let marker = "MARKER-in-gossip-5e1d";
    a.set(KEY_STATUS, marker.to_string()).await;
    until(|| async {
        b.live()
            .await
            .iter()
            .any(|m| m.raft_id == RaftId(1) && m.status == marker)
    })
    .await;
    let captured: Vec<Vec<u8>> = seen.lock().unwrap().clone();
    assert!(!captured.is_empty());
    for d in &captured {
        assert!(
            !d.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "a gossip value crossed the relay in the clear"
        );
    }

    // A captured datagram sent again, and one with a byte flipped: both refused.
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_, replays_before) = b.refusals();
    attacker.send_to(&captured[0], b_addr).await.unwrap();
    until(|| async { b.refusals().1 > replays_before }).await;
    let (forged_before, _) = b.refusals();
    let mut flipped = captured[0].clone();
    let last = flipped.len() - 1;
    flipped[last / 2] ^= 0x01;
    attacker.send_to(&flipped, b_addr).await.unwrap();
    until(|| async { b.refusals().0 > forged_before }).await;

    // A node with another secret gossips to b and is never seen.
    let pc = free_port();
    let c = gossip(
        3,
        pc,
        vec![b_addr.to_string()],
        "another-secret-0123456789abcdef",
    )
    .await;
    let (forged_before, _) = b.refusals();
    until(|| async { b.refusals().0 > forged_before + 3 }).await;
    assert!(!b.live().await.iter().any(|m| m.raft_id == RaftId(3)));
    assert!(!c.live().await.iter().any(|m| m.raft_id == RaftId(2)));
    for g in [a, b, c] {
        g.shutdown();
    }
}
