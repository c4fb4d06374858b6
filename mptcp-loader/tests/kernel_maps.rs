//! The map logic (installation, token re-assertion, idle sweep) against the real kernel maps of
//! the loaded object, with sizes set from the command-line limits. Needs root and the built
//! object; attaches nothing. Skipped otherwise.

#![allow(
    clippy::cast_possible_truncation,
    reason = "test keys and header bytes built from small numbers by `as`"
)]

mod netlab;

use std::time::Instant;

use aya::{
    maps::{HashMap, IterableMap as _, MapData},
    programs::{TestRunOptions, Xdp},
    TestRun as _,
};
use mptcp_common::maps::{
    ConnState, FlowKey, FlowRef, JoinState, KeyEvent, Token, TokenRef, FAMILY_V4, MAP_CONNS,
    MAP_FLOWS, MAP_JOINS, MAP_TOKENS, PROG_XDP_INGRESS,
};
use mptcp_loader::{
    conn::install::{install_event, token_entries, InstallOutcome},
    conn::sweep::{sweep_maps, SweepOutcome},
    kernel::map_sizes::MapSizes,
    kernel::store::{FirewallMaps as _, KernelMaps},
    policy::{apply_policy, Policy, PolicyMaps},
    FilterMode, Firewall, EBPF_OBJ,
};
use netlab::can_load;

/// XDP verdicts.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const NOW: u32 = 1_000_000;
const TIMEOUT: u32 = 100;

fn flow_key(n: u32, sub: u8) -> FlowKey {
    let mut key = FlowKey {
        family: FAMILY_V4,
        sport: u16::try_from(n % 60_000 + 1024).unwrap().to_be_bytes(),
        dport: 80u16.to_be_bytes(),
        ..FlowKey::default()
    };
    key.saddr[..4].copy_from_slice(&[198, 18, sub, 1]);
    key.daddr[..4].copy_from_slice(&[198, 19, (n >> 8) as u8, n as u8]);
    key
}

fn keys_of(n: u32) -> ([u8; 8], [u8; 8]) {
    let a = (u64::from(n) << 8 | 0xa1).to_be_bytes();
    let b = (u64::from(n) << 8 | 0xb2).to_be_bytes();
    (a, b)
}

/// Connection `n` as the fast path would leave it: state, one or two subflows, both tokens.
fn add_conn(maps: &mut KernelMaps, n: u32, learned_s: u32, subflows: &[u32]) -> u64 {
    let (key_a, key_b) = keys_of(n);
    let id = ConnState::id_of(&key_a);
    let state = ConnState {
        key_a,
        key_b,
        learned_s,
        subflows: subflows.len() as u32,
        ..ConnState::default()
    };
    maps.conns.insert(id, state, 0).unwrap();
    for (sub, last_seen_s) in subflows.iter().enumerate() {
        let value = FlowRef {
            conn_id: id,
            last_seen_s: *last_seen_s,
            ..FlowRef::default()
        };
        maps.flows.insert(flow_key(n, sub as u8), value, 0).unwrap();
    }
    for (token, entry) in token_entries(&key_a, &key_b) {
        maps.tokens.insert(token, entry, 0).unwrap();
    }
    id
}

fn max_entries<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> u32 {
    map.map().info().unwrap().max_entries()
}

