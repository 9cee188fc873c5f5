//! Verified-credential cache: after a password checked out against a user's stored scrypt
//! hash, a keyed hash of (user, password) is remembered with that stored hash, so the next
//! login with the same credentials skips scrypt (~30 ms of a core and 16 MiB each). The key
//! is random per process and nothing leaves memory.
//!
//! Invalidation is by construction: an entry only matches while the user's stored hash is
//! the one it was verified against, so a password change anywhere in the cluster (a new
//! salted hash), a delete or a recreate makes it useless at once. Tags, limits and the
//! disabled flag are read fresh at every login and never cached.

use hmac::{Hmac, Mac};
use quick_cache::sync::Cache;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Entries kept at most. Beyond, the least useful go first (S3-FIFO: a flood of one-off
/// logins does not push out the accounts that log in again and again), so a full cache
/// never makes every client pay for scrypt at once.
const MAX_ENTRIES: usize = 100_000;

pub struct CredentialCache {
    key: [u8; 32],
    /// user → (stored hash it was verified against, keyed hash of user and password).
    verified: Cache<String, (String, [u8; 32])>,
}

impl Default for CredentialCache {
    fn default() -> Self {
        CredentialCache::with_capacity(MAX_ENTRIES)
    }
}

impl CredentialCache {
    pub fn with_capacity(entries: usize) -> Self {
        CredentialCache {
            key: rand::random(),
            verified: Cache::new(entries),
        }
    }

    fn tag(&self, user: &str, pass: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(pass.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// True when `pass` was verified for `user` while its stored hash was `stored`. The
    /// comparisons take the same time wherever they differ.
    pub fn matches(&self, user: &str, pass: &str, stored: &str) -> bool {
        let tag = self.tag(user, pass);
        self.verified.get(user).is_some_and(|(hash, t)| {
            let same_hash = hash.as_bytes().ct_eq(stored.as_bytes());
            (same_hash & t.ct_eq(&tag)).into()
        })
    }

    /// Remembers that `pass` checked out against `stored` for `user`.
    pub fn remember(&self, user: &str, pass: &str, stored: &str) {
        let tag = self.tag(user, pass);
        self.verified
            .insert(user.to_string(), (stored.to_string(), tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_credentials_against_the_same_stored_hash() {
        let c = CredentialCache::default();
        assert!(!c.matches("alice", "pw", "h1"));
        c.remember("alice", "pw", "h1");
        assert!(c.matches("alice", "pw", "h1"));
        assert!(!c.matches("alice", "other", "h1"), "another password");
        assert!(
            !c.matches("alice", "pw", "h2"),
            "the password was changed since"
        );
        assert!(!c.matches("bob", "pw", "h1"), "another user");
        // (user, pass) pairs that concatenate alike are still different.
        c.remember("ab", "c", "h");
        assert!(!c.matches("a", "bc", "h"));
    }

    #[test]
    fn stays_bounded_and_keeps_the_accounts_in_use_through_a_flood() {
        let c = CredentialCache::with_capacity(100);
        c.remember("service", "pw", "h");
        for i in 0..5_000 {
            c.remember(&format!("once{i}"), "pw", "h");
            if i % 10 == 0 {
                assert!(
                    c.matches("service", "pw", "h"),
                    "evicted after {i} one-off logins"
                );
            }
        }
        assert!(c.verified.len() <= 100, "{} entries", c.verified.len());
    }
}
