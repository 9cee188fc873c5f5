//! The throughput benchmarks (`tasks`, `topics`) on one current-thread runtime: every
//! caller, worker, publisher and subscriber is a task, and they may share connections
//! (`--connections`), the way the reference NATS client shares one connection among its
//! producers.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{chart, percentile, progress, BenchArgs};
use nexus_client::pipelined::Client;

/// How many connections each side uses.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Connections the callers (publishers) share; 0: one each.
    pub connections: usize,
    /// Connections the workers (subscribers) share; 0: one each.
    pub worker_connections: usize,
}

/// Runs `f` on a fresh current-thread runtime.
fn on_runtime<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// `count` connections (one per user when `wanted` is 0), connection k to URL k mod n.
async fn connect_all(
    args: &BenchArgs,
    urls: &[String],
    users: usize,
    wanted: usize,
) -> anyhow::Result<Vec<Client>> {
    let count = if wanted == 0 {
        users
    } else {
        wanted.min(users)
    }
    .max(1);
    let mut clients = Vec::with_capacity(count);
    for k in 0..count {
        let url = &urls[k % urls.len().max(1)];
        clients.push(Client::connect(url, &args.user, &args.pass).await?);
    }
    Ok(clients)
}

/// A push's answer: only whether it has a result (its value is skipped, not built).
#[derive(Deserialize)]
struct PushAnswer {
    result: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct PullAnswer {
    result: Option<Pulled>,
}

#[derive(Deserialize)]
struct Pulled {
    taskid: String,
    params: Value,
}

pub fn tasks(
    args: &BenchArgs,
    callers: usize,
    workers: usize,
    workers_url: &[String],
    shape: Shape,
) -> anyhow::Result<()> {
    let worker_urls = if workers_url.is_empty() {
        args.url.clone()
    } else {
        workers_url.to_vec()
    };
    on_runtime(async move {
        let prefix = format!("bench.tasks.r{}", super::run_tag());
        // Connections and logins (scrypt) happen before the clock starts.
        let caller_conns = connect_all(args, &args.url, callers, shape.connections).await?;
        let worker_conns =
            connect_all(args, &worker_urls, workers, shape.worker_connections).await?;
        eprintln!(
            "task round trips: {callers} callers on {} connections ({}), {workers} workers on {} connections ({}), {}s",
            caller_conns.len(),
            args.url.join(","),
            worker_conns.len(),
            worker_urls.join(","),
            args.seconds,
        );
        let stop = Rc::new(Cell::new(false));
        let mut worker_tasks = Vec::new();
        for w in 0..workers {
            let c = worker_conns[w % worker_conns.len()].clone();
            let (stop, pull) = (stop.clone(), json!({"prefix": prefix, "timeout": 1}));
            worker_tasks.push(tokio::task::spawn_local(async move {
                while !stop.get() {
                    let text = c.call_text("task.pull", &pull).await?;
                    if let Some(t) = serde_json::from_str::<PullAnswer>(&text)?.result {
                        let answer = json!({"taskid": t.taskid, "result": t.params});
                        c.call_text("task.result", &answer).await?;
                    }
                }
                anyhow::Ok(())
            }));
        }
        let done = Arc::new(AtomicU64::new(0));
        let latencies = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(args.seconds);
        let prog_stop = Arc::new(AtomicBool::new(false));
        let prog = progress("round trips", done.clone(), prog_stop.clone());
        let mut caller_tasks = Vec::new();
        for i in 0..callers {
            let c = caller_conns[i % caller_conns.len()].clone();
            let (done, latencies) = (done.clone(), latencies.clone());
            let push = json!({"method": format!("{prefix}.echo"), "params": {"caller": i}});
            caller_tasks.push(tokio::task::spawn_local(async move {
                // (when it completed since the start, its latency)
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let text = c.call_text("task.push", &push).await?;
                    if serde_json::from_str::<PushAnswer>(&text)?.result.is_none() {
                        anyhow::bail!("push failed: {text}");
                    }
                    mine.push((start.elapsed(), t0.elapsed()));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                latencies.borrow_mut().extend(mine);
                anyhow::Ok(())
            }));
        }
        for t in caller_tasks {
            t.await??;
        }
        let elapsed = start.elapsed();
        stop.set(true);
        prog_stop.store(true, Ordering::Relaxed);
        for t in worker_tasks {
            t.await??;
        }
        let _ = prog.join();
        let samples = latencies.take();
        let mut lat: Vec<Duration> = samples.iter().map(|(_, l)| *l).collect();
        lat.sort();
        let n = lat.len();
        let rate = n as f64 / elapsed.as_secs_f64();
        let (p50, p99) = (
            percentile(&lat, 0.50).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
        );
        println!(
            "tasks: {n} round trips in {:.1}s = {rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms ({callers} callers, {workers} workers)",
            elapsed.as_secs_f64(),
        );
        if args.json {
            let summary = json!({
                "bench": "tasks", "callers": callers, "workers": workers,
                "connections": caller_conns.len(), "worker_connections": worker_conns.len(),
                "nodes": args.url.len(), "seconds": elapsed.as_secs_f64(),
                "round_trips": n, "per_sec": rate.round(), "p50_ms": p50, "p99_ms": p99,
            });
            println!("{summary}");
        }
        super::print_table(
            "task round trips",
            &[
                ("callers / workers", format!("{callers} / {workers}")),
                (
                    "connections",
                    format!(
                        "{} callers', {} workers', on {} node(s)",
                        caller_conns.len(),
                        worker_conns.len(),
                        args.url.len()
                    ),
                ),
                ("measured", format!("{:.1} s", elapsed.as_secs_f64())),
                ("round trips", format!("{n} ({rate:.0}/s)")),
                ("latency p50", format!("{p50:.2} ms")),
                ("latency p99", format!("{p99:.2} ms")),
            ],
        );
        if let Some(path) = &args.svg {
            let run = chart::seconds_from_samples(&samples, elapsed.as_secs() as usize);
            let title = format!("task round trips: {callers} callers, {workers} workers");
            chart::write_svg(path, &title, "round trips/s", &run)?;
            println!("  chart: {}", path.display());
        }
        Ok(())
    })
}

#[derive(Deserialize)]
struct ReadAnswer {
    result: Option<ReadResult>,
}

#[derive(Deserialize)]
struct ReadResult {
    msgs: Vec<IgnoredAny>,
    #[serde(default)]
    drops: u64,
}

pub fn topics(
    args: &BenchArgs,
    publishers: usize,
    window: usize,
    subscribers: usize,
    notify: bool,
    shape: Shape,
) -> anyhow::Result<()> {
    on_runtime(async move {
        let topic = format!("bench.topic.r{}", super::run_tag());
        let mode = if notify {
            "fire-and-forget".to_string()
        } else {
            format!("acknowledged, window {window}")
        };
        let sub_conns = connect_all(args, &args.url, subscribers, shape.worker_connections).await?;
        let pub_conns = connect_all(args, &args.url, publishers, shape.connections).await?;
        eprintln!(
            "topic pub → pipe read: {publishers} publishers ({mode}), {subscribers} subscribers, {}s against {}",
            args.seconds,
            args.url.join(",")
        );
        let stop = Rc::new(Cell::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let dropped = Rc::new(Cell::new(0u64));
        let mut sub_tasks = Vec::new();
        for k in 0..subscribers {
            let c = sub_conns[k % sub_conns.len()].clone();
            let pipe =
                c.call("pipe.create", json!({"len": 100000})).await?["result"]["pipeid"].clone();
            c.call("topic.sub", json!({"pipeid": pipe, "topic": topic}))
                .await?;
            let (stop, delivered, dropped) = (stop.clone(), delivered.clone(), dropped.clone());
            let read = json!({"pipeid": pipe, "max": 10000, "timeout": 0.5});
            sub_tasks.push(tokio::task::spawn_local(async move {
                while !stop.get() {
                    let text = c.call_text("pipe.read", &read).await?;
                    if let Some(r) = serde_json::from_str::<ReadAnswer>(&text)?.result {
                        delivered.fetch_add(r.msgs.len() as u64, Ordering::Relaxed);
                        dropped.set(dropped.get() + r.drops);
                    }
                }
                anyhow::Ok(())
            }));
        }
        let published = Rc::new(Cell::new(0u64));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(args.seconds);
        let prog_stop = Arc::new(AtomicBool::new(false));
        let prog = progress("messages read", delivered.clone(), prog_stop.clone());
        let publish = json!({"topic": topic, "msg": {"data": "x".repeat(64)}});
        let mut pub_tasks = Vec::new();
        for k in 0..publishers {
            let c = pub_conns[k % pub_conns.len()].clone();
            let senders = if notify { 1 } else { window.max(1) };
            for _ in 0..senders {
                let (c, published, publish) = (c.clone(), published.clone(), publish.clone());
                pub_tasks.push(tokio::task::spawn_local(async move {
                    let note = json!({"jsonrpc": "2.0", "method": "topic.pub", "params": publish})
                        .to_string();
                    while Instant::now() < deadline {
                        if notify {
                            c.send_text(note.clone()).await?;
                        } else {
                            c.call_text("topic.pub", &publish).await?;
                        }
                        published.set(published.get() + 1);
                    }
                    anyhow::Ok(())
                }));
            }
        }
        for t in pub_tasks {
            t.await??;
        }
        let elapsed = start.elapsed();
        // Let subscribers drain what is queued.
        tokio::time::sleep(Duration::from_secs(1)).await;
        prog_stop.store(true, Ordering::Relaxed);
        stop.set(true);
        for t in sub_tasks {
            t.await??;
        }
        let per_second = prog.join().unwrap_or_default();
        let (p, d, x) = (
            published.get(),
            delivered.load(Ordering::Relaxed),
            dropped.get(),
        );
        let secs = elapsed.as_secs_f64();
        println!(
            "topics ({mode}): {p} publishes in {secs:.1}s = {:.0}/s; {d} messages read by {subscribers} subscribers = {:.0}/s; {x} dropped",
            p as f64 / secs,
            d as f64 / secs,
        );
        if args.json {
            let summary = json!({
                "bench": "topics", "mode": if notify { "notify" } else { "ack" },
                "publishers": publishers, "subscribers": subscribers, "window": window,
                "nodes": args.url.len(), "seconds": secs, "published": p,
                "published_per_sec": (p as f64 / secs).round(), "delivered": d,
                "delivered_per_sec": (d as f64 / secs).round(), "dropped": x,
            });
            println!("{summary}");
        }
        super::print_table(
            &format!("topic publish -> pipe read ({mode})"),
            &[
                (
                    "publishers / subscribers",
                    format!("{publishers} / {subscribers}"),
                ),
                (
                    "measured",
                    format!("{secs:.1} s on {} node(s)", args.url.len()),
                ),
                ("published", format!("{p} ({:.0}/s)", p as f64 / secs)),
                ("read", format!("{d} ({:.0}/s)", d as f64 / secs)),
                ("dropped at full pipes", x.to_string()),
            ],
        );
        if let Some(path) = &args.svg {
            let run: Vec<chart::Second> = per_second
                .into_iter()
                .map(|done| chart::Second {
                    done,
                    latency: None,
                })
                .collect();
            let title =
                format!("pub/sub ({mode}): {publishers} publishers, {subscribers} subscribers");
            chart::write_svg(path, &title, "messages read/s", &run)?;
            println!("  chart: {}", path.display());
        }
        Ok(())
    })
}
