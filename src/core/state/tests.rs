use serde_json::json;

use super::*;
use crate::rpc::{ERR_INVALID_USER, ERR_PERMISSION_DENIED, ERR_USER_EXISTS};

fn session(connid: &str, node_id: u64, incarnation: &str) -> SessionRecord {
    SessionRecord {
        connid: connid.into(),
        node_id: RaftId(node_id),
        incarnation: incarnation.into(),
        user: "nobody".into(),
        remote_address: "127.0.0.1:1".into(),
        protocol: "tcp".into(),
        creation_time: "t".into(),
    }
}

/// Process `incarnation` of node `node_id` started (sessions of it may open).
fn started(state: &mut State, node_id: u64, incarnation: &str) {
    must(
        state,
        Command::NodeStarted {
            node_id: RaftId(node_id),
            incarnation: incarnation.into(),
            generation: 1,
        },
    );
}

/// Applies a command that must succeed.
fn must(state: &mut State, cmd: Command) {
    let (outcome, _) = state.apply(cmd);
    assert!(outcome.is_ok(), "{outcome:?}");
}

fn create(state: &mut State, user: &str) -> Outcome {
    state
        .apply(Command::UserCreate {
            actor: String::new(),
            user: user.into(),
            hash: "h".into(),
            at: "t".into(),
        })
        .0
}

#[test]
fn create_delete_rename() {
    let mut s = State::default();
    assert!(create(&mut s, "alice").is_ok());
    assert_eq!(create(&mut s, "alice").unwrap_err().code, ERR_USER_EXISTS);
    assert!(create(&mut s, "bob").is_ok());
    let rename = |s: &mut State, a: &str, b: &str| {
        s.apply(Command::UserRename {
            actor: String::new(),
            user: a.into(),
            new: b.into(),
        })
        .0
    };
    assert_eq!(
        rename(&mut s, "alice", "bob").unwrap_err().code,
        ERR_USER_EXISTS
    );
    assert_eq!(
        rename(&mut s, "nope", "x").unwrap_err().code,
        ERR_INVALID_USER
    );
    assert!(rename(&mut s, "alice", "carol").is_ok());
    assert!(s.users.get("alice").is_none() && s.users.get("carol").is_some());
    let (out, events) = s.apply(Command::UserDelete {
        actor: String::new(),
        user: "carol".into(),
    });
    assert!(out.is_ok());
    assert_eq!(
        events,
        vec![Event::User {
            action: "delete",
            user: "carol".into()
        }]
    );
    assert_eq!(
        s.apply(Command::UserDelete {
            actor: String::new(),
            user: "carol".into()
        })
        .0
        .unwrap_err()
        .code,
        ERR_INVALID_USER
    );
}

#[test]
fn tags_merge_and_delete_empty_prefix() {
    let mut s = State::default();
    create(&mut s, "u1").unwrap();
    let set = |s: &mut State, tags: serde_json::Value| {
        s.apply(Command::UserUpdate {
            actor: String::new(),
            user: "u1".into(),
            change: UserChange::SetTags {
                prefix: "a".into(),
                tags: tags.as_object().unwrap().clone(),
            },
        })
        .0
        .unwrap()
    };
    set(&mut s, json!({"x": 1}));
    set(&mut s, json!({"y": 2}));
    assert_eq!(
        json!(s.users.get("u1").unwrap().tags),
        json!({"a": {"x": 1, "y": 2}})
    );
    s.apply(Command::UserUpdate {
        actor: String::new(),
        user: "u1".into(),
        change: UserChange::DelTags {
            prefix: "a".into(),
            tags: vec!["x".into(), "y".into()],
        },
    })
    .0
    .unwrap();
    assert!(s.users.get("u1").unwrap().tags.is_empty());
}

