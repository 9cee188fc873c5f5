//! TLS for `ssl://` and `wss://`: rustls with the ring provider, the node's certificate
//! checked against a CA file or the system's roots.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};

/// A TLS client stream over `tcp`, verifying the node's certificate for `host`.
pub fn over(
    tcp: TcpStream,
    host: &str,
    ca: Option<&Path>,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in load_certs(path)? {
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("no system root certificates found: name the node's CA with --ca FILE");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .with_context(|| format!("{host} is not a valid TLS server name"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tcp = tcp;
    // The handshake now, so that a certificate problem is reported as one.
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .with_context(|| format!("TLS handshake with {host}"))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The certificates of a PEM file (at least one).
fn load_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).with_context(|| format!("the CA file: reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the CA file: parsing {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "the CA file: {}: no certificate found",
            path.display()
        ));
    }
    Ok(certs)
}
