//! What one loader tells the others through the store, and how it is spelled there.
//!
//! A learned connection is its two keys and the subflow whose MP_CAPABLE carried them (oriented
//! A -> B, as in [`KeyEvent::flow`]): exactly what the fast path learns from that segment, so a
//! peer can install it as if its own fast path had seen it. Everything else (tokens, midstates)
//! is derived from the keys again where it is installed.
//!
//! In Redis a connection is one hash, [`conn_key`], named by the token of Key-A (a value that
//! travels in clear in every MP_JOIN SYN towards A, so the name gives nothing away), with the
//! fields of [`SharedConn::fields`]; every learn is also one entry of the stream
//! [`EVENTS_STREAM`] with the same fields and [`FIELD_OP`]. Ends of connections are not shared:
//! a connection idle on one box may be busy on another, so each box's idle sweep judges its own
//! traffic, and a hash lives as long as some box keeps refreshing its TTL ([`Op::Touch`]).

use std::collections::HashMap;

use mptcp_common::maps::{FlowKey, KeyEvent, FAMILY_V4, FAMILY_V6};

use crate::conn::keys::{hex, token_and_idsn};

/// Prefix of the per-connection hashes.
pub const CONN_KEY_PREFIX: &str = "mptcp:conn:";
/// The stream every loader appends its learns to, and reads the others' from.
pub const EVENTS_STREAM: &str = "mptcp:events";
/// Entries the stream keeps (approximately: `XADD MAXLEN ~`): a loader that falls further
/// behind than this catches up from the hashes instead.
pub const STREAM_MAX_LEN: usize = 100_000;

/// Field: Key-A, 16 hex digits.
pub const FIELD_KEY_A: &str = "a";
/// Field: Key-B, 16 hex digits.
pub const FIELD_KEY_B: &str = "b";
/// Field: the subflow ([`encode_flow`]).
pub const FIELD_FLOW: &str = "f";
/// Field: the publishing loader's id.
pub const FIELD_ORIGIN: &str = "o";
/// Field: when the publisher's fast path saw the keys (ns since the Unix epoch).
pub const FIELD_SEEN: &str = "t";
/// Stream field: [`Op`].
pub const FIELD_OP: &str = "op";

/// What a publication does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A connection was learned: its hash, and a stream entry.
    Learn,
    /// A connection is still active here: its hash's TTL starts again (no stream entry).
    Touch,
}

impl Op {
    /// The stream spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Learn => "learn",
            Op::Touch => "touch",
        }
    }

    fn parse(s: &[u8]) -> Option<Op> {
        match s {
            b"learn" => Some(Op::Learn),
            b"touch" => Some(Op::Touch),
            _ => None,
        }
    }
}

/// One connection as shared: what a fast path learned from an MP_CAPABLE with both keys.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedConn {
    /// Key-A, wire bytes.
    pub key_a: [u8; 8],
    /// Key-B, wire bytes.
    pub key_b: [u8; 8],
    /// The subflow, oriented A -> B.
    pub flow: FlowKey,
    /// Id of the loader that published it.
    pub origin: String,
    /// When its fast path saw the keys, ns since the Unix epoch (for the replication delay).
    pub seen_unix_ns: u64,
}

// Written by hand so that no `{:?}` of a record can ever print a key.
impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConn")
            .field("token_a", &hex(&self.token_a()))
            .field("flow", &crate::conn::install::format_flow(&self.flow))
            .field("origin", &self.origin)
            .field("seen_unix_ns", &self.seen_unix_ns)
            .finish_non_exhaustive()
    }
}

impl SharedConn {
    /// The connection a key event announces, published by `origin`.
    #[must_use]
    pub fn from_event(event: &KeyEvent, origin: &str, seen_unix_ns: u64) -> Self {
        Self {
            key_a: event.key_a,
            key_b: event.key_b,
            flow: event.flow,
            origin: origin.to_owned(),
            seen_unix_ns,
        }
    }

    /// The key event a fast path would have raised for it (`seen_ns` is the caller's clock).
    #[must_use]
    pub fn as_event(&self, seen_ns: u64) -> KeyEvent {
        KeyEvent {
            flow: self.flow,
            key_a: self.key_a,
            key_b: self.key_b,
            seen_ns,
            ..KeyEvent::default()
        }
    }

    /// Token of Key-A: the name of its hash.
    #[must_use]
    pub fn token_a(&self) -> [u8; 4] {
        token_and_idsn(&self.key_a).0
    }

    /// Its hash in the store.
    #[must_use]
    pub fn conn_key(&self) -> String {
        conn_key(&self.token_a())
    }

    /// The hash fields (also the stream entry's, with [`FIELD_OP`]).
    #[must_use]
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            (FIELD_KEY_A, hex(&self.key_a)),
            (FIELD_KEY_B, hex(&self.key_b)),
            (FIELD_FLOW, encode_flow(&self.flow)),
            (FIELD_ORIGIN, self.origin.clone()),
            (FIELD_SEEN, self.seen_unix_ns.to_string()),
        ]
    }

    /// Reads a hash or stream entry back; `None` when a field is missing or malformed (a
    /// foreign or damaged entry is skipped, never half-installed).
    #[must_use]
    pub fn from_fields(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        let text = |name: &str| fields.get(name).and_then(|v| std::str::from_utf8(v).ok());
        let conn = Self {
            key_a: parse_hex(text(FIELD_KEY_A)?)?,
            key_b: parse_hex(text(FIELD_KEY_B)?)?,
            flow: decode_flow(text(FIELD_FLOW)?)?,
            origin: text(FIELD_ORIGIN)?.to_owned(),
            seen_unix_ns: text(FIELD_SEEN)?.parse().ok()?,
        };
        Some(conn)
    }
}

