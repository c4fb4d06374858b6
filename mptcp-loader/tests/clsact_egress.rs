//! `run` with the egress program as a clsact filter, as on kernels without TCX (Linux < 6.6),
//! forced here with `--egress-attach clsact` (this kernel has TCX).
//!
//! `run` protects one end of a veth pair (198.18.102.0/24, namespaces of its own). Its egress
//! program must show up as a direct-action `cls_bpf` filter at priority 1, handle 0x4d46, see the
//! host's traffic and leave the classic filters after it running (a two-instruction filter of
//! the test's own at priority 2 sees every echo request too). Killed with SIGKILL, the run
//! leaves the filter in place and it keeps counting; the next `run` finds it and keeps it (same
//! program) without a gap; SIGTERM removes it. With `--keep-attached` it stays, and `detach`
//! removes it. (That the next run replaces the filter's program in place when the object
//! differs is `link_swap.rs`.)
//!
//! Needs root, `ip`, `nsenter`, `tc`, `ping` and the built eBPF object; skipped otherwise. The
//! namespaces and the test's pins are removed whatever happens.

mod netlab;

use std::{path::PathBuf, process::Command};

use mptcp_common::maps::PROG_TC_EGRESS;
use netlab::{can_run, load_probe, output_ok, probe_runs, start_run, veth, Netns, PinGuard};

const HOST: &str = "198.18.102.1";
const PEER: &str = "198.18.102.2";

/// `tc ARGS` in `ns` (nsenter keeps the host's bpffs; `tc -n` would remount /sys).
fn tc(ns: &Netns, args: &[&str]) -> String {
    output_ok(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg("tc")
            .args(args),
    )
}

/// The program id of the firewall's filter in `status --json`, if there is one.
fn filter_prog(ns: &Netns) -> Option<u64> {
    let status = ns.loader_json(&["status"]);
    let filter = &status["interfaces"][0]["tc_filter"];
    if filter.is_null() {
        return None;
    }
    assert_eq!(filter["priority"], 1, "{status}");
    assert_eq!(filter["handle"], 0x4d46, "{status}");
    assert!(status["interfaces"][0]["tc_egress"].is_null(), "{status}");
    filter["prog_id"].as_u64()
}

#[test]
fn a_clsact_egress_filter_survives_a_killed_run_and_is_adopted() {
    let test = "a_clsact_egress_filter_survives_a_killed_run_and_is_adopted";
    if !can_run(test, &["tc", "ping"]) {
        return;
    }
    let ns = Netns::new("ka");
    let peer = Netns::new("kp");
    veth(&ns, "k0", HOST, &peer, "k1", PEER);
    let pins = PinGuard(PathBuf::from(format!(
        "/sys/fs/bpf/mptcp-test-clsact-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&pins.0).unwrap();
    let probe = pins.0.join("probe");
    load_probe("clsact_probe", &probe);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let args = [
        "--iface",
        "k0",
        "--egress-attach",
        "clsact",
        "--mode",
        "enforce",
    ];

    let mut first = start_run(&ns, &args);
    let log = first.log();
    assert!(
        !log.contains("TCX egress")
            && log.contains("clsact egress filter (prio 1, handle 0x4d46, prog "),
        "{log}"
    );
    let shown = tc(&ns, &["filter", "show", "dev", "k0", "egress"]);
    assert!(
        shown.contains("pref 1 bpf")
            && shown.contains("handle 0x4d46")
            && shown.contains(PROG_TC_EGRESS)
            && shown.contains("direct-action"),
        "{shown}"
    );
    // A classic filter after the firewall's.
    tc(
        &ns,
        &[
            "filter",
            "add",
            "dev",
            "k0",
            "egress",
            "prio",
            "2",
            "handle",
            "1",
            "bpf",
            "direct-action",
            "object-pinned",
            probe.to_str().unwrap(),
        ],
    );
    let prog = filter_prog(&ns).expect("the filter in status");
    let (egress, probed) = (ns.counter("egress"), probe_runs(&probe));
    ns.ping(PEER, 10);
    let seen = (ns.counter("egress") - egress, probe_runs(&probe) - probed);
    assert!(
        seen.0 >= 10 && seen.1 >= 10,
        "firewall, filter after it: {seen:?}"
    );

    // Killed: the filter stays and keeps working, with no loader.
    let xdp = ns.xdp_prog_id("k0");
    first.signal(libc::SIGKILL);
    assert_eq!(first.wait_exit(std::time::Duration::from_secs(10)), None);
    assert_eq!(filter_prog(&ns), Some(prog), "still attached after SIGKILL");
    let egress = ns.counter("egress");
    ns.ping(PEER, 5);
    assert!(
        ns.counter("egress") >= egress + 5,
        "counts without a loader"
    );

    // The next run adopts it: same program, no gap.
    let mut second = start_run(&ns, &args);
    let adopted = "attached to k0 without a gap, through the links pinned by an earlier run";
    assert!(second.log().contains(adopted), "{}", second.log());
    assert!(
        second.log().contains(&format!(
            "clsact egress filter (prio 1, handle 0x4d46, prog {prog}, program kept)"
        )),
        "{}",
        second.log()
    );
    assert_eq!(filter_prog(&ns), Some(prog));
    assert_eq!(ns.xdp_prog_id("k0"), xdp);
    second.stop(libc::SIGTERM);
    assert_eq!(filter_prog_after_exit(&ns), None, "SIGTERM removes it");

    // --keep-attached leaves it; detach removes it.
    let mut third = start_run(&ns, &[&args[..], &["--keep-attached"]].concat());
    third.stop(libc::SIGTERM);
    let kept = tc(&ns, &["filter", "show", "dev", "k0", "egress"]);
    assert!(kept.contains(PROG_TC_EGRESS), "{kept}");
    let detached = ns.loader_ok(&["detach"]);
    assert!(
        detached.contains("detached from k0 (XDP ingress: link ")
            && detached.contains("clsact egress filter: removed"),
        "{detached}"
    );
    let after = tc(&ns, &["filter", "show", "dev", "k0", "egress"]);
    assert!(!after.contains(PROG_TC_EGRESS), "{after}");
    assert!(
        after.contains("clsact_probe"),
        "the other filter stays: {after}"
    );
    assert_eq!(ns.xdp_prog_id("k0"), None);
    eprintln!("clsact filter ran prog {prog} through a SIGKILL and an adopting run");
}

/// Whether `tc` still lists the firewall's filter (no pins left for `status` to read).
fn filter_prog_after_exit(ns: &Netns) -> Option<()> {
    tc(ns, &["filter", "show", "dev", "k0", "egress"])
        .contains(PROG_TC_EGRESS)
        .then_some(())
}
