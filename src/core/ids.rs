//! Identifiers, typed. Nodes make up the string ids, and their layout nests: an
//! incarnation (8 hex) names one process of a node; a [`ConnId`] is its incarnation + 8
//! hex; the [`PipeId`], [`TaskId`] and [`PullId`] a connection makes are its connid + 20
//! hex. So any id tells which process owns it, and this module is the one place that reads
//! that layout. A [`RaftId`] names a node in the Raft configuration.
//!
//! An id a client sends may have any shape (ids of other Nexus servers are not ours): the
//! string types accept any string, and `owner`/`incarnation` answer None for a foreign one.

use std::borrow::Borrow;
use std::fmt;

use serde::Serialize;

/// Length of a node incarnation, the first part of every connid.
pub const INCARNATION_LEN: usize = 8;
/// Length of a connid.
pub const CONNID_LEN: usize = INCARNATION_LEN + 8;
/// Random hex after the connid in pipe, task and pull ids.
const OWNED_SUFFIX_LEN: usize = 20;
/// Length of a pipe, task or pull id.
pub const OWNED_ID_LEN: usize = CONNID_LEN + OWNED_SUFFIX_LEN;

/// `n` random lowercase hex chars.
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n.div_ceil(2)).map(|_| rand::random::<u8>()).collect();
    let mut s = hex::encode(bytes);
    s.truncate(n);
    s
}

/// A new incarnation: the name of this process of the node.
pub fn new_incarnation() -> String {
    random_hex(INCARNATION_LEN)
}

/// The incarnation a connid or owned id starts with; None when `id` is too short.
pub fn incarnation_of(id: &str) -> Option<&str> {
    id.get(..INCARNATION_LEN)
}

/// A string id: compared, ordered, hashed and serialized as its string, and looked up in
/// maps by `&str` (through `Borrow`).
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// A connection: its node process's incarnation + 8 hex.
    ConnId
);

impl ConnId {
    /// A new connid for a connection of the process `incarnation`.
    pub fn new(incarnation: &str) -> Self {
        Self(format!(
            "{incarnation}{}",
            random_hex(CONNID_LEN - INCARNATION_LEN)
        ))
    }

    /// The incarnation of the process holding the connection.
    pub fn incarnation(&self) -> Option<&str> {
        incarnation_of(&self.0)
    }
}

/// Ids a connection makes: the connid + 20 hex.
macro_rules! owned_id {
    ($(#[$doc:meta])* $name:ident) => {
        string_id!($(#[$doc])* $name);

        impl $name {
            /// A new id owned by connection `connid`.
            pub fn new(connid: &ConnId) -> Self {
                Self(format!("{connid}{}", random_hex(OWNED_SUFFIX_LEN)))
            }

            /// The connection that made it; None for an id of another shape.
            pub fn owner(&self) -> Option<ConnId> {
                (self.0.len() > CONNID_LEN)
                    .then(|| self.0.get(..CONNID_LEN))
                    .flatten()
                    .map(ConnId::from)
            }

            /// Whether it has the shape of the ids this build makes (hex, of the full
            /// length).
            pub fn is_ours(&self) -> bool {
                self.0.len() == OWNED_ID_LEN && self.0.bytes().all(|b| b.is_ascii_hexdigit())
            }
        }
    };
}

owned_id!(
    /// A pipe (a mailbox), owned by the connection that made it.
    PipeId
);
owned_id!(
    /// A pushed task, owned by its pusher's connection.
    TaskId
);
owned_id!(
    /// A waiting `task.pull`, owned by its puller's connection.
    PullId
);

/// A node's id in the Raft configuration (raft-rs's `u64`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct RaftId(pub u64);

impl From<u64> for RaftId {
    fn from(id: u64) -> Self {
        RaftId(id)
    }
}

impl From<RaftId> for u64 {
    fn from(id: RaftId) -> u64 {
        id.0
    }
}

impl std::str::FromStr for RaftId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(RaftId)
    }
}

impl fmt::Display for RaftId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for RaftId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_nest_incarnation_connid_owned() {
        let inc = new_incarnation();
        let connid = ConnId::new(&inc);
        let pipe = PipeId::new(&connid);
        let task = TaskId::new(&connid);
        assert_eq!(connid.incarnation(), Some(inc.as_str()));
        assert_eq!(incarnation_of(pipe.as_str()), Some(inc.as_str()));
        assert_eq!(pipe.owner(), Some(connid.clone()));
        assert_eq!(task.owner(), Some(connid.clone()));
        assert_eq!(
            PipeId::from(connid.as_str()).owner(),
            None,
            "a connid owns itself, not a parent"
        );
        assert!(pipe.is_ours() && !PipeId::from(connid.as_str()).is_ours());
        // Not sliced inside a multi-byte char (byte 16 falls inside the last é).
        assert_eq!(PipeId::from(format!("a{}", "é".repeat(8))).owner(), None);
        assert_eq!(ConnId::from("abc").incarnation(), None);
    }
}
