//! Resource exhaustion with the real loader and the real Linux MPTCP stack (root only).
//!
//! `mptcp-loader run` validates the server's interfaces with small maps (`--max-conns 256`:
//! 256 connections, 512 subflows, 512 tokens; `--max-joins 64`). One genuine connection is
//! opened first and keeps sending (a segment every 2 ms). Then a storm of ten times the
//! connection capacity: 2 560 real MPTCP connections at 250 a second, held open (a connection
//! that ends is removed by the firewall itself, so only held ones overfill), each announcing the
//! client's second address and joining a second subflow, so every map overflows (2 560
//! connections, 5 120 subflows and tokens, 2 560 joins). Then a trafgen flood of 20 000 MP_JOIN
//! SYNs with random tokens.
//!
//! Afterwards:
//! - the loader still runs, its resident memory grew by less than 16 MiB, and no map holds more
//!   than its capacity;
//! - the evictions are counted (`loader_conns_evicted`: at least the 9 x 64 connections that
//!   cannot fit);
//! - the genuine connection, which stayed active, still validates: forged ADD_ADDRs into it are
//!   dropped before the stack sees them, one with the right HMAC is accepted, and `conns`
//!   lists it;
//! - every storm connection was accepted and joined (its ADD_ADDR and join validated while the
//!   maps were overflowing), the flood and nothing else was dropped, in XDP (the server's stack
//!   never saw a blind join).
//!
//! What "active" has to mean: the maps are LRU, and the fast path refreshes a connection's
//! entries on every signalling segment and on 1 in 16 data segments. A connection is safe while
//! it is refreshed more often than the storm replaces the whole map (here: about 30 refreshes
//! per replacement). A faster storm into a smaller map does evict active connections: 640
//! connections opened as fast as the storm client could (0.1 s) into `--max-conns 64` evicted this genuine
//! connection, whose forged ADD_ADDRs then passed as `add_addr_unknown_conn`. The same holds for
//! a new connection's tokens: at 500 and 1 000 connections a second into this map, on a busy
//! machine, 1 to 17 storm connections lost their tokens before their own join SYN arrived, and
//! those genuine joins were dropped as blind ones.
//!
//! Needs the loader binary (see `e2e_add_addr.rs`) and trafgen (netsniff-ng).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use mptcp_common::{
    counters::Counter,
    maps::{MAP_CONNS, MAP_FLOWS, MAP_JOINS, MAP_TOKENS},
};
use mptcp_tests::{
    counters::mib,
    forger::{Forger, HmacKind},
    lab::{Lab, PATH1, SERVER_IFACES},
    scenario::wait_for_counters,
    storm::{self, ActiveClient, HoldingServer, Storm},
    tools::Tools,
    validator::{loader_or_skip, start_or_skip, Mode, ValidatorStats},
};

const MAX_CONNS: u32 = 256;
const MAX_JOINS: u32 = 64;
/// Ten times the connection map.
const STORM: u32 = 10 * MAX_CONNS;
/// New connections a second: the storm replaces the whole connection map about once a second,
/// while the genuine connection sends a segment every 2 ms (about 30 of them, 1 in 16 sampled,
/// refresh its state in that time). Faster storms evicted the tokens of some storm connections
/// before their own join SYN arrived when the machine was busy (see the module docs).
const STORM_RATE: u32 = 250;
const JOIN_FLOOD: u64 = 20_000;
const JOIN_FLOOD_RATE: u32 = 20_000;
/// Idle timeout of the run: a sweep (which brings the eviction count up to date) every 5 s,
/// and nothing of the test idles that long before it is checked.
const IDLE_TIMEOUT_S: &str = "20";
const GENUINE_PORT: u16 = 10_000;
const STORM_PORT: u16 = 10_001;
/// How much the loader's resident memory may grow during the storm.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
const SETTLE: Duration = Duration::from_millis(300);
const FORGED: u32 = 3;

fn tools() -> Tools {
    Tools::new(env!("CARGO_BIN_EXE_mptcp-peer"))
}

fn loader_counter(stats: &ValidatorStats, name: &str) -> u64 {
    stats
        .json
        .get(name)
        .and_then(serde_json::value::Value::as_u64)
        .unwrap_or_else(|| {
            panic!("`stats --json` has no {name}: {}", stats.json);
        })
}

