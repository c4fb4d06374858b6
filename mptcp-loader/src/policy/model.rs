//! The operator's policy as one value ([`Policy`]), and how it gets into the fast path's maps.
//!
//! - [`desired_state`] turns a policy into what the maps should hold ([`PolicyState`]);
//! - [`plan_policy`] (pure) compares that with what they hold and returns the ordered
//!   [`MapOp`]s that get from one to the other, removing what the policy no longer names;
//! - [`apply_policy`] is the thin layer that reads the maps, plans and executes, through a
//!   [`PolicyStore`]: [`PolicyMaps`] for the kernel, [`MemoryPolicyStore`] for tests.
//!
//! The order of the operations never makes the policy stricter than both the old and the new
//! one while it changes: entries are added before the configuration that uses them is written,
//! and removed after it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::PathBuf,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError},
    Ebpf,
};
use ipnet::IpNet;
use mptcp_common::maps::{
    Config, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE,
    MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_IFACE_MODES, UNKNOWN_DROP,
    UNKNOWN_PASS,
};

use crate::{
    config::PolicySource,
    errors::LoaderError,
    firewall::FilterMode,
    loader_counters::{LoaderCounter, LoaderCounters},
    preflight::interface_index,
    stats::MapFill,
};

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

/// `enforce` / `monitor`, as in the file and on the command line.
#[must_use]
pub const fn mode_name(mode: FilterMode) -> &'static str {
    match mode {
        FilterMode::Enforce => "enforce",
        FilterMode::Monitor => "monitor",
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
                .map(|(iface, mode)| format!("{iface}={}", mode_name(*mode)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            ("mode", mode_name(self.mode).to_owned()),
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

/// What the policy maps hold (or should hold).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// `MPTCP_CONFIG[0]`.
    pub config: Config,
    /// `MPTCP_IFMODES`: interface index -> `MODE_*`.
    pub interface_modes: BTreeMap<u32, u32>,
    /// `MPTCP_ALLOW_V4`: (prefix length, address).
    pub v4: BTreeSet<(u8, [u8; 4])>,
    /// `MPTCP_ALLOW_V6`.
    pub v6: BTreeSet<(u8, [u8; 16])>,
    /// `MPTCP_ALLOWPORT`: port wire bytes.
    pub ports: BTreeSet<[u8; 2]>,
}

/// What `policy` looks like in the maps. Interface names are resolved with `ifindex_of`
/// (normally [`interface_index`]) at each application: an interface re-created since the start
/// gets its new index.
///
/// # Errors
/// The first error of `ifindex_of`.
pub fn desired_state(
    policy: &Policy,
    mut ifindex_of: impl FnMut(&str) -> Result<u32, LoaderError>,
) -> Result<PolicyState, LoaderError> {
    let mut state = PolicyState {
        config: policy.config(),
        ..PolicyState::default()
    };
    for (iface, mode) in &policy.interface_modes {
        state
            .interface_modes
            .insert(ifindex_of(iface)?, mode.config_value());
    }
    for prefix in policy.allowed_prefixes.iter().flatten() {
        match *prefix {
            Prefix::V4(addr, len) => state.v4.insert((len, addr)),
            Prefix::V6(addr, len) => state.v6.insert((len, addr)),
        };
    }
    for port in policy.allowed_ports.iter().flatten() {
        state.ports.insert(port.wire());
    }
    Ok(state)
}

/// One write to a policy map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// `MPTCP_CONFIG[0] = config`.
    WriteConfig(Config),
    /// `MPTCP_IFMODES[ifindex] = mode`.
    PutInterfaceMode(u32, u32),
    /// Remove `MPTCP_IFMODES[ifindex]`: the interface follows the global mode again.
    RemoveInterfaceMode(u32),
    /// Insert an IPv4 prefix (length, address) into `MPTCP_ALLOW_V4`.
    PutV4(u8, [u8; 4]),
    /// Remove an IPv4 prefix.
    RemoveV4(u8, [u8; 4]),
    /// Insert an IPv6 prefix into `MPTCP_ALLOW_V6`.
    PutV6(u8, [u8; 16]),
    /// Remove an IPv6 prefix.
    RemoveV6(u8, [u8; 16]),
    /// Insert a port (wire bytes) into `MPTCP_ALLOWPORT`.
    PutPort([u8; 2]),
    /// Remove a port.
    RemovePort([u8; 2]),
}

/// `max_entries` of the policy maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// `MPTCP_IFMODES`.
    pub interface_modes: usize,
    /// `MPTCP_ALLOW_V4`.
    pub v4: usize,
    /// `MPTCP_ALLOW_V6`.
    pub v6: usize,
    /// `MPTCP_ALLOWPORT`.
    pub ports: usize,
}

