//! Verdict rules: pure functions shared by the XDP program and host-side tests.

use core::ops::ControlFlow;

use crate::counters::Counter;
use crate::hmac::{add_addr_truncated, add_addr_v4_block, add_addr_v6_block, finish, Midstate};
use crate::maps::{FAMILY_V4, MODE_ENFORCE};
use crate::packet::{AddAddr, MptcpOptions};
use crate::sha256::Block;

/// The final inner HMAC block of an ADD_ADDR: `id || address || port` padded.
#[inline(always)]
#[must_use]
pub fn add_addr_block(a: &AddAddr) -> Block {
    if a.family == FAMILY_V4 {
        add_addr_v4_block(a.id, &[a.addr[0], a.addr[1], a.addr[2], a.addr[3]], &a.port)
    } else {
        add_addr_v6_block(a.id, &a.addr, &a.port)
    }
}

/// Whether an ADD_ADDR's carried HMAC is right, from the announcer's midstates (2 compressions).
#[inline(always)]
#[must_use]
pub fn add_addr_hmac_ok(sender_mid: &Midstate, a: &AddAddr) -> bool {
    add_addr_truncated(&finish(sender_mid, &add_addr_block(a))) == a.hmac
}

/// The reason for an ADD_ADDR whose HMAC was checked, under the configured mode.
#[inline(always)]
#[must_use]
pub fn add_addr_reason(hmac_ok: bool, mode: u32) -> Counter {
    match (hmac_ok, mode) {
        (true, _) => Counter::AddAddrValid,
        (false, MODE_ENFORCE) => Counter::AddAddrBadHmacDropped,
        (false, _) => Counter::AddAddrBadHmacWouldDrop,
    }
}

/// The reason for an MP_JOIN SYN/ACK whose truncated HMAC was checked.
#[inline(always)]
#[must_use]
pub fn join_synack_reason(hmac_ok: bool, mode: u32) -> Counter {
    match (hmac_ok, mode) {
        (true, _) => Counter::JoinSynAckValid,
        (false, MODE_ENFORCE) => Counter::JoinSynAckBadHmacDropped,
        (false, _) => Counter::JoinSynAckBadHmacWouldDrop,
    }
}

/// The reason for an MP_JOIN third ACK whose 160-bit HMAC was checked.
#[inline(always)]
#[must_use]
pub fn join_ack_reason(hmac_ok: bool, mode: u32) -> Counter {
    match (hmac_ok, mode) {
        (true, _) => Counter::JoinAckValid,
        (false, MODE_ENFORCE) => Counter::JoinAckBadHmacDropped,
        (false, _) => Counter::JoinAckBadHmacWouldDrop,
    }
}

/// The reason for an MP_JOIN SYN, from whether its token names a tracked connection.
#[inline(always)]
#[must_use]
pub fn join_syn_reason(token_known: bool, mode: u32) -> Counter {
    match (token_known, mode) {
        (true, _) => Counter::JoinSynKnownToken,
        (false, MODE_ENFORCE) => Counter::JoinSynUnknownTokenDropped,
        (false, _) => Counter::JoinSynUnknownTokenWouldDrop,
    }
}

/// The reason for an MP_FASTCLOSE of a tracked connection, from whether it carries the
/// receiver's key.
#[inline(always)]
#[must_use]
pub fn fastclose_reason(key_ok: bool, mode: u32) -> Counter {
    match (key_ok, mode) {
        (true, _) => Counter::FastcloseValid,
        (false, MODE_ENFORCE) => Counter::FastcloseBadKeyDropped,
        (false, _) => Counter::FastcloseBadKeyWouldDrop,
    }
}

/// The reason for an ADD_ADDR outside the address/port policy.
#[inline(always)]
#[must_use]
pub fn add_addr_policy_reason(mode: u32) -> Counter {
    if mode == MODE_ENFORCE {
        Counter::AddAddrPolicyDropped
    } else {
        Counter::AddAddrPolicyWouldDrop
    }
}

/// The reason for an MP_JOIN SYN over its source's rate limit.
#[inline(always)]
#[must_use]
pub fn join_syn_rate_reason(mode: u32) -> Counter {
    if mode == MODE_ENFORCE {
        Counter::JoinSynRateLimitedDropped
    } else {
        Counter::JoinSynRateLimitedWouldDrop
    }
}

