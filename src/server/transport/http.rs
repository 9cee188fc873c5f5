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

use super::jsonstream::JsonStream;
use crate::node::{Control, Node};
use crate::session::{Inbound, Reply, Session, TransportEvent};
use nexus_core::rpc::{self, Response, RpcError};

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
    if is_metrics_scrape(&req) && node.limits.metrics_on_http {
        return metrics(&node).await;
    }
    if req.method() == actix_web::http::Method::GET && matches!(req.path(), "/ui" | "/ui/") {
        return dashboard();
    }
    if req.method() == actix_web::http::Method::GET && req.path() == "/openrpc.json" {
        return openrpc();
    }
    bridge(req, body, node, if secure { "https" } else { "http" }).await
}

fn websocket(
    req: HttpRequest,
    body: web::Payload,
    node: Arc<Node>,
    protocol: &'static str,
) -> HttpResponse {
    let max = node.limits.max_message_size;
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
            // Each answer keeps its in-flight permit until it is handed to the socket.
            while let Some(mut answer) = out.recv().await {
                let text = std::mem::take(&mut answer.text);
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
                    addr.do_send(TransportEvent::Activity);
                    let _ = pong_ws.pong(&p).await;
                    continue;
                }
                Some(Ok(AggregatedMessage::Pong(_))) => {
                    addr.do_send(TransportEvent::Activity);
                    continue;
                }
                Some(Err(ProtocolError::Overflow)) => {
                    addr.do_send(TransportEvent::Oversize);
                    break 'read;
                }
                Some(Ok(AggregatedMessage::Close(_))) | Some(Err(_)) | None => {
                    addr.do_send(TransportEvent::Closed);
                    break 'read;
                }
            };
            if !super::feed(&mut parser, &data, &addr, &permits, &mut stopped).await {
                break 'read;
            }
        }
        super::stream::finish_writer(writer).await;
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

/// Hands one JSON text to the session and waits for its single answer: `Ok(None)` for a
/// notification, `Err` when the session went away without answering.
async fn ask(opened: &crate::session::Opened, raw: Box<RawValue>) -> Result<Option<String>, ()> {
    let permit = opened
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ())?;
    let (tx, rx) = oneshot::channel();
    opened.addr.do_send(Inbound {
        raw,
        permit,
        reply: Reply::Once(tx),
    });
    rx.await.map_err(|_| ())
}

/// The socket under an HTTP connection, so a bridge request can notice its client leaving
/// (actix-web keeps running a handler after the client has gone).
#[derive(Clone, Copy)]
pub struct PeerFd(std::os::fd::RawFd);

/// `HttpServer::on_connect` hook: remembers each connection's socket.
pub fn record_peer_fd(io: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use std::os::fd::AsRawFd;
    if let Some(s) = io.downcast_ref::<actix_rt::net::TcpStream>() {
        ext.insert(PeerFd(s.as_raw_fd()));
    } else if let Some(s) = io.downcast_ref::<TlsStream<actix_rt::net::TcpStream>>() {
        ext.insert(PeerFd(s.get_ref().0.as_raw_fd()));
    }
}

/// Resolves once the client has closed its side of the connection.
async fn hung_up(fd: Option<PeerFd>) {
    let Some(PeerFd(fd)) = fd else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let mut byte = 0u8;
        // SAFETY: `fd` is the socket of the connection actix-web holds open while this
        // handler runs; MSG_PEEK leaves any bytes in place for actix-web.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let err = std::io::Error::last_os_error().kind();
        if n == 0
            || (n < 0
                && !matches!(
                    err,
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ))
        {
            return;
        }
    }
}

/// Closes a bridge session however its request ends, the client hanging up included.
struct CloseOnDrop(actix::Addr<Session>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.do_send(Control::Close);
    }
}

async fn bridge(
    req: HttpRequest,
    mut body: web::Payload,
    node: Arc<Node>,
    protocol: &'static str,
) -> HttpResponse {
    let max = node.limits.max_message_size;
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
    let _close = CloseOnDrop(opened.addr.clone());
    if let Some((user, pass)) = basic_credentials(&req) {
        let login = json!({"id": 0, "method": "sys.login", "params": {"user": user, "pass": pass}});
        let login = RawValue::from_string(login.to_string()).expect("valid JSON");
        let ok = ask(&opened, login)
            .await
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("result").is_some());
        if !ok {
            let id = serde_json::from_str::<serde_json::Value>(raw.get())
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(json!(null));
            return json_response(Response::error(id, RpcError::permission_denied()).to_json());
        }
    }
    let answer = tokio::select! {
        a = ask(&opened, raw) => a,
        _ = hung_up(req.conn_data::<PeerFd>().copied()) => return HttpResponse::Gone().finish(),
    };
    match answer {
        Ok(Some(text)) => json_response(text),
        Ok(None) => cors(&mut HttpResponse::NoContent()).finish(),
        Err(()) => {
            let err =
                RpcError::internal("the request ended without an answer (node shutting down?)");
            json_response(Response::error(json!(null), err).to_json())
        }
    }
}

/// The handler of `health://` listeners: 200 "ok" when the node can serve (a Raft leader
/// is known and apply keeps up), else 503 with the reason.
pub async fn health(req: HttpRequest, node: web::Data<Arc<Node>>) -> HttpResponse {
    if is_metrics_scrape(&req) {
        return metrics(&node).await;
    }
    match node.replica.raft.stats.ready() {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ok\n"),
        Err(why) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {why}\n")),
    }
}

/// `GET /metrics`: the Prometheus scrape (any other method or path is the bridge's).
fn is_metrics_scrape(req: &HttpRequest) -> bool {
    req.method() == actix_web::http::Method::GET && req.path() == "/metrics"
}

async fn metrics(node: &Node) -> HttpResponse {
    let text = node.metrics.render(node).await;
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(text)
}

/// `GET /openrpc.json`: the API's OpenRPC description, from the method table dispatch uses.
fn openrpc() -> HttpResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| crate::api::openrpc::document().to_string());
    cors(&mut HttpResponse::Ok())
        .content_type("application/json")
        .body(doc.as_str())
}

/// The web dashboard: one page, embedded in the binary, that talks JSON-RPC over a
/// WebSocket to this listener like any client.
const DASHBOARD: &str = include_str!("../ui/index.html");

fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // Its own scripts and styles are inline; nothing is loaded from elsewhere, and no
        // other site may frame it.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self' ws: wss:; frame-ancestors 'none'",
        ))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(DASHBOARD)
}
