//! The library side of restarting without a gap: a firewall attached through pinned links is
//! released (as `run --keep-attached` does), then a second `Firewall` reopens the pinned maps
//! and adopts the links. With `ProgramSwap::Always` (what an upgrade to another object does) the
//! links stay the same while their programs are replaced atomically; with
//! `ProgramSwap::IfDifferent` and the same object the programs are kept. The interface's XDP
//! program is never absent.
//!
//! The same with the egress program as a clsact filter (`EgressAttach::Clsact`, what `run` does
//! on kernels without TCX): the filter stays at its priority and handle while its program is
//! replaced in place, and the firewall's detach removes it.
//!
//! Runs in a network namespace of its own (a veth pair in 198.18.97.0/24), entered by one thread
//! with setns(2) (`Netns::enter`). Needs root, `ip` and the built eBPF object; skipped otherwise.

mod netlab;

use std::path::PathBuf;

use mptcp_common::maps::{ConnState, MAP_CONNS, PROG_TC_EGRESS};
use mptcp_loader::{
    kernel::firewall::{
        EgressAttach, EgressIds, ProgramSwap, ProgramsOutcome, EGRESS_FILTER_HANDLE,
        EGRESS_FILTER_PRIORITY,
    },
    kernel::map_sizes::MapSizes,
    kernel::netlink::egress_bpf_filters,
    kernel::pins::PinDir,
    kernel::state::pinned_links,
    AttachedMode, Firewall, XdpAttach, EBPF_OBJ,
};
use netlab::{can_run, veth, Netns};

/// The program our clsact filter runs on `ifindex`, checking that it is the only
/// `mptcp_tc_egress` filter and sits at its priority and handle.
fn clsact_prog(ifindex: u32) -> Option<u32> {
    let ours: Vec<_> = egress_bpf_filters(ifindex)
        .unwrap()
        .into_iter()
        .filter(|f| f.name == PROG_TC_EGRESS)
        .collect();
    assert!(ours.len() <= 1, "{ours:?}");
    ours.first().map(|f| {
        assert_eq!(
            (f.priority, f.handle),
            (EGRESS_FILTER_PRIORITY, EGRESS_FILTER_HANDLE)
        );
        f.prog_id
    })
}

/// The egress ids of both kinds, checked against the kernel: a TCX link's (link, prog), or
/// (0, prog) for the clsact filter, whose program the interface's filter must run.
fn egress(ids: EgressIds, ifindex: u32) -> (u32, u32) {
    match ids {
        EgressIds::Tcx(link) => (link.link, link.prog),
        EgressIds::Clsact { prog } => {
            assert_eq!(clsact_prog(ifindex), Some(prog));
            (0, prog)
        }
    }
}

