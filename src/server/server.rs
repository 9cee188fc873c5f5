//! Starting and stopping a node: storage, Raft, bootstrap, listeners, graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use tracing::{debug, info, warn};

use crate::config::{Listener, Scheme, ServeArgs};
use nexus_core::auth;
use std::sync::OnceLock;

use crate::node::{now_rfc3339, Control, Node};
use crate::reload::Reloader;
use crate::transport::{http, stream, tls};
use nexus_cluster::gossip::{self, Gossip, GossipConfig};
use nexus_cluster::transport::{Transport, TransportConfig};
use nexus_cluster::{membership, secret};
use nexus_consensus::store::{self, RaftStorage};
use nexus_consensus::{self as consensus, Identity, RaftConfig};
use nexus_core::ids::RaftId;
use nexus_core::proto::PeerHello;
use nexus_core::rpc::RpcError;
use nexus_core::state::{Command, State};

pub const DEFAULT_ROOT_PASSWORD: &str = "root";

/// A started node and its listeners.
pub struct Running {
    pub node: Arc<Node>,
    /// The listeners with their bound addresses (port 0 resolved).
    pub listening: Vec<Listener>,
    http_servers: Vec<actix_web::dev::ServerHandle>,
    /// Threads serving http/https (0: one per core).
    http_workers: usize,
    /// Time sessions get to close on stop.
    shutdown_grace: Duration,
    tcp_tasks: Vec<actix_rt::task::JoinHandle<()>>,
    cluster: Option<ClusterRuntime>,
}

/// The cluster side of a running node: peer transport and gossip.
struct ClusterRuntime {
    transport: Transport,
    gossip: Arc<Gossip>,
    raft_slot: Arc<OnceLock<consensus::RaftHandle>>,
    /// Where routed deliveries go once the node exists.
    routed_slot: Arc<OnceLock<nexus_cluster::RoutedSink>>,
    hello: PeerHello,
    /// A fresh node that must ask to be added.
    joining: bool,
}

impl ClusterRuntime {
    async fn stop(self) {
        self.transport.shutdown();
        self.gossip.shutdown();
    }
}

/// The cluster secrets from --cluster-secret-file (one per line, the first to dial with)
/// or NEXUS_CLUSTER_SECRET; none in insecure mode. A weak secret is refused unless
/// --insecure-cluster.
fn cluster_secrets(args: &ServeArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    let c = &args.cluster;
    if c.cluster.is_some() && c.fence_after_ms >= c.node_down_after_ms {
        return Err(anyhow!(
            "--fence-after-ms ({}) must be below --node-down-after-ms ({}): a cut-off node \
             must close its clients before the others clean up after it",
            c.fence_after_ms,
            c.node_down_after_ms
        ));
    }
    let secrets = match (&c.cluster_secret_file, &c.cluster_secret) {
        (Some(path), _) => secret::load_checked(path, c.insecure_cluster)?,
        (None, Some(value)) => {
            let s = secret::secret_from_env(value)?;
            secret::checked(&s, "NEXUS_CLUSTER_SECRET", c.insecure_cluster)?;
            vec![s]
        }
        (None, None) => Vec::new(),
    };
    if let (Some(addr), true) = (&c.cluster, secrets.is_empty()) {
        let loopback = addr
            .parse::<SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false);
        if !loopback && !c.insecure_cluster {
            return Err(anyhow!(
                "--cluster {addr} is not a loopback address: give the cluster secret \
                 (--cluster-secret-file FILE or NEXUS_CLUSTER_SECRET; `nexus cluster secret` \
                 makes one) so that only your nodes can join, or pass --insecure-cluster"
            ));
        }
        warn!("no cluster secret: any process that reaches {addr} can join this cluster");
    }
    Ok(secrets)
}