#[test]
fn login_enforces_disabled_and_maxsessions_cluster_wide() {
    let mut s = State::default();
    create(&mut s, "u").unwrap();
    must(
        &mut s,
        Command::UserUpdate {
            actor: String::new(),
            user: "u".into(),
            change: UserChange::SetMaxSessions { maxsessions: 2 },
        },
    );
    started(&mut s, 1, "inc");
    started(&mut s, 2, "inc");
    for (i, node) in [(1, 1u64), (2, 2), (3, 2)] {
        must(
            &mut s,
            Command::SessionOpen {
                session: session(&format!("c{i}"), node, "inc"),
            },
        );
    }
    let login = |s: &mut State, c: &str| {
        s.apply(Command::SessionLogin {
            connid: c.into(),
            user: "u".into(),
        })
        .0
    };
    assert!(login(&mut s, "c1").is_ok());
    assert!(login(&mut s, "c2").is_ok());
    assert!(login(&mut s, "c2").is_ok(), "re-login of a counted session");
    assert_eq!(login(&mut s, "c3").unwrap_err().code, ERR_PERMISSION_DENIED);
    must(
        &mut s,
        Command::SessionClose {
            connid: "c1".into(),
        },
    );
    assert!(login(&mut s, "c3").is_ok());
    must(
        &mut s,
        Command::UserUpdate {
            actor: String::new(),
            user: "u".into(),
            change: UserChange::SetDisabled { disabled: true },
        },
    );
    assert_eq!(login(&mut s, "c3").unwrap_err().code, ERR_PERMISSION_DENIED);
    assert_eq!(
        s.apply(Command::SessionLogin {
            connid: "c3".into(),
            user: "ghost".into()
        })
        .0
        .unwrap_err()
        .code,
        ERR_PERMISSION_DENIED
    );
}

#[test]
fn node_restart_drops_sessions_of_old_incarnations_only() {
    let mut s = State::default();
    started(&mut s, 1, "aaaa");
    started(&mut s, 2, "aaaa");
    must(
        &mut s,
        Command::SessionOpen {
            session: session("old", 1, "aaaa"),
        },
    );
    must(
        &mut s,
        Command::SessionOpen {
            session: session("other", 2, "aaaa"),
        },
    );
    let (_, events) = s.apply(Command::NodeStarted {
        node_id: RaftId(1),
        incarnation: "bbbb".into(),
        generation: 2,
    });
    assert_eq!(
        events,
        vec![Event::SessionClosed {
            connid: "old".into()
        }]
    );
    assert_eq!(s.sessions.len(), 1);
}

#[test]
fn node_down_closes_its_sessions_and_fences_late_opens() {
    let mut s = State::default();
    started(&mut s, 1, "aaaaaaaa");
    started(&mut s, 2, "bbbbbbbb");
    for (connid, node, inc) in [
        ("aaaaaaaa00000001", 1, "aaaaaaaa"),
        ("bbbbbbbb00000001", 2, "bbbbbbbb"),
    ] {
        must(
            &mut s,
            Command::SessionOpen {
                session: session(connid, node, inc),
            },
        );
    }
    must(
        &mut s,
        Command::Lock {
            lock: "l".into(),
            connid: "aaaaaaaa00000001".into(),
        },
    );
    // A NodeDown for a process that was already replaced changes nothing.
    must(
        &mut s,
        Command::NodeDown {
            node_id: RaftId(1),
            incarnation: "00000000".into(),
        },
    );
    assert_eq!(s.sessions.len(), 2);
    let (_, events) = s.apply(Command::NodeDown {
        node_id: RaftId(1),
        incarnation: "aaaaaaaa".into(),
    });
    assert!(events.contains(&Event::SessionClosed {
        connid: "aaaaaaaa00000001".into()
    }));
    assert_eq!(s.sessions.len(), 1);
    assert_eq!(s.locks.iter().count(), 0, "its locks are released");
    assert_eq!(s.owner_node("aaaaaaaa00000001xyz"), None, "routes nowhere");
    assert_eq!(s.owner_node("bbbbbbbb00000001xyz"), Some(RaftId(2)));
    // A late open from the gone process is refused; an open twice changes nothing.
    let (late, _) = s.apply(Command::SessionOpen {
        session: session("aaaaaaaa00000002", 1, "aaaaaaaa"),
    });
    assert!(late.is_err());
    let (again, events) = s.apply(Command::SessionOpen {
        session: session("bbbbbbbb00000001", 2, "bbbbbbbb"),
    });
    assert!(again.is_ok() && events.is_empty(), "idempotent open");
    assert_eq!(s.sessions.len(), 1);
    // A member removed from the configuration takes its sessions with it.
    let events = s.apply_member_change(MemberChange::Removed { node_id: RaftId(2) });
    assert!(events.contains(&Event::SessionClosed {
        connid: "bbbbbbbb00000001".into()
    }));
    assert_eq!(s.sessions.len(), 0);
    assert_eq!(s.owner_node("bbbbbbbb00000001xyz"), None);
}

