//! The policy as configured: global and per-interface mode, fail-open or fail-closed for
//! unknown connections, the ADD_ADDR allow-lists, rate limits, and the `Config` value it makes.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use mptcp_common::maps::{
    Config, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE,
    UNKNOWN_DROP, UNKNOWN_PASS,
};

use crate::mode::FilterMode;

/// What happens to signalling segments of connections the fast path does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownConn {
    /// Fail-open: they pass (counted as `*_unknown_conn`, `join_state_missing`).
    #[default]
    Pass,
    /// Fail-closed: they are dropped (would-drop in monitor mode).
    Drop,
}

impl UnknownConn {
    /// The value of `Config::unknown_conn`.
    #[must_use]
    pub const fn config_value(self) -> u32 {
        match self {
            Self::Pass => UNKNOWN_PASS,
            Self::Drop => UNKNOWN_DROP,
        }
    }

    /// `pass` / `drop`, as in the file and on the command line.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
        }
    }
}

/// An IPv4 or IPv6 prefix whose bits after the prefix length are zero (so equal prefixes are
/// equal values, and one map entry each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prefix {
    /// IPv4 address bytes and prefix length (0..=32).
    V4([u8; 4], u8),
    /// IPv6 address bytes and prefix length (0..=128).
    V6([u8; 16], u8),
}

impl Prefix {
    /// Parses `ADDR/LEN` or a bare address (a host: /32 or /128).
    ///
    /// # Errors
    /// A sentence saying what is wrong, e.g. that bits are set after the prefix length.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let not_cidr = || {
            format!("`{text}` is not an IPv4 or IPv6 prefix (expected e.g. 198.18.0.0/15 or 2001:db8::/32)")
        };
        let ip: IpAddr = addr.parse().map_err(|_| not_cidr())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(digits) => {
                // Only plain decimal: `/+8` and `/08` are refused (`u32::from_str` takes them).
                let n = digits
                    .parse::<u32>()
                    .ok()
                    .filter(|n| n.to_string() == digits)
                    .ok_or_else(not_cidr)?;
                if n > u32::from(max) {
                    return Err(format!(
                        "`{text}`: the prefix length {n} is more than {max}"
                    ));
                }
                u8::try_from(n).expect("at most 128")
            }
        };
        let net = IpNet::new(ip, len).expect("length checked above");
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has bits set after the first {len}: did you mean {}?",
                Self::from(net.trunc())
            ));
        }
        Ok(Self::from(net))
    }

    /// Whether this is an IPv4 prefix.
    #[must_use]
    pub const fn is_v4(&self) -> bool {
        matches!(self, Self::V4(..))
    }
}

impl From<IpNet> for Prefix {
    fn from(net: IpNet) -> Self {
        match net {
            IpNet::V4(v4) => Self::V4(v4.addr().octets(), v4.prefix_len()),
            IpNet::V6(v6) => Self::V6(v6.addr().octets(), v6.prefix_len()),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(addr, len) => write!(f, "{}/{len}", Ipv4Addr::from(*addr)),
            Self::V6(addr, len) => write!(f, "{}/{len}", Ipv6Addr::from(*addr)),
        }
    }
}

/// A port an ADD_ADDR may announce, or its absence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRule {
    /// An ADD_ADDR without a port (`none`); the map key `[0, 0]`.
    NoPort,
    /// A port, 1..=65535.
    Port(u16),
}

impl PortRule {
    /// Parses `none` or a port number 1..=65535.
    ///
    /// # Errors
    /// A sentence saying what is wrong (port 0 points to `none`).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(Self::NoPort);
        }
        match text.parse::<u32>() {
            Ok(port) => Self::from_number(i64::from(port)),
            Err(_) => Err(format!(
                "`{text}` is not a port: expected 1..=65535, or \"none\" for an ADD_ADDR without port"
            )),
        }
    }

    /// A port number 1..=65535.
    ///
    /// # Errors
    /// Outside that range (0 points to `none`).
    pub fn from_number(port: i64) -> Result<Self, String> {
        match u16::try_from(port) {
            Ok(0) => Err("port 0: write \"none\" to allow an ADD_ADDR without port".to_owned()),
            Ok(port) => Ok(Self::Port(port)),
            Err(_) => Err(format!("port {port} is not in 1..=65535")),
        }
    }

    /// The key of `MPTCP_ALLOWPORT`: the port's wire bytes, `[0, 0]` for none.
    #[must_use]
    pub const fn wire(self) -> [u8; 2] {
        match self {
            Self::NoPort => [0, 0],
            Self::Port(port) => port.to_be_bytes(),
        }
    }
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPort => f.write_str("none"),
            Self::Port(port) => write!(f, "{port}"),
        }
    }
}

/// A rate with a burst (GCRA in the fast path: `burst` more than the rate may pass at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Per second; 0 means "none at all" for drop events and "no limit" for MP_JOIN SYNs.
    pub per_second: u32,
    /// Allowed above the rate at once.
    pub burst: u32,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s burst {}", self.per_second, self.burst)
    }
}

