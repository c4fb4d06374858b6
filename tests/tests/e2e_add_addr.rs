//! End to end: the XDP validator on the server's interfaces, real MPTCP traffic, forged
//! ADD_ADDRs. Contrast with `lab_baseline.rs`, where the same forged segments reach the
//! server's TCP stack.
//!
//! Needs the loader binary: `$MPTCP_LOADER_BIN`, or `mptcp-loader` in the target directory
//! (`cargo xtask build`). Without it the tests are skipped, or fail when
//! `MPTCP_TESTS_REQUIRE_BPF=1`. Root only; run with
//! `cargo test -p mptcp-tests --release -- --test-threads=1`.

use mptcp_common::counters::Counter;
use mptcp_tests::{
    counters::mib,
    scenario::{self, Scenario, ValidatedRun as Run},
    tools::Tools,
    validator::Mode,
};

fn tools() -> Tools {
    Tools::new(env!("CARGO_BIN_EXE_mptcp-peer"))
}

/// The shared scenario with the validator on the server (see [`scenario::run_validated`]).
fn run_with_validator(test: &str, mode: Mode) -> Option<Run> {
    scenario::run_validated(test, &tools(), mode, &Scenario::default())
}

/// Once the connection has ended, the fast path (the server's own RSTs) or the loader's
/// closed-subflow check (the server's kernel has no socket left) removed it.
fn assert_ended_connection_forgotten(r: &Run) {
    assert_eq!(
        r.conns_after_close, 0,
        "the ended connection is still tracked (loader_subflows_closed {}, aux_subflow_closed {})\n{}",
        r.stats.json["loader_subflows_closed"],
        r.stats.get(Counter::SubflowClosed),
        r.why
    );
}

/// What holds in both modes: genuine traffic unharmed, the loader exits cleanly on SIGINT.
fn assert_genuine_traffic_unharmed(r: &Run) {
    let (o, why) = (&r.outcome, &r.why);
    o.assert_genuine_traffic(why);
    assert_ended_connection_forgotten(r);
    assert!(
        r.stats.get(Counter::KeysLearned) >= 1,
        "the validator did not learn the keys\n{why}"
    );
    // Genuine ADD_ADDR plus the positive control (right HMAC, so it must pass too).
    assert!(r.stats.get(Counter::AddAddrValid) >= 2, "{why}");
    assert_eq!(
        o.control_delta(mib::ADD_ADDR),
        1,
        "the control (right HMAC) was not accepted\n{why}"
    );
    assert_eq!(o.control_seen_by_server(), 1, "{why}");
    r.stop.assert_clean(why);
}

#[test]
fn enforce_drops_forged_add_addr_and_passes_genuine() {
    let test = "enforce_drops_forged_add_addr_and_passes_genuine";
    let Some(r) = run_with_validator(test, Mode::Enforce) else {
        return;
    };
    assert_genuine_traffic_unharmed(&r);
    let (o, why) = (&r.outcome, &r.why);
    let k = o.scenario.forged;
    assert_eq!(o.forged.sent, k, "{why}");
    assert_eq!(
        r.stats.get(Counter::AddAddrBadHmacDropped),
        u64::from(k),
        "{why}"
    );
    assert_eq!(r.stats.get(Counter::AddAddrBadHmacWouldDrop), 0, "{why}");
    // Dropped in XDP: tcpdump on the server (which sees packets after XDP) never saw them,
    // the TCP stack never counted them, and no kernel ADD_ADDR counter moved.
    assert_eq!(
        o.forged_seen_by_server(),
        0,
        "forged ADD_ADDRs reached the server\n{why}"
    );
    assert!(
        o.forged_delta(mib::TCP_IN_SEGS) < i128::from(k),
        "forged segments reached TCP\n{why}"
    );
    assert_eq!(o.forged_delta(mib::ADD_ADDR), 0, "{why}");
    assert_eq!(o.forged_delta(mib::ADD_ADDR_DROP), 0, "{why}");
}

#[test]
fn monitor_counts_forged_add_addr_but_passes_them() {
    let test = "monitor_counts_forged_add_addr_but_passes_them";
    let Some(r) = run_with_validator(test, Mode::Monitor) else {
        return;
    };
    assert_genuine_traffic_unharmed(&r);
    let (o, why) = (&r.outcome, &r.why);
    let k = o.scenario.forged;
    assert_eq!(
        r.stats.get(Counter::AddAddrBadHmacWouldDrop),
        u64::from(k),
        "{why}"
    );
    assert_eq!(r.stats.get(Counter::AddAddrBadHmacDropped), 0, "{why}");
    // Passed: the kernel sees them (and ignores them for their HMAC), as in the baseline.
    assert_eq!(
        o.forged_seen_by_server(),
        usize::try_from(k).unwrap(),
        "{why}"
    );
    assert!(o.forged_delta(mib::TCP_IN_SEGS) >= i128::from(k), "{why}");
    assert_eq!(o.forged_delta(mib::ADD_ADDR), 0, "{why}");
}
