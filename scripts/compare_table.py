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
    for f in glob.glob(f"{out}/ref/r1-{part}.txt"):
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

def pct_ok(a, b):
    """Whether a p99 `a` is at most `b`."""
    return ("yes" if a <= b else "no") if a is not None and b is not None else "—"

t1, t1c, t3, t16 = (nexus(n) for n in ("tasks-1n-shared", "tasks-1n-conns", "tasks-3n-shared", "tasks-1n-16"))
tn, ta, lg, lg20 = nexus("topics-notify"), nexus("topics-ack"), nexus("logins"), nexus("logins-20k")
j1, j3, j1s, j3s, nc = ref("js-r1"), ref("js-r3"), ref("js-r1-sync"), ref("js-r3-sync"), ref("nats-pubsub")

def js(name, d):
    return f"{name} {k(g(d, 'rate'))}, {lat(d)}"

def ours(d):
    return f"{k(g(d, 'per_sec'))}, {lat(d)}"

def kib(d):
    return f"{g(d, 'kib_per_session_growth') or 0:.1f} KiB" if d else "—"

# scenario | Nexus-rs | JetStream default (fsync every 2 min) | ratio | JetStream sync_interval: always | ratio | goal
rows = [
    ("task round trips/s, 1 node, 64 callers / 64 workers on one shared connection each",
     ours(t1), js("R1", j1), ratio(g(t1, 'per_sec'), g(j1, 'rate')),
     js("R1", j1s), ratio(g(t1, 'per_sec'), g(j1s, 'rate')), "≥ 1.0× default"),
    ("same, one connection per caller and per worker (128 connections)",
     ours(t1c), "R1, as above", ratio(g(t1c, 'per_sec'), g(j1, 'rate')),
     "R1, as above", ratio(g(t1c, 'per_sec'), g(j1s, 'rate')), ""),
    ("same, 3 nodes, clients on every node (JetStream: clients on the stream leader)",
     ours(t3), js("R3", j3), ratio(g(t3, 'per_sec'), g(j3, 'rate')),
     js("R3", j3s), ratio(g(t3, 'per_sec'), g(j3s, 'rate')),
     f"≥ 1.0× default, ≥ 2.5× always; p99 ≤ default's: {pct_ok(g(t3, 'p99_ms'), g(j3, 'p99_ms'))}"),
    ("task latency, 16 callers / 16 workers, 1 node, shared connections",
     ours(t16), "", "", "", "", ""),
    ("pub/sub delivered/s, 1 → 1, fire-and-forget",
     f"{k(g(tn, 'delivered_per_sec'))} ({g(tn, 'dropped')} dropped)", f"NATS core {k(g(nc, 'rate'))}",
     ratio(g(tn, 'delivered_per_sec'), g(nc, 'rate')), "", "", "≥ 0.5×"),
    ("pub/sub delivered/s, 1 → 1, acknowledged (window 32)",
     k(g(ta, 'delivered_per_sec')), "NATS core, as above",
     ratio(g(ta, 'delivered_per_sec'), g(nc, 'rate')), "", "", "≥ 0.3×"),
    (f"RSS per logged-in WebSocket session, {g(lg20, 'clients') or 20000:,} sessions on a fresh node",
     f"{kib(lg20)} (5,000 sessions: {kib(lg)})",
     "NATS about 22 KiB per connection (not this run)", "", "", "", "≤ 20 KiB"),
    ("5,000 reconnecting clients of one account logged in",
     f"{g(lg, 'seconds') or 0:.2f} s ({g(lg20, 'clients') or 20000:,}: {g(lg20, 'seconds') or 0:.2f} s)", "", "", "", "", "< 1 s"),
]
print("| scenario | Nexus-rs | JetStream default (fsync every 2 min) | ratio | JetStream `sync_interval: always` | ratio | goal |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
