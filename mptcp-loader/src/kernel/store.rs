//! Access to the fast path's connection, subflow and token maps behind one trait, so the
//! installation and idle-sweep logic is unit-tested against `MemoryMaps` (tests only) and runs against the
//! kernel maps through [`KernelMaps`].

#[cfg(test)]
use std::collections::HashMap;
use std::{collections::HashSet, hash::Hash};

use std::borrow::Borrow;

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData, MapError, PerCpuArray};
use mptcp_common::counters::Counter;
use mptcp_common::maps::{
    ConnState, FlowKey, FlowRef, Token, TokenRef, MAP_CONNS, MAP_FLOWS, MAP_TOKENS,
};

use crate::kernel::error::KernelError;

/// `BPF_ANY`: insert or replace.
const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`: create only (an entry the fast path made meanwhile is never overwritten).
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only an entry that exists (the LRU may have evicted it meanwhile, and a
/// connection we would re-create here would have no owner).
const BPF_EXIST: u64 = 2;

/// The maps the loader reads and writes besides counters: [`MAP_CONNS`], [`MAP_FLOWS`],
/// [`MAP_TOKENS`]. "Not there" is `None` / `false`, never an error.
pub trait FirewallMaps {
    /// The state of connection `id`.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn conn(&self, id: u64) -> Result<Option<ConnState>, KernelError>;

    /// Overwrites the entry of connection `id`; `false` if there was none (nothing written).
    ///
    /// # Errors
    /// When the map cannot be written.
    fn update_existing_conn(&mut self, id: u64, state: &ConnState) -> Result<bool, KernelError>;

    /// Creates the entry of connection `id`; `false` if there already was one (nothing written).
    /// For connections learned by a peer through the shared store.
    ///
    /// # Errors
    /// When the map cannot be written.
    fn insert_new_conn(&mut self, id: u64, state: &ConnState) -> Result<bool, KernelError>;

    /// Removes connection `id`; `false` if it was not there.
    ///
    /// # Errors
    /// When the map cannot be written.
    fn remove_conn(&mut self, id: u64) -> Result<bool, KernelError>;

    /// Every connection (a snapshot: the fast path keeps changing the map meanwhile).
    ///
    /// # Errors
    /// When the map cannot be read.
    fn all_conns(&self) -> Result<Vec<(u64, ConnState)>, KernelError>;

    /// [`all_conns`](Self::all_conns), and whether the walk of the map was complete: `false`
    /// when heavy churn cut it short (see [`distinct_keys`]), so it may have missed entries
    /// that were there all along and its length is no count of the map.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn all_conns_walked(&self) -> Result<(Vec<(u64, ConnState)>, bool), KernelError> {
        Ok((self.all_conns()?, true))
    }

    /// The subflow stored under `key` (canonical orientation).
    ///
    /// # Errors
    /// When the map cannot be read.
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowRef>, KernelError>;

    /// Creates a subflow entry (canonical orientation); `false` if there already was one.
    ///
    /// # Errors
    /// When the map cannot be written.
    fn insert_new_flow(&mut self, key: &FlowKey, flow: &FlowRef) -> Result<bool, KernelError>;

    /// Removes a subflow; `false` if it was not there.
    ///
    /// # Errors
    /// When the map cannot be written.
    fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, KernelError>;

    /// Every subflow (a snapshot).
    ///
    /// # Errors
    /// When the map cannot be read.
    fn all_flows(&self) -> Result<Vec<(FlowKey, FlowRef)>, KernelError>;

    /// The connection a token names.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn token(&self, token: &Token) -> Result<Option<TokenRef>, KernelError>;

    /// Inserts or replaces a token entry.
    ///
    /// # Errors
    /// When the map cannot be written.
    fn put_token(&mut self, token: &Token, entry: &TokenRef) -> Result<(), KernelError>;

    /// Removes a token entry; `false` if it was not there.
    ///
    /// # Errors
    /// When the map cannot be written.
    fn remove_token(&mut self, token: &Token) -> Result<bool, KernelError>;
}

/// The kernel maps, taken out of the loaded object.
#[derive(Debug)]
pub struct KernelMaps {
    /// [`MAP_CONNS`].
    pub conns: BpfHashMap<MapData, u64, ConnState>,
    /// [`MAP_FLOWS`].
    pub flows: BpfHashMap<MapData, FlowKey, FlowRef>,
    /// [`MAP_TOKENS`].
    pub tokens: BpfHashMap<MapData, Token, TokenRef>,
}

fn lookup<K: aya::Pod, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<Option<V>, KernelError> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(KernelError::map(name)(e)),
    }
}

fn is_enoent(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn is_eexist(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
}

fn create<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
    value: &V,
    name: &'static str,
) -> Result<bool, KernelError> {
    match map.insert(key, value, BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(e) if is_eexist(&e) => Ok(false),
        Err(e) => Err(KernelError::map(name)(e)),
    }
}

fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<bool, KernelError> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(e) if is_enoent(&e) => Ok(false),
        Err(e) => Err(KernelError::map(name)(e)),
    }
}

/// The distinct keys of a kernel hash map.
///
/// `BPF_MAP_GET_NEXT_KEY` starts over from the first key when the current one was deleted
/// meanwhile (the fast path deletes entries at any time), so keys are deduplicated and the walk
/// is capped: it always ends, and at worst misses keys that the next walk sees.
///
/// # Errors
/// When the map cannot be read.
pub fn distinct_keys<K: aya::Pod + Eq + Hash, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<K>, KernelError> {
    walk_keys(map, name).map(|walk| walk.keys)
}

/// The outcome of [`walk_keys`].
#[derive(Debug)]
pub struct KeyWalk<K> {
    /// The distinct keys seen.
    pub keys: Vec<K>,
    /// Whether the walk reached the end of the map rather than its step limit. A complete walk
    /// has seen every key that was in the map from its last start over to its end, unless an
    /// update replaced that key's entry meanwhile (restarts go back to the first bucket, and
    /// new entries go in front of those a bucket already holds).
    pub complete: bool,
}

/// [`distinct_keys`], saying whether the walk was complete.
///
/// # Errors
/// When the map cannot be read.
pub fn walk_keys<K: aya::Pod + Eq + Hash, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<KeyWalk<K>, KernelError> {
    let max_entries = map
        .map()
        .info()
        .map_err(KernelError::map(name))?
        .max_entries();
    let step_limit = 2 * usize::try_from(max_entries).unwrap_or(usize::MAX / 4) + 16;
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    let mut walk = map.keys();
    // Not `walk.next()` after the loop: past its end, the walk starts over.
    let mut complete = false;
    for _ in 0..step_limit {
        let Some(key) = walk.next() else {
            complete = true;
            break;
        };
        let key = key.map_err(KernelError::map(name))?;
        if seen.insert(key) {
            keys.push(key);
        }
    }
    Ok(KeyWalk { keys, complete })
}

fn snapshot<K: aya::Pod + Eq + Hash, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, KernelError> {
    snapshot_walked(map, name).map(|(entries, _)| entries)
}

/// [`snapshot`], and whether the walk of the keys was complete (see [`walk_keys`]).
fn snapshot_walked<K: aya::Pod + Eq + Hash, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<(Vec<(K, V)>, bool), KernelError> {
    let walk = walk_keys(map, name)?;
    let mut entries = Vec::new();
    for key in walk.keys {
        // Deleted since its key was read: skip it.
        if let Some(value) = lookup(map, &key, name)? {
            entries.push((key, value));
        }
    }
    Ok((entries, walk.complete))
}

impl FirewallMaps for KernelMaps {
    fn conn(&self, id: u64) -> Result<Option<ConnState>, KernelError> {
        lookup(&self.conns, &id, MAP_CONNS)
    }

    fn update_existing_conn(&mut self, id: u64, state: &ConnState) -> Result<bool, KernelError> {
        match self.conns.insert(id, state, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(KernelError::map(MAP_CONNS)(e)),
        }
    }

    fn insert_new_conn(&mut self, id: u64, state: &ConnState) -> Result<bool, KernelError> {
        create(&mut self.conns, &id, state, MAP_CONNS)
    }

    fn remove_conn(&mut self, id: u64) -> Result<bool, KernelError> {
        delete(&mut self.conns, &id, MAP_CONNS)
    }

    fn all_conns(&self) -> Result<Vec<(u64, ConnState)>, KernelError> {
        snapshot(&self.conns, MAP_CONNS)
    }

    fn all_conns_walked(&self) -> Result<(Vec<(u64, ConnState)>, bool), KernelError> {
        snapshot_walked(&self.conns, MAP_CONNS)
    }

    fn flow(&self, key: &FlowKey) -> Result<Option<FlowRef>, KernelError> {
        lookup(&self.flows, key, MAP_FLOWS)
    }

    fn insert_new_flow(&mut self, key: &FlowKey, flow: &FlowRef) -> Result<bool, KernelError> {
        create(&mut self.flows, key, flow, MAP_FLOWS)
    }

    fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, KernelError> {
        delete(&mut self.flows, key, MAP_FLOWS)
    }

    fn all_flows(&self) -> Result<Vec<(FlowKey, FlowRef)>, KernelError> {
        snapshot(&self.flows, MAP_FLOWS)
    }

    fn token(&self, token: &Token) -> Result<Option<TokenRef>, KernelError> {
        lookup(&self.tokens, token, MAP_TOKENS)
    }

    fn put_token(&mut self, token: &Token, entry: &TokenRef) -> Result<(), KernelError> {
        self.tokens
            .insert(token, entry, BPF_ANY)
            .map_err(KernelError::map(MAP_TOKENS))
    }

    fn remove_token(&mut self, token: &Token) -> Result<bool, KernelError> {
        delete(&mut self.tokens, token, MAP_TOKENS)
    }
}

/// Every counter summed over CPUs (wrapping, like the per-CPU u64s), in `Counter::ALL` order.
/// Counters beyond the map's length (an older object) are left out.
///
/// # Errors
/// When the map cannot be read.
pub fn sum_counters<T: Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
) -> Result<Vec<(&'static str, u64)>, MapError> {
    let len = map.len();
    Counter::ALL
        .iter()
        .filter(|c| (**c as u32) < len)
        .map(|&c| Ok((c.name(), counter_total(map, c)?)))
        .collect()
}

/// One counter summed over CPUs (wrapping, like the per-CPU u64s).
///
/// # Errors
/// When the map cannot be read (or is too short to hold `counter`).
pub fn counter_total<T: Borrow<MapData>>(
    map: &PerCpuArray<T, u64>,
    counter: Counter,
) -> Result<u64, MapError> {
    let per_cpu = map.get(&(counter as u32), 0)?;
    Ok(per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
}

/// How full one map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFill {
    /// Map name (a `mptcp_common::maps::MAP_*` constant).
    pub name: &'static str,
    /// Entries in it now.
    pub entries: u64,
    /// Its `max_entries`.
    pub max: u32,
}

/// In-memory maps for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryMaps {
    /// Connections.
    pub conns: HashMap<u64, ConnState>,
    /// Subflows.
    pub flows: HashMap<FlowKey, FlowRef>,
    /// Tokens.
    pub tokens: HashMap<Token, TokenRef>,
}

#[cfg(test)]
impl FirewallMaps for MemoryMaps {
    fn conn(&self, id: u64) -> Result<Option<ConnState>, KernelError> {
        Ok(self.conns.get(&id).copied())
    }

    fn update_existing_conn(&mut self, id: u64, state: &ConnState) -> Result<bool, KernelError> {
        Ok(self.conns.get_mut(&id).map(|s| *s = *state).is_some())
    }

    fn insert_new_conn(&mut self, id: u64, state: &ConnState) -> Result<bool, KernelError> {
        Ok(match self.conns.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(*state);
                true
            }
        })
    }

    fn remove_conn(&mut self, id: u64) -> Result<bool, KernelError> {
        Ok(self.conns.remove(&id).is_some())
    }

    fn all_conns(&self) -> Result<Vec<(u64, ConnState)>, KernelError> {
        Ok(self.conns.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn flow(&self, key: &FlowKey) -> Result<Option<FlowRef>, KernelError> {
        Ok(self.flows.get(key).copied())
    }

    fn insert_new_flow(&mut self, key: &FlowKey, flow: &FlowRef) -> Result<bool, KernelError> {
        Ok(match self.flows.entry(*key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(*flow);
                true
            }
        })
    }

    fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, KernelError> {
        Ok(self.flows.remove(key).is_some())
    }

    fn all_flows(&self) -> Result<Vec<(FlowKey, FlowRef)>, KernelError> {
        Ok(self.flows.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn token(&self, token: &Token) -> Result<Option<TokenRef>, KernelError> {
        Ok(self.tokens.get(token).copied())
    }

    fn put_token(&mut self, token: &Token, entry: &TokenRef) -> Result<(), KernelError> {
        self.tokens.insert(*token, *entry);
        Ok(())
    }

    fn remove_token(&mut self, token: &Token) -> Result<bool, KernelError> {
        Ok(self.tokens.remove(token).is_some())
    }
}
