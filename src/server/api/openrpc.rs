//! The OpenRPC document (https://spec.open-rpc.org, 1.2.6) served at `GET /openrpc.json`,
//! built from the method table: what a client author or a code generator reads.

use serde_json::{json, Map, Value};

use super::methods::{Access, Method, Param, Ty, ERRORS, METHODS};
use nexus_core::rpc::{standard_text, ERR_INTERNAL, ERR_INVALID_PARAMS};

fn schema(ty: Ty) -> Value {
    match ty.schema_name() {
        Some(t) => json!({"type": t}),
        None => json!({}),
    }
}

fn error(code: i64) -> Value {
    json!({"code": code, "message": standard_text(code).unwrap_or("Error")})
}

fn param(p: &Param) -> Value {
    let mut s = schema(p.ty);
    if let Some(d) = p.default {
        // Defaults are JSON text in the table; a bad one is a bug the tests catch.
        s["default"] = serde_json::from_str(d).unwrap_or(Value::Null);
    }
    json!({
        "name": p.name,
        "required": p.required,
        "description": p.doc,
        "schema": s,
    })
}

fn method(m: &Method) -> Value {
    let (access, path, permission) = match m.access {
        Access::Anyone => ("anyone", "", "Any connection may call it.".to_string()),
        Access::Tag(path) => (
            "tag",
            path,
            format!("Needs the tag @{} (or @admin) in force at: {path}.", m.name),
        ),
        Access::Owner(who) => (
            "owner",
            who,
            format!("Only {who} may call it; no tag is checked."),
        ),
    };
    // Any method can answer bad params and a retryable internal error.
    let mut codes = m.errors.to_vec();
    codes.extend([ERR_INVALID_PARAMS, ERR_INTERNAL]);
    codes.sort_unstable_by(|a, b| b.cmp(a));
    codes.dedup();
    json!({
        "name": m.name,
        "summary": m.summary,
        "description": permission,
        "paramStructure": "by-name",
        "params": m.params.iter().map(param).collect::<Vec<_>>(),
        "result": {"name": "result", "description": m.result.1, "schema": schema(m.result.0)},
        "errors": codes.into_iter().map(error).collect::<Vec<_>>(),
        "x-access": access,
        "x-permission": path,
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut errors = Map::new();
    for code in ERRORS {
        errors.insert(code.to_string(), error(*code));
    }
    json!({
        "openrpc": "1.2.6",
        "info": {
            "title": "Nexus JSON-RPC API (Nexus-rs)",
            "version": "1.9.0",
            "description": format!(
                "Nexus API 1.9 as served by Nexus-rs {} (commit {}). Transports: TCP, TLS, \
                 WebSocket and the HTTP bridge; docs/api.md is the full contract.",
                crate::build_info::VERSION,
                crate::build_info::COMMIT
            ),
            "license": {"name": "MIT"},
        },
        "methods": METHODS.iter().map(method).collect::<Vec<_>>(),
        "components": {"errors": errors},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_json_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in METHODS {
            assert!(seen.insert(m.name), "{} twice", m.name);
            let mut params = std::collections::HashSet::new();
            for p in m.params {
                assert!(params.insert(p.name), "{}: {} twice", m.name, p.name);
                if let Some(d) = p.default {
                    serde_json::from_str::<Value>(d)
                        .unwrap_or_else(|e| panic!("{}.{}: {d}: {e}", m.name, p.name));
                }
            }
        }
    }

    /// A handler's name the table lacks would never be reached (dispatch refuses it):
    /// every name the namespace modules match on is in the table.
    #[test]
    fn every_name_a_handler_matches_is_in_the_table() {
        let sources = [
            ("sys", include_str!("sys.rs")),
            ("sys", include_str!("sessions.rs")),
            ("user", include_str!("user.rs")),
            ("pipe", include_str!("pipe.rs")),
            ("topic", include_str!("topic.rs")),
            ("sync", include_str!("sync.rs")),
            ("task", include_str!("task.rs")),
        ];
        let arm = regex::Regex::new(r#""([A-Za-z.]+)"\s*(=>|\|)"#).unwrap();
        let mut found = 0;
        for (ns, src) in sources {
            // Only the body of `pub async fn call`, up to its closing brace.
            let start = src.find("pub async fn call(").expect("a call fn");
            let body = &src[start..];
            let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
            for c in arm.captures_iter(body) {
                let name = format!("{ns}.{}", &c[1]);
                assert!(
                    super::super::methods::find(&name).is_some(),
                    "{name} is handled but not in the method table"
                );
                found += 1;
            }
        }
        assert!(found >= 40, "the scan found only {found} names");
    }
}