/// Adds and removals of one set.
struct Diff<T> {
    add: Vec<T>,
    remove: Vec<T>,
    /// Old and new entries together exceed the map: removals must come first.
    remove_first: bool,
}

fn diff<T: Ord + Copy>(current: &BTreeSet<T>, desired: &BTreeSet<T>, capacity: usize) -> Diff<T> {
    Diff {
        add: desired.difference(current).copied().collect(),
        remove: current.difference(desired).copied().collect(),
        remove_first: current.union(desired).count() > capacity,
    }
}

/// The ordered writes that turn `current` into `desired`.
///
/// 1. Entries are added before `MPTCP_CONFIG` is written and removed after it, so while the
///    policy changes both the old and the new allowed addresses pass, never neither.
/// 2. When old and new entries of an allow list do not fit in its map together, the list's
///    `ADDR_POLICY_*` bit is first cleared (no restriction, briefly), the old entries removed,
///    the new ones added, and the final configuration written.
///
/// The configuration is always written, even when unchanged: applying is idempotent.
#[must_use]
pub fn plan_policy(current: &PolicyState, desired: &PolicyState, cap: &Capacities) -> Vec<MapOp> {
    let v4 = diff(&current.v4, &desired.v4, cap.v4);
    let v6 = diff(&current.v6, &desired.v6, cap.v6);
    let ports = diff(&current.ports, &desired.ports, cap.ports);
    let mut ops = Vec::new();

    let mut relax = 0;
    if v4.remove_first || v6.remove_first {
        relax |= ADDR_POLICY_PREFIXES;
    }
    if ports.remove_first {
        relax |= ADDR_POLICY_PORTS;
    }
    if current.config.addr_policy & relax != 0 {
        let relaxed = Config {
            addr_policy: current.config.addr_policy & !relax,
            ..current.config
        };
        ops.push(MapOp::WriteConfig(relaxed));
    }
    let removals = |ops: &mut Vec<MapOp>, first: bool| {
        if v4.remove_first == first {
            ops.extend(v4.remove.iter().map(|(len, a)| MapOp::RemoveV4(*len, *a)));
        }
        if v6.remove_first == first {
            ops.extend(v6.remove.iter().map(|(len, a)| MapOp::RemoveV6(*len, *a)));
        }
        if ports.remove_first == first {
            ops.extend(ports.remove.iter().map(|p| MapOp::RemovePort(*p)));
        }
    };
    removals(&mut ops, true);
    ops.extend(v4.add.iter().map(|(len, a)| MapOp::PutV4(*len, *a)));
    ops.extend(v6.add.iter().map(|(len, a)| MapOp::PutV6(*len, *a)));
    ops.extend(ports.add.iter().map(|p| MapOp::PutPort(*p)));
    // Interface modes are single values: overwriting one is atomic.
    for (ifindex, mode) in &desired.interface_modes {
        if current.interface_modes.get(ifindex) != Some(mode) {
            ops.push(MapOp::PutInterfaceMode(*ifindex, *mode));
        }
    }
    ops.push(MapOp::WriteConfig(desired.config));
    removals(&mut ops, false);
    for ifindex in current.interface_modes.keys() {
        if !desired.interface_modes.contains_key(ifindex) {
            ops.push(MapOp::RemoveInterfaceMode(*ifindex));
        }
    }
    ops
}

/// Where the policy lives: the kernel maps, or memory in tests.
pub trait PolicyStore {
    /// What the maps hold now.
    ///
    /// # Errors
    /// When a map cannot be read.
    fn read_state(&self) -> Result<PolicyState, LoaderError>;

    /// Their capacities.
    fn capacities(&self) -> Capacities;

    /// Performs one write (removing something absent is not an error).
    ///
    /// # Errors
    /// When the map refuses it.
    fn execute(&mut self, op: &MapOp) -> Result<(), LoaderError>;
}

/// What [`apply_policy`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Map entries written (config writes not included).
    pub entries_written: usize,
    /// Map entries removed.
    pub entries_removed: usize,
}

