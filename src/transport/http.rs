//! `http://` and `https://` listeners: a WebSocket upgrade on any path carries the JSON-RPC
//! stream; any other request with a body is the HTTP bridge (one request, one response,
//! optional Basic auth). Plus `health://`, which answers 200 to anything.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, ProtocolError};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::jsonstream::{Item, JsonStream};
use crate::node::{Control, Node};
use crate::rpc::{self, Response, RpcError};
use crate::session::{Inbound, Reply, Session, TransportEvent};

fn cors(resp: &mut actix_web::HttpResponseBuilder) -> &mut actix_web::HttpResponseBuilder {
    resp.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type",
        ))
}

fn json_response(text: String) -> HttpResponse {
    cors(&mut HttpResponse::Ok())
        .content_type("application/json")
        .body(text)
}

fn remote_of(req: &HttpRequest) -> String {
    req.peer_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// The single handler of the http/https listeners.
pub async fn entry(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<Arc<Node>>,
) -> HttpResponse {
    let node = node.get_ref().clone();
    let secure = req.app_config().secure();
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return websocket(req, body, node, if secure { "wss" } else { "ws" });
    }
    if req.method() == actix_web::http::Method::OPTIONS {
        return cors(&mut HttpResponse::Ok()).finish();
    }
    bridge(req, body, node, if secure { "https" } else { "http" }).await
}

fn websocket(
    req: HttpRequest,
    body: web::Payload,
    node: Arc<Node>,
    protocol: &'static str,
) -> HttpResponse {
    let max = node.args.max_message_size;
    let (resp, session, stream) = match actix_ws::handle(&req, body) {
        Ok(x) => x,
        Err(e) => return e.error_response(),
    };
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let remote = remote_of(&req);
    actix_rt::spawn(async move {
        let opened = Session::open(node, remote, protocol);
        let mut writer_ws = session.clone();
        let mut out = opened.out;
        let writer = actix_rt::spawn(async move {
            while let Some(text) = out.recv().await {
                if writer_ws.text(text).await.is_err() {
                    return;
                }
            }
            let _ = writer_ws.close(None).await;
        });
        let addr = opened.addr;
        let permits = opened.permits;
        let mut stopped = opened.stopped;
        let mut parser = JsonStream::new(max);
        let mut stream = stream;
        let mut pong_ws = session;
        'read: loop {
            let msg = tokio::select! {
                _ = &mut stopped => break 'read,
                m = stream.next() => m,
            };
            let data = match msg {
                Some(Ok(AggregatedMessage::Text(t))) => t.into_bytes(),
                Some(Ok(AggregatedMessage::Binary(b))) => b,
                Some(Ok(AggregatedMessage::Ping(p))) => {
                    let _ = pong_ws.pong(&p).await;
                    continue;
                }
                Some(Ok(AggregatedMessage::Pong(_))) => continue,
                Some(Err(ProtocolError::Overflow)) => {
                    addr.do_send(TransportEvent::Oversize);
                    break 'read;
                }
                Some(Ok(AggregatedMessage::Close(_))) | Some(Err(_)) | None => {
                    addr.do_send(TransportEvent::Closed);
                    break 'read;
                }
            };
            for item in parser.push(&data) {
                match item {
                    Item::Value(raw) => {
                        let permit = tokio::select! {
                            _ = &mut stopped => break 'read,
                            p = permits.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => break 'read,
                            },
                        };
                        addr.do_send(Inbound {
                            raw,
                            permit,
                            reply: Reply::Stream,
                        });
                    }
                    Item::ParseError(e) => addr.do_send(TransportEvent::ParseError(e)),
                    Item::Oversize => {
                        addr.do_send(TransportEvent::Oversize);
                        break 'read;
                    }
                }
            }
        }
        let _ = writer.await;
    });
    resp
}

/// Credentials of an `Authorization: Basic` header.
fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Hands one JSON text to the session and waits for its single answer.
async fn ask(opened: &crate::session::Opened, raw: Box<RawValue>) -> Option<String> {
    let permit = opened.permits.clone().acquire_owned().await.ok()?;
    let (tx, rx) = oneshot::channel();
    opened.addr.do_send(Inbound {
        raw,
        permit,
        reply: Reply::Once(tx),
    });
    rx.await.ok().flatten()
}

async fn bridge(
    req: HttpRequest,
    mut body: web::Payload,
    node: Arc<Node>,
    protocol: &'static str,
) -> HttpResponse {
    let max = node.args.max_message_size;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) if bytes.len() + c.len() <= max => bytes.extend_from_slice(&c),
            Ok(_) => {
                let err = RpcError::detail(
                    rpc::ERR_INVALID_REQUEST,
                    format!("message larger than {max} bytes"),
                );
                return cors(&mut HttpResponse::PayloadTooLarge())
                    .content_type("application/json")
                    .body(Response::error(json!(null), err).to_json());
            }
            Err(_) => return HttpResponse::BadRequest().finish(),
        }
    }
    let raw = match serde_json::from_slice::<Box<RawValue>>(&bytes) {
        Ok(raw) => raw,
        Err(e) => {
            let detail = if bytes.is_empty() {
                "empty body".to_string()
            } else {
                e.to_string()
            };
            return json_response(
                Response::error(json!(null), RpcError::detail(rpc::ERR_PARSE, detail)).to_json(),
            );
        }
    };
    let opened = Session::open(node, remote_of(&req), protocol);
    if let Some((user, pass)) = basic_credentials(&req) {
        let login = json!({"id": 0, "method": "sys.login", "params": {"user": user, "pass": pass}});
        let login = RawValue::from_string(login.to_string()).expect("valid JSON");
        let ok = ask(&opened, login)
            .await
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("result").is_some());
        if !ok {
            opened.addr.do_send(Control::Close);
            let id = serde_json::from_str::<serde_json::Value>(raw.get())
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(json!(null));
            return json_response(Response::error(id, RpcError::permission_denied()).to_json());
        }
    }
    let answer = ask(&opened, raw).await;
    opened.addr.do_send(Control::Close);
    match answer {
        Some(text) => json_response(text),
        None => cors(&mut HttpResponse::NoContent()).finish(),
    }
}

/// The handler of `health://` listeners.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}
