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

/// Set (to anything but `0`): the storm test runs both loaders and redis-server at
/// SCHED_FIFO 20, to tell their waits for a CPU apart from the store path's own delay.
const STORM_FIFO_ENV: &str = "MPTCP_TESTS_STORM_FIFO";

/// Connections of the storm, and how fast they are opened.
const STORM_CONNS: u32 = 2_000;
const STORM_PER_SECOND: u32 = 1_000;

#[test]
fn replication_delay_under_a_connection_storm() {
    let test = "replication_delay_under_a_connection_storm";
    // Debug logging: gw2 says where the time of each slow replication went.
    std::env::set_var("RUST_LOG", "info,mptcp_loader=debug");
    let Some((lab, store, loader1, loader2, _)) = start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let peer_bin = tools().peer_bin;
    let to = SocketAddrV4::new(*SERVER.ip(), 10_002);
    let mut holder = HoldingServer::start(&lab.server, &peer_bin, to).expect("holding server");
    if std::env::var_os(STORM_FIFO_ENV).is_some_and(|v| v != "0") {
        let mut pids = vec![loader1.pid(), loader2.pid()];
        pids.extend(
            mptcp_tests::teardown::namespace_pids(lab.store_ns.name())
                .into_iter()
                .filter_map(|pid| u32::try_from(pid).ok()),
        );
        for pid in &pids {
            let fifo = std::process::Command::new("chrt")
                .args(["--fifo", "--all-tasks", "--pid", "20", &pid.to_string()])
                .status();
            assert!(fifo.is_ok_and(|s| s.success()), "chrt --fifo {pid}");
        }
        eprintln!("{STORM_FIFO_ENV}: both loaders and redis-server run at SCHED_FIFO 20");
    }
    let waited_before = [
        run_queue_wait_ns(loader1.pid()),
        run_queue_wait_ns(loader2.pid()),
    ];
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
    let waited = [
        run_queue_wait_ns(loader1.pid()),
        run_queue_wait_ns(loader2.pid()),
    ];
    eprintln!(
        "gw1: its own install latency (fast path -> its loader's maps) µs {}; the loaders waited for a CPU {} ms (gw1) and {} ms (gw2) during the storm",
        gw1["install_latency_us"],
        waited[0].saturating_sub(waited_before[0]) / 1_000_000,
        waited[1].saturating_sub(waited_before[1]) / 1_000_000
    );
    report_slow_replications(&loader2.log());
    storm.close().expect("closing the storm");
    drop((loader1, store));
}

