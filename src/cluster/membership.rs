//! Forming and joining a cluster, and the glue between the peer transport and the Raft
//! driver: peer events become driver messages, the driver's sends go out as frames.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::transport::{EventSink, PeerEvent, Transport};
use nexus_consensus::{Msg, Peers, RaftHandle, Role};
use nexus_core::ids::RaftId;
use nexus_core::proto::{frame, Frame, JoinRequest, JoinResponse, PeerHello};

impl Peers for Transport {
    fn send(&self, to: RaftId, frame: Frame) {
        if let Err(e) = Transport::send(self, to, frame) {
            debug!(%to, "peer frame dropped: {e}");
        }
    }

    fn send_raft(&self, to: RaftId, msg: raft::eraftpb::Message) {
        if let Err(e) = Transport::send_raft(self, to, msg) {
            debug!(%to, "raft message dropped: {e}");
        }
    }

    fn set_peer(&self, id: RaftId, addr: &str) {
        Transport::set_peer(self, id, addr.to_string());
    }

    fn remove_peer(&self, id: RaftId) {
        Transport::remove_peer(self, id);
    }
}

/// Routes what the transport receives: Raft traffic to the driver (once it runs), routed
/// deliveries to the node (once it exists).
pub fn event_sink(
    raft: Arc<OnceLock<RaftHandle>>,
    routed: Arc<OnceLock<super::RoutedSink>>,
) -> EventSink {
    Arc::new(move |event| {
        if let PeerEvent::Frame {
            from,
            frame:
                frame @ Frame {
                    body:
                        Some(
                            frame::Body::PipeWrite(_)
                            | frame::Body::RoutedAnswer(_)
                            | frame::Body::TopicDelivery(_)
                            | frame::Body::AwaitApplied(_),
                        ),
                },
        } = event
        {
            if let Some(sink) = routed.get() {
                sink(from, frame);
            }
            return;
        }
        let Some(raft) = raft.get() else {
            return;
        };
        // Contact is noted as traffic arrives, not when the Raft thread gets to it.
        if let PeerEvent::Frame { from, .. } | PeerEvent::Raft { from, .. } = &event {
            raft.stats.touch_peer_contact(*from);
            if raft.stats.leader() == Some(*from) {
                raft.stats.touch_leader_contact();
            }
        }
        let msg = match event {
            PeerEvent::Raft { from, msg } => Msg::Raft {
                from,
                msg: Box::new(msg),
            },
            PeerEvent::Frame { from, frame } => match frame.body {
                Some(frame::Body::Forward(fwd)) => Msg::Forwarded { from, fwd },
                Some(frame::Body::ForwardResult(r)) => Msg::ForwardFailed(r),
                _ => return,
            },
            PeerEvent::Unreachable { to } => Msg::Unreachable { to },
            PeerEvent::SnapshotDone { to, ok } => Msg::SnapshotDone { to, ok },
            PeerEvent::Request {
                hello,
                frame,
                reply,
            } => {
                answer_request(raft, hello, frame, reply);
                return;
            }
        };
        let _ = raft.deliver(msg);
    })
}

/// A join or removal request on a one-off connection: the driver decides, the answer goes
/// back on that connection.
fn answer_request(
    raft: &RaftHandle,
    hello: PeerHello,
    frame: Frame,
    reply: tokio::sync::oneshot::Sender<Frame>,
) {
    let answer = |r: JoinResponse| Frame {
        body: Some(frame::Body::JoinResponse(r)),
    };
    match frame.body {
        Some(frame::Body::JoinRequest(req)) => {
            if req.raft_id != hello.raft_id {
                let _ = reply.send(answer(JoinResponse {
                    ok: false,
                    error: "a node can only ask to join for itself".into(),
                    ..Default::default()
                }));
                return;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = raft.deliver(Msg::Join {
                raft_id: RaftId(req.raft_id),
                addr: req.cluster_addr,
                replace: req.replace,
                reply: tx,
            });
            tokio::spawn(async move {
                let r = rx.await.unwrap_or_else(|_| JoinResponse {
                    ok: false,
                    error: "node shutting down".into(),
                    ..Default::default()
                });
                let _ = reply.send(answer(r));
            });
        }
        Some(frame::Body::RemoveRequest(req)) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = raft.deliver(Msg::Remove {
                raft_id: RaftId(req.raft_id),
                reply: tx,
            });
            tokio::spawn(async move {
                let r = match rx.await {
                    Ok(Ok(())) => JoinResponse {
                        ok: true,
                        ..Default::default()
                    },
                    Ok(Err(e)) => JoinResponse {
                        ok: false,
                        error: e,
                        ..Default::default()
                    },
                    Err(_) => JoinResponse::default(),
                };
                let _ = reply.send(answer(r));
            });
        }
        _ => {}
    }
}

