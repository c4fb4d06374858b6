//! What one loader tells the others through the store, and how it is spelled there.
//!
//! Three things are shared, each exactly what a fast path proved:
//! - a learned connection ([`SharedConn`]): its two keys and the subflow whose MP_CAPABLE
//!   carried them (oriented A -> B, as in [`KeyEvent::flow`]), so a peer can install it as if
//!   its own fast path had seen it (tokens and midstates are derived from the keys again);
//! - a subflow a join's HMAC validated ([`SharedJoin`]): which connection it belongs to, so a
//!   box that sees only later segments of it (its ADD_ADDRs, an MP_FASTCLOSE on it) can judge
//!   them;
//! - the authenticated end of a connection ([`SharedEnd`]): an MP_FASTCLOSE with the right key,
//!   the host's own end of its last subflow, or a closed subflow the host's kernel confirmed.
//!
//! Joins and ends name their connection by [`ConnName`] (the token and the IDSN of Key-A: two
//! values the connection itself shows in clear), never by its keys: only learns carry keys.
//!
//! In Redis a connection is one hash, [`conn_key`], named by the token of Key-A (a value that
//! travels in clear in every MP_JOIN SYN towards A, so the name gives nothing away). A live
//! hash has the fields of [`SharedConn::fields`] (keys, subflow, IDSN, and one [`SUBFLOW_PREFIX`]
//! field per validated join); an ended one is a tombstone ([`SharedEnd::fields`]: the IDSN and
//! when it ended, no keys) that lives as long as a live hash would, so a box that was away and
//! publishes the connection again does not bring it back. Every publication that changes a hash
//! is also one entry of the stream [`EVENTS_STREAM`] with the same fields and [`FIELD_OP`].

use std::collections::HashMap;

use mptcp_common::maps::{FlowKey, KeyEvent, FAMILY_V4, FAMILY_V6, ROLE_A, ROLE_B};

use crate::conn::keys::{hex, token_and_idsn};

/// Prefix of the per-connection hashes.
pub const CONN_KEY_PREFIX: &str = "mptcp:conn:";
/// The stream every loader appends its publications to, and reads the others' from.
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
/// Field: when the publisher's fast path saw it (ns since the Unix epoch).
pub const FIELD_SEEN: &str = "t";
/// Field: the IDSN of Key-A, 16 hex digits: with the token (the hash's name), what tells this
/// connection from another whose Key-A has the same token.
pub const FIELD_IDSN: &str = "i";
/// Field of a tombstone: the connection ended (the value is the publisher's Unix ns).
pub const FIELD_ENDED: &str = "e";
/// Stream field of joins and ends: the token of Key-A, 8 hex digits.
pub const FIELD_TOKEN: &str = "n";
/// Stream field of a join: the role of the host at the subflow's source (`0`: A, `1`: B).
pub const FIELD_ROLE: &str = "r";
/// Stream field: [`Op`].
pub const FIELD_OP: &str = "op";
/// Hash fields `s:<subflow>` = the role of the host at its source: a validated join.
pub const SUBFLOW_PREFIX: &str = "s:";

/// What a publication does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A connection was learned.
    Learn,
    /// A join validated a subflow of a connection.
    Join,
    /// A connection ended.
    End,
    /// A connection is still active here: its hash's TTL starts again (no stream entry).
    Touch,
}

impl Op {
    /// The stream spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Learn => "learn",
            Op::Join => "join",
            Op::End => "end",
            Op::Touch => "touch",
        }
    }

    fn parse(s: &[u8]) -> Option<Op> {
        match s {
            b"learn" => Some(Op::Learn),
            b"join" => Some(Op::Join),
            b"end" => Some(Op::End),
            b"touch" => Some(Op::Touch),
            _ => None,
        }
    }
}

/// A connection named without its keys: the token and the IDSN of Key-A (both in clear on the
/// wire: the token in joins towards A, the IDSN as A's first data sequence number).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ConnName {
    /// Token of Key-A.
    pub token_a: [u8; 4],
    /// IDSN of Key-A.
    pub idsn_a: u64,
}

