//! `nexus chaos`: starts its own cluster from this binary, drives a mixed workload from
//! clients on every node while faults are injected on a seeded schedule, records a
//! history and checks it against the promises of docs/api.md ("In a cluster") and
//! docs/reliability.md.

mod check;
mod client;
mod faults;
mod history;
mod netns;
mod nodes;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use check::Report;
use client::Answer;
use faults::{FaultKind, Schedule, Status};
use history::{Kind, Record, Recorder};
use nodes::{short, Cluster};
use workload::{Ctx, Mix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetnsMode {
    /// Use network namespaces when running as root and they can be created.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Nodes in the cluster the run starts.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How long the workload runs (e.g. 60s, 10m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of the fault schedule and the clients' choices (random when not given; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault kinds to draw from (isolation needs network namespaces: root).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,kill-leader,pause,pause-leader,isolate,isolate-leader"
    )]
    pub faults: Vec<FaultKind>,
    /// Mean quiet time between two faults (each fault waits 0.5–1.5 times this).
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub fault_every: Duration,
    /// Clients per node of each workload: users (create + setTags), tasks (pushers and
    /// as many workers), locks, topics (publishers and as many subscribers).
    #[arg(long, default_value = "users=1,tasks=2,locks=2,topics=1")]
    pub mix: Mix,
    /// Pause of a client between two operations.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub think: Duration,
    /// A request without an answer this long is a hang (a violation).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub hang_after: Duration,
    /// Where node data, logs and the history go (default: ./chaos-runs/<time>-seed<seed>).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = NetnsMode::Auto)]
    pub netns: NetnsMode,
    /// Keep the nodes' data dirs after a run without violations.
    #[arg(long)]
    pub keep_data: bool,
    /// Print the fault schedule this seed gives (as if every fault healed at once) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Only check the history of an earlier run (its history.jsonl).
    #[arg(long, value_name = "HISTORY")]
    pub check: Option<PathBuf>,
}

/// `90`, `90s`, `1500ms`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unit must be ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Runs (or re-checks) and tells whether no violation was found.
pub fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    if let Some(path) = &args.check {
        let records = history::load(path)?;
        let report = check::check(&records);
        print_report(&report, None);
        return Ok(report.violations.is_empty());
    }
    anyhow::ensure!(
        args.nodes >= 3,
        "--nodes must be at least 3 (faults need a majority left)"
    );
    let seed = args.seed.unwrap_or_else(|| rand::random::<u16>() as u64);
    if args.dry_run {
        print_schedule(&args, seed);
        return Ok(true);
    }
    let dir = args.dir.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("chaos-runs/{now}-seed{seed}"))
    });
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "nexus chaos: {} nodes, {:?}, seed {seed}, mix {:?}; history and logs in {}",
        args.nodes,
        args.duration,
        args.mix,
        dir.display()
    );
    let net = network(args.netns, args.nodes)?;
    let mut kinds = args.faults.clone();
    if net.is_none() && kinds.iter().any(|k| k.needs_netns()) {
        eprintln!(
            "  isolation faults skipped: they need network namespaces (run as root, --netns on)"
        );
        kinds.retain(|k| !k.needs_netns());
    }
    let exe = std::env::current_exe()?;
    let faultfs = kinds.iter().any(|k| k.needs_faultfs());
    let mut cluster = Cluster::new(&exe, &dir, args.nodes, net, faultfs)?;
    for i in 0..args.nodes {
        cluster.start(i)?;
    }
    if !cluster.wait_healthy(Duration::from_secs(90)) {
        anyhow::bail!(
            "the cluster did not become healthy in 90 s; logs in {}",
            dir.display()
        );
    }
    eprintln!(
        "  cluster ready{}; faults: {}",
        if cluster.can_isolate() {
            " (network namespaces)"
        } else {
            " (loopback)"
        },
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let rec = Recorder::new(Some(&dir.join("history.jsonl")))?;
    let ctx = Arc::new(Ctx {
        rec: rec.clone(),
        addrs: cluster.nodes.iter().map(|n| n.client_addr()).collect(),
        hang_after: args.hang_after,
        think: args.think,
        stop_producers: AtomicBool::new(false),
        stop_consumers: AtomicBool::new(false),
    });
    let threads = workload::spawn(&ctx, args.mix, args.nodes, seed);
    let status = Arc::new(Status::default());
    let done = Arc::new(AtomicBool::new(false));
    let progress = progress(rec.clone(), status.clone(), done.clone());

    let start = Instant::now();
    let mut schedule = Schedule::new(seed, kinds, args.nodes, args.fault_every);
    let faults_until = start + args.duration.saturating_sub(Duration::from_secs(5));
    let injected = faults::inject(&mut cluster, &mut schedule, &rec, faults_until, &status);
    if let Some(rest) = (start + args.duration).checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    ctx.stop_producers.store(true, Ordering::Relaxed);
    let (producers, consumers): (Vec<_>, Vec<_>) = threads.into_iter().partition(|(p, _)| *p);
    for (_, t) in producers {
        let _ = t.join();
    }
    cluster.wait_healthy(Duration::from_secs(30));
    ctx.stop_consumers.store(true, Ordering::Relaxed);
    for (_, t) in consumers {
        let _ = t.join();
    }
    converge(&cluster, &rec);
    done.store(true, Ordering::Relaxed);
    let _ = progress.join();
    cluster.stop_all(Duration::from_secs(10));
    cluster.unmount();
    injected?;

    let report = check::check(&rec.take_records());
    let summary = print_report(&report, Some(&status));
    std::fs::write(dir.join("summary.txt"), summary)?;
    let clean = report.violations.is_empty();
    if clean && !args.keep_data {
        for i in 0..args.nodes {
            for data in ["data", "disk", "backing"] {
                let _ = std::fs::remove_dir_all(dir.join(format!("n{i}/{data}")));
            }
        }
    }
    eprintln!("  history: {}", dir.join("history.jsonl").display());
    Ok(clean)
}