/// Writes the initial configuration of a new cluster: `voters` (raft id → address).
fn bootstrap_storage(
    storage: &RaftStorage,
    voters: std::collections::BTreeMap<RaftId, String>,
) -> anyhow::Result<()> {
    let mut initial = State::default();
    let ids: Vec<u64> = voters.keys().map(|id| id.0).collect();
    initial.cluster.id =
        nexus_core::state::founding_identity(&voters.keys().copied().collect::<Vec<_>>());
    initial.cluster.members = voters;
    storage.bootstrap(&ids, initial.to_snapshot())?;
    Ok(())
}

/// The cluster identity this node's hellos name: none while it has no state; its
/// cluster's, or "none" for a cluster formed before identities existed.
fn hello_cluster_id(storage: &RaftStorage) -> anyhow::Result<String> {
    if storage.is_fresh() {
        return Ok(String::new());
    }
    let id = storage.cluster_id()?.unwrap_or_default();
    Ok(nexus_cluster::transport::hello_cluster_id(&id))
}

/// Starts the peer transport and gossip, then decides how a fresh node enters a cluster.
async fn start_cluster(
    args: &ServeArgs,
    me: &Identity,
    storage: &RaftStorage,
    secrets: Vec<Vec<u8>>,
) -> anyhow::Result<ClusterRuntime> {
    let c = &args.cluster;
    let listen_raw = c.cluster.as_deref().expect("cluster mode");
    let listen = resolve(listen_raw).await?;
    let advertised = c.advertised().expect("cluster mode").to_string();
    let advertise = resolve(&advertised).await?;
    let fresh = storage.is_fresh();
    let hello = PeerHello {
        cluster_version: nexus_cluster::CLUSTER_VERSION,
        raft_id: me.raft_id.0,
        generation: me.generation,
        cluster_addr: advertised.clone(),
        program_version: crate::build_info::VERSION.to_string(),
        has_state: !fresh,
        cluster_id: hello_cluster_id(storage)?,
        bootstrap_expect: c.bootstrap_expect.unwrap_or(0) as u32,
        ..Default::default()
    };
    let raft_slot: Arc<OnceLock<consensus::RaftHandle>> = Arc::default();
    let routed_slot: Arc<OnceLock<nexus_cluster::RoutedSink>> = Arc::default();
    let transport = Transport::start(
        TransportConfig {
            listen,
            hello: hello.clone(),
            keys: nexus_cluster::transport::Keys::from_secrets(&secrets),
            ..TransportConfig::default()
        },
        membership::event_sink(raft_slot.clone(), routed_slot.clone()),
    )
    .await
    .with_context(|| format!("binding the cluster address {listen_raw}"))?;
    let gossip = Gossip::start(
        GossipConfig {
            listen,
            advertise,
            raft_id: me.raft_id,
            generation: me.generation,
            seeds: c.join.clone(),
            interval: Duration::from_millis(c.gossip_interval_ms.max(10)),
            dead_grace: Duration::from_secs(c.gossip_dead_grace.max(1)),
            keys: gossip::GossipKeys::new(&secrets),
        },
        vec![
            (gossip::KEY_RAFT_ID.into(), me.raft_id.to_string()),
            (gossip::KEY_GENERATION.into(), me.generation.to_string()),
            (gossip::KEY_INCARNATION.into(), me.incarnation.clone()),
            (gossip::KEY_CLUSTER_ADDR.into(), advertised.clone()),
            (
                gossip::KEY_VERSION.into(),
                crate::build_info::VERSION.into(),
            ),
            (
                gossip::KEY_API_VERSION.into(),
                crate::api::sys::API_VERSION.into(),
            ),
            (gossip::KEY_STATUS.into(), "starting".into()),
            (
                gossip::KEY_LOG_VERSION.into(),
                nexus_core::state::codec::LOG_VERSION.to_string(),
            ),
        ],
    )
    .await
    .with_context(|| format!("starting gossip on {listen_raw}"))?;
    let mut joining = false;
    if fresh && store::datadir::rebuild_requested(&args.data_dir) {
        if c.join.is_empty() {
            return Err(anyhow!(
                "{} was emptied by `nexus rebuild` to copy the state from peers: start the \
                 node with --join naming them",
                args.data_dir.display()
            ));
        }
        info!("rebuilding from peers: joining as a new member that replaces the old one at {advertised}");
        joining = true;
    } else if fresh {
        match (c.join.is_empty(), c.bootstrap_expect) {
            (true, _) => {
                info!("fresh node without --join: bootstrapping a cluster of one");
                bootstrap_storage(storage, [(me.raft_id, advertised.clone())].into())?;
            }
            (false, None) => joining = true,
            (false, Some(n)) => {
                match membership::discover(&transport, &gossip, &c.join, &hello, n.max(1)).await {
                    membership::Formation::Join => joining = true,
                    membership::Formation::Bootstrap(voters) => {
                        bootstrap_storage(storage, voters)?;
                    }
                }
            }
        }
        if !joining {
            transport.set_cluster_id(hello_cluster_id(storage)?);
        }
        transport.set_hello(PeerHello {
            has_state: !joining,
            ..hello.clone()
        });
    }
    Ok(ClusterRuntime {
        transport,
        gossip: Arc::new(gossip),
        raft_slot,
        routed_slot,
        hello,
        joining,
    })
}