/// The reason for signalling of a connection the program does not know: `pass_reason` when
/// fail-open, a drop (or would-drop) when fail-closed.
#[inline(always)]
#[must_use]
pub fn unknown_conn_reason(pass_reason: Counter, unknown_conn: u32, mode: u32) -> Counter {
    match (unknown_conn, mode) {
        (crate::maps::UNKNOWN_DROP, MODE_ENFORCE) => Counter::UnknownConnDropped,
        (crate::maps::UNKNOWN_DROP, _) => Counter::UnknownConnWouldDrop,
        _ => pass_reason,
    }
}

/// The reason for an HMAC check over the crypto budget.
#[inline(always)]
#[must_use]
pub const fn crypto_budget_reason(mode: u32) -> Counter {
    if mode == MODE_ENFORCE {
        Counter::CryptoBudgetDropped
    } else {
        Counter::CryptoBudgetWouldDrop
    }
}

/// The per-CPU crypto budget for `Config::crypto_rate` (`rate` > 0): interval between checks
/// in ns, and the burst (a tenth of a second's worth).
#[inline(always)]
#[must_use]
pub const fn crypto_budget(rate: u32) -> (u64, u64) {
    let rate = if rate == 0 { 1 } else { rate as u64 };
    (1_000_000_000 / rate, rate / 10)
}

/// Generic cell rate algorithm: with the theoretical arrival time `tat` of a flow limited to one
/// event per `interval_ns` with `burst` extra events, whether an event at `now_ns` conforms, and
/// the new `tat`. Unlike a token bucket it keeps one number per flow.
#[inline(always)]
#[must_use]
pub const fn gcra(tat: u64, now_ns: u64, interval_ns: u64, burst: u64) -> (bool, u64) {
    let tolerance = interval_ns.saturating_mul(burst);
    if tat > now_ns.saturating_add(tolerance) {
        return (false, tat);
    }
    let start = if tat > now_ns { tat } else { now_ns };
    (true, start.saturating_add(interval_ns))
}

/// The reason a segment's options give before any option is examined: `Break` with the final
/// reason when there is no MPTCP option (malformed or plain TCP), otherwise `Continue` with the
/// reason that the examined options then raise (MPTCP, raised by malformed options and echoes).
#[inline(always)]
pub const fn options_reason(opts: &MptcpOptions) -> ControlFlow<Counter, Counter> {
    if opts.count == 0 {
        return ControlFlow::Break(if opts.malformed {
            Counter::Malformed
        } else {
            Counter::TcpNoMptcp
        });
    }
    let mut reason = Counter::MptcpOther;
    if opts.malformed {
        reason = reason.max(Counter::Malformed);
    }
    if opts.echoes > 0 {
        reason = reason.max(Counter::AddAddrEcho);
    }
    ControlFlow::Continue(reason)
}

/// Whether a packet counted under `reason` is dropped. Only an enforced check failure drops:
/// everything the program does not know passes. The dropped reasons are the most significant
/// ones ([`Counter::significance`] 20), which that one list defines.
#[inline(always)]
#[must_use]
pub const fn drops(reason: Counter) -> bool {
    reason.significance() == 20
}

/// Whether a pending join created at `created_ns` is still usable at `now_ns`.
#[inline(always)]
#[must_use]
pub const fn join_state_fresh(created_ns: u64, now_ns: u64) -> bool {
    now_ns.wrapping_sub(created_ns) <= crate::maps::JOIN_LIFETIME_NS
}

/// The TCP flags that make a segment look at its subflow's end: FIN and RST, and on egress
/// also SYN (the host opening a new connection on the 4-tuple).
#[inline(always)]
#[must_use]
pub const fn end_flags(egress: bool) -> u8 {
    use crate::packet::{TCP_FIN, TCP_RST, TCP_SYN};
    if egress {
        TCP_FIN | TCP_RST | TCP_SYN
    } else {
        TCP_FIN | TCP_RST
    }
}

/// What a segment with FIN, RST or SYN does to the tracked subflow it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubflowEnd {
    /// The subflow stays tracked, with these closing marks.
    Mark(u8),
    /// The subflow has ended: remove it (and its connection with its last subflow).
    End,
}

