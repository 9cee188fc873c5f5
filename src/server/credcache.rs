//! Verified-credential cache: after a password checked out against a user's stored scrypt
//! hash, a keyed hash of (user, password) is remembered with that stored hash, so the next
//! login with the same credentials skips scrypt (~30 ms of a core and 16 MiB each). The key
//! is random per process and nothing leaves memory.
//!
//! Invalidation is by construction: an entry only matches while the user's stored hash is
//! the one it was verified against, so a password change anywhere in the cluster (a new
//! salted hash), a delete or a recreate makes it useless at once. Tags, limits and the
//! disabled flag are read fresh at every login and never cached.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Entries kept at most; the cache starts over when full (only a speed-up is lost).
const MAX_ENTRIES: usize = 100_000;

pub struct CredentialCache {
    key: [u8; 32],
    /// user → (stored hash it was verified against, keyed hash of user and password).
    verified: Mutex<HashMap<String, (String, [u8; 32])>>,
}

impl Default for CredentialCache {
    fn default() -> Self {
        CredentialCache {
            key: rand::random(),
            verified: Mutex::new(HashMap::new()),
        }
    }
}

impl CredentialCache {
    fn tag(&self, user: &str, pass: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(pass.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// True when `pass` was verified for `user` while its stored hash was `stored`.
    pub fn matches(&self, user: &str, pass: &str, stored: &str) -> bool {
        let tag = self.tag(user, pass);
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(user)
            .is_some_and(|(hash, t)| hash == stored && constant_eq(t, &tag))
    }

    /// Remembers that `pass` checked out against `stored` for `user`.
    pub fn remember(&self, user: &str, pass: &str, stored: &str) {
        let tag = self.tag(user, pass);
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MAX_ENTRIES && !verified.contains_key(user) {
            verified.clear();
        }
        verified.insert(user.to_string(), (stored.to_string(), tag));
    }
}

/// Compares without an early exit, so timing tells nothing about the tag.
fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
}
