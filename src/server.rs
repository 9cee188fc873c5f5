//! Starting and stopping a node: storage, Raft, bootstrap, listeners, graceful shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use tracing::{debug, info, warn};

use crate::auth;
use crate::config::{Listener, Scheme, ServeArgs};
use crate::consensus::{self, RaftConfig};
use crate::node::{now_rfc3339, random_hex, Control, Node};
use crate::state::{Command, State};
use crate::store::{self, RaftStorage};
use crate::transport::{http, stream, tls};

pub const DEFAULT_ROOT_PASSWORD: &str = "root";

/// A started node and its listeners.
pub struct Running {
    pub node: Arc<Node>,
    /// The listeners with their bound addresses (port 0 resolved).
    pub listening: Vec<Listener>,
    http_servers: Vec<actix_web::dev::ServerHandle>,
    tcp_tasks: Vec<actix_rt::task::JoinHandle<()>>,
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
    let tls_config = if listeners.iter().any(|l| l.scheme.uses_tls()) {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                return Err(anyhow!(
                    "ssl:// and https:// listeners need --tls-cert and --tls-key"
                ))
            }
        };
        Some(tls::server_config(cert, key).map_err(|e| anyhow!(e))?)
    } else {
        None
    };
    let mut bound = Vec::new();
    for l in &listeners {
        let std_listener =
            std::net::TcpListener::bind(l.addr).with_context(|| format!("binding {}", l.url()))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        bound.push((
            Listener {
                scheme: l.scheme,
                addr,
            },
            std_listener,
        ));
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let db = store::open_db(&args.data_dir)
        .with_context(|| format!("opening the database in {}", args.data_dir.display()))?;
    let raft_id = store::raft_id(&db)?;
    let incarnation = random_hex(8);
    let storage = RaftStorage::open(db, &[raft_id])?;
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
        snapshot_every: args.snapshot_every.max(1),
        ..RaftConfig::default()
    };
    let raft = consensus::start(
        storage,
        raft_id,
        incarnation.clone(),
        state.clone(),
        events_sink,
        raft_cfg,
    )?;
    let node = Arc::new(Node::new(
        args.clone(),
        raft_id,
        incarnation.clone(),
        raft,
        state,
    ));
    info!(raft_id, %incarnation, data_dir = %args.data_dir.display(), "node starting");
    let _ = node_slot.set(Arc::downgrade(&node));

    let ready = async {
        announce_start(&node).await?;
        bootstrap_root(&node).await
    };
    if let Err(e) = ready.await {
        // Release storage before reporting: nothing may outlive a failed start.
        node.raft.shutdown().await;
        return Err(e);
    }

    let mut running = Running {
        node: node.clone(),
        listening: Vec::new(),
        http_servers: Vec::new(),
        tcp_tasks: vec![actix_rt::spawn(expire_deadlines(node.clone()))],
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
            actix_web::App::new()
                .app_data(data.clone())
                .default_service(actix_web::web::to(http::entry))
        })
        .on_connect(http::record_peer_fd)
        .max_connections(running.node.args.max_connections.max(1))
        .tls_handshake_timeout(Duration::from_secs(
            running.node.args.tls_handshake_timeout.max(1),
        ))
        .disable_signals()
        .shutdown_timeout(1);
        if running.node.args.http_workers > 0 {
            server = server.workers(running.node.args.http_workers);
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
        let mut server = actix_web::HttpServer::new(|| {
            actix_web::App::new().default_service(actix_web::web::to(http::health))
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

/// While this node leads, proposes `Expire` whenever a task or pull deadline has passed, so
/// every node ends the same tasks at the same point of the log.
async fn expire_deadlines(node: Arc<Node>) {
    let tick = Duration::from_millis(node.args.expire_tick_ms.max(1));
    loop {
        tokio::time::sleep(tick).await;
        if !node
            .raft
            .stats
            .leader
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            continue;
        }
        let now_ms = crate::node::now_ms();
        let due = node.read(|s| s.tasks.next_deadline().is_some_and(|d| d <= now_ms));
        if due {
            if let Err(e) = node.raft.propose(Command::Expire { now_ms }).await {
                debug!("expiry proposal failed: {e}");
            }
        }
    }
}

/// Tells the cluster this incarnation is up (dropping sessions of earlier ones). Retries
/// until the node has a leader.
async fn announce_start(node: &Node) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cmd = Command::NodeStarted {
            node_id: node.raft_id,
            incarnation: node.incarnation.clone(),
        };
        match node.raft.propose(cmd).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                debug!("waiting for a raft leader: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(anyhow!("no raft leader after 30 s: {e}")),
        }
    }
}

/// Creates `root` on the first boot of a fresh cluster; warns while its password is the
/// default.
async fn bootstrap_root(node: &Node) -> anyhow::Result<()> {
    if !node.read(|s| s.bootstrapped) {
        let pass = node
            .args
            .root_password
            .clone()
            .unwrap_or_else(|| DEFAULT_ROOT_PASSWORD.to_string());
        let root_hash = tokio::task::spawn_blocking(move || auth::hash_password(&pass)).await?;
        node.raft
            .propose(Command::Bootstrap {
                root_hash,
                at: now_rfc3339(),
            })
            .await
            .map_err(|e| anyhow!("bootstrapping root: {e}"))?;
        info!("fresh cluster: created user root");
    }
    if let Some(hash) = node.read(|s| s.users.get("root").map(|u| u.pass_hash.clone())) {
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
        for t in &self.tcp_tasks {
            t.abort();
        }
        for h in &self.http_servers {
            // Stop accepting; existing connections are closed through their sessions below.
            let h = h.clone();
            actix_rt::spawn(async move { h.stop(false).await });
        }
        self.node.broadcast(Control::Close);
        let deadline = Instant::now() + Duration::from_secs(self.node.args.shutdown_grace);
        while self.node.local_session_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Session closes are queued ahead of the shutdown, so they are written first.
        self.node.raft.shutdown().await;
        info!("node stopped");
    }
}

/// Runs a node until SIGINT/SIGTERM, then shuts down cleanly.
pub async fn run_until_signal(args: ServeArgs) -> anyhow::Result<()> {
    let running = start(args).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
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
