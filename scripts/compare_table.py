# Turns the raw outputs of scripts/compare.sh (OUTDIR) into the markdown table of docs/benchmarks.md.
import json, re, sys, glob
out = sys.argv[1]

def nexus(name):
    """The first JSON summary line of a `nexus bench` run (None if it failed)."""
    try:
        return next(json.loads(l) for l in open(f"{out}/{name}.txt") if l.startswith("{"))
    except (OSError, StopIteration, ValueError):
        return None

def ref(part):
    """The RESULT line of a reference run, with `rate` = ops/s."""
    for f in sorted(glob.glob(f"{out}/ref/r1-{part}*.txt")):
        for l in open(f):
            if l.startswith("RESULT") and ("e2e" in l or "pubsub" in l):
                d = {k: float(v) for k, v in re.findall(r"([\w/]+)=([\d.]+)", l)}
                d["rate"] = d.get("ops/s")
                return d
    return None

def g(d, key):
    return d.get(key) if d else None

def k(x):
    return f"{x / 1000:.1f}k" if x else "—"

def ms(x):
    return f"{x:.1f} ms" if x is not None else "—"

def ratio(a, b):
    return f"**{a / b:.2f}**" if a and b else "—"

def lat(d):
    return f"p50 {ms(g(d, 'p50_ms'))}, p99 {ms(g(d, 'p99_ms'))}"

t1, t1c, t3, t16 = (nexus(n) for n in ("tasks-1n-shared", "tasks-1n-conns", "tasks-3n-shared", "tasks-1n-16"))
tn, ta, lg = nexus("topics-notify"), nexus("topics-ack"), nexus("logins")
j1, j3, nc = ref("js-r1"), ref("js-r3"), ref("nats-pubsub")
rows = [
    ("durable task round trips/s, 64 in flight, one node: 64 callers share 1 connection, 64 workers share 1 (the reference client's shape)",
     f"{k(g(t1, 'per_sec'))}, {lat(t1)}", f"JetStream R1 {k(g(j1, 'rate'))}, {lat(j1)}",
     ratio(g(t1, 'per_sec'), g(j1, 'rate')), "≥ 1.0"),
    ("same, one connection per caller and per worker (128 connections)",
     f"{k(g(t1c, 'per_sec'))}, {lat(t1c)}", "JetStream R1, as above",
     ratio(g(t1c, 'per_sec'), g(j1, 'rate')), ""),
    ("same on 3 nodes, clients on every node (one caller and one worker connection per node)",
     f"{k(g(t3, 'per_sec'))}, {lat(t3)}", f"JetStream R3 {k(g(j3, 'rate'))}, {lat(j3)} (clients on the stream leader)",
     ratio(g(t3, 'per_sec'), g(j3, 'rate')), "≥ 1.2"),
    ("task latency at 16 callers / 16 workers, one node, shared connections",
     f"p99 {ms(g(t16, 'p99_ms'))} (p50 {ms(g(t16, 'p50_ms'))}, {k(g(t16, 'per_sec'))}/s)",
     f"JetStream R1 p99 {ms(g(j1, 'p99_ms'))} at 64", "", "p99 ≤ 3 ms"),
    ("pub/sub delivered/s, 1 → 1, fire-and-forget publishes",
     f"{k(g(tn, 'delivered_per_sec'))} ({g(tn, 'dropped')} dropped)", f"NATS core {k(g(nc, 'rate'))}",
     ratio(g(tn, 'delivered_per_sec'), g(nc, 'rate')), "≥ 0.3"),
    ("pub/sub delivered/s, 1 → 1, acknowledged publishes (32 in flight)",
     f"{k(g(ta, 'delivered_per_sec'))}", "NATS core, as above",
     ratio(g(ta, 'delivered_per_sec'), g(nc, 'rate')), ""),
    ("RSS per logged-in WebSocket session (5,000 on a fresh node)",
     f"{g(lg, 'kib_per_session_growth') or 0:.1f} KiB of node RSS growth per session ({g(lg, 'kib_per_connection') or 0:.1f} KiB of it once connected, before login)",
     "NATS 21.8 KiB per connection (anchors README, not this run)", "", "≤ 20 KiB"),
    ("5,000 reconnecting clients of one account logged in",
     f"{g(lg, 'seconds') or 0:.2f} s (cold caches)", "", "", "≤ 10 s"),
]
print("| scenario | Nexus-rs | reference (same run) | ratio | goal |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
