//! Dot-separated label paths (`a.b.c`): validation, normalisation and prefixes.

/// The root of the path tree, the shortest prefix of every path.
pub const ROOT: &str = ".";

/// Lower-cases `raw` and checks it is a valid label path: labels not empty, no whitespace.
pub fn normalize_path(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let path = raw.to_lowercase();
    let valid = path
        .split('.')
        .all(|label| !label.is_empty() && !label.chars().any(char::is_whitespace));
    valid.then_some(path)
}

/// A tag prefix as given to `user.setTags`: `"."`/`""` is the root, anything else a path.
pub fn normalize_prefix(raw: &str) -> Option<String> {
    if raw.is_empty() || raw == ROOT {
        return Some(ROOT.to_string());
    }
    normalize_path(raw.trim_end_matches('.'))
}

/// A list/count prefix: lower-cased, trailing dots trimmed, `""` means everything.
pub fn normalize_list_prefix(raw: &str) -> String {
    raw.to_lowercase().trim_end_matches('.').to_string()
}

/// `prefixes("a.b.c")` = `["a.b.c", "a.b", "a", "."]`, longest first.
pub fn prefixes(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    if path != ROOT && !path.is_empty() {
        let mut end = path.len();
        loop {
            out.push(&path[..end]);
            match path[..end].rfind('.') {
                Some(i) if i > 0 => end = i,
                _ => break,
            }
        }
    }
    out.push(ROOT);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_longest_first_ending_at_root() {
        assert_eq!(prefixes("a.b.c"), vec!["a.b.c", "a.b", "a", "."]);
        assert_eq!(prefixes("a"), vec!["a", "."]);
        assert_eq!(prefixes("."), vec!["."]);
    }

    #[test]
    fn paths_are_lowercased_and_validated() {
        assert_eq!(normalize_path("A.B").as_deref(), Some("a.b"));
        assert_eq!(normalize_path("a..b"), None);
        assert_eq!(normalize_path("a.b."), None);
        assert_eq!(normalize_path("a b"), None);
        assert_eq!(normalize_path(""), None);
        assert_eq!(normalize_prefix("").as_deref(), Some("."));
        assert_eq!(normalize_prefix("X.y.").as_deref(), Some("x.y"));
        assert_eq!(normalize_list_prefix("Test.."), "test");
    }
}