/// The rule for ending subflows: state ends only on evidence an attacker cannot forge blind.
/// The host's own RST ends a subflow, and so does its own SYN or SYN/ACK on the 4-tuple (its
/// stack opens a new connection there only once the old one is gone). A FIN, or a segment from
/// anyone else (ingress, or forwarded through this host), only marks the subflow `closing`,
/// since an RST far outside the window or a FIN on a half-closed subflow changes nothing in the
/// hosts' stacks. A subflow whose connection is no longer tracked validates nothing, so any FIN
/// or RST may end it.
#[inline(always)]
#[must_use]
pub const fn subflow_end_action(
    closing: u8,
    tcp_flags: u8,
    from_canonical_dst: bool,
    from_host: bool,
    conn_tracked: bool,
) -> SubflowEnd {
    use crate::packet::{TCP_FIN, TCP_RST, TCP_SYN};
    if from_host && tcp_flags & (TCP_RST | TCP_SYN) != 0 {
        return SubflowEnd::End;
    }
    if !conn_tracked && tcp_flags & (TCP_RST | TCP_FIN) != 0 {
        return SubflowEnd::End;
    }
    let mut marks = closing;
    if tcp_flags & TCP_RST != 0 {
        marks |= crate::maps::RST_SEEN;
    }
    if tcp_flags & TCP_FIN != 0 {
        marks |= if from_canonical_dst {
            crate::maps::FIN_FROM_DST
        } else {
            crate::maps::FIN_FROM_SRC
        };
    }
    SubflowEnd::Mark(marks)
}

/// The reason for an MP_CAPABLE carrying both keys on a subflow whose connection is tracked:
/// the same keys are a retransmission; other keys are a conflict while the subflow is in its
/// handshake, and foreign (dropped in enforce mode) once it is established.
#[inline(always)]
#[must_use]
pub const fn capable_keys_reason(same_keys: bool, established: bool, mode: u32) -> Counter {
    match (same_keys, established, mode) {
        (true, _, _) => Counter::KeysKnown,
        (false, false, _) => Counter::KeysConflict,
        (false, true, MODE_ENFORCE) => Counter::CapableOtherKeysDropped,
        (false, true, _) => Counter::CapableOtherKeysWouldDrop,
    }
}