/// Makes the maps of `store` hold `policy`. If a write fails part-way, the state read at the
/// start is written back (best effort) before the error is returned, so a failed application
/// leaves the previous policy in force.
///
/// # Errors
/// Interface resolution, map reads, or the first failed write.
pub fn apply_policy(
    store: &mut impl PolicyStore,
    policy: &Policy,
    ifindex_of: impl FnMut(&str) -> Result<u32, LoaderError>,
) -> Result<ApplyOutcome, LoaderError> {
    let desired = desired_state(policy, ifindex_of)?;
    let before = store.read_state()?;
    let ops = plan_policy(&before, &desired, &store.capacities());
    let mut outcome = ApplyOutcome::default();
    for op in &ops {
        if let Err(e) = store.execute(op) {
            restore(store, &before);
            return Err(e);
        }
        match op {
            MapOp::WriteConfig(_) => {}
            MapOp::PutInterfaceMode(..)
            | MapOp::PutV4(..)
            | MapOp::PutV6(..)
            | MapOp::PutPort(_) => {
                outcome.entries_written += 1;
            }
            _ => outcome.entries_removed += 1,
        }
    }
    Ok(outcome)
}

fn restore(store: &mut impl PolicyStore, before: &PolicyState) {
    let result = store.read_state().and_then(|now| {
        for op in plan_policy(&now, before, &store.capacities()) {
            store.execute(&op)?;
        }
        Ok(())
    });
    match result {
        Ok(()) => log::warn!("the policy maps were restored to what they held before"),
        Err(e) => log::error!("could not restore the policy maps either ({e}): the policy in force may be a mix of the old and the new one"),
    }
}

/// The policy maps of the loaded object, opened through duplicates of the object's map file
/// descriptors (the object keeps its own handles: pinning still works).
pub struct PolicyMaps {
    config: Array<MapData, Config>,
    interface_modes: HashMap<MapData, u32, u32>,
    v4: LpmTrie<MapData, [u8; 4], u8>,
    v6: LpmTrie<MapData, [u8; 16], u8>,
    ports: HashMap<MapData, [u8; 2], u8>,
    capacities: Capacities,
}

impl fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyMaps")
            .field("capacities", &self.capacities)
            .finish_non_exhaustive()
    }
}

/// Opens another handle on map `name` of `ebpf`.
fn dup_map(ebpf: &Ebpf, name: &'static str) -> Result<Map, LoaderError> {
    let map = ebpf
        .map(name)
        .ok_or(LoaderError::MissingInObject { kind: "map", name })?;
    match map {
        Map::Array(data) | Map::HashMap(data) | Map::LpmTrie(data) => dup_data(data, name),
        _ => Err(LoaderError::map(name)(MapError::InvalidMapType {
            map_type: u32::MAX,
        })),
    }
}

/// Another handle on the same kernel map.
fn dup_data(data: &MapData, name: &'static str) -> Result<Map, LoaderError> {
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| LoaderError::Runtime {
            what: "duplicating a map file descriptor",
            source: e,
        })?;
    let data = MapData::from_fd(fd).map_err(LoaderError::map(name))?;
    Map::from_map_data(data).map_err(LoaderError::map(name))
}

fn max_entries(data: &MapData, name: &'static str) -> Result<usize, LoaderError> {
    let info = data.info().map_err(LoaderError::map(name))?;
    Ok(usize::try_from(info.max_entries()).unwrap_or(usize::MAX))
}

impl PolicyMaps {
    /// Opens `MPTCP_CONFIG`, `MPTCP_IFMODES`, `MPTCP_ALLOW_V4`, `MPTCP_ALLOW_V6` and
    /// `MPTCP_ALLOWPORT` of `ebpf`.
    ///
    /// # Errors
    /// When one is missing or of another type.
    pub fn open(ebpf: &Ebpf) -> Result<Self, LoaderError> {
        use aya::maps::IterableMap as _;
        let config =
            Array::try_from(dup_map(ebpf, MAP_CONFIG)?).map_err(LoaderError::map(MAP_CONFIG))?;
        let interface_modes = HashMap::try_from(dup_map(ebpf, MAP_IFACE_MODES)?)
            .map_err(LoaderError::map(MAP_IFACE_MODES))?;
        let v4 = LpmTrie::try_from(dup_map(ebpf, MAP_ALLOW_V4)?)
            .map_err(LoaderError::map(MAP_ALLOW_V4))?;
        let v6 = LpmTrie::try_from(dup_map(ebpf, MAP_ALLOW_V6)?)
            .map_err(LoaderError::map(MAP_ALLOW_V6))?;
        let ports = HashMap::try_from(dup_map(ebpf, MAP_ALLOW_PORTS)?)
            .map_err(LoaderError::map(MAP_ALLOW_PORTS))?;
        let capacities = Capacities {
            interface_modes: max_entries(interface_modes.map(), MAP_IFACE_MODES)?,
            v4: max_entries(v4.map(), MAP_ALLOW_V4)?,
            v6: max_entries(v6.map(), MAP_ALLOW_V6)?,
            ports: max_entries(ports.map(), MAP_ALLOW_PORTS)?,
        };
        Ok(Self {
            config,
            interface_modes,
            v4,
            v6,
            ports,
            capacities,
        })
    }

