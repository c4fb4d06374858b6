//! The layout the restart check relies on (`mptcp_loader::kernel::layout::ObjectLayout`, read out of the
//! embedded eBPF object with aya-obj) is what the object defines: checked against the `bpf_map_def`
//! records of its `maps` section read independently with the `object` crate. Every map of the
//! object is either shared (pinned and adopted by the next run) or a per-invocation scratch map;
//! the maps the loader reads as `mptcp-common` structs have those structs' sizes; the counter
//! array has its capacity, not one slot per counter. The programs and maps the loader looks up
//! by name (`mptcp_common::maps` constants) are defined, in their sections. Parses the ELF only:
//! needs no root.

use mptcp_common::{
    counters::{COUNTER_CAPACITY, COUNTER_COUNT},
    maps::{
        Config, ConnState, FlowKey, FlowRef, JoinRateKey, JoinState, Token, TokenRef,
        MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6, MAP_CONFIG, MAP_CONNS, MAP_COUNTERS,
        MAP_DROP_EVENTS, MAP_EVENT_BUDGET, MAP_FLOWS, MAP_IFACE_MODES, MAP_JOINS, MAP_JOIN_RATE,
        MAP_KEY_EVENTS, MAP_TOKENS, PROG_TC_EGRESS, PROG_XDP_INGRESS,
        PROG_XDP_INGRESS_SINGLE_BUFFER,
    },
};
use mptcp_loader::kernel::layout::{ObjectLayout, PER_INVOCATION_MAPS};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// The maps the loader shares with the fast path by name (pinned, adopted by the next run).
const SHARED_MAPS: [&str; 14] = [
    MAP_CONNS,
    MAP_FLOWS,
    MAP_TOKENS,
    MAP_JOINS,
    MAP_COUNTERS,
    MAP_KEY_EVENTS,
    MAP_CONFIG,
    MAP_IFACE_MODES,
    MAP_ALLOW_V4,
    MAP_ALLOW_V6,
    MAP_ALLOW_PORTS,
    MAP_JOIN_RATE,
    MAP_DROP_EVENTS,
    MAP_EVENT_BUDGET,
];

/// `struct bpf_map_def`: type, key_size, value_size, max_entries, map_flags, id, pinning.
const MAP_DEF_LEN: usize = 28;

fn size<T>() -> u32 {
    u32::try_from(size_of::<T>()).unwrap()
}

fn object_built(test: &str) -> bool {
    let stub = mptcp_loader::EBPF_OBJ.is_empty();
    let problems = stub.then(|| {
        "the eBPF object was not built (AYA_BUILD_SKIP=1 or no bpf-linker): the loader holds the \
         empty stub"
            .to_owned()
    });
    mptcp_common::testing::gate(test, problems.as_slice())
}

#[test]
fn the_layout_is_what_the_object_defines() {
    if !object_built("the_layout_is_what_the_object_defines") {
        return;
    }
    let layout = ObjectLayout::embedded().unwrap();
    let elf = object::File::parse(mptcp_loader::EBPF_OBJ).expect("the eBPF object is an ELF file");
    let section = elf.section_by_name("maps").expect("a maps section");
    let data = section.data().unwrap();
    let mut seen = Vec::new();
    for symbol in elf.symbols() {
        if symbol.section_index() != Some(section.index()) || symbol.size() == 0 {
            continue;
        }
        let name = symbol.name().unwrap();
        let at = usize::try_from(symbol.address() - section.address()).unwrap();
        let def = &data[at..at + MAP_DEF_LEN];
        let field = |i: usize| u32::from_le_bytes(def[i * 4..i * 4 + 4].try_into().unwrap());
        if PER_INVOCATION_MAPS.contains(&name) {
            assert!(
                layout.names().all(|n| n != name),
                "{name} is per invocation"
            );
            continue;
        }
        let m = layout
            .maps()
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("map `{name}` is missing from the layout"));
        assert_eq!(
            (field(0), field(1), field(2), field(3)),
            (m.map_type, m.key_size, m.value_size, m.max_entries),
            "map `{name}`: (type, key, value, max_entries)"
        );
        seen.push(name);
    }
    for name in layout.names() {
        assert!(seen.contains(&name), "`{name}` is not in the maps section");
    }
}

#[test]
fn the_maps_the_loader_reads_have_its_sizes() {
    if !object_built("the_maps_the_loader_reads_have_its_sizes") {
        return;
    }
    let layout = ObjectLayout::embedded().unwrap();
    let map = |name: &str| {
        layout
            .maps()
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("the object has no shared map `{name}`"))
    };
    for name in SHARED_MAPS {
        map(name);
    }
    for (name, key, value) in [
        (MAP_CONNS, size::<u64>(), size::<ConnState>()),
        (MAP_FLOWS, size::<FlowKey>(), size::<FlowRef>()),
        (MAP_TOKENS, size::<Token>(), size::<TokenRef>()),
        (MAP_JOINS, size::<FlowKey>(), size::<JoinState>()),
        (MAP_CONFIG, 4, size::<Config>()),
        (MAP_COUNTERS, 4, 8),
        (MAP_IFACE_MODES, 4, 4),
        (MAP_JOIN_RATE, size::<JoinRateKey>(), 8),
    ] {
        let m = map(name);
        assert_eq!((m.key_size, m.value_size), (key, value), "{name}");
    }
    // Room for counters a later build appends, without another layout.
    assert_eq!(map(MAP_COUNTERS).max_entries, COUNTER_CAPACITY);
    const { assert!(COUNTER_COUNT < COUNTER_CAPACITY) };
    assert_eq!(
        map(MAP_KEY_EVENTS).key_size + map(MAP_DROP_EVENTS).key_size,
        0,
        "ring buffers"
    );
}

#[test]
fn program_and_map_names_exist() {
    if !object_built("program_and_map_names_exist") {
        return;
    }
    let elf = object::File::parse(mptcp_loader::EBPF_OBJ).expect("the eBPF object is an ELF file");
    let section_of = |name: &str| {
        let symbol = elf
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol `{name}` in the eBPF object"));
        let index = symbol.section_index().expect("defined symbol");
        elf.section_by_index(index)
            .unwrap()
            .name()
            .unwrap()
            .to_owned()
    };
    // Multi-buffer aware: aya loads it with BPF_F_XDP_HAS_FRAGS.
    assert_eq!(section_of(PROG_XDP_INGRESS), "xdp.frags");
    // Its twin for kernels before 5.18, which reject the frags flag.
    assert_eq!(section_of(PROG_XDP_INGRESS_SINGLE_BUFFER), "xdp");
    assert_eq!(section_of(PROG_TC_EGRESS), "classifier");
    for map in SHARED_MAPS.into_iter().chain(PER_INVOCATION_MAPS) {
        assert_eq!(section_of(map), "maps", "map `{map}`");
    }
}
