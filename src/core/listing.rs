//! The shared parameters and selection logic of every `*.list` / `*.count` method:
//! prefix, depth, RE2-syntax filter, limit (0 or negative = unlimited), skip, subprefixes.

use regex::{Regex, RegexBuilder};
use serde_json::{json, Value};

use crate::names::normalize_list_prefix;
use crate::rpc::{Params, RpcError};

/// Filters compile under this size so a hostile pattern cannot eat the node's memory.
const FILTER_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Normalised prefix; `""` selects everything.
    pub prefix: String,
    /// -1 = unlimited; N = the prefix plus up to N more labels.
    pub depth: i64,
    pub filter: Option<Regex>,
    /// `None` = unlimited.
    pub limit: Option<usize>,
    pub skip: usize,
    pub subprefixes: bool,
}

impl ListQuery {
    /// Reads the list parameters; `prefix` is required.
    pub fn from_params(p: &Params) -> Result<Self, RpcError> {
        let prefix = normalize_list_prefix(p.str("prefix")?);
        let depth = p.opt_i64("depth")?.unwrap_or(-1);
        let filter = match p.opt_str("filter")? {
            None | Some("") => None,
            Some(f) => Some(
                RegexBuilder::new(f)
                    .size_limit(FILTER_SIZE_LIMIT)
                    .build()
                    .map_err(|_| RpcError::invalid_params("filter"))?,
            ),
        };
        let limit = match p.opt_i64("limit")?.unwrap_or(100) {
            n if n <= 0 => None,
            n => Some(n as usize),
        };
        let skip = p.opt_i64("skip")?.unwrap_or(0).max(0) as usize;
        let subprefixes = p.opt_bool("subprefixes")?.unwrap_or(false);
        Ok(ListQuery {
            prefix,
            depth,
            filter,
            limit,
            skip,
            subprefixes,
        })
    }

    /// The part of `name` below the prefix (`None` when `name` is not under it).
    fn below<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return Some(name);
        }
        let rest = name.strip_prefix(self.prefix.as_str())?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('.')
        }
    }

    /// The permission path of a list/count: its prefix, the root for `""`.
    pub fn permission_path(&self) -> &str {
        if self.prefix.is_empty() {
            crate::names::ROOT
        } else {
            &self.prefix
        }
    }

    /// Prefix, depth and filter all accept `name`.
    pub fn matches(&self, name: &str) -> bool {
        let Some(rest) = self.below(name) else {
            return false;
        };
        if self.depth >= 0 {
            let extra = if rest.is_empty() {
                0
            } else {
                rest.split('.').count() as i64
            };
            // With an empty prefix the first label is the level-0 name.
            let extra = if self.prefix.is_empty() {
                extra - 1
            } else {
                extra
            };
            if extra > self.depth {
                return false;
            }
        }
        self.filter.as_ref().is_none_or(|re| re.is_match(name))
    }

    /// Applies matching, then skip and limit, to items sorted by name.
    pub fn select<'a, T: 'a>(&self, items: impl Iterator<Item = (&'a str, T)>) -> Vec<T> {
        let limit = self.limit.unwrap_or(usize::MAX);
        items
            .filter(|(name, _)| self.matches(name))
            .skip(self.skip)
            .take(limit)
            .map(|(_, item)| item)
            .collect()
    }

    /// The label right below the prefix that groups `name` for `subprefixes`.
    pub fn group_of(&self, name: &str) -> Option<String> {
        let rest = self.below(name)?;
        let label = rest.split('.').next().filter(|l| !l.is_empty())?;
        Some(if self.prefix.is_empty() {
            label.to_string()
        } else {
            format!("{}.{}", self.prefix, label)
        })
    }

    /// `{"count": N}`, or `[{"prefix", "count"}]` per subprefix, for matching names.
    pub fn count<'a>(&self, names: impl Iterator<Item = &'a str>) -> Value {
        if !self.subprefixes {
            return json!({"count": names.filter(|n| self.matches(n)).count()});
        }
        let mut groups: std::collections::BTreeMap<String, usize> = Default::default();
        for name in names.filter(|n| self.matches(n)) {
            if let Some(group) = self.group_of(name) {
                *groups.entry(group).or_default() += 1;
            }
        }
        Value::Array(
            groups
                .into_iter()
                .map(|(prefix, count)| json!({"prefix": prefix, "count": count}))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(v: Value) -> ListQuery {
        ListQuery::from_params(&Params::new(&v).unwrap()).unwrap()
    }

    const NAMES: [&str; 6] = ["a", "a.b", "a.b.c", "a.c", "ab", "z.y"];

    fn names(q: &ListQuery) -> Vec<&'static str> {
        q.select(NAMES.iter().map(|n| (*n, *n)))
    }

    #[test]
    fn prefix_matches_itself_and_below_not_siblings() {
        assert_eq!(
            names(&query(json!({"prefix": "a"}))),
            ["a", "a.b", "a.b.c", "a.c"]
        );
        assert_eq!(
            names(&query(json!({"prefix": "A."}))),
            ["a", "a.b", "a.b.c", "a.c"]
        );
        assert_eq!(names(&query(json!({"prefix": ""}))).len(), 6);
    }

    #[test]
    fn depth_limits_levels() {
        assert_eq!(names(&query(json!({"prefix": "a", "depth": 0}))), ["a"]);
        assert_eq!(
            names(&query(json!({"prefix": "a", "depth": 1}))),
            ["a", "a.b", "a.c"]
        );
        assert_eq!(
            names(&query(json!({"prefix": "", "depth": 0}))),
            ["a", "ab"]
        );
    }

    #[test]
    fn filter_limit_skip() {
        assert_eq!(
            names(&query(json!({"prefix": "", "filter": "c$"}))),
            ["a.b.c", "a.c"]
        );
        assert_eq!(
            names(&query(json!({"prefix": "", "limit": 2, "skip": 1}))),
            ["a.b", "a.b.c"]
        );
        assert_eq!(names(&query(json!({"prefix": "", "limit": 0}))).len(), 6);
        assert_eq!(names(&query(json!({"prefix": "", "limit": -1}))).len(), 6);
        let bad = json!({"prefix": "", "filter": "("});
        assert!(ListQuery::from_params(&Params::new(&bad).unwrap()).is_err());
        let missing = json!({});
        assert!(ListQuery::from_params(&Params::new(&missing).unwrap()).is_err());
    }

    #[test]
    fn counts_and_subprefixes() {
        let q = query(json!({"prefix": "a"}));
        assert_eq!(q.count(NAMES.into_iter()), json!({"count": 4}));
        let q = query(json!({"prefix": "a", "subprefixes": true}));
        assert_eq!(
            q.count(NAMES.into_iter()),
            json!([{"prefix": "a.b", "count": 2}, {"prefix": "a.c", "count": 1}])
        );
        let q = query(json!({"prefix": "", "subprefixes": true}));
        assert_eq!(
            q.count(NAMES.into_iter()),
            json!([{"prefix": "a", "count": 4}, {"prefix": "ab", "count": 1}, {"prefix": "z", "count": 1}])
        );
    }
}
