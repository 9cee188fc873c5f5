//! `nexus bench`: drives a running node over WebSocket and reports throughput and latency.
//! Numbers from here go to docs/benchmarks.md; nothing in the test suite times anything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use nexus_client::{Client, Options};
use serde_json::{json, Value};

mod chart;
mod load;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
    /// WebSocket URL of the node; several (comma-separated or repeated) spread the clients
    /// over a cluster, client k on URL k mod n.
    #[arg(
        long,
        alias = "nodes",
        default_value = "ws://127.0.0.1:8080/",
        value_delimiter = ',',
        global = true
    )]
    pub url: Vec<String>,
    #[arg(long, default_value = "root", global = true)]
    pub user: String,
    #[arg(long, default_value = "root", global = true, env = "NEXUS_BENCH_PASS")]
    pub pass: String,
    /// How long to measure.
    #[arg(long, default_value_t = 10, global = true)]
    pub seconds: u64,
    /// Also print the summary as one JSON line (for scripts such as `make compare`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Connections the callers (tasks) or publishers (topics) share; 0: one each.
    #[arg(long, default_value_t = 0, global = true)]
    pub connections: usize,
    /// Connections the workers (tasks) or subscribers (topics) share; 0: one each.
    #[arg(long, default_value_t = 0, global = true)]
    pub worker_connections: usize,
    /// Also draw the run second by second (throughput, and latency for tasks) as an SVG
    /// chart (tasks and topics).
    #[arg(long, global = true, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchKind {
    /// Task round trips: callers push (each waits for its answer), workers pull and answer.
    Tasks {
        /// Concurrent callers, each with one push in flight.
        #[arg(long, default_value_t = 64)]
        callers: usize,
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Workers connect here instead of --url (e.g. pushers on one node, workers on
        /// another).
        #[arg(long, value_delimiter = ',')]
        workers_url: Vec<String>,
    },
    /// Pipe writes → one reader: the pipe lives on the first --url node, writers connect
    /// to the other URLs (or the same node when only one is given).
    Pipes {
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Writes each writer keeps in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// Node-death cleanup time: a client on the first --url node takes a lock, the process
    /// `--kill-pid` (that node) is killed with SIGKILL, and a client on the second URL
    /// retries the lock until it is granted.
    Cleanup {
        #[arg(long)]
        kill_pid: u32,
    },
    /// Topic publish → pipe read: publishers publish, subscribers read their pipes.
    Topics {
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Publishes each publisher keeps in flight.
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 2)]
        subscribers: usize,
        /// Fire-and-forget: publish as JSON-RPC notifications (no id, no answer) instead of
        /// acknowledged requests; `--window` does not apply.
        #[arg(long)]
        notify: bool,
    },
    /// Sequential durable writes (a lock taken and released) from one client that retries
    /// through faults and reconnects to the next URL when its node goes away: write latency
    /// and the longest gap between two acknowledged writes (failover time when a node is
    /// killed meanwhile).
    Writes,
    /// A reconnect storm: `clients` connections open, then all log in at once; reports the
    /// time until every one is logged in. `--users` distinct accounts (created first,
    /// `bench.login.uN`) share the clients; 0 means all log in as --user.
    Logins {
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        #[arg(long, default_value_t = 0)]
        users: usize,
        /// Storms run one after the other: the first meets cold caches, later ones warm.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// The node's process id (a node on this machine): also report its resident memory
        /// per open connection and per logged-in session.
        #[arg(long)]
        node_pid: Option<u32>,
    },
    /// Fills the cluster with durable state (users, detached tasks), e.g. before timing how
    /// long a new node takes to catch up.
    Fill {
        #[arg(long, default_value_t = 0)]
        users: usize,
        #[arg(long, default_value_t = 0)]
        tasks: usize,
        /// Requests kept in flight per connection.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Connections used.
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
}

/// A logged-in blocking connection of the threaded scenarios, answers taken whole.
struct Ws(Client);

