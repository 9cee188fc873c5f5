//! What checking passwords needs: a bound on concurrent scrypt runs, the failed-login
//! throttle, and the cache of credentials verified lately.

use nexus_core::rpc::RpcError;

pub struct Logins {
    /// Concurrent password hashes allowed.
    hash_slots: tokio::sync::Semaphore,
    /// Failed logins per client address.
    pub throttle: crate::throttle::LoginThrottle,
    /// Credentials verified lately, so repeated logins skip scrypt.
    pub verified: crate::credcache::CredentialCache,
    /// How long a login plugin's worker may take.
    pub plugin_timeout: std::time::Duration,
}

impl Logins {
    /// `hash_concurrency` 0: one hash per core.
    pub fn new(
        hash_concurrency: usize,
        throttle: crate::throttle::ThrottleConfig,
        plugin_timeout: std::time::Duration,
    ) -> Self {
        unknown_user_hash();
        let hashes = match hash_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Logins {
            hash_slots: tokio::sync::Semaphore::new(hashes),
            throttle: crate::throttle::LoginThrottle::new(throttle),
            verified: Default::default(),
            plugin_timeout,
        }
    }

    /// Runs password hashing off the session's thread, a few at a time: each scrypt run
    /// takes 16 MiB and a core, so a login storm queues here instead of growing the heap.
    pub async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RpcError> {
        let _slot = self.slot().await?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(RpcError::internal)
    }

    /// Like `hashing` for a check answering true or false, skipped (true) when `done()` is
    /// true once a slot is free: the answer arrived meanwhile from another request.
    pub async fn hashing_unless(
        &self,
        done: impl Fn() -> bool,
        f: impl FnOnce() -> bool + Send + 'static,
    ) -> Result<bool, RpcError> {
        let _slot = self.slot().await?;
        if done() {
            return Ok(true);
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(RpcError::internal)
    }

    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, RpcError> {
        self.hash_slots.acquire().await.map_err(RpcError::internal)
    }
}

/// A hash no password matches in practice, with the parameters of real ones: what the
/// password of an unknown user is checked against, so that it takes as long as a wrong one.
/// Made once, when the first `Logins` is (so the first probe is not slower either).
pub fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| nexus_core::auth::hash_password(&nexus_core::ids::random_hex(32)))
}
