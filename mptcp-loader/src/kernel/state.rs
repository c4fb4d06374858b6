//! What a run records in its pin directory besides the maps, so that a later run can adopt the
//! attachment and `status` / `detach` can work without a loader process.
//!
//! bpffs holds only pins, so the records are small maps the loader creates and pins:
//! - [`PIN_LAYOUT`]: one `u64`, the [`crate::kernel::layout::ObjectLayout::hash`] of the build that created the
//!   pins (its format never changes, so any version can read it);
//! - [`PIN_RUN_STATE`]: one [`RunState`] (since when the firewall is attached, which run holds it);
//! - [`PIN_IFACES`]: ifindex -> [`IfaceRecord`] for every interface it is attached to.
//!
//! The attachments themselves are two pinned bpf_links per interface,
//! [`xdp_link_pin`] and [`tcx_link_pin`]: the programs stay attached as long as these pins exist,
//! whether a loader runs or not. No qdisc is involved (the egress program is a TCX link, not a
//! `cls_bpf` filter under a clsact qdisc), so there is none to add or remove.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError};

use crate::{kernel::error::KernelError, kernel::firewall::AttachedMode, kernel::pins::PinDir};

/// Pin name of the layout record (one `u64`).
pub const PIN_LAYOUT: &str = "layout";
/// Pin name of the [`RunState`] record.
pub const PIN_RUN_STATE: &str = "run_state";
/// Pin name of the interface records.
pub const PIN_IFACES: &str = "ifaces";
/// Interfaces one pin directory can record.
pub const MAX_IFACE_RECORDS: u32 = 256;
/// Prefix of the pinned XDP links.
const XDP_LINK_PREFIX: &str = "link_xdp_";
/// Prefix of the pinned TCX egress links.
const TCX_LINK_PREFIX: &str = "link_tcx_egress_";

/// Pin name of the XDP link of interface `ifindex`.
#[must_use]
pub fn xdp_link_pin(ifindex: u32) -> String {
    format!("{XDP_LINK_PREFIX}{ifindex}")
}

/// Pin name of the TCX egress link of interface `ifindex`.
#[must_use]
pub fn tcx_link_pin(ifindex: u32) -> String {
    format!("{TCX_LINK_PREFIX}{ifindex}")
}

/// Which of an interface's two links a pin is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// The XDP ingress link.
    Xdp,
    /// The TCX egress link.
    TcxEgress,
}

/// The link kind and interface index a pin name stands for.
#[must_use]
pub fn parse_link_pin(name: &str) -> Option<(LinkKind, u32)> {
    let (kind, index) = if let Some(index) = name.strip_prefix(XDP_LINK_PREFIX) {
        (LinkKind::Xdp, index)
    } else {
        (LinkKind::TcxEgress, name.strip_prefix(TCX_LINK_PREFIX)?)
    };
    index
        .parse()
        .ok()
        .filter(|i| *i != 0)
        .map(|ifindex| (kind, ifindex))
}

/// `RunState::flags`: the run was started with `--keep-attached`.
pub const RUN_FLAG_KEEP_ATTACHED: u32 = 1;

/// Value of [`PIN_RUN_STATE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunState {
    /// Wall clock (Unix ns) when the firewall was first attached; kept by adopting runs.
    pub protected_since_unix_ns: u64,
    /// Wall clock (Unix ns) when the run that last held the pin directory started.
    pub run_started_unix_ns: u64,
    /// That run's pid (in the pid namespace it ran in).
    pub run_pid: u32,
    /// `RUN_FLAG_*`.
    pub flags: u32,
    /// Version of the loader of that run, NUL-padded.
    pub version: [u8; 32],
    /// Runs that have held this state so far (1 for the one that attached).
    pub generation: u32,
    /// Always zero.
    pub pad: u32,
}
const _: () = assert!(size_of::<RunState>() == 64);

impl RunState {
    /// The version as text.
    #[must_use]
    pub fn version(&self) -> String {
        text_of(&self.version)
    }
}

/// `IfaceRecord::xdp_mode` values.
const RECORD_XDP_NATIVE: u8 = 1;
const RECORD_XDP_SKB: u8 = 2;

/// Value of [`PIN_IFACES`]: one interface the firewall is attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceRecord {
    /// Interface index (also the key).
    pub ifindex: u32,
    /// XDP mode: 1 native, 2 generic (skb).
    pub xdp_mode: u8,
    /// Always zero.
    pub pad: [u8; 3],
    /// Interface name when attached, NUL-padded.
    pub name: [u8; 16],
    /// Wall clock (Unix ns) when attached.
    pub attached_unix_ns: u64,
}
const _: () = assert!(size_of::<IfaceRecord>() == 32);

