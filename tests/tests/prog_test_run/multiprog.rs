//! The firewall as a component of libxdp's multi-program dispatcher (`mptcp-loader`'s
//! `multiprog` module): the dispatcher of Debian's `libxdp1` loaded through aya with the
//! configuration libxdp reads back, and the real ingress program loaded as the `freplace`
//! component of its first slot, run through the dispatcher by BPF_PROG_TEST_RUN.
//!
//! Some kernels refuse `BPF_PROG_TYPE_EXT` outright (this project's 6.18 sandbox answers EPERM
//! before verifying); there the component test checks that the loader says so and stops.
//! `cargo xtask vm-test` sets `MPTCP_TESTS_REQUIRE_FREPLACE=1`: Debian's kernels must accept it.

use aya::programs::{TestRun as _, TestRunOptions};
use mptcp_common::maps::{Config, MODE_ENFORCE, PROG_XDP_INGRESS};
use mptcp_loader::{
    multiprog::{self, Dispatcher, DispatcherConfig, Slot, DISPATCHER_OBJECT, FIREWALL_SLOT},
    LoaderError,
};

use super::{add_addr_from, mpc_ab, Frame, Validator, XDP_DROP, XDP_PASS};

fn dispatcher(slots: &[Slot]) -> Dispatcher {
    Dispatcher::load_file(DISPATCHER_OBJECT.as_ref(), slots)
        .unwrap_or_else(|e| panic!("{e} (is Debian's libxdp1 installed? `cargo xtask setup`)"))
}

fn run(d: &Dispatcher, frame: &[u8]) -> u32 {
    let mut opts = TestRunOptions::default();
    opts.data_in = Some(frame);
    d.program()
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN of the dispatcher")
        .return_value
}

#[test]
fn dispatcher_holds_the_configuration_libxdp_reads() {
    let other = Slot {
        run_priority: 50,
        chain_call_actions: 1 << XDP_PASS,
        frags: false,
    };
    let d = dispatcher(&[FIREWALL_SLOT, other]);
    let config = d.kernel_config().expect("dispatcher .rodata");
    assert_eq!(config, DispatcherConfig::new(&[FIREWALL_SLOT, other]));
    assert_eq!(
        (
            config.magic,
            config.dispatcher_version,
            config.num_progs_enabled
        ),
        (236, 2, 2)
    );
    assert_eq!(config.run_prios[..2], [multiprog::RUN_PRIORITY, 50]);
    // XDP_PASS continues the chain, and the empty-stub value 31 always does.
    assert_eq!(config.chain_call_actions[0], (1 << 2) | (1 << 31));
    // One component is not frags-aware, so the dispatcher is not either.
    assert_eq!(
        (config.is_xdp_frags, config.program_flags[..2].to_vec()),
        (0, vec![multiprog::BPF_F_XDP_HAS_FRAGS, 0])
    );
    // No component attached yet: every stub returns 31, the chain runs through, the packet
    // passes.
    assert_eq!(run(&d, &Frame::v4(&mpc_ab()).bytes()), XDP_PASS);
}

#[test]
fn the_firewall_runs_as_a_dispatcher_component() {
    let require = std::env::var_os("MPTCP_TESTS_REQUIRE_FREPLACE").is_some();
    let d = dispatcher(&[FIREWALL_SLOT]);
    let mut ebpf =
        multiprog::load_object_as_component(mptcp_loader::EBPF_OBJ).expect("load object");
    let _link = match multiprog::load_component(&mut ebpf, PROG_XDP_INGRESS, &d, 0) {
        Err(LoaderError::MultiprogUnsupported { detail }) if !require => {
            assert!(detail.contains("BPF_PROG_TYPE_EXT"), "{detail}");
            eprintln!("this kernel refuses freplace programs, as the loader says: {detail}");
            return;
        }
        result => result.unwrap_or_else(|e| panic!("{e}")),
    };
    let mut v = Validator { ebpf };
    v.set_config(Config {
        mode: MODE_ENFORCE,
        ..Config::default()
    });
    let base = Frame::v4(&mpc_ab());
    assert_eq!(run(&d, &base.bytes()), XDP_PASS, "keys learned, passed");
    let genuine = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    assert_eq!(run(&d, &base.with_opts(&genuine).bytes()), XDP_PASS);
    let mut forged = genuine.clone();
    forged[15] ^= 1;
    assert_eq!(
        run(&d, &base.with_opts(&forged).bytes()),
        XDP_DROP,
        "the firewall's drop ends the chain"
    );
    let c = v.counters();
    assert_eq!(
        (c["add_addr_valid"], c["add_addr_bad_hmac_dropped"]),
        (1, 1),
        "{c:?}"
    );
}
