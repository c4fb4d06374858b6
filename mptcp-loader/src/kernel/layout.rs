//! The layout of the state a run leaves pinned for the next one, and the check a new run makes
//! before it adopts that state.
//!
//! Restarting without a gap means the new run's programs use the very maps the old run's
//! programs use (the connections, their keys and tokens, the counters, the configuration, the
//! policy), reopened from their pins. That is only sound if both runs agree on every map's type,
//! key and value layout and size. The maps are described once, in the eBPF source: an
//! [`ObjectLayout`] reads them out of the object (aya-obj's parse, the definitions aya creates
//! the maps from). The loader pins, next to the maps, a one-entry array
//! ([`crate::kernel::state::PIN_LAYOUT`]) holding [`ObjectLayout::hash`]: a hash of [`LAYOUT_VERSION`],
//! of every shared map's name, type, key/value sizes and compiled-in capacity, and of the sizes
//! of the `mptcp-common` structs that travel outside the maps (events, loader records). A new run
//! compares that hash and each pinned map's kernel-reported type, key/value sizes and
//! `max_entries` with its own ([`ObjectLayout::check_pinned`]), and refuses, with a message
//! naming the difference, instead of reusing maps it would misread.
//!
//! The counter array has room to grow (`mptcp_common::counters::COUNTER_CAPACITY` slots, more
//! than there are counters): a build that only appends counters defines the same array, so its
//! layout hash is the same and it adopts the counters an earlier build left pinned.

use std::{path::Path, sync::OnceLock};

use aya::EbpfError;
use aya_obj::EbpfSectionKind;
use mptcp_common::maps::{DropEvent, KeyEvent, MAP_FRAME, MAP_REFERENCE_COUNT};

use crate::{
    kernel::error::KernelError,
    kernel::map_sizes::MapSizes,
    kernel::state::{IfaceRecord, RunState},
    EBPF_OBJ,
};

/// Bump when the meaning of a shared map's bytes changes without its sizes changing (a field
/// reordered, a flag bit redefined): runs of different versions then refuse each other's pins.
/// 2: the layout is read from the object, and the counter array has a capacity.
/// 3: key events carry a kind (learned, joined, ended) where they had padding; a run of an
/// older loader would read queued joins and ends as learned connections.
pub const LAYOUT_VERSION: u32 = 3;

/// `bpf_map_type` values of the shared maps.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
/// `BPF_MAP_TYPE_ARRAY`.
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LRU_HASH`.
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
/// `BPF_MAP_TYPE_LPM_TRIE`.
pub const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// `BPF_MAP_TYPE_RINGBUF`.
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// Per-CPU scratch maps of the programs: used within one invocation only, so each run keeps its
/// own (they are neither pinned nor shared).
pub const PER_INVOCATION_MAPS: [&str; 2] = [MAP_FRAME, MAP_REFERENCE_COUNT];

/// What the kernel reports about a map, or what we expect of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// Map name (a `mptcp_common::maps::MAP_*` constant).
    pub name: String,
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes (0 for ring buffers).
    pub key_size: u32,
    /// Value size in bytes (0 for ring buffers).
    pub value_size: u32,
    /// Capacity (bytes for ring buffers).
    pub max_entries: u32,
}

impl MapLayout {
    /// A map of this layout.
    #[must_use]
    pub fn new(
        name: &str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    ) -> Self {
        Self {
            name: name.to_owned(),
            map_type,
            key_size,
            value_size,
            max_entries,
        }
    }
}

/// The name, as the `'static` constant of [`MapSizes`], of a map whose capacity is chosen per
/// run (`--max-conns`, `--max-joins`) rather than compiled in.
fn sized_name(name: &str) -> Option<&'static str> {
    MapSizes::default()
        .entries()
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| *n == name)
}

#[allow(clippy::cast_possible_truncation, reason = "the structs are small")]
const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// The maps an eBPF object shares between successive runs, as the object defines them: every
/// map of its maps sections except the [`PER_INVOCATION_MAPS`] (and except the maps aya makes of
/// `.rodata`, `.data` and `.bss`, which are per load too), sorted by name, with the capacities
/// compiled into the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    maps: Vec<MapLayout>,
}

