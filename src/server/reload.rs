//! Live reload, on SIGHUP or `sys.reload`: the TLS certificate and key of the client
//! listeners and the cluster secrets (from `--cluster-secret-file`) are read again. New
//! connections get them; established ones keep what they have. Everything is read and
//! checked before anything changes, so a bad file leaves the node as it was.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

use crate::transport::tls::Certificates;
use nexus_cluster::transport::Keys;
use nexus_cluster::{secret, ClusterLink};

pub struct Reloader {
    /// What the TLS listeners serve (none: no TLS listener).
    pub certificates: Option<Arc<Certificates>>,
    /// The cluster secrets' file (none: in the environment, or no secret: not reloadable).
    pub secret_file: Option<PathBuf>,
    /// --insecure-cluster: weak secrets are only logged.
    pub insecure: bool,
    pub cluster: Option<Arc<ClusterLink>>,
}

impl Reloader {
    /// Reads and installs what can be reloaded; answers what was, or why nothing was.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let result = self.reload_all();
        match &result {
            Ok(done) if done.is_empty() => info!("reload: nothing to reload"),
            Ok(done) => info!("reloaded: {}", done.join("; ")),
            Err(e) => warn!("reload refused, nothing changed: {e}"),
        }
        result
    }

    fn reload_all(&self) -> Result<Vec<String>, String> {
        let certified = match &self.certificates {
            Some(c) => Some((c, c.read()?)),
            None => None,
        };
        let secrets = match (&self.secret_file, &self.cluster) {
            (Some(path), Some(link)) => {
                let s = secret::load_checked(path, self.insecure).map_err(|e| format!("{e:#}"))?;
                Some((path, link, s))
            }
            _ => None,
        };
        let mut done = Vec::new();
        if let Some((certs, fresh)) = certified {
            certs.install(fresh);
            done.push("the TLS certificate and key".to_string());
        }
        if let Some((path, link, secrets)) = secrets {
            link.transport.set_keys(Keys::from_secrets(&secrets));
            link.gossip.set_secrets(&secrets);
            done.push(format!(
                "{} cluster secret(s) from {}",
                secrets.len(),
                path.display()
            ));
        }
        Ok(done)
    }
}
