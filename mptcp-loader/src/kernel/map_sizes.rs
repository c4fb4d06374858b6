//! Capacities of the fast path's hash maps, chosen on the command line (`--max-conns`,
//! `--max-joins`) and applied with `EbpfLoader::map_max_entries` before the maps are created.
//!
//! The maps are LRU hashes, which the kernel preallocates in full: memory is spent at load time,
//! whether the entries are used or not (see [`MapSizes::approx_bytes`]).

use std::fmt;

use mptcp_common::maps::{
    ConnState, FlowKey, FlowRef, JoinState, Token, TokenRef, MAP_CONNS, MAP_FLOWS, MAP_JOINS,
    MAP_TOKENS, MAX_CONNS, MAX_JOINS,
};

/// Largest accepted `--max-conns` / `--max-joins`. The maps are preallocated, so this bound is
/// already about 11 GiB of kernel memory; anything larger is a typo, not a deployment.
pub const MAX_MAP_LIMIT: u32 = 16 * 1024 * 1024;

/// Rough per-entry overhead of a preallocated LRU hash element in the kernel (`htab_elem`:
/// list and hash links, LRU node, rounding), on top of key and value.
const KERNEL_ELEM_OVERHEAD: u64 = 48;

/// `max_entries` of every map whose size the user chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// [`MAP_CONNS`]: one entry per connection.
    pub conns: u32,
    /// [`MAP_FLOWS`]: one entry per subflow, two per connection on average.
    pub flows: u32,
    /// [`MAP_TOKENS`]: both tokens of every connection.
    pub tokens: u32,
    /// [`MAP_JOINS`]: MP_JOIN handshakes in progress.
    pub joins: u32,
}

impl Default for MapSizes {
    /// The sizes the eBPF object is compiled with (`mptcp_common::maps::MAX_*`).
    fn default() -> Self {
        Self::for_limits(MAX_CONNS, MAX_JOINS)
    }
}

impl MapSizes {
    /// Sizes for `max_conns` connections and `max_joins` pending joins, without validation
    /// (see [`parse_map_limit`]): subflows and tokens get twice the connections, as in the
    /// compiled-in defaults.
    #[must_use]
    pub const fn for_limits(max_conns: u32, max_joins: u32) -> Self {
        Self {
            conns: max_conns,
            flows: max_conns.saturating_mul(2),
            tokens: max_conns.saturating_mul(2),
            joins: max_joins,
        }
    }

    /// Map name and size, in a fixed order, for `EbpfLoader::map_max_entries`.
    #[must_use]
    pub const fn entries(&self) -> [(&'static str, u32); 4] {
        [
            (MAP_CONNS, self.conns),
            (MAP_FLOWS, self.flows),
            (MAP_TOKENS, self.tokens),
            (MAP_JOINS, self.joins),
        ]
    }

    /// Approximate kernel memory the four maps preallocate, in bytes.
    #[must_use]
    pub fn approx_bytes(&self) -> u64 {
        let per_entry = |key: usize, value: usize| {
            u64::try_from(key + value).unwrap_or(u64::MAX) + KERNEL_ELEM_OVERHEAD
        };
        u64::from(self.conns) * per_entry(size_of::<u64>(), size_of::<ConnState>())
            + u64::from(self.flows) * per_entry(size_of::<FlowKey>(), size_of::<FlowRef>())
            + u64::from(self.tokens) * per_entry(size_of::<Token>(), size_of::<TokenRef>())
            + u64::from(self.joins) * per_entry(size_of::<FlowKey>(), size_of::<JoinState>())
    }
}

impl fmt::Display for MapSizes {
    /// `65536 connections, 131072 subflows, 131072 tokens, 16384 pending joins (~37 MiB)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections, {} subflows, {} tokens, {} pending joins (~{} MiB)",
            self.conns,
            self.flows,
            self.tokens,
            self.joins,
            self.approx_bytes().div_ceil(1024 * 1024)
        )
    }
}

/// Parses and validates a `--max-conns` / `--max-joins` value (clap value parser): a whole
/// number from 1 to [`MAX_MAP_LIMIT`].
///
/// # Errors
/// A one-line message saying what is accepted.
pub fn parse_map_limit(text: &str) -> Result<u32, String> {
    let accepted = format!("expected a whole number from 1 to {MAX_MAP_LIMIT}");
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number: {accepted}"))?;
    match u32::try_from(value) {
        Ok(v @ 1..=MAX_MAP_LIMIT) => Ok(v),
        _ => Err(format!("{value} is out of range: {accepted}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_common::maps::{MAX_FLOWS, MAX_TOKENS};

    #[test]
    fn defaults_are_the_compiled_in_sizes() {
        let d = MapSizes::default();
        assert_eq!(
            (d.conns, d.flows, d.tokens, d.joins),
            (MAX_CONNS, MAX_FLOWS, MAX_TOKENS, MAX_JOINS)
        );
    }

    #[test]
    fn flows_and_tokens_follow_connections() {
        let s = MapSizes::for_limits(1000, 7);
        assert_eq!(
            s.entries(),
            [
                (MAP_CONNS, 1000),
                (MAP_FLOWS, 2000),
                (MAP_TOKENS, 2000),
                (MAP_JOINS, 7)
            ]
        );
        // The largest accepted limit still fits the doubled maps.
        let big = MapSizes::for_limits(MAX_MAP_LIMIT, MAX_MAP_LIMIT);
        assert_eq!(big.flows, 2 * MAX_MAP_LIMIT);
    }

    #[test]
    fn limits_are_validated() {
        assert_eq!(parse_map_limit("1"), Ok(1));
        assert_eq!(parse_map_limit("16777216"), Ok(MAX_MAP_LIMIT));
        for bad in ["0", "16777217", "99999999999", "-1", "ten", ""] {
            let err = parse_map_limit(bad).unwrap_err();
            assert!(
                err.ends_with("expected a whole number from 1 to 16777216"),
                "{bad}: {err}"
            );
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn memory_estimate_is_plausible() {
        let d = MapSizes::default();
        let mib = d.approx_bytes() / (1024 * 1024);
        // 64 Ki connections: ~14 MiB, 128 Ki subflows and tokens: ~13 + ~8 MiB, joins ~2 MiB.
        assert!((30..=45).contains(&mib), "{mib} MiB");
        assert!(d.to_string().starts_with(
            "65536 connections, 131072 subflows, 131072 tokens, 16384 pending joins (~"
        ));
    }
}