impl ObjectLayout {
    /// Reads the shared maps out of `object` (an eBPF ELF file).
    ///
    /// # Errors
    /// [`KernelError::ObjectNotBuilt`] for the empty stub object, [`KernelError::Object`] when
    /// it cannot be parsed.
    pub fn parse(object: &[u8]) -> Result<Self, KernelError> {
        if object.is_empty() {
            return Err(KernelError::ObjectNotBuilt);
        }
        let parsed = aya_obj::Object::parse(object).map_err(|e| KernelError::Object {
            source: EbpfError::ParseError(e),
        })?;
        let maps = parsed
            .maps
            .iter()
            .filter(|(_, m)| {
                matches!(
                    m.section_kind(),
                    EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
                )
            })
            .filter(|(name, _)| !PER_INVOCATION_MAPS.contains(&name.as_str()))
            .map(|(name, m)| {
                MapLayout::new(
                    name,
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries(),
                )
            })
            .collect();
        Ok(Self::from_maps(maps))
    }

    /// The layout of the object embedded in this loader ([`EBPF_OBJ`]), parsed once.
    ///
    /// # Errors
    /// As [`ObjectLayout::parse`].
    pub fn embedded() -> Result<&'static Self, KernelError> {
        static EMBEDDED: OnceLock<ObjectLayout> = OnceLock::new();
        if let Some(layout) = EMBEDDED.get() {
            return Ok(layout);
        }
        let layout = Self::parse(EBPF_OBJ)?;
        Ok(EMBEDDED.get_or_init(|| layout))
    }

    /// A layout from a list of maps (tests, or the description of another build).
    #[must_use]
    pub fn from_maps(mut maps: Vec<MapLayout>) -> Self {
        maps.sort_by(|a, b| a.name.cmp(&b.name));
        Self { maps }
    }

    /// The shared maps with the capacities compiled into the object, sorted by name.
    #[must_use]
    pub fn maps(&self) -> &[MapLayout] {
        &self.maps
    }

    /// Names of the shared maps, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.maps.iter().map(|m| m.name.as_str())
    }

    /// The shared maps with the capacities of this run (`sizes` for the per-run ones).
    #[must_use]
    pub fn with_sizes(&self, sizes: &MapSizes) -> Vec<MapLayout> {
        self.maps
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some((_, entries)) = sizes.entries().into_iter().find(|(n, _)| *n == m.name)
                {
                    m.max_entries = entries;
                }
                m
            })
            .collect()
    }

    /// The layout hash (see the module docs). Per-run capacities are left out: they are
    /// compared one by one, with a message of their own.
    #[must_use]
    pub fn hash(&self) -> u64 {
        let mut h = Fnv::new();
        h.u32(LAYOUT_VERSION);
        for m in &self.maps {
            h.bytes(m.name.as_bytes()).bytes(&[0]);
            h.u32(m.map_type).u32(m.key_size).u32(m.value_size);
            h.u32(if sized_name(&m.name).is_some() {
                0
            } else {
                m.max_entries
            });
        }
        // Structs whose size is not already a map's key or value size.
        for struct_size in [
            size::<KeyEvent>(),
            size::<DropEvent>(),
            size::<RunState>(),
            size::<IfaceRecord>(),
        ] {
            h.u32(struct_size);
        }
        h.0
    }

    /// Checks pinned state against this layout before it is adopted: the pinned layout hash
    /// (`None` when there is no layout record) and the kernel's view of every shared map that is
    /// pinned (`None`: not pinned; the new run creates it).
    ///
    /// # Errors
    /// [`KernelError::IncompatiblePins`] when the layout differs (another version built it);
    /// [`KernelError::PinnedSizesDiffer`] when only a per-run capacity differs.
    pub fn check_pinned(
        &self,
        pin_dir: &Path,
        pinned_hash: Option<u64>,
        pinned_maps: &[(String, Option<MapLayout>)],
        sizes: &MapSizes,
    ) -> Result<(), KernelError> {
        let incompatible = |detail: String| KernelError::IncompatiblePins {
            pin_dir: pin_dir.to_path_buf(),
            detail,
        };
        let ours = self.hash();
        match pinned_hash {
            None => return Err(incompatible("no layout record".to_owned())),
            Some(hash) if hash != ours => {
                return Err(incompatible(format!(
                    "layout {hash:#018x}, this loader's is {ours:#018x}"
                )))
            }
            Some(_) => {}
        }
        for expected in self.with_sizes(sizes) {
            let Some((_, Some(found))) = pinned_maps.iter().find(|(n, _)| *n == expected.name)
            else {
                continue;
            };
            let sized = sized_name(&expected.name);
            let shape = |m: &MapLayout| (m.map_type, m.key_size, m.value_size);
            if shape(found) != shape(&expected)
                || (sized.is_none() && found.max_entries != expected.max_entries)
            {
                return Err(incompatible(format!(
                    "{} is {}, this loader expects {}",
                    expected.name,
                    describe(found),
                    describe(&expected)
                )));
            }
            if let Some(map) = sized.filter(|_| found.max_entries != expected.max_entries) {
                return Err(KernelError::PinnedSizesDiffer {
                    pin_dir: pin_dir.to_path_buf(),
                    map,
                    pinned: found.max_entries,
                    asked: expected.max_entries,
                });
            }
        }
        Ok(())
    }
}

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }
}