impl IfaceRecord {
    /// A record for `iface` attached now in `mode`.
    #[must_use]
    pub fn new(iface: &str, ifindex: u32, mode: AttachedMode, attached_unix_ns: u64) -> Self {
        let mut name = [0u8; 16];
        let len = iface.len().min(15);
        name[..len].copy_from_slice(&iface.as_bytes()[..len]);
        Self {
            ifindex,
            xdp_mode: match mode {
                AttachedMode::Native => RECORD_XDP_NATIVE,
                AttachedMode::Skb => RECORD_XDP_SKB,
            },
            pad: [0; 3],
            name,
            attached_unix_ns,
        }
    }

    /// The recorded XDP mode.
    #[must_use]
    pub fn mode(&self) -> Option<AttachedMode> {
        match self.xdp_mode {
            RECORD_XDP_NATIVE => Some(AttachedMode::Native),
            RECORD_XDP_SKB => Some(AttachedMode::Skb),
            _ => None,
        }
    }

    /// The recorded name.
    #[must_use]
    pub fn name(&self) -> String {
        text_of(&self.name)
    }
}

// SAFETY: both are repr(C) plain data with explicit padding; every bit pattern is valid.
unsafe impl aya::Pod for RunState {}
// SAFETY: as above.
unsafe impl aya::Pod for IfaceRecord {}

fn text_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `version` bytes for [`RunState`].
#[must_use]
pub fn version_bytes(version: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    let len = version.len().min(31);
    out[..len].copy_from_slice(&version.as_bytes()[..len]);
    out
}

fn open_error(path: &Path) -> impl Fn(MapError) -> KernelError + '_ {
    move |source| KernelError::OpenPin {
        path: path.to_path_buf(),
        source,
    }
}

fn open_map(path: &Path) -> Result<Map, KernelError> {
    let data = MapData::from_pin(path).map_err(open_error(path))?;
    Map::from_map_data(data).map_err(open_error(path))
}

/// The pinned layout hash under `dir`, `None` without a (readable) layout record.
#[must_use]
pub fn read_layout_hash(dir: &Path) -> Option<u64> {
    let map = open_map(&dir.join(PIN_LAYOUT)).ok()?;
    let array: Array<MapData, u64> = Array::try_from(map).ok()?;
    array.get(&0, 0).ok()
}

/// Pins the layout record holding `hash` in `dir` (replacing one that is there).
///
/// # Errors
/// When the map cannot be created, pinned or written.
pub fn write_layout_hash(dir: &PinDir, hash: u64) -> Result<(), KernelError> {
    let path = dir.pin_path(PIN_LAYOUT);
    remove_if_present(&path)?;
    let mut array = crate::kernel::pins::create_pinned_array::<u64>(dir, PIN_LAYOUT, 1)?;
    array.set(0, hash, 0).map_err(KernelError::map(PIN_LAYOUT))
}

fn remove_if_present(path: &Path) -> Result<(), KernelError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(KernelError::io("removing", path)(e)),
        _ => Ok(()),
    }
}

/// The run and interface records of a pin directory.
pub struct PinnedState {
    run: Array<MapData, RunState>,
    ifaces: HashMap<MapData, u32, IfaceRecord>,
}

impl PinnedState {
    /// Opens the records pinned in `dir` (e.g. for `status`).
    ///
    /// # Errors
    /// When they are missing or of another layout.
    pub fn open(dir: &Path) -> Result<Self, KernelError> {
        let run_path = dir.join(PIN_RUN_STATE);
        let ifaces_path = dir.join(PIN_IFACES);
        Ok(Self {
            run: Array::try_from(open_map(&run_path)?).map_err(open_error(&run_path))?,
            ifaces: HashMap::try_from(open_map(&ifaces_path)?).map_err(open_error(&ifaces_path))?,
        })
    }

    /// Opens the records pinned in `dir`, or creates and pins empty ones.
    ///
    /// # Errors
    /// When they can be neither opened nor created.
    pub fn open_or_create(dir: &PinDir) -> Result<Self, KernelError> {
        if let Ok(state) = Self::open(dir.path()) {
            return Ok(state);
        }
        for name in [PIN_RUN_STATE, PIN_IFACES] {
            remove_if_present(&dir.pin_path(name))?;
        }
        let run = crate::kernel::pins::create_pinned_array::<RunState>(dir, PIN_RUN_STATE, 1)?;
        let path = dir.pin_path(PIN_IFACES);
        let ifaces = HashMap::<MapData, u32, IfaceRecord>::create(MAX_IFACE_RECORDS, 0)
            .map_err(KernelError::map(PIN_IFACES))?;
        ifaces.pin(&path).map_err(|source| KernelError::Pin {
            map: PIN_IFACES,
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            run,
            ifaces: HashMap::try_from(open_map(&path)?).map_err(open_error(&path))?,
        })
    }

