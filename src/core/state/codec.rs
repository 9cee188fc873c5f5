//! The binary forms of the state machine (proto/log.proto): commands as they go into the
//! Raft log and the state as it goes into a snapshot. A user's own payloads stay JSON bytes.
//! Both forms are deterministic: the same state always encodes to the same bytes.

use std::collections::BTreeSet;
use std::fmt;

use prost::Message;
use serde_json::Value;

use super::cluster::ProposerRecord;
use super::{Command, Ending, NodeRecord, Pull, SessionRecord, State, Task, User, UserChange};
use crate::ids::{ConnId, PipeId, PullId, RaftId};
use crate::proto::{self as pb, log_command::Cmd, user_change_rec::Change};
use crate::rpc::RpcError;

/// First bytes of every state snapshot; the fourth is the format version.
const SNAPSHOT_MAGIC: &[u8; 3] = b"NXS";
const SNAPSHOT_VERSION: u8 = 2;
/// The snapshot of a cluster that never used a lock wait is written as format 1, which
/// builds before waits read: they install it as it is. Once any wait was committed it is
/// format 2, which they refuse instead of dropping the queue, or the ticket counter, unseen
/// (a node that lost the counter would number the next waits apart from the others).
const SNAPSHOT_VERSION_WITHOUT_WAITS: u8 = 1;

/// The format of the Raft log's commands this build writes and reads. A build that adds a
/// command (or changes one) raises it; every entry carries the version its command needs
/// (`ProposalContext.log_version`), and a node refuses an entry that needs a higher one
/// than its own instead of misreading it.
pub const LOG_VERSION: u32 = 2;

/// Bytes this build cannot read: damaged, or written by a newer version (`too_new`).
#[derive(Debug)]
pub struct DecodeError {
    what: String,
    too_new: bool,
}