    /// Other handles on the same maps (for the metrics server, which reads them on another
    /// thread).
    ///
    /// # Errors
    /// When a file descriptor cannot be duplicated.
    pub fn try_clone(&self) -> Result<Self, LoaderError> {
        use aya::maps::IterableMap as _;
        let config = dup_data(self.config.map(), MAP_CONFIG)?;
        let interface_modes = dup_data(self.interface_modes.map(), MAP_IFACE_MODES)?;
        let v4 = dup_data(self.v4.map(), MAP_ALLOW_V4)?;
        let v6 = dup_data(self.v6.map(), MAP_ALLOW_V6)?;
        let ports = dup_data(self.ports.map(), MAP_ALLOW_PORTS)?;
        Ok(Self {
            config: Array::try_from(config).map_err(LoaderError::map(MAP_CONFIG))?,
            interface_modes: HashMap::try_from(interface_modes)
                .map_err(LoaderError::map(MAP_IFACE_MODES))?,
            v4: LpmTrie::try_from(v4).map_err(LoaderError::map(MAP_ALLOW_V4))?,
            v6: LpmTrie::try_from(v6).map_err(LoaderError::map(MAP_ALLOW_V6))?,
            ports: HashMap::try_from(ports).map_err(LoaderError::map(MAP_ALLOW_PORTS))?,
            capacities: self.capacities,
        })
    }

    /// Entries and capacity of each policy map (for the metrics).
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn fill(&self) -> Result<Vec<MapFill>, LoaderError> {
        let state = self.read_state()?;
        let fill = |name, entries: usize, max: usize| MapFill {
            name,
            entries: u64::try_from(entries).unwrap_or(u64::MAX),
            max: u32::try_from(max).unwrap_or(u32::MAX),
        };
        Ok(vec![
            fill(
                MAP_IFACE_MODES,
                state.interface_modes.len(),
                self.capacities.interface_modes,
            ),
            fill(MAP_ALLOW_V4, state.v4.len(), self.capacities.v4),
            fill(MAP_ALLOW_V6, state.v6.len(), self.capacities.v6),
            fill(MAP_ALLOW_PORTS, state.ports.len(), self.capacities.ports),
        ])
    }
}

/// Removal of an absent key is fine: the map already is as wanted.
fn removed(result: Result<(), MapError>, name: &'static str) -> Result<(), LoaderError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map_err(LoaderError::map(name)),
    }
}