impl std::fmt::Debug for ConnName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token-A {}", hex(&self.token_a))
    }
}

impl ConnName {
    /// The name of the connection whose Key-A is `key_a`.
    #[must_use]
    pub fn of(key_a: &[u8; 8]) -> Self {
        let (token_a, idsn_a) = token_and_idsn(key_a);
        Self { token_a, idsn_a }
    }

    /// Its hash in the store.
    #[must_use]
    pub fn conn_key(&self) -> String {
        conn_key(&self.token_a)
    }

    /// How [`FIELD_IDSN`] spells the IDSN.
    #[must_use]
    pub fn idsn_text(&self) -> String {
        format!("{:016x}", self.idsn_a)
    }

    fn fields(&self) -> Vec<(String, String)> {
        vec![
            (FIELD_TOKEN.to_owned(), hex(&self.token_a)),
            (FIELD_IDSN.to_owned(), self.idsn_text()),
        ]
    }

    fn from_fields(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        Some(Self {
            token_a: parse_hex(text(fields, FIELD_TOKEN)?)?,
            idsn_a: u64::from_be_bytes(parse_hex(text(fields, FIELD_IDSN)?)?),
        })
    }
}

/// A subflow a join validated (as the join announced it: initiator -> responder).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SharedSubflow {
    /// The subflow.
    pub flow: FlowKey,
    /// Role ([`ROLE_A`] / [`ROLE_B`]) of the host at `flow`'s source address.
    pub src_role: u8,
}

impl std::fmt::Debug for SharedSubflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (from {})",
            crate::conn::install::format_flow(&self.flow),
            if self.src_role == ROLE_A { "A" } else { "B" }
        )
    }
}

impl SharedSubflow {
    /// Its hash field (`s:<flow>`) and value (the role).
    #[must_use]
    pub fn field(&self) -> (String, String) {
        (
            format!("{SUBFLOW_PREFIX}{}", encode_flow(&self.flow)),
            self.src_role.to_string(),
        )
    }

    fn parse(flow: &str, role: &str) -> Option<Self> {
        let src_role = match role {
            "0" => ROLE_A,
            "1" => ROLE_B,
            _ => return None,
        };
        Some(Self {
            flow: decode_flow(flow)?,
            src_role,
        })
    }

    /// Every subflow field of a hash or stream entry (malformed ones skipped).
    fn all_in(fields: &HashMap<String, Vec<u8>>) -> Vec<Self> {
        let mut subflows: Vec<Self> = fields
            .iter()
            .filter_map(|(name, value)| {
                let flow = name.strip_prefix(SUBFLOW_PREFIX)?;
                Self::parse(flow, std::str::from_utf8(value).ok()?)
            })
            .collect();
        subflows.sort_by_key(|s| encode_flow(&s.flow));
        subflows
    }
}

/// One connection as shared: what a fast path learned from an MP_CAPABLE with both keys, and
/// the subflows joins validated (read from the hash, or sent again after a reconnection).
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
    /// Subflows joins validated.
    pub subflows: Vec<SharedSubflow>,
}

