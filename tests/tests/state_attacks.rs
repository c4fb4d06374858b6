//! Every state change an attacker's ingress segment can cause, against the real XDP object
//! (BPF_PROG_TEST_RUN, root only). The rule (README, "What a packet can change"): no
//! unauthenticated ingress segment makes the firewall forget, distrust or stop judging a
//! connection it has learned. Each test sends the attacker's packet, then checks that a forged
//! ADD_ADDR and a blind MP_JOIN SYN on the same connection are still dropped.

use mptcp_common::{
    maps::{FlowKey, FIN_FROM_DST, FIN_FROM_SRC, MODE_ENFORCE, RST_SEEN, UNKNOWN_DROP},
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    testing::Frame,
};
use mptcp_tests::{
    bpf::{BpfValidator as Validator, XDP_DROP, XDP_PASS},
    mptcp_frames::{
        add_addr, dss, join_ack, join_syn, join_synack, mpc_third_ack, token, KEY_A, KEY_B,
    },
};

/// Keys of an attacker's MP_CAPABLE.
const KEY_X: [u8; 8] = [0x66; 8];
const KEY_Y: [u8; 8] = [0x77; 8];

/// A validator in enforce mode that learned the hand-made connection (198.18.0.1:40000 ->
/// 198.18.0.2:10000, A = client) from its third ACK and saw its first data segment (MPC+data
/// shaped: the same keys again), so the subflow is past its handshake.
fn established() -> (Validator, Frame) {
    let v = Validator::load(MODE_ENFORCE);
    let base = Frame::v4(&mpc_third_ack(&KEY_A, &KEY_B));
    assert_eq!(v.run(&base.bytes()), XDP_PASS);
    assert_eq!(v.run(&base.bytes()), XDP_PASS, "the keys again");
    assert_eq!(v.counters()["keys_known"], 1);
    (v, base)
}

fn forged_add_addr() -> Vec<u8> {
    let mut opt = add_addr(&KEY_A, &KEY_B, 7, &[198, 18, 66, 6], None);
    opt[15] ^= 1;
    opt
}

/// What every test ends with: the connection is still tracked and trusted, a forged ADD_ADDR
/// from the client is dropped, a blind join SYN is dropped, and the genuine ADD_ADDR passes.
fn assert_still_judged(v: &Validator, base: &Frame, after: &str) {
    let c0 = v.counters();
    assert_eq!(
        v.run(&base.with_opts(&forged_add_addr()).bytes()),
        XDP_DROP,
        "{after}: a forged ADD_ADDR must still be dropped"
    );
    let mut blind = Frame::v4(&join_syn(3, &[0xde, 0xad, 0xbe, 0xef], &[1, 2, 3, 4]));
    blind.ports = (40999, 10000);
    blind.flags = TCP_SYN;
    assert_eq!(
        v.run(&blind.bytes()),
        XDP_DROP,
        "{after}: a blind join SYN must still be dropped"
    );
    let genuine = add_addr(&KEY_A, &KEY_B, 7, &[198, 18, 66, 6], None);
    assert_eq!(
        v.run(&base.with_opts(&genuine).bytes()),
        XDP_PASS,
        "{after}: the genuine ADD_ADDR passes"
    );
    let c = v.counters();
    let delta = |name: &str| c[name] - c0[name];
    assert_eq!(
        (
            delta("add_addr_bad_hmac_dropped"),
            delta("join_syn_unknown_token_dropped"),
            delta("add_addr_valid"),
            c["untrusted_conn"],
            c["keys_conflict"],
        ),
        (1, 1, 1, 0, 0),
        "{after}: {c:?}"
    );
}

fn flow_of(v: &Validator, frame: &Frame) -> mptcp_common::maps::FlowRef {
    let mut key = FlowKey {
        family: 4,
        ..FlowKey::default()
    };
    key.saddr = frame.src;
    key.daddr = frame.dst;
    key.sport = frame.ports.0.to_be_bytes();
    key.dport = frame.ports.1.to_be_bytes();
    let (key, _) = key.canonical();
    v.flows()
        .into_iter()
        .find(|(k, _)| *k == key)
        .expect("the subflow is still tracked")
        .1
}

