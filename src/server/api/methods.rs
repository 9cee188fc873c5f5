//! The method table: every method this node answers, with its parameters, answer,
//! permission and errors. Dispatch refuses any name not in it (-32601), metrics label only
//! these names, and `GET /openrpc.json` is generated from it, so the published description
//! and what the node answers cannot part. docs/api.md says the same in prose.

use nexus_core::rpc::{
    ERR_CANCEL, ERR_INTERNAL, ERR_INVALID_PARAMS, ERR_INVALID_PIPE, ERR_INVALID_REQUEST,
    ERR_INVALID_TASK, ERR_INVALID_USER, ERR_LOCK_NOT_OWNED, ERR_PERMISSION_DENIED, ERR_TIMEOUT,
    ERR_TTL_EXPIRED, ERR_USER_EXISTS,
};

/// A parameter's JSON type, as JSON Schema names it (`Any`: no constraint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    Any,
}

impl Ty {
    pub fn schema_name(self) -> Option<&'static str> {
        Some(match self {
            Ty::String => "string",
            Ty::Integer => "integer",
            Ty::Number => "number",
            Ty::Boolean => "boolean",
            Ty::Object => "object",
            Ty::Array => "array",
            Ty::Any => return None,
        })
    }
}

#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    /// The default as JSON text, when the parameter may be left out.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any connection, logged in or not.
    Anyone,
    /// A caller holding the tag `@<method>` (or `@admin`) in force at this path.
    Tag(&'static str),
    /// Only this party (the pipe's owner, the task's worker); no tag is checked.
    Owner(&'static str),
}

#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
    /// The answer's JSON type and what it holds.
    pub result: (Ty, &'static str),
    /// Who may call it.
    pub access: Access,
    /// The method's own errors, beyond -32602 (bad params) and -32603 (retry), which any
    /// method can answer.
    pub errors: &'static [i64],
}

const fn req(name: &'static str, ty: Ty, doc: &'static str) -> Param {
    Param {
        name,
        ty,
        required: true,
        default: None,
        doc,
    }
}

const fn opt(name: &'static str, ty: Ty, default: &'static str, doc: &'static str) -> Param {
    Param {
        name,
        ty,
        required: false,
        default: Some(default),
        doc,
    }
}

/// An optional parameter with no fixed default.
const fn may(name: &'static str, ty: Ty, doc: &'static str) -> Param {
    Param {
        name,
        ty,
        required: false,
        default: None,
        doc,
    }
}

const PREFIX: Param = req("prefix", Ty::String, "names under this prefix; \"\" is all");
const DEPTH: Param = opt(
    "depth",
    Ty::Integer,
    "-1",
    "labels below prefix; -1: no limit",
);
const FILTER: Param = may("filter", Ty::String, "an RE2 regexp the name must match");
const LIMIT: Param = opt(
    "limit",
    Ty::Integer,
    "100",
    "at most this many; <= 0: no limit",
);
const SKIP: Param = opt("skip", Ty::Integer, "0", "leave out this many first");
const SUBPREFIXES: Param = opt(
    "subprefixes",
    Ty::Boolean,
    "false",
    "one count per label right below prefix",
);
const LIST: &[Param] = &[PREFIX, DEPTH, FILTER, LIMIT, SKIP];
const COUNT: &[Param] = &[PREFIX, DEPTH, FILTER, SUBPREFIXES];
const USER: Param = req("user", Ty::String, "the user's name");
const PIPEID: Param = req("pipeid", Ty::String, "the pipe's id");
const TASKID: Param = req("taskid", Ty::String, "the task's id");
const LOCK: Param = req("lock", Ty::String, "the lock's name (a path)");
const OK: (Ty, &str) = (Ty::Object, "{\"ok\": true}");

const TARGET_USER: &str = "the target user";
const ON_PREFIX: &str = "prefix";

pub static METHODS: &[Method] = &[
    // sys
    Method {
        name: "sys.ping",
        summary: "Answers ok.",
        params: &[],
        result: OK,
        access: Access::Anyone,
        errors: &[],
    },
    Method {
        name: "sys.version",
        summary: "The API level implemented (1.9.0).",
        params: &[],
        result: (Ty::Object, "{\"version\": \"1.9.0\"}"),
        access: Access::Anyone,
        errors: &[],
    },
    Method {
        name: "sys.watchdog",
        summary: "Sets (or, without a parameter, reads) the connection's idle timeout.",
        params: &[may(
            "watchdog",
            Ty::Integer,
            "seconds, clamped to 10..1800 (default --watchdog, 90)",
        )],
        result: (Ty::Object, "{\"watchdog\": seconds}"),
        access: Access::Anyone,
        errors: &[],
    },
    Method {
        name: "sys.login",
        summary: "Logs the connection in (basic, admin>user, or a login plugin by method).",
        params: &[
            req("user", Ty::String, "user name, or admin>user"),
            req("pass", Ty::String, "password"),
            opt(
                "method",
                Ty::String,
                "\"basic\"",
                "another value pushes the task sys.login.<method>.login",
            ),
        ],
        result: (
            Ty::Object,
            "{\"ok\": true, \"connid\", \"user\", \"tags\", \"metadata\"}",
        ),
        access: Access::Anyone,
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sys.reload",
        summary: "Reads the connection's own user data (tags, limits) again.",
        params: &[],
        result: OK,
        access: Access::Anyone,
        errors: &[ERR_INVALID_REQUEST],
    },
    Method {
        name: "sys.node.list",
        summary: "The cluster's nodes: incarnation, version, clients, load, role, status.",
        params: &[
            LIMIT,
            SKIP,
            opt("all", Ty::Boolean, "false", "also members that are down"),
        ],
        result: (
            Ty::Array,
            "[{\"id\", \"version\", \"clients\", \"load\", \"listening\", \"raftId\", \"role\", \"cluster\", \"status\", \"applied\", \"commit\"}]",
        ),
        access: Access::Tag("sys.node"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sys.node.remove",
        summary: "Removes a member that is gone for good (extension).",
        params: &[req("raftId", Ty::Integer, "the member's raft id")],
        result: OK,
        access: Access::Tag("sys.node"),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_REQUEST],
    },
    Method {
        name: "sys.node.reload",
        summary: "This node reads its TLS files and cluster secrets again (extension).",
        params: &[],
        result: (Ty::Object, "{\"ok\": true, \"reloaded\": [what]}"),
        access: Access::Tag("sys.node"),
        errors: &[ERR_PERMISSION_DENIED, ERR_INTERNAL],
    },
    Method {
        name: "sys.backup.begin",
        summary: "Takes an online backup, kept with the connection (extension).",
        params: &[],
        result: (
            Ty::Object,
            "{\"index\", \"bytes\", \"sha256\", \"cluster\", \"format\"}",
        ),
        access: Access::Tag("sys.backup"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sys.backup.read",
        summary: "A piece of the connection's backup, in base64 (extension).",
        params: &[
            opt("offset", Ty::Integer, "0", "byte offset"),
            opt("length", Ty::Integer, "1048576", "bytes, at most 4194304"),
        ],
        result: (Ty::Object, "{\"offset\", \"data\", \"eof\"}"),
        access: Access::Tag("sys.backup"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sys.session.list",
        summary: "Sessions cluster-wide, grouped by user.",
        params: LIST,
        result: (
            Ty::Array,
            "[{\"user\", \"n\", \"sessions\": [{\"connid\", \"nodeid\", \"remoteAddress\", \"creationTime\", \"protocol\"}]}]",
        ),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sys.session.count",
        summary: "How many sessions, by user prefix.",
        params: COUNT,
        result: (Ty::Object, "{\"count\"}, or one entry per subprefix"),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sys.session.kick",
        summary: "Closes every session whose connid starts with the given one.",
        params: &[req("connid", Ty::String, "at least 16 characters")],
        result: (Ty::Object, "{\"kicked\": N}"),
        access: Access::Tag("the user owning each session"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sys.session.reload",
        summary: "The matched sessions read their user data again.",
        params: &[req("connid", Ty::String, "at least 16 characters")],
        result: (Ty::Object, "{\"reloaded\": N}"),
        access: Access::Tag("the user owning each session"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    // user
    Method {
        name: "user.create",
        summary: "Creates a user: no tags, maxsessions 50, enabled.",
        params: &[
            req("user", Ty::String, "3..500 characters, a valid path"),
            req("pass", Ty::String, "4..500 characters"),
        ],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_USER_EXISTS],
    },
    Method {
        name: "user.delete",
        summary: "Deletes a user.",
        params: &[USER],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.rename",
        summary: "Renames a user, atomically.",
        params: &[USER, req("new", Ty::String, "the new name")],
        result: OK,
        access: Access::Tag("both names"),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER, ERR_USER_EXISTS],
    },
    Method {
        name: "user.list",
        summary: "Users under a prefix, with tags, templates, lists and limits.",
        params: LIST,
        result: (
            Ty::Array,
            "[{\"user\", \"tags\", \"templates\", \"whitelist\", \"blacklist\", \"maxsessions\", \"disabled\", \"createdAt\"}]",
        ),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "user.count",
        summary: "How many users under a prefix.",
        params: COUNT,
        result: (Ty::Object, "{\"count\"}, or one entry per subprefix"),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "user.setTags",
        summary: "Merges tags into the user's map at a prefix.",
        params: &[
            USER,
            req("prefix", Ty::String, "where the tags apply"),
            req("tags", Ty::Object, "tag name to JSON value"),
        ],
        result: OK,
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.delTags",
        summary: "Removes tags from the user's map at a prefix.",
        params: &[
            USER,
            req("prefix", Ty::String, "where the tags apply"),
            req("tags", Ty::Array, "tag names"),
        ],
        result: OK,
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.getTags",
        summary: "The user's tag maps by prefix.",
        params: &[USER],
        result: (Ty::Object, "{\"tags\": {prefix: {tag: value}}}"),
        access: Access::Tag("the target user (allowed on oneself)"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "user.getEffectiveTags",
        summary: "The tags in force for the user at a prefix, templates included.",
        params: &[USER, req("prefix", Ty::String, "the path")],
        result: (Ty::Object, "{\"tags\": {tag: value}}"),
        access: Access::Tag("the target user (allowed on oneself)"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "user.setPass",
        summary: "Sets the user's password.",
        params: &[USER, req("pass", Ty::String, "4..500 characters")],
        result: OK,
        access: Access::Tag("the target user (allowed on oneself unless @user.setPass is false)"),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.addTemplate",
        summary: "Adds a template (another user whose tags apply under the user's own).",
        params: &[USER, req("template", Ty::String, "the template user")],
        result: OK,
        access: Access::Tag("the target user, and @user.useTemplate at the template"),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.delTemplate",
        summary: "Removes a template.",
        params: &[USER, req("template", Ty::String, "the template user")],
        result: OK,
        access: Access::Tag("the target user, and @user.useTemplate at the template"),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.addWhitelist",
        summary: "Adds a regexp a login's ip:port must match.",
        params: &[USER, req("ip", Ty::String, "a regexp matched against ip:port")],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.delWhitelist",
        summary: "Removes a whitelist regexp.",
        params: &[USER, req("ip", Ty::String, "the regexp")],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.addBlacklist",
        summary: "Adds a regexp that refuses a login from a matching ip:port.",
        params: &[USER, req("ip", Ty::String, "a regexp matched against ip:port")],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.delBlacklist",
        summary: "Removes a blacklist regexp.",
        params: &[USER, req("ip", Ty::String, "the regexp")],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.setMaxSessions",
        summary: "Sets how many sessions the user may hold cluster-wide.",
        params: &[USER, req("maxsessions", Ty::Integer, "0: no limit")],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    Method {
        name: "user.setDisabled",
        summary: "Disables or enables the user's logins.",
        params: &[USER, req("disabled", Ty::Boolean, "true refuses logins")],
        result: OK,
        access: Access::Tag(TARGET_USER),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_USER],
    },
    // pipe
    Method {
        name: "pipe.create",
        summary: "Creates a bounded mailbox owned by this connection.",
        params: &[opt(
            "len",
            Ty::Integer,
            "1000",
            "messages it holds; <= 0: 1000; at most 100000",
        )],
        result: (Ty::Object, "{\"pipeid\"}"),
        access: Access::Anyone,
        errors: &[],
    },
    Method {
        name: "pipe.write",
        summary: "Writes to any pipe by id, from any node; a full pipe drops and counts.",
        params: &[
            PIPEID,
            req("msg", Ty::Any, "the message"),
            opt(
                "multi",
                Ty::Boolean,
                "false",
                "msg is an array written element by element",
            ),
        ],
        result: OK,
        access: Access::Anyone,
        errors: &[ERR_INVALID_PIPE],
    },
    Method {
        name: "pipe.read",
        summary: "Reads up to max messages of the connection's own pipe, waiting for one.",
        params: &[
            PIPEID,
            opt("max", Ty::Integer, "10", "at most this many messages"),
            may("timeout", Ty::Number, "seconds to wait; none: for ever"),
        ],
        result: (
            Ty::Object,
            "{\"msgs\": [{\"msg\", \"count\"}], \"waiting\", \"drops\"}",
        ),
        access: Access::Owner("the pipe's owner"),
        errors: &[ERR_INVALID_PIPE],
    },
    Method {
        name: "pipe.close",
        summary: "Closes the connection's own pipe.",
        params: &[PIPEID],
        result: OK,
        access: Access::Owner("the pipe's owner"),
        errors: &[ERR_INVALID_PIPE],
    },
    // topic
    Method {
        name: "topic.sub",
        summary: "Subscribes a pipe to a topic (x.* matches x and below).",
        params: &[PIPEID, req("topic", Ty::String, "the topic or pattern")],
        result: OK,
        access: Access::Tag("topic"),
        errors: &[ERR_PERMISSION_DENIED, ERR_INVALID_PIPE],
    },
    Method {
        name: "topic.unsub",
        summary: "Unsubscribes a pipe from a topic.",
        params: &[PIPEID, req("topic", Ty::String, "the topic or pattern")],
        result: OK,
        access: Access::Anyone,
        errors: &[ERR_INVALID_PIPE],
    },
    Method {
        name: "topic.pub",
        summary: "Publishes {topic, msg} to every subscribed pipe, cluster-wide.",
        params: &[
            req("topic", Ty::String, "the topic"),
            req("msg", Ty::Any, "the message"),
        ],
        result: (Ty::Object, "{\"ok\": true, \"sent\": pipes reached}"),
        access: Access::Tag("topic"),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "topic.list",
        summary: "Topics under a prefix with their subscriber counts.",
        params: LIST,
        result: (Ty::Array, "[{\"topic\", \"subscribers\"}]"),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "topic.count",
        summary: "How many topics under a prefix.",
        params: COUNT,
        result: (Ty::Object, "{\"count\"}, or one entry per subprefix"),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    // sync
    Method {
        name: "sync.lock",
        summary: "Takes a lock for this connection; with wait, queues in ticket order.",
        params: &[
            LOCK,
            opt(
                "wait",
                Ty::Integer,
                "0",
                "milliseconds to wait, up to 864000000; 0: try once",
            ),
        ],
        result: (
            Ty::Object,
            "{\"ok\": true, \"token\": N}, and \"ticket\" with wait",
        ),
        access: Access::Tag("lock"),
        errors: &[ERR_PERMISSION_DENIED, ERR_LOCK_NOT_OWNED],
    },
    Method {
        name: "sync.unlock",
        summary: "Releases a lock this connection holds.",
        params: &[LOCK],
        result: OK,
        access: Access::Anyone,
        errors: &[ERR_LOCK_NOT_OWNED],
    },
    Method {
        name: "sync.list",
        summary: "Locks under a prefix, their owners and waiters.",
        params: LIST,
        result: (Ty::Array, "[{\"id\", \"owner\", \"waiters\"?}]"),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "sync.count",
        summary: "How many locks under a prefix.",
        params: COUNT,
        result: (Ty::Object, "{\"count\"}, or one entry per subprefix"),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    // task
    Method {
        name: "task.push",
        summary: "Queues a task for a worker and answers with the worker's answer.",
        params: &[
            req("method", Ty::String, "a.b.name: path a.b., method name"),
            req("params", Ty::Any, "the task's params"),
            opt("prio", Ty::Integer, "0", "higher is pulled first"),
            opt("ttl", Ty::Integer, "5", "rejects and lost pullers allowed"),
            may("timeout", Ty::Number, "seconds (default 10 days)"),
            opt("detach", Ty::Boolean, "false", "answer ok at once"),
        ],
        result: (Ty::Any, "the worker's result, or its error as the error"),
        access: Access::Tag("method"),
        errors: &[
            ERR_PERMISSION_DENIED,
            ERR_TIMEOUT,
            ERR_CANCEL,
            ERR_TTL_EXPIRED,
        ],
    },
    Method {
        name: "task.pull",
        summary: "Takes the waiting task of a path with the highest prio, oldest first.",
        params: &[
            req("prefix", Ty::String, "the task path (a trailing . is added)"),
            may("timeout", Ty::Number, "seconds (default 10 days)"),
        ],
        result: (
            Ty::Object,
            "{\"taskid\", \"path\", \"method\", \"params\", \"tags\", \"prio\", \"detach\", \"user\", \"ttl\", \"creationTime\", \"deadLine\"}",
        ),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED, ERR_TIMEOUT, ERR_CANCEL],
    },
    Method {
        name: "task.result",
        summary: "Ends a task this connection works on with a result.",
        params: &[TASKID, req("result", Ty::Any, "the answer to the pusher")],
        result: OK,
        access: Access::Owner("the task's worker"),
        errors: &[ERR_INVALID_TASK],
    },
    Method {
        name: "task.error",
        summary: "Ends a task this connection works on with an error.",
        params: &[
            TASKID,
            may("code", Ty::Integer, "the error code"),
            may("message", Ty::String, "the error message"),
            may("data", Ty::Any, "the error data"),
        ],
        result: OK,
        access: Access::Owner("the task's worker"),
        errors: &[ERR_INVALID_TASK],
    },
    Method {
        name: "task.reject",
        summary: "Puts a task back to waiting, ttl - 1.",
        params: &[TASKID],
        result: OK,
        access: Access::Owner("the task's worker"),
        errors: &[ERR_INVALID_TASK],
    },
    Method {
        name: "task.cancel",
        summary: "Cancels this connection's own pending push or pull by its request id.",
        params: &[
            may(
                "id",
                Ty::Any,
                "the JSON-RPC id of the push or pull; id or taskid is required",
            ),
            may("taskid", Ty::Any, "the same id, under the name taskid"),
        ],
        result: OK,
        access: Access::Anyone,
        errors: &[ERR_INVALID_TASK],
    },
    Method {
        name: "task.list",
        summary: "Tasks and waiting pulls under a prefix.",
        params: LIST,
        result: (
            Ty::Array,
            "[{\"id\", \"state\", \"path\", \"priority\", \"ttl\", \"detached\", \"user\", \"method\", \"params\", ...}]",
        ),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
    Method {
        name: "task.count",
        summary: "How many tasks and pulls under a prefix.",
        params: COUNT,
        result: (
            Ty::Object,
            "{\"count\", \"pushCount\", \"pullCount\"}, or one entry per subprefix",
        ),
        access: Access::Tag(ON_PREFIX),
        errors: &[ERR_PERMISSION_DENIED],
    },
];

/// The method named `name`, if this node answers it (every request asks: a map, built
/// once).
pub fn find(name: &str) -> Option<&'static Method> {
    static BY_NAME: std::sync::OnceLock<std::collections::HashMap<&'static str, &'static Method>> =
        std::sync::OnceLock::new();
    BY_NAME
        .get_or_init(|| METHODS.iter().map(|m| (m.name, m)).collect())
        .get(name)
        .copied()
}

/// Every error code and its text, in code order (the API's error table).
pub const ERRORS: &[i64] = &[
    nexus_core::rpc::ERR_PARSE,
    ERR_INVALID_REQUEST,
    nexus_core::rpc::ERR_METHOD_NOT_FOUND,
    ERR_INVALID_PARAMS,
    ERR_INTERNAL,
    ERR_TIMEOUT,
    ERR_CANCEL,
    ERR_INVALID_TASK,
    ERR_INVALID_PIPE,
    ERR_INVALID_USER,
    ERR_USER_EXISTS,
    ERR_LOCK_NOT_OWNED,
    ERR_PERMISSION_DENIED,
    ERR_TTL_EXPIRED,
];