#[test]
fn sizes_are_applied_and_the_sweep_works_on_kernel_maps() {
    if !can_load("sizes_are_applied_and_the_sweep_works_on_kernel_maps") {
        return;
    }
    let sizes = MapSizes::for_limits(4096, 64);
    let mut firewall = Firewall::load_with(EBPF_OBJ, &sizes).expect("load");
    let joins: HashMap<MapData, FlowKey, JoinState> =
        HashMap::try_from(firewall.ebpf_mut().take_map(MAP_JOINS).unwrap()).unwrap();
    assert_eq!(max_entries(&joins), 64, "{MAP_JOINS}");
    let mut maps = firewall.take_maps().expect("maps");
    assert_eq!(max_entries(&maps.conns), 4096, "{MAP_CONNS}");
    assert_eq!(max_entries(&maps.flows), 8192, "{MAP_FLOWS}");
    assert_eq!(max_entries(&maps.tokens), 8192, "{MAP_TOKENS}");

    // 1000 connections: even ones idle (both subflows old), odd ones with one fresh subflow.
    let mut idle_ids = Vec::new();
    for n in 0..1000 {
        let id = if n % 2 == 0 {
            add_conn(&mut maps, n, NOW - 5000, &[NOW - 200, NOW - 101])
        } else {
            add_conn(&mut maps, n, NOW - 5000, &[NOW - 200, NOW - 3])
        };
        if n % 2 == 0 {
            idle_ids.push(id);
        }
    }
    // Subflows whose connection was evicted: one idle, one recent.
    let orphan = FlowRef {
        conn_id: 0xdead,
        last_seen_s: NOW - 500,
        ..FlowRef::default()
    };
    maps.flows.insert(flow_key(5000, 9), orphan, 0).unwrap();
    let recent_orphan = FlowRef {
        last_seen_s: NOW - 5,
        ..orphan
    };
    maps.flows
        .insert(flow_key(5001, 9), recent_orphan, 0)
        .unwrap();

    let started = Instant::now();
    let (plan, outcome) = sweep_maps(&mut maps, || NOW, TIMEOUT).expect("sweep");
    eprintln!(
        "swept 1000 connections / 2002 subflows in {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(plan.expired.len(), 500);
    assert_eq!(
        outcome,
        SweepOutcome {
            conns_expired: 500,
            flows_expired: 1000,
            flows_orphaned_removed: 1,
            conns_revived: 0,
        }
    );
    assert_eq!(maps.all_conns().unwrap().len(), 500);
    assert_eq!(maps.all_flows().unwrap().len(), 1001);
    // The sweep keeps tokens (a forgotten connection may still be alive): all 2000 remain.
    assert_eq!(maps.tokens.keys().count(), 2000);
    for id in idle_ids {
        assert!(maps.conn(id).unwrap().is_none());
    }
    // Nothing left to do.
    let (_, again) = sweep_maps(&mut maps, || NOW, TIMEOUT).unwrap();
    assert_eq!(again, SweepOutcome::default());
}

#[test]
fn installation_restores_an_evicted_token_in_the_kernel_map() {
    if !can_load("installation_restores_an_evicted_token_in_the_kernel_map") {
        return;
    }
    let mut firewall = Firewall::load_with(EBPF_OBJ, &MapSizes::for_limits(64, 16)).unwrap();
    let mut maps = firewall.take_maps().unwrap();
    add_conn(&mut maps, 7, NOW, &[NOW]);
    let (key_a, key_b) = keys_of(7);
    let [(token_a, ref_a), (token_b, ref_b)] = token_entries(&key_a, &key_b);
    maps.tokens.remove(&token_a).unwrap();
    let event = KeyEvent {
        key_a,
        key_b,
        ..KeyEvent::default()
    };
    let outcome = install_event(&mut maps, &event).unwrap();
    assert!(
        matches!(
            outcome,
            InstallOutcome::Installed {
                tokens_restored: 1,
                ..
            }
        ),
        "{outcome:?}"
    );
    let read = |t: &Token| -> TokenRef { maps.tokens.get(t, 0).unwrap() };
    assert_eq!((read(&token_a), read(&token_b)), (ref_a, ref_b));
}

/// An Ethernet + IPv4 + TCP SYN frame carrying an MP_JOIN SYN option with `token`, from
/// 198.18.9.1:40000 to 198.18.9.2:10000 (checksums are not checked by the fast path).
fn join_syn_frame(token: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    let tcp_len: u16 = 20 + 12;
    let ip_len = 20 + tcp_len;
    frame.extend_from_slice(&[
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        1,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    frame.extend_from_slice(&[198, 18, 9, 1, 198, 18, 9, 2]);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&10000u16.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
    frame.extend_from_slice(&[((tcp_len / 4) << 4) as u8, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // SYN
                                                                                          // MP_JOIN SYN: kind 30, length 12, subtype 1, address id 2, token, nonce.
    frame.extend_from_slice(&[30, 12, 0x10, 2]);
    frame.extend_from_slice(&token);
    frame.extend_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
    frame
}

fn counter(firewall: &Firewall, name: &str) -> u64 {
    let counters = firewall.counters().unwrap();
    counters.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn a_join_naming_a_swept_connection_fails_open() {
    if !can_load("a_join_naming_a_swept_connection_fails_open") {
        return;
    }
    let mut firewall = Firewall::load_with(EBPF_OBJ, &MapSizes::for_limits(64, 16)).unwrap();
    // Enforce mode, written the way `run` writes it.
    let enforce = Policy {
        mode: FilterMode::Enforce,
        ..Policy::default()
    };
    apply_policy(
        &mut PolicyMaps::open(firewall.ebpf()).unwrap(),
        &enforce,
        |iface| panic!("the policy names no interface, yet {iface} was resolved"),
    )
    .unwrap();
    let mut maps = firewall.take_maps().unwrap();
    // An old connection whose only subflow looks idle (its data segments refreshed activity on
    // a random sample only): the sweep forgets it...
    let id = add_conn(&mut maps, 3, NOW - 5000, &[NOW - 500]);
    let (_, outcome) = sweep_maps(&mut maps, || NOW, TIMEOUT).unwrap();
    assert_eq!(outcome.conns_expired, 1);
    assert!(maps.conn(id).unwrap().is_none());
    // ...but keeps its tokens, so a join naming one is not taken for a blind join.
    let (key_a, key_b) = keys_of(3);
    let [_, (token_b, _)] = token_entries(&key_a, &key_b);
    assert!(maps.token(&token_b).unwrap().is_some());

    let run = |firewall: &Firewall, frame: &[u8]| -> u32 {
        let prog: &Xdp = firewall
            .ebpf()
            .program(PROG_XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        prog.test_run(opts).unwrap().return_value
    };
    let missing_before = counter(&firewall, "join_state_missing");
    assert_eq!(run(&firewall, &join_syn_frame(token_b)), XDP_PASS);
    assert_eq!(counter(&firewall, "join_state_missing"), missing_before + 1);
    // The control: a token nobody has is still dropped as a blind join.
    let dropped_before = counter(&firewall, "join_syn_unknown_token_dropped");
    assert_eq!(
        run(&firewall, &join_syn_frame([0xde, 0xad, 0xbe, 0xef])),
        XDP_DROP
    );
    assert_eq!(
        counter(&firewall, "join_syn_unknown_token_dropped"),
        dropped_before + 1
    );
}