/// Nanoseconds the threads of process `pid` have spent runnable but waiting for a CPU
/// (`/proc/<pid>/task/*/schedstat`, second field); 0 when unreadable.
fn run_queue_wait_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// What gw2's loader said about its slow replications (over 20 ms: how long until the store
/// appended the record, how long from there).
fn report_slow_replications(log: &str) {
    let slow: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("slow replication"))
        .collect();
    let field = |line: &str, after: &str| -> u64 {
        line.split(after)
            .next()
            .and_then(|head| head.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let to_store = slow
        .iter()
        .map(|l| field(l, " ms until the store"))
        .max()
        .unwrap_or(0);
    let from_store = slow
        .iter()
        .map(|l| field(l, " ms from there"))
        .max()
        .unwrap_or(0);
    eprintln!(
        "gw2: {} replication(s) over 20 ms (longest part until the store appended them: {to_store} ms; from there to gw2's maps: {from_store} ms)",
        slow.len()
    );
    for line in slow.iter().take(3) {
        eprintln!("  {line}");
    }
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

/// Polls `stats --json` in `ns` until `name` reaches `at_least` (or `wait` passes); returns the
/// last reading.
fn wait_for_counter(ns: &Netns, name: &str, at_least: u64, wait: Duration) -> Value {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let stats = stats_json(ns);
        if counter(&stats, name) >= at_least || std::time::Instant::now() >= deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A subflow that a join validated at gateway 2 is shared: when segments of it reach gateway 1,
/// which never saw that join (an ECMP rehash upstream), gateway 1 knows which connection the
/// subflow belongs to and drops forged ADD_ADDRs on it (without the shared subflow they pass as
/// `add_addr_unknown_conn`, fail-open).
#[test]
fn a_subflow_joined_through_gateway_2_is_judged_by_gateway_1() {
    let test = "a_subflow_joined_through_gateway_2_is_judged_by_gateway_1";
    let Some((lab, store, loader1, loader2, _)) = start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let tools = tools();
    // Later segments of path 2's subflow reach gw1, which never saw its join (an ECMP rehash
    // upstream): the forger sniffs the subflow on the client's path-2 interface (from its join
    // on) and sends its segments to gw1 instead.
    let [_, c2] = GatewayLab::client_ifaces();
    let mut forger = Forger::start_via(
        &lab.client,
        &tools.peer_bin,
        c2,
        &GatewayLab::forger_path1(),
        CLIENT_PATH2,
        SERVER,
    )
    .expect("ADD_ADDR forger on path 2's subflow, sending to gw1");
    let mut conn = Connection::open(&lab);
    let joined = conn.wait_joins(&lab, Duration::from_secs(10));
    assert!(joined.client_join_after.is_some(), "{}", loader2.log());
    // gw2 validated the client's join (and the server's) and published the subflows.
    let gw1 = wait_for_counter(
        &lab.gw1,
        "loader_store_subflows_applied",
        1,
        Duration::from_secs(5),
    );
    let w = |stats: &Value| {
        format!(
            "gw1: {stats}\ngw1 loader:\n{}\ngw2 loader:\n{}",
            loader1.log(),
            loader2.log()
        )
    };
    eprintln!(
        "gw1 tracks {} subflow(s) validated at gw2 (loader_store_subflows_applied)",
        counter(&gw1, "loader_store_subflows_applied")
    );

    let before = stats_json(&lab.gw1);
    let forged = forger
        .inject(HmacKind::Bad, 9, std::net::Ipv4Addr::new(198, 18, 7, 11), 5)
        .expect("forged ADD_ADDRs on path 2's subflow, to gw1");
    std::thread::sleep(Duration::from_millis(300));
    let after = stats_json(&lab.gw1);
    let dropped = delta(&after, &before, Counter::AddAddrBadHmacDropped.name());
    let unknown = delta(&after, &before, Counter::AddAddrUnknownConn.name());
    eprintln!(
        "{} forged ADD_ADDR(s) on path 2's subflow sent to gw1 ({}): {dropped} dropped for a bad HMAC, {unknown} passed as of an unknown connection",
        forged.sent, forged.detail
    );
    assert_eq!(dropped, u64::from(forged.sent), "{}", w(&after));
    assert_eq!(unknown, 0, "{}", w(&after));
    assert!(
        counter(&gw1, "loader_store_subflows_applied") >= 1,
        "{}",
        w(&gw1)
    );
    forger.quit();
    conn.finish();
    drop(store);
}

/// The end of a connection one gateway authenticated (a genuine MP_FASTCLOSE, sent by Linux on
/// an abortive close) is shared: the other gateway, which saw none of the connection's
/// segments, forgets its keys and tokens too, so a join naming it is dropped there as blind,
/// and the store keeps no key of it. A gateway whose loader was away when a connection ended
/// learns the end from the store's tombstone when it comes back, and its republication of
/// the connection does not bring it back.
#[test]
fn an_authenticated_end_is_shared_and_outlives_a_loader_restart() {
    let test = "an_authenticated_end_is_shared_and_outlives_a_loader_restart";
    let Some((lab, store, loader1, loader2, bin)) =
        start_with_store(test).map(StoreRun::into_parts)
    else {
        return;
    };
    let store = store.expect("store");
    let tools = tools();
    // Only path 1: gw2 sees nothing of these connections but what the store tells it.
    lab.no_client_joins()
        .expect("removing the client's subflow endpoint");
    let forger_for = |server| {
        JoinForger::start(
            &lab.client,
            &tools.peer_bin,
            &GatewayLab::forger_path2(),
            CLIENT_PATH1,
            server,
        )
        .expect("join forger")
    };
    let mut forger_a = forger_for(SERVER);
    let mut forger_b = forger_for(SERVER_B);
    let conn_a = Connection::open_to(&lab, SERVER, false);
    let conn_b = Connection::open_to(&lab, SERVER_B, false);
    let installed = wait_for_counter(&lab.gw2, "loader_store_applied", 2, Duration::from_secs(5));
    assert!(
        counter(&installed, "loader_store_applied") >= 2,
        "{installed}\n{}",
        loader2.log()
    );
    let unknown = Counter::JoinSynUnknownTokenDropped.name();

    // 1. Both loaders up: A ends at gw1, gw2 forgets it.
    let before = stats_json(&lab.gw2);
    conn_a.0.abort().expect("aborting A");
    let gw1 = wait_for_counter(
        &lab.gw1,
        Counter::FastcloseValid.name(),
        1,
        Duration::from_secs(5),
    );
    let gw2 = wait_for_counter(
        &lab.gw2,
        "loader_store_ends_applied",
        1,
        Duration::from_secs(5),
    );
    let w = |gw2: &Value| {
        format!(
            "gw1: {gw1}\ngw2: {gw2}\ngw1 loader:\n{}\ngw2 loader:\n{}",
            loader1.log(),
            loader2.log()
        )
    };
    eprintln!(
        "A ended: gw1 validated {} MP_FASTCLOSE(s); gw2 applied {} end(s) from the store",
        counter(&gw1, Counter::FastcloseValid.name()),
        counter(&gw2, "loader_store_ends_applied")
    );
    assert!(
        counter(&gw1, Counter::FastcloseValid.name()) >= 1,
        "{}",
        w(&gw2)
    );
    let join_a = forger_a.join(AckHmac::Bad, 1).expect("a join naming A");
    let after = stats_json(&lab.gw2);
    eprintln!(
        "a join SYN naming A through gw2 after its end: {} sent, {} dropped as blind",
        join_a.syns,
        delta(&after, &before, unknown)
    );
    assert_eq!(
        delta(&after, &before, unknown),
        u64::from(join_a.syns),
        "{}",
        w(&after)
    );
    assert_eq!(join_a.synacks, 0, "{join_a:?}");
    assert_eq!(counter(&gw2, "loader_store_ends_applied"), 1, "{}", w(&gw2));

    // 2. gw2's loader away (SIGKILL: its pinned maps keep B) while B ends at gw1.
    // SAFETY: kill(2) on the loader's own pid.
    unsafe { libc::kill(i32::try_from(loader2.pid()).expect("pid"), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    conn_b.0.abort().expect("aborting B");
    wait_for_counter(
        &lab.gw1,
        Counter::FastcloseValid.name(),
        2,
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    let loader2 = start_store_gateway(test, &lab, &store, &bin, 2).expect("restarting gw2");
    // Its catch-up reads B's tombstone; its republication of B (still in its maps) is refused.
    let gw2 = wait_for_counter(&lab.gw2, "loader_store_refused", 1, Duration::from_secs(5));
    let w = |gw2: &Value| format!("gw2: {gw2}\ngw2 loader:\n{}", loader2.log());
    eprintln!(
        "gw2 restarted: {} end(s) applied in all, {} republication(s) refused by the store",
        counter(&gw2, "loader_store_ends_applied"),
        counter(&gw2, "loader_store_refused")
    );
    let before = stats_json(&lab.gw2);
    let join_b = forger_b.join(AckHmac::Bad, 1).expect("a join naming B");
    let after = stats_json(&lab.gw2);
    eprintln!(
        "a join SYN naming B through gw2 after its end: {} sent, {} dropped as blind",
        join_b.syns,
        delta(&after, &before, unknown)
    );
    assert_eq!(
        delta(&after, &before, unknown),
        u64::from(join_b.syns),
        "{}",
        w(&after)
    );
    assert_eq!(counter(&gw2, "loader_store_ends_applied"), 2, "{}", w(&gw2));
    assert!(counter(&gw2, "loader_store_refused") >= 1, "{}", w(&gw2));
    // No key of either connection is left in the store: tombstones only.
    let keys = store.keys_in_store(&lab).expect("reading the store");
    assert!(keys.is_empty(), "{} key(s) left in the store", keys.len());
    forger_a.quit();
    forger_b.quit();
    drop(loader1);
}

/// The store's scripts on the lab's redis-server, driven by the loader's own client
/// (`SharedStore`): a join or an end that names the connection's token with another IDSN (an
/// older connection whose Key-A had the same token: a stale or replayed record) changes nothing;
/// an end turns the hash into a tombstone without keys; a learn of the ended connection (a box
/// that was away publishing its maps again) is refused; a loader catching up reads the end.
#[test]
fn the_store_keeps_tombstones_and_never_ends_another_connection() {
    use mptcp_loader::shared_store::{
        link::FromStore,
        record::{ConnName, Record, SharedConn, SharedEnd, SharedJoin, SharedSubflow},
        SharedStore, StoreOptions,
    };
    let test = "the_store_keeps_tombstones_and_never_ends_another_connection";
    if loader_or_skip(test, missing()).is_none() {
        return;
    }
    let lab = GatewayLab::new().expect("building the lab");
    let store = StoreServer::start(&lab).expect("starting redis-server");
    let password_file = store.password_file().to_path_buf();
    let options = |id: &str| {
        let mut options = StoreOptions::new(&GatewayLab::store_urls()[0]);
        options.password_file = Some(password_file.clone());
        options.id = Some(id.to_owned());
        options
    };
    let mut flow = mptcp_common::maps::FlowKey {
        family: mptcp_common::maps::FAMILY_V4,
        sport: 40_000u16.to_be_bytes(),
        dport: 10_000u16.to_be_bytes(),
        ..Default::default()
    };
    flow.saddr[..4].copy_from_slice(&CLIENT_PATH1.octets());
    flow.daddr[..4].copy_from_slice(&SERVER.ip().octets());
    let conn = SharedConn {
        key_a: [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
        key_b: [0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01],
        flow,
        origin: "writer".into(),
        seen_unix_ns: 1,
        subflows: Vec::new(),
    };
    let name = conn.name();
    let older = ConnName {
        idsn_a: name.idsn_a ^ 1,
        ..name
    };
    let join = |conn: ConnName| {
        let mut subflow = flow;
        subflow.saddr[..4].copy_from_slice(&CLIENT_PATH2.octets());
        Record::Join(SharedJoin {
            conn,
            subflow: SharedSubflow {
                flow: subflow,
                src_role: mptcp_common::maps::ROLE_A,
            },
            origin: "writer".into(),
            seen_unix_ns: 2,
        })
    };
    let end = |conn: ConnName| {
        Record::End(SharedEnd {
            conn,
            origin: "writer".into(),
            ended_unix_ns: 3,
        })
    };
    let steps = [
        ("the learn", Record::Learn(conn.clone()), 0),
        ("a join naming an older connection", join(older), 1),
        ("an end of an older connection", end(older), 1),
        ("the join", join(name), 0),
        ("the end", end(name), 0),
        ("the end again", end(name), 1),
        (
            "the learn again, after the end",
            Record::Learn(conn.clone()),
            1,
        ),
    ];
    let (refused, caught_up) = lab
        .gw1
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut writer = SharedStore::start(&options("writer"), 60).expect("writer");
                let mut refused = Vec::new();
                for (what, record, _) in &steps {
                    assert!(writer.publish(record.clone()), "{what}: queue full");
                    let answer = tokio::time::timeout(Duration::from_secs(10), async {
                        loop {
                            match writer.next().await {
                                FromStore::Published { count, refused } => break (count, refused),
                                FromStore::PublishFailed { count } => break (0, count),
                                _ => {}
                            }
                        }
                    })
                    .await;
                    let (count, n) = answer.unwrap_or_else(|_| panic!("{what}: no answer in 10 s"));
                    assert_eq!(count, 1, "{what}");
                    refused.push(n);
                }
                // A loader that starts now: its catch-up reads the tombstone.
                let mut reader = SharedStore::start(&options("reader"), 60).expect("reader");
                let read = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut records = Vec::new();
                    loop {
                        match reader.next().await {
                            FromStore::Record { record, .. } => records.push(record),
                            FromStore::CaughtUp { .. } => break records,
                            _ => {}
                        }
                    }
                })
                .await;
                (refused, read.expect("the catch-up: no answer in 10 s"))
            })
        })
        .expect("entering gw1's namespace");
    for ((what, _, expected), got) in steps.iter().zip(&refused) {
        eprintln!("{what}: refused {got}");
        assert_eq!(got, expected, "{what}");
    }
    assert_eq!(
        caught_up,
        vec![end(name)],
        "what a loader catching up reads"
    );
    let keys = store.keys_in_store(&lab).expect("reading the store");
    assert!(keys.is_empty(), "{} key(s) left in the store", keys.len());
}
