//! How the CLI shows an answer to a person: lists of objects as aligned tables, objects
//! as `key: value` lines, anything else as JSON. `--json` skips all of this.

use serde_json::Value;

/// Text for `value`, ending in a newline.
pub fn human(value: &Value) -> String {
    match value {
        Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_object) => table(rows),
        Value::Array(rows) if rows.is_empty() => "(none)\n".to_string(),
        Value::Object(map) => {
            let width = map.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            map.iter()
                .map(|(k, v)| format!("{k:width$}  {}\n", cell(v)))
                .collect()
        }
        other => format!("{}\n", cell(other)),
    }
}

/// Columns that name a row come first, in this order.
const NAMING: [&str; 6] = ["user", "lock", "connid", "id", "topic", "raftId"];

/// Naming columns first, then the others in first-seen order; nested values as compact
/// JSON.
fn table(rows: &[Value]) -> String {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        for key in row.as_object().into_iter().flat_map(|m| m.keys()) {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    let rank = |c: &String| NAMING.iter().position(|n| n == c).unwrap_or(NAMING.len());
    columns.sort_by_key(rank); // stable: the rest keep their order
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| row.get(c).map(cell).unwrap_or_default())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: &[String]| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&columns);
    for r in &cells {
        out.push_str(&line(r));
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_of_objects_become_aligned_tables() {
        let rows = json!([{"tags": {"a": 1}, "user": "root"}, {"user": "alice", "extra": true}]);
        assert_eq!(
            human(&rows),
            "user   tags     extra\nroot   {\"a\":1}\nalice           true\n"
        );
    }

    #[test]
    fn objects_become_key_value_lines() {
        assert_eq!(
            human(&json!({"count": 3, "name": "x"})),
            "count  3\nname   x\n"
        );
        assert_eq!(human(&json!([])), "(none)\n");
        assert_eq!(human(&json!("hi")), "hi\n");
    }
}
