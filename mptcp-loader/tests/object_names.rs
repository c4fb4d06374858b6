//! The embedded eBPF object defines the programs and maps the loader looks up by name
//! (`mptcp_common::maps` constants). Parses the ELF only: needs no root.

use mptcp_common::maps::{
    MAP_CONFIG, MAP_CONNS, MAP_COUNTERS, MAP_FLOWS, MAP_FRAME, MAP_JOINS, MAP_KEY_EVENTS,
    MAP_TOKENS, PROG_TC_EGRESS, PROG_XDP_INGRESS, PROG_XDP_INGRESS_SINGLE_BUFFER,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

#[test]
fn program_and_map_names_exist() {
    let stub = mptcp_loader::EBPF_OBJ.is_empty();
    let problems = stub.then(|| {
        "the eBPF object was not built (AYA_BUILD_SKIP=1 or no bpf-linker): the loader holds the \
         empty stub"
            .to_owned()
    });
    if !mptcp_common::testing::gate("program_and_map_names_exist", problems.as_slice()) {
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
    for map in [
        MAP_CONNS,
        MAP_FLOWS,
        MAP_TOKENS,
        MAP_JOINS,
        MAP_COUNTERS,
        MAP_KEY_EVENTS,
        MAP_CONFIG,
        MAP_FRAME,
    ] {
        assert_eq!(section_of(map), "maps", "map `{map}`");
    }
}
