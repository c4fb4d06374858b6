//! The egress program leaves the rest of the interface's tc chain alone: programs attached after
//! the firewall keep seeing the host's traffic.
//!
//! `run` protects one end of a veth pair (198.18.99.0/24, in a network namespace of its own).
//! After it, the test attaches two programs of its own to the same interface's egress: one as a
//! TCX link (behind the firewall's, as `tcx` orders them) and one as a classic clsact
//! direct-action `cls_bpf` filter (`tc filter add ... bpf direct-action`), which runs after
//! every TCX program. Both are the two instructions `r0 = TC_ACT_UNSPEC; exit`, loaded with
//! bpf(2) and counted by the kernel's run statistics. Then the host pings its peer: the
//! firewall and both programs must each see every echo request. A firewall that answered
//! `TC_ACT_OK` (`TCX_PASS`) would end the chain at itself and both counts would stay 0.
//!
//! Needs root, `ip`, `nsenter`, `tc`, `ping` and the built eBPF object; skipped otherwise. The
//! namespaces and the test's pins are removed whatever happens.

mod netlab;

use std::{path::PathBuf, process::Command};

use aya::programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType};
use mptcp_common::maps::PROG_TC_EGRESS;
use netlab::{can_run, load_probe, output_ok, probe_runs as runs, start_run, veth, Netns};

const HOST: &str = "198.18.99.1";
const PEER: &str = "198.18.99.2";
const PINGS: u64 = 10;

/// What each program on the egress path saw of the pings.
#[derive(Debug)]
struct Seen {
    tcx_order: Vec<String>,
    tcx_probe: u64,
    classic_probe: u64,
}

#[test]
fn programs_attached_after_the_firewall_still_see_egress_traffic() {
    let test = "programs_attached_after_the_firewall_still_see_egress_traffic";
    if !can_run(test, &["tc", "ping"]) {
        return;
    }
    let ns = Netns::new("tc");
    let peer = Netns::new("tp");
    veth(&ns, "c0", HOST, &peer, "c1", PEER);
    let mut run = start_run(&ns, &["--iface", "c0", "--mode", "enforce"]);
    let egress_before = ns.counter("egress");

    let pins = netlab::PinGuard(PathBuf::from(format!(
        "/sys/fs/bpf/mptcp-test-chain-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&pins.0).unwrap();
    let tcx_pin = pins.0.join("tcx_probe");
    let classic_pin = pins.0.join("classic_probe");
    load_probe("chain_probe_tcx", &tcx_pin);
    load_probe("chain_probe_cls", &classic_pin);
    // Counted from here on, for as long as the descriptor is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();

    // The classic filter: a clsact qdisc and a direct-action cls_bpf filter running the pinned
    // program (nsenter keeps the host's bpffs; `tc -n` would remount /sys).
    let tc = |args: &[&str]| {
        output_ok(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .arg("tc")
                .args(args),
        )
    };
    tc(&["qdisc", "add", "dev", "c0", "clsact"]);
    tc(&[
        "filter",
        "add",
        "dev",
        "c0",
        "egress",
        "prio",
        "1",
        "handle",
        "1",
        "bpf",
        "direct-action",
        "object-pinned",
        classic_pin.to_str().unwrap(),
    ]);

    // The TCX program: attached last, from a thread inside the namespace (interface names and
    // TCX links resolve there); it stays attached while the thread holds it.
    let ns_name = ns.name().to_owned();
    let seen = ns
        .enter(move || {
            let mut probe = SchedClassifier::from_pin(&tcx_pin).unwrap();
            probe
                .attach_with_options(
                    "c0",
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::last()),
                )
                .unwrap();
            let (_, programs) = SchedClassifier::query_tcx("c0", TcAttachType::Egress).unwrap();
            let tcx_order = programs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                .collect();
            let (tcx_before, classic_before) = (runs(&tcx_pin), runs(&classic_pin));
            output_ok(
                Command::new("ip")
                    .args(["netns", "exec", &ns_name, "ping", "-q", "-c"])
                    .arg(PINGS.to_string())
                    .args(["-i", "0.05", "-W", "2", PEER]),
            );
            Seen {
                tcx_order,
                tcx_probe: runs(&tcx_pin) - tcx_before,
                classic_probe: runs(&classic_pin) - classic_before,
            }
        })
        .unwrap();
    let firewall = ns.counter("egress") - egress_before;
    run.stop(libc::SIGTERM);
    eprintln!(
        "egress seen by: the firewall {firewall}, the TCX program after it {}, the clsact \
         filter {} (TCX order {:?})",
        seen.tcx_probe, seen.classic_probe, seen.tcx_order
    );

    // The kernel keeps 15 bytes of a program name.
    assert_eq!(
        seen.tcx_order,
        [&PROG_TC_EGRESS[..15], "chain_probe_tcx"],
        "the test's TCX program must run after the firewall's"
    );
    assert!(firewall >= PINGS, "the firewall saw {firewall} segments");
    assert!(
        seen.tcx_probe >= PINGS,
        "the TCX program after the firewall saw {} of {PINGS} echo requests: the firewall's \
         verdict ends the TCX chain",
        seen.tcx_probe
    );
    assert!(
        seen.classic_probe >= PINGS,
        "the clsact filter saw {} of {PINGS} echo requests: the firewall's verdict skips the \
         classic tc filters",
        seen.classic_probe
    );
}