/// How a fresh node with --join starts.
pub enum Formation {
    /// Found a cluster: ask to join it.
    Join,
    /// Form a new cluster with these voters (raft id → cluster address).
    Bootstrap(BTreeMap<RaftId, String>),
}

/// `--bootstrap-expect N`: probes the seeds (and whatever gossip finds) through the
/// authenticated transport until either a node that already belongs to a cluster answers
/// (→ join it) or N fresh nodes expecting N see each other (→ all of them write the same
/// initial configuration, voters = those N). Peers are counted only once authenticated.
pub async fn discover(
    transport: &Transport,
    gossip: &super::gossip::Gossip,
    seeds: &[String],
    me: &PeerHello,
    expect: usize,
) -> Formation {
    let mut last_log = Instant::now();
    loop {
        let mut addrs: Vec<String> = seeds.to_vec();
        for m in gossip.live().await {
            if m.raft_id.0 != me.raft_id && !addrs.contains(&m.cluster_addr) {
                addrs.push(m.cluster_addr);
            }
        }
        let mut fresh: BTreeMap<RaftId, String> = BTreeMap::new();
        fresh.insert(RaftId(me.raft_id), me.cluster_addr.clone());
        for addr in &addrs {
            match transport.probe(addr, Duration::from_secs(2)).await {
                Ok(h) if h.raft_id == me.raft_id => {}
                Ok(h) if h.has_state => {
                    info!(peer = h.raft_id, %addr, "found an existing cluster: joining it");
                    return Formation::Join;
                }
                Ok(h) => {
                    if h.bootstrap_expect as usize != expect {
                        warn!(peer = h.raft_id, %addr, theirs = h.bootstrap_expect, ours = expect,
                            "a peer expects a different cluster size; not counting it");
                        continue;
                    }
                    fresh.insert(RaftId(h.raft_id), h.cluster_addr);
                }
                Err(e) => debug!(%addr, "probe failed: {e}"),
            }
        }
        if fresh.len() >= expect {
            let voters: BTreeMap<RaftId, String> = fresh.into_iter().take(expect).collect();
            info!(voters = ?voters.keys().collect::<Vec<_>>(), "forming a new cluster");
            return Formation::Bootstrap(voters);
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            info!(
                seen = fresh.len(),
                expect, "waiting for nodes to form the cluster"
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Asks the seeds (then the leader they name) to add this node, until the Raft driver sees
/// itself in the configuration.
/// `replace`: this node was rebuilt and replaces the member at its own cluster address.
pub async fn join(
    transport: Transport,
    raft: RaftHandle,
    seeds: Vec<String>,
    me: PeerHello,
    replace: bool,
) {
    let member = |raft: &RaftHandle| raft.stats.role() != Role::None;
    let mut last_log = Instant::now();
    while !member(&raft) {
        for seed in &seeds {
            let mut addr = seed.clone();
            for _ in 0..3 {
                let req = Frame {
                    body: Some(frame::Body::JoinRequest(JoinRequest {
                        raft_id: me.raft_id,
                        cluster_addr: me.cluster_addr.clone(),
                        replace,
                    })),
                };
                let answer = transport.call(&addr, req, Duration::from_secs(3)).await;
                match answer {
                    Ok((
                        _,
                        Frame {
                            body: Some(frame::Body::JoinResponse(r)),
                        },
                    )) => {
                        if r.ok {
                            // Wait for the leader to reach us before asking again.
                            let until = Instant::now() + Duration::from_secs(5);
                            while !member(&raft) && Instant::now() < until {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            break;
                        }
                        if !r.leader_addr.is_empty() && r.leader_addr != addr {
                            addr = r.leader_addr;
                            continue;
                        }
                        debug!(%addr, "join refused: {}", r.error);
                        break;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        if last_log.elapsed() >= Duration::from_secs(5) {
                            warn!(%addr, "cannot join through this seed yet: {e:#}");
                            last_log = Instant::now();
                        }
                        break;
                    }
                }
            }
            if member(&raft) {
                break;
            }
        }
        if !member(&raft) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    info!("joined the cluster");
}

/// An admin's removal of member `raft_id`: done here when this node leads, else asked of
/// the leader over the peer transport. Answers once the change is proposed.
pub async fn remove_member(
    link: &super::ClusterLink,
    raft: &RaftHandle,
    leader_addr: Option<String>,
    raft_id: RaftId,
) -> Result<(), String> {
    if raft.stats.role() == Role::Leader {
        return raft.remove_member(raft_id).await;
    }
    let addr = leader_addr.ok_or("no raft leader known, retry")?;
    let req = Frame {
        body: Some(frame::Body::RemoveRequest(
            nexus_core::proto::RemoveRequest { raft_id: raft_id.0 },
        )),
    };
    let answer = link
        .transport
        .call(&addr, req, Duration::from_secs(5))
        .await;
    match answer.map(|(_, frame)| frame.body) {
        Ok(Some(frame::Body::JoinResponse(r))) if r.ok => Ok(()),
        Ok(Some(frame::Body::JoinResponse(r))) => Err(r.error),
        Ok(_) => Err("unexpected answer from the leader".into()),
        Err(e) => Err(format!("cannot reach the leader at {addr}: {e:#}")),
    }
}

/// While this node leads, removes members that gossip has not seen alive for `after`
/// (Consul's reconnect timeout): a member gone for good must not count toward the quorum
/// forever. The clock starts when this node sees the member missing, so a new leader
/// waits the whole time again.
pub async fn reap_dead_members(link: Arc<super::ClusterLink>, raft: RaftHandle, after: Duration) {
    let mut missing_since: BTreeMap<RaftId, Instant> = BTreeMap::new();
    let period = (after / 4).clamp(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        if raft.stats.role() != Role::Leader {
            missing_since.clear();
            continue;
        }
        let live: Vec<RaftId> = link.gossip.live().await.iter().map(|m| m.raft_id).collect();
        let (voters, learners) = raft
            .stats
            .membership
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let members: Vec<RaftId> = voters.into_iter().chain(learners).collect();
        missing_since.retain(|id, _| members.contains(id) && !live.contains(id));
        for id in members {
            if live.contains(&id) {
                continue;
            }
            let since = *missing_since.entry(id).or_insert_with(Instant::now);
            if since.elapsed() < after {
                continue;
            }
            match raft.remove_member(id).await {
                Ok(()) => {
                    warn!(raft_id = %id, after = ?after, "removing a member gossip has not seen alive");
                    missing_since.remove(&id);
                }
                Err(e) => debug!(raft_id = %id, "dead member not removed yet: {e}"),
            }
        }
    }
}

/// While this node leads, declares member processes down (`NodeDown`): one whose Raft
/// traffic stopped `lease` ago (counted from when this node took the lead at the earliest)
/// and that gossip has lost too. The cluster then cleans up after its connections as if
/// each had closed. The clock is the same one a cut-off node fences itself by (time since
/// it heard from the leader), and `lease` exceeds that node's `--fence-after-ms`, so its
/// clients are gone before its state is.
pub async fn watch_liveness(
    link: Arc<super::ClusterLink>,
    raft: RaftHandle,
    state: Arc<std::sync::RwLock<nexus_core::state::State>>,
    me: RaftId,
    lease: Duration,
) {
    let period = (lease / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut leading_since_ms: Option<u64> = None;
    loop {
        tokio::time::sleep(period).await;
        if raft.stats.role() != Role::Leader {
            leading_since_ms = None;
            continue;
        }
        let since = *leading_since_ms.get_or_insert_with(nexus_consensus::process_ms);
        let processes: Vec<(RaftId, String)> = state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cluster
            .nodes
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, n)| (*id, n.incarnation.clone()))
            .collect();
        let now = nexus_consensus::process_ms();
        let silent: Vec<(RaftId, String, u64)> = processes
            .into_iter()
            .filter_map(|(id, incarnation)| {
                let heard = raft.stats.peer_contact_ms(id).max(since);
                let quiet = now.saturating_sub(heard);
                (quiet >= lease.as_millis() as u64).then_some((id, incarnation, quiet))
            })
            .collect();
        if silent.is_empty() {
            continue;
        }
        let live = link.gossip.live().await;
        for (node_id, incarnation, quiet) in silent {
            let alive = live
                .iter()
                .any(|m| m.raft_id == node_id && m.incarnation == incarnation);
            if alive {
                continue;
            }
            warn!(raft_id = %node_id, %incarnation, silent_ms = quiet,
                "node process is gone: cleaning up after its connections");
            let cmd = nexus_core::state::Command::NodeDown {
                node_id,
                incarnation,
            };
            if let Err(e) = raft.propose(cmd).await {
                debug!(raft_id = %node_id, "NodeDown not applied yet: {e:?}");
            }
        }
    }
}