#[test]
fn bootstrap_once_and_snapshot_roundtrip() {
    let mut s = State::default();
    must(
        &mut s,
        Command::Bootstrap {
            root_hash: "h1".into(),
            at: "t".into(),
        },
    );
    must(
        &mut s,
        Command::UserDelete {
            actor: String::new(),
            user: "root".into(),
        },
    );
    must(
        &mut s,
        Command::Bootstrap {
            root_hash: "h2".into(),
            at: "t".into(),
        },
    );
    assert!(s.users.get("root").is_none(), "bootstrap happens once");
    create(&mut s, "u").unwrap();
    started(&mut s, 1, "i");
    must(
        &mut s,
        Command::SessionOpen {
            session: session("c", 1, "i"),
        },
    );
    s.apply(Command::SessionLogin {
        connid: "c".into(),
        user: "u".into(),
    })
    .0
    .unwrap();
    let restored = State::from_snapshot(&s.to_snapshot()).unwrap();
    assert_eq!(restored.users.get("u"), s.users.get("u"));
    assert_eq!(restored.sessions.count_of("u", &"".into()), 1);
    assert!(restored.bootstrapped);
}

/// A mixed log: sessions, users, tasks with deadlines, pulls, locks, expiry.
fn sample_log() -> Vec<(Origin, Command)> {
    let mut log = Vec::new();
    let mut id = 0;
    let mut push = |cmd: Command, clock: u64| {
        id += 1;
        log.push((
            Origin {
                node_id: RaftId(1 + id % 3),
                generation: 1,
                proposal_id: id,
                clock_ms: clock,
            },
            cmd,
        ));
    };
    push(
        Command::NodeStarted {
            node_id: RaftId(1),
            incarnation: "aaaaaaaa".into(),
            generation: 1,
        },
        999,
    );
    for i in 0..20u64 {
        let connid = format!("aaaaaaaa{i:08x}");
        push(
            Command::SessionOpen {
                session: session(&connid, 1, "aaaaaaaa"),
            },
            1000 + i,
        );
        push(
            Command::UserCreate {
                user: format!("user{i}"),
                hash: "h".into(),
                at: "t".into(),
                actor: String::new(),
            },
            1000 + i,
        );
        let mut task = tasks_sample(&connid, i);
        task.timeout_ms = 50 * (i % 4);
        push(Command::TaskPush { task }, 1100 + i);
        push(
            Command::Lock {
                lock: format!("lock{}", i % 5),
                connid: connid.as_str().into(),
            },
            1100 + i,
        );
        if i.is_multiple_of(3) {
            push(Command::Expire {}, 1100 + 10 * i);
        }
        if i.is_multiple_of(4) {
            push(
                Command::SessionClose {
                    connid: connid.into(),
                },
                1200 + i,
            );
        }
    }
    log
}

fn tasks_sample(connid: &str, i: u64) -> Task {
    Task {
        id: format!("{connid}{i:020}").into(),
        path: "a.b.".into(),
        method: "m".into(),
        params: json!({"i": i}),
        prio: (i % 3) as i64,
        ttl: 5,
        detach: i.is_multiple_of(2),
        user: "nobody".into(),
        tags: json!({}),
        pusher: connid.into(),
        creation_time: String::new(),
        deadline: String::new(),
        deadline_ms: 0,
        timeout_ms: 0,
        seq: 0,
        working: None,
        pulled_by: None,
    }
}

#[test]
fn the_same_log_gives_the_same_snapshot_and_snapshot_plus_tail_equals_replay() {
    let log = sample_log();
    let replay = |entries: &[(Origin, Command)], mut s: State| {
        for (o, c) in entries {
            let _ = s.apply_entry(o, c.clone());
        }
        s
    };
    let full = replay(&log, State::default()).to_snapshot();
    assert_eq!(
        full,
        replay(&log, State::default()).to_snapshot(),
        "deterministic"
    );
    for cut in [1, log.len() / 3, log.len() / 2, log.len() - 1] {
        let head = replay(&log[..cut], State::default()).to_snapshot();
        let restored = State::from_snapshot(&head).unwrap();
        let rest = replay(&log[cut..], restored).to_snapshot();
        assert_eq!(rest, full, "snapshot at {cut} + tail = full replay");
    }
    // A retried proposal changes nothing the second time.
    let twice = replay(&log, State::from_snapshot(&full).unwrap()).to_snapshot();
    assert_eq!(twice, full, "replayed proposals are recognised and skipped");
}

