//! The run's history: one JSON line per event, kept in memory for the checker and written
//! to `history.jsonl` for inspection (`nexus chaos --check FILE` re-checks a saved one).

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The node of a fault that hits every node at once (a power cut).
pub const ALL_NODES: usize = usize::MAX;

/// What a line records. Client operations are written twice: `invoke` when they complete
/// (with the invocation time), then their outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    /// Answered with a result.
    Ok,
    /// Answered with a JSON-RPC error: the operation did not happen (`result` holds it).
    Fail,
    /// No answer: the connection broke or the answer never came (`result` says which).
    Unknown,
    /// A fault was injected on `node` (`op`: kill, pause, isolate).
    Fault,
    /// The fault on `node` was lifted (restart, continue, reconnect).
    Heal,
    /// Every node answered its health check again after a heal.
    Healthy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Seconds since the run started, when this happened.
    pub time: f64,
    /// For outcomes: when the operation was invoked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub invoke: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    #[serde(default)]
    pub node: usize,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Shared by every client thread and the fault injector.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    records: Vec<Record>,
    file: Option<BufWriter<std::fs::File>>,
}

impl Recorder {
    pub fn new(path: Option<&Path>) -> anyhow::Result<Recorder> {
        let file = match path {
            Some(p) => Some(BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                records: Vec::new(),
                file,
            })),
        })
    }

    /// Seconds since the run started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn push(&self, record: Record) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inner.file.as_mut() {
            // The history is for inspection; a full disk must not stop the run.
            let _ = serde_json::to_writer(&mut *f, &record);
            let _ = f.write_all(b"\n");
        }
        inner.records.push(record);
    }

    /// A fault-injector event.
    pub fn event(&self, kind: Kind, op: &str, node: usize) {
        self.push(Record {
            kind,
            time: self.now(),
            invoke: 0.0,
            client: String::new(),
            node,
            op: op.to_string(),
            value: Value::Null,
            result: Value::Null,
        });
    }

    /// A completed client operation: its `invoke` line, then its outcome.
    pub fn operation(&self, op: Operation) {
        let time = self.now();
        self.push(Record {
            kind: Kind::Invoke,
            time: op.invoke,
            invoke: 0.0,
            client: op.client.clone(),
            node: op.node,
            op: op.op.to_string(),
            value: op.value.clone(),
            result: Value::Null,
        });
        self.push(Record {
            kind: op.outcome,
            time,
            invoke: op.invoke,
            client: op.client,
            node: op.node,
            op: op.op.to_string(),
            value: op.value,
            result: op.result,
        });
    }

    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inner.file.as_mut() {
            let _ = f.flush();
        }
    }

    /// Hands over the records kept so far (a long run's history is millions of them:
    /// moved, not copied).
    pub fn take_records(&self) -> Vec<Record> {
        self.flush();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut inner.records)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.records.len()).unwrap_or(0)
    }
}

/// One finished client operation, as handed to [`Recorder::operation`].
pub struct Operation {
    pub client: String,
    pub node: usize,
    pub op: &'static str,
    pub value: Value,
    pub invoke: f64,
    pub outcome: Kind,
    pub result: Value,
}

/// Reads a history written by an earlier run.
pub fn load(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut records = Vec::new();
    for (i, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        records.push(record);
    }
    Ok(records)
}