impl PolicyStore for PolicyMaps {
    fn read_state(&self) -> Result<PolicyState, LoaderError> {
        let mut state = PolicyState {
            config: self
                .config
                .get(&0, 0)
                .map_err(LoaderError::map(MAP_CONFIG))?,
            ..PolicyState::default()
        };
        // These maps change only here, so one walk of each sees every key exactly once.
        for entry in self.interface_modes.iter() {
            let (ifindex, mode) = entry.map_err(LoaderError::map(MAP_IFACE_MODES))?;
            state.interface_modes.insert(ifindex, mode);
        }
        for key in self.v4.keys() {
            let key = key.map_err(LoaderError::map(MAP_ALLOW_V4))?;
            state.v4.insert((prefix_len(key.prefix_len()), key.data()));
        }
        for key in self.v6.keys() {
            let key = key.map_err(LoaderError::map(MAP_ALLOW_V6))?;
            state.v6.insert((prefix_len(key.prefix_len()), key.data()));
        }
        for key in self.ports.keys() {
            state
                .ports
                .insert(key.map_err(LoaderError::map(MAP_ALLOW_PORTS))?);
        }
        Ok(state)
    }

    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn execute(&mut self, op: &MapOp) -> Result<(), LoaderError> {
        match *op {
            MapOp::WriteConfig(config) => self
                .config
                .set(0, config, 0)
                .map_err(LoaderError::map(MAP_CONFIG)),
            MapOp::PutInterfaceMode(ifindex, mode) => self
                .interface_modes
                .insert(ifindex, mode, 0)
                .map_err(LoaderError::map(MAP_IFACE_MODES)),
            MapOp::RemoveInterfaceMode(ifindex) => {
                removed(self.interface_modes.remove(&ifindex), MAP_IFACE_MODES)
            }
            MapOp::PutV4(len, addr) => self
                .v4
                .insert(&Key::new(u32::from(len), addr), 1, 0)
                .map_err(LoaderError::map(MAP_ALLOW_V4)),
            MapOp::RemoveV4(len, addr) => removed(
                self.v4.remove(&Key::new(u32::from(len), addr)),
                MAP_ALLOW_V4,
            ),
            MapOp::PutV6(len, addr) => self
                .v6
                .insert(&Key::new(u32::from(len), addr), 1, 0)
                .map_err(LoaderError::map(MAP_ALLOW_V6)),
            MapOp::RemoveV6(len, addr) => removed(
                self.v6.remove(&Key::new(u32::from(len), addr)),
                MAP_ALLOW_V6,
            ),
            MapOp::PutPort(port) => self
                .ports
                .insert(port, 1, 0)
                .map_err(LoaderError::map(MAP_ALLOW_PORTS)),
            MapOp::RemovePort(port) => removed(self.ports.remove(&port), MAP_ALLOW_PORTS),
        }
    }
}

/// LPM prefix lengths are at most 128.
fn prefix_len(len: u32) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}

/// The policy maps in memory, for tests: same semantics as the kernel's, including capacity.
#[cfg(test)]
#[derive(Clone, Debug)]
pub struct MemoryPolicyStore {
    /// What the "maps" hold.
    pub state: PolicyState,
    /// Their capacities.
    pub capacities: Capacities,
    /// Every operation executed, in order.
    pub log: Vec<MapOp>,
    /// Fail the operation with this index in `log` (to test recovery).
    pub fail_at: Option<usize>,
}

#[cfg(test)]
impl MemoryPolicyStore {
    /// Empty maps of the compiled-in sizes.
    #[must_use]
    pub fn new() -> Self {
        use mptcp_common::maps::{MAX_ALLOW_PORTS, MAX_ALLOW_PREFIXES, MAX_IFACE_MODES};
        let cap = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            state: PolicyState::default(),
            capacities: Capacities {
                interface_modes: cap(MAX_IFACE_MODES),
                v4: cap(MAX_ALLOW_PREFIXES),
                v6: cap(MAX_ALLOW_PREFIXES),
                ports: cap(MAX_ALLOW_PORTS),
            },
            log: Vec::new(),
            fail_at: None,
        }
    }
}

#[cfg(test)]
impl Default for MemoryPolicyStore {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
impl PolicyStore for MemoryPolicyStore {
    fn read_state(&self) -> Result<PolicyState, LoaderError> {
        Ok(self.state.clone())
    }

    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn execute(&mut self, op: &MapOp) -> Result<(), LoaderError> {
        let full = |name| {
            LoaderError::map(name)(MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
            }))
        };
        if self.fail_at == Some(self.log.len()) {
            self.log.push(*op);
            return Err(full("injected failure"));
        }
        self.log.push(*op);
        let s = &mut self.state;
        let cap = self.capacities;
        match *op {
            MapOp::WriteConfig(config) => s.config = config,
            MapOp::PutInterfaceMode(i, m) => {
                if !s.interface_modes.contains_key(&i)
                    && s.interface_modes.len() >= cap.interface_modes
                {
                    return Err(full(MAP_IFACE_MODES));
                }
                s.interface_modes.insert(i, m);
            }
            MapOp::RemoveInterfaceMode(i) => {
                s.interface_modes.remove(&i);
            }
            MapOp::PutV4(l, a) => {
                if !s.v4.contains(&(l, a)) && s.v4.len() >= cap.v4 {
                    return Err(full(MAP_ALLOW_V4));
                }
                s.v4.insert((l, a));
            }
            MapOp::RemoveV4(l, a) => {
                s.v4.remove(&(l, a));
            }
            MapOp::PutV6(l, a) => {
                if !s.v6.contains(&(l, a)) && s.v6.len() >= cap.v6 {
                    return Err(full(MAP_ALLOW_V6));
                }
                s.v6.insert((l, a));
            }
            MapOp::RemoveV6(l, a) => {
                s.v6.remove(&(l, a));
            }
            MapOp::PutPort(p) => {
                if !s.ports.contains(&p) && s.ports.len() >= cap.ports {
                    return Err(full(MAP_ALLOW_PORTS));
                }
                s.ports.insert(p);
            }
            MapOp::RemovePort(p) => {
                s.ports.remove(&p);
            }
        }
        Ok(())
    }
}