impl DecodeError {
    /// Written in a format newer than this build reads (not damage).
    pub fn is_too_new(&self) -> bool {
        self.too_new
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for DecodeError {}

fn bad(what: impl fmt::Display) -> DecodeError {
    DecodeError {
        what: what.to_string(),
        too_new: false,
    }
}

pub fn encode_command(cmd: Command) -> Vec<u8> {
    pb::LogCommand {
        cmd: Some(command_to_pb(cmd)),
    }
    .encode_to_vec()
}

pub fn decode_command(data: &[u8]) -> Result<Command, DecodeError> {
    let msg = pb::LogCommand::decode(data).map_err(bad)?;
    command_from_pb(msg.cmd.ok_or_else(|| bad("unknown command kind"))?)
}

pub fn encode_state(state: &State) -> Vec<u8> {
    let snap = pb::StateSnapshot {
        users: state
            .users
            .by_name
            .iter()
            .map(|(name, u)| user_to_pb(name, u))
            .collect(),
        sessions: state
            .sessions
            .by_connid
            .values()
            .map(session_to_pb)
            .collect(),
        tasks: state.tasks.tasks.values().map(task_to_pb).collect(),
        pulls: state.tasks.pulls.values().map(pull_to_pb).collect(),
        task_seq: state.tasks.seq,
        locks: state
            .locks
            .owners
            .iter()
            .map(|(lock, holder)| pb::LockCmd {
                lock: lock.clone(),
                connid: holder.connid.to_string(),
                token: holder.token,
                ticket: holder.ticket,
            })
            .collect(),
        lock_waits: state
            .locks
            .waits
            .iter()
            .flat_map(|(lock, queue)| {
                queue.iter().map(move |w| pb::LockWaitRec {
                    lock: lock.clone(),
                    wait_id: w.id.clone(),
                    connid: w.connid.to_string(),
                    deadline_ms: w.deadline_ms,
                    since_ms: w.since_ms,
                    ticket: w.ticket,
                })
            })
            .collect(),
        topics: state
            .topics
            .by_topic
            .iter()
            .map(|(topic, pipes)| pb::TopicRec {
                topic: topic.clone(),
                pipeids: pipes.iter().map(PipeId::to_string).collect(),
            })
            .collect(),
        bootstrapped: state.bootstrapped,
        lock_grants: state.locks.grants,
        lock_tickets: state.locks.tickets,
        cluster: Some(pb::ClusterRec {
            id: state.cluster.id.clone(),
            members: state
                .cluster
                .members
                .iter()
                .map(|(id, addr)| pb::MemberRec {
                    raft_id: id.0,
                    addr: addr.clone(),
                })
                .collect(),
            clock_ms: state.cluster.clock_ms,
            proposers: state
                .cluster
                .proposers
                .iter()
                .map(|(id, p)| pb::ProposerRec {
                    node_id: id.0,
                    generation: p.generation,
                    floor: p.floor,
                    recent: p.recent.iter().copied().collect(),
                })
                .collect(),
            nodes: state
                .cluster
                .nodes
                .iter()
                .map(|(id, n)| pb::NodeRec {
                    raft_id: id.0,
                    incarnation: n.incarnation.clone(),
                    generation: n.generation,
                })
                .collect(),
        }),
    };
    let mut out = Vec::with_capacity(4 + snap.encoded_len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.push(if snap.lock_tickets == 0 {
        SNAPSHOT_VERSION_WITHOUT_WAITS
    } else {
        SNAPSHOT_VERSION
    });
    snap.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// The cluster identity a state snapshot holds, without decoding the rest of it.
pub fn cluster_id_of(data: &[u8]) -> Result<String, DecodeError> {
    let body = snapshot_body(data)?;
    let snap = pb::StateSnapshotCluster::decode(body).map_err(bad)?;
    Ok(snap.cluster.unwrap_or_default().id)
}

/// A snapshot's protobuf body, once its magic and version are checked.
fn snapshot_body(data: &[u8]) -> Result<&[u8], DecodeError> {
    match data {
        [m0, m1, m2, version, body @ ..] if [*m0, *m1, *m2] == *SNAPSHOT_MAGIC => {
            if !(1..=SNAPSHOT_VERSION).contains(version) {
                return Err(DecodeError {
                    what: format!(
                        "the state snapshot needs snapshot format {version}; this build reads \
                         formats 1 to {SNAPSHOT_VERSION}"
                    ),
                    too_new: *version > SNAPSHOT_VERSION,
                });
            }
            Ok(body)
        }
        _ => Err(bad("not a Nexus-rs state snapshot")),
    }
}

/// The state held in a snapshot (derived indexes not rebuilt yet).
pub fn decode_state(data: &[u8]) -> Result<State, DecodeError> {
    let body = snapshot_body(data)?;
    let snap = pb::StateSnapshot::decode(body).map_err(bad)?;
    let mut state = State::default();
    for u in snap.users {
        let (name, user) = user_from_pb(u)?;
        state.users.by_name.insert(name, user);
    }
    for s in snap.sessions {
        let rec = session_from_pb(s);
        state.sessions.by_connid.insert(rec.connid.clone(), rec);
    }
    for t in snap.tasks {
        let task = task_from_pb(t)?;
        state.tasks.tasks.insert(task.id.clone(), task);
    }
    for p in snap.pulls {
        let pull = pull_from_pb(p);
        state.tasks.pulls.insert(pull.id.clone(), pull);
    }
    state.tasks.seq = snap.task_seq;
    for l in snap.locks {
        let holder = super::Holder {
            connid: l.connid.into(),
            token: l.token,
            ticket: l.ticket,
        };
        state.locks.owners.insert(l.lock, holder);
    }
    for w in snap.lock_waits {
        let wait = super::LockWait {
            id: w.wait_id,
            connid: w.connid.into(),
            deadline_ms: w.deadline_ms,
            since_ms: w.since_ms,
            ticket: w.ticket,
        };
        state.locks.waits.entry(w.lock).or_default().push_back(wait);
    }
    for t in snap.topics {
        state
            .topics
            .by_topic
            .insert(t.topic, t.pipeids.into_iter().map(PipeId::from).collect());
    }
    state.bootstrapped = snap.bootstrapped;
    state.locks.grants = snap.lock_grants;
    state.locks.tickets = snap.lock_tickets;
    let cluster = snap.cluster.unwrap_or_default();
    state.cluster.members = cluster
        .members
        .into_iter()
        .map(|m| (RaftId(m.raft_id), m.addr))
        .collect();
    state.cluster.clock_ms = cluster.clock_ms;
    state.cluster.id = cluster.id;
    state.cluster.nodes = cluster
        .nodes
        .into_iter()
        .map(|n| {
            let rec = NodeRecord {
                incarnation: n.incarnation,
                generation: n.generation,
            };
            (RaftId(n.raft_id), rec)
        })
        .collect();
    state.cluster.proposers = cluster
        .proposers
        .into_iter()
        .map(|p| {
            let rec = ProposerRecord {
                generation: p.generation,
                floor: p.floor,
                recent: p.recent.into_iter().collect::<BTreeSet<u64>>(),
            };
            (RaftId(p.node_id), rec)
        })
        .collect();
    Ok(state)
}

fn json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serialises")
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| bad(format!("{what}: {e}")))
}

fn command_to_pb(cmd: Command) -> Cmd {
    match cmd {
        Command::NodeStarted {
            node_id,
            incarnation,
            generation,
        } => Cmd::NodeStarted(pb::NodeStartedCmd {
            node_id: node_id.0,
            incarnation,
            generation,
        }),
        Command::NodeDown {
            node_id,
            incarnation,
        } => Cmd::NodeDown(pb::NodeDownCmd {
            node_id: node_id.0,
            incarnation,
        }),
        Command::Bootstrap { root_hash, at } => Cmd::Bootstrap(pb::BootstrapCmd { root_hash, at }),
        Command::SessionOpen { session } => Cmd::SessionOpen(session_to_pb(&session)),
        Command::SessionLogin { connid, user } => Cmd::SessionLogin(pb::ConnUser {
            connid: connid.into(),
            user,
        }),
        Command::SessionClose { connid } => Cmd::SessionClose(connid.into()),
        Command::SessionKick { connids } => Cmd::SessionKick(pb::ConnidList {
            connids: strings(connids),
        }),
        Command::SessionReload { connids } => Cmd::SessionReload(pb::ConnidList {
            connids: strings(connids),
        }),
        Command::UserCreate {
            user,
            hash,
            at,
            actor,
        } => Cmd::UserCreate(pb::UserCreateCmd {
            user,
            hash,
            at,
            actor,
        }),
        Command::UserDelete { user, actor } => Cmd::UserDelete(pb::UserDeleteCmd { user, actor }),
        Command::UserRename { user, new, actor } => Cmd::UserRename(pb::UserRenameCmd {
            user,
            new_name: new,
            actor,
        }),
        Command::UserUpdate {
            user,
            change,
            actor,
        } => Cmd::UserUpdate(pb::UserUpdateCmd {
            user,
            actor,
            change: Some(pb::UserChangeRec {
                change: Some(change_to_pb(change)),
            }),
        }),
        Command::TaskPush { task } => Cmd::TaskPush(task_to_pb(&task)),
        Command::TaskPull { pull } => Cmd::TaskPull(pull_to_pb(&pull)),
        Command::TaskFinish {
            taskid,
            worker,
            ending,
        } => Cmd::TaskFinish(pb::TaskFinishCmd {
            taskid: taskid.into(),
            worker: worker.into(),
            ending: Some(match ending {
                Ending::Result(v) => pb::task_finish_cmd::Ending::ResultJson(json(&v)),
                Ending::Error(e) => pb::task_finish_cmd::Ending::Error(error_to_pb(&e)),
            }),
        }),
        Command::TaskReject { taskid, worker } => Cmd::TaskReject(pb::TaskRejectCmd {
            taskid: taskid.into(),
            worker: worker.into(),
        }),
        Command::TaskCancel { id, connid } => Cmd::TaskCancel(pb::TaskCancelCmd {
            id,
            connid: connid.into(),
        }),
        Command::Expire {} => Cmd::Expire(pb::Empty {}),
        Command::Lock { lock, connid } => Cmd::Lock(pb::LockCmd {
            lock,
            connid: connid.into(),
            token: 0,
            ticket: 0,
        }),
        Command::Unlock { lock, connid } => Cmd::Unlock(pb::LockCmd {
            lock,
            connid: connid.into(),
            token: 0,
            ticket: 0,
        }),
        Command::LockWait {
            lock,
            connid,
            wait_id,
            wait_ms,
        } => Cmd::LockWait(pb::LockWaitCmd {
            lock,
            connid: connid.into(),
            wait_id,
            wait_ms,
        }),
        Command::Subscribe { pipeid, topic } => Cmd::Subscribe(pb::PipeTopic {
            pipeid: pipeid.into(),
            topic,
        }),
        Command::Unsubscribe { pipeid, topic } => Cmd::Unsubscribe(pb::PipeTopic {
            pipeid: pipeid.into(),
            topic,
        }),
        Command::PipeClosed { pipeid } => Cmd::PipeClosed(pipeid.into()),
    }
}

fn command_from_pb(cmd: Cmd) -> Result<Command, DecodeError> {
    Ok(match cmd {
        Cmd::NodeStarted(c) => Command::NodeStarted {
            node_id: RaftId(c.node_id),
            incarnation: c.incarnation,
            generation: c.generation,
        },
        Cmd::NodeDown(c) => Command::NodeDown {
            node_id: RaftId(c.node_id),
            incarnation: c.incarnation,
        },
        Cmd::Bootstrap(c) => Command::Bootstrap {
            root_hash: c.root_hash,
            at: c.at,
        },
        Cmd::SessionOpen(s) => Command::SessionOpen {
            session: session_from_pb(s),
        },
        Cmd::SessionLogin(c) => Command::SessionLogin {
            connid: c.connid.into(),
            user: c.user,
        },
        Cmd::SessionClose(connid) => Command::SessionClose {
            connid: connid.into(),
        },
        Cmd::SessionKick(c) => Command::SessionKick {
            connids: typed(c.connids),
        },
        Cmd::SessionReload(c) => Command::SessionReload {
            connids: typed(c.connids),
        },
        Cmd::UserCreate(c) => Command::UserCreate {
            user: c.user,
            hash: c.hash,
            at: c.at,
            actor: c.actor,
        },
        Cmd::UserDelete(c) => Command::UserDelete {
            user: c.user,
            actor: c.actor,
        },
        Cmd::UserRename(c) => Command::UserRename {
            user: c.user,
            new: c.new_name,
            actor: c.actor,
        },
        Cmd::UserUpdate(c) => Command::UserUpdate {
            user: c.user,
            actor: c.actor,
            change: change_from_pb(
                c.change
                    .and_then(|c| c.change)
                    .ok_or_else(|| bad("unknown user change"))?,
            )?,
        },
        Cmd::TaskPush(t) => Command::TaskPush {
            task: task_from_pb(t)?,
        },
        Cmd::TaskPull(p) => Command::TaskPull {
            pull: pull_from_pb(p),
        },
        Cmd::TaskFinish(c) => Command::TaskFinish {
            taskid: c.taskid.into(),
            worker: c.worker.into(),
            ending: match c.ending.ok_or_else(|| bad("unknown task ending"))? {
                pb::task_finish_cmd::Ending::ResultJson(b) => {
                    Ending::Result(from_json(&b, "task result")?)
                }
                pb::task_finish_cmd::Ending::Error(e) => Ending::Error(error_from_pb(e)?),
            },
        },
        Cmd::TaskReject(c) => Command::TaskReject {
            taskid: c.taskid.into(),
            worker: c.worker.into(),
        },
        Cmd::TaskCancel(c) => Command::TaskCancel {
            id: c.id,
            connid: c.connid.into(),
        },
        Cmd::Expire(_) => Command::Expire {},
        Cmd::Lock(c) => Command::Lock {
            lock: c.lock,
            connid: c.connid.into(),
        },
        Cmd::Unlock(c) => Command::Unlock {
            lock: c.lock,
            connid: c.connid.into(),
        },
        Cmd::LockWait(c) => Command::LockWait {
            lock: c.lock,
            connid: c.connid.into(),
            wait_id: c.wait_id,
            wait_ms: c.wait_ms,
        },
        Cmd::Subscribe(c) => Command::Subscribe {
            pipeid: c.pipeid.into(),
            topic: c.topic,
        },
        Cmd::Unsubscribe(c) => Command::Unsubscribe {
            pipeid: c.pipeid.into(),
            topic: c.topic,
        },
        Cmd::PipeClosed(pipeid) => Command::PipeClosed {
            pipeid: pipeid.into(),
        },
    })
}

/// Typed ids as their strings, for the log.
fn strings<T: Into<String>>(ids: Vec<T>) -> Vec<String> {
    ids.into_iter().map(Into::into).collect()
}

/// Strings from the log as typed ids.
fn typed<T: From<String>>(ids: Vec<String>) -> Vec<T> {
    ids.into_iter().map(T::from).collect()
}

fn change_to_pb(change: UserChange) -> Change {
    match change {
        UserChange::SetTags { prefix, tags } => Change::SetTags(pb::PrefixTags {
            prefix,
            tags_json: serde_json::to_vec(&tags).expect("a JSON map always serialises"),
        }),
        UserChange::DelTags { prefix, tags } => {
            Change::DelTags(pb::PrefixTagNames { prefix, tags })
        }
        UserChange::SetPass { hash } => Change::SetPass(hash),
        UserChange::AddTemplate { template } => Change::AddTemplate(template),
        UserChange::DelTemplate { template } => Change::DelTemplate(template),
        UserChange::AddWhitelist { ip } => Change::AddWhitelist(ip),
        UserChange::DelWhitelist { ip } => Change::DelWhitelist(ip),
        UserChange::AddBlacklist { ip } => Change::AddBlacklist(ip),
        UserChange::DelBlacklist { ip } => Change::DelBlacklist(ip),
        UserChange::SetMaxSessions { maxsessions } => Change::SetMaxSessions(maxsessions),
        UserChange::SetDisabled { disabled } => Change::SetDisabled(disabled),
    }
}

fn change_from_pb(change: Change) -> Result<UserChange, DecodeError> {
    Ok(match change {
        Change::SetTags(t) => UserChange::SetTags {
            prefix: t.prefix,
            tags: from_json(&t.tags_json, "tags")?,
        },
        Change::DelTags(t) => UserChange::DelTags {
            prefix: t.prefix,
            tags: t.tags,
        },
        Change::SetPass(hash) => UserChange::SetPass { hash },
        Change::AddTemplate(template) => UserChange::AddTemplate { template },
        Change::DelTemplate(template) => UserChange::DelTemplate { template },
        Change::AddWhitelist(ip) => UserChange::AddWhitelist { ip },
        Change::DelWhitelist(ip) => UserChange::DelWhitelist { ip },
        Change::AddBlacklist(ip) => UserChange::AddBlacklist { ip },
        Change::DelBlacklist(ip) => UserChange::DelBlacklist { ip },
        Change::SetMaxSessions(maxsessions) => UserChange::SetMaxSessions { maxsessions },
        Change::SetDisabled(disabled) => UserChange::SetDisabled { disabled },
    })
}

fn error_to_pb(e: &RpcError) -> pb::ErrorRec {
    pb::ErrorRec {
        code: e.code,
        message: e.message.clone(),
        data_json: e.data.as_ref().map(json).unwrap_or_default(),
    }
}

fn error_from_pb(e: pb::ErrorRec) -> Result<RpcError, DecodeError> {
    Ok(RpcError {
        code: e.code,
        message: e.message,
        data: if e.data_json.is_empty() {
            None
        } else {
            Some(from_json(&e.data_json, "error data")?)
        },
    })
}

fn session_to_pb(s: &SessionRecord) -> pb::SessionRec {
    pb::SessionRec {
        connid: s.connid.to_string(),
        node_id: s.node_id.0,
        incarnation: s.incarnation.clone(),
        user: s.user.clone(),
        remote_address: s.remote_address.clone(),
        protocol: s.protocol.clone(),
        creation_time: s.creation_time.clone(),
    }
}

fn session_from_pb(s: pb::SessionRec) -> SessionRecord {
    SessionRecord {
        connid: s.connid.into(),
        node_id: RaftId(s.node_id),
        incarnation: s.incarnation,
        user: s.user,
        remote_address: s.remote_address,
        protocol: s.protocol,
        creation_time: s.creation_time,
    }
}

fn task_to_pb(t: &Task) -> pb::TaskRec {
    pb::TaskRec {
        id: t.id.to_string(),
        path: t.path.clone(),
        method: t.method.clone(),
        params_json: json(&t.params),
        prio: t.prio,
        ttl: t.ttl,
        detach: t.detach,
        user: t.user.clone(),
        tags_json: json(&t.tags),
        pusher: t.pusher.to_string(),
        creation_time: t.creation_time.clone(),
        deadline: t.deadline.clone(),
        deadline_ms: t.deadline_ms,
        timeout_ms: t.timeout_ms,
        seq: t.seq,
        working: t.working.as_ref().map(ConnId::to_string),
        pulled_by: t.pulled_by.as_ref().map(PullId::to_string),
    }
}

fn task_from_pb(t: pb::TaskRec) -> Result<Task, DecodeError> {
    Ok(Task {
        params: from_json(&t.params_json, "task params")?,
        tags: from_json(&t.tags_json, "task tags")?,
        id: t.id.into(),
        path: t.path,
        method: t.method,
        prio: t.prio,
        ttl: t.ttl,
        detach: t.detach,
        user: t.user,
        pusher: t.pusher.into(),
        creation_time: t.creation_time,
        deadline: t.deadline,
        deadline_ms: t.deadline_ms,
        timeout_ms: t.timeout_ms,
        seq: t.seq,
        working: t.working.map(ConnId::from),
        pulled_by: t.pulled_by.map(PullId::from),
    })
}

fn pull_to_pb(p: &Pull) -> pb::PullRec {
    pb::PullRec {
        id: p.id.to_string(),
        connid: p.connid.to_string(),
        path: p.path.clone(),
        user: p.user.clone(),
        creation_time: p.creation_time.clone(),
        deadline: p.deadline.clone(),
        deadline_ms: p.deadline_ms,
        timeout_ms: p.timeout_ms,
        seq: p.seq,
    }
}

fn pull_from_pb(p: pb::PullRec) -> Pull {
    Pull {
        id: p.id.into(),
        connid: p.connid.into(),
        path: p.path,
        user: p.user,
        creation_time: p.creation_time,
        deadline: p.deadline,
        deadline_ms: p.deadline_ms,
        timeout_ms: p.timeout_ms,
        seq: p.seq,
    }
}

fn user_to_pb(name: &str, u: &User) -> pb::UserRec {
    pb::UserRec {
        name: name.to_string(),
        pass_hash: u.pass_hash.clone(),
        tags_json: serde_json::to_vec(&u.tags).expect("tags always serialise"),
        templates: u.templates.clone(),
        whitelist: u.whitelist.clone(),
        blacklist: u.blacklist.clone(),
        maxsessions: u.maxsessions,
        disabled: u.disabled,
        created_at: u.created_at.clone(),
    }
}

fn user_from_pb(u: pb::UserRec) -> Result<(String, User), DecodeError> {
    let user = User {
        pass_hash: u.pass_hash,
        tags: from_json(&u.tags_json, "user tags")?,
        templates: u.templates,
        whitelist: u.whitelist,
        blacklist: u.blacklist,
        maxsessions: u.maxsessions,
        disabled: u.disabled,
        created_at: u.created_at,
    };
    Ok((u.name, user))
}
