//! The Session actor: one per connection, whatever the transport. It owns the connection's
//! identity and auth state, runs every request concurrently (a blocking call never holds up
//! the next), bounds the requests in flight, enforces the watchdog and tears down cleanly.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error};

use crate::conn::{AuthState, Conn, Outgoing, NOBODY, WATCHDOG_MAX};
use crate::node::{now_rfc3339, Control, Node};
use nexus_core::rpc::{self, Incoming, Response, RpcError};
use nexus_core::state::{Command, SessionRecord};

/// Where the answers to an `Incoming` go.
pub enum Reply {
    /// The connection's stream (TCP, WebSocket).
    Stream,
    /// One HTTP bridge answer: the serialised response, or `None` for a notification.
    Once(oneshot::Sender<Option<String>>),
}

/// One complete JSON value read from the connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound {
    pub raw: Box<RawValue>,
    pub permit: OwnedSemaphorePermit,
    pub reply: Reply,
}

/// Transport-level events.
#[derive(Message)]
#[rtype(result = "()")]
pub enum TransportEvent {
    /// Bytes that are not JSON: answered with -32700; the connection reads on.
    ParseError(String),
    /// A message over the size limit: answered, then the connection is closed.
    Oversize,
    /// The peer went away.
    Closed,
    /// Transport-level traffic (WebSocket ping/pong): the connection is not idle.
    Activity,
}

pub struct Session {
    node: Arc<Node>,
    conn: Rc<Conn>,
    /// Set when the session stops: every request still running is abandoned.
    cancel: tokio::sync::watch::Sender<bool>,
    /// The connection's in-flight permits (shared with its transport reader).
    permits: Arc<Semaphore>,
    /// Closed when the actor stops, so the transport reader stops too.
    stop_tx: Option<oneshot::Sender<()>>,
    /// Whether the session's `SessionOpen` committed (None: not yet). Requests wait for it
    /// in `early`, in arrival order: a session is served only once the cluster knows it.
    opened: Option<bool>,
    early: VecDeque<Queued>,
}

/// A request that arrived before the session's open committed.
struct Queued {
    fut: Request,
    unopened: Option<String>,
    permit: OwnedSemaphorePermit,
    reply: Reply,
}

/// A request being served: its answer, or none for a notification.
type Request = std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>>>>;

/// The outcome of a session's `SessionOpen`: whether it committed.
#[derive(Message)]
#[rtype(result = "()")]
struct OpenDone(bool);

/// What a transport gets back when it opens a session.
pub struct Opened {
    pub addr: Addr<Session>,
    pub out: mpsc::UnboundedReceiver<Outgoing>,
    /// Resolves when the session has stopped.
    pub stopped: oneshot::Receiver<()>,
    /// Taken once per request before handing it to the session: bounds requests in flight.
    pub permits: Arc<Semaphore>,
}

impl Session {
    /// Starts a session actor on the current arbiter.
    pub fn open(node: Arc<Node>, remote: String, protocol: &'static str) -> Opened {
        let (out_tx, out) = mpsc::unbounded_channel();
        let (stop_tx, stopped) = oneshot::channel();
        let permits = Arc::new(Semaphore::new(node.limits.max_inflight.max(1)));
        let conn = Rc::new(Conn {
            connid: node.new_connid(),
            remote,
            protocol,
            auth: RefCell::new(AuthState::nobody()),
            watchdog: Cell::new(
                node.limits
                    .watchdog_secs
                    .clamp(node.limits.watchdog_min_secs, WATCHDOG_MAX),
            ),
            last_activity: Cell::new(Instant::now()),
            out: out_tx,
            pending: RefCell::new(Default::default()),
            pipes: RefCell::new(Default::default()),
            backup: RefCell::new(None),
        });
        let addr = Session {
            node,
            conn,
            cancel: tokio::sync::watch::channel(false).0,
            permits: permits.clone(),
            stop_tx: Some(stop_tx),
            opened: None,
            early: VecDeque::new(),
        }
        .start();
        Opened {
            addr,
            out,
            stopped,
            permits,
        }
    }

    /// Runs a request. Requests of one connection start (are first polled) in the order
    /// they arrived, so its proposals and publishes keep their order; each ends early when
    /// the session stops. Until the session's open commits they wait in `early`.
    /// `unopened`: the answer when the session never opened (no Raft quorum): the request
    /// did not run.
    fn run<F>(
        &mut self,
        fut: F,
        unopened: Option<String>,
        permit: OwnedSemaphorePermit,
        reply: Reply,
    ) where
        F: std::future::Future<Output = Option<String>> + 'static,
    {
        let fut: Request = Box::pin(fut);
        match self.opened {
            None => self.early.push_back(Queued {
                fut,
                unopened,
                permit,
                reply,
            }),
            Some(true) => self.begin(fut, permit, reply),
            Some(false) => answer(unopened, permit, &self.conn, reply),
        }
    }

