//! The library side of restarting without a gap: a firewall attached through pinned links is
//! released (as `run --keep-attached` does), then a second `Firewall` reopens the pinned maps
//! and adopts the links. With `ProgramSwap::Always` (what an upgrade to another object does) the
//! links stay the same while their programs are replaced atomically; with
//! `ProgramSwap::IfDifferent` and the same object the programs are kept. The interface's XDP
//! program is never absent.
//!
//! Runs in a network namespace of its own (a veth pair in 198.18.97.0/24), entered by one thread
//! with setns(2). Needs root, `ip` and the built eBPF object; skipped otherwise.

mod netlab;

use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf};

use mptcp_common::maps::{ConnState, MAP_CONNS};
use mptcp_loader::{
    firewall::{ProgramSwap, ProgramsOutcome},
    map_sizes::MapSizes,
    pins::PinDir,
    state::pinned_links,
    AttachedMode, Firewall, XdpAttach, EBPF_OBJ,
};
use netlab::{can_run, veth, Netns};

#[test]
fn adopted_links_keep_their_ids_while_their_programs_are_swapped() {
    if !can_run(
        "adopted_links_keep_their_ids_while_their_programs_are_swapped",
        &[],
    ) {
        return;
    }
    let ns = Netns::new("sw");
    let peer = Netns::new("sp");
    veth(&ns, "w0", "198.18.97.1", &peer, "w1", "198.18.97.2");
    let pin_path = PathBuf::from(format!(
        "/sys/fs/bpf/mptcp-fw/test-swap-{}",
        std::process::id()
    ));
    let netns_path = format!("/run/netns/{}", ns.name);
    let ns_name = ns.name.clone();
    let dir_for_thread = pin_path.clone();
    let outcome = std::thread::spawn(move || {
        let netns = File::open(&netns_path).unwrap();
        // SAFETY: setns on a namespace fd we own; it changes this thread only.
        assert_eq!(
            unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let xdp_id = || {
            let out = netlab::sh(&["ip", "-n", &ns_name, "-d", "link", "show", "dev", "w0"]);
            netlab::xdp_prog_id_in(&out)
        };
        let sizes = MapSizes::for_limits(64, 16);
        let mut dir = PinDir::claim(&dir_for_thread).unwrap();

        let mut first = Firewall::load_pinned(EBPF_OBJ, &sizes, dir.path()).unwrap();
        let attached = first.attach("w0", XdpAttach::Skb).unwrap();
        assert_eq!(attached.xdp, AttachedMode::Skb);
        assert_eq!(xdp_id(), Some(attached.xdp_link.prog));
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
        assert_eq!(released[0].iface, "w0");
        drop(first);
        assert_eq!(
            xdp_id(),
            Some(attached.xdp_link.prog),
            "released, still attached"
        );

        // Another object (here: the same one, swapped anyway): same links, new programs.
        let mut second = Firewall::load_pinned(EBPF_OBJ, &sizes, dir.path()).unwrap();
        let links = pinned_links(dir.path()).unwrap();
        assert_eq!(links.len(), 1);
        let swapped = second
            .adopt("w0", &links[0], AttachedMode::Skb, ProgramSwap::Always)
            .unwrap();
        assert_eq!(swapped.xdp_link.link, attached.xdp_link.link);
        assert_eq!(swapped.tc_link.link, attached.tc_link.link);
        assert_ne!(swapped.xdp_link.prog, attached.xdp_link.prog);
        assert_ne!(swapped.tc_link.prog, attached.tc_link.prog);
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
        let mut third = Firewall::load_pinned(EBPF_OBJ, &sizes, dir.path()).unwrap();
        let kept = third
            .adopt("w0", &links[0], AttachedMode::Skb, ProgramSwap::IfDifferent)
            .unwrap();
        assert_eq!(kept.xdp_link, swapped.xdp_link);
        assert_eq!(kept.tc_link, swapped.tc_link);
        assert_eq!(kept.xdp_programs, ProgramsOutcome::Kept);
        // An error path drops a firewall: adopted links stay attached as found.
        drop(third);
        assert_eq!(xdp_id(), Some(swapped.xdp_link.prog));

        let mut last = Firewall::load_pinned(EBPF_OBJ, &sizes, dir.path()).unwrap();
        last.adopt("w0", &links[0], AttachedMode::Skb, ProgramSwap::IfDifferent)
            .unwrap();
        let detached = last.detach_all().unwrap();
        assert_eq!(detached[0].iface, "w0");
        drop(last);
        let after = xdp_id();
        dir.clear().unwrap();
        dir.remove().unwrap();
        (attached.xdp_link, swapped.xdp_link, after)
    })
    .join();
    let _ = std::fs::remove_dir_all(&pin_path);
    let (first, swapped, after) = outcome.unwrap();
    eprintln!(
        "XDP link {} ran prog {} then prog {}",
        first.link, first.prog, swapped.prog
    );
    assert_eq!(after, None, "detached");
}