fn map_fill(stats: &ValidatorStats, map: &str) -> (u64, u64) {
    let fill = &stats.json["maps"][map];
    match (fill["entries"].as_u64(), fill["max"].as_u64()) {
        (Some(entries), Some(max)) => (entries, max),
        _ => panic!("`stats --json` has no fill level of {map}: {}", stats.json),
    }
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn loader_survives_a_storm_of_connections_and_join_syns() {
    let test = "loader_survives_a_storm_of_connections_and_join_syns";
    let tools = tools();
    let mut problems = tools.missing();
    if std::process::Command::new("trafgen")
        .arg("--version")
        .output()
        .is_err()
    {
        problems.push("trafgen is not installed (apt-get install netsniff-ng)".to_owned());
    }
    let Some(bin) = loader_or_skip(test, problems) else {
        return;
    };

    let lab = Lab::new().expect("building the lab");
    let Some(mut validator) = start_or_skip(
        test,
        &lab.server,
        &bin,
        &SERVER_IFACES,
        Mode::Enforce,
        &[
            "--max-conns",
            &MAX_CONNS.to_string(),
            "--max-joins",
            &MAX_JOINS.to_string(),
            "--idle-timeout",
            IDLE_TIMEOUT_S,
        ],
    ) else {
        return;
    };
    let rss_before = storm::rss_kib(validator.pid()).expect("loader RSS");

    // The genuine connection, active from start to end.
    let genuine_addr = SocketAddrV4::new(PATH1.server_addr, GENUINE_PORT);
    let storm_addr = SocketAddrV4::new(PATH1.server_addr, STORM_PORT);
    let mut forger = Forger::start(
        &lab.client,
        &tools.peer_bin,
        PATH1.client_iface,
        PATH1.client_addr,
        genuine_addr,
    )
    .expect("starting the forger");
    let _genuine_server =
        HoldingServer::start(&lab.server, &tools.peer_bin, genuine_addr).expect("genuine server");
    let mut storm_server =
        HoldingServer::start(&lab.server, &tools.peer_bin, storm_addr).expect("storm server");
    let start = lab.server.counters().expect("counters");
    let mut genuine =
        ActiveClient::connect(&lab.client, &tools.peer_bin, genuine_addr).expect("genuine client");
    let joined = wait_for_counters(
        || lab.server.counters(),
        &start,
        &[(mib::ADD_ADDR, 1), (mib::MP_JOIN_ACK_RX, 1)],
        Duration::from_secs(10),
    )
    .expect("counters");
    assert!(
        joined,
        "the genuine connection did not announce and join\n{}",
        validator.log()
    );

    // The storm, then the flood.
    let before_storm = lab.server.counters().expect("counters");
    let stats_before = validator.stats(&lab.server).expect("stats");
    let (storm, storm_time) = Storm::open(
        &lab.client,
        &tools.peer_bin,
        storm_addr,
        STORM,
        STORM_RATE,
        Duration::from_mins(2),
    )
    .expect("the storm of connections");
    let storm_s = storm_time.as_secs_f64();
    // The last connections' joins may still be under way when the last connection is open.
    wait_for_counters(
        || lab.server.counters(),
        &before_storm,
        &[(mib::MP_JOIN_ACK_RX, i128::from(STORM))],
        Duration::from_secs(10),
    )
    .expect("counters");
    let cfg = storm::write_join_flood(lab.work_dir(), storm_addr).expect("flood config");
    let before_flood = lab.server.counters().expect("counters");
    storm::trafgen(
        &lab.client,
        &cfg,
        JOIN_FLOOD_RATE,
        JOIN_FLOOD,
        Duration::from_mins(1),
    )
    .expect("the MP_JOIN SYN flood");
    thread::sleep(SETTLE);
    let after_flood = lab.server.counters().expect("counters");

    // Evictions are counted at the next sweep.
    let least_evicted = u64::from(STORM - MAX_CONNS);
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = validator.stats(&lab.server).expect("stats");
        if loader_counter(&stats, "loader_conns_evicted") >= least_evicted
            || Instant::now() > deadline
        {
            break stats;
        }
        thread::sleep(Duration::from_millis(500));
    };
    let delta = |c: Counter| stats.get(c) - stats_before.get(c);
    let evicted = loader_counter(&stats, "loader_conns_evicted");
    let accepted = storm_server.accepted().expect("storm server count");
    let rss_after = storm::rss_kib(validator.pid()).expect("loader RSS");
    let fills: Vec<(&str, (u64, u64))> = [MAP_CONNS, MAP_FLOWS, MAP_TOKENS, MAP_JOINS]
        .into_iter()
        .map(|m| (m, map_fill(&stats, m)))
        .collect();
    let why = format!(
        "storm of {STORM} connections in {storm_s:.1} s, {accepted} accepted; \
         loader RSS {rss_before} -> {rss_after} KiB; maps (entries, max) {fills:?}; \
         loader_conns_evicted {evicted}; keys_learned +{}, join_syn_known_token +{}, \
         join_ack_valid +{}, add_addr_valid +{}, join_syn_unknown_token_dropped +{}, \
         aux_map_insert_failed +{}, aux_flow_without_conn +{}, join_state_missing +{}\n\
         server during the storm: {}\nserver during the flood: {}\nloader output:\n{}",
        delta(Counter::KeysLearned),
        delta(Counter::JoinSynKnownToken),
        delta(Counter::JoinAckValid),
        delta(Counter::AddAddrValid),
        delta(Counter::JoinSynUnknownTokenDropped),
        delta(Counter::MapInsertFailed),
        delta(Counter::FlowWithoutConn),
        delta(Counter::JoinStateMissing),
        before_flood.changes_since(&before_storm),
        after_flood.changes_since(&before_flood),
        validator.log(),
    );
    eprintln!("{why}");

    // The loader keeps running, within bounded memory; the maps hold what they can.
    assert_eq!(
        validator.exit_status().expect("loader status"),
        None,
        "the loader exited during the storm\n{why}"
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT_KIB,
        "loader memory grew by more than {RSS_GROWTH_LIMIT_KIB} KiB\n{why}"
    );
    for (map, (entries, max)) in &fills {
        assert!(entries <= max, "{map} holds more than its size\n{why}");
    }
    assert_eq!(fills[0].1 .1, u64::from(MAX_CONNS), "{why}");
    // Every storm connection was genuine and got through, its join too: the fast path dropped
    // the flood and nothing else.
    assert_eq!(accepted, u64::from(STORM), "{why}");
    assert!(delta(Counter::KeysLearned) >= u64::from(STORM), "{why}");
    assert_eq!(
        before_flood.delta(&before_storm, mib::MP_JOIN_ACK_RX),
        i128::from(STORM),
        "not every storm connection joined its second subflow\n{why}"
    );
    // The evictions are counted, and no more than could have happened.
    assert!(
        (least_evicted..=u64::from(STORM) + 1).contains(&evicted),
        "loader_conns_evicted {evicted}, expected {least_evicted}..={}\n{why}",
        STORM + 1
    );
    // The flood was dropped in XDP: the stack never looked a blind join up.
    assert_eq!(
        delta(Counter::JoinSynUnknownTokenDropped),
        JOIN_FLOOD,
        "{why}"
    );
    assert_eq!(
        after_flood.delta(&before_flood, "MPTcpExtMPJoinNoTokenFound"),
        0,
        "{why}"
    );

    // The genuine connection still validates: quiet it (so the forger's sequence numbers are
    // current), then forged ADD_ADDRs and one with the right HMAC.
    genuine.quiet().expect("quieting the genuine client");
    thread::sleep(SETTLE);
    let before_forged = lab.server.counters().expect("counters");
    let stats_forged = validator.stats(&lab.server).expect("stats");
    let forged = forger
        .inject(HmacKind::Bad, 9, Ipv4Addr::new(198, 18, 3, 66), FORGED)
        .expect("forged ADD_ADDRs");
    thread::sleep(SETTLE);
    let after_forged = lab.server.counters().expect("counters");
    forger
        .inject(HmacKind::Good, 10, Ipv4Addr::new(198, 18, 3, 67), 1)
        .expect("the control ADD_ADDR");
    let control_accepted = wait_for_counters(
        || lab.server.counters(),
        &after_forged,
        &[(mib::ADD_ADDR, 1)],
        Duration::from_secs(3),
    )
    .expect("counters");
    let stats_after = validator.stats(&lab.server).expect("stats");
    let conns = validator.conns(&lab.server).expect("conns --json");
    let local_port = genuine.local_addr().port();
    let genuine_listed = conns.as_array().is_some_and(|all| {
        all.iter().any(|c| {
            c["flows"].as_array().is_some_and(|flows| {
                flows.iter().any(|f| {
                    let ports = [f["sport"].as_u64(), f["dport"].as_u64()];
                    ports.contains(&Some(u64::from(local_port)))
                        && ports.contains(&Some(u64::from(GENUINE_PORT)))
                })
            })
        })
    });
    let why = format!(
        "{why}\nforger: {}\nserver during the forged ADD_ADDRs: {}\nconns: {conns}",
        forged.detail,
        after_forged.changes_since(&before_forged),
    );
    let forged_delta = |c: Counter| stats_after.get(c) - stats_forged.get(c);
    assert_eq!(forged.sent, FORGED, "{why}");
    assert_eq!(
        forged_delta(Counter::AddAddrBadHmacDropped),
        u64::from(FORGED),
        "the genuine connection's forged ADD_ADDRs were not all dropped\n{why}"
    );
    assert_eq!(
        after_forged.delta(&before_forged, mib::ADD_ADDR),
        0,
        "{why}"
    );
    assert!(
        control_accepted && forged_delta(Counter::AddAddrValid) >= 1,
        "the ADD_ADDR with the right HMAC was not accepted\n{why}"
    );
    assert!(
        genuine_listed,
        "`conns` does not list the genuine connection\n{why}"
    );

    genuine.close().expect("closing the genuine connection");
    storm.close().expect("closing the storm");
    forger.quit();
    let stop = validator.stop(&lab.server).expect("stopping the loader");
    assert!(
        stop.graceful && stop.status.success(),
        "the loader did not stop cleanly: {}\n{}",
        stop.status,
        stop.log
    );
}
