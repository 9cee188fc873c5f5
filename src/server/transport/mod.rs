//! Listeners that turn bytes into requests for a Session and responses back into bytes.

pub mod http;
pub mod jsonstream;
pub mod stream;
pub mod tls;

use std::sync::Arc;

use actix::Addr;
use tokio::sync::{oneshot, Semaphore};

use crate::session::{Inbound, Reply, Session, TransportEvent};
use jsonstream::{Item, JsonStream};

/// Hands the requests that `data` completes to the session. Waiting for an in-flight permit
/// is the backpressure: the transport stops reading its socket meanwhile. Answers false
/// when the connection must stop reading (session gone, oversize message).
pub async fn feed(
    parser: &mut JsonStream,
    data: &[u8],
    addr: &Addr<Session>,
    permits: &Arc<Semaphore>,
    stopped: &mut oneshot::Receiver<()>,
) -> bool {
    for item in parser.push(data) {
        match item {
            Item::Value(raw) => {
                let permit = tokio::select! {
                    _ = &mut *stopped => return false,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return false,
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
                return false;
            }
        }
    }
    true
}
