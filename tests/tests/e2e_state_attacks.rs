//! End to end: one unauthenticated segment must not switch the firewall off for a connection
//! (issue 10). The real-stack versions of its two findings, with the validator in enforce mode
//! on the server's interfaces and the real Linux MPTCP stack on both sides:
//!
//! - `blind_rst_*`: after the genuine ADD_ADDR and join, the attacker sends one RST into the
//!   initial subflow with a sequence number half the sequence space away from the window
//!   (`snd_nxt + 2^31`). Linux discards it and the connection lives on. The RST passes the
//!   validator (the server's tcpdump sees it); it may mark the subflow closing, nothing more.
//! - `foreign_mp_capable_*`: instead, one MP_CAPABLE third ACK (kind 30, length 20, version 1,
//!   flags H) with random keys on the same 4-tuple, out of window the same way: Linux would
//!   discard it before reading its options (and ignores an MP_CAPABLE on an established subflow
//!   anyway). The validator counts it as `capable_other_keys_dropped` and drops it.
//!
//! After either, as in `e2e_add_addr`: 5 forged ADD_ADDRs (random HMAC) into the same
//! connection never reach the server's stack (its tcpdump never sees them, `MPTcpExtAddAddr`
//! does not move, `add_addr_bad_hmac_dropped` counts all 5, none passes as
//! `add_addr_unknown_conn` or `untrusted_conn`), while one with the right HMAC is accepted.
//! Then the client adds an address on path 2 as an endpoint: its path manager announces it and
//! joins from it, on the same connection, and the validator judges both (`add_addr_valid`,
//! `join_ack_valid`). All bytes arrive and the connection closes cleanly.
//!
//! Needs the loader binary: `$MPTCP_LOADER_BIN`, or `mptcp-loader` in the target directory
//! (`cargo xtask build`). Without it the tests are skipped, or fail when
//! `MPTCP_TESTS_REQUIRE_BPF=1`. Root only; run with
//! `cargo test -p mptcp-tests --release --test e2e_state_attacks -- --test-threads=1`.

use std::net::Ipv4Addr;

use mptcp_common::counters::Counter;
use mptcp_tests::{
    counters::mib,
    forger::Attack,
    scenario::{self, Scenario, ValidatedRun},
    tools::Tools,
    validator::Mode,
};

fn tools() -> Tools {
    Tools::new(env!("CARGO_BIN_EXE_mptcp-peer"))
}

/// The address the client announces and joins from after the attack (path 2, like 198.18.2.1).
const LATE_ENDPOINT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);

/// The ADD_ADDR scenario with `attack` right before the forged ADD_ADDRs and a late endpoint
/// after the positive control, validator in enforce mode on the server.
fn run(test: &str, attack: Attack) -> Option<ValidatedRun> {
    let sc = Scenario {
        attack: Some(attack),
        late_endpoint: Some(LATE_ENDPOINT),
        ..Scenario::default()
    };
    scenario::run_validated(test, &tools(), Mode::Enforce, &sc)
}

/// A validator counter's change during the attack and its pause.
fn attack_delta(r: &ValidatedRun, counter: Counter) -> i128 {
    r.outcome
        .attack_stat_delta(counter.name())
        .expect("the scenario read the validator's counters around the attack")
}