    /// The run record (all zero if none was written).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn run(&self) -> Result<RunState, KernelError> {
        self.run.get(&0, 0).map_err(KernelError::map(PIN_RUN_STATE))
    }

    /// Replaces the run record.
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn set_run(&mut self, state: &RunState) -> Result<(), KernelError> {
        self.run
            .set(0, *state, 0)
            .map_err(KernelError::map(PIN_RUN_STATE))
    }

    /// Every interface record, by ifindex.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn ifaces(&self) -> Result<Vec<IfaceRecord>, KernelError> {
        let mut records: Vec<IfaceRecord> = self
            .ifaces
            .iter()
            .map(|entry| entry.map(|(_, record)| record))
            .collect::<Result<_, _>>()
            .map_err(KernelError::map(PIN_IFACES))?;
        records.sort_by_key(|r| r.ifindex);
        Ok(records)
    }

    /// The record of `ifindex`, if any.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn iface(&self, ifindex: u32) -> Result<Option<IfaceRecord>, KernelError> {
        match self.ifaces.get(&ifindex, 0) {
            Ok(record) => Ok(Some(record)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(KernelError::map(PIN_IFACES)(e)),
        }
    }

    /// Writes the record of an interface.
    ///
    /// # Errors
    /// When the map cannot be written (e.g. full).
    pub fn put_iface(&mut self, record: &IfaceRecord) -> Result<(), KernelError> {
        self.ifaces
            .insert(record.ifindex, record, 0)
            .map_err(KernelError::map(PIN_IFACES))
    }

    /// Removes the record of an interface (no error if there is none).
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), KernelError> {
        match self.ifaces.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(KernelError::map(PIN_IFACES)(e)),
        }
    }
}

/// One interface that has link pins in a pin directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedLinks {
    /// Interface index (from the pin names).
    pub ifindex: u32,
    /// The XDP link's pin, if there is one.
    pub xdp: Option<PathBuf>,
    /// The TCX egress link's pin, if there is one.
    pub tcx: Option<PathBuf>,
}

/// The link pins in `dir`, grouped by interface, in ifindex order.
///
/// # Errors
/// When the directory cannot be listed (a missing one has no links).
pub fn pinned_links(dir: &Path) -> Result<Vec<PinnedLinks>, KernelError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(KernelError::io("listing", dir)(e)),
    };
    let mut found: Vec<PinnedLinks> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(KernelError::io("listing", dir))?;
        let Some((kind, ifindex)) = entry.file_name().to_str().and_then(parse_link_pin) else {
            continue;
        };
        let slot = if let Some(i) = found.iter_mut().position(|l| l.ifindex == ifindex) {
            &mut found[i]
        } else {
            found.push(PinnedLinks {
                ifindex,
                ..PinnedLinks::default()
            });
            found.last_mut().expect("just pushed")
        };
        match kind {
            LinkKind::Xdp => slot.xdp = Some(entry.path()),
            LinkKind::TcxEgress => slot.tcx = Some(entry.path()),
        }
    }
    found.sort_by_key(|l| l.ifindex);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        assert_eq!(xdp_link_pin(7), "link_xdp_7");
        assert_eq!(tcx_link_pin(7), "link_tcx_egress_7");
        assert_eq!(parse_link_pin("link_xdp_7"), Some((LinkKind::Xdp, 7)));
        assert_eq!(
            parse_link_pin("link_tcx_egress_12"),
            Some((LinkKind::TcxEgress, 12))
        );
        for other in [
            "MPTCP_CONNS",
            "link_xdp_",
            "link_xdp_0",
            "link_xdp_x",
            "layout",
        ] {
            assert_eq!(parse_link_pin(other), None, "{other}");
        }
    }

    #[test]
    fn records_keep_names_modes_and_versions() {
        let r = IfaceRecord::new("veth-with-a-long-name", 3, AttachedMode::Skb, 5);
        assert_eq!(r.name(), "veth-with-a-lon");
        assert_eq!(r.mode(), Some(AttachedMode::Skb));
        assert_eq!(IfaceRecord::default().mode(), None);
        let s = RunState {
            version: version_bytes("0.1.0"),
            ..RunState::default()
        };
        assert_eq!(s.version(), "0.1.0");
    }

    #[test]
    fn links_are_grouped_by_interface() {
        let dir = std::env::temp_dir().join(format!("mptcp-loader-links-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in [
            "link_xdp_4",
            "link_tcx_egress_4",
            "link_xdp_2",
            "MPTCP_CONNS",
        ] {
            fs::write(dir.join(name), b"").unwrap();
        }
        let links = pinned_links(&dir).unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(
            (
                links[0].ifindex,
                links[0].xdp.is_some(),
                links[0].tcx.is_some()
            ),
            (2, true, false)
        );
        assert_eq!(
            (
                links[1].ifindex,
                links[1].xdp.is_some(),
                links[1].tcx.is_some()
            ),
            (4, true, true)
        );
        fs::remove_dir_all(&dir).unwrap();
        assert!(pinned_links(&dir).unwrap().is_empty());
    }
}