/// The first finding of the issue: one RST (its sequence number does not matter to the fast
/// path; the kernel ignores one outside its window) removed the subflow and the connection.
#[test]
fn a_blind_rst_only_marks_the_subflow() {
    let (v, base) = established();
    assert_eq!(v.run(&base.with_opts(&forged_add_addr()).bytes()), XDP_DROP);
    let mut rst = base.with_opts(&[]);
    rst.flags = TCP_RST;
    assert_eq!(v.run(&rst.bytes()), XDP_PASS, "an RST is never dropped");
    // From the other side too.
    let mut rst_back = base.reversed(&[]);
    rst_back.flags = TCP_RST | TCP_ACK;
    assert_eq!(v.run(&rst_back.bytes()), XDP_PASS);
    assert_eq!(flow_of(&v, &base).closing, RST_SEEN);
    assert_eq!(v.conns().len(), 1);
    let c = v.counters();
    assert_eq!(
        (c["aux_subflow_close_marked"], c["aux_subflow_closed"]),
        (1, 0),
        "{c:?}"
    );
    assert_still_judged(&v, &base, "after a blind RST");
}

/// FIN from both ends, neither sent by this host: a half-closed subflow may still carry
/// signalling, so the FINs only mark it.
#[test]
fn fins_from_both_ends_only_mark_the_subflow() {
    let (v, base) = established();
    let mut fin = base.with_opts(&dss());
    fin.flags = TCP_FIN | TCP_ACK;
    v.run(&fin.bytes());
    let mut fin_back = base.reversed(&dss());
    fin_back.flags = TCP_FIN | TCP_ACK;
    v.run(&fin_back.bytes());
    assert_eq!(flow_of(&v, &base).closing, FIN_FROM_SRC | FIN_FROM_DST);
    assert_still_judged(&v, &base, "after FINs from both ends");
}

/// The second finding: an MP_CAPABLE with other keys on a subflow in use made the connection
/// untrusted. Now it is foreign: dropped, and the learned keys still judge.
#[test]
fn an_mp_capable_with_other_keys_is_dropped_and_changes_nothing() {
    // The sequence: learned from the third ACK, a forged ADD_ADDR, then the foreign
    // MP_CAPABLE, then forged ADD_ADDRs again.
    let v = Validator::load(MODE_ENFORCE);
    let base = Frame::v4(&mpc_third_ack(&KEY_A, &KEY_B));
    v.run(&base.bytes());
    assert_eq!(v.run(&base.with_opts(&forged_add_addr()).bytes()), XDP_DROP);
    let foreign = base.with_opts(&mpc_third_ack(&KEY_X, &KEY_Y));
    assert_eq!(
        v.run(&foreign.bytes()),
        XDP_DROP,
        "foreign keys are dropped"
    );
    assert_eq!(v.counters()["capable_other_keys_dropped"], 1);
    assert_still_judged(&v, &base, "after a foreign MP_CAPABLE");
    // The same after the MPC+data sighting instead of an ADD_ADDR.
    let (v, base) = established();
    assert_eq!(v.run(&foreign.bytes()), XDP_DROP);
    // Other keys sent from the server's side too.
    let reversed = base.reversed(&mpc_third_ack(&KEY_B, &KEY_X));
    assert_eq!(v.run(&reversed.bytes()), XDP_DROP);
    assert_eq!(v.conns()[0].key_b, KEY_B, "the learned keys stay");
    assert_still_judged(&v, &base, "after foreign MP_CAPABLEs both ways");
}

/// Within the handshake (one MP_CAPABLE seen, nothing else yet), other keys cannot be told
/// from the genuine ones: the connection is marked untrusted and passes (README: what an
/// active man-in-the-middle during the handshake can do).
#[test]
fn other_keys_within_the_handshake_are_a_conflict() {
    let v = Validator::load(MODE_ENFORCE);
    let base = Frame::v4(&mpc_third_ack(&KEY_A, &KEY_B));
    v.run(&base.bytes());
    assert_eq!(
        v.run(&base.with_opts(&mpc_third_ack(&KEY_X, &KEY_Y)).bytes()),
        XDP_PASS
    );
    let c = v.counters();
    assert_eq!(
        (c["keys_conflict"], c["capable_other_keys_dropped"]),
        (1, 0),
        "{c:?}"
    );
}