/// The whole policy, as configured (file and flags merged, validated). Interfaces are named;
/// they become interface indexes only when the policy is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The global mode.
    pub mode: FilterMode,
    /// Interfaces whose mode differs from the global one (names among `--iface`).
    pub interface_modes: BTreeMap<String, FilterMode>,
    /// Fail-open or fail-closed for connections the fast path does not know.
    pub unknown_conn: UnknownConn,
    /// Prefixes an ADD_ADDR may announce, sorted; `None`: any address.
    pub allowed_prefixes: Option<Vec<Prefix>>,
    /// Ports an ADD_ADDR may announce, sorted; `None`: any port.
    pub allowed_ports: Option<Vec<PortRule>>,
    /// MP_JOIN SYNs per second per source address; `None`: no limit.
    pub join_syn_limit: Option<RateLimit>,
    /// Drop events per second per CPU (`per_second` 0: none).
    pub drop_events: RateLimit,
}

/// Drop events without configuration: [`DEFAULT_EVENT_RATE`] per second, burst
/// [`DEFAULT_EVENT_BURST`].
pub const DEFAULT_DROP_EVENTS: RateLimit = RateLimit {
    per_second: DEFAULT_EVENT_RATE,
    burst: DEFAULT_EVENT_BURST,
};

impl Default for Policy {
    /// What `run` does without `--config` and policy flags: monitor, fail-open, no ADD_ADDR
    /// restriction, no MP_JOIN SYN limit, default drop-event rate.
    fn default() -> Self {
        Self {
            mode: FilterMode::Monitor,
            interface_modes: BTreeMap::new(),
            unknown_conn: UnknownConn::Pass,
            allowed_prefixes: None,
            allowed_ports: None,
            join_syn_limit: None,
            drop_events: DEFAULT_DROP_EVENTS,
        }
    }
}

impl Policy {
    /// The value of `MPTCP_CONFIG`.
    #[must_use]
    pub fn config(&self) -> Config {
        let mut addr_policy = 0;
        if self.allowed_prefixes.is_some() {
            addr_policy |= ADDR_POLICY_PREFIXES;
        }
        if self.allowed_ports.is_some() {
            addr_policy |= ADDR_POLICY_PORTS;
        }
        let join = self.join_syn_limit.unwrap_or(RateLimit {
            per_second: 0,
            burst: 0,
        });
        Config {
            mode: self.mode.config_value(),
            unknown_conn: self.unknown_conn.config_value(),
            addr_policy,
            join_syn_rate: join.per_second,
            join_syn_burst: join.burst,
            event_rate: self.drop_events.per_second,
            event_burst: self.drop_events.burst,
            crypto_rate: mptcp_common::maps::DEFAULT_CRYPTO_RATE,
        }
    }

    /// Each setting as `name: value`, in a fixed order (for the start line and reload diffs).
    #[must_use]
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "[] (nothing)".to_owned()
            } else {
                items.join(", ")
            }
        };
        let prefixes = match &self.allowed_prefixes {
            None => "any".to_owned(),
            Some(p) => {
                let mut text = list(p.iter().map(ToString::to_string).collect());
                // Both families are checked once the allow list exists.
                if !p.is_empty() && !p.iter().any(Prefix::is_v4) {
                    text.push_str(" (no IPv4 prefix: every IPv4 announcement is dropped)");
                } else if !p.is_empty() && p.iter().all(Prefix::is_v4) {
                    text.push_str(" (no IPv6 prefix: every IPv6 announcement is dropped)");
                }
                text
            }
        };
        let ports = match &self.allowed_ports {
            None => "any".to_owned(),
            Some(p) => list(p.iter().map(ToString::to_string).collect()),
        };
        let interfaces = if self.interface_modes.is_empty() {
            "none".to_owned()
        } else {
            self.interface_modes
                .iter()
                .map(|(iface, mode)| format!("{iface}={}", mode.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            ("mode", self.mode.name().to_owned()),
            ("interface modes", interfaces),
            ("unknown connections", self.unknown_conn.name().to_owned()),
            ("ADD_ADDR prefixes", prefixes),
            ("ADD_ADDR ports", ports),
            (
                "MP_JOIN SYN limit per source",
                self.join_syn_limit
                    .map_or_else(|| "none".to_owned(), |l| l.to_string()),
            ),
            (
                "drop events per CPU",
                if self.drop_events.per_second == 0 {
                    "off".to_owned()
                } else {
                    self.drop_events.to_string()
                },
            ),
        ]
    }

    /// One line: `mode enforce; interface modes veth1=monitor; ...`.
    #[must_use]
    pub fn describe(&self) -> String {
        self.settings()
            .into_iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The settings that differ from `old`: `mode monitor -> enforce`.
    #[must_use]
    pub fn changes_from(&self, old: &Self) -> Vec<String> {
        old.settings()
            .into_iter()
            .zip(self.settings())
            .filter(|((_, before), (_, after))| before != after)
            .map(|((name, before), (_, after))| format!("{name} {before} -> {after}"))
            .collect()
    }
}
