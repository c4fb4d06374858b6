//! Resource exhaustion and event loss (root only, BPF_PROG_TEST_RUN on the real object).
//!
//! - Every state map is overfilled ten times (a storm of new MPTCP connections, a flood of
//!   MP_JOIN SYNs with random and with known tokens): a genuine connection that stays active
//!   keeps validating, the maps stay at their size, and the evictions show in the counters
//!   (`aux_conn_inserted`, from which the loader derives `loader_conns_evicted`).
//! - Key events are lost on purpose (nobody reads the ring buffer): connections whose events
//!   were lost still validate, because the fast path installs keys and tokens itself and
//!   computes the midstates on first use; the counters say so.

use mptcp_common::{
    maps::{MAP_CONNS, MAP_FLOWS, MAP_JOINS, MAP_TOKENS, MODE_ENFORCE},
    packet::{TCP_ACK, TCP_SYN},
    testing::Frame,
};
use mptcp_tests::{
    bpf::{BpfValidator, XDP_DROP, XDP_PASS},
    mptcp_frames::{add_addr, dss, join_ack, join_syn, join_synack, mpc_third_ack, token},
};

const CONNS: u32 = 512;
const JOINS: u32 = 128;

fn key(i: u32, salt: u8) -> [u8; 8] {
    let b = i.to_be_bytes();
    [salt, 0x5a, b[0], b[1], b[2], b[3], 0xc3, salt ^ 0xff]
}

/// A connection with its own 4-tuple (distinct for each `i`).
fn conn_frame(i: u32) -> Frame {
    let mut f = Frame::v4(&[]);
    let b = i.to_be_bytes();
    f.src[..4].copy_from_slice(&[198, 19, b[2], b[3]]);
    f.ports = (1024 + (i % 60000) as u16, 443);
    f
}

/// Connection `i` (keys `key(i, 3)`, `key(i, 4)`) shows its MP_CAPABLE third ACK, which
/// passes.
fn learn_conn(v: &BpfValidator, i: u32) {
    assert_eq!(
        v.run(
            &conn_frame(i)
                .with_opts(&mpc_third_ack(&key(i, 3), &key(i, 4)))
                .bytes()
        ),
        XDP_PASS
    );
}