/// The reason for an MP_CAPABLE whose keys contradict a tracked connection (same Key-A, other
/// Key-B, on a subflow not yet tracked): foreign, whatever the handshake state.
#[inline(always)]
#[must_use]
pub const fn capable_other_keys_reason(mode: u32) -> Counter {
    capable_keys_reason(false, true, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FIN_FROM_DST, FIN_FROM_SRC, JOIN_LIFETIME_NS, MODE_MONITOR};

    #[test]
    fn only_enforced_failures_drop() {
        for mode in [MODE_MONITOR, MODE_ENFORCE] {
            let reasons = [
                add_addr_reason(false, mode),
                join_synack_reason(false, mode),
                join_ack_reason(false, mode),
                join_syn_reason(false, mode),
                fastclose_reason(false, mode),
            ];
            for r in reasons {
                assert_eq!(drops(r), mode == MODE_ENFORCE, "{r:?}");
            }
            for r in [
                add_addr_reason(true, mode),
                join_synack_reason(true, mode),
                join_ack_reason(true, mode),
                join_syn_reason(true, mode),
                fastclose_reason(true, mode),
            ] {
                assert!(!drops(r), "{r:?}");
            }
        }
    }

    #[test]
    fn exactly_the_dropped_reasons_drop() {
        let mut dropped = 0;
        for c in Counter::ALL {
            assert_eq!(drops(*c), c.name().ends_with("_dropped"), "{c:?}");
            dropped += usize::from(drops(*c));
        }
        assert_eq!(dropped, 10);
    }

    #[test]
    fn options_reason_before_examining_options() {
        use crate::packet::{MptcpOptions, OptRef};
        let none = MptcpOptions::default();
        assert_eq!(
            options_reason(&none),
            ControlFlow::Break(Counter::TcpNoMptcp)
        );
        let bad_tcp = MptcpOptions {
            malformed: true,
            ..none
        };
        assert_eq!(
            options_reason(&bad_tcp),
            ControlFlow::Break(Counter::Malformed)
        );
        // An echo or a join is not looked at without a kind-30 option counted.
        let uncounted = MptcpOptions {
            echoes: 1,
            join: Some(OptRef { off: 40, len: 12 }),
            ..none
        };
        assert_eq!(
            options_reason(&uncounted),
            ControlFlow::Break(Counter::TcpNoMptcp)
        );
        let mptcp = MptcpOptions { count: 1, ..none };
        assert_eq!(
            options_reason(&mptcp),
            ControlFlow::Continue(Counter::MptcpOther)
        );
        let echo = MptcpOptions {
            count: 2,
            echoes: 1,
            ..none
        };
        assert_eq!(
            options_reason(&echo),
            ControlFlow::Continue(Counter::AddAddrEcho)
        );
        // Malformed outranks an echo.
        let both = MptcpOptions {
            malformed: true,
            ..echo
        };
        assert_eq!(
            options_reason(&both),
            ControlFlow::Continue(Counter::Malformed)
        );
        let malformed = MptcpOptions {
            malformed: true,
            ..mptcp
        };
        assert_eq!(
            options_reason(&malformed),
            ControlFlow::Continue(Counter::Malformed)
        );
    }

    #[test]
    fn only_the_hosts_own_rst_or_syn_ends_a_tracked_subflow() {
        use crate::maps::RST_SEEN;
        use crate::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
        // Ingress RST and FINs from both ends: marks only.
        assert_eq!(
            subflow_end_action(0, TCP_RST, false, false, true),
            SubflowEnd::Mark(RST_SEEN)
        );
        assert_eq!(
            subflow_end_action(FIN_FROM_SRC, TCP_FIN | TCP_ACK, true, false, true),
            SubflowEnd::Mark(FIN_FROM_SRC | FIN_FROM_DST)
        );
        // The host's own FIN is a mark too: the peer may still send on a half-closed subflow.
        assert_eq!(
            subflow_end_action(FIN_FROM_DST, TCP_FIN, false, true, true),
            SubflowEnd::Mark(FIN_FROM_SRC | FIN_FROM_DST)
        );
        // The host's own RST, SYN or SYN/ACK ends it.
        for flags in [TCP_RST, TCP_SYN, TCP_SYN | TCP_ACK] {
            assert_eq!(
                subflow_end_action(0, flags, false, true, true),
                SubflowEnd::End
            );
        }
        // A SYN from elsewhere changes nothing.
        assert_eq!(
            subflow_end_action(0, TCP_SYN, false, false, true),
            SubflowEnd::Mark(0)
        );
        // A subflow of a connection no longer tracked goes on any FIN or RST.
        assert_eq!(
            subflow_end_action(0, TCP_RST, false, false, false),
            SubflowEnd::End
        );
        assert_eq!(
            subflow_end_action(0, TCP_SYN, false, false, false),
            SubflowEnd::Mark(0)
        );
    }

    #[test]
    fn other_keys_conflict_in_the_handshake_and_are_foreign_after() {
        for mode in [MODE_MONITOR, MODE_ENFORCE] {
            assert_eq!(capable_keys_reason(true, false, mode), Counter::KeysKnown);
            assert_eq!(capable_keys_reason(true, true, mode), Counter::KeysKnown);
            assert_eq!(
                capable_keys_reason(false, false, mode),
                Counter::KeysConflict
            );
            let foreign = capable_keys_reason(false, true, mode);
            assert_eq!(drops(foreign), mode == MODE_ENFORCE, "{foreign:?}");
            assert_eq!(capable_other_keys_reason(mode), foreign);
        }
    }

    #[test]
    fn gcra_allows_rate_plus_burst() {
        // 10 per second, burst 5: at t=0, 6 pass (1 + burst), the 7th is limited.
        let (interval, mut tat) = (100_000_000, 0);
        let mut passed = 0;
        for _ in 0..10 {
            let (ok, next) = gcra(tat, 1_000_000_000, interval, 5);
            if ok {
                passed += 1;
                tat = next;
            }
        }
        assert_eq!(passed, 6);
        // One interval later, one more conforms.
        assert!(gcra(tat, 1_000_000_000 + interval, interval, 5).0);
        assert!(!gcra(tat, 1_000_000_000 + interval / 2, interval, 5).0);
    }

    #[test]
    fn every_drop_and_would_drop_is_an_event() {
        for c in Counter::ALL {
            let name = c.name();
            let want = name.ends_with("_dropped") || name.ends_with("_would_drop");
            assert_eq!(c.is_event(), want, "{name}");
        }
    }

    #[test]
    fn fail_closed_drops_unknown_connections() {
        use crate::maps::{UNKNOWN_DROP, UNKNOWN_PASS};
        let pass = Counter::AddAddrUnknownConn;
        assert_eq!(unknown_conn_reason(pass, UNKNOWN_PASS, MODE_ENFORCE), pass);
        assert_eq!(
            unknown_conn_reason(pass, UNKNOWN_DROP, MODE_ENFORCE),
            Counter::UnknownConnDropped
        );
        assert_eq!(
            unknown_conn_reason(pass, UNKNOWN_DROP, MODE_MONITOR),
            Counter::UnknownConnWouldDrop
        );
    }

    #[test]
    fn join_state_lifetime() {
        assert!(join_state_fresh(100, 100 + JOIN_LIFETIME_NS));
        assert!(!join_state_fresh(100, 101 + JOIN_LIFETIME_NS));
    }
}
