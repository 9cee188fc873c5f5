//! JSON-RPC 2.0 wire types: requests, responses, error codes and typed parameter access.
//! Knows nothing about state or transports.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

pub const ERR_PARSE: i64 = -32700;
pub const ERR_INVALID_REQUEST: i64 = -32600;
pub const ERR_METHOD_NOT_FOUND: i64 = -32601;
pub const ERR_INVALID_PARAMS: i64 = -32602;
pub const ERR_INTERNAL: i64 = -32603;
pub const ERR_TIMEOUT: i64 = -32000;
pub const ERR_CANCEL: i64 = -32001;
pub const ERR_INVALID_TASK: i64 = -32002;
pub const ERR_INVALID_PIPE: i64 = -32003;
pub const ERR_INVALID_USER: i64 = -32004;
pub const ERR_USER_EXISTS: i64 = -32005;
pub const ERR_LOCK_NOT_OWNED: i64 = -32006;
pub const ERR_PERMISSION_DENIED: i64 = -32010;
pub const ERR_TTL_EXPIRED: i64 = -32011;

/// The standard text for a known error code.
pub fn standard_text(code: i64) -> Option<&'static str> {
    Some(match code {
        ERR_PARSE => "Parse error",
        ERR_INVALID_REQUEST => "Invalid request",
        ERR_METHOD_NOT_FOUND => "Method not found",
        ERR_INVALID_PARAMS => "Invalid params",
        ERR_INTERNAL => "Internal error",
        ERR_TIMEOUT => "Timeout",
        ERR_CANCEL => "Cancel",
        ERR_INVALID_TASK => "Invalid task",
        ERR_INVALID_PIPE => "Invalid pipe",
        ERR_INVALID_USER => "Invalid user",
        ERR_USER_EXISTS => "User already exists",
        ERR_LOCK_NOT_OWNED => "Lock not owned",
        ERR_PERMISSION_DENIED => "Permission denied",
        ERR_TTL_EXPIRED => "TTL expired",
        _ => return None,
    })
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with the standard text of `code`.
    pub fn new(code: i64) -> Self {
        RpcError {
            code,
            message: standard_text(code).unwrap_or("Error").to_string(),
            data: None,
        }
    }

    /// `"<standard text>:[<detail>]"`, the form existing clients parse.
    pub fn detail(code: i64, detail: impl std::fmt::Display) -> Self {
        let text = standard_text(code).unwrap_or("Error");
        RpcError {
            code,
            message: format!("{text}:[{detail}]"),
            data: None,
        }
    }

    pub fn invalid_params(name: &str) -> Self {
        Self::detail(ERR_INVALID_PARAMS, name)
    }

    /// `Invalid params:[name]`, with the reason in `data` (the detail stays the bare
    /// parameter name, as clients expect).
    pub fn invalid_param_because(name: &str, why: impl Into<String>) -> Self {
        RpcError {
            data: Some(Value::String(why.into())),
            ..Self::invalid_params(name)
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::detail(ERR_INTERNAL, detail)
    }

    pub fn permission_denied() -> Self {
        Self::new(ERR_PERMISSION_DENIED)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

pub type RpcResult = Result<Value, RpcError>;

/// `{"ok": true}`, the answer of every call whose result would be empty.
pub fn ok() -> Value {
    json!({"ok": true})
}

/// One parsed request. `id` is `None` for a notification (no `id` member at all).
#[derive(Debug, Clone)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// What one JSON value read from a connection turned out to be.
#[derive(Debug)]
pub enum Incoming {
    Single(Result<Request, Box<Response>>),
    /// A batch: each element is a request or an immediate error response.
    Batch(Vec<Result<Request, Box<Response>>>),
}

/// Interprets one complete JSON text as a request or a batch of requests.
pub fn parse_incoming(raw: &RawValue) -> Incoming {
    match serde_json::from_str::<Value>(raw.get()) {
        Err(e) => Incoming::Single(Err(Box::new(Response::error(
            Value::Null,
            RpcError::detail(ERR_PARSE, e),
        )))),
        Ok(Value::Array(items)) if items.is_empty() => {
            Incoming::Single(Err(Box::new(Response::error(
                Value::Null,
                RpcError::detail(ERR_INVALID_REQUEST, "empty batch"),
            ))))
        }
        Ok(Value::Array(items)) => Incoming::Batch(items.into_iter().map(parse_request).collect()),
        Ok(v) => Incoming::Single(parse_request(v)),
    }
}

/// Validates one request object.
pub fn parse_request(v: Value) -> Result<Request, Box<Response>> {
    let mut obj = match v {
        Value::Object(m) => m,
        _ => {
            return Err(Box::new(Response::error(
                Value::Null,
                RpcError::detail(ERR_INVALID_REQUEST, "not an object"),
            )))
        }
    };
    let id = obj.remove("id");
    let reply_id = id.clone().unwrap_or(Value::Null);
    if let Some(ver) = obj.get("jsonrpc") {
        if ver != "2.0" {
            return Err(Box::new(Response::error(
                reply_id,
                RpcError::detail(ERR_INVALID_REQUEST, "jsonrpc"),
            )));
        }
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => {
            return Err(Box::new(Response::error(
                reply_id,
                RpcError::detail(ERR_INVALID_REQUEST, "method"),
            )))
        }
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    Ok(Request { id, method, params })
}

/// A response ready to be serialised.
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub jsonrpc: &'static str,
    pub id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    pub fn result(id: Value, result: Value) -> Self {
        Response {
            jsonrpc: "2.0",
            id,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(id: Value, error: RpcError) -> Self {
        Response {
            jsonrpc: "2.0",
            id,
            result: None,
            error: Some(error),
        }
    }

    pub fn from_result(id: Value, r: RpcResult) -> Self {
        match r {
            Ok(v) => Self::result(id, v),
            Err(e) => Self::error(id, e),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("responses are always serialisable")
    }
}

/// Typed access to a request's named parameters. Missing or mistyped required parameters
/// answer `-32602` with the parameter name as detail.
pub struct Params<'a> {
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Params<'a> {
    pub fn new(params: &'a Value) -> Result<Self, RpcError> {
        match params {
            Value::Object(m) => Ok(Params { map: Some(m) }),
            Value::Null => Ok(Params { map: None }),
            _ => Err(RpcError::invalid_param_because(
                "params",
                "must be an object",
            )),
        }
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(name)).filter(|v| !v.is_null())
    }

    /// All the parameters as an object (empty when none were sent).
    pub fn object_or_empty(&self) -> Map<String, Value> {
        self.map.cloned().unwrap_or_default()
    }

    /// A parameter that may legitimately be `null` (message payloads).
    pub fn payload(&self, name: &str) -> Result<&'a Value, RpcError> {
        self.map
            .and_then(|m| m.get(name))
            .ok_or_else(|| RpcError::invalid_params(name))
    }

    pub fn value(&self, name: &str) -> Result<&'a Value, RpcError> {
        self.get(name).ok_or_else(|| RpcError::invalid_params(name))
    }

    pub fn str(&self, name: &str) -> Result<&'a str, RpcError> {
        self.opt_str(name)?
            .ok_or_else(|| RpcError::invalid_params(name))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RpcError::invalid_params(name)),
        }
    }

    /// An integer parameter; JSON numbers with a fraction (some JS clients send those)
    /// are truncated.
    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| RpcError::invalid_params(name)),
            Some(_) => Err(RpcError::invalid_params(name)),
        }
    }

    pub fn i64(&self, name: &str) -> Result<i64, RpcError> {
        self.opt_i64(name)?
            .ok_or_else(|| RpcError::invalid_params(name))
    }

    /// A number of seconds, fractions allowed.
    pub fn opt_f64(&self, name: &str) -> Result<Option<f64>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| RpcError::invalid_params(name)),
            Some(_) => Err(RpcError::invalid_params(name)),
        }
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(RpcError::invalid_params(name)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, RpcError> {
        self.opt_bool(name)?
            .ok_or_else(|| RpcError::invalid_params(name))
    }

    pub fn object(&self, name: &str) -> Result<&'a Map<String, Value>, RpcError> {
        match self.get(name) {
            Some(Value::Object(m)) => Ok(m),
            _ => Err(RpcError::invalid_params(name)),
        }
    }

    /// An array of strings.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, RpcError> {
        match self.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| RpcError::invalid_params(name))
                })
                .collect(),
            _ => Err(RpcError::invalid_params(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Incoming {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        parse_incoming(&raw)
    }

    #[test]
    fn error_messages_carry_detail_in_brackets() {
        assert_eq!(
            RpcError::invalid_params("method").message,
            "Invalid params:[method]"
        );
        assert_eq!(
            RpcError::new(ERR_USER_EXISTS).message,
            "User already exists"
        );
    }

    #[test]
    fn notification_has_no_id_but_null_id_is_a_request() {
        match parse(r#"{"method":"sys.ping"}"#) {
            Incoming::Single(Ok(r)) => assert!(r.id.is_none()),
            other => panic!("{other:?}"),
        }
        match parse(r#"{"id":null,"method":"sys.ping"}"#) {
            Incoming::Single(Ok(r)) => assert_eq!(r.id, Some(Value::Null)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_requests() {
        for text in [
            r#"{"id":1}"#,
            r#"{"id":1,"method":""}"#,
            r#"{"id":1,"method":"x","jsonrpc":"1.0"}"#,
            r#"{"id":1,"method":7}"#,
        ] {
            match parse(text) {
                Incoming::Single(Err(resp)) => {
                    assert_eq!(resp.error.unwrap().code, ERR_INVALID_REQUEST, "{text}");
                    assert_eq!(resp.id, json!(1));
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn params_are_typed() {
        let v = json!({"a": "x", "n": 2.7, "b": true, "l": ["p", "q"]});
        let p = Params::new(&v).unwrap();
        assert_eq!(p.str("a").unwrap(), "x");
        assert_eq!(p.i64("n").unwrap(), 2);
        assert!(p.bool("b").unwrap());
        assert_eq!(p.strings("l").unwrap(), vec!["p", "q"]);
        assert_eq!(p.str("n").unwrap_err().message, "Invalid params:[n]");
        assert_eq!(p.str("missing").unwrap_err().code, ERR_INVALID_PARAMS);
        assert!(Params::new(&json!([1])).is_err());
    }
}