/// One of every command, with non-default values in every field.
fn every_command() -> Vec<Command> {
    let user_changes = vec![
        UserChange::SetTags {
            prefix: "a.b".into(),
            tags: json!({"@task.push": true, "n": [1, {"x": null}]})
                .as_object()
                .unwrap()
                .clone(),
        },
        UserChange::DelTags {
            prefix: "a".into(),
            tags: vec!["x".into(), "y".into()],
        },
        UserChange::SetPass {
            hash: "$scrypt$h".into(),
        },
        UserChange::AddTemplate {
            template: "t1".into(),
        },
        UserChange::DelTemplate {
            template: "t2".into(),
        },
        UserChange::AddWhitelist {
            ip: "10.0.0.1".into(),
        },
        UserChange::DelWhitelist {
            ip: "10.0.0.2".into(),
        },
        UserChange::AddBlacklist {
            ip: "10.0.0.3".into(),
        },
        UserChange::DelBlacklist {
            ip: "10.0.0.4".into(),
        },
        UserChange::SetMaxSessions { maxsessions: -7 },
        UserChange::SetDisabled { disabled: true },
    ];
    let mut worked = tasks_sample("bbbbbbbb00000001", 3);
    worked.working = Some("cccccccc00000002".into());
    worked.deadline_ms = 99;
    worked.seq = 12;
    let mut cmds = vec![
        Command::NodeStarted {
            node_id: RaftId(3),
            incarnation: "deadbeef".into(),
            generation: 9,
        },
        Command::NodeDown {
            node_id: RaftId(4),
            incarnation: "cafebabe".into(),
        },
        Command::Bootstrap {
            root_hash: "rh".into(),
            at: "2026-01-01T00:00:00Z".into(),
        },
        Command::SessionOpen {
            session: session("aaaaaaaa00000001", 2, "aaaaaaaa"),
        },
        Command::SessionLogin {
            connid: "c".into(),
            user: "u".into(),
        },
        Command::SessionClose { connid: "c".into() },
        Command::SessionKick {
            connids: vec!["c1".into(), "c2".into()],
        },
        Command::SessionReload {
            connids: vec!["c3".into()],
        },
        Command::UserCreate {
            user: "u".into(),
            hash: "h".into(),
            at: "t".into(),
            actor: "root".into(),
        },
        Command::UserDelete {
            user: "u".into(),
            actor: "root".into(),
        },
        Command::UserRename {
            user: "u".into(),
            new: "v".into(),
            actor: "root".into(),
        },
        Command::TaskPush { task: worked },
        Command::TaskPull {
            pull: Pull {
                id: "p".into(),
                connid: "c".into(),
                path: "a.".into(),
                user: "u".into(),
                creation_time: "t1".into(),
                deadline: "t2".into(),
                deadline_ms: 5,
                timeout_ms: 6,
                seq: 7,
            },
        },
        Command::TaskFinish {
            taskid: "t".into(),
            worker: "w".into(),
            ending: Ending::Result(json!({"r": [1, 2.5, "x"]})),
        },
        Command::TaskFinish {
            taskid: "t".into(),
            worker: "w".into(),
            ending: Ending::Error(RpcError {
                code: -32000,
                message: "boom".into(),
                data: Some(json!({"why": "x"})),
            }),
        },
        Command::TaskFinish {
            taskid: "t".into(),
            worker: "w".into(),
            ending: Ending::Error(RpcError::new(-32001)),
        },
        Command::TaskReject {
            taskid: "t".into(),
            worker: "w".into(),
        },
        Command::TaskCancel {
            id: "i".into(),
            connid: "c".into(),
        },
        Command::Expire {},
        Command::Lock {
            lock: "l".into(),
            connid: "c".into(),
        },
        Command::Unlock {
            lock: "l".into(),
            connid: "c".into(),
        },
        Command::Subscribe {
            pipeid: "p".into(),
            topic: "t".into(),
        },
        Command::Unsubscribe {
            pipeid: "p".into(),
            topic: "t".into(),
        },
        Command::PipeClosed { pipeid: "p".into() },
    ];
    cmds.extend(user_changes.into_iter().map(|change| Command::UserUpdate {
        user: "u".into(),
        change,
        actor: "root".into(),
    }));
    cmds
}

#[test]
fn every_command_survives_its_log_encoding() {
    for cmd in every_command() {
        let bytes = codec::encode_command(cmd.clone());
        assert_eq!(codec::decode_command(&bytes).unwrap(), cmd);
    }
}

#[test]
fn unreadable_log_entries_and_snapshots_are_errors_not_guesses() {
    // An empty entry, a command kind this build does not know (field 99), garbage.
    assert!(codec::decode_command(&[]).is_err());
    let unknown = [0x9a, 0x06, 0x00]; // field 99, length-delimited, empty
    assert!(codec::decode_command(&unknown).is_err());
    assert!(codec::decode_command(&[0xff, 0xff, 0xff]).is_err());
    // Snapshots: a newer format version and foreign bytes are refused with a reason.
    let mut snap = State::default().to_snapshot();
    assert!(State::from_snapshot(&snap).is_ok());
    snap[3] = 3;
    let err = State::from_snapshot(&snap).unwrap_err();
    assert!(err.is_too_new(), "{err}");
    let err = err.to_string();
    assert!(err.contains("needs snapshot format 3"), "{err}");
    let err = State::from_snapshot(b"{\"users\":{}}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a Nexus-rs state snapshot"), "{err}");
}