/// What one stream entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// Learn or close.
    pub op: Op,
    /// The connection.
    pub conn: SharedConn,
}

impl StreamEntry {
    /// The entry's fields.
    #[must_use]
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = self.conn.fields();
        fields.push((FIELD_OP, self.op.as_str().to_owned()));
        fields
    }

    /// Reads an entry back; `None` for a malformed one.
    #[must_use]
    pub fn from_fields(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        Some(Self {
            op: Op::parse(fields.get(FIELD_OP)?)?,
            conn: SharedConn::from_fields(fields)?,
        })
    }
}

/// The hash of the connection whose Key-A has this token.
#[must_use]
pub fn conn_key(token_a: &[u8; 4]) -> String {
    format!("{CONN_KEY_PREFIX}{}", hex(token_a))
}

/// `4:c61201010000000000000000000000000:c6120102...:1234:80`-like text: family, both addresses
/// (16 bytes each, hex) and both ports (decimal).
#[must_use]
pub fn encode_flow(flow: &FlowKey) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        flow.family,
        hex(&flow.saddr),
        hex(&flow.daddr),
        u16::from_be_bytes(flow.sport),
        u16::from_be_bytes(flow.dport)
    )
}

/// The inverse of [`encode_flow`].
#[must_use]
pub fn decode_flow(text: &str) -> Option<FlowKey> {
    let mut parts = text.split(':');
    let family: u8 = parts.next()?.parse().ok()?;
    if family != FAMILY_V4 && family != FAMILY_V6 {
        return None;
    }
    let flow = FlowKey {
        family,
        saddr: parse_hex(parts.next()?)?,
        daddr: parse_hex(parts.next()?)?,
        sport: parts.next()?.parse::<u16>().ok()?.to_be_bytes(),
        dport: parts.next()?.parse::<u16>().ok()?.to_be_bytes(),
        pad: [0; 3],
    };
    parts.next().is_none().then_some(flow)
}

/// Exactly `N` bytes from `2 * N` hex digits.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> FlowKey {
        let mut f = FlowKey {
            family: FAMILY_V4,
            sport: 40_000u16.to_be_bytes(),
            dport: 10_000u16.to_be_bytes(),
            ..FlowKey::default()
        };
        f.saddr[..4].copy_from_slice(&[198, 18, 1, 1]);
        f.daddr[..4].copy_from_slice(&[198, 18, 3, 2]);
        f
    }

    fn conn() -> SharedConn {
        SharedConn {
            key_a: [0xfd, 0xcf, 0x3c, 0x40, 0xbd, 0x10, 0x4a, 0x60],
            key_b: [6, 0x0f, 0x78, 0x48, 0x4a, 0xb9, 0x85, 0xd8],
            flow: flow(),
            origin: "gw1/42".into(),
            seen_unix_ns: 1_700_000_000_123_456_789,
        }
    }

    fn as_map(fields: Vec<(&'static str, String)>) -> HashMap<String, Vec<u8>> {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect()
    }

    #[test]
    fn round_trips_through_fields() {
        let c = conn();
        assert_eq!(
            SharedConn::from_fields(&as_map(c.fields())),
            Some(c.clone())
        );
        let entry = StreamEntry {
            op: Op::Learn,
            conn: c,
        };
        assert_eq!(
            StreamEntry::from_fields(&as_map(entry.fields())),
            Some(entry)
        );
    }

    #[test]
    fn named_by_the_token_of_key_a() {
        // Protocol doc §7.4: the token of Key-A fdcf3c40bd104a60 is 322a76f3.
        assert_eq!(conn().conn_key(), "mptcp:conn:322a76f3");
    }

    #[test]
    fn malformed_entries_are_refused() {
        let good = as_map(conn().fields());
        for (field, bad) in [
            (FIELD_KEY_A, "fdcf3c40bd104a6"),
            (FIELD_KEY_B, "zz0f78484ab985d8"),
            (FIELD_FLOW, "5:00:00:1:2"),
            (FIELD_SEEN, "-1"),
        ] {
            let mut m = good.clone();
            m.insert(field.to_owned(), bad.as_bytes().to_vec());
            assert_eq!(SharedConn::from_fields(&m), None, "{field}={bad}");
        }
        let mut m = good;
        m.remove(FIELD_ORIGIN);
        assert_eq!(SharedConn::from_fields(&m), None);
    }

    #[test]
    fn debug_never_shows_keys() {
        let shown = format!("{:?}", conn());
        assert!(!shown.contains("fdcf3c40bd104a60") && !shown.contains("060f78484ab985d8"));
        assert!(shown.contains("322a76f3"), "{shown}");
    }

    #[test]
    fn flows_round_trip() {
        let f = flow();
        assert_eq!(decode_flow(&encode_flow(&f)), Some(f));
        assert_eq!(decode_flow(&format!("{}:1", encode_flow(&f))), None);
    }
}