// Written by hand so that no `{:?}` of a record can ever print a key.
impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConn")
            .field("token_a", &hex(&self.token_a()))
            .field("flow", &crate::conn::install::format_flow(&self.flow))
            .field("origin", &self.origin)
            .field("seen_unix_ns", &self.seen_unix_ns)
            .field("subflows", &self.subflows)
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
            subflows: Vec::new(),
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

    /// Its name without keys.
    #[must_use]
    pub fn name(&self) -> ConnName {
        ConnName::of(&self.key_a)
    }

    /// Its hash in the store.
    #[must_use]
    pub fn conn_key(&self) -> String {
        conn_key(&self.token_a())
    }

    /// The hash fields (also the stream entry's, with [`FIELD_OP`]).
    #[must_use]
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut fields = vec![
            (FIELD_KEY_A.to_owned(), hex(&self.key_a)),
            (FIELD_KEY_B.to_owned(), hex(&self.key_b)),
            (FIELD_FLOW.to_owned(), encode_flow(&self.flow)),
            (FIELD_ORIGIN.to_owned(), self.origin.clone()),
            (FIELD_SEEN.to_owned(), self.seen_unix_ns.to_string()),
            (FIELD_IDSN.to_owned(), self.name().idsn_text()),
        ];
        fields.extend(self.subflows.iter().map(SharedSubflow::field));
        fields
    }

    /// Reads a live hash or learn entry back; `None` when a field is missing or malformed (a
    /// foreign or damaged entry is skipped, never half-installed).
    #[must_use]
    pub fn from_fields(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        let conn = Self {
            key_a: parse_hex(text(fields, FIELD_KEY_A)?)?,
            key_b: parse_hex(text(fields, FIELD_KEY_B)?)?,
            flow: decode_flow(text(fields, FIELD_FLOW)?)?,
            origin: text(fields, FIELD_ORIGIN)?.to_owned(),
            seen_unix_ns: text(fields, FIELD_SEEN)?.parse().ok()?,
            subflows: SharedSubflow::all_in(fields),
        };
        // Written by an older loader without it, or right: anything else is damaged.
        match text(fields, FIELD_IDSN) {
            Some(idsn) if *idsn != conn.name().idsn_text() => None,
            _ => Some(conn),
        }
    }
}

/// A subflow a join validated, as shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedJoin {
    /// Its connection.
    pub conn: ConnName,
    /// The subflow.
    pub subflow: SharedSubflow,
    /// Id of the loader that published it.
    pub origin: String,
    /// When its fast path validated it, ns since the Unix epoch.
    pub seen_unix_ns: u64,
}

impl SharedJoin {
    /// The join a `KEY_EVENT_JOINED` event announces.
    #[must_use]
    pub fn from_event(event: &KeyEvent, origin: &str, seen_unix_ns: u64) -> Self {
        Self {
            conn: ConnName::of(&event.key_a),
            subflow: SharedSubflow {
                flow: event.flow,
                src_role: event.role & 1,
            },
            origin: origin.to_owned(),
            seen_unix_ns,
        }
    }

    /// The stream entry's fields (without [`FIELD_OP`]).
    #[must_use]
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut fields = self.conn.fields();
        fields.extend([
            (FIELD_FLOW.to_owned(), encode_flow(&self.subflow.flow)),
            (FIELD_ROLE.to_owned(), self.subflow.src_role.to_string()),
            (FIELD_ORIGIN.to_owned(), self.origin.clone()),
            (FIELD_SEEN.to_owned(), self.seen_unix_ns.to_string()),
        ]);
        fields
    }

    fn from_fields(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        Some(Self {
            conn: ConnName::from_fields(fields)?,
            subflow: SharedSubflow::parse(text(fields, FIELD_FLOW)?, text(fields, FIELD_ROLE)?)?,
            origin: text(fields, FIELD_ORIGIN)?.to_owned(),
            seen_unix_ns: text(fields, FIELD_SEEN)?.parse().ok()?,
        })
    }
}

/// The authenticated end of a connection, as shared (a tombstone in the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedEnd {
    /// The connection.
    pub conn: ConnName,
    /// Id of the loader that published it.
    pub origin: String,
    /// When it ended, ns since the Unix epoch.
    pub ended_unix_ns: u64,
}

impl SharedEnd {
    /// The tombstone's fields (also the stream entry's, with [`FIELD_OP`]).
    #[must_use]
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut fields = self.conn.fields();
        fields.extend([
            (FIELD_ENDED.to_owned(), self.ended_unix_ns.to_string()),
            (FIELD_ORIGIN.to_owned(), self.origin.clone()),
        ]);
        fields
    }

    fn from_fields(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        Some(Self {
            conn: ConnName::from_fields(fields)?,
            origin: text(fields, FIELD_ORIGIN)?.to_owned(),
            ended_unix_ns: text(fields, FIELD_ENDED)?.parse().ok()?,
        })
    }
}