/// Keeps what this node gossips about itself current: clients, load, listeners, status,
/// Raft indexes.
async fn publish_gossip(node: Arc<Node>, gossip: Arc<Gossip>) {
    loop {
        let listening = node
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join(",");
        let (l1, l5, l15) = crate::api::sys::load_average();
        let status = match node.replica.raft.stats.ready() {
            Ok(()) => "ready".to_string(),
            Err(why) => format!("not ready: {why}"),
        };
        gossip.set(gossip::KEY_LISTENING, listening).await;
        gossip
            .set(gossip::KEY_CLIENTS, node.local.session_count().to_string())
            .await;
        gossip
            .set(gossip::KEY_LOAD, format!("{l1},{l5},{l15}"))
            .await;
        gossip.set(gossip::KEY_STATUS, status).await;
        let stats = &node.replica.raft.stats;
        gossip
            .set(
                gossip::KEY_RAFT_INDEX,
                format!("{},{}", stats.applied_index(), stats.commit_index()),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if Arc::strong_count(&node) <= 1 {
            return;
        }
    }
}

/// Closes every client connection while this node has not heard from a Raft majority for
/// `lease` (self-fencing): the others may soon clean up after this node's connections, so
/// no client may keep acting on what it owned here. Connections opened meanwhile cannot
/// commit their session and close too.
async fn self_fence(node: Arc<Node>, lease: Duration) {
    let weak = Arc::downgrade(&node);
    drop(node);
    let mut fenced = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(node) = weak.upgrade() else {
            return;
        };
        let cut_off = node.replica.raft.stats.since_quorum_contact(node.raft_id) > lease;
        if cut_off {
            if !fenced && node.local.session_count() > 0 {
                warn!(?lease, "no contact with a raft majority: closing every client connection (self-fencing)");
                fenced = true;
            }
            node.local.broadcast(Control::Close);
        } else if fenced {
            info!("a raft majority is reachable again: serving clients");
            fenced = false;
        }
    }
}

/// HOST:PORT to a socket address (the first the resolver gives).
async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))
}

impl Running {
    pub fn addr(&self, scheme: Scheme) -> Option<SocketAddr> {
        self.listening
            .iter()
            .find(|l| l.scheme == scheme)
            .map(|l| l.addr)
    }
}