/// `map type 9 with 8-byte keys, 160-byte values, 1024 entries`.
fn describe(m: &MapLayout) -> String {
    format!(
        "map type {} with {}-byte keys, {}-byte values, {} entries",
        m.map_type, m.key_size, m.value_size, m.max_entries
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mptcp_common::{
        counters::{COUNTER_CAPACITY, COUNTER_COUNT},
        maps::{
            Config, ConnState, FlowKey, FlowRef, JoinState, Token, TokenRef, MAP_CONFIG, MAP_CONNS,
            MAP_COUNTERS, MAP_FLOWS, MAP_JOINS, MAP_TOKENS, MAX_CONNS, MAX_FLOWS, MAX_JOINS,
            MAX_TOKENS,
        },
    };

    use super::*;

    /// A build's shared maps (a part of what the object defines), with `counters` slots in the
    /// counter array.
    fn build(counters: u32) -> ObjectLayout {
        ObjectLayout::from_maps(vec![
            MapLayout::new(MAP_COUNTERS, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, counters),
            MapLayout::new(
                MAP_CONNS,
                BPF_MAP_TYPE_LRU_HASH,
                8,
                size::<ConnState>(),
                MAX_CONNS,
            ),
            MapLayout::new(
                MAP_FLOWS,
                BPF_MAP_TYPE_LRU_HASH,
                size::<FlowKey>(),
                size::<FlowRef>(),
                MAX_FLOWS,
            ),
            MapLayout::new(
                MAP_TOKENS,
                BPF_MAP_TYPE_LRU_HASH,
                size::<Token>(),
                size::<TokenRef>(),
                MAX_TOKENS,
            ),
            MapLayout::new(
                MAP_JOINS,
                BPF_MAP_TYPE_LRU_HASH,
                size::<FlowKey>(),
                size::<JoinState>(),
                MAX_JOINS,
            ),
            MapLayout::new(MAP_CONFIG, BPF_MAP_TYPE_ARRAY, 4, size::<Config>(), 1),
        ])
    }

    /// What the kernel reports of the pins `layout` left with `sizes`.
    fn pinned(layout: &ObjectLayout, sizes: &MapSizes) -> Vec<(String, Option<MapLayout>)> {
        layout
            .with_sizes(sizes)
            .into_iter()
            .map(|m| (m.name.clone(), Some(m)))
            .collect()
    }

    fn find<'a>(
        pins: &'a mut [(String, Option<MapLayout>)],
        name: &str,
    ) -> &'a mut Option<MapLayout> {
        &mut pins.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    const DIR: &str = "/sys/fs/bpf/mptcp-fw/netns-1";

    #[test]
    fn the_same_build_adopts_its_own_pins() {
        let sizes = MapSizes::default();
        let ours = build(COUNTER_CAPACITY);
        ours.check_pinned(
            Path::new(DIR),
            Some(ours.hash()),
            &pinned(&ours, &sizes),
            &sizes,
        )
        .unwrap();
        // Maps missing from the pins are created by the new run.
        let mut partial = pinned(&ours, &sizes);
        *find(&mut partial, MAP_JOINS) = None;
        partial.truncate(3);
        ours.check_pinned(Path::new(DIR), Some(ours.hash()), &partial, &sizes)
            .unwrap();
    }

    #[test]
    fn a_build_that_only_appends_counters_adopts_the_older_pins() {
        // The counter array's size is its capacity, not the number of counters: a build with
        // fewer counters (the one before a release that appends some) defines the same array,
        // so the layout record it pinned is this build's and its counters are adopted.
        const { assert!(COUNTER_COUNT < COUNTER_CAPACITY) };
        let sizes = MapSizes::default();
        let (older, ours) = (build(COUNTER_CAPACITY), build(COUNTER_CAPACITY));
        assert_eq!(older.hash(), ours.hash());
        ours.check_pinned(
            Path::new(DIR),
            Some(older.hash()),
            &pinned(&older, &sizes),
            &sizes,
        )
        .unwrap();
        // An array sized to its counters (as before the capacity) changes with every new
        // counter: refused, the old way.
        let sized_to_count = build(COUNTER_COUNT - 3);
        let err = build(COUNTER_COUNT)
            .check_pinned(
                Path::new(DIR),
                Some(sized_to_count.hash()),
                &pinned(&sized_to_count, &sizes),
                &sizes,
            )
            .unwrap_err();
        assert!(matches!(err, KernelError::IncompatiblePins { .. }), "{err}");
    }

    #[test]
    fn another_layout_is_refused_with_the_fix() {
        let sizes = MapSizes::default();
        let ours = build(COUNTER_CAPACITY);
        for hash in [None, Some(ours.hash() ^ 1)] {
            let err = ours
                .check_pinned(Path::new(DIR), hash, &pinned(&ours, &sizes), &sizes)
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "pinned maps under {DIR} have another layout (built by another version: "
                )),
                "{msg}"
            );
            assert!(msg.ends_with("run `mptcp-loader detach` first"), "{msg}");
        }
        // Same hash but a map that is not what it should be (e.g. pinned by hand).
        let mut odd = pinned(&ours, &sizes);
        find(&mut odd, MAP_FLOWS).as_mut().unwrap().value_size = 24;
        let msg = ours
            .check_pinned(Path::new(DIR), Some(ours.hash()), &odd, &sizes)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("MPTCP_FLOWS is map type 9 with 40-byte keys, 24-byte values"),
            "{msg}"
        );
        let mut counters = pinned(&ours, &sizes);
        find(&mut counters, MAP_COUNTERS)
            .as_mut()
            .unwrap()
            .max_entries += 1;
        assert!(matches!(
            ours.check_pinned(Path::new(DIR), Some(ours.hash()), &counters, &sizes),
            Err(KernelError::IncompatiblePins { .. })
        ));
    }

    #[test]
    fn other_capacities_name_the_option() {
        let ours = build(COUNTER_CAPACITY);
        let pinned_sizes = MapSizes::for_limits(1024, 64);
        let err = ours
            .check_pinned(
                Path::new(DIR),
                Some(ours.hash()),
                &pinned(&ours, &pinned_sizes),
                &MapSizes::default(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the maps pinned under {DIR} have other sizes (MPTCP_CONNS holds 1024 entries, \
                 this run asks for 65536): pass the --max-conns / --max-joins the attached \
                 firewall was started with, or run `mptcp-loader detach` first"
            )
        );
    }

    #[test]
    fn the_hash_depends_on_the_layout_only() {
        let ours = build(COUNTER_CAPACITY);
        assert_eq!(ours.hash(), build(COUNTER_CAPACITY).hash());
        assert_ne!(ours.hash(), 0);
        // The order the object lists its maps in does not matter.
        let mut reversed = ours.maps().to_vec();
        reversed.reverse();
        assert_eq!(ObjectLayout::from_maps(reversed).hash(), ours.hash());
        // A value size or a compiled-in capacity does; a per-run capacity does not.
        let changed = |name: &str, f: fn(&mut MapLayout)| {
            let mut maps = ours.maps().to_vec();
            f(maps.iter_mut().find(|m| m.name == name).unwrap());
            ObjectLayout::from_maps(maps).hash()
        };
        assert_ne!(changed(MAP_CONFIG, |m| m.value_size += 8), ours.hash());
        assert_ne!(changed(MAP_CONFIG, |m| m.max_entries = 2), ours.hash());
        assert_eq!(changed(MAP_CONNS, |m| m.max_entries = 1024), ours.hash());
        assert_eq!(
            ours.with_sizes(&MapSizes::for_limits(1024, 64))
                .iter()
                .find(|m| m.name == MAP_JOINS)
                .unwrap()
                .max_entries,
            64
        );
        assert!(matches!(
            ObjectLayout::parse(&[]),
            Err(KernelError::ObjectNotBuilt)
        ));
    }
}
