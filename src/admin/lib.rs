//! The admin CLI: `nexus [--url URL] [--user U] [--password-stdin] [--json] GROUP COMMAND ...`.
//! Every command is one or a few JSON-RPC calls to any node, so it needs nothing a client
//! could not do, and permissions are the node's.

mod backup;
pub mod contexts;
mod output;
mod passwords;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

pub use nexus_client::{CallError, Client};

/// `sys.login` refused the credentials (Nexus 1.9's code).
const ERR_PERMISSION_DENIED: i64 = -32010;

/// Where the CLI connects and as whom: flags, else `NEXUS_*` environment variables, else
/// the config file.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Node to talk to: ws://host:port/, wss://host:port/, tcp://host:port or
    /// ssl://host:port. Several (repeat, or comma-separated) are tried in order until one
    /// answers [default: ws://127.0.0.1:8080/]
    #[arg(long, env = "NEXUS_URL", value_delimiter = ',')]
    pub url: Vec<String>,
    /// A named context of the config file (`nexus context add`) to take the URLs, CA and
    /// user from [default: the file's current context]
    #[arg(long, env = "NEXUS_CONTEXT")]
    pub context: Option<String>,
    /// PEM file with the certificate authority (or the self-signed certificate) that
    /// wss:// and ssl:// nodes are checked against [default: the system's roots]
    #[arg(long, env = "NEXUS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// User to log in as (no login when neither flag, variable nor config file names one).
    #[arg(long, env = "NEXUS_USER")]
    pub user: Option<String>,
    /// Read the password of --user from the first line of standard input (else from
    /// NEXUS_PASSWORD, the config file, or asked on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
    /// Refused: a password on the command line shows in `ps`.
    #[arg(long, hide = true)]
    pub password: Option<String>,
    /// Print answers as JSON (one value per command) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// TOML file with `url`, `user`, `password` and `ca` [default: ~/.config/nexus/cli.toml]
    #[arg(long, env = "NEXUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the node at each step.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Run a list, count, status or health command again every SECS seconds: `-w` for
    /// every 2 s, `--watch=5` for another interval
    #[arg(
        short = 'w',
        long,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "2"
    )]
    pub watch: Option<f64>,
    /// With --watch: stop after this many refreshes [default: until interrupted]
    #[arg(long, value_name = "N", requires = "watch")]
    pub watch_count: Option<u64>,
}

