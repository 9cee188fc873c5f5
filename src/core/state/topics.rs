//! Topic subscriptions: which pipes listen on which topic patterns. Replicated, so that a
//! publish anywhere sees every acknowledged subscription and listings are cluster-wide.

use std::collections::{BTreeMap, BTreeSet};

#[cfg(test)]
use serde::Serialize;

use crate::ids::PipeId;
use crate::names::prefixes;

/// The pattern that matches every topic.
pub const ALL: &str = ".*";

#[derive(Debug, Default, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct Topics {
    /// pattern → subscribed pipes.
    pub(super) by_topic: BTreeMap<String, BTreeSet<PipeId>>,
    /// pipe → its patterns; derived, rebuilt after a snapshot restore.
    #[cfg_attr(test, serde(skip))]
    by_pipe: BTreeMap<PipeId, BTreeSet<String>>,
}

impl Topics {
    pub fn subscribe(&mut self, pipeid: &PipeId, topic: &str) {
        self.by_topic
            .entry(topic.to_string())
            .or_default()
            .insert(pipeid.clone());
        self.by_pipe
            .entry(pipeid.clone())
            .or_default()
            .insert(topic.to_string());
    }

    pub fn unsubscribe(&mut self, pipeid: &PipeId, topic: &str) {
        if let Some(pipes) = self.by_topic.get_mut(topic) {
            pipes.remove(pipeid);
            if pipes.is_empty() {
                self.by_topic.remove(topic);
            }
        }
        if let Some(topics) = self.by_pipe.get_mut(pipeid) {
            topics.remove(topic);
            if topics.is_empty() {
                self.by_pipe.remove(pipeid);
            }
        }
    }

    /// Drops every subscription of pipes whose id starts with `prefix` (a pipe, or all the
    /// pipes of a connection).
    pub fn unsubscribe_prefix(&mut self, prefix: &str) {
        let pipes: Vec<PipeId> = self
            .by_pipe
            .range(PipeId::from(prefix)..)
            .take_while(|(p, _)| p.as_str().starts_with(prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for pipe in pipes {
            for topic in self.by_pipe.remove(&pipe).unwrap_or_default() {
                if let Some(set) = self.by_topic.get_mut(&topic) {
                    set.remove(&pipe);
                    if set.is_empty() {
                        self.by_topic.remove(&topic);
                    }
                }
            }
        }
    }

    /// The pipes a publish to `topic` reaches, each once: subscriptions to `topic` itself,
    /// to `p.*` for every prefix `p` of it, and to `.*`.
    pub fn matching(&self, topic: &str) -> BTreeSet<&PipeId> {
        let mut out = BTreeSet::new();
        let mut add = |pattern: &str| {
            if let Some(pipes) = self.by_topic.get(pattern) {
                out.extend(pipes.iter());
            }
        };
        add(topic);
        for p in prefixes(topic) {
            if p == crate::names::ROOT {
                add(ALL);
            } else {
                add(&format!("{p}.*"));
            }
        }
        out
    }

    /// True when some subscription could match a topic under `root` (cheap pre-check
    /// before building hook events).
    pub fn any_under(&self, root: &str) -> bool {
        self.by_topic.contains_key(ALL)
            || self
                .by_topic
                .range(root.to_string()..)
                .next()
                .is_some_and(|(t, _)| t.starts_with(root))
    }

    /// (pattern, subscriber count), sorted by pattern.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_topic.iter().map(|(t, p)| (t.as_str(), p.len()))
    }

    pub fn rebuild_index(&mut self) {
        self.by_pipe.clear();
        for (topic, pipes) in &self.by_topic {
            for pipe in pipes {
                self.by_pipe
                    .entry(pipe.clone())
                    .or_default()
                    .insert(topic.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_the_topic_and_below_once_per_pipe() {
        let mut t = Topics::default();
        t.subscribe(&"p1".into(), "a.b");
        t.subscribe(&"p2".into(), "a.b.*");
        t.subscribe(&"p3".into(), "a.*");
        t.subscribe(&"p4".into(), ".*");
        t.subscribe(&"p5".into(), "a.b.c");
        t.subscribe(&"p6".into(), "a.bc");
        t.subscribe(&"p1".into(), "a.*");
        assert_eq!(
            t.matching("a.b")
                .into_iter()
                .map(PipeId::as_str)
                .collect::<Vec<_>>(),
            ["p1", "p2", "p3", "p4"]
        );
        assert_eq!(
            t.matching("a")
                .into_iter()
                .map(PipeId::as_str)
                .collect::<Vec<_>>(),
            ["p1", "p3", "p4"]
        );
        assert_eq!(
            t.matching("z")
                .into_iter()
                .map(PipeId::as_str)
                .collect::<Vec<_>>(),
            ["p4"]
        );
        t.unsubscribe_prefix("p1");
        assert_eq!(
            t.matching("a.b")
                .into_iter()
                .map(PipeId::as_str)
                .collect::<Vec<_>>(),
            ["p2", "p3", "p4"]
        );
        t.unsubscribe(&"p4".into(), ".*");
        assert!(!t.any_under("hook"));
        t.subscribe(&"p9".into(), "hook.task.*");
        assert!(t.any_under("hook"));
        assert_eq!(t.iter().count(), 5);
    }
}