/// Key-A of a tracked connection with another Key-B, on a new 4-tuple: foreign, dropped; the
/// connection is not touched (before, it was marked untrusted).
#[test]
fn a_known_key_a_with_another_key_b_is_dropped() {
    let (v, base) = established();
    let mut other_tuple = base.with_opts(&mpc_third_ack(&KEY_A, &KEY_X));
    other_tuple.ports = (40001, 10000);
    assert_eq!(v.run(&other_tuple.bytes()), XDP_DROP);
    assert_eq!(v.flows().len(), 1, "no subflow was added");
    assert_still_judged(&v, &base, "after Key-A with another Key-B");
}

/// A SYN (MP_CAPABLE or MP_JOIN with a known token) on the 4-tuple of a tracked subflow, from
/// outside: Linux answers it with a challenge ACK; the firewall changes nothing.
#[test]
fn a_syn_on_a_tracked_4_tuple_changes_nothing() {
    let (v, base) = established();
    let mut syn = base.with_opts(&[30, 4, 0x01, 0x01]);
    syn.flags = TCP_SYN;
    assert_eq!(v.run(&syn.bytes()), XDP_PASS);
    let mut join = base.with_opts(&join_syn(2, &token(&KEY_B), &[9, 9, 9, 9]));
    join.flags = TCP_SYN;
    assert_eq!(v.run(&join.bytes()), XDP_PASS);
    assert_eq!(flow_of(&v, &base).closing, 0);
    assert_still_judged(&v, &base, "after SYNs on the tracked 4-tuple");
}

/// The host's own segments are evidence: its RST ends the subflow (and the connection with its
/// last subflow); its SYN on the 4-tuple means the old connection is gone there, so a new one
/// on the same 4-tuple is learned.
#[test]
fn the_hosts_own_rst_or_syn_ends_the_subflow() {
    let (v, base) = established();
    let mut rst = base.reversed(&[]);
    rst.flags = TCP_RST | TCP_ACK;
    v.run_egress(&rst.bytes());
    assert!(v.conns().is_empty() && v.flows().is_empty());
    assert!(v.tokens().is_empty(), "its tokens went with it");

    // 4-tuple reuse: the host (the server here) answers a new SYN on it.
    let (v, base) = established();
    let mut synack = base.reversed(&[30, 12, 0x01, 0x01, 0x55, 0x55, 0x55, 0x55, 1, 2, 3, 4]);
    synack.flags = TCP_SYN | TCP_ACK;
    v.run_egress(&synack.bytes());
    assert!(v.conns().is_empty());
    let new_conn = base.with_opts(&mpc_third_ack(&KEY_X, &KEY_Y));
    assert_eq!(v.run(&new_conn.bytes()), XDP_PASS);
    assert_eq!(v.counters()["keys_learned"], 2);
    assert_eq!(v.conns()[0].key_a, KEY_X);
}

/// A forged MP_FASTCLOSE on an RST is judged before the RST (and dropped); a genuine one (Linux
/// sends MP_FASTCLOSE on an RST) validates and ends the connection, also fail-closed.
#[test]
fn fastclose_on_an_rst_is_judged_first() {
    let (mut v, base) = established();
    v.set_config(mptcp_common::maps::Config {
        mode: MODE_ENFORCE,
        unknown_conn: UNKNOWN_DROP,
        ..Default::default()
    });
    // From A (the client) it must carry Key-B.
    let mut forged = base.with_opts(&[&[30u8, 12, 0x70, 0][..], &KEY_X].concat());
    forged.flags = TCP_RST;
    assert_eq!(v.run(&forged.bytes()), XDP_DROP);
    assert_still_judged(&v, &base, "after a forged MP_FASTCLOSE on an RST");
    let mut genuine = base.with_opts(&[&[30u8, 12, 0x70, 0][..], &KEY_B].concat());
    genuine.flags = TCP_RST;
    assert_eq!(v.run(&genuine.bytes()), XDP_PASS);
    let c = v.counters();
    assert_eq!(
        (
            c["fastclose_valid"],
            c["fastclose_bad_key_dropped"],
            c["fastclose_unknown_conn"],
            c["unknown_conn_dropped"]
        ),
        (1, 1, 0, 0),
        "{c:?}"
    );
    assert!(v.conns().is_empty() && v.flows().is_empty() && v.tokens().is_empty());
}

