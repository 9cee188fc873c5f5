//! Splits a byte stream into complete JSON values. Clients send requests back to back with
//! no separator (`{...}{...}`), a value may arrive in pieces, and bad input must not end the
//! connection. Containers are delimited by an incremental scanner (linear in the input, so
//! a large message arriving in many chunks is not re-parsed each time), then parsed once.

use serde_json::value::RawValue;

#[derive(Debug)]
pub enum Item {
    Value(Box<RawValue>),
    /// Unparsable input, skipped; the stream reads on.
    ParseError(String),
    /// A value larger than the limit: the connection must be closed.
    Oversize,
}

pub struct JsonStream {
    buf: Vec<u8>,
    max: usize,
    /// Scanning state of the container being read, if any.
    in_value: bool,
    scan_pos: usize,
    depth: usize,
    in_str: bool,
    escaped: bool,
    /// A too-long top-level string was dropped before its end: what follows up to its
    /// closing quote is the rest of it (with whether the last byte dropped was an escape).
    in_dropped_str: Option<bool>,
}

/// The longest incomplete top-level scalar kept waiting for more input.
const MAX_SCALAR: usize = 64 * 1024;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl JsonStream {
    pub fn new(max: usize) -> Self {
        JsonStream {
            buf: Vec::new(),
            max,
            in_value: false,
            scan_pos: 0,
            depth: 0,
            in_str: false,
            escaped: false,
            in_dropped_str: None,
        }
    }

    /// Adds received bytes; returns the values (and errors) they complete.
    pub fn push(&mut self, data: &[u8]) -> Vec<Item> {
        self.buf.extend_from_slice(data);
        let mut items = Vec::new();
        let mut start = 0;
        loop {
            if let Some(escaped) = self.in_dropped_str {
                match string_end(&self.buf[start..], escaped) {
                    Ok(len) => {
                        items.push(Item::ParseError("the rest of a dropped string".into()));
                        self.in_dropped_str = None;
                        start += len;
                    }
                    Err(escaped) => {
                        self.in_dropped_str = Some(escaped);
                        start = self.buf.len();
                        break;
                    }
                }
            }
            if !self.in_value {
                while start < self.buf.len() && is_ws(self.buf[start]) {
                    start += 1;
                }
                if start == self.buf.len() {
                    break;
                }
                if matches!(self.buf[start], b'{' | b'[') {
                    self.in_value = true;
                    self.scan_pos = start;
                    self.depth = 0;
                    self.in_str = false;
                    self.escaped = false;
                } else {
                    match self.scalar(start) {
                        Scalar::Value(v, end) => {
                            items.push(Item::Value(v));
                            start = end;
                            continue;
                        }
                        // No request is a bare scalar: a long one is garbage, not worth
                        // re-parsing as more of it arrives.
                        Scalar::Incomplete if self.buf.len() - start > MAX_SCALAR => {
                            items.push(Item::ParseError("top-level value too long".into()));
                            // An unfinished string: its end arrives later.
                            if self.buf[start] == b'"' {
                                if let Err(escaped) = string_end(&self.buf[start + 1..], false) {
                                    self.in_dropped_str = Some(escaped);
                                }
                            }
                            start = self.buf.len();
                            continue;
                        }
                        Scalar::Incomplete => break,
                        Scalar::Garbage(msg, end) => {
                            items.push(Item::ParseError(msg));
                            start = end;
                            continue;
                        }
                    }
                }
            }
            match self.scan() {
                Some(end) => {
                    self.in_value = false;
                    let text = &self.buf[start..end];
                    if text.len() > self.max {
                        items.push(Item::Oversize);
                        return items;
                    }
                    items.push(match serde_json::from_slice::<Box<RawValue>>(text) {
                        Ok(v) => Item::Value(v),
                        Err(e) => Item::ParseError(e.to_string()),
                    });
                    start = end;
                }
                None => break,
            }
        }
        self.buf.drain(..start);
        self.scan_pos = self.scan_pos.saturating_sub(start);
        if self.buf.len() > self.max {
            items.push(Item::Oversize);
        }
        items
    }

    /// Scans on from `scan_pos`; the end (exclusive) of the container when it closes.
    fn scan(&mut self) -> Option<usize> {
        let mut i = self.scan_pos;
        while i < self.buf.len() {
            let c = self.buf[i];
            i += 1;
            if self.in_str {
                if self.escaped {
                    self.escaped = false;
                } else if c == b'\\' {
                    self.escaped = true;
                } else if c == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match c {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.scan_pos = i;
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        self.scan_pos = i;
        None
    }

    /// A top-level value that is not a container (a JSON-RPC invalid request, or garbage).
    fn scalar(&self, start: usize) -> Scalar {
        let rest = &self.buf[start..];
        let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<Box<RawValue>>();
        match it.next() {
            Some(Ok(v)) => {
                let end = start + it.byte_offset();
                // A number at the very end may continue in the next chunk.
                if end == self.buf.len() && rest[0].is_ascii_digit() | (rest[0] == b'-') {
                    return Scalar::Incomplete;
                }
                Scalar::Value(v, end)
            }
            Some(Err(e)) if e.is_eof() => Scalar::Incomplete,
            Some(Err(e)) => Scalar::Garbage(e.to_string(), start + bad_token_len(rest)),
            None => Scalar::Incomplete,
        }
    }
}

/// Inside a string (`escaped`: its last byte so far was an escape): the length up to and
/// including its closing quote, or, when it does not end in `bytes`, whether the last
/// byte is an escape.
fn string_end(bytes: &[u8], mut escaped: bool) -> Result<usize, bool> {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Ok(i + 1),
            _ => {}
        }
    }
    Err(escaped)
}

/// The length of the bad token at the start of `rest`: up to whitespace or the start of a
/// container, outside strings. Jumping to the next `{`/`[` alone could land inside a string
/// that follows (`nul "a[b"{...}`), and a quote inside the token opens a string whose
/// brackets are not containers either (`null1" .{[x"[...]`); either way the requests after
/// it would be swallowed. Without an end, the whole of `rest`.
fn bad_token_len(rest: &[u8]) -> usize {
    let mut i = 1;
    while i < rest.len() {
        let b = rest[i];
        i += 1;
        if b == b'"' {
            match string_end(&rest[i..], false) {
                Ok(len) => i += len,
                Err(_) => return rest.len(),
            }
        } else if is_ws(b) || matches!(b, b'{' | b'[') {
            return i - 1;
        }
    }
    rest.len()
}

enum Scalar {
    Value(Box<RawValue>, usize),
    Incomplete,
    Garbage(String, usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Value(v) => v.get().to_string(),
                Item::ParseError(_) => "ERR".into(),
                Item::Oversize => "BIG".into(),
            })
            .collect()
    }

    #[test]
    fn back_to_back_values_and_split_chunks() {
        let mut s = JsonStream::new(1000);
        assert_eq!(
            texts(&s.push(br#"{"a":1}{"b":"}{"}  [1,"#)),
            vec![r#"{"a":1}"#, r#"{"b":"}{"}"#]
        );
        assert_eq!(texts(&s.push(br#"2]"#)), vec!["[1,2]"]);
        assert_eq!(texts(&s.push(br#"{"s":"x\"}"#)), Vec::<String>::new());
        assert_eq!(texts(&s.push(br#""}"#)), vec![r#"{"s":"x\"}"}"#]);
    }

    #[test]
    fn garbage_is_reported_and_skipped() {
        let mut s = JsonStream::new(1000);
        assert_eq!(
            texts(&s.push(b"hello {\"id\":1}")),
            vec!["ERR", r#"{"id":1}"#]
        );
        // The bad container ends at its first unbalanced close; the stray `}` is garbage too.
        assert_eq!(
            texts(&s.push(b"{\"a\":]}{\"id\":2}")),
            vec!["ERR", "ERR", r#"{"id":2}"#]
        );
        assert_eq!(texts(&s.push(b"12 ")), vec!["12"]);
        // A bad token is skipped to its end, not to a bracket inside the string after it.
        assert_eq!(
            texts(&s.push(br#"nul true"a[b"{"id":3}"#)),
            vec!["ERR", "true", r#""a[b""#, r#"{"id":3}"#]
        );
        // A quote inside the bad token opens a string: its brackets are skipped with it
        // (found by the fuzz test: `null` and a number back to back, then a string).
        assert_eq!(
            texts(&s.push(br#"null1" .{[[.z"[]{"id":4}"#)),
            vec!["ERR", "[]", r#"{"id":4}"#]
        );
    }

    #[test]
    fn long_bare_scalars_are_dropped_not_rescanned() {
        let mut s = JsonStream::new(1 << 30);
        let mut items = s.push(b"\"");
        let chunk = vec![b'a'; 16 * 1024];
        for _ in 0..5 {
            items.extend(s.push(&chunk));
        }
        // Dropped once past the limit; what follows is garbage until the next request.
        assert!(!items.is_empty() && texts(&items).iter().all(|t| t == "ERR"));
        assert!(s.buf.len() <= MAX_SCALAR + 16 * 1024);
        assert_eq!(
            texts(&s.push(br#"aaa" {"id":1}"#)),
            vec!["ERR", r#"{"id":1}"#]
        );
    }

    #[test]
    fn oversize_values_are_flagged() {
        let mut s = JsonStream::new(10);
        assert_eq!(texts(&s.push(br#"{"a":"0123456789"}"#)), vec!["BIG"]);
        let mut s = JsonStream::new(10);
        assert_eq!(texts(&s.push(br#"{"a":"0123456789"#)), vec!["BIG"]);
    }
}
