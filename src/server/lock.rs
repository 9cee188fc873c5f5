//! The Lock actor: one per lock that requests of this node wait for (`sync.lock` with
//! `wait`). It owns those waiting requests and their timers, receives the applied events of
//! its lock (a wait granted, a wait ended), answers each waiter once, and stops when no
//! local waiter is left. The replicated record stays the only truth: the actor keeps only
//! the waiters, and every answer comes from an applied event or from the applied state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message};
use serde_json::json;
use tokio::sync::oneshot;

use nexus_core::rpc::{RpcError, RpcResult, ERR_LOCK_NOT_OWNED};
use nexus_core::state::State;

/// How often waiters are checked against the applied state (an event a replaced state
/// swallowed) and their own time limit.
const RECHECK: Duration = Duration::from_millis(500);

/// The Lock actors of this process by lock, each with the waits sent to it and not yet
/// taken in: an actor only stops when it has no waiter and none is on its way.
#[derive(Default)]
pub struct Registry {
    actors: Mutex<HashMap<String, (actix::Addr<LockActor>, usize)>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Hands a waiting request to `lock`'s actor (started on this thread's arbiter when
    /// there is none), before its wait is proposed, so that no event for it can come first.
    /// The answer arrives on the receiver.
    pub fn wait(
        self: &Arc<Self>,
        state: &Arc<RwLock<State>>,
        lock: &str,
        wait: Waiting,
    ) -> oneshot::Receiver<RpcResult> {
        let (tx, rx) = oneshot::channel();
        let mut actors = locked(&self.actors);
        let entry = actors.entry(lock.to_string()).or_insert_with(|| {
            let actor = LockActor {
                lock: lock.to_string(),
                waiters: HashMap::new(),
                registry: self.clone(),
                state: state.clone(),
            };
            (actor.start(), 0)
        });
        entry.1 += 1;
        entry.0.do_send(AddWaiter { wait, tx });
        rx
    }

    /// The wait `wait_id` of `lock` is in the applied state with `ticket` (its proposal
    /// answered it queued): from now on the state, not only an event, may answer it.
    pub fn queued(&self, lock: &str, wait_id: &str, ticket: u64) {
        if let Some((addr, _)) = locked(&self.actors).get(lock) {
            addr.do_send(Queued {
                wait_id: wait_id.to_string(),
                ticket,
            });
        }
    }

    /// Delivers an applied event of `lock` to its actor, if requests here wait for it.
    pub fn event(&self, lock: &str, event: LockEvent) {
        if let Some((addr, _)) = locked(&self.actors).get(lock) {
            addr.do_send(event);
        }
    }

    /// Lock actors running (a test's view of their lifetimes).
    pub fn running(&self) -> usize {
        locked(&self.actors).len()
    }
}

/// The answer to a wait granted the lock.
pub fn granted(token: u64, ticket: u64) -> serde_json::Value {
    json!({"ok": true, "token": token, "ticket": ticket})
}

/// A request waiting for a lock.
pub struct Waiting {
    pub wait_id: String,
    /// When to stop waiting for an event that never comes (no leader ended the wait).
    pub give_up: Instant,
}

struct Waiter {
    give_up: Instant,
    tx: oneshot::Sender<RpcResult>,
    /// Its wait's ticket, once the wait is known to be applied. Before that, a state
    /// without it says nothing: its proposal may still be on its way.
    queued: Option<u64>,
}

pub struct LockActor {
    lock: String,
    waiters: HashMap<String, Waiter>,
    registry: Arc<Registry>,
    state: Arc<RwLock<State>>,
}

impl Actor for LockActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(RECHECK, |actor, ctx| {
            actor.recheck();
            actor.stop_when_idle(ctx);
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Queued {
    wait_id: String,
    ticket: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
struct AddWaiter {
    wait: Waiting,
    tx: oneshot::Sender<RpcResult>,
}

/// What apply did to a wait of this lock.
#[derive(Message)]
#[rtype(result = "()")]
pub enum LockEvent {
    Granted {
        wait_id: String,
        token: u64,
        ticket: u64,
    },
    Ended {
        wait_id: String,
        error: RpcError,
    },
}

impl Handler<AddWaiter> for LockActor {
    type Result = ();

    fn handle(&mut self, msg: AddWaiter, _: &mut Self::Context) {
        if let Some((_, on_the_way)) = locked(&self.registry.actors).get_mut(&self.lock) {
            *on_the_way = on_the_way.saturating_sub(1);
        }
        let w = msg.wait;
        let waiter = Waiter {
            give_up: w.give_up,
            tx: msg.tx,
            queued: None,
        };
        self.waiters.insert(w.wait_id, waiter);
    }
}

impl Handler<Queued> for LockActor {
    type Result = ();

    fn handle(&mut self, msg: Queued, _: &mut Self::Context) {
        if let Some(w) = self.waiters.get_mut(&msg.wait_id) {
            w.queued = Some(msg.ticket);
        }
    }
}

impl Handler<LockEvent> for LockActor {
    type Result = ();

    fn handle(&mut self, event: LockEvent, ctx: &mut Self::Context) {
        let (wait_id, answer) = match event {
            LockEvent::Granted {
                wait_id,
                token,
                ticket,
            } => (wait_id, Ok(granted(token, ticket))),
            LockEvent::Ended { wait_id, error } => (wait_id, Err(error)),
        };
        if let Some(w) = self.waiters.remove(&wait_id) {
            let _ = w.tx.send(answer);
        }
        self.stop_when_idle(ctx);
    }
}

impl LockActor {
    /// Answers the waiters whose wait left the queue without their event reaching this
    /// node, and those past their own time limit; forgets those nobody waits on any more.
    fn recheck(&mut self) {
        let now = Instant::now();
        let mut done: Vec<(String, Option<RpcResult>)> = Vec::new();
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let lock = self.lock.as_str();
            for (wait_id, w) in &self.waiters {
                if w.tx.is_closed() {
                    done.push((wait_id.clone(), None));
                } else if let Some(ticket) =
                    w.queued.filter(|_| !state.locks.is_waiting(lock, wait_id))
                {
                    // The holder's ticket says whether this wait, and not another wait of
                    // the same connection, was granted the lock.
                    let answer = match state.locks.holder(lock) {
                        Some(h) if h.ticket == ticket => Ok(granted(h.token, ticket)),
                        _ => Err(RpcError::detail(ERR_LOCK_NOT_OWNED, "the wait timed out")),
                    };
                    done.push((wait_id.clone(), Some(answer)));
                } else if now >= w.give_up {
                    let unknown = RpcError::internal(
                        "the wait's outcome is unknown (no leader ended it in time): this \
                         connection may still be granted the lock; unlock it or reconnect",
                    );
                    done.push((wait_id.clone(), Some(Err(unknown))));
                }
            }
        }
        for (wait_id, answer) in done {
            if let (Some(w), Some(answer)) = (self.waiters.remove(&wait_id), answer) {
                let _ = w.tx.send(answer);
            }
        }
    }

    /// Stops once no request of this node waits here and none is on its way.
    fn stop_when_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.waiters.is_empty() {
            return;
        }
        let mut actors = locked(&self.registry.actors);
        let mine = actors
            .get(&self.lock)
            .is_some_and(|(addr, on_the_way)| *addr == ctx.address() && *on_the_way == 0);
        if mine {
            actors.remove(&self.lock);
            ctx.stop();
        }
    }
}