/// The schedule's faults with their planned start times (real runs shift them by the time
/// each recovery takes).
fn print_schedule(args: &ChaosArgs, seed: u64) {
    let mut schedule = Schedule::new(seed, args.faults.clone(), args.nodes, args.fault_every);
    let mut t = Duration::ZERO;
    let end = args.duration.saturating_sub(Duration::from_secs(5));
    while let Some(p) = schedule.next_fault() {
        if t + p.gap + p.hold > end {
            break;
        }
        t += p.gap;
        let target = if p.kind.name().ends_with("leader") {
            "the leader".to_string()
        } else {
            format!("n{}", p.node)
        };
        println!(
            "{:>7.1}s  {:<15} {target:<11} for {:.1}s",
            t.as_secs_f64(),
            p.kind.name(),
            p.hold.as_secs_f64()
        );
        t += p.hold;
    }
}

fn network(mode: NetnsMode, nodes: usize) -> anyhow::Result<Option<netns::Netns>> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match mode {
        NetnsMode::Off => Ok(None),
        NetnsMode::On => Ok(Some(netns::Netns::create(nodes)?)),
        NetnsMode::Auto if !root => Ok(None),
        NetnsMode::Auto => match netns::Netns::create(nodes) {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                eprintln!("  network namespaces unavailable ({e:#}); running on loopback");
                Ok(None)
            }
        },
    }
}

/// A progress line every 5 seconds.
fn progress(
    rec: Recorder,
    status: Arc<Status>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = Instant::now();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() < Duration::from_secs(5) {
                continue;
            }
            last = Instant::now();
            let current = status.current.lock().unwrap().clone();
            eprintln!(
                "  [{:>5.1}s] {} events, {} faults done{}",
                rec.now(),
                rec.len(),
                status.injected.lock().unwrap().len(),
                if current.is_empty() {
                    String::new()
                } else {
                    format!(", now: {current}")
                }
            );
        }
    })
}

