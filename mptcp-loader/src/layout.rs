//! The layout of the state a run leaves pinned for the next one, and the check a new run makes
//! before it adopts that state.
//!
//! Restarting without a gap means the new run's programs use the very maps the old run's
//! programs use (the connections, their keys and tokens, the counters, the configuration, the
//! policy), reopened from their pins. That is only sound if both runs agree on every map's type,
//! key and value layout and size. The loader therefore pins, next to the maps, a one-entry array
//! ([`crate::state::PIN_LAYOUT`]) holding [`layout_hash`]: a hash of [`LAYOUT_VERSION`], of every
//! shared map's name, type and key/value sizes, and of the sizes of the `mptcp-common` structs
//! the maps hold. A new run compares that hash and each pinned map's kernel-reported type,
//! key/value sizes and `max_entries` with its own ([`check_pinned_layout`]), and refuses, with a
//! message naming the difference, instead of reusing maps it would misread.

use mptcp_common::{
    counters::COUNTER_COUNT,
    maps::{
        AddAddrTagKey, Config, ConnState, DropEvent, FlowKey, FlowRef, JoinRateKey, JoinState,
        KeyEvent, Token, TokenRef, DROP_EVENTS_BYTES, KEY_EVENTS_BYTES, MAP_ADD_ADDR_TAGS,
        MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_CONNS, MAP_COUNTERS,
        MAP_CRYPTO_BUDGET, MAP_DROP_EVENTS, MAP_EVENT_BUDGET, MAP_FLOWS, MAP_HMAC_JOBS,
        MAP_IFACE_MODES, MAP_JOINS, MAP_JOIN_RATE, MAP_KEY_EVENTS, MAP_REFERENCE_COUNT,
        MAP_SCRATCH, MAP_TOKENS, MAP_WALK, MAX_ADD_ADDR_TAGS, MAX_ALLOW_PORTS, MAX_ALLOW_PREFIXES,
        MAX_IFACE_MODES, MAX_JOIN_RATE_SOURCES,
    },
};

use crate::{
    errors::LoaderError,
    map_sizes::MapSizes,
    state::{IfaceRecord, RunState},
};

/// Bump when the meaning of a shared map's bytes changes without its sizes changing (a field
/// reordered, a flag bit redefined): runs of different versions then refuse each other's pins.
pub const LAYOUT_VERSION: u32 = 1;

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
pub const PER_INVOCATION_MAPS: [&str; 4] =
    [MAP_SCRATCH, MAP_WALK, MAP_HMAC_JOBS, MAP_REFERENCE_COUNT];

/// What the kernel reports about a map, or what we expect of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    /// Map name (a `mptcp_common::maps::MAP_*` constant).
    pub name: &'static str,
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes (0 for ring buffers).
    pub key_size: u32,
    /// Value size in bytes (0 for ring buffers).
    pub value_size: u32,
    /// Capacity (bytes for ring buffers).
    pub max_entries: u32,
}

/// Whether a map's capacity is chosen per run (`--max-conns`, `--max-joins`) rather than
/// compiled in.
fn is_sized(name: &str) -> bool {
    [MAP_CONNS, MAP_FLOWS, MAP_TOKENS, MAP_JOINS].contains(&name)
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "map keys and values are small"
)]
const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// Every map the programs of successive runs share through pins, as the eBPF object defines it
/// (with the sizes of this run). `tests/object_layout.rs` checks this table against the object.
#[must_use]
pub fn shared_maps(sizes: &MapSizes) -> Vec<MapLayout> {
    let map = |name, map_type, key_size, value_size, max_entries| MapLayout {
        name,
        map_type,
        key_size,
        value_size,
        max_entries,
    };
    vec![
        map(
            MAP_CONNS,
            BPF_MAP_TYPE_LRU_HASH,
            size::<u64>(),
            size::<ConnState>(),
            sizes.conns,
        ),
        map(
            MAP_FLOWS,
            BPF_MAP_TYPE_LRU_HASH,
            size::<FlowKey>(),
            size::<FlowRef>(),
            sizes.flows,
        ),
        map(
            MAP_TOKENS,
            BPF_MAP_TYPE_LRU_HASH,
            size::<Token>(),
            size::<TokenRef>(),
            sizes.tokens,
        ),
        map(
            MAP_JOINS,
            BPF_MAP_TYPE_LRU_HASH,
            size::<FlowKey>(),
            size::<JoinState>(),
            sizes.joins,
        ),
        map(MAP_COUNTERS, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, COUNTER_COUNT),
        map(MAP_KEY_EVENTS, BPF_MAP_TYPE_RINGBUF, 0, 0, KEY_EVENTS_BYTES),
        map(MAP_CONFIG, BPF_MAP_TYPE_ARRAY, 4, size::<Config>(), 1),
        map(MAP_IFACE_MODES, BPF_MAP_TYPE_HASH, 4, 4, MAX_IFACE_MODES),
        // LPM trie keys are `prefix_len: u32` followed by the data.
        map(
            MAP_ALLOW_V4,
            BPF_MAP_TYPE_LPM_TRIE,
            4 + 4,
            1,
            MAX_ALLOW_PREFIXES,
        ),
        map(
            MAP_ALLOW_V6,
            BPF_MAP_TYPE_LPM_TRIE,
            4 + 16,
            1,
            MAX_ALLOW_PREFIXES,
        ),
        map(MAP_ALLOW_PORTS, BPF_MAP_TYPE_HASH, 2, 1, MAX_ALLOW_PORTS),
        map(
            MAP_JOIN_RATE,
            BPF_MAP_TYPE_LRU_HASH,
            size::<JoinRateKey>(),
            8,
            MAX_JOIN_RATE_SOURCES,
        ),
        map(
            MAP_DROP_EVENTS,
            BPF_MAP_TYPE_RINGBUF,
            0,
            0,
            DROP_EVENTS_BYTES,
        ),
        map(MAP_EVENT_BUDGET, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1),
        map(MAP_CRYPTO_BUDGET, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1),
        map(
            MAP_ADD_ADDR_TAGS,
            BPF_MAP_TYPE_LRU_HASH,
            size::<AddAddrTagKey>(),
            8,
            MAX_ADD_ADDR_TAGS,
        ),
    ]
}

