//! Identifiers made up by nodes, and their layout. An incarnation (8 hex) names one
//! process of a node; a connid is its incarnation + 8 hex; the pipe, task and pull ids a
//! connection makes are its connid + 20 hex. So any id tells which process owns it, and
//! this module is the one place that reads that layout.

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

/// A new connid for a connection of the process `incarnation`.
pub fn new_connid(incarnation: &str) -> String {
    format!("{incarnation}{}", random_hex(CONNID_LEN - INCARNATION_LEN))
}

/// A new pipe, task or pull id owned by connection `connid`.
pub fn new_owned_id(connid: &str) -> String {
    format!("{connid}{}", random_hex(OWNED_SUFFIX_LEN))
}

/// The incarnation a connid or owned id starts with; None when `id` is too short.
pub fn incarnation_of(id: &str) -> Option<&str> {
    id.get(..INCARNATION_LEN)
}

/// The connid an owned id (pipe, task, pull) starts with; None when `id` is not longer
/// than a connid.
pub fn connid_of(id: &str) -> Option<&str> {
    (id.len() > CONNID_LEN)
        .then(|| id.get(..CONNID_LEN))
        .flatten()
}

/// Whether `id` has the shape of an owned id this build makes (hex, of the full length).
pub fn is_owned_id(id: &str) -> bool {
    id.len() == OWNED_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_nest_incarnation_connid_owned() {
        let inc = new_incarnation();
        let connid = new_connid(&inc);
        let owned = new_owned_id(&connid);
        assert_eq!(incarnation_of(&connid), Some(inc.as_str()));
        assert_eq!(incarnation_of(&owned), Some(inc.as_str()));
        assert_eq!(connid_of(&owned), Some(connid.as_str()));
        assert_eq!(
            connid_of(&connid),
            None,
            "a connid owns itself, not a parent"
        );
        assert!(is_owned_id(&owned) && !is_owned_id(&connid));
        // Not sliced inside a multi-byte char (byte 16 falls inside the last é).
        assert_eq!(connid_of(&format!("a{}", "é".repeat(8))), None);
        assert_eq!(incarnation_of("abc"), None);
    }
}