/// Starts a node on the current actix system.
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    // Everything that can fail on bad configuration fails before storage opens.
    let listeners = args.listeners().map_err(|e| anyhow!(e))?;
    let certificates = if listeners.iter().any(|l| l.scheme.uses_tls()) {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                return Err(anyhow!(
                    "ssl:// and https:// listeners need --tls-cert and --tls-key"
                ))
            }
        };
        Some(Arc::new(
            tls::Certificates::load(cert, key).map_err(|e| anyhow!(e))?,
        ))
    } else {
        None
    };
    let tls_config = match &certificates {
        Some(c) => Some(tls::server_config(c.clone()).map_err(|e| anyhow!(e))?),
        None => None,
    };
    let mut bound = Vec::new();
    for l in &listeners {
        let std_listener = bind_listener(l.addr, args.listen_backlog)
            .with_context(|| format!("binding {}", l.url()))?;
        let addr = std_listener.local_addr()?;
        bound.push((
            Listener {
                scheme: l.scheme,
                addr,
            },
            std_listener,
        ));
    }
    let advertised = args.cluster.advertised().unwrap_or_default().to_string();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let secrets = cluster_secrets(&args)?;
    // Last of the checks: a start that fails after it leaves a seeded data dir.
    if let Some(file) = &args.restore {
        let restored = crate::recovery::restore_into(&args.data_dir, file, advertised.clone())?;
        crate::recovery::report_restore(file, &restored);
    }
    #[cfg(feature = "test-hooks")]
    nexus_consensus::clock::set_test_offset_ms(args.cluster.test_clock_offset_ms);
    let reserve = args.disk_reserve_mb.saturating_mul(1 << 20);
    store::space::DiskGuard::wait_for_space(&args.data_dir, reserve);
    let opened = store::open(&args.data_dir)?;
    let me = Identity {
        raft_id: opened.raft_id,
        incarnation: nexus_core::ids::new_incarnation(),
        generation: opened.generation,
    };
    let storage = opened.storage;
    if args.force_new_cluster {
        let forced = consensus::recovery::force_new_cluster(&storage, me.raft_id, advertised)?;
        crate::recovery::report_forced(&forced);
    }
    storage.start_durable_witness(Duration::from_secs(1));
    let state = Arc::new(RwLock::new(State::default()));
    // Applied events reach the node straight from the Raft thread (one hop fewer than an
    // event loop); events applied before the node exists (replay at start) concern no
    // live connection.
    let node_slot: Arc<std::sync::OnceLock<std::sync::Weak<Node>>> = Arc::default();
    let slot = node_slot.clone();
    let events_sink: consensus::EventSink = Arc::new(move |events| {
        if let Some(node) = slot.get().and_then(std::sync::Weak::upgrade) {
            node.handle_events(events);
        }
    });
    let raft_cfg = RaftConfig {
        tick: args.raft_tick(),
        election_ticks: 16,
        heartbeat_ticks: 3,
        snapshot_every: args.snapshot_every.max(1),
        snapshot_log_percent: args.snapshot_log_percent,
        log_retain: args.log_retain,
        proposal_timeout: Duration::from_millis(args.proposal_timeout_ms.max(1)),
        read_timeout: Duration::from_millis(args.read_timeout_ms.max(1)),
        expire_tick: Duration::from_millis(args.expire_tick_ms.max(1)),
        max_voters: args.cluster.max_voters.max(1),
        #[cfg(feature = "test-hooks")]
        test_apply_delay: Duration::from_millis(args.cluster.test_apply_delay_ms),
        disk: store::space::DiskGuard::watch(&args.data_dir, reserve),
        ..RaftConfig::default()
    };
    if !storage.is_fresh() {
        // A rebuild that got as far as joining (the store has state) is done.
        store::datadir::rebuild_done(&args.data_dir);
    }
    let cluster = match &args.cluster.cluster {
        None if store::datadir::rebuild_requested(&args.data_dir) => {
            return Err(anyhow!(
                "{} was emptied by `nexus rebuild`: a node rebuilds from peers only in a \
                 cluster (--cluster and --join)",
                args.data_dir.display()
            ));
        }
        None => {
            if storage.is_fresh() {
                bootstrap_storage(&storage, [(me.raft_id, String::new())].into())?;
            }
            None
        }
        Some(_) => Some(start_cluster(&args, &me, &storage, secrets).await?),
    };
    let raft = consensus::start(
        storage,
        me.clone(),
        state.clone(),
        events_sink,
        raft_cfg,
        cluster
            .as_ref()
            .map(|c| Arc::new(c.transport.clone()) as Arc<dyn consensus::Peers>),
    )?;
    if let Some(c) = &cluster {
        let _ = c.raft_slot.set(raft.clone());
        if c.joining {
            let rebuild = store::datadir::rebuild_requested(&args.data_dir);
            let join = membership::join(
                c.transport.clone(),
                raft.clone(),
                args.cluster.join.clone(),
                c.hello.clone(),
                rebuild,
            );
            let dir = args.data_dir.clone();
            actix_rt::spawn(async move {
                join.await;
                if rebuild {
                    store::datadir::rebuild_done(&dir);
                    info!("rebuilt from peers: this node is a member again");
                }
            });
        }
    }
    let link = cluster.as_ref().map(|c| {
        Arc::new(nexus_cluster::ClusterLink {
            gossip: c.gossip.clone(),
            transport: c.transport.clone(),
            router: nexus_cluster::routing::Router::new(
                c.transport.clone(),
                Duration::from_millis(args.cluster.route_timeout_ms.max(1)),
            ),
        })
    });
    let reloader = Reloader {
        certificates,
        secret_file: args.cluster.cluster_secret_file.clone(),
        insecure: args.cluster.insecure_cluster,
        cluster: link.clone(),
    };
    let node = Arc::new(Node::new(
        args.limits(),
        &me,
        raft,
        state,
        link.clone(),
        reloader,
    ));
    if let (Some(c), Some(link)) = (&cluster, link) {
        let weak = Arc::downgrade(&node);
        let _ = c.routed_slot.set(Arc::new(move |from, frame| {
            if let Some(node) = weak.upgrade() {
                node.on_routed(from, frame);
            }
        }));
        actix_rt::spawn(publish_gossip(node.clone(), c.gossip.clone()));
        actix_rt::spawn(membership::watch_liveness(
            link.clone(),
            node.replica.raft.clone(),
            node.replica.state().clone(),
            node.raft_id,
            Duration::from_millis(args.cluster.node_down_after_ms),
        ));
        actix_rt::spawn(self_fence(
            node.clone(),
            Duration::from_millis(args.cluster.fence_after_ms),
        ));
        if args.cluster.remove_dead_after > 0 {
            actix_rt::spawn(membership::reap_dead_members(
                link,
                node.replica.raft.clone(),
                Duration::from_secs(args.cluster.remove_dead_after),
            ));
        }
    }
    actix_rt::spawn(crate::reconcile::run(
        Arc::downgrade(&node),
        Duration::from_millis(args.reconcile_every_ms.max(10)),
    ));
    info!(raft_id = %me.raft_id, incarnation = %me.incarnation, generation = me.generation,
        data_dir = %args.data_dir.display(), "node starting");
    let _ = node_slot.set(Arc::downgrade(&node));

    let ready = async {
        announce_start(&node).await?;
        bootstrap_root(&node, args.root_password.clone()).await
    };
    if let Err(e) = ready.await {
        // Release storage before reporting: nothing may outlive a failed start.
        node.replica.raft.shutdown().await;
        if let Some(c) = cluster {
            c.stop().await;
        }
        return Err(e);
    }

    let mut running = Running {
        node: node.clone(),
        listening: Vec::new(),
        http_servers: Vec::new(),
        http_workers: args.http_workers,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        tcp_tasks: Vec::new(),
        cluster,
    };
    if let Err(e) = serve_listeners(&mut running, bound, tls_config) {
        running.stop().await;
        return Err(e);
    }
    *node.listening.lock().unwrap_or_else(|e| e.into_inner()) =
        running.listening.iter().map(Listener::url).collect();
    Ok(running)
}

