//! [`PolicyMaps`]: the policy maps of the loaded object, the kernel's [`PolicyStore`].

use std::{fmt, os::fd::AsFd as _};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError},
    Ebpf,
};
use mptcp_common::maps::{
    Config, MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_IFACE_MODES,
};

use super::plan::{Capacities, MapOp, PolicyState, PolicyStore};
use crate::{errors::OsError, kernel::error::KernelError, kernel::store::MapFill};

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
fn dup_map(ebpf: &Ebpf, name: &'static str) -> Result<Map, KernelError> {
    let map = ebpf
        .map(name)
        .ok_or(KernelError::MissingInObject { kind: "map", name })?;
    match map {
        Map::Array(data) | Map::HashMap(data) | Map::LpmTrie(data) => dup_data(data, name),
        _ => Err(KernelError::map(name)(MapError::InvalidMapType {
            map_type: u32::MAX,
        })),
    }
}

/// Another handle on the same kernel map.
fn dup_data(data: &MapData, name: &'static str) -> Result<Map, KernelError> {
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(OsError::doing("duplicating a map file descriptor"))?;
    let data = MapData::from_fd(fd).map_err(KernelError::map(name))?;
    Map::from_map_data(data).map_err(KernelError::map(name))
}

fn max_entries(data: &MapData, name: &'static str) -> Result<usize, KernelError> {
    let info = data.info().map_err(KernelError::map(name))?;
    Ok(usize::try_from(info.max_entries()).unwrap_or(usize::MAX))
}

impl PolicyMaps {
    /// Opens `MPTCP_CONFIG`, `MPTCP_IFMODES`, `MPTCP_ALLOW_V4`, `MPTCP_ALLOW_V6` and
    /// `MPTCP_ALLOWPORT` of `ebpf`.
    ///
    /// # Errors
    /// When one is missing or of another type.
    pub fn open(ebpf: &Ebpf) -> Result<Self, KernelError> {
        use aya::maps::IterableMap as _;
        let config =
            Array::try_from(dup_map(ebpf, MAP_CONFIG)?).map_err(KernelError::map(MAP_CONFIG))?;
        let interface_modes = HashMap::try_from(dup_map(ebpf, MAP_IFACE_MODES)?)
            .map_err(KernelError::map(MAP_IFACE_MODES))?;
        let v4 = LpmTrie::try_from(dup_map(ebpf, MAP_ALLOW_V4)?)
            .map_err(KernelError::map(MAP_ALLOW_V4))?;
        let v6 = LpmTrie::try_from(dup_map(ebpf, MAP_ALLOW_V6)?)
            .map_err(KernelError::map(MAP_ALLOW_V6))?;
        let ports = HashMap::try_from(dup_map(ebpf, MAP_ALLOW_PORTS)?)
            .map_err(KernelError::map(MAP_ALLOW_PORTS))?;
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
    pub fn try_clone(&self) -> Result<Self, KernelError> {
        use aya::maps::IterableMap as _;
        let config = dup_data(self.config.map(), MAP_CONFIG)?;
        let interface_modes = dup_data(self.interface_modes.map(), MAP_IFACE_MODES)?;
        let v4 = dup_data(self.v4.map(), MAP_ALLOW_V4)?;
        let v6 = dup_data(self.v6.map(), MAP_ALLOW_V6)?;
        let ports = dup_data(self.ports.map(), MAP_ALLOW_PORTS)?;
        Ok(Self {
            config: Array::try_from(config).map_err(KernelError::map(MAP_CONFIG))?,
            interface_modes: HashMap::try_from(interface_modes)
                .map_err(KernelError::map(MAP_IFACE_MODES))?,
            v4: LpmTrie::try_from(v4).map_err(KernelError::map(MAP_ALLOW_V4))?,
            v6: LpmTrie::try_from(v6).map_err(KernelError::map(MAP_ALLOW_V6))?,
            ports: HashMap::try_from(ports).map_err(KernelError::map(MAP_ALLOW_PORTS))?,
            capacities: self.capacities,
        })
    }

    /// Entries and capacity of each policy map (for the metrics).
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn fill(&self) -> Result<Vec<MapFill>, KernelError> {
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
fn removed(result: Result<(), MapError>, name: &'static str) -> Result<(), KernelError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map_err(KernelError::map(name)),
    }
}

impl PolicyStore for PolicyMaps {
    fn read_state(&self) -> Result<PolicyState, KernelError> {
        let mut state = PolicyState {
            config: self
                .config
                .get(&0, 0)
                .map_err(KernelError::map(MAP_CONFIG))?,
            ..PolicyState::default()
        };
        // These maps change only here, so one walk of each sees every key exactly once.
        for entry in &self.interface_modes {
            let (ifindex, mode) = entry.map_err(KernelError::map(MAP_IFACE_MODES))?;
            state.interface_modes.insert(ifindex, mode);
        }
        for key in self.v4.keys() {
            let key = key.map_err(KernelError::map(MAP_ALLOW_V4))?;
            state.v4.insert((prefix_len(key.prefix_len()), key.data()));
        }
        for key in self.v6.keys() {
            let key = key.map_err(KernelError::map(MAP_ALLOW_V6))?;
            state.v6.insert((prefix_len(key.prefix_len()), key.data()));
        }
        for key in self.ports.keys() {
            state
                .ports
                .insert(key.map_err(KernelError::map(MAP_ALLOW_PORTS))?);
        }
        Ok(state)
    }

    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn execute(&mut self, op: &MapOp) -> Result<(), KernelError> {
        match *op {
            MapOp::WriteConfig(config) => self
                .config
                .set(0, config, 0)
                .map_err(KernelError::map(MAP_CONFIG)),
            MapOp::PutInterfaceMode(ifindex, mode) => self
                .interface_modes
                .insert(ifindex, mode, 0)
                .map_err(KernelError::map(MAP_IFACE_MODES)),
            MapOp::RemoveInterfaceMode(ifindex) => {
                removed(self.interface_modes.remove(&ifindex), MAP_IFACE_MODES)
            }
            MapOp::PutV4(len, addr) => self
                .v4
                .insert(&Key::new(u32::from(len), addr), 1, 0)
                .map_err(KernelError::map(MAP_ALLOW_V4)),
            MapOp::RemoveV4(len, addr) => removed(
                self.v4.remove(&Key::new(u32::from(len), addr)),
                MAP_ALLOW_V4,
            ),
            MapOp::PutV6(len, addr) => self
                .v6
                .insert(&Key::new(u32::from(len), addr), 1, 0)
                .map_err(KernelError::map(MAP_ALLOW_V6)),
            MapOp::RemoveV6(len, addr) => removed(
                self.v6.remove(&Key::new(u32::from(len), addr)),
                MAP_ALLOW_V6,
            ),
            MapOp::PutPort(port) => self
                .ports
                .insert(port, 1, 0)
                .map_err(KernelError::map(MAP_ALLOW_PORTS)),
            MapOp::RemovePort(port) => removed(self.ports.remove(&port), MAP_ALLOW_PORTS),
        }
    }
}

/// LPM prefix lengths are at most 128.
fn prefix_len(len: u32) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}