/// How long the threaded scenarios wait to connect (a node that is gone is skipped soon),
/// and for any one answer (a login storm queues logins behind the node's hash bound).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

impl Ws {
    /// Client number `k` connects to URL `k mod n`, not logged in.
    fn open(args: &BenchArgs, k: usize) -> anyhow::Result<Ws> {
        let url = &args.url[k % args.url.len().max(1)];
        let opts = Options {
            ca: None,
            connect_timeout: CONNECT_TIMEOUT,
            answer_timeout: ANSWER_TIMEOUT,
        };
        Ok(Ws(Client::connect(url, &opts)?))
    }

    /// Client number `k` connects to URL `k mod n` and logs in.
    fn connect(args: &BenchArgs, k: usize) -> anyhow::Result<Ws> {
        let mut c = Ws::open(args, k)?;
        let r = c.call("sys.login", json!({"user": args.user, "pass": args.pass}))?;
        if r.get("error").is_some() {
            anyhow::bail!("login failed: {r}");
        }
        Ok(c)
    }

    fn send(&mut self, method: &str, params: Value) -> anyhow::Result<u64> {
        Ok(self.0.send_request(method, params)?)
    }

    fn recv(&mut self) -> anyhow::Result<Value> {
        Ok(self.0.next_answer()?)
    }