/// A connection hash as the catch-up reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredConn {
    /// A live connection (with its validated subflows).
    Live(SharedConn),
    /// A tombstone.
    Ended(SharedEnd),
}

impl StoredConn {
    /// Reads a hash; `None` for an empty (expired meanwhile) or malformed one.
    #[must_use]
    pub fn from_fields(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        if fields.contains_key(FIELD_ENDED) {
            SharedEnd::from_fields(fields).map(StoredConn::Ended)
        } else {
            SharedConn::from_fields(fields).map(StoredConn::Live)
        }
    }
}

/// One publication, and what a stream entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A connection learned (its hash, and a stream entry).
    Learn(SharedConn),
    /// A subflow validated (a field of its connection's hash, and a stream entry).
    Join(SharedJoin),
    /// A connection ended (its hash becomes a tombstone, and a stream entry).
    End(SharedEnd),
    /// A connection still active here (its hash's TTL starts again; no stream entry).
    Touch(ConnName),
}

impl Record {
    /// What it does.
    #[must_use]
    pub fn op(&self) -> Op {
        match self {
            Record::Learn(_) => Op::Learn,
            Record::Join(_) => Op::Join,
            Record::End(_) => Op::End,
            Record::Touch(_) => Op::Touch,
        }
    }

    /// The hash it changes.
    #[must_use]
    pub fn conn_key(&self) -> String {
        match self {
            Record::Learn(c) => c.conn_key(),
            Record::Join(j) => j.conn.conn_key(),
            Record::End(e) => e.conn.conn_key(),
            Record::Touch(n) => n.conn_key(),
        }
    }

    /// The loader that published it (empty for a touch).
    #[must_use]
    pub fn origin(&self) -> &str {
        match self {
            Record::Learn(c) => &c.origin,
            Record::Join(j) => &j.origin,
            Record::End(e) => &e.origin,
            Record::Touch(_) => "",
        }
    }

    /// The stream entry's fields, [`FIELD_OP`] first.
    #[must_use]
    pub fn stream_fields(&self) -> Vec<(String, String)> {
        let mut fields = vec![(FIELD_OP.to_owned(), self.op().as_str().to_owned())];
        fields.extend(match self {
            Record::Learn(c) => c.fields(),
            Record::Join(j) => j.fields(),
            Record::End(e) => e.fields(),
            Record::Touch(n) => n.fields(),
        });
        fields
    }

    /// Reads a stream entry back; `None` for a malformed one.
    #[must_use]
    pub fn from_stream(fields: &HashMap<String, Vec<u8>>) -> Option<Self> {
        Some(match Op::parse(fields.get(FIELD_OP)?)? {
            Op::Learn => Record::Learn(SharedConn::from_fields(fields)?),
            Op::Join => Record::Join(SharedJoin::from_fields(fields)?),
            Op::End => Record::End(SharedEnd::from_fields(fields)?),
            Op::Touch => Record::Touch(ConnName::from_fields(fields)?),
        })
    }
}