    /// Polls a request here, where it arrived: most (a publish, a pipe write, a read with
    /// something to read, a refusal) finish at once and are answered with no task, and a
    /// push or pull hands its proposal to the Raft thread at once. One that must wait goes
    /// on in a task of its own.
    fn begin(&self, mut fut: Request, permit: OwnedSemaphorePermit, reply: Reply) {
        // A waker that does nothing: if the request waits, the task below polls it again,
        // and that poll registers the task's own waker.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // A panic ends this request only, as it would in a task of its own.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
        match polled {
            Ok(std::task::Poll::Ready(text)) => return answer(text, permit, &self.conn, reply),
            Ok(std::task::Poll::Pending) => {}
            Err(_) => {
                error!(connid = %self.conn.connid, "a request panicked; it is not answered");
                return;
            }
        }
        let conn = self.conn.clone();
        let mut cancel = self.cancel.subscribe();
        actix_rt::spawn(async move {
            let text = tokio::select! {
                biased;
                _ = cancel.wait_for(|stopped| *stopped) => return,
                text = fut => text,
            };
            answer(text, permit, &conn, reply);
        });
    }

    /// An answer known without running anything (parse errors, refused batches); it still
    /// goes out in order with the connection's other answers.
    fn answer_now(&mut self, text: String, permit: OwnedSemaphorePermit, reply: Reply) {
        let unopened = Some(text.clone());
        self.run(async move { Some(text) }, unopened, permit, reply);
    }
}

/// Sends a request's answer (none for a notification) where its reply goes.
fn answer(text: Option<String>, permit: OwnedSemaphorePermit, conn: &Conn, reply: Reply) {
    match reply {
        Reply::Stream => {
            if let Some(t) = text {
                conn.send_held(t, Some(permit));
            }
        }
        Reply::Once(tx) => {
            drop(permit);
            let _ = tx.send(text);
        }
    }
}

/// The answer to a request of a session that could not be opened.
fn not_open(id: Value) -> String {
    let err = RpcError::internal(
        "the session could not be registered (no raft quorum, or no disk space for writes), retry",
    );
    Response::error(id, err).to_json()
}