#[test]
fn overfilled_maps_keep_active_connections_validating() {
    let v = BpfValidator::load_with_sizes(
        MODE_ENFORCE,
        &[
            (MAP_CONNS, CONNS),
            (MAP_FLOWS, 2 * CONNS),
            (MAP_TOKENS, 2 * CONNS),
            (MAP_JOINS, JOINS),
        ],
    );
    // The genuine connection G, which stays active during the storm.
    let (ga, gb) = (key(0, 1), key(0, 2));
    let g = Frame::v4(&[]);
    assert_eq!(
        v.run(&g.with_opts(&mpc_third_ack(&ga, &gb)).bytes()),
        XDP_PASS
    );
    let genuine = add_addr(&ga, &gb, 1, &[198, 18, 7, 7], None);
    let mut forged = genuine.clone();
    forged[15] ^= 1;
    let storm = 10 * CONNS;
    let mut g_checks = 0;
    for i in 1..=storm {
        // A new connection.
        learn_conn(&v, i);
        // A join SYN with a random token (dropped, leaves nothing) and one with a known token
        // of a storm connection (leaves a pending join: the join map overflows too).
        let mut syn = conn_frame(i + storm).with_opts(&join_syn(
            1,
            &key(i, 9)[..4].try_into().unwrap(),
            &[1, 2, 3, 4],
        ));
        syn.flags = TCP_SYN;
        assert_eq!(v.run(&syn.bytes()), XDP_DROP);
        let mut syn =
            conn_frame(i + 2 * storm).with_opts(&join_syn(1, &token(&key(i, 4)), &[1, 2, 3, 4]));
        syn.flags = TCP_SYN;
        assert_eq!(v.run(&syn.bytes()), XDP_PASS);
        // G is active: data, and now and then an announcement (genuine and forged).
        v.run(&g.with_opts(&dss()).bytes());
        if i % 64 == 0 {
            assert_eq!(
                v.run(&g.with_opts(&genuine).bytes()),
                XDP_PASS,
                "G's ADD_ADDR after {i} new connections"
            );
            assert_eq!(
                v.run(&g.with_opts(&forged).bytes()),
                XDP_DROP,
                "G's forged ADD_ADDR after {i}"
            );
            g_checks += 1;
        }
    }
    // G can still open a subflow: its tokens were kept by its activity... or not: see below.
    let mut sub = Frame::v4(&[]);
    sub.ports = (50001, 443);
    let (ra, rb) = ([9, 9, 9, 1], [9, 9, 9, 2]);
    let mut syn = sub.with_opts(&join_syn(1, &token(&gb), &ra));
    syn.flags = TCP_SYN;
    let syn_verdict = v.run(&syn.bytes());
    let mut synack = sub.reversed(&join_synack(0, &gb, &ga, &rb, &ra));
    synack.flags = TCP_SYN | TCP_ACK;
    let synack_verdict = v.run(&synack.bytes());
    let ack_verdict = v.run(&sub.with_opts(&join_ack(&ga, &gb, &ra, &rb)).bytes());
    let c = v.counters();
    let sizes = [
        (MAP_CONNS, v.entries(MAP_CONNS), CONNS),
        (MAP_FLOWS, v.entries(MAP_FLOWS), 2 * CONNS),
        (MAP_TOKENS, v.entries(MAP_TOKENS), 2 * CONNS),
        (MAP_JOINS, v.entries(MAP_JOINS), JOINS),
    ];
    // What the loader computes as loader_conns_evicted (no loader here, so nothing expired):
    // every connection entry ever inserted was closed, or is still there, or was evicted.
    let inserted = c["aux_conn_inserted"];
    let closed = c["aux_conn_closed"];
    let entries = sizes[0].1 as u64;
    let evicted = inserted - closed - entries;
    eprintln!("storm of {storm} connections into {CONNS}: {sizes:?}; inserted {inserted}, closed {closed}, evicted {evicted}, G checked {g_checks} times; G's join: SYN {syn_verdict} SYN/ACK {synack_verdict} ACK {ack_verdict}; counters {c:?}");
    for (name, entries, max) in sizes {
        assert!(
            entries <= max as usize,
            "{name}: {entries} entries, max {max}"
        );
    }
    // G and each storm connection were inserted exactly once (G's data segments and its
    // join do not insert), and none ended.
    assert_eq!(inserted, u64::from(storm) + 1, "{c:?}");
    assert_eq!(c["keys_learned"], inserted, "{c:?}");
    assert_eq!(closed, 0, "{c:?}");
    // So every connection the map does not hold was evicted: at least all but CONNS of them.
    assert!(entries > 0 && entries <= u64::from(CONNS), "{entries}");
    assert_eq!(evicted, u64::from(storm) + 1 - entries);
    assert!(evicted > u64::from(9 * CONNS), "evictions: {evicted}");
    assert_eq!(
        c["add_addr_valid"], g_checks,
        "every genuine ADD_ADDR of G validated"
    );
    assert_eq!(
        c["add_addr_bad_hmac_dropped"], g_checks,
        "every forged one was dropped"
    );
    // G's join: the SYN must never be dropped for a token the program forgot.
    assert_eq!(syn_verdict, XDP_PASS, "G's join SYN");
    assert_eq!((synack_verdict, ack_verdict), (XDP_PASS, XDP_PASS));
}

#[test]
fn lost_key_events_leave_no_connection_unvalidatable() {
    // Nobody reads the key-event ring buffer (no loader): it fills and events are lost.
    let v = BpfValidator::load(MODE_ENFORCE);
    let n = 5000; // 256 KiB ring, 80 bytes a record: about 3270 fit.
    for i in 0..n {
        learn_conn(&v, i);
    }
    let c = v.counters();
    assert!(
        c["aux_key_event_lost"] > 0,
        "the ring buffer must have overflowed: {c:?}"
    );
    assert_eq!(c["keys_learned"], u64::from(n));
    // The last connections' events were lost; they validate anyway, from state the fast path
    // installed itself.
    for i in n - 10..n {
        let (ka, kb) = (key(i, 3), key(i, 4));
        let f = conn_frame(i);
        let genuine = add_addr(&kb, &ka, 2, &[198, 18, 8, 8], Some(8080));
        assert_eq!(
            v.run(&f.reversed(&genuine).bytes()),
            XDP_PASS,
            "conn {i}: genuine ADD_ADDR"
        );
        let mut forged = genuine.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(
            v.run(&f.reversed(&forged).bytes()),
            XDP_DROP,
            "conn {i}: forged ADD_ADDR"
        );
        let mut syn = Frame {
            ports: (60001, 443),
            ..f.clone()
        }
        .with_opts(&join_syn(1, &token(&kb), &[1, 1, 1, 1]));
        syn.flags = TCP_SYN;
        assert_eq!(
            v.run(&syn.bytes()),
            XDP_PASS,
            "conn {i}: join SYN with a token the loader never saw"
        );
    }
    let c = v.counters();
    assert_eq!(
        c["aux_midstate_computed_inline"], 10,
        "the fast path computed what the loader would have: {c:?}"
    );
    eprintln!(
        "{n} connections, {} key events lost, all validatable: {c:?}",
        c["aux_key_event_lost"]
    );
}
