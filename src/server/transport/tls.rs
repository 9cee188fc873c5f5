//! TLS for `ssl://` and `https://` listeners (rustls with the ring provider). The
//! certificate is served through `Certificates`, so that a reload replaces it for new
//! connections while established ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use tokio_rustls::TlsAcceptor;

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("parsing {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// A PEM certificate chain and private key, checked to belong together.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = load_certs(cert)?;
    let key_pem = read(key)?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("parsing {}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key_der, &provider)
        .map_err(|e| format!("TLS certificate/key: {e}"))?;
    Ok(certified)
}

/// The certificate the TLS listeners serve, read from two files and read again on reload.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn load(cert: &Path, key: &Path) -> Result<Certificates, String> {
        Ok(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(load_certified_key(cert, key)?)),
        })
    }

    /// Reads and checks the files again, without serving them yet.
    pub fn read(&self) -> Result<CertifiedKey, String> {
        load_certified_key(&self.cert, &self.key)
    }

    /// Serves `fresh` to new connections.
    pub fn install(&self, fresh: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The listeners' server configuration, serving `certs`.
pub fn server_config(certs: Arc<Certificates>) -> Result<rustls::ServerConfig, String> {
    Ok(rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(certs))
}

pub fn acceptor(cfg: rustls::ServerConfig) -> TlsAcceptor {
    TlsAcceptor::from(Arc::new(cfg))
}