fn text<'a>(fields: &'a HashMap<String, Vec<u8>>, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(|v| std::str::from_utf8(v).ok())
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

    fn join_flow() -> FlowKey {
        let mut f = flow();
        f.saddr[..4].copy_from_slice(&[198, 18, 2, 1]);
        f.sport = 40_001u16.to_be_bytes();
        f
    }

    const KEY_A: [u8; 8] = [0xfd, 0xcf, 0x3c, 0x40, 0xbd, 0x10, 0x4a, 0x60];
    const KEY_B: [u8; 8] = [6, 0x0f, 0x78, 0x48, 0x4a, 0xb9, 0x85, 0xd8];

    fn conn() -> SharedConn {
        SharedConn {
            key_a: KEY_A,
            key_b: KEY_B,
            flow: flow(),
            origin: "gw1/42".into(),
            seen_unix_ns: 1_700_000_000_123_456_789,
            subflows: vec![SharedSubflow {
                flow: join_flow(),
                src_role: ROLE_A,
            }],
        }
    }

    fn as_map(fields: Vec<(String, String)>) -> HashMap<String, Vec<u8>> {
        fields
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect()
    }

    fn end() -> SharedEnd {
        SharedEnd {
            conn: ConnName::of(&KEY_A),
            origin: "gw2".into(),
            ended_unix_ns: 5,
        }
    }

    fn join() -> SharedJoin {
        SharedJoin {
            conn: ConnName::of(&KEY_A),
            subflow: SharedSubflow {
                flow: join_flow(),
                src_role: ROLE_B,
            },
            origin: "gw2".into(),
            seen_unix_ns: 7,
        }
    }

    #[test]
    fn records_round_trip_through_fields() {
        let c = conn();
        assert_eq!(
            StoredConn::from_fields(&as_map(c.fields())),
            Some(StoredConn::Live(c.clone()))
        );
        assert_eq!(
            StoredConn::from_fields(&as_map(end().fields())),
            Some(StoredConn::Ended(end()))
        );
        for record in [
            Record::Learn(c),
            Record::Join(join()),
            Record::End(end()),
            Record::Touch(ConnName::of(&KEY_A)),
        ] {
            assert_eq!(
                Record::from_stream(&as_map(record.stream_fields())),
                Some(record.clone()),
                "{record:?}"
            );
        }
    }

    #[test]
    fn named_by_the_token_of_key_a() {
        // Protocol doc §7.4: the token of Key-A fdcf3c40bd104a60 is 322a76f3.
        assert_eq!(conn().conn_key(), "mptcp:conn:322a76f3");
        assert_eq!(Record::End(end()).conn_key(), "mptcp:conn:322a76f3");
        assert_eq!(Record::Join(join()).conn_key(), "mptcp:conn:322a76f3");
    }

    #[test]
    fn malformed_entries_are_refused() {
        let good = as_map(conn().fields());
        for (field, bad) in [
            (FIELD_KEY_A, "fdcf3c40bd104a6"),
            (FIELD_KEY_B, "zz0f78484ab985d8"),
            (FIELD_FLOW, "5:00:00:1:2"),
            (FIELD_SEEN, "-1"),
            // The IDSN of another Key-A: a damaged hash.
            (FIELD_IDSN, "0000000000000001"),
        ] {
            let mut m = good.clone();
            m.insert(field.to_owned(), bad.as_bytes().to_vec());
            assert_eq!(SharedConn::from_fields(&m), None, "{field}={bad}");
        }
        let mut m = good.clone();
        m.remove(FIELD_ORIGIN);
        assert_eq!(SharedConn::from_fields(&m), None);
        // A malformed subflow field is skipped, the connection kept.
        let mut m = good;
        m.insert(format!("{SUBFLOW_PREFIX}4:zz"), b"0".to_vec());
        assert_eq!(SharedConn::from_fields(&m).unwrap().subflows.len(), 1);
        let mut e = as_map(end().fields());
        e.insert(FIELD_TOKEN.to_owned(), b"322a76".to_vec());
        assert_eq!(StoredConn::from_fields(&e), None);
    }

    #[test]
    fn only_learns_carry_keys_and_debug_never_shows_them() {
        let keys = [hex(&KEY_A), hex(&KEY_B)];
        let shown = format!("{:?}", conn());
        assert!(keys.iter().all(|k| !shown.contains(k.as_str())), "{shown}");
        assert!(shown.contains("322a76f3"), "{shown}");
        for record in [Record::Join(join()), Record::End(end())] {
            let fields = format!("{:?} {:?}", record.stream_fields(), record);
            assert!(
                keys.iter().all(|k| !fields.contains(k.as_str())),
                "{fields}"
            );
        }
    }

    #[test]
    fn flows_round_trip() {
        let f = flow();
        assert_eq!(decode_flow(&encode_flow(&f)), Some(f));
        assert_eq!(decode_flow(&format!("{}:1", encode_flow(&f))), None);
    }
}