/// Starts serving on the bound listeners.
fn serve_listeners(
    running: &mut Running,
    bound: Vec<(Listener, std::net::TcpListener)>,
    tls_config: Option<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    let mut web = Vec::new();
    let mut health = Vec::new();
    for (l, std_listener) in bound {
        info!("listening on {}", l.url());
        running.listening.push(l.clone());
        match l.scheme {
            Scheme::Tcp | Scheme::Ssl => {
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                let acceptor = match l.scheme {
                    Scheme::Ssl => tls_config.clone().map(tls::acceptor),
                    _ => None,
                };
                // TCP sessions are served on this thread.
                crate::idle_memory::collect_on_this_thread();
                running.tcp_tasks.push(actix_rt::spawn(stream::accept_loop(
                    running.node.clone(),
                    listener,
                    acceptor,
                )));
            }
            Scheme::Http | Scheme::Https => web.push((l.scheme, std_listener)),
            Scheme::Health => health.push(std_listener),
        }
    }
    if !web.is_empty() {
        let data = actix_web::web::Data::new(running.node.clone());
        let mut server = actix_web::HttpServer::new(move || {
            // Built once on each worker thread, which serves the WebSocket sessions.
            crate::idle_memory::collect_on_this_thread();
            actix_web::App::new()
                .app_data(data.clone())
                .default_service(actix_web::web::to(http::entry))
        })
        .on_connect(http::record_peer_fd)
        .max_connections(running.node.limits.max_connections.max(1))
        .tls_handshake_timeout(running.node.limits.tls_handshake_timeout)
        .disable_signals()
        .shutdown_timeout(1);
        if running.http_workers > 0 {
            server = server.workers(running.http_workers);
        }
        for (scheme, l) in web {
            server = match (scheme, &tls_config) {
                (Scheme::Https, Some(cfg)) => server.listen_rustls_0_23(l, cfg.clone())?,
                _ => server.listen(l)?,
            };
        }
        let server = server.run();
        running.http_servers.push(server.handle());
        actix_rt::spawn(server);
    }
    if !health.is_empty() {
        let data = actix_web::web::Data::new(running.node.clone());
        let mut server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .default_service(actix_web::web::to(http::health))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1);
        for l in health {
            server = server.listen(l)?;
        }
        let server = server.run();
        running.http_servers.push(server.handle());
        actix_rt::spawn(server);
    }
    Ok(())
}

