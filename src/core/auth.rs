//! Authentication and authorisation as pure functions: password hashing, tag resolution
//! (prefix merge, templates, masks), permission checks and address lists.

use std::collections::{BTreeMap, HashSet};

use regex::Regex;
use scrypt::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use scrypt::Scrypt;
use serde_json::{Map, Value};

use crate::names::prefixes;

/// Tag name → value, as set at one prefix.
pub type TagMap = Map<String, Value>;
/// Prefix → tags set there: everything a user has been granted.
pub type Tags = BTreeMap<String, TagMap>;
/// Finds a user's own tags and template list by name.
pub type UserLookup<'a> = dyn Fn(&str) -> Option<(&'a Tags, &'a [String])> + 'a;

/// scrypt N=2^14, r=8, p=1 — the floor the spec sets.
fn scrypt_params() -> scrypt::Params {
    scrypt::Params::new(14, 8, 1, 32).expect("valid scrypt parameters")
}

/// A salted scrypt hash in PHC string form.
pub fn hash_password(pass: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Scrypt
        .hash_password_customized(pass.as_bytes(), None, None, scrypt_params(), &salt)
        .expect("scrypt hashing cannot fail with valid parameters")
        .to_string()
}

/// True when `pass` matches the stored PHC hash. A malformed hash never matches.
pub fn verify_password(pass: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Scrypt.verify_password(pass.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A user's tags with its templates merged in underneath (own tags win), recursively;
/// `lookup` returns a user's own tags and template list. Cycles are ignored.
pub fn with_templates<'a>(name: &str, lookup: &UserLookup<'a>) -> Tags {
    let mut seen = HashSet::new();
    merge_user(name, lookup, &mut seen)
}

fn merge_user<'a>(name: &str, lookup: &UserLookup<'a>, seen: &mut HashSet<String>) -> Tags {
    if !seen.insert(name.to_string()) {
        return Tags::new();
    }
    let Some((own, templates)) = lookup(name) else {
        return Tags::new();
    };
    let mut merged = own.clone();
    for template in templates {
        for (prefix, tags) in merge_user(template, lookup, seen) {
            let entry = merged.entry(prefix).or_default();
            for (tag, value) in tags {
                entry.entry(tag).or_insert(value);
            }
        }
    }
    merged
}

/// Keeps only the tags whose value is equal in both `tags` and `mask`.
pub fn apply_mask(tags: &Tags, mask: &Tags) -> Tags {
    let mut out = Tags::new();
    for (prefix, map) in tags {
        let Some(mask_map) = mask.get(prefix) else {
            continue;
        };
        let kept: TagMap = map
            .iter()
            .filter(|(k, v)| mask_map.get(*k) == Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            out.insert(prefix.clone(), kept);
        }
    }
    out
}

/// The tags in force at `path`: the merge over all prefixes of `path`, the shorter
/// prefix winning, so a grant or denial high in the tree cannot be undone lower down.
pub fn tags_at(tags: &Tags, path: &str) -> TagMap {
    let mut out = TagMap::new();
    for prefix in prefixes(path) {
        if let Some(map) = tags.get(prefix) {
            for (k, v) in map {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// A call of `method` is allowed where `@method` or `@admin` is `true`.
pub fn allowed(in_force: &TagMap, method: &str) -> bool {
    let flag = |name: &str| in_force.get(name) == Some(&Value::Bool(true));
    flag("@admin") || flag(&format!("@{method}"))
}

/// Convenience: is `method` allowed at `path` for a session holding `tags`?
pub fn may(tags: &Tags, path: &str, method: &str) -> bool {
    allowed(&tags_at(tags, path), method)
}

/// Whitelist first (a match allows), then blacklist (a match refuses). Patterns are
/// regexps matched against `ip:port`; an invalid pattern matches nothing.
pub fn address_allowed(whitelist: &[String], blacklist: &[String], addr: &str) -> bool {
    let matches = |pattern: &String| Regex::new(pattern).is_ok_and(|re| re.is_match(addr));
    whitelist.iter().any(matches) || !blacklist.iter().any(matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tags(v: Value) -> Tags {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn shorter_prefix_wins() {
        let t = tags(json!({"a": {"yes": true, "only_a": 1}, ".": {"yes": false}}));
        let at = tags_at(&t, "a.x");
        assert_eq!(at.get("yes"), Some(&json!(false)));
        assert_eq!(at.get("only_a"), Some(&json!(1)));
        let t = tags(json!({"a.b": {"k": "ab"}, "a": {"k": "a"}}));
        assert_eq!(tags_at(&t, "a.b.c").get("k"), Some(&json!("a")));
        assert_eq!(tags_at(&t, "z").get("k"), None);
    }

    #[test]
    fn permission_needs_method_or_admin_true() {
        let t = tags(json!({"test": {"@user.create": true, "@user.delete": "yes"}}));
        assert!(may(&t, "test.u1", "user.create"));
        assert!(!may(&t, "test.u1", "user.delete"));
        assert!(!may(&t, "other", "user.create"));
        let root = tags(json!({".": {"@admin": true}}));
        assert!(may(&root, "anything.at.all", "user.delete"));
        let denied = tags(json!({".": {"@admin": false}, "x": {"@admin": true}}));
        assert!(!may(&denied, "x", "user.create"));
    }

    #[test]
    fn templates_merge_under_own_tags_and_ignore_cycles() {
        let a = tags(json!({"p": {"k": "a", "own": 1}}));
        let b = tags(json!({"p": {"k": "b", "fromb": 2}, "q": {"z": 3}}));
        let c = tags(json!({"r": {"fromc": 4}}));
        let ta = vec!["b".to_string()];
        let tb = vec!["c".to_string(), "a".to_string()];
        let tc = vec!["a".to_string()];
        let lookup = |n: &str| match n {
            "a" => Some((&a, ta.as_slice())),
            "b" => Some((&b, tb.as_slice())),
            "c" => Some((&c, tc.as_slice())),
            _ => None,
        };
        let merged = with_templates("a", &lookup);
        assert_eq!(merged["p"]["k"], json!("a"));
        assert_eq!(merged["p"]["own"], json!(1));
        assert_eq!(merged["p"]["fromb"], json!(2));
        assert_eq!(merged["q"]["z"], json!(3));
        assert_eq!(merged["r"]["fromc"], json!(4));
    }

    #[test]
    fn mask_keeps_only_equal_tags() {
        let t = tags(json!({".": {"@admin": true, "x": 1}, "a": {"y": 2}}));
        let m = tags(json!({".": {"x": 1, "@admin": false}, "a": {"y": 2}}));
        assert_eq!(
            apply_mask(&t, &m),
            tags(json!({".": {"x": 1}, "a": {"y": 2}}))
        );
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("secret");
        assert!(h.starts_with("$scrypt$"));
        assert!(!h.contains("secret"));
        assert!(verify_password("secret", &h));
        assert!(!verify_password("Secret", &h));
        assert!(!verify_password("secret", "garbage"));
        assert_ne!(hash_password("secret"), h, "salted");
    }

    #[test]
    fn whitelist_overrides_blacklist() {
        let white = vec![r"^10\.0\.0\.1:".to_string()];
        let black = vec![r"^10\.".to_string()];
        assert!(address_allowed(&white, &black, "10.0.0.1:5555"));
        assert!(!address_allowed(&white, &black, "10.0.0.2:5555"));
        assert!(address_allowed(&white, &black, "127.0.0.1:5555"));
        assert!(address_allowed(&[], &["(".to_string()], "1.2.3.4:1"));
    }
}
