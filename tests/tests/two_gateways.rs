//! Two gateways, one connection (issue 15): the MP_CAPABLE handshake passes gateway 1, the
//! joins pass gateway 2, the firewall enforces on both (see `mptcp_tests::gateways` for the
//! lab). With the shared store (a redis-server the test starts) gateway 2 installs the keys
//! gateway 1 learned, and the genuine joins in both directions complete; without it, gateway 2
//! drops the genuine join as a blind one, which is what the store adds.
//!
//! Root only; needs the loader binary (`$MPTCP_LOADER_BIN`) and redis-server. Run with
//! `cargo test -p mptcp-tests --release --test two_gateways -- --test-threads=1 --nocapture`.

use std::{net::SocketAddrV4, path::PathBuf, time::Duration};

use mptcp_common::counters::Counter;
use mptcp_tests::{
    counters::mib,
    forger::{Forger, HmacKind},
    gateways::{
        self, store_options, GatewayLab, Joined, StoreServer, CLIENT_PATH1, CLIENT_PATH2,
        GW1_IFACES, GW2_IFACES, SERVER,
    },
    join_forger::{AckHmac, JoinForger},
    join_scenario::{ACK_HMAC_FAILURE, NO_TOKEN_FOUND},
    netns::Netns,
    storm::{HoldingServer, Storm},
    tools::Tools,
    validator::{loader_or_skip, start_or_skip, Mode, Validator},
};
use serde_json::Value;

fn tools() -> Tools {
    Tools::new(env!("CARGO_BIN_EXE_mptcp-peer"))
}

fn missing() -> Vec<String> {
    let mut missing = tools().missing();
    missing.extend(gateways::redis_missing());
    missing
}

fn start_gateway(
    test: &str,
    ns: &Netns,
    bin: &std::path::Path,
    ifaces: &[&str],
    options: &[String],
) -> Option<Validator> {
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    start_or_skip(test, ns, bin, ifaces, Mode::Enforce, &options)
}

fn stats_json(ns: &Netns) -> Value {
    gateways::stats_json(ns).expect("stats --json")
}