/// How long a starting node keeps retrying the cluster before it gives up.
const START_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `step` until it succeeds or `START_DEADLINE` passes. A start can meet an election,
/// a membership change or a leader slowed by its disk: each is a reason to retry, not to
/// exit.
async fn retry_while_starting<T, F, Fut>(what: &str, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RpcError>>,
{
    let deadline = Instant::now() + START_DEADLINE;
    let mut last_log = Instant::now();
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                if last_log.elapsed() >= Duration::from_secs(5) {
                    info!("{what}, retrying: {e}");
                    last_log = Instant::now();
                } else {
                    debug!("{what}, retrying: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(anyhow!(
                    "{what}: gave up after {} s: {e}",
                    START_DEADLINE.as_secs()
                ))
            }
        }
    }
}

/// Tells the cluster this incarnation is up (dropping sessions of earlier ones).
async fn announce_start(node: &Node) -> anyhow::Result<()> {
    retry_while_starting("announcing this node's start", || {
        node.replica.propose(node.started())
    })
    .await?;
    Ok(())
}

/// Creates `root` on the first boot of a fresh cluster; warns while its password is the
/// default.
async fn bootstrap_root(node: &Node, root_password: Option<String>) -> anyhow::Result<()> {
    // Read what the cluster has applied, not what this node happened to see so far: a
    // joining node finds root already created.
    retry_while_starting("reading the cluster state", || {
        node.replica.raft.read_barrier()
    })
    .await?;
    if !node.replica.read(|s| s.bootstrapped) {
        let pass = root_password.unwrap_or_else(|| DEFAULT_ROOT_PASSWORD.to_string());
        let root_hash = tokio::task::spawn_blocking(move || auth::hash_password(&pass)).await?;
        // Apply creates root once, whoever proposes and however often: a retry of a
        // proposal that did commit changes nothing.
        retry_while_starting("bootstrapping root", || {
            node.replica.raft.propose(Command::Bootstrap {
                root_hash: root_hash.clone(),
                at: now_rfc3339(),
            })
        })
        .await?;
        info!("fresh cluster: created user root");
    }
    if let Some(hash) = node
        .replica
        .read(|s| s.users.get("root").map(|u| u.pass_hash.clone()))
    {
        let default = tokio::task::spawn_blocking(move || {
            auth::verify_password(DEFAULT_ROOT_PASSWORD, &hash)
        })
        .await?;
        if default {
            warn!("!!! user root still has the default password 'root': change it with user.setPass (or start a fresh cluster with --root-password) !!!");
        }
    }
    Ok(())
}

