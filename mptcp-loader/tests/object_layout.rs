//! The table of shared maps the restart check relies on (`mptcp_loader::layout::shared_maps`)
//! matches what the embedded eBPF object defines: every map of the object is either shared
//! (pinned and adopted by the next run) or a per-invocation scratch map, and each shared map has
//! the type, key size, value size and capacity the table says. Parses the ELF only (the
//! `bpf_map_def` records of the `maps` section): needs no root.

use mptcp_loader::{
    layout::{shared_maps, PER_INVOCATION_MAPS},
    map_sizes::MapSizes,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// `struct bpf_map_def`: type, key_size, value_size, max_entries, map_flags, id, pinning.
const MAP_DEF_LEN: usize = 28;

#[test]
fn shared_maps_match_the_object() {
    let stub = mptcp_loader::EBPF_OBJ.is_empty();
    let problems = stub.then(|| {
        "the eBPF object was not built (AYA_BUILD_SKIP=1 or no bpf-linker): the loader holds the \
         empty stub"
            .to_owned()
    });
    if !mptcp_common::testing::gate("shared_maps_match_the_object", problems.as_slice()) {
        return;
    }
    let elf = object::File::parse(mptcp_loader::EBPF_OBJ).expect("the eBPF object is an ELF file");
    let section = elf.section_by_name("maps").expect("a maps section");
    let data = section.data().unwrap();
    let expected = shared_maps(&MapSizes::default());
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
            continue;
        }
        let m = expected.iter().find(|m| m.name == name).unwrap_or_else(|| {
            panic!(
                "map `{name}` is neither shared nor per-invocation: add it to layout::shared_maps"
            )
        });
        assert_eq!(
            (field(0), field(1), field(2), field(3)),
            (m.map_type, m.key_size, m.value_size, m.max_entries),
            "map `{name}`: (type, key, value, max_entries) differ from layout::shared_maps"
        );
        seen.push(name);
    }
    for m in &expected {
        assert!(seen.contains(&m.name), "`{}` is not in the object", m.name);
    }
}