/// A new connection whose key was chosen so that its token hits a tracked connection's token
/// (2^32 hashes offline) does not take that token: joins naming it still belong to the first.
/// Finding such a key in a test takes too long, so the tracked connection is given the token
/// of the attacker's key instead.
#[test]
fn a_colliding_token_stays_with_the_tracked_connection() {
    let (mut v, base) = established();
    let victim_id = mptcp_common::maps::ConnState::id_of(&KEY_A);
    v.insert_token(token(&KEY_X), victim_id, mptcp_common::maps::ROLE_B);
    let mut attacker = Frame::v4(&mpc_third_ack(&KEY_X, &KEY_Y));
    attacker.ports = (41000, 10000);
    assert_eq!(
        v.run(&attacker.bytes()),
        XDP_PASS,
        "a new connection passes"
    );
    assert_eq!(v.counters()["aux_token_collision"], 1);
    assert_eq!(v.tokens()[&token(&KEY_X)].0, victim_id);
    // The attacker's connection ends; the token it could not take stays with the victim.
    let mut rst = attacker.reversed(&[]);
    rst.flags = TCP_RST;
    v.run_egress(&rst.bytes());
    assert_eq!(v.tokens()[&token(&KEY_X)].0, victim_id);
    assert_still_judged(&v, &base, "after a token collision");
}

/// A second MP_JOIN SYN with another nonce on the 4-tuple of a pending join keeps the first
/// nonce (Linux keeps its request socket): the genuine third ACK still validates.
#[test]
fn a_pending_join_keeps_its_first_nonce() {
    let (v, base) = established();
    let mut sub = base.with_opts(&[]);
    sub.ports = (40002, 10000);
    let (ra, rb) = ([0xa1, 0xa2, 0xa3, 0xa4], [0xb1, 0xb2, 0xb3, 0xb4]);
    // The client (A) joins the server (B): the SYN names B's token.
    let mut syn = sub.with_opts(&join_syn(2, &token(&KEY_B), &ra));
    syn.flags = TCP_SYN;
    assert_eq!(v.run(&syn.bytes()), XDP_PASS);
    let mut forged = sub.with_opts(&join_syn(2, &token(&KEY_B), &[6, 6, 6, 6]));
    forged.flags = TCP_SYN;
    assert_eq!(
        v.run(&forged.bytes()),
        XDP_PASS,
        "looks like a retransmission"
    );
    assert_eq!(v.counters()["aux_join_syn_pending_kept"], 1);
    // The host answers with its SYN/ACK (egress), computed from the first nonce.
    let mut synack = sub.reversed(&join_synack(2, &KEY_B, &KEY_A, &rb, &ra));
    synack.flags = TCP_SYN | TCP_ACK;
    v.run_egress(&synack.bytes());
    let ack = sub.with_opts(&join_ack(&KEY_A, &KEY_B, &ra, &rb));
    assert_eq!(v.run(&ack.bytes()), XDP_PASS, "the genuine third ACK");
    let c = v.counters();
    assert_eq!(
        (c["join_ack_valid"], c["join_ack_bad_hmac_dropped"]),
        (1, 0),
        "{c:?}"
    );
    assert_eq!(v.conns()[0].subflows, 2);
    assert_still_judged(&v, &base, "after a second join SYN");
}

/// DATA_FIN (a DSS flag) ends nothing in the fast path; a forged one changes nothing.
#[test]
fn a_data_fin_changes_nothing() {
    let (v, base) = established();
    let mut data_fin = dss();
    data_fin[3] |= 0x10; // F: DATA_FIN
    assert_eq!(v.run(&base.with_opts(&data_fin).bytes()), XDP_PASS);
    assert_still_judged(&v, &base, "after a DATA_FIN");
}