fn counter(stats: &Value, name: &str) -> u64 {
    gateways::counter(stats, name).unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// [`gateways::Connection`], failing the test on an error.
struct Connection(gateways::Connection);

impl Connection {
    fn open(lab: &GatewayLab) -> Connection {
        Connection::open_to(lab, SERVER, true)
    }

    fn open_to(lab: &GatewayLab, to: SocketAddrV4, announce: bool) -> Connection {
        Connection(
            gateways::Connection::open(lab, &tools().peer_bin, to, announce).expect("connecting"),
        )
    }

    fn wait_joins(&mut self, lab: &GatewayLab, wait: Duration) -> Joined {
        self.0.wait_joins(lab, wait).expect("waiting for the joins")
    }

    fn finish(self) {
        let (sent, received) = self.0.finish().expect("closing");
        assert_eq!(sent, received, "bytes lost");
    }
}

/// Both gateways with the store; `None` when the test cannot run here.
struct StoreRun {
    lab: GatewayLab,
    store: Option<StoreServer>,
    gw1: Validator,
    gw2: Validator,
    bin: PathBuf,
}

fn start_with_store(test: &str) -> Option<StoreRun> {
    start_with_store_tls(test, false)
}

/// [`start_with_store`], the store speaking TLS only when `tls`.
fn start_with_store_tls(test: &str, tls: bool) -> Option<StoreRun> {
    let bin = loader_or_skip(test, missing())?;
    let lab = GatewayLab::new().expect("building the lab");
    let store = if tls {
        StoreServer::start_tls(&lab)
    } else {
        StoreServer::start(&lab)
    }
    .expect("starting redis-server");
    let gw1 = start_store_gateway(test, &lab, &store, &bin, 1)?;
    let gw2 = start_store_gateway(test, &lab, &store, &bin, 2)?;
    Some(StoreRun {
        lab,
        store: Some(store),
        gw1,
        gw2,
        bin,
    })
}

/// A [`StoreRun`] as the tests name its parts: the lab, the store, gateway 1's and gateway 2's
/// loaders, and the loader binary.
type StoreRunParts = (
    GatewayLab,
    Option<StoreServer>,
    Validator,
    Validator,
    PathBuf,
);

impl StoreRun {
    fn into_parts(self) -> StoreRunParts {
        (self.lab, self.store, self.gw1, self.gw2, self.bin)
    }
}

/// Starts gateway `which`'s loader with the store.
fn start_store_gateway(
    test: &str,
    lab: &GatewayLab,
    store: &StoreServer,
    bin: &std::path::Path,
    which: usize,
) -> Option<Validator> {
    let urls = GatewayLab::store_urls();
    let (ns, ifaces) = if which == 1 {
        (&lab.gw1, &GW1_IFACES)
    } else {
        (&lab.gw2, &GW2_IFACES)
    };
    let options = store_options(&urls[which - 1], store, &format!("gw{which}"));
    start_gateway(test, ns, bin, ifaces, &options)
}

fn delta(after: &Value, before: &Value, name: &str) -> u64 {
    counter(after, name) - counter(before, name)
}

#[test]
fn with_the_store_genuine_joins_pass_and_forgeries_drop_on_both_gateways() {
    let test = "with_the_store_genuine_joins_pass_and_forgeries_drop_on_both_gateways";
    // Debug logging: the check below that no key is ever logged covers every line.
    std::env::set_var("RUST_LOG", "info,mptcp_loader=debug");
    let Some((lab, store, loader1, loader2, _)) = start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let store = store.expect("store");
    let tools = tools();
    // The forgers sniff the client's side from the start (they read the keys of the
    // handshake off the wire, as an on-path attacker could, for their third ACKs).
    let mut join_forger2 = JoinForger::start(
        &lab.client,
        &tools.peer_bin,
        &GatewayLab::forger_path2(),
        CLIENT_PATH1,
        SERVER,
    )
    .expect("join forger on path 2");
    let mut join_forger1 = JoinForger::start(
        &lab.client,
        &tools.peer_bin,
        &GatewayLab::forger_path1(),
        CLIENT_PATH1,
        SERVER,
    )
    .expect("join forger on path 1");
    let [c1, c2] = GatewayLab::client_ifaces();
    let mut add_addr1 = Forger::start(&lab.client, &tools.peer_bin, c1, CLIENT_PATH1, SERVER)
        .expect("ADD_ADDR forger on path 1");
    let mut add_addr2 = Forger::start(&lab.client, &tools.peer_bin, c2, CLIENT_PATH2, SERVER)
        .expect("ADD_ADDR forger on path 2");

    let mut conn = Connection::open(&lab);
    let joined = conn.wait_joins(&lab, Duration::from_secs(10));
    let gw1 = stats_json(&lab.gw1);
    let gw2 = stats_json(&lab.gw2);
    let why = |gw1: &Value, gw2: &Value| {
        format!(
            "gw1: {gw1}\ngw2: {gw2}\ngw1 loader:\n{}\ngw2 loader:\n{}",
            loader1.log(),
            loader2.log()
        )
    };
    let w = why(&gw1, &gw2);
    eprintln!(
        "with the store: client join after {:?}, server join after {:?}; gw2 dropped {} join SYN(s) as unknown; gw2 installed {} connection(s) from the store",
        joined.client_join_after,
        joined.server_join_after,
        counter(&gw2, Counter::JoinSynUnknownTokenDropped.name()),
        counter(&gw2, "loader_store_applied")
    );
    assert!(
        joined.client_join_after.is_some(),
        "the client's join through gw2 did not complete\n{w}"
    );
    assert!(
        joined.server_join_after.is_some(),
        "the server's join through gw2 did not complete\n{w}"
    );
    // On a gateway the MP_CAPABLE third ACK passes XDP on the way in and the egress program on
    // the way out (forwarded, not the host's own): learned once, then seen again.
    eprintln!(
        "gw1: keys_learned {}, keys_known {}",
        counter(&gw1, Counter::KeysLearned.name()),
        counter(&gw1, Counter::KeysKnown.name())
    );
    assert!(counter(&gw1, "loader_store_published") >= 1, "{w}");
    assert!(counter(&gw2, "loader_store_applied") >= 1, "{w}");
    assert_eq!(gw2["store"]["connected"], true, "{w}");
    // gw2 judged both joins with the keys it got from the store; the genuine ADD_ADDR passed
    // wherever it went; nothing genuine was dropped for a bad HMAC.
    assert!(counter(&gw2, Counter::JoinAckValid.name()) >= 1, "{w}");
    assert!(counter(&gw2, Counter::JoinSynAckValid.name()) >= 1, "{w}");
    let valid = Counter::AddAddrValid.name();
    assert!(counter(&gw1, valid) + counter(&gw2, valid) >= 1, "{w}");
    for stats in [&gw1, &gw2] {
        for dropped in [
            Counter::JoinAckBadHmacDropped,
            Counter::JoinSynAckBadHmacDropped,
            Counter::AddAddrBadHmacDropped,
        ] {
            assert_eq!(
                counter(stats, dropped.name()),
                0,
                "genuine traffic dropped\n{w}"
            );
        }
    }

    // Forgeries, on both paths.
    let srv0 = lab.server.counters().expect("server counters");
    let blind2 = join_forger2
        .syn_unknown_token(5)
        .expect("blind joins via gw2");
    let blind1 = join_forger1
        .syn_unknown_token(5)
        .expect("blind joins via gw1");
    let bad_acks = join_forger2
        .join(AckHmac::Bad, 2)
        .expect("bad third ACKs via gw2");
    let announced = |last| std::net::Ipv4Addr::new(198, 18, 7, last);
    let bad_add1 = add_addr1
        .inject(HmacKind::Bad, 9, announced(7), 5)
        .expect("forged ADD_ADDRs via gw1");
    let bad_add2 = add_addr2
        .inject(HmacKind::Bad, 9, announced(8), 5)
        .expect("forged ADD_ADDRs via gw2");
    std::thread::sleep(Duration::from_millis(300));
    let gw1f = stats_json(&lab.gw1);
    let gw2f = stats_json(&lab.gw2);
    let srv1 = lab.server.counters().expect("server counters");
    let w = why(&gw1f, &gw2f);
    eprintln!(
        "forged: blind join SYNs {} via gw1 and {} via gw2, bad third ACKs {} via gw2, bad ADD_ADDRs {} via gw1 and {} via gw2",
        blind1.syns, blind2.syns, bad_acks.acks, bad_add1.sent, bad_add2.sent
    );
    let unknown = Counter::JoinSynUnknownTokenDropped.name();
    assert_eq!(delta(&gw2f, &gw2, unknown), u64::from(blind2.syns), "{w}");
    assert_eq!(delta(&gw1f, &gw1, unknown), u64::from(blind1.syns), "{w}");
    assert!(
        bad_acks.acks >= 1,
        "no SYN/ACK for the forged handshakes: {bad_acks:?}\n{w}"
    );
    let bad_ack = Counter::JoinAckBadHmacDropped.name();
    assert_eq!(delta(&gw2f, &gw2, bad_ack), u64::from(bad_acks.acks), "{w}");
    let bad_hmac = Counter::AddAddrBadHmacDropped.name();
    assert_eq!(
        delta(&gw1f, &gw1, bad_hmac),
        u64::from(bad_add1.sent),
        "{w}"
    );
    assert_eq!(
        delta(&gw2f, &gw2, bad_hmac),
        u64::from(bad_add2.sent),
        "{w}"
    );
    // None of them reached the server's stack.
    for name in [NO_TOKEN_FOUND, ACK_HMAC_FAILURE, mib::ADD_ADDR] {
        assert_eq!(
            srv1.delta(&srv0, name),
            0,
            "{name} moved on the server\n{w}"
        );
    }
    join_forger1.quit();
    join_forger2.quit();
    add_addr1.quit();
    add_addr2.quit();
    conn.finish();

    // Keys are secrets: no line either loader printed (at debug level) holds one.
    let keys = store.keys_in_store(&lab).expect("reading the store");
    assert!(!keys.is_empty(), "no connection hash in the store");
    let log1 = loader1.stop(&lab.gw1).expect("stopping gw1").log;
    let log2 = loader2.stop(&lab.gw2).expect("stopping gw2").log;
    for key in &keys {
        for (gw, log) in [("gw1", &log1), ("gw2", &log2)] {
            assert!(!log.contains(key.as_str()), "{gw}'s log holds key material");
        }
    }
    eprintln!(
        "checked {} key(s) against {} log lines: none logged",
        keys.len(),
        log1.lines().count() + log2.lines().count()
    );
}

#[test]
fn without_the_store_gateway_2_drops_the_genuine_join() {
    let test = "without_the_store_gateway_2_drops_the_genuine_join";
    let Some(bin) = loader_or_skip(test, missing()) else {
        return;
    };
    let lab = GatewayLab::new().expect("building the lab");
    let Some(gw1) = start_gateway(test, &lab.gw1, &bin, &GW1_IFACES, &[]) else {
        return;
    };
    let Some(gw2) = start_gateway(test, &lab.gw2, &bin, &GW2_IFACES, &[]) else {
        return;
    };
    let mut conn = Connection::open(&lab);
    // Long enough for the client's SYN retransmissions at 1 s and 3 s.
    let joined = conn.wait_joins(&lab, Duration::from_secs(4));
    let stats = stats_json(&lab.gw2);
    let w = format!(
        "gw2: {stats}\ngw1 loader:\n{}\ngw2 loader:\n{}",
        gw1.log(),
        gw2.log()
    );
    let dropped = counter(&stats, Counter::JoinSynUnknownTokenDropped.name());
    eprintln!("without the store: gw2 dropped {dropped} genuine join SYN(s) as blind joins");
    assert!(
        joined.client_join_after.is_none(),
        "the join completed without the store?\n{w}"
    );
    assert!(
        joined.server_join_after.is_none(),
        "the join completed without the store?\n{w}"
    );
    assert!(dropped >= 2, "{w}");
    // The connection itself lives on over path 1.
    conn.finish();
}

/// A second server port, for a connection opened while something is down.
const SERVER_B: SocketAddrV4 = SocketAddrV4::new(*SERVER.ip(), 10_001);

/// Waits (up to 15 s: the client retransmits a join SYN after 1, 3, 7 s...) for the
/// client-initiated join of a connection opened while gw2 could not know its keys.
fn join_b_after(lab: &GatewayLab, conn: &mut Connection) -> Option<Duration> {
    conn.wait_joins(lab, Duration::from_secs(15))
        .client_join_after
}

#[test]
fn a_gateway_loader_killed_and_restarted_loses_nothing() {
    let test = "a_gateway_loader_killed_and_restarted_loses_nothing";
    let Some((lab, store, loader1, mut loader2, bin)) =
        start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let store = store.expect("store");
    let mut conn_a = Connection::open(&lab);
    let joined = conn_a.wait_joins(&lab, Duration::from_secs(10));
    assert!(joined.client_join_after.is_some(), "{}", loader2.log());

    // SIGKILL: the programs stay attached through their pinned links and keep enforcing with
    // what the pinned maps hold; nothing installs the peers' connections meanwhile.
    // SAFETY: kill(2) on the loader's own pid.
    unsafe { libc::kill(i32::try_from(loader2.pid()).expect("pid"), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        loader2.exit_status().expect("status").is_some(),
        "gw2's loader still runs"
    );
    let before = stats_json(&lab.gw2);
    let mut blind = JoinForger::start(
        &lab.client,
        &tools().peer_bin,
        &GatewayLab::forger_path2(),
        CLIENT_PATH1,
        SERVER,
    )
    .expect("join forger");
    let forged = blind.syn_unknown_token(5).expect("blind joins");
    let mut conn_b = Connection::open_to(&lab, SERVER_B, false);
    std::thread::sleep(Duration::from_millis(1_500));
    let down = stats_json(&lab.gw2);
    let unknown = Counter::JoinSynUnknownTokenDropped.name();
    let dropped_while_down = delta(&down, &before, unknown);
    eprintln!(
        "gw2's loader down: {dropped_while_down} join SYN(s) dropped as unknown ({} forged, the rest genuine ones of the new connection)",
        forged.syns
    );
    // No window: the forged SYNs were dropped without a loader.
    assert!(dropped_while_down > u64::from(forged.syns), "{down}");

    // Restart: adopts the pins, catches up from the store (the new connection's keys), then
    // the client's next SYN retransmission passes.
    let loader2 = start_store_gateway(test, &lab, &store, &bin, 2).expect("restarting gw2");
    let after_b = join_b_after(&lab, &mut conn_b);
    let up = stats_json(&lab.gw2);
    eprintln!(
        "after the restart: the new connection's join completed {after_b:?} after it was opened; store state {}",
        up["store"]
    );
    assert!(
        after_b.is_some(),
        "the join did not complete after the restart\n{}\n{}",
        up,
        loader2.log()
    );
    assert_eq!(up["store"]["caught_up"], true, "{up}");
    assert!(loader2.log().contains("without a gap"), "{}", loader2.log());
    blind.quit();
    // The connection that lived through it carries data to the end.
    conn_a.finish();
    conn_b.finish();
    drop(loader1);
}

#[test]
fn the_store_killed_and_restarted_loses_nothing() {
    let test = "the_store_killed_and_restarted_loses_nothing";
    let Some((lab, store, loader1, loader2, _)) = start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let mut conn_a = Connection::open(&lab);
    let joined = conn_a.wait_joins(&lab, Duration::from_secs(10));
    assert!(joined.client_join_after.is_some(), "{}", loader2.log());

    store.expect("store").kill().expect("killing redis-server");
    std::thread::sleep(Duration::from_millis(500));
    let before = stats_json(&lab.gw2);
    let mut conn_b = Connection::open_to(&lab, SERVER_B, false);
    std::thread::sleep(Duration::from_secs(2));
    let down = stats_json(&lab.gw2);
    let dropped = delta(&down, &before, Counter::JoinSynUnknownTokenDropped.name());
    eprintln!(
        "store down: gw2 store state {}; gw2 dropped {dropped} join SYN(s) of the new connection (fail-closed)",
        down["store"]
    );
    assert_eq!(down["store"]["connected"], false, "{down}");
    assert!(counter(&down, "loader_store_disconnects") >= 1, "{down}");

    // A new, empty store: the loaders reconnect and publish what they track again.
    let store = StoreServer::start(&lab).expect("restarting redis-server");
    let after_b = join_b_after(&lab, &mut conn_b);
    let up = stats_json(&lab.gw2);
    let up1 = stats_json(&lab.gw1);
    eprintln!(
        "store back: the new connection's join completed {after_b:?} after it was opened; gw1 published {} in all; gw2 store state {}",
        counter(&up1, "loader_store_published"),
        up["store"]
    );
    assert!(
        after_b.is_some(),
        "no join after the store came back\n{up}\n{up1}\n{}\n{}",
        loader1.log(),
        loader2.log()
    );
    assert_eq!(up["store"]["connected"], true, "{up}");
    conn_a.finish();
    conn_b.finish();
    drop(store);
}

/// Connections of the storm, and how fast they are opened.
const STORM_CONNS: u32 = 2_000;
const STORM_PER_SECOND: u32 = 1_000;

#[test]
fn replication_delay_under_a_connection_storm() {
    let test = "replication_delay_under_a_connection_storm";
    let Some((lab, store, loader1, loader2, _)) = start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let peer_bin = tools().peer_bin;
    let to = SocketAddrV4::new(*SERVER.ip(), 10_002);
    let mut holder = HoldingServer::start(&lab.server, &peer_bin, to).expect("holding server");
    // Every storm connection also joins through gw2 (the client's subflow endpoint).
    let (storm, took) = Storm::open(
        &lab.client,
        &peer_bin,
        to,
        STORM_CONNS,
        STORM_PER_SECOND,
        Duration::from_mins(2),
    )
    .expect("the storm");
    // Room for the joins whose first SYN lost the race (retransmitted after 1 s).
    std::thread::sleep(Duration::from_secs(3));
    let gw1 = stats_json(&lab.gw1);
    let gw2 = stats_json(&lab.gw2);
    let delay = &gw2["store"]["replication_delay_us"];
    let unknown = counter(&gw2, Counter::JoinSynUnknownTokenDropped.name());
    let acks = counter(&gw2, Counter::JoinAckValid.name());
    eprintln!(
        "storm: {STORM_CONNS} connections through gw1 in {:.2} s (asked {STORM_PER_SECOND}/s), accepted {}; gw1 published {}; gw2 installed {} (already known {}), replication delay µs {delay}; gw2: {acks} joins validated (join_ack_valid), {unknown} join SYNs dropped as unknown (a join SYN that arrived before its keys)",
        took.as_secs_f64(),
        holder.accepted().expect("accepted"),
        counter(&gw1, "loader_store_published"),
        counter(&gw2, "loader_store_applied"),
        counter(&gw2, "loader_store_already_known"),
    );
    let w = format!("gw1: {gw1}\ngw2: {gw2}");
    assert!(
        counter(&gw2, "loader_store_applied") >= u64::from(STORM_CONNS),
        "{w}\n{}",
        loader2.log()
    );
    assert!(
        delay["count"].as_u64().unwrap_or(0) >= u64::from(STORM_CONNS),
        "{w}"
    );
    assert_eq!(counter(&gw2, "loader_store_apply_failed"), 0, "{w}");
    storm.close().expect("closing the storm");
    drop((loader1, store));
}

#[test]
fn the_store_over_tls_carries_the_keys() {
    let test = "the_store_over_tls_carries_the_keys";
    let Some((lab, store, loader1, loader2, _)) =
        start_with_store_tls(test, true).map(StoreRun::into_parts)
    else {
        return;
    };
    assert!(store.as_ref().and_then(StoreServer::ca_file).is_some());
    let mut conn = Connection::open(&lab);
    let joined = conn.wait_joins(&lab, Duration::from_secs(10));
    let gw2 = stats_json(&lab.gw2);
    let w = format!(
        "gw2: {gw2}\ngw1 loader:\n{}\ngw2 loader:\n{}",
        loader1.log(),
        loader2.log()
    );
    eprintln!(
        "store over TLS: client join after {:?}, server join after {:?}; gw2 store state {}",
        joined.client_join_after, joined.server_join_after, gw2["store"]
    );
    assert_eq!(gw2["store"]["connected"], true, "{w}");
    assert!(counter(&gw2, "loader_store_applied") >= 1, "{w}");
    assert!(joined.client_join_after.is_some(), "{w}");
    assert!(joined.server_join_after.is_some(), "{w}");
    assert!(
        loader1
            .log()
            .contains("sharing learned connections through the store at 198.18.5.2:6379"),
        "{w}"
    );
    conn.finish();
    drop(store);
}

#[test]
fn a_gateway_that_lost_its_maps_gets_them_back_from_the_store() {
    let test = "a_gateway_that_lost_its_maps_gets_them_back_from_the_store";
    let Some((lab, store, loader1, loader2, bin)) =
        start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let store = store.expect("store");
    let tools = tools();
    let [c1, _] = GatewayLab::client_ifaces();
    let mut add_addr1 = Forger::start(&lab.client, &tools.peer_bin, c1, CLIENT_PATH1, SERVER)
        .expect("ADD_ADDR forger on path 1");
    let mut conn = Connection::open(&lab);
    assert!(conn
        .wait_joins(&lab, Duration::from_secs(10))
        .client_join_after
        .is_some());
    // A stop that detaches and removes the pins: gateway 1's maps, and the keys it learned
    // itself, are gone.
    let stopped = loader1.stop(&lab.gw1).expect("stopping gw1");
    assert!(stopped.still_attached.is_empty(), "{}", stopped.log);
    let loader1 = start_store_gateway(test, &lab, &store, &bin, 1).expect("restarting gw1");
    let gw1 = stats_json(&lab.gw1);
    let w = format!("gw1: {gw1}\ngw1 loader:\n{}", loader1.log());
    // Back from the store (its own record, under the same --store-id), before it attached.
    assert!(counter(&gw1, "loader_store_applied") >= 1, "{w}");
    let forged = add_addr1
        .inject(HmacKind::Bad, 9, std::net::Ipv4Addr::new(198, 18, 7, 9), 5)
        .expect("forged ADD_ADDRs via gw1");
    std::thread::sleep(Duration::from_millis(300));
    let after = stats_json(&lab.gw1);
    eprintln!(
        "gw1 restarted without its maps: {} connection(s) installed from the store; {} forged ADD_ADDR(s) sent, {} dropped",
        counter(&gw1, "loader_store_applied"),
        forged.sent,
        counter(&after, Counter::AddAddrBadHmacDropped.name())
    );
    assert_eq!(
        counter(&after, Counter::AddAddrBadHmacDropped.name()),
        u64::from(forged.sent),
        "{after}\n{}",
        loader1.log()
    );
    add_addr1.quit();
    conn.finish();
    drop((loader2, store));
}