/// Listing options shared by the `list` commands.
#[derive(Debug, Clone, Args)]
pub struct Listing {
    /// Only names under this prefix.
    #[arg(default_value = "")]
    pub prefix: String,
    /// At most this many entries (the node's default when absent).
    #[arg(long)]
    pub limit: Option<i64>,
    #[arg(long)]
    pub skip: Option<i64>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum UserCmd {
    /// Users under a prefix, with their tags.
    List(Listing),
    /// How many users are under a prefix.
    Count {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// A new user; its password from --stdin, NEXUS_NEW_PASSWORD, or asked.
    Create {
        user: String,
        /// Read the password from standard input (after the login password, if that is
        /// read from there too).
        #[arg(long)]
        stdin: bool,
        /// Refused: a password on the command line shows in `ps`.
        #[arg(hide = true)]
        password: Option<String>,
    },
    /// Deletes a user (its open sessions stay until kicked).
    Delete { user: String },
    /// Gives a user a new name (its sessions keep working).
    Rename { user: String, new: String },
    /// Sets a user's password, from --stdin, NEXUS_NEW_PASSWORD, or asked.
    Passwd {
        user: String,
        /// Read the password from standard input (after the login password, if that is
        /// read from there too).
        #[arg(long)]
        stdin: bool,
        /// Refused: a password on the command line shows in `ps`.
        #[arg(hide = true)]
        password: Option<String>,
    },
    /// A user's own tags, by prefix.
    Tags { user: String },
    /// The tags in force for a user at a path (templates and inheritance applied).
    EffectiveTags {
        user: String,
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Merges tags (a JSON object, e.g. '{"@task.pull": true}') into a prefix's tags.
    SetTags {
        user: String,
        prefix: String,
        tags: String,
    },
    /// Removes tags by name from a prefix.
    DelTags {
        user: String,
        prefix: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Makes a user inherit another user's tags.
    AddTemplate { user: String, template: String },
    /// Stops inheriting a template's tags.
    DelTemplate { user: String, template: String },
    /// Always allows logins from addresses (`ip:port`) matching this regexp, even when
    /// blacklisted.
    AddWhitelist { user: String, ip: String },
    /// Removes a whitelist pattern.
    DelWhitelist { user: String, ip: String },
    /// Refuses logins from addresses (`ip:port`) matching this regexp, unless whitelisted.
    AddBlacklist { user: String, ip: String },
    /// Removes a blacklist pattern.
    DelBlacklist { user: String, ip: String },
    /// Most sessions the user may have at once (0: unlimited).
    MaxSessions { user: String, max: i64 },
    /// Refuses the user's logins (open sessions stay until kicked).
    Disable { user: String },
    /// Allows the user's logins again.
    Enable { user: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum SessionCmd {
    /// Sessions of users under a prefix.
    List(Listing),
    /// How many sessions users under a prefix have.
    Count {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Closes the sessions whose connid starts with CONNID (16 characters at least).
    Kick { connid: String },
    /// Makes the sessions whose connid starts with CONNID reload their user's tags.
    Reload { connid: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ListCmd {
    /// Entries under a prefix.
    List(Listing),
    /// How many entries are under a prefix.
    Count {
        #[arg(default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCmd {
    /// The cluster's nodes as the connected node sees them.
    List {
        /// Members that are down too.
        #[arg(long)]
        all: bool,
    },
    /// Has the connected node read its TLS certificate and cluster secrets again (as
    /// SIGHUP does).
    Reload,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCmd {
    /// Members, their roles and health, and the leader.
    Status,
    /// Removes a member (by raft id) that is gone for good.
    Remove { raft_id: u64 },
    /// Prints a new random cluster secret (32 random bytes, base64url); connects to nothing.
    Secret,
}

/// The admin groups, flattened into the binary's top-level commands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCmd {
    /// Users, passwords, tags, templates, address lists.
    #[command(subcommand)]
    User(UserCmd),
    /// Open sessions: list, count, kick, reload.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Tasks and waiting pulls.
    #[command(subcommand)]
    Task(ListCmd),
    /// Locks held, each with its holder and its waiters in the order they are granted.
    #[command(subcommand)]
    Lock(ListCmd),
    /// Topics with subscribers.
    #[command(subcommand)]
    Topic(ListCmd),
    /// The cluster's nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Whether the cluster is healthy: every member ready and one leader. Exits 0 when it
    /// is, 1 when it is not (with what is wrong), 2 when no node answered.
    Health,
    /// Named contexts: the clusters this CLI talks to (kept in the config file).
    #[command(subcommand)]
    Context(contexts::ContextCmd),
    /// Takes an online backup through the connected node and writes it to FILE: the
    /// cluster's state at one committed index (printed), which `nexus restore` starts a
    /// new cluster from. Writes go on meanwhile.
    Backup {
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        overwrite: bool,
    },
    /// Any method: `nexus call sys.ping` or `nexus call user.list '{"prefix": ""}'`.
    Call {
        method: String,
        /// JSON params [default: {}]
        params: Option<String>,
    },
    /// Publishes a message (JSON, or else taken as a string) on a topic.
    Pub { topic: String, msg: String },
    /// Prints what is published on a topic (wildcards: `a.*`), one message per line.
    Sub {
        topic: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
    },
}

/// `secs` as a duration, refusing what is not a number of seconds.
fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow!("{flag} must be a number of seconds, not {secs}"))
}

/// The cluster is not healthy: `nexus health` exits 1 with this line.
#[derive(Debug)]
pub struct Unhealthy(pub String);

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unhealthy: {}", self.0)
    }
}

impl std::error::Error for Unhealthy {}

/// Whether `cmd` only reads, so that `--watch` may run it again and again.
fn watchable(cmd: &AdminCmd) -> bool {
    matches!(
        cmd,
        AdminCmd::User(UserCmd::List(_) | UserCmd::Count { .. })
            | AdminCmd::Session(SessionCmd::List(_) | SessionCmd::Count { .. })
            | AdminCmd::Task(_)
            | AdminCmd::Lock(_)
            | AdminCmd::Topic(_)
            | AdminCmd::Node(NodeCmd::List { .. })
            | AdminCmd::Cluster(ClusterCmd::Status)
            | AdminCmd::Health
    )
}

/// Runs one admin command; errors are one line for the user.
pub fn run(conn: Connection, cmd: AdminCmd) -> anyhow::Result<()> {
    let json_out = conn.json;
    let print = |v: &Value| {
        if json_out {
            println!("{v}");
        } else {
            print!("{}", output::human(v));
        }
    };
    if let AdminCmd::Context(c) = cmd {
        print(&contexts::run(conn.config.as_deref(), c)?);
        return Ok(());
    }
    let timeout = seconds("--timeout", conn.timeout)?.max(Duration::from_millis(100));
    let watch = match conn.watch {
        Some(secs) if !watchable(&cmd) => {
            bail!("--watch {secs} works with list, count, status and health commands only")
        }
        Some(secs) => Some(seconds("--watch", secs)?.max(Duration::from_millis(100))),
        None => None,
    };
    let refreshes = conn.watch_count;
    let mut stdin = passwords::Stdin::default();
    let mut client = connect(conn, timeout, &mut stdin)?;
    let Some(every) = watch else {
        let answer = one(&mut client, cmd, json_out, timeout, &mut stdin)?;
        if !answer.is_null() {
            print(&answer);
        }
        return Ok(());
    };
    // Watching: the command again every `every`, on a cleared screen when it is a
    // terminal, else one frame after another under a time line.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut shown = 0u64;
    loop {
        if terminal && !json_out {
            print!("\x1b[2J\x1b[H");
        }
        if !json_out {
            println!("every {:.1} s, at {}", every.as_secs_f64(), clock());
        }
        match one(&mut client, cmd.clone(), json_out, timeout, &mut stdin) {
            Ok(answer) if answer.is_null() => {}
            Ok(answer) => print(&answer),
            // An unhealthy cluster is what a watch is for: say so and go on.
            Err(e) if e.downcast_ref::<Unhealthy>().is_some() => println!("{e}"),
            Err(e) => return Err(e),
        }
        shown += 1;
        if refreshes.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

/// The time of day, UTC, for the watch header.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// One command's answer (`Null`: it printed what it had to say itself).
fn one(
    client: &mut Client,
    cmd: AdminCmd,
    json_out: bool,
    timeout: Duration,
    stdin: &mut passwords::Stdin,
) -> anyhow::Result<Value> {
    Ok(match cmd {
        AdminCmd::User(c) => user(client, c, stdin)?,
        AdminCmd::Session(c) => session(client, c, json_out)?,
        AdminCmd::Task(c) => listing(client, "task", c)?,
        AdminCmd::Lock(c @ ListCmd::List(_)) if !json_out => {
            one_row_per_party(&listing(client, "sync", c)?)
        }
        AdminCmd::Lock(c) => listing(client, "sync", c)?,
        AdminCmd::Topic(c) => listing(client, "topic", c)?,
        AdminCmd::Node(NodeCmd::List { all }) => {
            client.call("sys.node.list", json!({"all": all}))?
        }
        AdminCmd::Node(NodeCmd::Reload) => client.call("sys.node.reload", json!({}))?,
        AdminCmd::Cluster(ClusterCmd::Status) => cluster_status(client, json_out)?,
        AdminCmd::Health => health(client, json_out)?,
        // The binary answers these without connecting.
        AdminCmd::Cluster(ClusterCmd::Secret) => bail!("`nexus cluster secret` needs no node"),
        AdminCmd::Context(_) => bail!("`nexus context` needs no node"),
        AdminCmd::Cluster(ClusterCmd::Remove { raft_id }) => {
            client.call("sys.node.remove", json!({"raftId": raft_id}))?
        }
        AdminCmd::Call { method, params } => {
            let params = match params {
                Some(text) => serde_json::from_str(&text)
                    .with_context(|| format!("params are not JSON: {text}"))?,
                None => json!({}),
            };
            client.call(&method, params)?
        }
        AdminCmd::Pub { topic, msg } => {
            // JSON when it parses, a plain string otherwise: `nexus pub t hello` works.
            let msg = serde_json::from_str(&msg).unwrap_or(Value::String(msg));
            client.call("topic.pub", json!({"topic": topic, "msg": msg}))?
        }
        AdminCmd::Backup { file, overwrite } => backup::take(client, &file, overwrite)?,
        AdminCmd::Sub {
            topic,
            count,
            seconds,
        } => {
            subscribe(client, &topic, count, seconds, timeout, json_out)?;
            Value::Null
        }
    })
}

/// Connects to the first of the URLs that answers (and logs in there): flags or
/// `NEXUS_URL`, else the context in force, else the file's `url`, else the default.
fn connect(
    conn: Connection,
    timeout: Duration,
    stdin: &mut passwords::Stdin,
) -> anyhow::Result<Client> {
    if conn.password.is_some() {
        return Err(passwords::refuse_argv("--password"));
    }
    let file = contexts::read(conn.config.as_deref())?;
    let context = contexts::in_force(&file, conn.context.as_deref())?.cloned();
    let urls: Vec<String> = if !conn.url.is_empty() {
        conn.url
    } else {
        context
            .as_ref()
            .map(|c| c.url.clone())
            .or(file.url.clone())
            .unwrap_or_else(|| "ws://127.0.0.1:8080/".to_string())
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect()
    };
    // A context names its own cluster: the file's top-level user and password belong to
    // the top-level URL and are never sent to a context's nodes.
    let (file_user, file_password) = match &context {
        Some(_) => (None, None),
        None => (file.user, file.password),
    };
    let user = conn
        .user
        .or(context.as_ref().and_then(|c| c.user.clone()))
        .or(file_user);
    let mut password = if conn.password_stdin {
        Some(stdin.line("the login password")?)
    } else {
        std::env::var("NEXUS_PASSWORD").ok().or(file_password)
    };
    let ca = conn.ca.or(context.and_then(|c| c.ca)).or(file.ca);
    let opts = nexus_client::Options {
        ca,
        connect_timeout: timeout,
        answer_timeout: timeout,
    };
    let mut failures = Vec::new();
    for url in &urls {
        let mut client = match Client::connect(url, &opts) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{url}: {e:#}"));
                continue;
            }
        };
        if let Some(user) = &user {
            // Asked only once a node answered: a wrong URL is said before any prompt.
            let pass = match &password {
                Some(p) => p.clone(),
                None => {
                    let hint = "use --password-stdin, NEXUS_PASSWORD or the config file";
                    let p = passwords::ask(&format!("Password for {user}"), hint)?;
                    password = Some(p.clone());
                    p
                }
            };
            match client.call("sys.login", json!({"user": user, "pass": pass})) {
                Ok(_) => {}
                // Refused credentials are refused by every node: no point trying the next.
                // Anything else (no leader, a node cut off) is that node's trouble.
                Err(CallError::Rpc(e)) if e.code == ERR_PERMISSION_DENIED => {
                    return Err(
                        anyhow::Error::new(CallError::Rpc(e)).context(format!("login as {user}"))
                    )
                }
                Err(e) => {
                    failures.push(format!("{url}: login: {e}"));
                    continue;
                }
            }
        }
        return Ok(client);
    }
    match failures.as_slice() {
        [one] => bail!("{one}"),
        _ => bail!("no node answered: {}", failures.join("; ")),
    }
}

fn list_params(l: &Listing) -> Value {
    let mut p = json!({"prefix": l.prefix});
    if let Some(n) = l.limit {
        p["limit"] = n.into();
    }
    if let Some(n) = l.skip {
        p["skip"] = n.into();
    }
    p
}

fn listing(c: &mut Client, namespace: &str, cmd: ListCmd) -> anyhow::Result<Value> {
    match cmd {
        ListCmd::List(l) => Ok(c.call(&format!("{namespace}.list"), list_params(&l))?),
        ListCmd::Count { prefix } => {
            Ok(c.call(&format!("{namespace}.count"), json!({"prefix": prefix}))?)
        }
    }
}

fn session(c: &mut Client, cmd: SessionCmd, json_out: bool) -> anyhow::Result<Value> {
    match cmd {
        SessionCmd::List(l) => {
            let by_user = c.call("sys.session.list", list_params(&l))?;
            Ok(if json_out {
                by_user
            } else {
                one_row_per_session(&by_user)
            })
        }
        SessionCmd::Count { prefix } => Ok(c.call("sys.session.count", json!({"prefix": prefix}))?),
        SessionCmd::Kick { connid } => Ok(c.call("sys.session.kick", json!({"connid": connid}))?),
        SessionCmd::Reload { connid } => {
            Ok(c.call("sys.session.reload", json!({"connid": connid}))?)
        }
    }
}

/// `[{"user", "sessions": [{...}]}]` as `[{"user", ...session}]`.
fn one_row_per_session(by_user: &Value) -> Value {
    let mut rows = Vec::new();
    for entry in by_user.as_array().into_iter().flatten() {
        for session in entry["sessions"].as_array().into_iter().flatten() {
            let mut row = serde_json::Map::new();
            row.insert("user".into(), entry["user"].clone());
            if let Some(fields) = session.as_object() {
                row.extend(fields.clone());
            }
            rows.push(Value::Object(row));
        }
    }
    Value::Array(rows)
}

/// `sync.list`'s `[{"id", "owner", "waiters": [...]}]` as one row for each lock's holder,
/// then one for each of its waiters, in the order they will be granted.
fn one_row_per_party(locks: &Value) -> Value {
    let mut rows = Vec::new();
    for lock in locks.as_array().into_iter().flatten() {
        rows.push(json!({"lock": lock["id"], "place": "holds", "connid": lock["owner"]}));
        for (n, w) in lock["waiters"].as_array().into_iter().flatten().enumerate() {
            rows.push(json!({
                "lock": lock["id"],
                "place": format!("waits {}", n + 1),
                "connid": w["connid"],
                "ticket": w["ticket"],
                "since": w["since"],
            }));
        }
    }
    Value::Array(rows)
}

fn user(c: &mut Client, cmd: UserCmd, stdin: &mut passwords::Stdin) -> anyhow::Result<Value> {
    use UserCmd::*;
    let (method, params) = match cmd {
        List(l) => ("user.list", list_params(&l)),
        Count { prefix } => ("user.count", json!({"prefix": prefix})),
        Create {
            password: Some(_), ..
        }
        | Passwd {
            password: Some(_), ..
        } => return Err(passwords::refuse_argv("a password")),
        Create { user, stdin: s, .. } => {
            let pass = passwords::new_password(&user, s, stdin)?;
            ("user.create", json!({"user": user, "pass": pass}))
        }
        Delete { user } => ("user.delete", json!({"user": user})),
        Rename { user, new } => ("user.rename", json!({"user": user, "new": new})),
        Passwd { user, stdin: s, .. } => {
            let pass = passwords::new_password(&user, s, stdin)?;
            ("user.setPass", json!({"user": user, "pass": pass}))
        }
        Tags { user } => ("user.getTags", json!({"user": user})),
        EffectiveTags { user, prefix } => (
            "user.getEffectiveTags",
            json!({"user": user, "prefix": prefix}),
        ),
        SetTags { user, prefix, tags } => {
            let tags: Value = serde_json::from_str(&tags)
                .with_context(|| format!("tags are not a JSON object: {tags}"))?;
            (
                "user.setTags",
                json!({"user": user, "prefix": prefix, "tags": tags}),
            )
        }
        DelTags { user, prefix, tags } => (
            "user.delTags",
            json!({"user": user, "prefix": prefix, "tags": tags}),
        ),
        AddTemplate { user, template } => (
            "user.addTemplate",
            json!({"user": user, "template": template}),
        ),
        DelTemplate { user, template } => (
            "user.delTemplate",
            json!({"user": user, "template": template}),
        ),
        AddWhitelist { user, ip } => ("user.addWhitelist", json!({"user": user, "ip": ip})),
        DelWhitelist { user, ip } => ("user.delWhitelist", json!({"user": user, "ip": ip})),
        AddBlacklist { user, ip } => ("user.addBlacklist", json!({"user": user, "ip": ip})),
        DelBlacklist { user, ip } => ("user.delBlacklist", json!({"user": user, "ip": ip})),
        MaxSessions { user, max } => (
            "user.setMaxSessions",
            json!({"user": user, "maxsessions": max}),
        ),
        Disable { user } => ("user.setDisabled", json!({"user": user, "disabled": true})),
        Enable { user } => ("user.setDisabled", json!({"user": user, "disabled": false})),
    };
    Ok(c.call(method, params)?)
}

/// Every member as the connected node sees them (down ones too), with what both
/// `cluster status` and `health` sum up from the list.
struct Members {
    list: Vec<Value>,
    leaders: Vec<u64>,
    ready: usize,
}

impl Members {
    fn fetch(c: &mut Client) -> anyhow::Result<Members> {
        let nodes = c.call("sys.node.list", json!({"all": true, "limit": 0}))?;
        let list = nodes.as_array().cloned().unwrap_or_default();
        let leaders = list
            .iter()
            .filter(|n| n["role"] == "leader")
            .filter_map(|n| n["raftId"].as_u64())
            .collect();
        let ready = list.iter().filter(|n| n["status"] == "ready").count();
        Ok(Members {
            list,
            leaders,
            ready,
        })
    }

    /// The leader's raft id, or "none".
    fn leader(&self) -> String {
        self.leaders
            .first()
            .map_or("none".to_string(), |id| id.to_string())
    }
}

/// The members as the connected node sees them, with a summary: for people a table and
/// one line, for scripts `{"leader", "members", "ready", "nodes"}`.
fn cluster_status(c: &mut Client, json_out: bool) -> anyhow::Result<Value> {
    let m = Members::fetch(c)?;
    if json_out {
        return Ok(json!({
            "leader": m.leaders.first(),
            "members": m.list.len(),
            "ready": m.ready,
            "nodes": m.list,
        }));
    }
    let rows: Vec<Value> = m
        .list
        .iter()
        .map(|n| {
            json!({
                "raftId": n["raftId"], "role": n["role"], "status": n["status"],
                "cluster": n["cluster"], "version": n["version"], "clients": n["clients"],
            })
        })
        .collect();
    print!("{}", output::human(&Value::Array(rows)));
    Ok(Value::String(format!(
        "{} members, {} ready, leader {}",
        m.list.len(),
        m.ready,
        m.leader()
    )))
}

/// Healthy: every member is ready and one of them leads. For people one line (and what
/// is wrong); for scripts `{"healthy", "members", "ready", "leader", "problems"}`. An
/// unhealthy cluster is an error (`Unhealthy`) once that is printed.
fn health(c: &mut Client, json_out: bool) -> anyhow::Result<Value> {
    let m = Members::fetch(c)?;
    let mut problems: Vec<String> = m
        .list
        .iter()
        .filter(|n| n["status"] != "ready")
        .map(|n| {
            format!(
                "member {} is {}",
                n["raftId"],
                n["status"].as_str().unwrap_or("unknown")
            )
        })
        .collect();
    if m.leaders.len() != 1 {
        problems.push(format!("{} leaders", m.leaders.len()));
    }
    let summary = format!(
        "{} of {} members ready, leader {}",
        m.ready,
        m.list.len(),
        m.leader()
    );
    if json_out {
        println!(
            "{}",
            json!({
                "healthy": problems.is_empty(),
                "members": m.list.len(),
                "ready": m.ready,
                "leader": m.leaders.first(),
                "problems": problems,
            })
        );
    } else if problems.is_empty() {
        println!("healthy: {summary}");
    }
    if problems.is_empty() {
        return Ok(Value::Null);
    }
    Err(Unhealthy(format!("{summary}; {}", problems.join("; "))).into())
}

/// Subscribes a new pipe to `topic` and prints what arrives until `count` messages or
/// `seconds` have passed (forever when neither is given).
fn subscribe(
    c: &mut Client,
    topic: &str,
    count: Option<u64>,
    seconds: Option<f64>,
    timeout: Duration,
    json_out: bool,
) -> anyhow::Result<()> {
    let pipe = c.call("pipe.create", json!({"len": 10000}))?;
    let pipeid = pipe["pipeid"].clone();
    c.call("topic.sub", json!({"pipeid": pipeid, "topic": topic}))?;
    let until = match seconds {
        Some(s) => Some(Instant::now() + self::seconds("--seconds", s)?),
        None => None,
    };
    // Each read waits at most half the client timeout, so the socket never times out.
    let wait = (timeout / 2).min(Duration::from_secs(1)).as_secs_f64();
    let mut seen = 0;
    loop {
        if count.is_some_and(|n| seen >= n) || until.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        // A read that times out answers an empty list.
        let answer = c.call(
            "pipe.read",
            json!({"pipeid": pipeid, "max": 100, "timeout": wait}),
        )?;
        if let Some(drops) = answer["drops"].as_u64().filter(|d| *d > 0) {
            eprintln!("({drops} messages dropped: the pipe was full)");
        }
        for m in answer["msgs"].as_array().into_iter().flatten() {
            if count.is_some_and(|n| seen >= n) {
                break;
            }
            let envelope = &m["msg"];
            if json_out {
                println!("{envelope}");
            } else {
                println!(
                    "{}  {}",
                    envelope["topic"].as_str().unwrap_or_default(),
                    envelope["msg"]
                );
            }
            seen += 1;
        }
    }
}