    /// Sends `requests` keeping up to `window` of them unanswered, handing each answer to
    /// `on_answer` as it comes; returns once every request is answered.
    fn pipelined(
        &mut self,
        window: usize,
        requests: impl Iterator<Item = (&'static str, Value)>,
        mut on_answer: impl FnMut(Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut in_flight = 0;
        for (method, params) in requests {
            if in_flight == window {
                on_answer(self.recv()?)?;
                in_flight -= 1;
            }
            self.send(method, params)?;
            in_flight += 1;
        }
        for _ in 0..in_flight {
            on_answer(self.recv()?)?;
        }
        Ok(())
    }

    /// Reads `pipe` until `stop`, counting messages read and dropped.
    fn drain_pipe(
        &mut self,
        pipe: &Value,
        stop: &AtomicBool,
        read: &AtomicU64,
        dropped: &AtomicU64,
    ) -> anyhow::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let r = self.call(
                "pipe.read",
                json!({"pipeid": pipe, "max": 10000, "timeout": 0.5}),
            )?;
            let n = r["result"]["msgs"].as_array().map_or(0, Vec::len);
            read.fetch_add(n as u64, Ordering::Relaxed);
            let drops = r["result"]["drops"].as_u64().unwrap_or(0);
            dropped.fetch_add(drops, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One request, one answer (nothing else in flight on this connection).
    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.send(method, params)?;
        self.recv()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Prints the running count every second until `stop`; answers the count of each second.
fn progress(
    label: &'static str,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut last = 0;
        let mut per_second = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let now = count.load(Ordering::Relaxed);
            eprintln!(
                "  [{:>3.0}s] {label}: {} in the last second, {now} total",
                start.elapsed().as_secs_f64(),
                now - last
            );
            per_second.push(now - last);
            last = now;
        }
        per_second
    })
}

/// The closing table of a run: one aligned `name  value` line each.
fn print_table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\n{title}");
    println!("  {}", "-".repeat(width + 24));
    for (k, v) in rows {
        println!("  {k:<width$}  {v}");
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.url.is_empty() {
        anyhow::bail!("--url needs at least one WebSocket URL");
    }
    let charted = matches!(
        args.kind,
        BenchKind::Tasks { .. } | BenchKind::Topics { .. }
    );
    if args.svg.is_some() && !charted {
        anyhow::bail!("--svg draws the tasks and topics scenarios only");
    }
    let shape = load::Shape {
        connections: args.connections,
        worker_connections: args.worker_connections,
    };
    match args.kind.clone() {
        BenchKind::Tasks {
            callers,
            workers,
            workers_url,
        } => load::tasks(&args, callers, workers, &workers_url, shape),
        BenchKind::Pipes { writers, window } => pipes(&args, writers.max(1), window.max(1)),
        BenchKind::Cleanup { kill_pid } => cleanup(&args, kill_pid),
        BenchKind::Writes => writes(&args),
        BenchKind::Logins {
            clients,
            users,
            rounds,
            node_pid,
        } => logins(&args, clients.max(1), users, rounds.max(1), node_pid),
        BenchKind::Fill {
            users,
            tasks,
            window,
            clients,
        } => fill(&args, users, tasks, window.max(1), clients.max(1)),
        BenchKind::Topics {
            publishers,
            window,
            subscribers,
            notify,
        } => load::topics(&args, publishers, window, subscribers, notify, shape),
    }
}

/// A reconnect storm: see `BenchKind::Logins`.
/// Resident memory of process `pid` in KiB (Linux).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}

fn logins(
    args: &BenchArgs,
    clients: usize,
    users: usize,
    rounds: usize,
    node_pid: Option<u32>,
) -> anyhow::Result<()> {
    let rss = || node_pid.map(rss_kib).transpose();
    let accounts: Vec<(String, String)> = if users == 0 {
        vec![(args.user.clone(), args.pass.clone())]
    } else {
        let mut admin = Ws::connect(args, 0)?;
        let names: Vec<(String, String)> = (0..users)
            .map(|i| (format!("bench.login.u{i}"), format!("bench-pass-{i}")))
            .collect();
        let creates = names
            .iter()
            .map(|(u, p)| ("user.create", json!({"user": u, "pass": p})));
        // Already there from an earlier run is fine.
        admin.pipelined(64, creates, |_| Ok(()))?;
        names
    };
    eprintln!(
        "login storm: {clients} clients, {} account(s), {rounds} round(s), on {}",
        accounts.len(),
        args.url.join(",")
    );
    for round in 1..=rounds {
        let before = rss()?;
        let mut conns = Vec::with_capacity(clients);
        for k in 0..clients {
            conns.push(Ws::open(args, k)?);
        }
        let connected = rss()?;
        let start = Instant::now();
        for (k, c) in conns.iter_mut().enumerate() {
            let (user, pass) = &accounts[k % accounts.len()];
            c.send("sys.login", json!({"user": user, "pass": pass}))?;
        }
        let mut failed = 0;
        let mut last = Duration::ZERO;
        for c in &mut conns {
            let answer = c.recv()?;
            failed += answer.get("error").is_some() as usize;
            last = start.elapsed();
        }
        println!(
            "logins round {round}: {clients} clients logged in within {:.2} s ({:.0}/s), {failed} refused",
            last.as_secs_f64(),
            clients as f64 / last.as_secs_f64()
        );
        let mut summary = json!({
            "bench": "logins", "round": round, "clients": clients, "accounts": accounts.len(),
            "seconds": last.as_secs_f64(), "refused": failed,
        });
        if let (Some(before), Some(connected)) = (before, connected) {
            // Let the node settle (session records committed), then hang up and settle
            // again: what the sessions held is what their closing gave back.
            std::thread::sleep(Duration::from_secs(1));
            let logged_in = rss()?.unwrap_or(connected);
            drop(conns);
            std::thread::sleep(Duration::from_secs(3));
            let closed = rss()?.unwrap_or(before);
            let per = |from: u64, to: u64| to.saturating_sub(from) as f64 / clients as f64;
            println!(
                "logins round {round}: node RSS {before} KiB before, +{:.1} KiB per connection opened, +{:.1} KiB per session logged in, -{:.1} KiB per session closed",
                per(before, connected),
                per(before, logged_in),
                per(closed, logged_in),
            );
            summary["rss_before_kib"] = before.into();
            summary["kib_per_connection"] = per(before, connected).into();
            summary["kib_per_session_growth"] = per(before, logged_in).into();
            summary["kib_per_session_held"] = per(closed, logged_in).into();
        }
        if args.json {
            println!("{summary}");
        }
    }
    Ok(())
}

/// Sequential durable writes through faults: see `BenchKind::Writes`.
fn writes(args: &BenchArgs) -> anyhow::Result<()> {
    eprintln!(
        "sequential writes for {}s against {}",
        args.seconds,
        args.url.join(",")
    );
    let lock = format!("bench.writes.r{}", run_tag());
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut node = 0;
    let mut client: Option<Ws> = None;
    let (mut ok, mut failed, mut reconnects) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut last_ok = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let start = Instant::now();
    let mut next_progress = start + Duration::from_secs(1);
    while Instant::now() < deadline {
        let c = match &mut client {
            Some(c) => c,
            None => match Ws::connect(args, node) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    // Its node is gone (or not ready): try the next one.
                    node += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let answers = c
            .call("sync.lock", json!({"lock": lock}))
            .and_then(|a| Ok((a, c.call("sync.unlock", json!({"lock": lock}))?)));
        match answers {
            Ok((a, b)) if a.get("result").is_some() && b.get("result").is_some() => {
                let now = Instant::now();
                latencies.push(now - t0);
                longest_gap = longest_gap.max(now - last_ok);
                last_ok = now;
                ok += 2;
            }
            Ok(_) => {
                // A retryable error (no leader yet, leadership changed): try again.
                failed += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => {
                client = None;
                reconnects += 1;
                node += 1;
            }
        }
        if Instant::now() >= next_progress {
            eprintln!(
                "  [{:>3.0}s] writes: {ok} acknowledged, {failed} retried, longest gap {:.0} ms",
                start.elapsed().as_secs_f64(),
                longest_gap.as_secs_f64() * 1e3
            );
            next_progress += Duration::from_secs(1);
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    println!(
        "writes: {ok} acknowledged in {:.1}s = {:.0}/s, lock+unlock p50 {:.2} ms, p99 {:.2} ms; longest gap between acknowledged writes {:.0} ms; {failed} retried, {reconnects} reconnects",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        longest_gap.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Creates `users` users and pushes `tasks` detached tasks (nobody pulls them), pipelined
/// `window` deep on each of `clients` connections.
fn fill(
    args: &BenchArgs,
    users: usize,
    tasks: usize,
    window: usize,
    clients: usize,
) -> anyhow::Result<()> {
    let tag = run_tag();
    eprintln!(
        "filling: {users} users, {tasks} detached tasks over {clients} connections to {}",
        args.url.join(",")
    );
    let start = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let prog_stop = Arc::new(AtomicBool::new(false));
    let prog = progress("writes acknowledged", sent.clone(), prog_stop.clone());
    let mut threads = Vec::new();
    for k in 0..clients {
        let (args, tag, sent) = (args.clone(), tag.clone(), sent.clone());
        // Client k takes every clients-th item of each kind.
        let mine = move |n: usize| (k..n).step_by(clients);
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut c = Ws::connect(&args, k)?;
            let requests = mine(users)
                .map(|i| {
                    (
                        "user.create",
                        json!({"user": format!("fill{tag}u{i}"), "pass": "fill-password"}),
                    )
                })
                .chain(mine(tasks).map(|i| {
                    (
                        "task.push",
                        json!({"method": format!("bench.fill{tag}.m"), "params": {"i": i},
                               "detach": true}),
                    )
                }));
            c.pipelined(window, requests, |answer| {
                check_answer(answer)?;
                sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    prog_stop.store(true, Ordering::Relaxed);
    let _ = prog.join();
    let elapsed = start.elapsed();
    println!(
        "fill: {users} users and {tasks} detached tasks in {:.1}s = {:.0} writes/s",
        elapsed.as_secs_f64(),
        (users + tasks) as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn check_answer(a: Value) -> anyhow::Result<()> {
    match a.get("error") {
        Some(e) => anyhow::bail!("write failed: {e}"),
        None => Ok(()),
    }
}

/// Pipe writes from other nodes into one pipe: see `BenchKind::Pipes`.
fn pipes(args: &BenchArgs, writers: usize, window: usize) -> anyhow::Result<()> {
    let mut reader = Ws::connect(args, 0)?;
    let pipe = reader.call("pipe.create", json!({"len": 100000}))?["result"]["pipeid"].clone();
    let writer_urls: Vec<String> = match args.url.len() {
        1 => args.url.clone(),
        _ => args.url[1..].to_vec(),
    };
    eprintln!(
        "pipe writes: {writers} writers (window {window}) on {} → a pipe on {}, {}s",
        writer_urls.join(","),
        args.url[0],
        args.seconds
    );
    let writer_args = BenchArgs {
        url: writer_urls,
        ..args.clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (read, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader_thread = {
        let (stop, read, dropped, pipe) =
            (stop.clone(), read.clone(), dropped.clone(), pipe.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            reader.drain_pipe(&pipe, &stop, &read, &dropped)
        })
    };
    let written = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(writers + 1));
    let mut threads = Vec::new();
    for k in 0..writers {
        let (args, pipe, written, barrier) = (
            writer_args.clone(),
            pipe.clone(),
            written.clone(),
            barrier.clone(),
        );
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let c = Ws::connect(&args, k);
            barrier.wait();
            let mut c = c?;
            let deadline = Instant::now() + Duration::from_secs(args.seconds);
            let write = json!({"pipeid": pipe, "msg": {"data": "x".repeat(64)}});
            let requests = std::iter::repeat_with(|| ("pipe.write", write.clone()))
                .take_while(|_| Instant::now() < deadline);
            c.pipelined(window, requests, |answer| {
                check_answer(answer)?;
                written.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let prog_stop = Arc::new(AtomicBool::new(false));
    let prog = progress("messages read", read.clone(), prog_stop.clone());
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    prog_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = prog.join();
    reader_thread
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let w = written.load(Ordering::Relaxed);
    println!(
        "pipes: {w} acknowledged writes in {:.1}s = {:.0}/s; {} read, {} dropped",
        elapsed.as_secs_f64(),
        w as f64 / elapsed.as_secs_f64(),
        read.load(Ordering::Relaxed),
        dropped.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Node-death cleanup time: see `BenchKind::Cleanup`.
fn cleanup(args: &BenchArgs, kill_pid: u32) -> anyhow::Result<()> {
    if args.url.len() < 2 {
        anyhow::bail!("cleanup needs two URLs: the node to kill, then an observer");
    }
    let lock = format!("bench.cleanup.r{}", run_tag());
    let mut holder = Ws::connect(args, 0)?;
    let mut observer = Ws::connect(args, 1)?;
    check_answer(holder.call("sync.lock", json!({"lock": lock}))?)?;
    if observer
        .call("sync.lock", json!({"lock": lock}))?
        .get("error")
        .is_none()
    {
        anyhow::bail!("the lock was not held");
    }
    let status = std::process::Command::new("kill")
        .args(["-9", &kill_pid.to_string()])
        .status()?;
    if !status.success() {
        anyhow::bail!("kill -9 {kill_pid} failed");
    }
    let killed = Instant::now();
    let limit = Duration::from_secs(args.seconds.max(10));
    while killed.elapsed() < limit {
        let r = observer.call("sync.lock", json!({"lock": lock}))?;
        if r.get("result").is_some() {
            println!(
                "cleanup: the lock of a client of a kill -9'ed node was granted elsewhere {:.0} ms after the kill",
                killed.elapsed().as_secs_f64() * 1e3
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("the lock was not released within {limit:?}")
}

/// Six random hex digits that keep one run's names apart from another's.
fn run_tag() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}
