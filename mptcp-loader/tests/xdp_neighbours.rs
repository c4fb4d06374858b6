//! What `run` says when an interface's XDP hook is taken by a program that is not the
//! firewall's: which program (name, id, mode; for libxdp's dispatcher, the programs it runs) and
//! what to run about it. The neighbour is `xdp-filter` (xdp-tools), loaded the way an operator
//! would; on a kernel that refuses `freplace` programs (this project's 6.18 sandbox) libxdp
//! attaches it alone, without its dispatcher, and the error says nothing can run beside it.
//! The firewall must leave the neighbour attached, in both `--xdp-chain` modes.
//!
//! Needs root, `ip`, `nsenter`, `xdp-filter` (Debian's `xdp-tools`) and the built eBPF object;
//! skipped otherwise. The namespace and xdp-filter's pins are removed whatever happens.

mod netlab;

use std::process::Command;

use netlab::{can_run, output_ok, Netns};

/// Unloads xdp-filter from the interface (and with it xdp-filter's pins) on drop.
struct XdpFilter<'a> {
    ns: &'a Netns,
    iface: String,
}

impl XdpFilter<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns.name()))
            .arg("--")
            .arg("xdp-filter")
            .args(args);
        cmd
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        let _ = self.command(&["unload", &self.iface]).output();
    }
}

#[test]
fn a_neighbour_on_the_xdp_hook_is_named_with_the_fix() {
    let test = "a_neighbour_on_the_xdp_hook_is_named_with_the_fix";
    if !can_run(test, &["xdp-filter"]) {
        return;
    }
    let ns = Netns::new("xn");
    // xdp-filter pins per interface name under the host's /sys/fs/bpf/xdp-filter: a name of
    // this process's own.
    let iface = format!("xf{}", std::process::id() % 100_000);
    ns.ip(&[
        "link", "add", &iface, "type", "veth", "peer", "name", "xfpeer",
    ]);
    ns.ip(&["link", "set", &iface, "up"]);
    ns.ip(&["link", "set", "xfpeer", "up"]);
    let filter = XdpFilter {
        ns: &ns,
        iface: iface.clone(),
    };
    output_ok(&mut filter.command(&["load", "--mode", "skb", &iface]));
    let before = ns.xdp_prog_id(&iface).expect("xdp-filter attached");

    let error = ns.loader_error(&["run", "--iface", &iface, "--mode", "enforce"]);
    // Either the program itself (libxdp without its dispatcher) or libxdp's dispatcher
    // running it, by name and id, and the command that removes it.
    assert!(error.contains("xdpfilt_alw_all"), "{error}");
    assert!(error.contains(&format!("id {before}")), "{error}");
    assert!(error.contains("skb mode"), "{error}");
    assert!(
        error.contains(&format!("`xdp-loader unload {iface} --all`")),
        "{error}"
    );
    if !error.contains("dispatcher") {
        assert!(
            error.contains("does not speak libxdp's multi-program protocol"),
            "{error}"
        );
    }
    assert_eq!(
        ns.xdp_prog_id(&iface),
        Some(before),
        "the neighbour was left alone"
    );

    // Multi-program mode cannot join a program that is not libxdp's dispatcher either, and
    // says so before loading anything.
    if error.contains("dispatcher") {
        // A kernel where libxdp chains: the firewall would join (the VM tests cover that).
        return;
    }
    let chained = ns.loader_error(&[
        "run",
        "--iface",
        &iface,
        "--mode",
        "enforce",
        "--xdp-chain",
        "multiprog",
    ]);
    assert_eq!(chained, error, "the same words in both modes");
    assert_eq!(ns.xdp_prog_id(&iface), Some(before));
}

/// An interface an exclusive-mode run left attached (`--keep-attached`) is not moved into a
/// dispatcher by a `--xdp-chain multiprog` run: that would need a gap. The run says so and
/// leaves the firewall attached; `detach` then clears it.
#[test]
fn multiprog_does_not_take_over_an_exclusive_firewall() {
    let test = "multiprog_does_not_take_over_an_exclusive_firewall";
    if !can_run(test, &[]) {
        return;
    }
    let ns = Netns::new("xm");
    ns.ip(&["link", "add", "xm0", "type", "veth", "peer", "name", "xm1"]);
    ns.ip(&["link", "set", "xm0", "up"]);
    ns.ip(&["link", "set", "xm1", "up"]);
    let mut run = netlab::start_run(&ns, &["--iface", "xm0", "--keep-attached"]);
    run.stop(libc::SIGTERM);
    let kept = ns.xdp_prog_id("xm0").expect("kept attached");

    let error = ns.loader_error(&["run", "--iface", "xm0", "--xdp-chain", "multiprog"]);
    assert_eq!(
        error,
        "error: xm0 runs the firewall alone through an XDP link pinned by an earlier run: it \
         cannot join libxdp's dispatcher without a gap; run without `--xdp-chain multiprog`, or \
         `mptcp-loader detach --iface xm0` first"
    );
    assert_eq!(ns.xdp_prog_id("xm0"), Some(kept), "still protected");
    ns.loader_ok(&["detach"]);
    assert_eq!(ns.xdp_prog_id("xm0"), None);
}