/// The policy of a run: where it comes from, what is in force, and the maps it lives in.
/// `run` creates it before attaching and calls [`PolicyKeeper::reload`] on SIGHUP.
#[derive(Debug)]
pub struct PolicyKeeper {
    source: PolicySource,
    maps: PolicyMaps,
    current: Policy,
}

impl PolicyKeeper {
    /// Opens the policy maps of `ebpf` and applies `policy` (already loaded from `source`).
    ///
    /// # Errors
    /// When the maps cannot be opened or written, or an interface is gone.
    pub fn start(ebpf: &Ebpf, source: PolicySource, policy: Policy) -> Result<Self, LoaderError> {
        let mut maps = PolicyMaps::open(ebpf)?;
        apply_policy(&mut maps, &policy, interface_index)?;
        Ok(Self {
            source,
            maps,
            current: policy,
        })
    }

    /// The policy in force.
    #[must_use]
    pub fn current(&self) -> &Policy {
        &self.current
    }

    /// The policy maps.
    #[must_use]
    pub fn maps(&self) -> &PolicyMaps {
        &self.maps
    }

    /// The policy file, if there is one.
    #[must_use]
    pub fn file(&self) -> Option<&PathBuf> {
        self.source.file.as_ref()
    }

    /// SIGHUP: re-reads the file (flags still override it), and applies the result if it is
    /// valid. Logs what changed or why the file was rejected (the policy in force then stays),
    /// and counts the reload or the error in `counters`.
    pub fn reload(&mut self, counters: &mut LoaderCounters) {
        let Some(file) = self.source.file.clone() else {
            log::warn!("SIGHUP: no --config file to reload; the policy stays as it is");
            return;
        };
        match self.try_reload() {
            Ok((changes, outcome)) => {
                counters.add(LoaderCounter::PolicyReloads, 1);
                if changes.is_empty() {
                    log::info!(
                        "reloaded the policy from {}: nothing changed",
                        file.display()
                    );
                } else {
                    log::info!(
                        "reloaded the policy from {}: {} ({} map entries written, {} removed)",
                        file.display(),
                        changes.join("; "),
                        outcome.entries_written,
                        outcome.entries_removed
                    );
                }
            }
            Err(e) => {
                counters.add(LoaderCounter::PolicyReloadErrors, 1);
                log::error!("policy reload rejected, the previous policy stays in force: {e}");
            }
        }
    }

