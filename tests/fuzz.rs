//! Fuzzing over the wire: 100k+ generated inputs against a real `nexus serve` process, over
//! TCP and WebSocket: mutated requests for every method, wrong types, huge and deeply
//! nested values, bad UTF-8, batches, garbage, requests split across and merged into
//! writes/frames. Every answer must be a well-formed JSON-RPC response, the node must keep
//! serving, and its memory must stop growing once warmed up.
//!
//! The seed is fixed so the suite is repeatable; `NEXUS_FUZZ_SEED=N` explores others and
//! `NEXUS_FUZZ_INPUTS=N` changes the count. To chase a failure, `NEXUS_FUZZ_DUMP=FILE`
//! keeps the last WebSocket batch sent, and `NEXUS_TEST_NODE_LOG=FILE` with
//! `NEXUS_TEST_NODE_RUST_LOG=debug` the node's log.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::standalone::Standalone as Node;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// Small enough that oversize inputs are cheap to send.
const MAX_MESSAGE: usize = 1 << 20;
const SENTINEL: &str = "fuzz-end";

/// The node under test, started with a small message limit.
fn start_node() -> Node {
    Node::start(&["--max-message-size", &MAX_MESSAGE.to_string()])
}

// ---------------------------------------------------------------------------------------
// Generators

/// Every implemented method (the node's own table).
fn methods() -> Vec<&'static str> {
    nexus_server::api::methods::METHODS
        .iter()
        .map(|m| m.name)
        .collect()
}

/// Plausible params for `method` (names never "root": the fuzz must not lock itself out).
fn template(method: &str, rng: &mut StdRng) -> Value {
    let name = format!("fuzz.n{}", rng.gen_range(0..50));
    let id36 = format!("{:036x}", rng.gen::<u128>());
    match method {
        "sys.watchdog" => json!({"watchdog": rng.gen_range(10..100)}),
        "sys.login" => json!({"user": name, "pass": "wrong-pass"}),
        "sys.node.remove" => json!({"raftId": rng.gen_range(1..1000)}),
        "sys.session.list" | "sys.session.count" | "topic.list" | "topic.count" | "sync.list"
        | "sync.count" | "task.list" | "task.count" | "user.list" | "user.count" => {
            json!({"prefix": "fuzz", "depth": rng.gen_range(-1..3), "filter": ".*", "limit": rng.gen_range(-1..20), "skip": 0, "subprefixes": rng.gen::<bool>()})
        }
        "sys.session.kick" | "sys.session.reload" => json!({"connid": id36}),
        "pipe.create" => json!({"len": rng.gen_range(-5..200_000)}),
        "pipe.write" => json!({"pipeid": id36, "msg": {"x": 1}, "multi": rng.gen::<bool>()}),
        "pipe.read" | "pipe.close" => {
            json!({"pipeid": id36, "max": rng.gen_range(-1..20), "timeout": 0.05})
        }
        "topic.sub" | "topic.unsub" => json!({"pipeid": id36, "topic": "fuzz.t.*"}),
        "topic.pub" => json!({"topic": "fuzz.t.a", "msg": {"n": rng.gen::<u32>()}}),
        "sync.lock" | "sync.unlock" => json!({"lock": name}),
        "task.push" => {
            json!({"method": "fuzz.q.run", "params": {"n": 1}, "prio": rng.gen_range(-5..5), "ttl": rng.gen_range(-1..5), "timeout": 0.2, "detach": false})
        }
        "task.pull" => json!({"prefix": "fuzz.q", "timeout": 0.05}),
        "task.result" => json!({"taskid": id36, "result": {"ok": 1}}),
        "task.error" => json!({"taskid": id36, "code": -1, "message": "m", "data": [1]}),
        "task.reject" => json!({"taskid": id36}),
        "task.cancel" => json!({"id": rng.gen_range(0..100)}),
        "user.create" | "user.setPass" => json!({"user": name, "pass": "abc"}),
        "user.rename" => json!({"user": name, "new": format!("{name}x")}),
        "user.setTags" => json!({"user": name, "prefix": "fuzz", "tags": {"@task.push": true}}),
        "user.delTags" => json!({"user": name, "prefix": "fuzz", "tags": ["@task.push"]}),
        "user.getEffectiveTags" => json!({"user": name, "prefix": "fuzz.a"}),
        "user.addTemplate" | "user.delTemplate" => json!({"user": name, "template": "fuzz.n1"}),
        "user.addWhitelist" | "user.delWhitelist" | "user.addBlacklist" | "user.delBlacklist" => {
            json!({"user": name, "ip": "^127\\."})
        }
        "user.setMaxSessions" => json!({"user": name, "maxsessions": rng.gen_range(-1..5)}),
        "user.setDisabled" => json!({"user": name, "disabled": rng.gen::<bool>()}),
        _ => json!({"user": name}),
    }
}

