//! Listeners that turn bytes into requests for a Session and responses back into bytes.

pub mod http;
pub mod jsonstream;
pub mod stream;
pub mod tls;
