//! From a policy to map operations: what the maps should hold, the ordered operations that get
//! them there (pure), and applying them through a [`PolicyStore`] with a restore on failure.

use std::collections::{BTreeMap, BTreeSet};

use mptcp_common::maps::{Config, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES};

use super::model::{Policy, Prefix};
use crate::kernel::error::KernelError;
#[cfg(test)]
use aya::maps::MapError;
#[cfg(test)]
use mptcp_common::maps::{MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_IFACE_MODES};

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
/// (normally [`crate::kernel::preflight::interface_index`]) at each application: an interface re-created since the start
/// gets its new index.
///
/// # Errors
/// The first error of `ifindex_of`.
pub fn desired_state(
    policy: &Policy,
    mut ifindex_of: impl FnMut(&str) -> Result<u32, KernelError>,
) -> Result<PolicyState, KernelError> {
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
    fn read_state(&self) -> Result<PolicyState, KernelError>;

    /// Their capacities.
    fn capacities(&self) -> Capacities;

    /// Performs one write (removing something absent is not an error).
    ///
    /// # Errors
    /// When the map refuses it.
    fn execute(&mut self, op: &MapOp) -> Result<(), KernelError>;
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
    ifindex_of: impl FnMut(&str) -> Result<u32, KernelError>,
) -> Result<ApplyOutcome, KernelError> {
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
    fn read_state(&self) -> Result<PolicyState, KernelError> {
        Ok(self.state.clone())
    }

    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn execute(&mut self, op: &MapOp) -> Result<(), KernelError> {
        let full = |name| {
            KernelError::map(name)(MapError::SyscallError(aya::sys::SyscallError {
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