#[test]
fn a_snapshot_keeps_every_table() {
    let log = sample_log();
    let mut s = State::default();
    for (o, c) in &log {
        let _ = s.apply_entry(o, c.clone());
    }
    must(
        &mut s,
        Command::Subscribe {
            pipeid: "aaaaaaaa00000001xyz".into(),
            topic: "news".into(),
        },
    );
    must(
        &mut s,
        Command::Bootstrap {
            root_hash: "h".into(),
            at: "t".into(),
        },
    );
    s.apply_member_change(MemberChange::Added {
        node_id: RaftId(7),
        addr: Some("127.0.0.1:7000".into()),
    });
    let restored = State::from_snapshot(&s.to_snapshot()).unwrap();
    // Compare through the JSON form of every table (it covers every field).
    let tables = |s: &State| {
        json!({
            "users": s.users, "sessions": s.sessions, "tasks": s.tasks, "locks": s.locks,
            "topics": s.topics, "bootstrapped": s.bootstrapped, "cluster": s.cluster,
        })
    };
    assert_eq!(tables(&restored), tables(&s));
    assert!(s.topics.iter().count() > 0 && s.locks.iter().count() > 0);
}

/// A snapshot holds lock waits as format 2, which builds before waits refuse instead of
/// dropping the queue unseen; without waits it stays format 1, which they install.
#[test]
fn snapshots_with_lock_waits_are_format_2_and_those_without_stay_format_1() {
    let mut s = State::default();
    let a: ConnId = "aaaaaaaa00000001".to_string().into();
    let b: ConnId = "aaaaaaaa00000002".to_string().into();
    assert_eq!(s.locks.lock("t", &a), Some(1));
    assert_eq!(s.to_snapshot()[3], 1, "try-locks only");
    s.locks.wait("l", &a, "w1", 0, 1000);
    assert_eq!(
        s.to_snapshot()[3],
        2,
        "a wait granted at once queues nothing, but takes a ticket"
    );
    s.locks.wait("l", &b, "w2", 0, 1000);
    let snap = s.to_snapshot();
    assert_eq!(snap[3], 2);
    let back = State::from_snapshot(&snap).unwrap();
    assert!(back.locks.is_waiting("l", "w2"));
    assert_eq!(back.locks.holder("l").unwrap().token, 2);
    assert_eq!(back.to_snapshot(), snap);
}

#[test]
fn a_wait_past_its_deadline_is_never_granted_even_before_an_expire_entry() {
    let mut s = State::default();
    started(&mut s, 1, "aaaaaaaa");
    let ids = ["aaaaaaaa00000001", "aaaaaaaa00000002", "aaaaaaaa00000003"];
    for id in ids {
        must(
            &mut s,
            Command::SessionOpen {
                session: session(id, 1, "aaaaaaaa"),
            },
        );
    }
    let wait = |s: &mut State, i: usize, wait_ms: u64| {
        s.apply(Command::LockWait {
            lock: "l".into(),
            connid: ids[i].into(),
            wait_id: format!("w{i}"),
            wait_ms,
        })
        .0
        .unwrap()
    };
    s.cluster.clock_ms = 1000;
    assert_eq!(wait(&mut s, 0, 1000)["ticket"], json!(1));
    assert_eq!(wait(&mut s, 1, 100)["ticket"], json!(2));
    assert_eq!(wait(&mut s, 2, 10_000)["ticket"], json!(3));
    // The first waiter's deadline has passed on the cluster clock, and no Expire entry
    // came yet: the release ends that wait and grants the next one.
    s.cluster.clock_ms = 1200;
    let (outcome, events) = s.apply(Command::Unlock {
        lock: "l".into(),
        connid: ids[0].into(),
    });
    assert!(outcome.is_ok());
    assert!(matches!(&events[0], Event::LockWaitEnded { wait_id, .. } if wait_id == "w1"));
    assert!(matches!(&events[1], Event::LockGranted { wait_id, ticket: 3, .. } if wait_id == "w2"));
    assert_eq!(s.locks.holder("l").unwrap().connid.to_string(), ids[2]);
}