/// After the workload: every node must list the same state, with no trace left of the
/// clients (they all disconnected): no locks, tasks, subscriptions or their sessions.
fn converge(cluster: &Cluster, rec: &Recorder) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut problem;
    loop {
        match compare_nodes(cluster) {
            Ok(users) => {
                rec.push(final_record(
                    Kind::Ok,
                    json!({"users": users}),
                    Value::Null,
                    rec.now(),
                ));
                return;
            }
            Err(why) => problem = why,
        }
        if Instant::now() > deadline {
            rec.push(final_record(
                Kind::Fail,
                Value::Null,
                json!(problem),
                rec.now(),
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn final_record(kind: Kind, value: Value, result: Value, time: f64) -> Record {
    Record {
        kind,
        time,
        invoke: time,
        client: "harness".into(),
        node: 0,
        op: "final.state".into(),
        value,
        result,
    }
}

/// The listings of every node, compared; Ok(users of the first node) when they agree and
/// hold nothing of the finished clients.
fn compare_nodes(cluster: &Cluster) -> Result<Value, String> {
    let timeout = Duration::from_secs(5);
    let mut clients = Vec::new();
    for n in &cluster.nodes {
        clients.push(
            n.root(timeout)
                .map_err(|e| format!("n{}: {e:#}", n.index))?,
        );
    }
    let queries = [
        ("users", "user.list", json!({"prefix": "chaos", "limit": 0})),
        ("locks", "sync.list", json!({"prefix": "", "limit": 0})),
        ("tasks", "task.list", json!({"prefix": "chaos", "limit": 0})),
        ("topics", "topic.list", json!({"prefix": "", "limit": 0})),
        (
            "sessions",
            "sys.session.list",
            json!({"prefix": "", "limit": 0}),
        ),
        ("nodes", "sys.node.list", json!({})),
    ];
    let mut states = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut state = serde_json::Map::new();
        for (key, method, params) in &queries {
            match c.call(method, params.clone(), timeout) {
                Answer::Ok(v) => state.insert(key.to_string(), v),
                other => return Err(format!("n{i} {method}: {other:?}")),
            };
        }
        // Per-node figures (clients, load, own readiness wording) differ legitimately.
        let nodes: Vec<Value> = state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| json!({"raftId": n["raftId"], "id": n["id"], "cluster": n["cluster"], "status": n["status"]}))
            .collect();
        state.insert("nodes".into(), Value::Array(nodes));
        states.push(Value::Object(state));
    }
    for c in clients {
        c.close();
    }
    for (i, s) in states.iter().enumerate().skip(1) {
        for (key, _, _) in &queries {
            if s[key] != states[0][key] {
                return Err(format!(
                    "n0 and n{i} list different {key}: {} vs {}",
                    short(&states[0][key]),
                    short(&s[key])
                ));
            }
        }
    }
    let s = &states[0];
    let empty = |key: &str| s[key].as_array().is_some_and(Vec::is_empty);
    if !empty("locks") {
        return Err(format!("locks left behind: {}", short(&s["locks"])));
    }
    if !empty("tasks") {
        return Err(format!("tasks left behind: {}", short(&s["tasks"])));
    }
    if s["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["topic"] == json!(workload::TOPIC))
    {
        return Err(format!(
            "subscriptions left behind: {}",
            short(&s["topics"])
        ));
    }
    let sessions: usize = s["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["n"].as_u64().unwrap_or(0) as usize)
        .sum();
    if sessions != cluster.nodes.len() {
        return Err(format!(
            "{sessions} sessions listed, expected only the {} of this check: {}",
            cluster.nodes.len(),
            short(&s["sessions"])
        ));
    }
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    if nodes.len() != cluster.nodes.len() || nodes.iter().any(|n| n["status"] != json!("ready")) {
        return Err(format!("node list not all ready: {}", short(&s["nodes"])));
    }
    Ok(s["users"].clone())
}

/// The summary table, printed and returned.
fn print_report(report: &Report, status: Option<&Status>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n{:<16} {:>9} {:>7} {:>8}\n",
        "operation", "ok", "fail", "unknown"
    ));
    for (op, [ok, fail, unknown]) in &report.ops {
        out.push_str(&format!("{op:<16} {ok:>9} {fail:>7} {unknown:>8}\n"));
    }
    out.push_str(&format!("\n{:<16} {:>9}\n", "fault", "injected"));
    for (kind, n) in &report.faults {
        out.push_str(&format!("{kind:<16} {n:>9}\n"));
    }
    if let Some(s) = status {
        if s.unrecovered.load(Ordering::Relaxed) {
            out.push_str("(the cluster did not recover from the last fault)\n");
        }
    }
    out.push_str(&format!("\n{:<32} {:>9}\n", "checked", "count"));
    for (what, n) in &report.checked {
        out.push_str(&format!("{what:<32} {n:>9}\n"));
    }
    let mut by_check: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for v in &report.violations {
        by_check.entry(v.check).or_default().push(&v.detail);
    }
    out.push_str(&format!("\nviolations: {}\n", report.violations.len()));
    for (check, details) in &by_check {
        out.push_str(&format!("  {check}: {}\n", details.len()));
        for d in details.iter().take(10) {
            out.push_str(&format!("    - {d}\n"));
        }
    }
    eprint!("{out}");
    out
}