/// What must hold after either attack: the forged ADD_ADDRs never reach the server's stack and
/// the validator still judges the connection (first, since that is what the attack is after);
/// then the genuine connection goes on: its transfer, its ADD_ADDR and join (before the attack),
/// the positive control and the late endpoint's ADD_ADDR and join (after it), and a clean
/// loader exit.
fn assert_connection_still_judged(r: &ValidatedRun) {
    let (o, why) = (&r.outcome, &r.why);
    let attack = o.attack.as_ref().expect("the attack was sent");
    let k = o.scenario.forged;

    assert_eq!(o.forged.sent, k, "{why}");
    // The attacked subflow was marked closing, and the loader asked the kernel about it every
    // second from then on: it stayed while the connection lived, and went once it had ended.
    assert_eq!(
        r.conns_after_close, 0,
        "the ended connection is still tracked (loader_subflows_closed {})\n{why}",
        r.stats.json["loader_subflows_closed"]
    );
    assert_eq!(
        o.forged_seen_by_server(),
        0,
        "forged ADD_ADDRs reached the server after the attacker's {:?}\n{why}",
        attack.attack
    );
    assert_eq!(
        o.forged_delta(mib::ADD_ADDR),
        0,
        "the server's stack accepted a forged ADD_ADDR\n{why}"
    );
    assert!(
        o.forged_delta(mib::TCP_IN_SEGS) < i128::from(k),
        "forged segments reached TCP\n{why}"
    );
    assert_eq!(
        r.stats.get(Counter::AddAddrBadHmacDropped),
        u64::from(k),
        "not every forged ADD_ADDR was dropped for its HMAC\n{why}"
    );
    assert_eq!(
        r.stats.get(Counter::AddAddrUnknownConn),
        0,
        "the validator forgot the connection\n{why}"
    );
    assert_eq!(
        r.stats.get(Counter::UntrustedConn),
        0,
        "the validator stopped judging the connection\n{why}"
    );

    o.assert_genuine_traffic(why);
    assert!(
        r.stats.get(Counter::KeysLearned) >= 1,
        "the validator did not learn the keys\n{why}"
    );
    assert_eq!(
        o.control_delta(mib::ADD_ADDR),
        1,
        "the control (right HMAC) was not accepted after the attack\n{why}"
    );
    assert_eq!(o.control_seen_by_server(), 1, "{why}");
    assert_eq!(
        o.late_settled,
        Some(true),
        "the late endpoint's ADD_ADDR and join were not counted in time\n{why}"
    );
    assert!(o.late_delta(mib::ADD_ADDR) >= 1, "{why}");
    assert!(o.late_delta(mib::MP_JOIN_ACK_RX) >= 1, "{why}");
    assert!(
        o.late_seen_by_server() >= 1,
        "tcpdump missed the late ADD_ADDR\n{why}"
    );
    // Judged, not merely passed: the genuine ADD_ADDR, the control and the late one by their
    // HMAC, both joins by theirs.
    assert!(r.stats.get(Counter::AddAddrValid) >= 3, "{why}");
    assert!(r.stats.get(Counter::JoinAckValid) >= 2, "{why}");
    r.stop.assert_clean(why);
}

#[test]
fn blind_rst_does_not_let_forged_add_addrs_through() {
    let test = "blind_rst_does_not_let_forged_add_addrs_through";
    let Some(r) = run(test, Attack::BlindRst) else {
        return;
    };
    assert_connection_still_judged(&r);
    let (o, why) = (&r.outcome, &r.why);
    // The RST passed the validator, and the server's Linux ignored it.
    assert_eq!(
        o.attack_seen_by_server(),
        1,
        "the blind RST did not reach the server\n{why}"
    );
    assert_eq!(
        o.attack_delta(mib::ESTAB_RESETS),
        0,
        "the server's stack accepted the blind RST\n{why}"
    );
    // It marked the subflow closing and removed nothing.
    assert_eq!(attack_delta(&r, Counter::SubflowCloseMarked), 1, "{why}");
    assert_eq!(attack_delta(&r, Counter::SubflowClosed), 0, "{why}");
    assert_eq!(attack_delta(&r, Counter::ConnClosed), 0, "{why}");
}

#[test]
fn foreign_mp_capable_does_not_let_forged_add_addrs_through() {
    let test = "foreign_mp_capable_does_not_let_forged_add_addrs_through";
    let Some(r) = run(test, Attack::ForeignCapable) else {
        return;
    };
    assert_connection_still_judged(&r);
    let (o, why) = (&r.outcome, &r.why);
    // Counted as other keys and dropped before the server's stack; not a key conflict of the
    // handshake.
    assert_eq!(
        attack_delta(&r, Counter::CapableOtherKeysDropped),
        1,
        "the foreign MP_CAPABLE was not counted as capable_other_keys_dropped\n{why}"
    );
    assert_eq!(r.stats.get(Counter::CapableOtherKeysDropped), 1, "{why}");
    assert_eq!(
        o.attack_seen_by_server(),
        0,
        "the foreign MP_CAPABLE reached the server\n{why}"
    );
    assert_eq!(r.stats.get(Counter::KeysConflict), 0, "{why}");
    assert_eq!(
        o.attack_delta(mib::ESTAB_RESETS),
        0,
        "the server's stack reset the connection\n{why}"
    );
}