/// Proposes an idempotent command until it commits, for at most `within` (or until the
/// node stops, or `abandoned()`); true once committed.
async fn commit_retrying(
    node: &Node,
    cmd: Command,
    within: Duration,
    abandoned: impl Fn() -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    let mut backoff = Duration::from_millis(20);
    loop {
        if abandoned() {
            return false;
        }
        match node.replica.propose(cmd.clone()).await {
            Ok(_) => return true,
            // A stopping node makes one attempt (its closes are written before Raft stops).
            Err(e)
                if node.stopping.load(std::sync::atomic::Ordering::Relaxed)
                    || Instant::now() + backoff >= deadline =>
            {
                debug!("giving up on {cmd:?}: {}", e.message);
                return false;
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.node.metrics.connection_opened(self.conn.protocol);
        let c = &self.conn;
        self.node
            .local
            .register_session(&c.connid, ctx.address().recipient());
        // Requests wait until the open committed; an open that cannot commit (no quorum,
        // this process declared gone) closes the connection.
        let record = SessionRecord {
            connid: c.connid.clone(),
            node_id: self.node.raft_id,
            incarnation: self.node.incarnation.clone(),
            user: NOBODY.to_string(),
            remote_address: c.remote.clone(),
            protocol: c.protocol.to_string(),
            creation_time: now_rfc3339(),
        };
        let (node, addr) = (self.node.clone(), ctx.address());
        let within = self.node.limits.session_open_timeout;
        // A connection gone before its open committed stops retrying it (an open landing
        // after the close is closed again by `reconcile`).
        let stopped = self.cancel.subscribe();
        actix_rt::spawn(async move {
            let open = Command::SessionOpen { session: record };
            let committed = commit_retrying(&node, open, within, || *stopped.borrow()).await;
            addr.do_send(OpenDone(committed));
        });
        // An HTTP bridge session lives for one request, however long that request waits.
        let bridged = matches!(c.protocol, "http" | "https");
        ctx.run_interval(Duration::from_secs(1), move |act, ctx| {
            if bridged {
                return;
            }
            let idle = act.conn.last_activity.get().elapsed();
            if idle >= Duration::from_secs(act.conn.watchdog.get()) {
                debug!(connid = %act.conn.connid, "watchdog expired");
                ctx.stop();
            }
        });
        debug!(connid = %c.connid, remote = %c.remote, protocol = c.protocol, "session opened");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.node.metrics.connection_closed(self.conn.protocol);
        self.node.local.unregister_session(&self.conn.connid);
        for pipeid in self.conn.pipes.take() {
            self.node.local.close_pipe(&pipeid);
        }
        // Retried until committed (a lost close would leak the session record); the open
        // and the close are both idempotent.
        let node = self.node.clone();
        let close = Command::SessionClose {
            connid: self.conn.connid.clone(),
        };
        let within = self.node.limits.session_close_timeout;
        actix_rt::spawn(async move {
            commit_retrying(&node, close, within, || false).await;
        });
        let _ = self.cancel.send(true);
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        debug!(connid = %self.conn.connid, "session closed");
    }
}

impl Handler<Inbound> for Session {
    type Result = ();

    fn handle(&mut self, msg: Inbound, _ctx: &mut Self::Context) {
        self.conn.last_activity.set(Instant::now());
        let Inbound { raw, permit, reply } = msg;
        match rpc::parse_incoming(&raw) {
            Incoming::Single(Err(resp)) => self.answer_now(resp.to_json(), permit, reply),
            Incoming::Single(Ok(req)) => {
                let unopened = req.id.clone().map(not_open);
                let fut = crate::api::dispatch(self.node.clone(), self.conn.clone(), req);
                let fut = async move { fut.await.map(|r| r.to_json()) };
                self.run(fut, unopened, permit, reply);
            }
            Incoming::Batch(items) if items.len() > self.node.limits.max_inflight.max(1) => {
                let err = RpcError::detail(
                    rpc::ERR_INVALID_REQUEST,
                    format!(
                        "batch larger than {} requests",
                        self.node.limits.max_inflight
                    ),
                );
                self.answer_now(Response::error(Value::Null, err).to_json(), permit, reply);
            }
            Incoming::Batch(items) => {
                // A batch of notifications only is never answered.
                let answered = items
                    .iter()
                    .any(|i| i.as_ref().map_or(true, |r| r.id.is_some()));
                let unopened = answered.then(|| not_open(Value::Null));
                // A batch holds one in-flight permit per request, like single requests.
                let extra = self
                    .permits
                    .clone()
                    .acquire_many_owned(items.len() as u32 - 1);
                let futs: Vec<_> = items
                    .into_iter()
                    .map(|item| {
                        let node = self.node.clone();
                        let conn = self.conn.clone();
                        async move {
                            match item {
                                Ok(req) => crate::api::dispatch(node, conn, req).await,
                                Err(resp) => Some(*resp),
                            }
                        }
                    })
                    .collect();
                let fut = async move {
                    let _extra = extra.await.ok()?;
                    let answers: Vec<Response> = futures_util::future::join_all(futs)
                        .await
                        .into_iter()
                        .flatten()
                        .collect();
                    (!answers.is_empty())
                        .then(|| serde_json::to_string(&answers).expect("responses serialise"))
                };
                self.run(fut, unopened, permit, reply);
            }
        }
    }
}

impl Handler<OpenDone> for Session {
    type Result = ();

    /// Starts the requests that waited for the open, in arrival order, or refuses them.
    fn handle(&mut self, OpenDone(committed): OpenDone, ctx: &mut Self::Context) {
        self.opened = Some(committed);
        for q in std::mem::take(&mut self.early) {
            if committed {
                self.begin(q.fut, q.permit, q.reply);
            } else {
                answer(q.unopened, q.permit, &self.conn, q.reply);
            }
        }
        if !committed {
            ctx.stop();
        }
    }
}

impl Handler<TransportEvent> for Session {
    type Result = ();

    fn handle(&mut self, msg: TransportEvent, ctx: &mut Self::Context) {
        match msg {
            TransportEvent::ParseError(detail) => {
                // Error answers count against the in-flight bound too; a client that sends
                // garbage and reads nothing back is cut off.
                let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                    let err = RpcError::detail(
                        rpc::ERR_INVALID_REQUEST,
                        format!(
                            "unparsable input while {} requests are in flight, closing",
                            self.node.limits.max_inflight
                        ),
                    );
                    self.conn.send(Response::error(Value::Null, err).to_json());
                    ctx.stop();
                    return;
                };
                let err = RpcError::detail(rpc::ERR_PARSE, detail);
                let text = Response::error(Value::Null, err).to_json();
                self.conn.send_held(text, Some(permit));
            }
            TransportEvent::Oversize => {
                let err = RpcError::detail(
                    rpc::ERR_INVALID_REQUEST,
                    format!(
                        "message larger than {} bytes, closing",
                        self.node.limits.max_message_size
                    ),
                );
                self.conn.send(Response::error(Value::Null, err).to_json());
                ctx.stop();
            }
            TransportEvent::Closed => ctx.stop(),
            TransportEvent::Activity => self.conn.last_activity.set(Instant::now()),
        }
    }
}

impl Handler<Control> for Session {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) {
        match msg {
            Control::Close => ctx.stop(),
            Control::Kick => {
                // Let the kick's own answer (maybe on this very connection) go out first.
                ctx.run_later(Duration::from_millis(50), |_, ctx| ctx.stop());
            }
            Control::Reload => {
                let node = self.node.clone();
                let conn = self.conn.clone();
                ctx.spawn(
                    async move {
                        crate::api::sys::reload_user(&node, &conn);
                    }
                    .into_actor(self),
                );
            }
        }
    }
}