    fn try_reload(&mut self) -> Result<(Vec<String>, ApplyOutcome), LoaderError> {
        let policy = self.source.load()?;
        let outcome = apply_policy(&mut self.maps, &policy, interface_index)?;
        let changes = policy.changes_from(&self.current);
        self.current = policy;
        Ok((changes, outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_common::maps::{MODE_ENFORCE, MODE_MONITOR, UNKNOWN_DROP};

    fn p(text: &str) -> Prefix {
        Prefix::parse(text).unwrap()
    }

    fn ifindex(name: &str) -> Result<u32, LoaderError> {
        match name {
            "veth0" => Ok(10),
            "veth1" => Ok(11),
            _ => Err(LoaderError::UnknownInterface {
                iface: name.to_owned(),
            }),
        }
    }

    fn strict() -> Policy {
        Policy {
            mode: FilterMode::Enforce,
            interface_modes: BTreeMap::from([("veth1".to_owned(), FilterMode::Monitor)]),
            unknown_conn: UnknownConn::Drop,
            allowed_prefixes: Some(vec![p("198.18.0.0/15"), p("2001:db8::/32")]),
            allowed_ports: Some(vec![PortRule::NoPort, PortRule::Port(443)]),
            join_syn_limit: Some(RateLimit {
                per_second: 10,
                burst: 20,
            }),
            drop_events: RateLimit {
                per_second: 5,
                burst: 7,
            },
        }
    }

    #[test]
    fn prefixes_parse_strictly() {
        assert_eq!(p("198.18.0.0/15"), Prefix::V4([198, 18, 0, 0], 15));
        assert_eq!(p("198.18.0.1"), Prefix::V4([198, 18, 0, 1], 32));
        assert_eq!(p("0.0.0.0/0"), Prefix::V4([0; 4], 0));
        let mut db8 = [0u8; 16];
        db8[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(p("2001:db8::/32"), Prefix::V6(db8, 32));
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(p("::/0").to_string(), "::/0");
        for (bad, why) in [
            ("198.18.0.0/33", "the prefix length 33 is more than 32"),
            ("2001:db8::/129", "the prefix length 129 is more than 128"),
            ("198.18.1.0/15", "did you mean 198.18.0.0/15?"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
            ("198.18.0/24", "is not an IPv4 or IPv6 prefix"),
            ("198.18.0.0/", "is not an IPv4 or IPv6 prefix"),
            ("198.18.0.0/+8", "is not an IPv4 or IPv6 prefix"),
            ("198.18.0.0/08", "is not an IPv4 or IPv6 prefix"),
            ("example.com/8", "is not an IPv4 or IPv6 prefix"),
        ] {
            let err = Prefix::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn ports_parse_and_none_is_the_zero_key() {
        assert_eq!(PortRule::parse("none").unwrap().wire(), [0, 0]);
        assert_eq!(PortRule::parse("443").unwrap().wire(), [1, 187]);
        assert!(PortRule::parse("0").unwrap_err().contains("\"none\""));
        assert!(PortRule::parse("65536")
            .unwrap_err()
            .contains("not in 1..=65535"));
        assert!(PortRule::parse("https")
            .unwrap_err()
            .contains("is not a port"));
        assert!(PortRule::NoPort < PortRule::Port(1));
    }

    #[test]
    fn config_value_of_a_policy() {
        assert_eq!(
            Policy::default().config(),
            Config {
                event_rate: DEFAULT_EVENT_RATE,
                event_burst: DEFAULT_EVENT_BURST,
                crypto_rate: mptcp_common::maps::DEFAULT_CRYPTO_RATE,
                ..Config::default()
            }
        );
        assert_eq!(
            strict().config(),
            Config {
                mode: MODE_ENFORCE,
                unknown_conn: UNKNOWN_DROP,
                addr_policy: ADDR_POLICY_PREFIXES | ADDR_POLICY_PORTS,
                join_syn_rate: 10,
                join_syn_burst: 20,
                event_rate: 5,
                event_burst: 7,
                crypto_rate: mptcp_common::maps::DEFAULT_CRYPTO_RATE,
            }
        );
        // An empty allow list still turns the check on: nothing may be announced.
        let nothing = Policy {
            allowed_ports: Some(vec![]),
            ..Policy::default()
        };
        assert_eq!(nothing.config().addr_policy, ADDR_POLICY_PORTS);
    }

    #[test]
    fn desired_state_resolves_interfaces() {
        let state = desired_state(&strict(), ifindex).unwrap();
        assert_eq!(state.interface_modes, BTreeMap::from([(11, MODE_MONITOR)]));
        assert_eq!(state.v4, BTreeSet::from([(15, [198, 18, 0, 0])]));
        assert_eq!(state.v6.len(), 1);
        assert_eq!(state.ports, BTreeSet::from([[0, 0], [1, 187]]));
        let gone = Policy {
            interface_modes: BTreeMap::from([("veth9".to_owned(), FilterMode::Monitor)]),
            ..Policy::default()
        };
        assert!(matches!(
            desired_state(&gone, ifindex),
            Err(LoaderError::UnknownInterface { .. })
        ));
    }

    fn caps(n: usize) -> Capacities {
        Capacities {
            interface_modes: n,
            v4: n,
            v6: n,
            ports: n,
        }
    }

    #[test]
    fn plan_adds_before_and_removes_after_the_config() {
        let old = desired_state(&strict(), ifindex).unwrap();
        let new_policy = Policy {
            allowed_prefixes: Some(vec![p("198.18.0.0/16")]),
            interface_modes: BTreeMap::from([("veth0".to_owned(), FilterMode::Monitor)]),
            ..strict()
        };
        let new = desired_state(&new_policy, ifindex).unwrap();
        let ops = plan_policy(&old, &new, &caps(100));
        let mut db8 = [0u8; 16];
        db8[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(
            ops,
            [
                MapOp::PutV4(16, [198, 18, 0, 0]),
                MapOp::PutInterfaceMode(10, MODE_MONITOR),
                MapOp::WriteConfig(new.config),
                MapOp::RemoveV4(15, [198, 18, 0, 0]),
                MapOp::RemoveV6(32, db8),
                MapOp::RemoveInterfaceMode(11),
            ]
        );
        // Nothing to change: only the (idempotent) config write.
        assert_eq!(
            plan_policy(&new, &new, &caps(100)),
            [MapOp::WriteConfig(new.config)]
        );
    }

    #[test]
    fn plan_turning_the_policy_off_writes_the_config_first() {
        let old = desired_state(&strict(), ifindex).unwrap();
        let new = desired_state(&Policy::default(), ifindex).unwrap();
        let ops = plan_policy(&old, &new, &caps(100));
        assert_eq!(ops[0], MapOp::WriteConfig(new.config));
        assert_eq!(ops.len(), 1 + 2 + 2 + 1, "{ops:?}");
    }

    #[test]
    fn plan_relaxes_first_when_old_and_new_lists_do_not_fit_together() {
        let list = |first: u8| Policy {
            allowed_prefixes: Some(
                (0..3)
                    .map(|i| Prefix::V4([198, 18, first + i, 0], 24))
                    .collect(),
            ),
            ..Policy::default()
        };
        let old = desired_state(&list(0), ifindex).unwrap();
        let new = desired_state(&list(10), ifindex).unwrap();
        let ops = plan_policy(&old, &new, &caps(4));
        let relaxed = Config {
            addr_policy: 0,
            ..old.config
        };
        assert_eq!(ops[0], MapOp::WriteConfig(relaxed));
        assert!(matches!(
            ops[1..4],
            [
                MapOp::RemoveV4(..),
                MapOp::RemoveV4(..),
                MapOp::RemoveV4(..)
            ]
        ));
        assert!(matches!(
            ops[4..7],
            [MapOp::PutV4(..), MapOp::PutV4(..), MapOp::PutV4(..)]
        ));
        assert_eq!(ops[7..], [MapOp::WriteConfig(new.config)]);
        // And it really fits the store of that size.
        let mut store = MemoryPolicyStore {
            capacities: caps(4),
            ..MemoryPolicyStore::new()
        };
        apply_policy(&mut store, &list(0), ifindex).unwrap();
        apply_policy(&mut store, &list(10), ifindex).unwrap();
        assert_eq!(store.state, new);
    }

    #[test]
    fn apply_reaches_the_desired_state_and_reports_counts() {
        let mut store = MemoryPolicyStore::new();
        let first = apply_policy(&mut store, &strict(), ifindex).unwrap();
        assert_eq!(store.state, desired_state(&strict(), ifindex).unwrap());
        assert_eq!(
            first,
            ApplyOutcome {
                entries_written: 1 + 2 + 2,
                entries_removed: 0
            }
        );
        let back = apply_policy(&mut store, &Policy::default(), ifindex).unwrap();
        assert_eq!(
            store.state,
            desired_state(&Policy::default(), ifindex).unwrap()
        );
        assert_eq!(back.entries_removed, 5);
    }

    #[test]
    fn a_failed_write_restores_the_previous_state() {
        let mut store = MemoryPolicyStore::new();
        apply_policy(&mut store, &strict(), ifindex).unwrap();
        let before = store.state.clone();
        store.log.clear();
        store.fail_at = Some(1);
        let other = Policy {
            allowed_prefixes: Some(vec![p("198.19.0.0/16"), p("198.18.0.0/24")]),
            ..Policy::default()
        };
        let err = apply_policy(&mut store, &other, ifindex).unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(store.state, before);
    }

    #[test]
    fn description_and_changes() {
        let text = strict().describe();
        assert_eq!(
            text,
            "mode enforce; interface modes veth1=monitor; unknown connections drop; \
             ADD_ADDR prefixes 198.18.0.0/15, 2001:db8::/32; ADD_ADDR ports none, 443; \
             MP_JOIN SYN limit per source 10/s burst 20; drop events per CPU 5/s burst 7"
        );
        let v4_only = Policy {
            allowed_prefixes: Some(vec![p("198.18.0.0/15")]),
            ..Policy::default()
        };
        assert!(v4_only
            .describe()
            .contains("198.18.0.0/15 (no IPv6 prefix: every IPv6 announcement is dropped)"));
        assert_eq!(
            Policy::default().changes_from(&strict())[..2],
            [
                "mode enforce -> monitor",
                "interface modes veth1=monitor -> none"
            ]
        );
        assert!(strict().changes_from(&strict()).is_empty());
    }
}