fn swap(test: &str, tag: &str, iface: &str, addrs: (&str, &str), how: EgressAttach) {
    if !can_run(test, &[]) {
        return;
    }
    let ns = Netns::new(tag);
    let peer = Netns::new(&format!("{tag}p"));
    veth(&ns, iface, addrs.0, &peer, &format!("{iface}p"), addrs.1);
    let pin_path = PathBuf::from(format!(
        "/sys/fs/bpf/mptcp-fw/test-swap-{tag}-{}",
        std::process::id()
    ));
    let ns_name = ns.name().to_owned();
    let dir_for_thread = pin_path.clone();
    let iface = iface.to_owned();
    // On a thread inside the namespace; a panic there is caught so the pins are removed first.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.enter(move || {
            let ifindex = mptcp_loader::kernel::preflight::interface_index(&iface).unwrap();
            let xdp_id = || {
                let out = netlab::sh(&["ip", "-n", &ns_name, "-d", "link", "show", "dev", &iface]);
                netlab::xdp_prog_id_in(&out)
            };
            let sizes = MapSizes::for_limits(64, 16);
            let mut dir = PinDir::claim(&dir_for_thread).unwrap();
            let load = || {
                let mut firewall = Firewall::load_pinned(EBPF_OBJ, &sizes, dir.path()).unwrap();
                firewall.set_egress_attach(how);
                firewall
            };

            let mut first = load();
            let attached = first.attach(&iface, XdpAttach::Skb).unwrap();
            assert_eq!(attached.xdp, AttachedMode::Skb);
            assert_eq!(xdp_id(), Some(attached.xdp_link.prog));
            let first_egress = egress(attached.egress, ifindex);
            // State the next firewall must find: a connection in the pinned map.
            let state = ConnState {
                key_a: [7; 8],
                key_b: [8; 8],
                ..ConnState::default()
            };
            let mut conns: aya::maps::HashMap<_, u64, ConnState> =
                aya::maps::HashMap::try_from(first.ebpf_mut().map_mut(MAP_CONNS).unwrap()).unwrap();
            conns
                .insert(ConnState::id_of(&state.key_a), state, 0)
                .unwrap();
            let released = first.release_all();
            assert_eq!(released[0].iface, iface);
            drop(first);
            assert_eq!(
                xdp_id(),
                Some(attached.xdp_link.prog),
                "released, still attached"
            );
            assert_eq!(egress(attached.egress, ifindex), first_egress);

            // Another object (here: the same one, swapped anyway): same links, new programs.
            let mut second = load();
            let links = pinned_links(dir.path()).unwrap();
            assert_eq!(links.len(), 1);
            let swapped = second
                .adopt(&iface, &links[0], AttachedMode::Skb, ProgramSwap::Always)
                .unwrap();
            let swapped_egress = egress(swapped.egress, ifindex);
            assert_eq!(swapped.xdp_link.link, attached.xdp_link.link);
            assert_eq!(swapped_egress.0, first_egress.0, "the same TCX link");
            assert_ne!(swapped.xdp_link.prog, attached.xdp_link.prog);
            assert_ne!(swapped_egress.1, first_egress.1, "a new egress program");
            assert_eq!(
                (swapped.xdp_programs, swapped.tc_programs),
                (ProgramsOutcome::Replaced, ProgramsOutcome::Replaced)
            );
            assert_eq!(xdp_id(), Some(swapped.xdp_link.prog));
            let conns: aya::maps::HashMap<_, u64, ConnState> =
                aya::maps::HashMap::try_from(second.ebpf().map(MAP_CONNS).unwrap()).unwrap();
            assert_eq!(
                conns.get(&ConnState::id_of(&[7; 8]), 0).unwrap().key_b,
                [8; 8]
            );
            second.release_all();
            drop(second);

            // The same object again, swapping only if different: the programs are kept.
            let mut third = load();
            let kept = third
                .adopt(
                    &iface,
                    &links[0],
                    AttachedMode::Skb,
                    ProgramSwap::IfDifferent,
                )
                .unwrap();
            assert_eq!(kept.xdp_link, swapped.xdp_link);
            assert_eq!(kept.egress, swapped.egress);
            assert_eq!(
                (kept.xdp_programs, kept.tc_programs),
                (ProgramsOutcome::Kept, ProgramsOutcome::Kept)
            );
            // An error path drops a firewall: adopted links stay attached as found.
            drop(third);
            assert_eq!(xdp_id(), Some(swapped.xdp_link.prog));
            assert_eq!(egress(swapped.egress, ifindex), swapped_egress);

            let mut last = load();
            last.adopt(
                &iface,
                &links[0],
                AttachedMode::Skb,
                ProgramSwap::IfDifferent,
            )
            .unwrap();
            let detached = last.detach_all().unwrap();
            assert_eq!(detached[0].iface, iface);
            drop(last);
            let after = (xdp_id(), clsact_prog(ifindex));
            dir.clear().unwrap();
            dir.remove().unwrap();
            (
                attached.xdp_link,
                swapped.xdp_link,
                first_egress,
                swapped_egress,
                after,
            )
        })
        .unwrap()
    }));
    let _ = std::fs::remove_dir_all(&pin_path);
    let (first, swapped, first_egress, swapped_egress, after) = outcome.unwrap();
    eprintln!(
        "XDP link {} ran prog {} then prog {}; egress {how:?} ran prog {} then prog {}",
        first.link, first.prog, swapped.prog, first_egress.1, swapped_egress.1
    );
    assert_eq!(after, (None, None), "detached");
}

#[test]
fn adopted_links_keep_their_ids_while_their_programs_are_swapped() {
    swap(
        "adopted_links_keep_their_ids_while_their_programs_are_swapped",
        "sw",
        "w0",
        ("198.18.97.1", "198.18.97.2"),
        EgressAttach::Tcx,
    );
}

#[test]
fn an_adopted_clsact_filter_keeps_its_place_while_its_program_is_swapped() {
    swap(
        "an_adopted_clsact_filter_keeps_its_place_while_its_program_is_swapped",
        "sc",
        "x0",
        ("198.18.97.5", "198.18.97.6"),
        EgressAttach::Clsact,
    );
}
