//! Membership gossip through chitchat: every node publishes who it is (raft id, generation,
//! incarnation, addresses, versions) and how it is doing (clients, load, status); every node
//! sees who is live. Its datagrams are sealed with the cluster secrets (`sealed`); even so,
//! gossip is used for discovery and display, and never trusted for membership changes
//! without the authenticated peer transport.

mod sealed;

pub use sealed::{GossipKeys, GossipRefusals, SealedUdp, WINDOW};

use nexus_core::ids::RaftId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion,
};

pub const KEY_RAFT_ID: &str = "raft_id";
pub const KEY_GENERATION: &str = "generation";
pub const KEY_INCARNATION: &str = "incarnation";
pub const KEY_CLUSTER_ADDR: &str = "cluster_addr";
pub const KEY_LISTENING: &str = "listening";
pub const KEY_VERSION: &str = "version";
pub const KEY_API_VERSION: &str = "api_version";
pub const KEY_CLIENTS: &str = "clients";
pub const KEY_LOAD: &str = "load";
pub const KEY_STATUS: &str = "status";
/// "APPLIED,COMMIT": the node's Raft applied and commit indexes (for lag per node).
pub const KEY_RAFT_INDEX: &str = "raft_index";
/// The newest Raft log format the node applies (`codec::LOG_VERSION`; absent: 1).
pub const KEY_LOG_VERSION: &str = "log_version";

pub struct GossipConfig {
    /// UDP bind address (the --cluster address).
    pub listen: SocketAddr,
    /// The address others gossip with us at (--advertise, resolved).
    pub advertise: SocketAddr,
    pub raft_id: RaftId,
    pub generation: u64,
    pub seeds: Vec<String>,
    pub interval: Duration,
    pub dead_grace: Duration,
    /// Keys from the cluster secrets.
    pub keys: GossipKeys,
}

/// What one live node says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Member {
    pub raft_id: RaftId,
    pub generation: u64,
    pub incarnation: String,
    pub cluster_addr: String,
    /// Client listener URLs.
    pub listening: Vec<String>,
    pub version: String,
    pub api_version: String,
    pub clients: u64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    pub status: String,
    /// The newest log format it applies (1 for a build that does not say).
    pub log_version: u32,
    /// Its Raft applied and commit indexes when it last gossiped (`None`: a build that
    /// does not say).
    pub applied: Option<u64>,
    pub commit: Option<u64>,
}

impl Member {
    fn from_state(state: &NodeState) -> Option<Member> {
        let get = |k: &str| state.get(k).unwrap_or_default().to_string();
        let raft_id = state.get(KEY_RAFT_ID)?.parse().ok()?;
        let mut load = [0.0; 3];
        for (slot, v) in load.iter_mut().zip(get(KEY_LOAD).split(',')) {
            *slot = v.parse().unwrap_or(0.0);
        }
        let index = get(KEY_RAFT_INDEX);
        let mut index = index.split(',').map(|v| v.parse::<u64>().ok());
        let (applied, commit) = (index.next().flatten(), index.next().flatten());
        Some(Member {
            applied,
            commit,
            raft_id,
            generation: get(KEY_GENERATION).parse().unwrap_or(0),
            incarnation: get(KEY_INCARNATION),
            cluster_addr: get(KEY_CLUSTER_ADDR),
            listening: get(KEY_LISTENING)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            version: get(KEY_VERSION),
            api_version: get(KEY_API_VERSION),
            clients: get(KEY_CLIENTS).parse().unwrap_or(0),
            load,
            status: get(KEY_STATUS),
            log_version: get(KEY_LOG_VERSION).parse().unwrap_or(1),
        })
    }
}

pub struct Gossip {
    handle: ChitchatHandle,
    keys: GossipKeys,
    refusals: Arc<GossipRefusals>,
}

impl Gossip {
    /// Starts gossiping on the current tokio runtime with `keys` as our initial state.
    pub async fn start(cfg: GossipConfig, keys: Vec<(String, String)>) -> anyhow::Result<Gossip> {
        let id = ChitchatId::new(cfg.raft_id.to_string(), cfg.generation, cfg.advertise);
        let config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: "nexus".to_string(),
            gossip_interval: cfg.interval,
            listen_addr: cfg.listen,
            seed_nodes: cfg.seeds,
            // phi 8 over a prior of one gossip interval: a silent node is declared dead in
            // about 8 intervals (2 s at 250 ms), instead of chitchat's ~10 s default.
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: cfg.interval * 20,
                initial_interval: cfg.interval,
                dead_node_grace_period: cfg.dead_grace,
            },
            marked_for_deletion_grace_period: cfg.dead_grace,
            catchup_callback: None,
            // A node is a member once it says who it is.
            extra_liveness_predicate: Some(Box::new(|s: &NodeState| {
                s.get(KEY_RAFT_ID).is_some() && s.get(KEY_CLUSTER_ADDR).is_some()
            })),
            protocol_version: ProtocolVersion::V0,
        };
        let refusals = Arc::new(GossipRefusals::default());
        let transport = SealedUdp {
            keys: cfg.keys.clone(),
            refusals: refusals.clone(),
        };
        let handle = spawn_chitchat(config, keys, &transport).await?;
        Ok(Gossip {
            handle,
            keys: cfg.keys,
            refusals,
        })
    }

    /// Seals with the first of `secrets` and opens with any of them from now on.
    pub fn set_secrets<S: AsRef<[u8]>>(&self, secrets: &[S]) {
        self.keys.set(secrets);
    }

    /// Datagrams refused: (not authenticated, replayed or stale).
    pub fn refusals(&self) -> (u64, u64) {
        let r = &self.refusals;
        (
            r.unauthenticated.load(std::sync::atomic::Ordering::Relaxed),
            r.replayed_or_stale
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets one of our keys.
    pub async fn set(&self, key: &str, value: String) {
        let cc = self.handle.chitchat();
        let mut guard = cc.lock().await;
        guard.self_node_state().set(key, value);
    }

    /// Live nodes, self included; one entry per raft id (its newest generation).
    pub async fn live(&self) -> Vec<Member> {
        let cc = self.handle.chitchat();
        let guard = cc.lock().await;
        let mut by_id: BTreeMap<RaftId, Member> = BTreeMap::new();
        for id in guard.live_nodes() {
            let Some(m) = guard.node_state(id).and_then(Member::from_state) else {
                continue;
            };
            match by_id.get(&m.raft_id) {
                Some(old) if old.generation >= m.generation => {}
                _ => {
                    by_id.insert(m.raft_id, m);
                }
            }
        }
        by_id.into_values().collect()
    }

    /// Raft ids gossip currently believes dead.
    pub async fn dead(&self) -> Vec<RaftId> {
        let cc = self.handle.chitchat();
        let guard = cc.lock().await;
        guard
            .dead_nodes()
            .filter_map(|id| id.node_id.parse().ok())
            .collect()
    }

    /// Stops gossiping (peers will see this node go dead).
    pub fn shutdown(&self) {
        let _ = self.handle.initiate_shutdown();
    }
}

#[cfg(test)]
mod tests;