impl Running {
    /// Stops accepting, closes every session cleanly, flushes Raft and releases storage.
    pub async fn stop(self) {
        // From here a session close is tried once, and a node declared down stays down.
        self.node
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for t in &self.tcp_tasks {
            t.abort();
        }
        for h in &self.http_servers {
            // Stop accepting; existing connections are closed through their sessions below.
            let h = h.clone();
            actix_rt::spawn(async move { h.stop(false).await });
        }
        // A leader hands over first, so writes (these sessions' closes among them) resume
        // on another node at once.
        if self.cluster.is_some() {
            self.node.replica.raft.transfer_leadership().await;
        }
        self.node.local.broadcast(Control::Close);
        let deadline = Instant::now() + self.shutdown_grace;
        while self.node.local.session_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Leave the cluster's node table: the others stop routing here at once, instead
        // of waiting to declare this process down.
        if self.cluster.is_some() {
            let departure = Command::NodeDown {
                node_id: self.node.raft_id,
                incarnation: self.node.incarnation.clone(),
            };
            let _ = tokio::time::timeout(self.shutdown_grace, self.node.replica.propose(departure))
                .await;
        }
        // Session closes are queued ahead of the shutdown, so they are written first.
        self.node.replica.raft.shutdown().await;
        if let Some(c) = self.cluster {
            c.stop().await;
        }
        info!("node stopped");
    }
}

/// Runs a node until SIGINT/SIGTERM, then shuts down cleanly.
pub async fn run_until_signal(args: ServeArgs) -> anyhow::Result<()> {
    let running = start(args).await?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break info!("SIGINT: shutting down"),
            _ = term.recv() => break info!("SIGTERM: shutting down"),
            _ = hup.recv() => {
                // Logged by the reloader, success or not; a failure keeps what was loaded.
                let _ = running.node.reload.reload();
            }
        }
    }
    running.stop().await;
    Ok(())
}

/// A node running on its own thread with its own actix system (tests, embedding).
pub struct Background {
    pub listening: Vec<Listener>,
    pub node: Arc<Node>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    pub fn start(args: ServeArgs) -> anyhow::Result<Background> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                match start(args).await {
                    Ok(running) => {
                        let _ =
                            ready_tx.send(Ok((running.listening.clone(), running.node.clone())));
                        let _ = stop_rx.await;
                        running.stop().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
        });
        let (listening, node) = ready_rx
            .recv()
            .map_err(|_| anyhow!("node thread died during start"))??;
        Ok(Background {
            listening,
            node,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self, scheme: Scheme) -> SocketAddr {
        self.listening
            .iter()
            .find(|l| l.scheme == scheme)
            .map(|l| l.addr)
            .unwrap_or_else(|| panic!("no {} listener", scheme.name()))
    }

    /// Stops the node and waits until its storage is released.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A non-blocking listening socket with room for `backlog` connections not yet accepted:
/// a burst of reconnecting clients (a node died) must not overflow it, or their SYNs are
/// dropped and they retry a second later.
fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(1, i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