/// Names of [`shared_maps`], in order.
#[must_use]
pub fn shared_map_names() -> Vec<&'static str> {
    shared_maps(&MapSizes::default())
        .iter()
        .map(|m| m.name)
        .collect()
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

/// The layout hash of this build (see the module docs). Per-run capacities are left out: they
/// are compared one by one, with a message of their own.
#[must_use]
pub fn layout_hash() -> u64 {
    let mut h = Fnv::new();
    h.u32(LAYOUT_VERSION);
    for m in shared_maps(&MapSizes::default()) {
        h.bytes(m.name.as_bytes()).bytes(&[0]);
        h.u32(m.map_type).u32(m.key_size).u32(m.value_size);
        h.u32(if is_sized(m.name) { 0 } else { m.max_entries });
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

/// Checks pinned state against this build before it is adopted: the pinned layout hash (`None`
/// when there is no layout record) and the kernel's view of every shared map that is pinned
/// (`None`: not pinned; the new run creates it).
///
/// # Errors
/// [`LoaderError::IncompatiblePins`] when the layout differs (another version built it);
/// [`LoaderError::PinnedSizesDiffer`] when only a per-run capacity differs.
pub fn check_pinned_layout(
    pin_dir: &std::path::Path,
    pinned_hash: Option<u64>,
    pinned_maps: &[(&'static str, Option<MapLayout>)],
    sizes: &MapSizes,
) -> Result<(), LoaderError> {
    let incompatible = |detail: String| LoaderError::IncompatiblePins {
        pin_dir: pin_dir.to_path_buf(),
        detail,
    };
    let ours = layout_hash();
    match pinned_hash {
        None => return Err(incompatible("no layout record".to_owned())),
        Some(hash) if hash != ours => {
            return Err(incompatible(format!(
                "layout {hash:#018x}, this loader's is {ours:#018x}"
            )))
        }
        Some(_) => {}
    }
    for expected in shared_maps(sizes) {
        let Some((_, Some(found))) = pinned_maps.iter().find(|(n, _)| *n == expected.name) else {
            continue;
        };
        let shape = |m: &MapLayout| (m.map_type, m.key_size, m.value_size);
        if shape(found) != shape(&expected)
            || (!is_sized(expected.name) && found.max_entries != expected.max_entries)
        {
            return Err(incompatible(format!(
                "{} is {}, this loader expects {}",
                expected.name,
                describe(found),
                describe(&expected)
            )));
        }
        if found.max_entries != expected.max_entries {
            return Err(LoaderError::PinnedSizesDiffer {
                pin_dir: pin_dir.to_path_buf(),
                map: expected.name,
                pinned: found.max_entries,
                asked: expected.max_entries,
            });
        }
    }
    Ok(())
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

    use super::*;

    fn pinned(sizes: &MapSizes) -> Vec<(&'static str, Option<MapLayout>)> {
        shared_maps(sizes)
            .into_iter()
            .map(|m| (m.name, Some(m)))
            .collect()
    }

    const DIR: &str = "/sys/fs/bpf/mptcp-fw/netns-1";

    #[test]
    fn the_same_build_adopts_its_own_pins() {
        let sizes = MapSizes::default();
        check_pinned_layout(Path::new(DIR), Some(layout_hash()), &pinned(&sizes), &sizes).unwrap();
        // Maps missing from the pins are created by the new run.
        let mut partial = pinned(&sizes);
        partial[3].1 = None;
        partial.truncate(5);
        check_pinned_layout(Path::new(DIR), Some(layout_hash()), &partial, &sizes).unwrap();
    }

    #[test]
    fn another_layout_is_refused_with_the_fix() {
        let sizes = MapSizes::default();
        for hash in [None, Some(layout_hash() ^ 1)] {
            let err =
                check_pinned_layout(Path::new(DIR), hash, &pinned(&sizes), &sizes).unwrap_err();
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
        let mut odd = pinned(&sizes);
        odd[1].1.as_mut().unwrap().value_size = 24;
        let msg = check_pinned_layout(Path::new(DIR), Some(layout_hash()), &odd, &sizes)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("MPTCP_FLOWS is map type 9 with 40-byte keys, 24-byte values"),
            "{msg}"
        );
        let mut counters = pinned(&sizes);
        counters[4].1.as_mut().unwrap().max_entries += 1;
        assert!(matches!(
            check_pinned_layout(Path::new(DIR), Some(layout_hash()), &counters, &sizes),
            Err(LoaderError::IncompatiblePins { .. })
        ));
    }

    #[test]
    fn other_capacities_name_the_option() {
        let pinned_sizes = MapSizes::for_limits(1024, 64);
        let err = check_pinned_layout(
            Path::new(DIR),
            Some(layout_hash()),
            &pinned(&pinned_sizes),
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
        assert_eq!(layout_hash(), layout_hash());
        assert_ne!(layout_hash(), 0);
        let names = shared_map_names();
        for scratch in PER_INVOCATION_MAPS {
            assert!(!names.contains(&scratch), "{scratch} is per invocation");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for pinned_for_stats in mptcp_common::maps::PINNED_MAPS {
            assert!(names.contains(&pinned_for_stats), "{pinned_for_stats}");
        }
    }
}