fn random_string(rng: &mut StdRng, max: usize) -> String {
    const POOL: &[char] = &[
        'a', 'b', 'z', '.', '.', '*', ' ', '\t', '\n', '"', '\\', '/', '{', '}', '[', ']', '>',
        '@', '0', '9', '\u{0}', '\u{1f}', 'é', '€', '😀', '\u{fffd}', '\u{200b}',
    ];
    let len = rng.gen_range(0..=max);
    (0..len)
        .map(|_| POOL[rng.gen_range(0..POOL.len())])
        .collect()
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth >= 3 || rng.gen_bool(0.6);
    match rng.gen_range(0..if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!([0i64, -1, 1, i64::MAX, i64::MIN, 4_294_967_296][rng.gen_range(0..6)]),
        3 => json!([0.5, -1e300, 1e-300, f64::MAX][rng.gen_range(0..4)]),
        4 => json!(u64::MAX),
        5 => json!(random_string(rng, 12)),
        6 => Value::Array(
            (0..rng.gen_range(0..5))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.gen_range(0..5))
                .map(|_| (random_string(rng, 6), random_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

/// A template with fields replaced by wrong types, dropped, or joined by strangers.
fn mutate(rng: &mut StdRng, v: Value) -> Value {
    let Value::Object(map) = v else {
        return v;
    };
    let mut out = Map::new();
    for (k, val) in map {
        match rng.gen_range(0..10) {
            0 | 1 => {
                out.insert(k, random_value(rng, 1));
            }
            2 => {}
            _ => {
                out.insert(k, val);
            }
        }
    }
    if rng.gen_bool(0.1) {
        out.insert(random_string(rng, 8), random_value(rng, 1));
    }
    Value::Object(out)
}

fn request(rng: &mut StdRng) -> Value {
    let names = methods();
    let mut method = names[rng.gen_range(0..names.len())].to_string();
    // Methods that cost a password hash stay rare, so 100k inputs take seconds.
    if matches!(method.as_str(), "user.create" | "user.setPass") && rng.gen_bool(0.9) {
        method = "sys.ping".into();
    }
    let params = match rng.gen_range(0..10) {
        0 => random_value(rng, 0),
        1..=4 => template(&method, rng),
        _ => {
            let t = template(&method, rng);
            mutate(rng, t)
        }
    };
    // Pushed tasks must end with the connection (detached ones would pile up), and calls
    // that can wait stay short: a connection has at most 1024 requests in flight, and one
    // that waits for ever would hold its slot to the end of the connection.
    let params = match params {
        Value::Object(mut m)
            if matches!(method.as_str(), "task.push" | "task.pull" | "pipe.read") =>
        {
            m.remove("detach");
            m.insert("timeout".into(), json!(0.05));
            Value::Object(m)
        }
        other => other,
    };
    let mut req = Map::new();
    match rng.gen_range(0..20) {
        0 => {}
        1 => {
            req.insert("jsonrpc".into(), json!("1.0"));
        }
        _ => {
            req.insert("jsonrpc".into(), json!("2.0"));
        }
    }
    match rng.gen_range(0..20) {
        0 => {} // a notification
        1 => {
            req.insert("id".into(), Value::Null);
        }
        2 => {
            req.insert("id".into(), json!({"nested": [1]}));
        }
        3 => {
            req.insert("id".into(), json!(random_string(rng, 10)));
        }
        _ => {
            req.insert("id".into(), json!(rng.gen::<u32>()));
        }
    }
    match rng.gen_range(0..30) {
        0 => {}
        1 => {
            req.insert("method".into(), random_value(rng, 2));
        }
        2 => {
            req.insert("method".into(), json!(random_string(rng, 20)));
        }
        _ => {
            req.insert("method".into(), json!(method));
        }
    }
    if rng.gen_range(0..15) != 0 {
        req.insert("params".into(), params);
    }
    Value::Object(req)
}

/// One input: a balanced JSON text (or balanced garbage), so the stream stays in step.
fn input(rng: &mut StdRng) -> Vec<u8> {
    match rng.gen_range(0..1000) {
        0..=599 => request(rng).to_string().into_bytes(),
        600..=699 => {
            let batch: Vec<Value> = (0..rng.gen_range(0..8)).map(|_| request(rng)).collect();
            Value::Array(batch).to_string().into_bytes()
        }
        700..=779 => random_value(rng, 0).to_string().into_bytes(),
        780..=784 => {
            // A huge value inside an otherwise valid request.
            let size = rng.gen_range(10_000..MAX_MESSAGE - 1000);
            let mut req = request(rng);
            req["params"] = json!({"msg": "x".repeat(size), "topic": "fuzz.t.a", "pipeid": "p"});
            req.to_string().into_bytes()
        }
        785..=814 => {
            // Deep nesting, balanced.
            let depth = rng.gen_range(50..5000);
            let (open, close) = if rng.gen_bool(0.5) {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            let mut s = String::from(r#"{"jsonrpc":"2.0","id":7,"method":"topic.pub","params":"#);
            s.push_str(&open.repeat(depth));
            s.push('1');
            s.push_str(&close.repeat(depth));
            s.push('}');
            s.into_bytes()
        }
        815..=864 => {
            // Bad UTF-8 inside a string.
            let mut bytes = request(rng).to_string().into_bytes();
            let bad: &[&[u8]] = &[
                b"\xff",
                b"\xc3\x28",
                b"\xe2\x82",
                b"\xed\xa0\x80",
                b"\xf8\x88\x80\x80\x80",
            ];
            if let Some(pos) = bytes.iter().position(|b| *b == b'"') {
                let insert = bad[rng.gen_range(0..bad.len())];
                bytes.splice(pos + 1..pos + 1, insert.iter().copied());
            }
            bytes
        }
        865..=914 => {
            // Balanced garbage.
            let inner: String = random_string(rng, 30).replace(['"', '{', '}', '[', ']', '\\'], "");
            format!("{{{inner}}}").into_bytes()
        }
        915..=964 => {
            // Bad escapes and lone surrogates.
            let esc = [
                r#"\uD800"#,
                r#"\x41"#,
                r#"\u12"#,
                r#"\uDFFF\uD800"#,
                r#"\q"#,
            ][rng.gen_range(0..5)];
            format!(r#"{{"jsonrpc":"2.0","id":3,"method":"sys.login","params":{{"user":"a{esc}","pass":"b"}}}}"#).into_bytes()
        }
        _ => {
            // Scalars and near-JSON at the top level.
            let s =
                ["123", "-", "true", "nul", "\"str\"", "1e999", "0x10", "NaN"][rng.gen_range(0..8)];
            format!("{s} ").into_bytes()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checking answers

/// A well-formed JSON-RPC response (or a batch of them).
fn check_response(v: &Value) -> Result<(), String> {
    if let Value::Array(items) = v {
        if items.is_empty() {
            return Err("empty batch answer".into());
        }
        return items.iter().try_for_each(check_response);
    }
    let o = v.as_object().ok_or_else(|| format!("not an object: {v}"))?;
    if o.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(format!("no jsonrpc 2.0: {v}"));
    }
    if !o.contains_key("id") {
        return Err(format!("no id: {v}"));
    }
    match (o.get("result"), o.get("error")) {
        (Some(_), None) => Ok(()),
        (None, Some(e)) if e["code"].is_i64() && e["message"].is_string() => Ok(()),
        _ => Err(format!("neither a result nor a proper error: {v}")),
    }
}

fn sentinel(n: usize) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": format!("{SENTINEL}-{n}"), "method": "sys.ping"})
        .to_string()
        .into_bytes()
}

fn is_sentinel(v: &Value, n: usize) -> bool {
    v["id"] == json!(format!("{SENTINEL}-{n}"))
}

/// Splits `bytes` at random points: one input may span writes, one write may carry many.
fn chunks(rng: &mut StdRng, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let n = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..16),
            1 => rng.gen_range(16..512),
            // The rest, up to a quarter of the message limit: a WebSocket message larger
            // than the limit is refused as a whole, whatever it carries.
            _ => (bytes.len() - i).min(MAX_MESSAGE / 4),
        };
        let end = (i + n).min(bytes.len());
        out.push(bytes[i..end].to_vec());
        i = end;
    }
    out
}

#[derive(Default, Debug)]
struct Tally {
    inputs: usize,
    answers: usize,
    errors: usize,
}

impl Tally {
    /// Checks and counts one answer (kept in `last`, the five latest, for failure
    /// messages); true when it is the sentinel of `round`.
    fn take(&mut self, text: &str, last: &mut Vec<String>, round: usize) -> bool {
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("unparsable answer {text:?}: {e}"));
        if let Err(e) = check_response(&v) {
            panic!("malformed answer: {e}");
        }
        self.answers += 1;
        self.errors += v.get("error").is_some() as usize;
        last.push(text.chars().take(300).collect());
        if last.len() > 5 {
            last.remove(0);
        }
        is_sentinel(&v, round)
    }
}

/// TCP: batches of inputs, each followed by a sentinel ping whose answer must come.
fn tcp_connection(node: &Node, rng: &mut StdRng, inputs: usize, tally: &mut Tally) {
    let mut s = TcpStream::connect(("127.0.0.1", node.tcp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    if rng.gen_bool(0.5) {
        s.write_all(
            br#"{"id":"login","method":"sys.login","params":{"user":"root","pass":"root"}}"#,
        )
        .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
    }
    let mut sent = 0;
    let mut round = 0;
    let mut last: Vec<String> = Vec::new();
    while sent < inputs {
        let n = rng.gen_range(1..40).min(inputs - sent);
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.extend(input(rng));
            if rng.gen_bool(0.3) {
                bytes.push(b'\n');
            }
        }
        bytes.extend(sentinel(round));
        for chunk in chunks(rng, &bytes) {
            s.write_all(&chunk).unwrap();
        }
        sent += n;
        loop {
            let mut line = String::new();
            let read = reader
                .read_line(&mut line)
                .expect("an answer before the timeout");
            assert!(
                read > 0,
                "the node closed a TCP connection that sent balanced input; last answers {last:#?}; log:\n{}",
                node.log_tail()
            );
            assert!(line.ends_with("\r\n"), "answers end with CRLF: {line:?}");
            if tally.take(&line, &mut last, round) {
                break;
            }
        }
        round += 1;
    }
    tally.inputs += sent;
}

/// WebSocket: the same, each chunk its own message (binary when not valid UTF-8).
fn ws_connection(node: &Node, rng: &mut StdRng, inputs: usize, tally: &mut Tally) {
    use tungstenite::Message;
    let stream = TcpStream::connect(("127.0.0.1", node.http)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let url = format!("ws://127.0.0.1:{}/", node.http);
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
    let mut sent = 0;
    let mut round = 0;
    let mut last: Vec<String> = Vec::new();
    while sent < inputs {
        let n = rng.gen_range(1..40).min(inputs - sent);
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.extend(input(rng));
        }
        bytes.extend(sentinel(round));
        if let Ok(path) = std::env::var("NEXUS_FUZZ_DUMP") {
            std::fs::write(path, &bytes).unwrap();
        }
        for chunk in chunks(rng, &bytes) {
            let msg = match String::from_utf8(chunk) {
                Ok(text) if rng.gen_bool(0.8) => Message::text(text),
                Ok(text) => Message::binary(text.into_bytes()),
                Err(e) => Message::binary(e.into_bytes()),
            };
            ws.send(msg).unwrap();
        }
        sent += n;
        loop {
            let msg = ws.read().expect("an answer before the timeout");
            let text = match msg {
                Message::Text(t) => t.to_string(),
                Message::Close(c) => {
                    panic!(
                        "the node closed a WebSocket that sent balanced input: {c:?}; last answers {last:#?}; log:\n{}",
                        node.log_tail()
                    )
                }
                _ => continue,
            };
            if tally.take(&text, &mut last, round) {
                break;
            }
        }
        round += 1;
    }
    tally.inputs += sent;
    let _ = ws.close(None);
}

/// Input that can never complete (unbalanced, or past the size limit): whatever comes
/// back is well-formed, and an oversize input closes the connection after an error.
fn unfinished_connection(node: &Node, rng: &mut StdRng) {
    let mut s = TcpStream::connect(("127.0.0.1", node.tcp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let oversize = rng.gen_bool(0.3);
    let tail: Vec<u8> = if oversize {
        let mut t = br#"{"id":1,"method":"topic.pub","params":{"msg":""#.to_vec();
        t.extend(std::iter::repeat_n(b'x', MAX_MESSAGE + 10));
        t
    } else {
        let tails: &[&[u8]] = &[
            b"{\"id\":1,\"method\":",
            b"[[[[[[",
            b"\"unterminated",
            b"{\"a\":\"\\",
        ];
        tails[rng.gen_range(0..tails.len())].to_vec()
    };
    let mut bytes = input(rng);
    bytes.extend(tail);
    // The node may close while we still write: that is allowed for oversize input.
    let _ = s.write_all(&bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8(all).expect("answers are UTF-8");
    let answers: Vec<Value> = text
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("unparsable answer {l:?}: {e}")))
        .collect();
    for a in &answers {
        check_response(a).unwrap();
    }
    if oversize {
        let last = answers
            .last()
            .expect("an oversize input is answered before the close");
        assert!(
            last["error"]["code"].is_i64(),
            "the close states its reason: {last}"
        );
    }
}

#[test]
fn fuzzed_inputs_over_tcp_and_websocket_get_well_formed_answers() {
    let seed: u64 = std::env::var("NEXUS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022);
    let total: usize = std::env::var("NEXUS_FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    eprintln!("fuzz seed {seed}, {total} inputs");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut node = start_node();
    let rounds = 4;
    let mut rss = Vec::new();
    let mut tally = Tally::default();
    let started = Instant::now();
    for round in 0..rounds {
        let mut left = total / rounds;
        while left > 0 {
            let n = rng.gen_range(100..3000).min(left);
            if rng.gen_bool(0.6) {
                tcp_connection(&node, &mut rng, n, &mut tally);
            } else {
                ws_connection(&node, &mut rng, n, &mut tally);
            }
            left -= n;
            eprintln!(
                "  {} inputs, {:.1}s",
                tally.inputs,
                started.elapsed().as_secs_f64()
            );
            if rng.gen_bool(0.2) {
                unfinished_connection(&node, &mut rng);
            }
            assert!(node.alive(), "the node died");
        }
        assert!(
            node.ping(),
            "the node stopped answering after round {round}"
        );
        // Closed connections' state (pipes, waiting pulls, pushed tasks) is gone once
        // their closes commit; give them a moment before measuring.
        std::thread::sleep(Duration::from_millis(500));
        rss.push(node.rss_kib());
        eprintln!(
            "round {round}: {} inputs, {} answers ({} errors), RSS {} KiB, {:.1}s",
            tally.inputs,
            tally.answers,
            tally.errors,
            rss[round],
            started.elapsed().as_secs_f64()
        );
    }
    assert!(tally.inputs >= total, "{tally:?}");
    assert!(node.ping());
    // Warmed up after the first round: later rounds of the same input mix must not keep
    // adding memory (a leak of even 200 bytes per input would add ~10 MiB per round).
    let growth = rss[rounds - 1].saturating_sub(rss[1]);
    assert!(
        growth < 32 * 1024,
        "RSS kept growing after warm-up: {rss:?} KiB per round"
    );
}
